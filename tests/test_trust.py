"""Trust: no user text in generated code, no name collisions, no races, fresh results, NumPy's
NaN rules on both call paths, arguments validated where they are written, no model that
crashes symgrad, and no check that passes vacuously.

Each test states a general property and runs it over the cases that once broke it.
"""

from __future__ import annotations

import ast
import cmath
import math
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.compiled import build_spec
from symgrad.files import drop_damaged_numba_cache

from .random_models import SeededDrawer, scalar_model

# ------------------------------------------------------------------------------------------
# 1. No user text reaches generated code outside escaped docstrings
# ------------------------------------------------------------------------------------------
SENTINEL = "SYMGRAD_SENTINEL"


def hostile_names(marker) -> list[str]:
    """Names that would run code (touching ``marker``) if pasted into a module."""
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    return [
        f'np.__dict__[{touch} or "n"]',
        f'n"""\n{touch}\n"""',
        "{" + touch + "}",
        f"n')\n{touch}\n('",
        'a\\"\x00b',
        f"n\\\n{touch}",
    ]


def code_identifiers(source: str) -> set[str]:
    """Every identifier of a module: names, arguments, attributes, functions, imports."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name)
        elif isinstance(node, ast.keyword) and node.arg:
            names.add(node.arg)
    return names


def strings_outside_docstring(source: str) -> list[str]:
    tree = ast.parse(source)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr)
                  and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docstrings]


def test_hostile_dimension_names_and_labels_never_run_and_never_become_code(tmp_path):
    marker = tmp_path / SENTINEL
    for k, hostile in enumerate(hostile_names(marker)):
        n = sp.Symbol(hostile, integer=True, positive=True)
        X, w = sg.matrix("X", n, 3), sg.vector("w", 3)
        model = sg.name(hostile, sg.tanh(X @ w))
        expr = sg.sum(sg.square(model))
        f = sg.compile(expr, [w], name=hostile)
        value, grads = f.value_and_grad(X=np.ones((4, 3)), w=np.full(3, 0.1))
        assert value == pytest.approx(4 * math.tanh(0.3) ** 2)
        path = sg.generate(sg.Model("hostile", expr, [w]), tmp_path / f"m{k}.py")
        for source in (f.source, path.read_text()):
            identifiers = code_identifiers(source)     # parses, or fails here
            assert not any(hostile in name or SENTINEL in name for name in identifiers)
            # the name may be quoted in a message, never as code
            assert all(hostile not in text or text.startswith(("expected", "input"))
                       or hostile in text.split("from")[0] for text in
                       strings_outside_docstring(source))
        # a wrong shape reports the dimension by the user's name, as data
        with pytest.raises(ValueError) as error:
            f.value_and_grad(X=np.ones((4, 2)), w=np.full(3, 0.1))
        assert "X" in str(error.value)
        subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path({str(path)!r})"],
                       check=True, capture_output=True)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["np.x", "a b", "1x", "class", "_i", "x-y", "ｘ", ""])
def test_input_names_that_cannot_be_keyword_arguments_are_refused_by_name(name):
    x = sp.Symbol(name)
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        sg.compile(x ** 2 + sp.Symbol("y"), [x])


def test_model_and_file_names_are_checked(tmp_path):
    w = sp.Symbol("w")
    with pytest.raises(ValueError, match="identifier"):
        sg.Model("../../evil", w ** 2, [w])
    with pytest.raises(ValueError, match="neither a folder nor a .py file"):
        sg.generate(w ** 2, wrt=[w], path=tmp_path / "model.sh")


def test_generate_into_a_folder_path_writes_into_the_folder(tmp_path):
    w = sp.Symbol("w")
    path = sg.generate(sg.Model("lr", w ** 2, [w]), str(tmp_path / "newdir") + "/")
    assert path == tmp_path / "newdir" / "lr.py" and path.is_file()
    assert (tmp_path / "newdir").is_dir()


# ------------------------------------------------------------------------------------------
# 2. Names never collide
# ------------------------------------------------------------------------------------------
API_AND_BUILTIN_NAMES = ["value", "grad", "out", "float", "max", "INPUTS", "np", "math",
                         "numba", "type", "int", "range", "upstream", "in_0", "dim_0", "shape",
                         "arguments", "PARAMETERS", "sg_exp", "forward", "overload"]


def test_scalar_inputs_may_take_any_identifier():
    symbols = [sp.Symbol(n) for n in API_AND_BUILTIN_NAMES]
    weights = range(1, len(symbols) + 1)
    expr = sum(k * s ** 2 for k, s in zip(weights, symbols)) + sp.sin(symbols[0] * symbols[1])
    f = sg.compile(expr, symbols[::2])
    point = {s.name: 0.1 * (k + 1) for k, s in enumerate(symbols)}
    value, grads = f.value_and_grad(**point)
    exact = sp.lambdify(symbols, expr)(*[point[s.name] for s in symbols])
    assert value == pytest.approx(exact, rel=1e-14)
    for s in symbols[::2]:
        expected = float(sp.diff(expr, s).subs({t: point[t.name] for t in symbols}))
        assert grads[s.name] == pytest.approx(expected, rel=1e-13)
    arrays = {n: np.full(3, v) for n, v in point.items()}
    values, _ = f.value_and_grad(**arrays)
    np.testing.assert_allclose(values, value, rtol=1e-14)
    assert f.module.value_and_grad_positional(*[point[n] for n in f.inputs])[0] == \
        pytest.approx(value, rel=1e-14)


def test_matrix_inputs_may_take_any_identifier_vjp_included():
    n = sp.Symbol("n", integer=True, positive=True)
    value, out, upstream = sg.matrix("value", n, 3), sg.vector("out", 3), sg.vector("upstream", n)
    f = sg.compile(sg.dot(upstream, sg.tanh(value @ out)), [value, out, upstream])
    rng = np.random.default_rng(0)
    V, o, u = rng.normal(size=(5, 3)), rng.normal(size=3), rng.normal(size=5)
    v, g = f.value_and_grad(value=V, out=o, upstream=u)
    assert v == pytest.approx(u @ np.tanh(V @ o), rel=1e-13)
    np.testing.assert_allclose(g["upstream"], np.tanh(V @ o), rtol=1e-13)
    data = sg.matrix("type", n, 3)              # a data input with a batch dimension
    g = sg.compile(sg.sum(sg.square(data @ out)), [out])
    assert g.value_and_grad(type=V, out=o)[0] == pytest.approx(((V @ o) ** 2).sum(), rel=1e-13)
    layer = sg.compile(sg.tanh(value @ out) + upstream, [out, upstream])     # a matrix output
    up = rng.normal(size=5)
    grads = layer.vjp(up, value=V, out=o, upstream=u)
    np.testing.assert_allclose(grads["upstream"], up)
    np.testing.assert_allclose(grads["out"], V.T @ (up * (1 - np.tanh(V @ o) ** 2)),
                               rtol=1e-13)


def test_dimensions_sharing_a_name_with_each_other_or_an_input_stay_apart():
    n_int, n_plain = sp.Symbol("n", integer=True), sp.Symbol("n")
    A, B = sg.matrix("A", n_int, 2), sg.matrix("B", n_plain, 3)
    n_input = sp.Symbol("n", positive=True)          # a scalar input named like them
    expr = n_input * sg.sum(A) + sg.sum(sg.square(B))
    f = sg.compile(expr, [A, B, n_input])
    rng = np.random.default_rng(1)
    A0, B0 = rng.normal(size=(4, 2)), rng.normal(size=(6, 3))     # n = 4 and n = 6
    value, grads = f.value_and_grad(A=A0, B=B0, n=2.5)
    assert value == pytest.approx(2.5 * A0.sum() + (B0 ** 2).sum(), rel=1e-13)
    np.testing.assert_allclose(grads["A"], np.full((4, 2), 2.5))
    assert grads["n"] == pytest.approx(A0.sum(), rel=1e-13)
    under = sp.Symbol("_i", integer=True)             # a dimension named like a loop index
    C = sg.matrix("C", under, under)
    g = sg.compile(sg.sum(sg.square(C)), [C])
    np.testing.assert_allclose(g.grad(C=np.eye(3))["C"], 2 * np.eye(3))


def test_two_inputs_equal_under_nfkc_are_refused_with_one_error_naming_both():
    x, fullwidth = sp.Symbol("x"), sp.Symbol("ｘ")
    with pytest.raises(ValueError, match="'ｘ'.*'x'"):
        sg.compile(x + fullwidth, [x])
    with pytest.raises(ValueError, match="two different symbols are both named 'x'"):
        sg.compile(x + sp.Symbol("x", positive=True), [x])



def test_formulas_never_print_two_symbols_of_one_name_alike():
    # sg.grad keys gradients by the symbols themselves, but printed formulas name them: two
    # symbols of one name would print alike and a gradient by each under one label (one
    # line silently lost), so every printer refuses them naming both; dimensions that
    # share a name are not printed with their matrices and stay apart
    x, x_positive, x_vector = sp.Symbol("x"), sp.Symbol("x", positive=True), sg.vector("x", 2)
    printers = [sg.show, sg.latex, str, lambda g: g._repr_latex_()]
    for model, wrt in [(x * x_positive**2, [x, x_positive]), (x * x_positive**2, [x]),
                       (x * sg.sum(x_vector), [x, x_vector])]:
        grads = sg.grad(model, wrt)
        assert len(grads) == len(wrt)
        for printer in printers:
            with pytest.raises(ValueError, match="two different symbols are both named 'x' "
                                                 r"\(a .*, a .*\): formulas would print both"):
                printer(grads)
    for printer in printers:
        with pytest.raises(ValueError, match="two different symbols are both named 'x'"):
            printer(sg.hessian(x * x_positive**2, [x, x_positive]))
    n_integer, n_plain = sp.Symbol("n", integer=True), sp.Symbol("n")
    A, B = sg.matrix("A", n_integer, 2), sg.matrix("B", n_plain, 3)
    lines = sg.show(sg.grad(sg.sum(A) * sg.sum(B), [A, B])).splitlines()
    assert [line.split(" = ")[0] for line in lines if line.startswith("df/")] == [
        "df/dA", "df/dB"]

# ------------------------------------------------------------------------------------------
# 3. Parallel code is race-free by construction
# ------------------------------------------------------------------------------------------
def racy_updates(source: str) -> list[str]:
    """Augmented assignments to an array entry, inside a prange loop, whose index does not
    depend on the loop's variable: every thread would add into the same entry."""
    found = []
    for loop in ast.walk(ast.parse(source)):
        if not (isinstance(loop, ast.For) and isinstance(loop.iter, ast.Call)
                and ast.unparse(loop.iter.func) == "numba.prange"):
            continue
        derived = {loop.target.id}
        for node in ast.walk(loop):       # names computed from the loop variable (_p4 = 4 * _q)
            if isinstance(node, ast.Assign) and \
                    {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)} & derived:
                derived |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(loop):
            if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Subscript):
                index = {n.id for n in ast.walk(node.target.slice) if isinstance(n, ast.Name)}
                if not index & derived:     # the same entries in every outer iteration
                    found.append(ast.unparse(node))
    return found


