"""Large models at CI sizes: deep nesting, long sums, many inputs.

Each pass of symgrad walks the model as a DAG, children first, without recursion, so a model
much deeper than Python's recursion limit or with thousands of terms derives and compiles;
the results are checked against gradients computed by hand (forward-mode recurrences and
closed forms), never against timings (bench/scaling.py measures those).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad import ops
from symgrad.derive.graph import dag_free_symbols, dag_nodes, dag_xreplace, stabilize


def evaluate(expr, values: dict) -> float:
    """A scalar SymPy expression at a point, each shared subexpression once (SymPy's own
    evaluation walks the tree, exponential in a nested model's depth)."""
    functions = {sp.sin: math.sin, sp.cos: math.cos, sp.exp: math.exp, sp.log: math.log}
    done: dict = {}
    stack = [(expr, False)]
    while stack:
        node, expanded = stack.pop()
        if node in done:
            continue
        if node.is_Symbol:
            done[node] = values[node]
            continue
        if node.is_number:
            done[node] = float(node)
            continue
        if not expanded:
            stack.append((node, True))
            stack.extend((a, False) for a in node.args if a not in done)
            continue
        args = [done[a] for a in node.args]
        if isinstance(node, sp.Add):
            done[node] = math.fsum(args)
        elif isinstance(node, sp.Mul):
            done[node] = math.prod(args)
        elif isinstance(node, sp.Pow):
            done[node] = args[0] ** args[1]
        else:
            done[node] = functions[node.func](*args)
    return done[expr]


def nested(depth: int):
    """f <- f sin(f + w), depth times from f = x: a DAG of 3 * depth nodes whose tree has
    about 2^depth."""
    x, w = sp.symbols("x w", real=True)
    f = x
    for _ in range(depth):
        # unevaluated: SymPy's sin(f + w) asks whether f + w could extract a minus sign, a
        # walk of its tree that only SymPy's cache keeps linear (after a deeper model has
        # filled that cache, it did not finish in minutes)
        f = f * sp.sin(sp.Add(f, w, evaluate=False), evaluate=False)
    return f, x, w


def nested_by_hand(depth: int, x0: float, w0: float):
    """Value and (df/dx, df/dw) of nested(depth) by forward-mode recurrences."""
    f, dx, dw = x0, 1.0, 0.0
    for _ in range(depth):
        s, c = math.sin(f + w0), math.cos(f + w0)
        f, dx, dw = f * s, dx * s + f * c * dx, dw * s + f * c * (dw + 1.0)
    return f, dx, dw


def test_a_model_300_levels_deep_derives_without_recursion_errors():
    depth = 300             # 900 levels of SymPy nodes: deeper than Python's recursion limit
    f, x, w = nested(depth)
    grads = sg.grad(f, [x, w])
    point = {x: 0.7, w: 0.3}
    _, dx, dw = nested_by_hand(depth, 0.7, 0.3)
    assert evaluate(grads[x], point) == pytest.approx(dx, rel=1e-9, abs=1e-12)
    assert evaluate(grads[w], point) == pytest.approx(dw, rel=1e-9, abs=1e-12)


def test_a_nested_model_compiles_and_its_gradient_is_the_recurrences():
    depth = 40
    f, x, w = nested(depth)
    compiled = sg.compile(f, [x, w])
    value, g = compiled.value_and_grad(x=0.7, w=0.3)
    v, dx, dw = nested_by_hand(depth, 0.7, 0.3)
    assert value == pytest.approx(v, rel=1e-10)
    assert g["x"] == pytest.approx(dx, rel=1e-9)
    assert g["w"] == pytest.approx(dw, rel=1e-9)
    # the docstring shows the model's size, not a tree of 2^40 nodes
    assert "distinct subexpressions" in compiled.module.__doc__


def long_sum(terms: int):
    x = sp.symbols("x0:10", real=True)
    pairs = [(k % 10, (7 * k + 3) % 10, k + 1) for k in range(terms)]
    expr = sp.Add(*[sp.sin(x[a] + c * x[b]) for a, b, c in pairs])
    return expr, list(x), pairs


def long_sum_by_hand(pairs, x0: np.ndarray):
    value, grad = 0.0, np.zeros(len(x0))
    for a, b, c in pairs:
        value += math.sin(x0[a] + c * x0[b])
        slope = math.cos(x0[a] + c * x0[b])
        grad[a] += slope
        grad[b] += c * slope
    return value, grad


def test_a_sum_of_2000_terms_sharing_10_variables_derives():
    expr, x, pairs = long_sum(2000)
    grads = sg.grad(expr, x)
    x0 = np.linspace(0.01, 0.1, 10)
    _, expected = long_sum_by_hand(pairs, x0)
    point = dict(zip(x, x0))
    got = [evaluate(grads[s], point) for s in x]
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-9)
    # a long gradient program is shown step by step, one line per statement
    text = sg.show(grads)
    assert len(text.splitlines()) > 2000
    assert all(line.count("=") == 1 for line in text.splitlines())


def _own_values_models():
    x = sp.symbols("x0:30", real=True)
    q, u, l, m = (sp.symbols(f"{c}1:4", real=True) for c in "qulm")
    yield sp.Add(*[100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(29)]), x
    yield long_sum(60)[:2]
    # pieces canonicalisation rewrites (products regrouped, a sum of three split in two)
    yield sp.Add(*[m[i] * (l[i] * u[i] * sp.cos(q[i])) ** 2 / 2 + l[i] * sp.sin(q[i] + q[i - 1])
                   for i in range(3)]) * sp.exp(-u[0] * u[1] * u[2]), [*q, *u]
    f = x[0]
    for k in range(6):
        f = f * sp.sin(f + x[k + 1])
    yield f, x[:7]


@pytest.mark.parametrize("index", range(4))
def test_grad_takes_the_models_own_values_as_inlining_rebuilds_them(index):
    """sg.grad reuses the subexpressions of the model that canonicalisation left as they
    were, instead of inlining their names: the gradients are the very expressions that
    inlining every name gives."""
    from symgrad.derive.reverse import inline_all

    expr, wrt = list(_own_values_models())[index]
    grads = sg.grad(expr, wrt)
    d = grads.derivation
    assert [grads[w] for w in wrt] == inline_all(d, [d.gradients[w] for w in wrt])


