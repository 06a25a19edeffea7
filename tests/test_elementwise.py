"""A function of the user's own, made with sg.elementwise, used end to end: derived, printed,
compiled (fused into the loops), generated as a standalone module, and checked against finite
differences, JAX, PyTorch and autograd; and the table of symgrad's own functions."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
import sympy as sp
from scipy import special

import symgrad as sg
from symgrad import functions

# swish (SiLU): x sigmoid(x), with its derivative written through the output y = x sigmoid(x)
swish = sg.elementwise("swish", lambda x: x * sg.sigmoid(x),
                       derivative=lambda x, y: sg.sigmoid(x) + y * (1 - sg.sigmoid(x)))
# a bump without a derivative: symgrad differentiates the definition
bump = sg.elementwise("bump", lambda x: sp.exp(-x**2) + sp.Rational(1, 2) * sp.sin(x))
# a wrong derivative (sigmoid(x) alone drops x sigmoid'(x)): sg.check must catch it
wrong = sg.elementwise("wrong_swish", lambda x: x * sg.sigmoid(x),
                       derivative=lambda x, y: sg.sigmoid(x))

w, u, t = sp.symbols("w u t")
W = sg.matrix("W", 3, 4)
x = sg.vector("x", 4)
c = sg.vector("c", 3)
SCALAR = swish(w * u) + bump(w) * t                        # a scalar model
MATRIX = sg.sum(sg.hadamard(bump(swish(W @ x) + c), c))      # a matrix model, fused Maps

rng = np.random.default_rng(3)
Wv, xv, cv = rng.standard_normal((3, 4)), rng.standard_normal((4, 1)), rng.standard_normal((3, 1))


def np_swish(z):
    return z * special.expit(z)


def np_bump(z):
    return np.exp(-z**2) + 0.5 * np.sin(z)


def np_matrix(W, x, c):
    return float(np.sum(np_bump(np_swish(W @ x) + c) * c))


def finite_difference(f, a, h=1e-6):
    grad = np.zeros_like(a)
    for index in np.ndindex(a.shape):
        step = np.zeros_like(a)
        step[index] = h
        grad[index] = (f(a + step) - f(a - step)) / (2 * h)
    return grad


# --------------------------------------------------------------------------------------
# Derivation and printing
# --------------------------------------------------------------------------------------
def test_scalar_and_matrix_arguments():
    assert str(swish(w)) == "swish(w)"
    assert isinstance(swish(W @ x), sg.Map) and swish(W @ x).shape == (3, 1)
    assert swish(sp.Integer(0)) == 0                   # evaluated at numbers
    assert float(bump(sp.Float(0.3))) == pytest.approx(np_bump(0.3))


def test_grad_uses_the_given_derivative_and_agrees_with_sympy():
    g = sg.grad(swish(w), [w])[w]
    # the derivative reads the output y = swish(w) rather than differentiating x sigmoid(x)
    assert g.has(swish(w))
    explicit = sp.diff(w / (1 + sp.exp(-w)), w)
    for value in (-3.0, -0.2, 0.0, 1.7):
        assert float(g.subs(w, value)) == pytest.approx(float(explicit.subs(w, value)), rel=1e-12)


def test_without_a_derivative_the_definition_is_differentiated():
    g = sg.grad(bump(w), [w])[w]
    assert sp.simplify(g - (-2 * w * sp.exp(-w**2) + sp.cos(w) / 2)) == 0


def test_sympy_diff_and_second_order_use_it_too():
    assert sp.diff(swish(w), w).has(swish(w))
    hessian = sg.hessian(swish(w) * u, [w])
    explicit = sp.diff(u * w / (1 + sp.exp(-w)), w, 2)
    point = {w: 0.4, u: -1.3}
    assert float(hessian[w, w].subs(point)) == pytest.approx(float(explicit.subs(point)))


def test_formulas_print_the_name():
    text = sg.show(sg.grad(SCALAR, [w]))
    assert "swish(" in text and "bump" not in text     # bump's derivative is its definition's
    assert r"\operatorname{swish}" in sp.latex(swish(w))
    assert r"\operatorname{wrong\_swish}" in sp.latex(wrong(w))


# --------------------------------------------------------------------------------------
# Compiled and generated code
# --------------------------------------------------------------------------------------
def _code(source: str) -> str:
    """A module's text without its docstring."""
    return source[source.index('"""', 3) + 3:]


