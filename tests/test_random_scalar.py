"""Random scalar expressions: symgrad's gradients against sympy.diff and finite differences.

The expressions are drawn from a seeded generator (deterministic), with every function's
argument kept in its domain (log and sqrt of positive quantities, asin of values in (-1, 1)).
"""

import math
import random

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad import ops

X, Y, Z = sp.symbols("x y z", real=True)  # real: sympy.diff of Abs is then sign
SYMBOLS = (X, Y, Z)
POINT = {X: 0.7, Y: -0.4, Z: 1.3}

LAMBDIFY_FUNCTIONS = {
    "sigmoid": lambda v: 1 / (1 + math.exp(-v)),
    "softplus": lambda v: float(np.logaddexp(0, v)),
    "logsigmoid": lambda v: -float(np.logaddexp(0, -v)),
    "relu": lambda v: max(v, 0.0),
    "Heaviside": lambda v, h=0.5: 1.0 if v > 0 else (h if v == 0 else 0.0),
    "sign": lambda v: float(np.sign(v)),
    "log1p": math.log1p,
    "re": lambda v: float(np.real(v)),   # sympy.diff writes re/im where it cannot prove realness
    "im": lambda v: float(np.imag(v)),
}


def _positive(e):
    return sp.exp(e / 4) + sp.Rational(1, 2)


def _bounded(e):
    return sp.tanh(e) * sp.Rational(9, 10)


UNARY = [
    lambda e: sp.sin(e), lambda e: sp.cos(e), lambda e: sp.exp(e / 3), lambda e: sp.tanh(e),
    lambda e: sp.log(_positive(e)), lambda e: sp.sqrt(_positive(e)), lambda e: sp.atan(e),
    lambda e: ops.sigmoid(e), lambda e: ops.softplus(e), lambda e: ops.logsigmoid(e),
    lambda e: sp.asin(_bounded(e)), lambda e: sp.acos(_bounded(e)), lambda e: sp.sinh(e / 2),
    lambda e: sp.cosh(e / 2), lambda e: sp.erf(e), lambda e: sp.Abs(e) + e,
    lambda e: 1 / _positive(e), lambda e: e**3, lambda e: ops.log1p(_positive(e)),
    lambda e: sp.tan(_bounded(e)),
]
BINARY = [
    lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a - b,
    lambda a, b: a / _positive(b), lambda a, b: sp.Max(a, b) + sp.Min(a, b) * 2,
    lambda a, b: _positive(a) ** sp.tanh(b),
    lambda a, b: sp.Piecewise((a * b, sp.StrictGreaterThan(a, b + 1, evaluate=False)),
                              (a + b, True), evaluate=False),
]


def random_expression(rng: random.Random, depth: int):
    if depth == 0 or rng.random() < 0.2:
        leaf = rng.choice(SYMBOLS)
        return leaf * rng.choice([1, 2, -1, sp.Rational(1, 2)]) + rng.choice([0, 0, 1, -0.5])
    if rng.random() < 0.5:
        return rng.choice(UNARY)(random_expression(rng, depth - 1))
    return rng.choice(BINARY)(random_expression(rng, depth - 1), random_expression(rng, depth - 1))


def numeric(expr):
    # the math printer: NumPy's printing of Piecewise can take minutes on these expressions
    return sp.lambdify(SYMBOLS, expr, modules=[LAMBDIFY_FUNCTIONS, "math"])


def central_difference(f, point, symbol, h=1e-6):
    plus, minus = dict(point), dict(point)
    plus[symbol] += h
    minus[symbol] -= h
    return (f(*[plus[s] for s in SYMBOLS]) - f(*[minus[s] for s in SYMBOLS])) / (2 * h)


EXPRESSIONS = [random_expression(random.Random(seed), 4) for seed in range(220)]