@pytest.mark.parametrize("offset", [-1, 0, 40])
def test_a_long_sum_is_one_node_whose_adjoint_reaches_every_term(offset):
    # every term of a sum gets the sum's adjoint: from NARY_SUM_FROM terms on the sum stays
    # one n-ary node (binary halves would add n - 1 nodes to every pass and share nothing)
    from symgrad.derive.graph import NARY_SUM_FROM
    from symgrad.derive.reverse import derive

    terms = NARY_SUM_FROM + offset
    expr, x, pairs = long_sum(terms)
    derivation = derive(expr, x)
    sums = [n for n in derivation.walk.nodes if isinstance(n, sp.Add) and len(n.args) > 2]
    if offset < 0:
        assert sums == []           # a shorter sum is binary, as the lecture draws it
        assert len(derivation.walk.nodes) >= 5 * terms - 1      # and n - 1 binary sums
    else:
        assert [len(n.args) for n in sums] == [terms]
        assert len(derivation.walk.nodes) <= 4 * terms + 11    # sines, sums, products, numbers
    grads = sg.grad(expr, x)
    x0 = np.linspace(0.01, 0.1, 10)
    expected_value, expected = long_sum_by_hand(pairs, x0)
    point = dict(zip(x, x0))
    np.testing.assert_allclose([evaluate(grads[s], point) for s in x], expected, rtol=1e-12)
    value, g = sg.compile(expr, x).value_and_grad(**{s.name: float(v) for s, v in
                                                     zip(x, x0)})
    assert value == pytest.approx(expected_value, rel=1e-13)
    np.testing.assert_allclose([g[s.name] for s in x], expected, rtol=1e-12)


def test_a_sum_of_300_terms_compiles():
    # (from 300 terms on, compiling raised RecursionError; the array path of models this
    # large is the rosenbrock tests' subject)
    expr, x, pairs = long_sum(300)
    compiled = sg.compile(expr, x)
    x0 = np.linspace(0.01, 0.1, 10)
    value, g = compiled.value_and_grad(**{s.name: float(v) for s, v in zip(x, x0)})
    expected_value, expected = long_sum_by_hand(pairs, x0)
    assert value == pytest.approx(expected_value, rel=1e-12)
    np.testing.assert_allclose([g[s.name] for s in x], expected, rtol=1e-10)


def rosenbrock(n: int):
    x = sp.symbols(f"x0:{n}", real=True)
    expr = sp.Add(*[100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(n - 1)])
    return expr, list(x)


def rosenbrock_by_hand(x0: np.ndarray):
    value = float(np.sum(100 * (x0[1:] - x0[:-1] ** 2) ** 2 + (1 - x0[:-1]) ** 2))
    grad = np.zeros_like(x0)
    grad[:-1] += -400 * x0[:-1] * (x0[1:] - x0[:-1] ** 2) - 2 * (1 - x0[:-1])
    grad[1:] += 200 * (x0[1:] - x0[:-1] ** 2)
    return value, grad


@pytest.mark.parametrize("n", [31, 64])
def test_models_with_more_than_30_inputs_run_on_floats_and_arrays(n):
    # CPython passes more than 30 arguments as f(*args), which Numba cannot inline
    expr, x = rosenbrock(n)
    compiled = sg.compile(expr, x)
    x0 = np.linspace(-0.5, 1.2, n)
    expected_value, expected = rosenbrock_by_hand(x0)
    value, g = compiled.value_and_grad(**{s.name: float(v) for s, v in zip(x, x0)})
    assert value == pytest.approx(expected_value, rel=1e-12)
    np.testing.assert_allclose([g[s.name] for s in x], expected, rtol=1e-12, atol=1e-12)
    batch = {s.name: np.array([v, v + 0.1]) for s, v in zip(x, x0)}
    values, gs = compiled.value_and_grad(**batch)
    second_value, second = rosenbrock_by_hand(x0 + 0.1)
    np.testing.assert_allclose(values, [expected_value, second_value], rtol=1e-12)
    np.testing.assert_allclose(gs["x0"], [expected[0], second[0]], rtol=1e-12)
    np.testing.assert_allclose(compiled(**batch), [expected_value, second_value], rtol=1e-12)


def test_a_large_model_answers_in_python_until_compiling_pays(monkeypatch):
    """Numba takes about 2 ms per operation to compile a point kernel (half a minute for
    Rosenbrock with 1,000 variables): a large model's first calls, on floats and on arrays,
    run its Python twin, and once that has cost what compiling would, the compiled kernel
    and a batched loop that calls it (not inlines it) answer."""
    from symgrad.codegen import module
    monkeypatch.setattr(module, "PYTHON_FIRST_FROM_OPS", 10)
    monkeypatch.setattr(module, "LOOP_INLINE_MAX_OPS", 10)
    expr, x = rosenbrock(40)
    x0 = np.linspace(-0.5, 1.2, 40)
    floats = {s.name: float(v) for s, v in zip(x, x0)}
    batch = {s.name: np.array([v, v + 0.1]) for s, v in zip(x, x0)}
    expected_value, expected = rosenbrock_by_hand(x0)
    second_value, second = rosenbrock_by_hand(x0 + 0.1)

    def check(compiled):
        for _ in range(2):
            value, g = compiled.value_and_grad(**floats)
            assert value == pytest.approx(expected_value, rel=1e-12)
            np.testing.assert_allclose([g[s.name] for s in x], expected, rtol=1e-12,
                                       atol=1e-12)
            assert compiled(**floats) == pytest.approx(expected_value, rel=1e-12)
            values, gs = compiled.value_and_grad(**batch)
            np.testing.assert_allclose(values, [expected_value, second_value], rtol=1e-12)
            np.testing.assert_allclose(gs["x3"], [expected[3], second[3]], rtol=1e-12)
            np.testing.assert_allclose(compiled(**batch), [expected_value, second_value],
                                       rtol=1e-12)

    monkeypatch.setattr(module, "NUMBA_SECONDS_PER_OP", 100.0)    # never pays, here
    patient = sg.compile(expr, x)
    assert "_value_and_grad_on_floats = _PythonFirst(" in patient.source
    assert "_array_0" not in patient.source        # the loops call the kernel
    check(patient)
    for kernel in ("_value_and_grad_point", "_forward_point", "_value_and_grad_loop",
                   "_forward_loop"):
        assert getattr(patient.module, kernel).signatures == [], kernel   # Python answered
    for kind in ("value_and_grad", "forward"):      # the twin runs the kernel's own code
        twin = getattr(patient.module, f"_{kind}_python")
        assert twin.__code__ is getattr(patient.module, f"_{kind}_point").py_func.__code__
        assert f"def _{kind}_python(" not in patient.source
    monkeypatch.setattr(module, "NUMBA_SECONDS_PER_OP", 0.0)      # pays at once
    eager = sg.compile(expr, x)
    check(eager)
    for kernel in ("_value_and_grad_point", "_value_and_grad_loop", "_forward_loop"):
        assert getattr(eager.module, kernel).signatures, kernel