def test_compiled_matrix_model_fuses_and_matches_numpy_and_finite_differences():
    f = sg.compile(MATRIX, wrt=[W, c], name="elementwise_matrix")
    value, grads = f.value_and_grad(W=Wv, x=xv, c=cv)
    assert value == pytest.approx(np_matrix(Wv, xv, cv), rel=1e-12)
    np.testing.assert_allclose(grads["W"], finite_difference(lambda a: np_matrix(a, xv, cv), Wv),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grads["c"], finite_difference(lambda a: np_matrix(Wv, xv, a), cv),
                               rtol=1e-6, atol=1e-8)
    code = _code(f.source)
    # the definitions are inlined into the loops, through the fast kernels they call
    assert "sg_sigmoid(" in code and "sg_exp(" in code
    # the user's name is in the docstring only, never an identifier of the code
    assert "swish" not in code and "bump" not in code
    # the forward pass is one loop over the Map (no temporary array for swish(W x) + c)
    forward = code[code.index("def _forward_kernel"):code.index("def _forward_kernel") + 2000]
    assert len(re.findall(r"for _i in ", forward.split("\ndef ")[0])) == 1


def test_compiled_scalar_model_on_floats_and_arrays():
    f = sg.compile(SCALAR, wrt=[w, u], name="elementwise_scalar")

    def value(wv, uv, tv):
        return np_swish(wv * uv) + np_bump(wv) * tv

    for point in [(0.3, -1.2, 2.0), (-2.0, 0.5, 0.1)]:
        v, g = f.value_and_grad(w=point[0], u=point[1], t=point[2])     # the Python twin
        assert v == pytest.approx(value(*point), rel=1e-12)
        assert g["w"] == pytest.approx(
            (value(point[0] + 1e-6, *point[1:]) - value(point[0] - 1e-6, *point[1:])) / 2e-6,
            rel=1e-6)
    arrays = rng.standard_normal((3, 50))
    v, g = f.value_and_grad(w=arrays[0], u=arrays[1], t=arrays[2])       # the Numba loop
    np.testing.assert_allclose(v, value(*arrays), rtol=1e-12)
    np.testing.assert_allclose(
        g["u"], (value(arrays[0], arrays[1] + 1e-6, arrays[2])
                 - value(arrays[0], arrays[1] - 1e-6, arrays[2])) / 2e-6, rtol=1e-5, atol=1e-8)
    assert "swish" not in _code(f.source)


def test_generated_module_imports_alone_and_agrees(tmp_path):
    path = sg.generate(MATRIX, wrt=[W, c], path=tmp_path / "user_functions.py")
    text = path.read_text()
    assert "swish(" in text[:text.index('"""', 3)]     # the formulas name it
    assert "swish" not in _code(text)
    spec = importlib.util.spec_from_file_location("user_functions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    value, grads = module.value_and_grad(W=Wv, x=xv, c=cv)
    assert value == pytest.approx(np_matrix(Wv, xv, cv), rel=1e-12)
    reference = sg.compile(MATRIX, wrt=[W, c], name="elementwise_matrix").grad(W=Wv, x=xv, c=cv)
    np.testing.assert_allclose(grads["W"], reference["W"], rtol=1e-13)


# --------------------------------------------------------------------------------------
# sg.check against every backend, and a wrong derivative caught
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["finite-differences", "jax", "torch", "autograd"])
def test_check_against_each_backend(backend):
    if backend != "finite-differences":
        pytest.importorskip(backend)
    for model, wrt in [(SCALAR, [w, u, t]), (MATRIX, [W, c])]:
        report = sg.check(model, wrt, against=[backend], points=2)
        assert report.ok, str(report)
        assert backend in report.backends