def reduction_models():
    n, m = sp.symbols("n m", integer=True, positive=True)
    A, B = sg.matrix("A", n, m), sg.matrix("B", n, m)
    r, c = sg.matrix("r", 1, m), sg.vector("c", n)
    v = sg.vector("v", m)
    return {
        "row vector summed whole": (sg.sum(sg.exp(sg.sum(r, axis=1))), [r]),
        "column vector summed whole": (sg.sum(sg.exp(sg.sum(c, axis=0))), [c]),
        "row sums of an input": (sg.sum(sg.sin(sg.sum(A, axis=1))), [A]),
        "column sums of an input": (sg.sum(sg.sin(sg.sum(A, axis=0))), [A]),
        "column sums of column sums": (sg.sum(sg.exp(sg.sum(sg.sum(A, axis=0), axis=1))), [A]),
        "row sums in a fused map": (sg.sum(sg.square(sg.sum(sg.tanh(A), axis=1))), [A]),
        "column sums in a fused map": (sg.sum(sg.square(sg.sum(sg.tanh(A), axis=0))), [A]),
        "total of a fused map": (sg.sum(sg.hadamard(sg.tanh(A), B)), [A, B]),
        "matrix-vector products": (sg.sum(sg.tanh(A @ v)) + sg.sum(sg.sin(A.T @ c)), [A, v, c]),
        "a vector times a map": (sg.dot(c, sg.sigmoid(A @ v + c)), [A, v, c]),
        "log-sum-exp": (sg.logsumexp(A) + sg.sum(sg.logsumexp(A, axis=0)), [A]),
    }