def test_a_large_models_python_twin_leaves_a_negative_power_to_the_kernel(monkeypatch):
    """Python's ** gives a complex number for a negative base and a fractional exponent:
    the twin's math.pow raises there, and the compiled kernel answers NaN, as NumPy."""
    from symgrad.codegen import module
    monkeypatch.setattr(module, "PYTHON_FIRST_FROM_OPS", 1)
    monkeypatch.setattr(module, "NUMBA_SECONDS_PER_OP", 100.0)
    x, y = sp.symbols("x y", real=True)
    compiled = sg.compile((x - y) ** sp.Rational(3, 2) + x * y, [x, y])
    assert "sg_pow(" in compiled.source
    value, g = compiled.value_and_grad(x=3.0, y=2.0)
    assert (value, g["x"], g["y"]) == pytest.approx((7.0, 3.5, 1.5), rel=1e-14)
    assert compiled.module._value_and_grad_point.signatures == []   # Python answered
    with np.errstate(invalid="ignore"):
        expected = np.float64(-1.0) ** 1.5 + 2.0
    value, g = compiled.value_and_grad(x=1.0, y=2.0)
    assert math.isnan(expected) and math.isnan(value) and math.isnan(g["x"])
    assert compiled.module._value_and_grad_point.signatures        # the kernel answered


@pytest.mark.parametrize("seed", [0, 3, 11, 41, 48, 51, 56, 73])
def test_a_python_twin_sharing_its_kernels_code_agrees_with_the_kernel(monkeypatch, seed):
    """Random models made large (every model answers Python first): the twin, which runs the
    compiled kernel's code with Python's functions, gives the kernel's values, or raises
    where the kernel answers NaN or inf (the caller then asks the kernel)."""
    from symgrad.codegen import module

    from .random_models import SCALARS, SeededDrawer, scalar_model
    monkeypatch.setattr(module, "PYTHON_FIRST_FROM_OPS", 1)
    monkeypatch.setattr(module, "NUMBA_SECONDS_PER_OP", 100.0)
    expr = SeededDrawer(seed).first(scalar_model, SCALARS, guarded=False)   # domain errors
    compiled = sg.compile(expr, sorted(expr.free_symbols, key=lambda s: s.name))
    twin = compiled.module._value_and_grad_python
    kernel = compiled.module._value_and_grad_point
    assert twin.__code__ is kernel.py_func.__code__
    answered = 0
    for point in ([0.7, -0.4, 1.3], [-1.5, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, -2.5, -0.2]):
        args = point[:len(compiled.inputs)]
        with np.errstate(all="ignore"):
            expected = np.asarray(kernel(*args))
        try:
            got = np.asarray(twin(*args))
        except (ArithmeticError, ValueError):
            assert not np.all(np.isfinite(expected)), (expr, args)
            continue
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14, equal_nan=True,
                                   err_msg=str(expr))
        answered += 1
    assert answered


def test_a_loop_over_too_many_arrays_to_vectorise_calls_the_point_kernel():
    """LLVM, with the limits a module of many arrays raises, crashed (a segmentation fault)
    compiling the copied loop of the product of 200 factors (200 inputs, 201 outputs); no
    such loop vectorises, and the loop calls the point kernel instead.  (Its first call on
    arrays in Numba compiles for about 30 s, so this checks the loop's form; the call path
    itself runs in the test above.)"""
    from symgrad.codegen.module import LOOP_INLINE_MAX_ARRAYS
    a = sp.symbols("a0:200", real=True)
    compiled = sg.compile(sp.Mul(*[sp.sin(ai) + 2 for ai in a]), list(a))
    assert 200 + 201 > LOOP_INLINE_MAX_ARRAYS
    assert "_array_0" not in compiled.source
    loop = compiled.source.split("def _value_and_grad_loop(")[1].split("\n\n")[0]
    assert "_value_and_grad_point(" in loop


def test_python_first_switches_to_the_kernel_once_python_has_cost_the_compile(tmp_path):
    from symgrad.codegen.runtime import _PythonFirst
    calls = []

    def python(a, b):
        calls.append("python")
        return a / b

    def kernel(a, b):
        calls.append("kernel")
        return a / b if b else math.copysign(math.inf, a)

    module_file = str(tmp_path / "model.py")
    patient = _PythonFirst(python, kernel, 60.0, module_file)
    assert [patient(1.0, 2.0) for _ in range(5)] == [0.5] * 5
    assert calls == ["python"] * 5
    calls.clear()
    assert patient(1.0, 0.0) == math.inf         # Python raised: the kernel answers
    assert calls == ["python", "kernel"] and patient(3.0, 4.0) == 0.75
    assert calls[-1] == "kernel"
    calls.clear()
    eager = _PythonFirst(python, kernel, 0.0, str(tmp_path / "other.py"))
    assert eager(1.0, 4.0) == 0.25 and calls == ["python", "kernel"]   # paid at once
    assert (tmp_path / "other.py.python.compiled").exists()
    calls.clear()
    again = _PythonFirst(python, kernel, 60.0, str(tmp_path / "other.py"))  # a new process
    assert again(1.0, 8.0) == 0.125 and calls == ["kernel"]
    assert _PythonFirst(python, kernel, 0.0, None)(1.0, 2.0) == 0.5   # no file: no marker
    # arrays: the twin point by point on Python floats, until it raises or has cost enough
    loops = []

    def loop_for(points):
        def loop(a, b, out):
            loops.append(points)
            out[0, :] = np.divide(a, b)
        return loop

    out = np.zeros((1, 3))
    arrays = _PythonFirst(python, kernel, 60.0, None)
    arrays.on_arrays([np.array([1.0, 2.0, 3.0]), 4.0], out, loop_for)
    assert out.tolist() == [[0.25, 0.5, 0.75]] and loops == []
    with np.errstate(divide="ignore"):
        arrays.on_arrays([np.array([1.0, 2.0, 3.0]), np.array([4.0, 0.0, 1.0])], out,
                         loop_for)
    assert out.tolist() == [[0.25, math.inf, 3.0]] and loops == [3]


def test_a_product_of_40_factors_compiles_in_linear_pieces():
    a = sp.symbols("a0:40", real=True)
    expr = sp.Mul(*[sp.sin(ai) + 2 for ai in a])
    compiled = sg.compile(expr, list(a))
    a0 = np.linspace(0.1, 0.5, 40)
    value, g = compiled.value_and_grad(**{s.name: float(v) for s, v in zip(a, a0)})
    factors = np.sin(a0) + 2
    assert value == pytest.approx(np.prod(factors), rel=1e-12)
    np.testing.assert_allclose([g[s.name] for s in a], np.prod(factors) / factors * np.cos(a0),
                               rtol=1e-11)
    # the op count stays linear: the adjoints share their partial products
    assert compiled.op_counts["value_and_grad"] < 12 * 40