@pytest.mark.parametrize("seed", range(len(EXPRESSIONS)))
def test_random_expression_gradient_matches_sympy_diff_and_finite_differences(seed):
    expr = EXPRESSIONS[seed]
    wrt = sorted(expr.free_symbols, key=lambda s: s.name)
    if not wrt:
        pytest.skip("constant expression")
    f = numeric(expr)
    args = [POINT[s] for s in SYMBOLS]
    if not np.isfinite(f(*args)):
        pytest.skip("expression not finite at the test point")
    grads = sg.grad(expr, wrt)
    for symbol in wrt:
        ours = float(numeric(grads[symbol])(*args))
        reference = float(numeric(sp.diff(expr, symbol))(*args))
        finite = central_difference(f, POINT, symbol)
        scale = max(1.0, abs(reference))
        assert abs(ours - reference) <= 1e-9 * scale, (expr, symbol)
        assert abs(ours - finite) <= 1e-5 * scale, (expr, symbol)


@pytest.mark.parametrize("seed", [0, 7, 19, 42, 99])
def test_compiled_batch_equals_pointwise_evaluation(seed):
    expr = EXPRESSIONS[seed]
    wrt = sorted(expr.free_symbols, key=lambda s: s.name)
    f = sg.compile(expr, wrt)
    rng = np.random.default_rng(seed)
    arrays = {name: rng.uniform(-1, 1, size=(4, 3)) for name in f.inputs}
    values, grads = f.value_and_grad(**arrays)
    assert values.shape == (4, 3)
    for index in np.ndindex(4, 3):
        point = {name: float(a[index]) for name, a in arrays.items()}
        value, grad = f.value_and_grad(**point)
        np.testing.assert_allclose(values[index], value, rtol=1e-14, equal_nan=True)
        for name in grad:
            np.testing.assert_allclose(grads[name][index], grad[name], rtol=1e-14, atol=1e-300,
                                       equal_nan=True)


@pytest.mark.parametrize("seed", [3, 11, 23])
def test_compiled_gradient_matches_the_symbolic_one(seed):
    expr = EXPRESSIONS[seed]
    wrt = sorted(expr.free_symbols, key=lambda s: s.name)
    f = sg.compile(expr, wrt)
    point = {s.name: POINT[s] for s in SYMBOLS if s.name in f.inputs}
    value, grads = f.value_and_grad(**point)
    args = [POINT[s] for s in SYMBOLS]
    assert value == pytest.approx(float(numeric(expr)(*args)), rel=1e-12)
    symbolic = sg.grad(expr, wrt)
    for symbol in wrt:
        assert grads[symbol.name] == pytest.approx(float(numeric(symbolic[symbol])(*args)),
                                                   rel=1e-11, abs=1e-14)


def test_scalar_inputs_broadcast_like_ufuncs():
    w, x, y = sp.symbols("w x y")
    f = sg.compile((w * x - y) ** 2, [w])
    value, grads = f.value_and_grad(w=np.array([1.0, 2.0, 3.0]), x=1.0, y=np.array([[2.0], [0.0]]))
    assert value.shape == (2, 3)
    np.testing.assert_allclose(value, (np.array([1.0, 2, 3]) - np.array([[2.0], [0]])) ** 2)
    np.testing.assert_allclose(grads["w"], 2 * (np.array([1.0, 2, 3]) - np.array([[2.0], [0]])))


def test_division_by_zero_and_domain_errors_follow_numpy():
    z = sp.Symbol("z")
    f = sg.compile(sp.log(z), [z])
    with np.errstate(all="ignore"):
        expected_values = np.log(np.array([0.0, -1.0, np.inf]))
    for point, expected, slope in zip([0.0, -1.0, np.inf], expected_values, [np.inf, -1.0, 0.0]):
        value, grads = f.value_and_grad(z=point)            # the float path
        np.testing.assert_equal([value, grads["z"]], [expected, slope])
    values, grads = f.value_and_grad(z=np.array([0.0, -1.0, np.inf]))   # the array path
    np.testing.assert_equal(values, expected_values)
    np.testing.assert_equal(grads["z"], [np.inf, -1.0, 0.0])


def test_positional_call_returns_value_then_gradients_in_parameter_order():
    w, x, y = sp.symbols("w x y")
    f = sg.compile((w * x - y) ** 2, [w, y])
    assert f.module.value_and_grad_positional(1.0, 2.0, 1.0) == (1.0, -2.0, 2.0)