@pytest.fixture(scope="module")
def compiled_reductions():
    return {k: sg.compile(e, w) for k, (e, w) in reduction_models().items()}


def test_no_parallel_loop_adds_into_an_entry_that_other_iterations_share(compiled_reductions):
    for name, f in compiled_reductions.items():
        assert racy_updates(f.source) == [], name


def test_the_parallel_kernels_agree_with_the_serial_ones_call_after_call(compiled_reductions):
    import numba

    if numba.get_num_threads() < 2:
        pytest.skip("one thread: the parallel kernels cannot race here")
    rng = np.random.default_rng(3)
    sizes = {"n": 256, "m": 512}
    parallel_runs = 0
    for name, f in compiled_reductions.items():
        module = f.module
        if not hasattr(module, "_value_and_grad_kernel_parallel"):
            continue
        inputs = []
        for s in f.spec.inputs:
            shape = tuple(int(sp.sympify(e).subs(
                {d: sizes[f.spec.public_name(d)] for d in sp.sympify(e).free_symbols}))
                for e in s.shape)
            inputs.append(rng.normal(size=shape) * 0.1)
        serial = module._value_and_grad_kernel(*inputs, 1)
        for _ in range(30):
            parallel = module._value_and_grad_kernel_parallel(*inputs)
            for a, b in zip(serial, parallel):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=name)
        parallel_runs += 1
    assert parallel_runs >= 5


# ------------------------------------------------------------------------------------------
# 4. Results are fresh arrays
# ------------------------------------------------------------------------------------------
def test_no_result_shares_memory_with_an_input_or_another_result():
    x, y = sg.vector("x", 4), sg.vector("y", 4)
    X = sg.matrix("X", 3, 3)
    cases = [
        (sg.dot(x, y), [x, y], {"x": np.arange(4.0), "y": np.ones(4)}),
        (sg.dot(x, x), [x], {"x": np.arange(4.0)}),
        (sg.sum(X) + sg.trace(X), [X], {"X": np.eye(3)}),
        (sg.sum(sg.hadamard(X, X.T)), [X], {"X": np.arange(9.0).reshape(3, 3)}),
    ]
    for expr, wrt, inputs in cases:
        f = sg.compile(expr, wrt)
        for call in (inputs, {k: v.tolist() for k, v in inputs.items()}):
            _, grads = f.value_and_grad(**call)
            arrays = list(grads.values()) + [v for v in inputs.values()]
            for i, a in enumerate(grads.values()):
                for b in arrays[i + 1:]:
                    assert not np.shares_memory(a, b), expr
    layer = sg.compile(X, [X])                          # the output is the input itself
    X0 = np.eye(3)
    assert not np.shares_memory(layer(X=X0), X0)
    up = np.ones((3, 3))
    assert not np.shares_memory(layer.vjp(up, X=X0)["X"], up)


# ------------------------------------------------------------------------------------------
# 5. Floating point follows NumPy and JAX
# ------------------------------------------------------------------------------------------
def test_nan_propagates_through_max_min_relu_abs_whatever_the_order():
    x = sp.Symbol("x")
    nan = float("nan")
    for expr in (sp.Max(1.0, x), sp.Max(x, -1.0), sp.Min(x, 2.0), sp.Min(3.0, x), sg.relu(x),
                 sp.Abs(x), sp.Max(x, 2.0, x ** 2)):
        f = sg.compile(expr, [x])
        assert math.isnan(f(x=nan)), expr
        assert np.isnan(f(x=np.array([nan, nan]))).all(), expr
    A = sg.matrix("A", 2, 3)
    cases = [(sg.logsumexp(A), lambda a: np.log(np.exp(a).sum())),
             (sg.sum(sg.logsumexp(A, axis=0)), lambda a: np.log(np.exp(a).sum(0)).sum()),
             (sg.sum(sg.softmax(A, axis=1)), lambda a: (np.exp(a) / np.exp(a).sum(1,
                                                        keepdims=True)).sum()),
             (sg.sum(sg.relu(A)), lambda a: np.maximum(a, 0).sum())]
    for expr, reference in cases:
        f = sg.compile(expr, [A])
        for a in (np.full((2, 3), nan), np.array([[nan, 1, 2], [3, 4, 5]]),
                  np.array([[1, 2, nan], [3, 4, 5]]), np.array([[np.inf, 1, 2], [3, 4, 5]])):
            with np.errstate(invalid="ignore", over="ignore"):
                expected = reference(a)
            np.testing.assert_equal(f(A=a), expected, err_msg=str(expr))


SPECIAL_POINTS = [-8.0, -1.0, -0.0, 0.0, 0.5, 2.0, math.inf, -math.inf, math.nan]


def test_the_float_path_and_the_array_path_agree_on_special_points():
    """Python floats go through a pure-Python twin; arrays through the Numba kernel: the same
    values (NaN where NumPy gives NaN, never a complex number) and the same gradients."""
    x, y = sp.symbols("x y")
    drawer = SeededDrawer(7)
    models = []
    while len(models) < 8:
        # unguarded: negative bases, logs of negative numbers, divisions by zero, NaN
        expr = drawer.first(scalar_model, [x, y], guarded=False)
        if expr.free_symbols == {x, y}:
            models.append(expr)
    grid = [(a, b) for a in SPECIAL_POINTS for b in SPECIAL_POINTS]
    xs, ys = (np.array(v) for v in zip(*grid))
    for expr in models:
        f = sg.compile(expr, [x, y])
        with np.errstate(all="ignore"):
            values, grads = f.value_and_grad(x=xs, y=ys)
            for k, (a, b) in enumerate(grid):
                value, grad = f.value_and_grad(x=a, y=b)
                assert isinstance(value, float), (expr, a, b, value)
                same(value, values[k], f"{expr} at {a, b}")
                for name in ("x", "y"):
                    assert isinstance(grad[name], float)
                    same(grad[name], grads[name][k], f"d/d{name} {expr} at {a, b}")