def test_compile_derives_once_and_lowers_once(monkeypatch):
    # the docstring imports lower from symgrad.optimize when it runs: counted too
    import symgrad.compiled as compiled_module
    import symgrad.derive.reverse as reverse
    import symgrad.optimize as optimize

    calls: dict = {"derive": [], "lower": []}

    def counting(name, original):
        def counted(*args, **kwargs):
            calls[name].append(args[:2])
            return original(*args, **kwargs)
        return counted

    for name, home in (("derive", reverse), ("lower", optimize)):
        wrapped = counting(name, getattr(home, name))
        monkeypatch.setattr(home, name, wrapped)
        monkeypatch.setattr(compiled_module, name, wrapped)
    w, x, y = sp.symbols("w x y", real=True)
    f = sg.compile(sp.log(1 + sp.exp(w * x - y)) ** 2 + sp.sin(w * y), [w], name="once")
    assert len(calls["derive"]) == 1
    assert len(calls["lower"]) == 1 and set(calls["lower"][0][1]) == {"value", "in_0"}
    assert "Gradients (shared pieces named once):" in f.module.__doc__


@pytest.mark.parametrize("model", ["logistic", "two_layer", "nested"])
def test_a_program_for_some_outputs_is_what_lowering_for_them_alone_gives(model):
    # sg.compile lowers once for every output and takes each program's part of it
    from symgrad.derive.reverse import derive
    from symgrad.optimize import lower, restricted

    w, x, y = sp.symbols("w x y", real=True)
    if model == "logistic":
        expr, wrt = sp.log(1 + sp.exp(-y * (w * x))) + w**2 / 2, [w]
    elif model == "two_layer":
        W1, W2, X = sg.matrix("W1", 3, 4), sg.matrix("W2", 1, 3), sg.matrix("X", 4, 5)
        expr, wrt = sg.sum(sg.tanh(W2 @ sg.tanh(W1 @ X))), [W1, W2]
    else:
        expr, x, w = nested(12)
        wrt = [x, w]
    derivation = derive(expr, wrt)
    outputs = {"value": derivation.value}
    outputs.update({str(p): derivation.gradients[p] for p in wrt})
    whole = lower(derivation, outputs, wrt)
    for names in (["value"], [str(p) for p in wrt]):
        alone = lower(derivation, {n: outputs[n] for n in names}, wrt)
        part = restricted(whole, names)
        assert part.statements == alone.statements
        assert part.outputs == alone.outputs
        assert part.labels == alone.labels and part.adjoints == alone.adjoints


def test_stabilize_visits_a_shared_subexpression_once():
    z = sp.Symbol("z", real=True)
    f = z
    for _ in range(16):         # each level uses f twice: a tree of 2^16 nodes
        f = sp.log(1 + sp.exp(f, evaluate=False), evaluate=False) * f
    stable = stabilize(f)
    kinds = {type(n) for n in _nodes(stable)}
    assert sp.log not in kinds and sp.exp not in kinds
    assert ops.softplus in kinds


def _nodes(expr):
    seen, stack = set(), [expr]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.args)
    return seen


def test_dag_walks_agree_with_sympy_on_small_models():
    x, w, u = sp.symbols("x w u", real=True)
    X = sp.MatrixSymbol("X", sp.Symbol("n", integer=True), 2)
    expr = sp.sin(x * w) + sp.Lambda(u, u**2)(x) + X[0, 1] * w
    assert dag_free_symbols(expr) == expr.free_symbols
    t = sp.Symbol("t")
    for model in [expr, sp.sin(x * w) + 3, X[0, 1] * w, sp.Lambda(u, u * w)(x) + x,
                  sp.Integral(x * t, (t, 0, 1)) + w, sp.Derivative(sp.Function("f")(x), x)]:
        # also where the model's nodes are listed already (checking a model lists them
        # first): a matrix symbol's dimensions and bound variables are no free symbols
        dag_nodes(model)
        assert dag_free_symbols(model) == model.free_symbols, model
    table = {x: u, w: sp.Integer(2)}
    assert dag_xreplace(expr, table) == expr.xreplace(table)


def test_stable_rewrites_of_numbers_terminate():
    """sigmoid(2) evaluates back to 1/(1 + exp(-2)): the rewriting must stop there."""
    for number in (sp.Integer(2), sp.Rational(1, 2), sp.Float(0.25)):
        sigmoid_form = 1 / (1 + sp.exp(-number))
        assert stabilize(sigmoid_form) == sigmoid_form
        softplus_form = sp.log(1 + sp.exp(number))
        assert stabilize(softplus_form) == softplus_form
    x = sp.Symbol("x")
    assert stabilize(sp.log(1 + sp.exp(2 * x)) + 1 / (1 + sp.exp(-2))) == (
        ops.softplus(2 * x) + 1 / (1 + sp.exp(-2)))


# ------------------------------------------------------------------------------------------
# Linear passes, counted (not timed): the work of a pass at n and at 4n
# ------------------------------------------------------------------------------------------
def _flattened_terms(monkeypatch) -> list:
    """A counter of the operands SymPy's Add.flatten and Mul.flatten receive when they build
    a sum or product of more than two (the cost of evaluating n-ary sums), reset by the
    caller."""
    counted = [0]
    for cls in (sp.Add, sp.Mul):
        original = cls.flatten.__func__

        def flatten(kind, seq, original=original):
            if len(seq) > 2:
                counted[0] += len(seq)
            return original(kind, seq)

        monkeypatch.setattr(cls, "flatten", classmethod(flatten))
    return counted


def test_lowering_a_long_sum_is_a_linear_chain(monkeypatch):
    from symgrad.codegen.ir import operation_cost
    from symgrad.optimize import ORDERED_SUM_TERMS, _Flattener

    counted = _flattened_terms(monkeypatch)
    work = {}
    for n in (300, 1200):
        x = sp.symbols(f"x0:{n}", real=True)
        total = sp.Add(*[sp.sin(s) for s in x])
        flat = _Flattener()
        counted[0] = 0
        # 1,200 terms: one link each, far deeper than Python's stack lets a recursion go
        result = flat.atom(total)
        work[n] = counted[0]
        sums = [s for s in flat.statements if not isinstance(s.operation, sp.sin)]
        assert len(flat.statements) - len(sums) == n          # n sines
        assert sum(operation_cost(s.operation) for s in sums) == n - 1    # n - 1 additions
        assert len(sums) <= n // 10     # ORDERED_SUM_TERMS terms a statement, not one each
        assert flat.statements[-1].target == result
        assert all(len(s.operation.args) <= ORDERED_SUM_TERMS for s in flat.statements)
    # building each prefix of the sum again costs n^2 / 2 operands (16 times as many at 4n);
    # the chain reads the sum's operands once or twice
    assert work[300] <= 2 * 300 and work[1200] <= 2 * 1200