def test_a_wrong_derivative_is_caught_by_finite_differences():
    report = sg.check(wrong(w * u), [w, u], against=["finite-differences"], points=2)
    assert not report.ok
    assert {c.quantity for c in report.failures} == {"w", "u"}
    assert all(c.backend == "finite-differences" for c in report.failures)
    matrix_report = sg.check(sg.sum(wrong(W @ x)), [W], against=["finite-differences"],
                             points=1)
    assert {c.quantity for c in matrix_report.failures} == {"W"}


# --------------------------------------------------------------------------------------
# Bad definitions are refused, naming what was written
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, message", [
    ("2fast", "must be a Python identifier"), ("_hidden", "must be a Python identifier"),
    ("lambda", "must be a Python identifier"), ("a-b", "must be a Python identifier"),
    ("ｓwish", "NFKC"), ("exp", "symgrad's own function sg.exp"),
    ("Pow", "already a SymPy or symgrad name"), ("Map", "already a SymPy or symgrad name"),
])
def test_bad_names_are_refused(name, message):
    with pytest.raises(ValueError, match=message):
        sg.elementwise(name, lambda x: x)


def test_bad_definitions_are_refused():
    with pytest.raises(TypeError, match="name must be a string"):
        sg.elementwise(3, lambda x: x)
    with pytest.raises(TypeError, match="value must be a function"):
        sg.elementwise("cube", "x**3")
    with pytest.raises(ValueError, match=r"depends on \['k'\] besides x"):
        sg.elementwise("cube", lambda x: sp.Symbol("k") * x**3)
    with pytest.raises(TypeError, match="scalar SymPy expression"):
        sg.elementwise("cube", lambda x: sg.matrix("M", 2, 2))
    with pytest.raises(ValueError, match="derivative.*expression of x and y"):
        sg.elementwise("cube", lambda x: x**3, derivative=lambda x, y: sp.Symbol("z"))
    with pytest.raises(ValueError, match="value\\(x\\) failed"):
        sg.elementwise("cube", lambda x: 1 / 0)


def test_an_explicit_sympy_matrix_is_refused_rather_than_exponentiated():
    # sp.exp of a SymPy Matrix is the matrix exponential, not the exp of each entry
    with pytest.raises(TypeError, match="exp: pass a matrix expression"):
        sg.exp(sp.Matrix([[1, 2], [3, 4]]))
    with pytest.raises(TypeError, match="swish: pass a matrix expression"):
        swish(sp.eye(2))


def test_an_undefined_function_names_sg_elementwise_when_compiled():
    mystery = sp.Function("mystery")
    sg.register_rule(type(mystery(w)), lambda g, y, a, **_: (g * 2,))
    try:
        assert sg.grad(mystery(w), [w])[w] == 2     # register_rule reaches derivation
        with pytest.raises(NotImplementedError, match=r"sg\.elementwise\('mystery'"):
            sg.compile(mystery(w) * u, [w], name="mystery_model")
    finally:
        del sg.RULES[type(mystery(w))]


# --------------------------------------------------------------------------------------
# The table of symgrad's own functions
# --------------------------------------------------------------------------------------
def test_every_public_row_is_an_sg_function_with_a_rule_and_code_for_every_target():
    from symgrad.checking.translate import TRANSLATORS

    for name, row in functions.ROWS.items():
        if row.value is not None or row.node is None:
            continue                       # users' functions; powers (sqrt, square)
        assert (name in functions.FUNCTIONS
                and getattr(sg, name) is functions.FUNCTIONS[name]) == row.public
        assert row.node in sg.RULES
        assert row.numba and row.python
        for translator in TRANSLATORS.values():
            assert row.key in translator.functions


@pytest.mark.parametrize("name", sorted(n for n, r in functions.ROWS.items()
                                        if r.node is not None and r.value is None))
def test_each_row_derivative_matches_sympy(name):
    row = functions.ROWS[name]
    z = sp.Symbol("z", real=True)
    derived = row.derivative(z, row.build(z))
    at = 0.37
    assert float(derived.subs(z, at)) == pytest.approx(float(sp.diff(row.build(z), z).subs(
        z, at).replace(sp.DiracDelta, lambda *a: 0)), rel=1e-12, abs=1e-15)