def same(got: float, want: float, where: str) -> None:
    """Equal to rounding (math's functions and symgrad's fast ones differ in the last bits,
    which a cancellation such as 1 - tanh(y)^2 at y = -8 magnifies), with NaN, inf and
    their signs exactly alike."""
    assert math.isnan(got) == math.isnan(want), where
    if math.isinf(want) or math.isinf(got):
        assert got == want, where
    elif not math.isnan(want):
        assert got == pytest.approx(want, rel=1e-8, abs=1e-12), where


def on_both_paths(f, point: dict):
    """f's value and gradient at a point of floats, by the float path and the array path
    (asserted to agree, NaN and inf alike)."""
    value, grad = f.value_and_grad(**point)
    values, grads = f.value_and_grad(**{k: np.array([v]) for k, v in point.items()})
    same(value, values[0], f"value at {point}")
    for name in grad:
        same(grad[name], grads[name][0], f"d/d{name} at {point}")
    return value, grad


def test_heaviside_is_numpys_at_every_special_point_and_nan_gives_relu_no_gradient():
    """Heaviside(x, h) is np.heaviside(x, h), NaN at NaN, on both paths (as a value and as a
    gradient); relu passes no gradient where its input is NaN, as JAX's relu and Max(x, 0)."""
    x, y, z, u, v = sp.symbols("x y z u v")
    f = sg.compile(sp.Heaviside(x) * y + 2 * sp.Heaviside(x, 0) * z + 3 * sg.relu(u)
                   + 5 * sp.Max(v, 0), [y, z, u, v])
    for p in SPECIAL_POINTS:
        with np.errstate(invalid="ignore"):
            _, grad = on_both_paths(f, {"x": p, "y": 1.0, "z": 1.0, "u": p, "v": p})
        same(grad["y"], np.heaviside(p, 0.5), f"H({p})")
        same(grad["z"], 2 * np.heaviside(p, 0.0), f"H({p}, 0)")
        assert grad["u"] == (3.0 if p > 0 else 0.0), p
        assert grad["v"] == (5.0 if p > 0 else 2.5 if p == 0 else 0.0), p


MINMAX_POINTS = [(1.0, 2.0, 0.5), (2.0, 2.0, 2.0), (2.0, 2.0, 1.0), (1.0, 2.0, 2.0),
                 (math.inf, math.inf, 0.0), (-math.inf, 1.0, -math.inf), (1.0, math.nan, 0.0),
                 (math.nan, 1.0, 0.0), (0.0, 1.0, math.nan), (math.nan,) * 3]


@pytest.mark.parametrize("arity", [2, 3])
def test_max_and_min_route_the_gradient_as_jax_whatever_the_argument_order(arity):
    """The gradient goes to the arguments equal to the value, split evenly at a tie (of two,
    of three, of two infinities); where the value is NaN no argument equals it and each gets
    0.  Binary Max and Min agree with JAX's maximum and minimum; an n-ary one with JAX's max
    of the stacked arguments, whose reduction gives NaN rather than 0 where one is NaN."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    x, y, z = sp.symbols("x y z")
    if arity == 2:
        inputs, model = [x, y], sp.Max(x, y) + 3 * sp.Min(y, x)

        def reference(v):
            return jnp.maximum(v[0], v[1]) + 3 * jnp.minimum(v[1], v[0])
    else:
        inputs, model = [x, y, z], sp.Max(z, x, y) + 3 * sp.Min(x, y, z)

        def reference(v):
            return jnp.max(v) + 3 * jnp.min(v)
    points = np.array(MINMAX_POINTS)[:, :arity]
    wanted = np.array(jax.vmap(jax.grad(reference))(points))
    if arity > 2:
        wanted[np.isnan(points).any(axis=1)] = 0.0
    f = sg.compile(model, inputs)
    for point, want in zip(points, wanted):
        _, grad = on_both_paths(f, {s.name: v for s, v in zip(inputs, point)})
        assert [grad[s.name] for s in inputs] == pytest.approx(list(want), rel=1e-15), (
            model, point)


def test_a_power_with_a_variable_exponent_differentiates_as_jax_at_special_points():
    """d(x**y)/dy is x**y log(x) with log(0) taken as 0 (0**y is 0 for all y > 0: its slope
    is 0, not NaN), as JAX; both derivatives agree with JAX's at every special point."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    x, y = sp.symbols("x y")
    grid = np.array([(a, b) for a in SPECIAL_POINTS for b in SPECIAL_POINTS])
    wanted = np.array(jax.vmap(jax.grad(lambda v: v[0] ** v[1]))(grid))
    f = sg.compile(x ** y, [x, y])
    with np.errstate(all="ignore"):
        for (a, b), want in zip(grid, wanted):
            _, grad = on_both_paths(f, {"x": a, "y": b})
            same(grad["x"], want[0], f"d/dx at {a, b}")
            same(grad["y"], want[1], f"d/dy at {a, b}")