def test_a_long_sum_is_written_a_stretch_of_terms_a_statement():
    """The forward sum and each gradient (a sum of 100 contributions c * delta) are
    OrderedSum statements of ORDERED_SUM_TERMS terms, each term's product written into the
    sum: about three statements per term of the model instead of six, the same operation
    count as a statement per operation, and the value and gradients of the closed form."""
    from symgrad.codegen.ir import OrderedSum
    from symgrad.compiled import build_spec
    from symgrad.optimize import ORDERED_SUM_TERMS

    n = 1000
    expr, x, pairs = long_sum(n)
    program = build_spec(expr, x).value_and_grad
    sums = [s for s in program.statements if type(s.operation) is OrderedSum]
    assert all(len(s.operation.args) <= ORDERED_SUM_TERMS for s in sums)
    assert len(program.statements) < 4.3 * n and len(sums) < 0.25 * n
    # per term: c*x_b + x_a (2, one product less for c = 1), sin, cos, the forward sum's
    # addition; per contribution of a gradient: its addition, and c times it for x_b
    multiplied = sum(c != 1 for _, _, c in pairs)
    assert program.op_count() == (n + multiplied) + 2 * n + (n - 1) + \
        (2 * n - len(x) + multiplied)
    x0 = np.linspace(-0.3, 0.4, len(x))
    value, grads = sg.compile(expr, x).value_and_grad(**{s.name: v for s, v in zip(x, x0)})
    expected_value, expected_grad = long_sum_by_hand(pairs, x0)
    assert value == pytest.approx(expected_value, rel=1e-13)
    np.testing.assert_allclose([grads[s.name] for s in x], expected_grad, rtol=1e-13)


def test_long_sums_of_every_kind_of_term_agree_with_jax():
    """Sums of NARY_SUM_FROM terms and more (lowered to OrderedSum statements) whose terms
    are negated, scaled by negative integers and floats, products of two inputs and
    functions, with x0 read by every term (its gradient is a long sum of products of two
    names, the general path), against JAX and finite differences at three points."""
    pytest.importorskip("jax")
    n = 200
    x = sp.symbols(f"x0:{n + 1}", real=True)
    forms = [lambda a, b: sp.sin(a * b), lambda a, b: -b, lambda a, b: -3 * b,
             lambda a, b: sp.Float(2.5) * b, lambda a, b: sp.exp(-a**2) * b,
             lambda a, b: (a - b)**2, lambda a, b: sp.Float(-0.75) * sp.cos(a * b),
             lambda a, b: a * b]
    expr = sp.Add(*[forms[k % len(forms)](x[0], x[k + 1]) * (-1)**k * (k % 4 + 1)
                    for k in range(n)])
    derivation = sg.grad(expr, list(x)).derivation
    longest = max(len(e.args) for _, e in derivation.assignments if type(e) is sp.Add)
    assert len(expr.args) >= 64 and longest >= 64
    report = sg.check(expr, list(x), against=["jax", "finite-differences"], points=3)
    assert report.ok, str(report)


def test_lowering_keeps_sympy_forms_of_sums_and_products():
    from symgrad.codegen.ir import OrderedSum
    from symgrad.optimize import _Flattener

    a, b, c, d = sp.symbols("a b c d", real=True)
    for expr in (a + b + c + d + 1 + sp.sqrt(2), 2 * (a + b) * c * d,
                 sp.pi + sp.sqrt(2) + sp.sin(1) + a + b, -a * b * sp.exp(c) / d):
        flat = _Flattener()
        value = flat.atom(expr)
        values = {s.target: s.operation for s in flat.statements}
        assert dag_xreplace(value, {}) is not None
        while any(t in values for t in dag_free_symbols(value)):
            value = value.xreplace(values)
        value = value.replace(OrderedSum, lambda *terms: sp.Add(*terms))
        assert sp.simplify(value - expr) == 0


def test_lowering_an_operation_over_names_builds_what_the_general_path_builds(monkeypatch):
    """_Flattener.renamed_atom builds a statement over names and numbers once, not once
    renamed and once more over its atoms: the programs of random scalar and matrix models,
    and of models with differences, powers, functions of several names and negations, are
    the very programs (statements, names, outputs) that renaming each statement and then
    flattening it gives."""
    from symgrad import optimize
    from symgrad.compiled import build_spec

    from .random_models import SCALARS, SeededDrawer, matrix_model, parameters, scalar_model

    a, b, c = sp.symbols("a b c", real=True)
    models = [(sp.sin(a - b) * sp.exp(-a) + (a * b) ** 2 + sp.Max(a, b, 0) - 3 * c, [a, b, c]),
              (sp.atan(a / b) + sp.log(a**2 + 1) / (b - c) - a * b * c, [a, b]),
              (sp.Min(a, 2 * b) * sp.Abs(c) + sp.cos(a) ** -3 - sp.sqrt(b**2 + 1), [b, c])]
    for seed in range(60):
        if seed % 3 == 2:
            expr = SeededDrawer(seed).first(matrix_model)
            models.append((expr, parameters(expr)))
        else:
            expr = SeededDrawer(seed).first(scalar_model, SCALARS)
            models.append((expr, sorted(expr.free_symbols, key=str)))

    def programs(expr, wrt):
        spec = build_spec(expr, wrt)
        return [(p.statements, p.outputs) for p in (spec.forward, spec.value_and_grad,
                                                    spec.vjp) if p is not None]

    fast = [programs(expr, wrt) for expr, wrt in models]
    monkeypatch.setattr(optimize._Flattener, "renamed_atom",
                        lambda self, e, names: self.atom(optimize._substituted(e, names)))
    for (expr, wrt), expected in zip(models, fast):
        assert programs(expr, wrt) == expected, expr


def test_a_scalar_model_derived_as_written_computes_what_the_renamed_model_does(monkeypatch):
    """sg.compile derives a model of scalars over the user's symbols and renames them while
    lowering (renaming every node first cost as much as lowering a sum of 10,000 terms).
    Where names order a node's operands (Max(m, zeta), a long sum's terms) its statements
    may read them in another order; the programs of random scalar models, a Max and a long
    sum have the operation counts, and compute the values and gradients, that renaming the
    model first gives."""
    import re

    from symgrad import compiled
    from symgrad.compiled import build_spec

    from .random_models import SCALARS, SeededDrawer, scalar_model

    zeta, alpha, m = sp.symbols("zeta alpha m", real=True)
    computed = [(zeta * sp.exp(alpha) - 3 * m + sp.Max(zeta, m), [zeta, alpha, m]),
                (sp.Add(*[sp.sin(zeta * k + alpha) * m**k for k in range(70)]), [zeta, m])]
    counted = list(computed)
    for seed in range(40):
        expr = SeededDrawer(seed).first(scalar_model, SCALARS)
        counted.append((expr, sorted(expr.free_symbols, key=str)))
    points = [{"zeta": 0.3, "alpha": -0.2, "m": 0.9}, {"zeta": 1.5, "alpha": 0.4, "m": -0.7}]

    def results():
        counts = [build_spec(expr, wrt).op_counts for expr, wrt in counted]
        values = [sg.compile(expr, wrt).value_and_grad(**point)
                  for expr, wrt in computed for point in points]
        return counts, values

    counts, values = results()
    monkeypatch.setattr(compiled, "_INTERNAL_NAME", re.compile(".*"))   # every name renamed
    renamed_counts, renamed_values = results()
    assert renamed_counts == counts
    for (value, grads), (renamed_value, renamed_grads) in zip(values, renamed_values):
        assert renamed_value == pytest.approx(value, rel=1e-13)
        assert renamed_grads == pytest.approx(grads, rel=1e-13)