def test_an_integer_exponent_beyond_float_precision_keeps_its_parity():
    """An exact integer power n keeps the sign of (-1)^n when n is too large for a float to
    hold (every float above 2^53 is even), in the value and in the derivative."""
    a, b, c = sp.symbols("a b c")
    exponents = {a: 2**53 + 1, b: 10**20, c: -(2**53 + 3)}
    f = sg.compile(sum(s ** n for s, n in exponents.items()), list(exponents))
    for base in (-1.0, 1.0):
        value, grad = on_both_paths(f, {s.name: base for s in exponents})
        assert value == sum(int(base) ** (n % 2) for n in exponents.values())   # (+-1)^n
        for s, n in exponents.items():
            assert grad[s.name] == float(n * int(base) ** ((n - 1) % 2)), (s, base)
    # and in a matrix's elementwise loop
    odd, even = 2**53 + 1, 10**20
    A, e = sg.matrix("A", 1, 2), sp.Symbol("e")
    g = sg.compile(sg.sum(sg.Map(sp.Lambda((e,), e ** odd + e ** even), (1, 2), A)), [A])
    value, grad = g.value_and_grad(A=np.array([[-1.0, 1.0]]))
    assert value == 2.0
    np.testing.assert_array_equal(grad["A"], [[float(odd - even), float(odd + even)]])


def test_a_constant_beyond_float64_computes_as_numpy_computes_with_it():
    """A number too large for float64 (an integer, a rational, a SymPy Float) is NumPy's
    float64 of it, inf with its sign, on both paths."""
    x, y, z = sp.symbols("x y z")
    f = sg.compile(x * sp.Rational(10**400, 3) - y * sp.Integer(10)**400
                   + sp.exp(z - sp.Float("1e400")), [x, y, z])
    value, grad = on_both_paths(f, {"x": 1.0, "y": -1.0, "z": 0.0})
    assert (value, grad) == (math.inf, {"x": math.inf, "y": -math.inf, "z": 0.0})


# ------------------------------------------------------------------------------------------
# 6. Arguments are validated where they are written
# ------------------------------------------------------------------------------------------
def test_axes_count_from_the_end_as_in_numpy_and_out_of_range_is_an_error():
    A = sg.matrix("A", 2, 3)
    for builder in (sg.sum, sg.mean, sg.logsumexp, sg.softmax):
        assert builder(A, axis=-1) == builder(A, axis=1)
        assert builder(A, axis=-2) == builder(A, axis=0)
        for bad in (5, 2, -3):
            with pytest.raises(ValueError, match=rf"axis {bad} is out of range.*\(2, 3\)"):
                builder(A, axis=bad)
        with pytest.raises(TypeError, match="axis must be an integer"):
            builder(A, axis=1.0)
    with pytest.raises(ValueError, match="axis 3"):
        sg.softmax_cross_entropy(A, sg.matrix("Y", 2, 3), axis=3)


def test_wrt_entries_that_are_not_the_models_symbols_are_errors_naming_them():
    x = sp.Symbol("x")
    for api in (sg.grad, sg.compile):
        with pytest.raises(ValueError, match="'x' is not the model's 'x'.*positive=True"):
            api(x ** 2, [sp.Symbol("x", positive=True)])
        with pytest.raises(ValueError, match="'z' does not appear in the model"):
            api(x ** 2, [x, sp.Symbol("z")])
        with pytest.raises(ValueError, match="twice"):
            api(x ** 2, [x, x])
        with pytest.raises(TypeError, match="not a sympy.Symbol"):
            api(x ** 2, [x + 1])


# ------------------------------------------------------------------------------------------
# 7. No model crashes symgrad
# ------------------------------------------------------------------------------------------
def test_constant_models_and_models_without_inputs_work():
    x = sp.Symbol("x")
    assert sg.compile(sp.Integer(3), []).value_and_grad() == (3.0, {})
    assert sg.compile(sp.Integer(0), []).value_and_grad() == (0.0, {})
    f = sg.compile(x ** 2, [])                 # inputs, nothing to differentiate
    assert f.value_and_grad(x=3.0) == (9.0, {})
    values, grads = f.value_and_grad(x=np.arange(3.0))
    np.testing.assert_array_equal(values, [0.0, 1.0, 4.0]) and grads == {}
    assert sg.compile(sg.sum(sp.OneMatrix(2, 3)), []).value_and_grad() == (6.0, {})
    constant_layer = sg.compile(2 * sp.Identity(2), [])
    np.testing.assert_array_equal(constant_layer(), 2 * np.eye(2))
    assert constant_layer.vjp(np.ones((2, 2))) == {}


def test_a_damaged_numba_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path))
    W, x = sg.matrix("W", 3, 4), sg.vector("x", 4)
    script = ("import numpy as np, symgrad as sg\n"
              "W, x = sg.matrix('W', 3, 4), sg.vector('x', 4)\n"
              "f = sg.compile(sg.sum(sg.tanh(W @ x)), [W])\n"
              "print(f.value_and_grad(W=np.ones((3, 4)), x=np.ones(4))[0])\n")
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True).stdout
    files = sorted((tmp_path / "__pycache__").glob("*.nb[ic]"))
    assert files
    for file in files:
        file.write_bytes(b"\x13 damaged")
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout == first
    assert drop_damaged_numba_cache(sg.compile(sg.sum(sg.tanh(W @ x)), [W]).path) == []


def test_a_healthy_numba_cache_entry_is_loaded_by_the_next_process(tmp_path, monkeypatch):
    """The damage check reads the cache files without unpickling them (unpickling a kernel
    imports its module, not loaded yet): a healthy entry is kept and loaded, a truncated one
    is dropped."""
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path))
    script = ("import numpy as np, symgrad as sg\n"
              "x = sg.vector('x', 3)\n"
              "f = sg.compile(sg.sum(sg.tanh(x)) ** 2, [x])\n"
              "print(f.value_and_grad(x=np.ones(3))[0])\n")
    env = {**os.environ, "NUMBA_DEBUG_CACHE": "1"}
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=env, check=True).stdout for _ in range(2)]
    assert "data saved" in runs[0] and "data loaded" not in runs[0]
    assert "data loaded" in runs[1] and "data saved" not in runs[1], runs[1]
    module = next(tmp_path.glob("*.py"))
    assert drop_damaged_numba_cache(module) == []
    data = next((tmp_path / "__pycache__").glob("*.nbc"))
    data.write_bytes(data.read_bytes()[:-7])
    assert drop_damaged_numba_cache(module) == [data]


# ------------------------------------------------------------------------------------------
# 8. sg.check cannot pass vacuously
# ------------------------------------------------------------------------------------------
def test_a_check_that_compared_nothing_is_not_ok():
    w = sp.Symbol("w")
    report = sg.check(sg.Model("m", w ** 2, [w]), against=["finite-differences"])
    assert report.ok and report.uncompared == []
    report.comparisons.clear()          # as when every backend was skipped
    assert not report.ok and report.uncompared == ["value", "w"]
    assert "NOT OK" in str(report) and "w" in str(report)


# ------------------------------------------------------------------------------------------
# 9. Printed formulas say what the code computes
# ------------------------------------------------------------------------------------------
def test_an_elementwise_reciprocal_does_not_print_as_an_inverse():
    M = sg.matrix("M", 3, 3)
    reciprocal = sg.grad(sg.sum(sg.log(M)), [M])
    inverse = sg.grad(sg.logdet(M), [M])
    assert "M^∘-1" in sg.show(reciprocal) and r"M^{\circ -1}" in sg.latex(reciprocal)
    assert "∘" not in sg.show(inverse)


def test_products_and_elementwise_powers_of_a_model_print_with_their_grouping():
    """How a model prints (symgrad show's first line, a module's docstring, str()): A ∘ (B C)
    is printed so, hence (A ∘ B) C must keep its brackets; an elementwise power is not the
    inverse (A^∘-1, not A^-1) and keeps a compound exponent whole; a scalar with a fraction
    bar before a matrix is grouped ((1/m) A, not 1/m A)."""
    from symgrad.codegen.docstring import FormulaPrinter

    A, B, C = (sg.matrix(n, 3, 3) for n in "ABC")
    x, m = sp.symbols("x m")
    printed = {expr: FormulaPrinter().doprint(expr) for expr in [
        sg.hadamard(A, B) @ C, sg.hadamard(A, B @ C), C @ sg.hadamard(A, B),
        sp.HadamardPower(A, -1), sg.inv(A), sp.HadamardPower(A, x + 1),
        sp.HadamardPower(A, sp.Rational(1, 2)), A / m, (x + 1) / (x - 1) * A]}
    assert list(printed.values()) == [
        "(A ∘ B) C", "A ∘ (B C)", "C (A ∘ B)", "A^∘-1", "A^-1", "A^(x + 1)", "A^(1/2)",
        "(1/m) A", "((x + 1)/(x - 1)) A"]
    assert len(set(printed.values())) == len(printed)     # different meanings read apart
    assert str(sg.sum(sg.hadamard(A, B) @ C)) == "sum((A ∘ B) C)"
    # an entry of a compound matrix: (A + B)[0, 1], not A + B[0, 1]
    entry = sp.matrices.expressions.matexpr.MatrixElement
    entries = [entry(A + B, 0, 1), entry(A @ B, 0, 1), entry(sg.tanh(A) + sp.OneMatrix(3, 3), 0, 1),
               entry(sg.inv(A), 1, 1), entry(sg.tanh(A), 0, 1), A[0, 1]]
    assert [FormulaPrinter().doprint(e) for e in entries] == [
        "(A + B)[0, 1]", "(A B)[0, 1]", "(tanh(A) + 1)[0, 1]", "(A^-1)[1, 1]", "tanh(A)[0, 1]",
        "A[0, 1]"]


def test_a_selection_prints_each_value_with_its_condition_and_nan_where_none_holds():
    x, y = sp.symbols("x y")
    shown = sg.show(sg.grad(sp.Max(x, y) + sp.Piecewise((x * y, x > 1), (y, sp.Ne(x, 0))),
                            [x]))
    assert shown == ("df/dx = y*(1 if x > 1 else 0 if x ≠ 0 else nan) "
                     "+ (1 if x > y else 1/2 if x = y else 0)"), shown


def test_every_module_the_suite_builds_parses():
    """conftest.py parses the source of every module that sg.compile and sg.generate build
    in this session; here, one more of each kind and the record's size."""
    from .conftest import PARSED_MODULES

    x = sp.Symbol("x")
    before = len(PARSED_MODULES)
    build_spec(x ** 2, [x])
    sg.compile(x ** 3, [x])
    assert len(PARSED_MODULES) > before


def test_a_free_dimension_enters_in_closed_form_never_as_a_loop():
    n, m = sp.symbols("n m", integer=True, positive=True)
    v, u = sg.vector("v", n), sg.vector("u", n)
    W = sg.matrix("W", n, 3)
    cases = [
        (sg.sum(v.T @ sp.OneMatrix(n, m)), [v], lambda M: (M * 6.0, {"v": np.full(3, M)})),
        (sg.sum(sg.tanh(sg.broadcast(u, (n, m)))) + sg.sum(sp.OneMatrix(m, n) @ W), [u, W],
         lambda M: (M * 3 * math.tanh(0.5) + M * 9,
                    {"u": np.full(3, M * (1 - math.tanh(0.5) ** 2)), "W": np.full((3, 3), M)})),
    ]
    inputs = {"v": np.array([1.0, 2.0, 3.0]), "u": np.full(3, 0.5), "W": np.ones((3, 3))}
    for expr, wrt, exact in cases:
        f = sg.compile(expr, wrt)
        free = next(s.name for s, name in f.spec.public.items() if name == "m")
        loops = re.findall(r"range\(([^)]*)\)", f.source)
        assert not [extent for extent in loops if free in extent], expr
        for M in (0, 4, 2 ** 40):
            given = {k: inputs[k] for k in f.inputs if k != "m"}
            value, grads = f.value_and_grad(**given, m=M)
            want_value, want_grads = exact(M)
            assert value == pytest.approx(want_value, rel=1e-14)
            for name, want in want_grads.items():
                np.testing.assert_allclose(grads[name], want, rtol=1e-14)
        with pytest.raises(ValueError, match="'m'.*negative"):
            f.value_and_grad(**{k: inputs[k] for k in f.inputs if k != "m"}, m=-1)