def test_an_operation_that_reads_a_name_is_no_atom_by_its_kind_as_by_its_checks(monkeypatch):
    """is_atom answers an operation of a kind whose number-ness is its args' (SymPy's
    Expr.is_number) from a name among its args; the answer is the general checks' one."""
    import itertools

    from symgrad import optimize

    x = sp.Symbol("x", real=True)
    operands = [x, sp.Symbol("_t3"), sp.Integer(2), sp.Rational(1, 3), sp.pi, sp.Float(1.5)]
    forms = []
    for a, b in itertools.product(operands, repeat=2):
        forms += [kind(a, b, evaluate=evaluate) for kind in (sp.Add, sp.Mul, sp.Pow)
                  for evaluate in (True, False)]
        forms += [sp.Max(a, b), sp.Function("g")(a, b), sp.atan2(a, b)]
    for f in (sp.sin, sp.exp, sp.log, ops.sigmoid, sp.Abs, sp.Heaviside):
        forms += [f(a) for a in operands] + [f(a, evaluate=False) for a in operands]
    quick = [optimize.is_atom(e) for e in forms]
    monkeypatch.setattr(optimize, "_NUMBER_BY_ARGS", {})
    monkeypatch.setattr(optimize, "_is_number_by_args", lambda kind: False)
    assert quick == [optimize.is_atom(e) for e in forms]
    assert quick.count(False) > 100 and quick.count(True) > 50


def test_one_operation_forms_count_as_count_ops_counts():
    import itertools

    from symgrad.codegen.ir import one_operation, operation_cost

    x, y = sp.symbols("x y", real=True)
    numbers = [sp.Integer(k) for k in range(-4, 5)] + [sp.Rational(1, 2), sp.Float(2.5),
                                                       sp.Float(-1.5), sp.pi]
    forms = []
    for a, b in itertools.product([x, y, *numbers], repeat=2):
        for kind in (sp.Add, sp.Mul, sp.Pow):
            for evaluate in (True, False):
                forms.append(kind(a, b, evaluate=evaluate))
    for f in (sp.sin, sp.exp, sp.log, ops.sigmoid, sp.Abs, sp.Function("g")):
        forms += [f(x), f(x, evaluate=False), f(2 * x)]
    fast = [e for e in forms if one_operation(e)]
    assert len(fast) > 100
    for e in forms:
        if isinstance(e, (sp.Symbol, sp.Number)):
            continue
        # an operation on numbers alone (-4 - 4 unevaluated) is folded when the code
        # compiles: it costs no more than one
        expected = 1 if e.is_number else max(1, sp.count_ops(e))
        assert operation_cost(e) == expected, e
        if one_operation(e):
            assert sp.count_ops(e) == 1, e
            # (the docstring names such a shared piece where it is a function: see
            # docstring._worth_naming)
            assert bool(e.atoms(sp.Function)) == bool(e.is_Function), e


def test_a_long_programs_docstring_names_only_the_steps_it_shows(monkeypatch):
    import symgrad.codegen.docstring as docstring
    from symgrad.compiled import build_spec

    calls = [0]
    original = docstring._named_operands

    def counting(*args):
        calls[0] += 1
        return original(*args)

    monkeypatch.setattr(docstring, "_named_operands", counting)
    named = {}
    for n in (100, 400):
        expr, x, _ = long_sum(n)
        calls[0] = 0
        spec = build_spec(expr, x)
        named[n] = calls[0]
        assert "more steps)" in spec.docstring
    # the first and last DOCSTRING_MAX_LINES // 2 lines, and one per gradient line
    assert named[400] == named[100] <= docstring.DOCSTRING_MAX_LINES + 10


def test_printing_a_statement_by_its_shape_gives_sympy_s_text():
    """Statements of one shape print once (ScalarPrinter.expression), and their operations
    are counted once (ir._statement_cost): every statement of 150
    random models' programs, and each of their subexpressions under names drawn at random
    (the order of terms and factors follows the names) and with numbers drawn at random (a
    term's or factor's number is a slot of the shape), prints as SymPy's printer writes it
    directly, through the Numba printer and the Python twin's."""
    import random

    from symgrad.codegen import ir
    from symgrad.codegen.numba import PythonScalarPrinter, ScalarPrinter
    from symgrad.compiled import build_spec

    from .random_models import SCALARS, SeededDrawer, scalar_model

    rng = random.Random(0)
    names = ["_t1", "_t10", "_t9", "in_0", "in_10", "in_2", "_d5", "_c0", "_v3", "a", "B"]
    checked = 0
    for seed in range(150):
        expr = SeededDrawer(seed).first(scalar_model, SCALARS)
        wrt = sorted(expr.free_symbols, key=lambda s: s.name)
        spec = build_spec(expr, wrt)
        statements = [st.operation for st in spec.value_and_grad.statements]
        renamed = []
        for sub in sp.preorder_traversal(expr):
            if isinstance(sub, sp.Basic) and sub.args and not sub.is_Relational:
                picked = rng.sample(names, len(sub.free_symbols))
                renamed.append(sub.xreplace({s: sp.Symbol(n, **s.assumptions0) for s, n
                                             in zip(sorted(sub.free_symbols, key=str), picked)}))
                # and with other numbers: the terms' and factors' numbers are slots
                renamed.append(_renumbered(renamed[-1], rng))
        for printer in (ScalarPrinter(), PythonScalarPrinter()):
            for e in statements + renamed:
                try:
                    direct = printer._expression(e)
                except NotImplementedError:
                    continue
                assert printer.expression(e) == direct, e
                checked += 1
        for e in statements + renamed:          # op counts are shared by shape too
            if isinstance(e, sp.Expr) and not isinstance(e, ops.Map):
                assert ir._statement_cost(e) == ir._counted(e), e
    assert checked > 3000


def test_the_shape_of_an_operation_over_leaves_is_the_one_the_walk_finds():
    """shape_of takes a shortcut for an operation whose operands are all leaves (most
    statements): on sums, products, powers and functions of names (of other assumptions,
    repeated, of one name) and numbers of every kind, evaluated or not, it finds the shape
    that the general walk finds, or leaves the operation to the walk."""
    import itertools

    from symgrad.codegen import ir

    leaves = [sp.Symbol("_t1", real=True), sp.Symbol("_t10", real=True), sp.Symbol("a"),
              sp.Symbol("a", positive=True), sp.Dummy("d"), sp.pi, sp.oo]
    leaves += [sp.Integer(k) for k in (-3, -1, 0, 1, 2, 7)] + [sp.Rational(1, 2), sp.Float(2.5),
                                                             sp.Float(-1.0), sp.Float(0.0)]
    taken = 0
    for a, b in itertools.product(leaves, repeat=2):
        forms = [kind(a, b, evaluate=False) for kind in (sp.Add, sp.Mul, sp.Pow, sp.Max)]
        forms += [sp.Add(a, b, a, evaluate=False), sp.Mul(b, 3, a, evaluate=False),
                  sp.sin(a, evaluate=False), sp.Function("g")(a, b)]
        for e in forms:
            if not e.args:
                continue        # (a leaf has no shape)
            fast = ir._shape_over_leaves(e)
            if fast is not None:
                assert fast == ir._walked_shape(e), e
                taken += 1
    assert taken > 500