def test_hostile_names_through_the_command_line_never_run(tmp_path):
    """symgrad generate, check and show on a model file whose dimension and label carry
    code: the file's own code runs (it is the user's), the names never do."""
    marker = tmp_path / SENTINEL
    hostile = hostile_names(marker)
    model_file = tmp_path / "hostile_models.py"
    model_file.write_text(
        "import sympy as sp\nimport symgrad as sg\n"
        f"n = sp.Symbol({hostile[0]!r}, integer=True, positive=True)\n"
        "X, w = sg.matrix('X', n, 3), sg.vector('w', 3)\n"
        f"layer = sg.name({hostile[1]!r}, sg.tanh(X @ w))\n"
        "hostile = sg.Model('hostile', sg.sum(sg.square(layer)), [w])\n")
    env = {**__import__("os").environ, "SYMGRAD_CACHE_DIR": str(tmp_path / "cache")}
    for command in (["generate", str(model_file), "-o", str(tmp_path / "out")],
                    ["show", str(model_file)],
                    ["check", str(model_file), "--against", "finite-differences"]):
        result = subprocess.run([sys.executable, "-m", "symgrad", *command], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    written = tmp_path / "out" / "hostile.py"
    assert not any(SENTINEL in name for name in code_identifiers(written.read_text()))
    subprocess.run([sys.executable, str(written)], check=True, capture_output=True)
    assert not marker.exists()


def test_printed_formulas_group_pieces_as_the_expression_does():
    """Random expressions over pieces that stand for sums (how sg.show prints a shared piece
    such as X w + b inside a formula), printed as text and as LaTeX and read back, equal the
    expression: no grouping is lost in -(a + b), 1 - (a + b), 2 (a + b), (a + b)^2,
    f(-(a + b)), a / (b^2 + 1), and a matrix piece's elementwise reciprocal reads as one."""
    from sympy.parsing.sympy_parser import (
        implicit_multiplication,
        parse_expr,
        standard_transformations,
    )

    from symgrad.codegen.docstring import FormulaPrinter, _looks_atomic, _Piece
    from symgrad.present.formulas import FormulaLatexPrinter

    x, y, z = sp.symbols("x y z")
    meanings = [x + y, x - 2 * z, y * z, x, -y + z / 2]
    pieces = [_Piece(str(m), k % 2 == 0, _looks_atomic(str(m)))   # as show: some matrices
              for k, m in enumerate(meanings)]
    rng = random.Random(11)

    def build(depth):
        if depth == 0 or rng.random() < 0.25:
            return rng.choice(pieces + [sp.Integer(rng.randint(-3, 3)) or sp.S.One])
        a, b = build(depth - 1), build(depth - 1)
        return rng.choice([lambda: a + b, lambda: a - b, lambda: a * b, lambda: -a,
                           lambda: a / (b ** 2 + 1), lambda: a ** 2, lambda: sp.sin(-a),
                           lambda: sp.exp(a - b), lambda: 2 * a - 3 * b, lambda: 1 / a,
                           lambda: sp.tanh(a) ** 2])()

    meaning = dict(zip(pieces, meanings))
    point = {x: 0.3, y: -1.1, z: 0.7}
    implicit = standard_transformations + (implicit_multiplication,)
    names = {"x": x, "y": y, "z": z}
    for _ in range(300):
        expr = build(4)
        want = complex(expr.xreplace(meaning).subs(point))
        if not cmath.isfinite(want):
            continue
        text = FormulaPrinter().doprint(expr).replace("^∘", "^").replace("^", "**")
        text = text.replace(" ∘ ", "*")
        latex = FormulaLatexPrinter().doprint(expr)
        assert "tanh(" not in latex and "sin(" not in latex, latex    # one naming style
        as_python = _latex_to_python(latex.replace(r"^{\circ ", "^{").replace(r"\circ", "*"))
        for printed, transformations in ((text, standard_transformations),
                                         (as_python, implicit)):
            read = parse_expr(printed, local_dict=names, transformations=transformations)
            assert complex(read.subs(point)) == pytest.approx(want, rel=1e-12), (printed, expr)


def _brace_group(text, start):
    """(content, end) of the brace group opening at text[start] == '{'."""
    depth = 0
    for k in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[start + 1:k], k + 1
    raise ValueError(text)


def _latex_to_python(text):
    """Python for the LaTeX that sg.latex writes for elementwise bodies: fractions, powers,
    functions (\\tanh, \\operatorname{sigmoid}, with powers as \\sin^{2}), e^{x}, \\cdot."""
    text = text.replace(r"\left(", "(").replace(r"\right)", ")").replace(r"\cdot", "*")
    out, k = [], 0
    while k < len(text):
        if text.startswith(r"\frac", k):
            a, k = _brace_group(text, k + 5)
            b, k = _brace_group(text, k)
            out.append(f"(({_latex_to_python(a)})/({_latex_to_python(b)}))")
        elif text.startswith(r"\operatorname", k) or (text[k] == "\\" and text[k + 1].isalpha()):
            if text.startswith(r"\operatorname", k):
                name, k = _brace_group(text, k + len(r"\operatorname"))
            else:
                name = re.match(r"\\([a-zA-Z]+)", text[k:]).group(1)
                k += len(name) + 1
            power = None
            if text.startswith("^", k):
                power, k = _brace_group(text, k + 1)
            argument, k = _brace_group(text, k)
            call = f"{name}({_latex_to_python(argument)})"
            out.append(f"({call})**({_latex_to_python(power)})" if power else call)
        elif text.startswith("e^", k):
            exponent, k = _brace_group(text, k + 2)
            out.append(f"exp({_latex_to_python(exponent)})")
        elif text.startswith("^", k):
            exponent, k = _brace_group(text, k + 1)
            out.append(f"**({_latex_to_python(exponent)})")
        elif text[k] == "{":
            inner, k = _brace_group(text, k)
            out.append(f"({_latex_to_python(inner)})")
        else:
            out.append(text[k])
            k += 1
    return "".join(out)


def test_latex_keeps_the_grouping_of_an_elementwise_sum_in_a_product():
    X, A, B = sg.matrix("X", 3, 3), sg.matrix("A", 3, 3), sg.matrix("B", 3, 3)
    grads = sg.grad(sg.sum(sg.hadamard(sg.tanh((X + X.T) @ A.T), B)), [B, X])
    assert "(X + X^T) A^T" in sg.show(grads)
    assert r"\left(X + X^{T}\right) A^{T}" in sg.latex(grads)


def test_check_translations_take_any_input_name():
    """The translators to NumPy, JAX, PyTorch and autograd name inputs their own way too: an
    input named float or np must not shadow what the translation calls (found by the
    campaign with renamed inputs)."""
    pytest.importorskip("jax")
    A = sg.matrix("float", 2, 2)
    np_input, model = sp.Symbol("np"), sp.Symbol("model")
    expr = sg.logdet(sg.sigmoid(sg.relu(A)) @ sg.sigmoid(sg.relu(A.T)) + sp.Identity(2)) \
        + np_input * model ** 2
    against = ["finite-differences", "jax"] + [b for b in ("torch", "autograd")
                                               if __import__("importlib").util.find_spec(b)]
    report = sg.check(expr, [A, np_input, model], against=against)
    assert report.ok, str(report)


def test_shown_pieces_never_take_a_name_the_model_uses():
    """A shared piece is named h, v, z or delta unless the model has an input or a
    dimension of that name: then the piece takes the next free name, so df/dv = ... v ...
    can only mean the input."""
    v, h = sg.vector("v", 2), sp.Symbol("h")
    a = sp.Symbol("a")
    grads = sg.grad(sg.sum(sg.abs(sg.exp(sg.tanh(v) / 2))) * sp.Abs(sp.exp(a)) * h, [a, v, h])
    text = sg.show(grads)
    defined = [line.split(" = ")[0] for line in text.splitlines() if not line.startswith("df/")]
    assert defined and not {"v", "h", "a"} & set(defined), text
    assert all(name in text for name in defined)


def test_every_named_piece_a_shown_formula_reads_is_defined_before_it():
    """A piece the user named (sg.name) that a gradient formula reads by its name has a
    line of its own before that formula, also where the program computes it inside another
    piece's loop (the two-layer net's A2 = sigmoid(Z2), read by dZ2 = (A2 - Y)/m, had none)."""
    from pathlib import Path

    from symgrad.generation import load_models

    examples = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
    checked = 0
    for model in (m for file in examples for m in load_models(file)):
        grads = sg.grad(model.output, model.wrt)
        labels = set(grads.derivation.named)
        defined: set = set()
        for line in sg.show(grads).splitlines():
            name, formula = line.split(" = ", 1)
            read = set(re.findall(r"[A-Za-z_]\w*", formula)) & labels
            assert read <= defined, f"{model.name}: {line} reads {read - defined} undefined"
            defined.add(name)
            checked += bool(read)
    assert checked      # the examples do read named pieces


@pytest.mark.parametrize("make", [
    lambda x, y, a: sp.ITE(sp.Gt(a, a, evaluate=False), x < 1, y < 0),
    lambda x, y, a: sp.And(sp.Ge(a, a, evaluate=False), y < 0, evaluate=False),
    lambda x, y, a: sp.Or(sp.Lt(a, a, evaluate=False), sp.ITE(x > 0, y < 0, x < -1)),
])
def test_a_condition_that_reduces_to_one_name_compiles(make):
    """SymPy reduces And(true, c) and ITE(false, a, c) to c: once lowering has decided a
    relation of equal sides, a Piecewise's condition is a name of the program, which it
    reads like any operand (it used to fail inside SymPy)."""
    x, y = sp.symbols("x y")
    a = 1 / (x**2 + 1)
    e = sp.Piecewise((x * y, make(x, y, a)), (x - y, True))
    f = sg.compile(e, [x, y])
    for xv, yv in [(0.5, -2.0), (2.0, -1.0), (-2.0, 0.5), (0.5, 3.0)]:
        at = {x: xv, y: yv}
        value, g = f.value_and_grad(x=xv, y=yv)
        assert value == float(e.subs(at))
        assert g == {"x": float(sp.diff(e, x).subs(at)), "y": float(sp.diff(e, y).subs(at))}
        assert f(x=np.array([xv]), y=np.array([yv]))[0] == value


def test_array_path_rounds_each_operation_as_written():
    """x*y - |x||y| is exactly 0 for x, y >= 0, and |x*y| + max(x, y) min(x, y) exactly 0 for
    x y < 0, in IEEE arithmetic as written; a loop that fused a product into the next sum
    (fast-math contract) would leave the product's rounding error instead, and sign and
    Heaviside turn that into an error of 1.  Both paths must give the value as written."""
    x, y = sp.symbols("x y")
    xs = np.array([1.13399682, 0.3, 1.7, 2.9, 0.1, 1e-3])
    ys = np.array([0.0670016, 0.77, 0.1234567, 0.41, 3.3, 7.77])
    cases = [(sp.sign(x * y - sp.Abs(x) * sp.Abs(y)) + x, xs, ys, xs),
             (sp.Heaviside(sp.Abs(x * y) + sp.Max(x, y) * sp.Min(x, y)) + x, xs, -ys, xs + 0.5)]
    for e, xv, yv, expected in cases:
        f = sg.compile(e, [x, y])
        assert np.array_equal(f(x=xv, y=yv), expected), e
        assert np.array_equal(f.value_and_grad(x=xv, y=yv)[0], expected), e
        assert [f(x=float(a), y=float(b)) for a, b in zip(xv, yv)] == list(expected), e


def test_a_negative_constant_to_a_power_is_numpys_on_both_paths():
    """(-2)**y printed as Python's -2.0 ** y is -(2.0 ** y): 4 at y = 2 must stay 4, and a
    fractional power of a negative number NaN, as np.power gives them, on the array path
    (the Numba kernel) and the float path alike."""
    y = sp.Symbol("y")
    f = sg.compile(sp.Pow(-2, y) + sp.Pow(sp.Rational(-1, 2), y), [y])
    ys = np.array([0.3, 1.0, 2.0, 3.0])
    with np.errstate(all="ignore"):
        expected = np.power(-2.0, ys) + np.power(-0.5, ys)
        np.testing.assert_array_equal(f(y=ys), expected)
        for point, want in zip(ys, expected):
            same(f(y=float(point)), want, f"at {point}")