def test_a_large_models_kernel_code_is_its_python_twins_but_for_names():
    """A large model's Python twin runs its point kernel's own code (module.py,
    _python_twin) with Python's functions standing in for Numba's: every statement of 60
    random models' programs, every function of the table, fractional powers, constants,
    max, min and conditions print, with the stand-ins put in the kernel's text, as the Python
    twin's printer writes them."""
    import re

    from symgrad import functions
    from symgrad.codegen.numba import (
        PythonScalarPrinter,
        SharedScalarPrinter,
        python_stand_ins,
    )
    from symgrad.compiled import build_spec

    from .random_models import SCALARS, SeededDrawer, scalar_model

    x, y = sp.symbols("x y", real=True)
    expressions = [row.build(x) for row in functions.ROWS.values() if row.public]
    expressions += [x ** sp.Rational(3, 2), (x + y) ** sp.Float(0.3), x ** y, x ** -2.5,
                    sp.sqrt(x), 1 / sp.sqrt(x + y), x ** 3, sp.pi * x, sp.E ** x + sp.exp(y),
                    sp.Max(x, y, 0), sp.Min(x, 2 * y), sp.sign(x), sp.atan2(y, x),
                    sp.Piecewise((x, x > y), (sp.cos(y), x < 0)), sp.Abs(x) ** sp.Rational(1, 3)]
    for seed in range(60):
        expr = SeededDrawer(seed).first(scalar_model, SCALARS)
        wrt = sorted(expr.free_symbols, key=lambda s: s.name)
        expressions += [st.operation for st in build_spec(expr, wrt).value_and_grad.statements]
    called = re.compile(r"(?<![\w.])(?:np\.\w+|sg_\w+)")
    checked = 0
    for e in expressions:
        try:
            kernel = SharedScalarPrinter().expression(e)
        except NotImplementedError:
            continue
        stand_ins = python_stand_ins(kernel)
        twin = called.sub(lambda m, table=stand_ins: table.get(m.group(), m.group()), kernel)
        assert twin == PythonScalarPrinter().expression(e), e
        checked += 1
    assert checked > 900
    assert "sg_pow(" in SharedScalarPrinter().expression(x ** sp.Rational(3, 2))


def _renumbered(e, rng):
    """e with most numbers of its sums' terms and products' factors drawn again (of the same
    kind, either sign); exponents and the numbers of functions and conditions stay."""
    if not isinstance(e, sp.Basic) or not e.args or e.is_Relational:
        return e
    args = []
    for a in e.args:
        if (e.is_Add or e.is_Mul) and a.is_Number and abs(a) > 1 and rng.random() < 0.8:
            sign = rng.choice([-1, 1])
            a = (sp.Integer(sign * rng.randint(2, 10**7)) if a.is_Integer
                 else sp.Float(sign * rng.uniform(1.01, 50)) if a.is_Float else a)
        args.append(_renumbered(a, rng))
    return e.func(*args)


def test_sums_of_two_names_print_as_sympy_orders_them():
    import itertools

    from sympy.printing.numpy import NumPyPrinter

    from symgrad.codegen.numba import PythonScalarPrinter, ScalarPrinter

    names = ["_t1", "_t10", "_t9", "_t100", "in_0", "in_10", "in_2", "x", "X", "_d5", "_c0"]
    symbols = [sp.Symbol(n, real=True) for n in names] + [sp.Symbol("q"),
                                                         sp.Symbol("q", positive=True)]
    for printer in (ScalarPrinter, PythonScalarPrinter):
        class SymPys(printer):
            _print_Add = NumPyPrinter._print_Add

        for a, b in itertools.product(symbols, repeat=2):
            for evaluate in (True, False):
                e = sp.Add(a, b, evaluate=evaluate)
                assert printer().doprint(e) == SymPys().doprint(e), e
    renamed = ScalarPrinter({symbols[0]: "x_[0]"}).doprint(symbols[1] + symbols[0])
    assert renamed == "x_[0] + _t10"


def test_the_docstring_renames_statements_back_as_a_substitution_would(monkeypatch):
    """The module docstring shows the lowered program in the user's symbols, renamed without
    SymPy evaluating each statement again: on random scalar and matrix models, with their
    parameters in a random order (so that symgrad's names order differently from the
    user's), the docstring is the one that renaming by a plain substitution gives
    (symgrad.nodes.replaced: SymPy's xreplace with each Piecewise kept as written)."""
    import random

    from symgrad.compiled import build_spec
    from symgrad.derive import graph
    from symgrad.nodes import replaced

    from .random_models import SCALARS, SeededDrawer, matrix_model, parameters, scalar_model

    rng = random.Random(1)
    a, b, c = sp.symbols("a b c", real=True)
    models = [(sp.sin(a - b) * c, [b, a, c]), (sp.atan(a - c) * sp.sinh(b - a), [c, a, b])]
    for seed in range(40):
        if seed % 3 == 2:
            expr = SeededDrawer(seed).first(matrix_model)
            symbols = parameters(expr)
        else:
            expr = SeededDrawer(seed).first(scalar_model, SCALARS)
            symbols = sorted(expr.free_symbols, key=str)
        models.append((expr, rng.sample(symbols, rng.randint(1, len(symbols)))))
    renamed = [build_spec(expr, wrt).docstring for expr, wrt in models]
    monkeypatch.setattr(graph, "dag_xreplace", lambda e, table, renaming=False:
                        replaced(e, table))
    for (expr, wrt), docstring in zip(models, renamed):
        assert build_spec(expr, wrt).docstring == docstring, expr


def test_a_long_programs_docstring_renames_only_the_steps_it_shows(monkeypatch):
    """A program shown step by step has its statements renamed to the user's symbols when a
    step is shown, not all of them: the docstring is the one that renaming every statement
    first gives (long models with their parameters in a random order)."""
    import random

    from bench.scaling import model
    from symgrad.codegen import docstring
    from symgrad.codegen.ir import Statement
    from symgrad.compiled import build_spec

    rng = random.Random(2)
    models = []
    for family, n in (("rosenbrock", 40), ("pendulum", 8), ("sum", 60), ("product", 30)):
        expr, wrt, _ = model(family, n)
        models.append((expr, rng.sample(wrt, len(wrt))))
    lazily = [build_spec(expr, wrt).docstring for expr, wrt in models]
    original = docstring._renamed_program
    calls = []

    def eagerly(program, back, parameters):
        renamed, rename = original(program, back, parameters)
        calls.append(rename is not None)
        if rename is not None:
            renamed.statements = [Statement(s.target, rename(s.operation))
                                  for s in renamed.statements]
        return renamed, None

    monkeypatch.setattr(docstring, "_renamed_program", eagerly)
    for (expr, wrt), text in zip(models, lazily):
        assert build_spec(expr, wrt).docstring == text, expr
    assert all(calls) and len(calls) == len(models)     # every one shown step by step


def test_writing_a_module_keeps_no_statement_texts(tmp_path, monkeypatch):
    """The statements' texts and shapes serve the kernels of one module: once it is
    written, they are dropped (a model of 60,000 statements would otherwise stay in memory),
    and the next module prints its own statements again, right."""
    from symgrad.codegen import ir, numba
    from symgrad.codegen.module import module_source
    from symgrad.compiled import build_spec

    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path))
    x, y = sp.symbols("x y", real=True)
    first = module_source(build_spec(sp.sin(3 * x) * y + 7 * y, [x, y]), "test")
    assert not numba._PRINTED and not ir._SHAPES
    second = module_source(build_spec(sp.sin(5 * x) * y + 2 * y, [x, y]), "test")
    assert "5.0*" in second and "3.0*" not in second and "3.0*" in first
    assert not numba._PRINTED and not ir._SHAPES


def counting_comparisons(monkeypatch) -> list:
    """[n]: how many times SymPy compares two nodes with ==, counted from now on (set it
    back to 0 to count again)."""
    from sympy.core.basic import Basic

    comparisons = [0]
    equal = Basic.__eq__

    def counted(self, other):
        comparisons[0] += 1
        return equal(self, other)

    monkeypatch.setattr(Basic, "__eq__", counted)
    return comparisons


def test_each_call_costs_what_the_first_does_whatever_came_before(monkeypatch):
    """symgrad builds nodes equal to, not the same objects as, those an earlier call left in
    SymPy's cache, and SymPy finds a cached entry by comparing node by node: on a nested
    model that walks every path of the tree (a second sg.grad at depth 16 compared 160,448
    times against the first call's 883).  Counted, not timed: every later call compares
    about as often as the first, after other calls and after the model is built again."""

    comparisons = counting_comparisons(monkeypatch)
    f, x, w = nested(16)
    x0, w0 = 0.7, 0.3
    _, dx, dw = nested_by_hand(16, x0, w0)

    def grad_comparisons(model) -> int:
        comparisons[0] = 0
        g = sg.grad(model, [x, w])
        spent = comparisons[0]
        assert evaluate(g[x], {x: x0, w: w0}) == pytest.approx(dx, rel=1e-12)
        assert evaluate(g[w], {x: x0, w: w0}) == pytest.approx(dw, rel=1e-12)
        return spent

    first = grad_comparisons(f)
    later = [grad_comparisons(f)]
    sg.compile(f, [x, w])
    later.append(grad_comparisons(f))
    sg.hessian(nested(4)[0], [x, w])
    later.append(grad_comparisons(f))
    later.append(grad_comparisons(nested(16)[0]))      # the same model, built again
    assert max(later) <= 2 * first + 100, (first, later)


@pytest.mark.parametrize("plan_name", ["hessian_plan", "hvp_plan"])
def test_a_second_order_plan_inside_a_larger_call_compares_as_often_as_alone(monkeypatch,
                                                                            plan_name):
    """sg.generate of a second-order model runs the first-order derivation, then the plans
    of the Hessian and the HVP, in one call: what the earlier passes left in SymPy's cache
    were copies of what the plans build again, compared node by node (at depth 24 the
    generation took 188 s).  Each plan begins with an empty cache: counted, not timed."""
    import symgrad.second as second
    from symgrad.compiled import build_spec
    from symgrad.nodes import one_call

    comparisons = counting_comparisons(monkeypatch)
    f, x, w = nested(12)
    plan = getattr(second, plan_name)

    @one_call
    def alone():
        comparisons[0] = 0
        plan(f, [x, w], {"x", "w"})
        return comparisons[0]

    @one_call
    def after_a_first_order_pass():
        build_spec(f, [x, w])
        sg.hessian(f, [x, w])
        comparisons[0] = 0
        plan(f, [x, w], {"x", "w"})
        return comparisons[0]

    first = alone()
    later = after_a_first_order_pass()
    assert later <= 2 * first + 100, (first, later)


def test_sympys_cache_is_cleared_when_the_outermost_pass_begins_and_ends():
    """Nested passes share the cache (what one pass built, the next finds); only the
    outermost clears it, before and after."""
    from symgrad.nodes import one_pass

    x = sp.Symbol("x")
    cached = sp.Mul.__new__      # one of SymPy's cached constructors

    def size() -> int:
        return cached.cache_info().currsize

    @one_pass
    def inner():
        sp.Mul(x, sp.Symbol("inner"))
        return size()

    @one_pass
    def outer():
        before = size()
        sp.Mul(x, sp.Symbol("outer"))
        return before, size(), inner(), size()

    sp.Mul(x, sp.Symbol("user"))
    assert size() > 0
    before, built, in_inner, after_inner = outer()
    assert before == 0                          # cleared as the outermost pass began
    assert built >= 1 and in_inner >= built + 1 and after_inner == in_inner   # kept inside
    assert size() == 0                          # and cleared as it ended


@pytest.mark.parametrize("depth", [1, 5, 20])
def test_the_benchmark_counts_a_nested_models_dag_in_closed_form(depth):
    """bench.scaling fits its curves against the size of the model's DAG: level k of the
    model nested n deep adds a product of k + 1 factors (SymPy flattens f sin(f + w)), a sine
    and a sum of two terms, so the DAG has 3n + 2 nodes and n(n + 1)/2 + 4n edges."""
    from bench.scaling import _dag_tables, dag_size, model

    expr, _, _ = model("nesting", depth)
    assert dag_size([expr]) == (3 * depth + 2, depth * (depth + 1) // 2 + 4 * depth)
    # a time proportional to the edges has slope 1 against them (and nearly 2 in n)
    sizes = {str(n): {"model": list(dag_size([model("nesting", n)[0]]))} for n in (10, 20, 40)}
    results = {"nesting": {"grad": {n: {"grad": 1e-6 * size["model"][1]}
                                    for n, size in sizes.items()}}}
    table = "\n".join(_dag_tables(results, {"nesting": sizes}))
    row = next(line for line in table.splitlines() if line.startswith("| nesting |")
               and line.count("|") > 7)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "1.00" and 1.5 < float(cells[1]) < 2.0, row    # (n^2 from large n)
