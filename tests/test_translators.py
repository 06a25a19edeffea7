"""The translators: one model, the same numbers in NumPy, JAX, PyTorch and autograd."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import sympy as sp
from scipy import special
from sympy.codegen.cfunctions import log1p
from sympy.matrices.expressions.matexpr import MatrixElement

import symgrad as sg
from symgrad import functions, operations, ops
from symgrad.checking.translate import (
    TRANSLATORS,
    NumpyTranslator,
    require,
    translate,
)
from symgrad.derive.graph import Canonicalizer
from symgrad.derive.rules import RULES

FRAMEWORKS = ["numpy", "jax", "torch", "autograd"]

rng = np.random.default_rng(7)
W = sg.matrix("W", 2, 3)
S = sg.matrix("S", 3, 3)
x = sg.vector("x", 3)
b = sg.vector("b", 2)
r = sg.matrix("r", 1, 3)
c = sp.Symbol("c")
VALUES = {"W": rng.standard_normal((2, 3)), "S": rng.standard_normal((3, 3)) + 3 * np.eye(3),
          "x": rng.standard_normal((3, 1)), "b": rng.standard_normal((2, 1)),
          "r": rng.standard_normal((1, 3)), "c": 0.7}
INPUTS = [W, S, x, b, r, c]
Wv, Sv, xv, bv, rv, cv = (VALUES[s.name] for s in INPUTS)
a0, a1, a2 = sp.symbols("a0 a1 a2")


def sigmoid(z):
    return special.expit(z)


def softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# (name, expression, the same in NumPy): every node type the canonical form can produce.
NODES = [
    ("map_column_and_scalar", ops.Map(sp.Lambda((a0, a1, a2), a0 * a1 + a2), (2, 3), W, b, c),
     Wv * bv + cv),
    ("map_row", ops.Map(sp.Lambda((a0, a1), sp.exp(a0) - a1), (2, 3), W, r), np.exp(Wv) - rv),
    ("map_pure_broadcast", sg.broadcast(b, (2, 3)), np.broadcast_to(bv, (2, 3))),
    ("map_constant", ops.Map(sp.Lambda((a0,), a0), (2, 2), sp.Integer(2)), np.full((2, 2), 2.0)),
    ("axis_sum_0", sg.sum(W, axis=0), Wv.sum(axis=0, keepdims=True)),
    ("axis_sum_1", sg.sum(W, axis=1), Wv.sum(axis=1, keepdims=True)),
    ("sum_all", sg.sum(W), Wv.sum()),
    ("logsumexp_0", sg.logsumexp(W, axis=0), special.logsumexp(Wv, axis=0, keepdims=True)),
    ("logsumexp_1", sg.logsumexp(W, axis=1), special.logsumexp(Wv, axis=1, keepdims=True)),
    ("logsumexp_all", sg.logsumexp(W), special.logsumexp(Wv)),
    ("softmax_0", sg.softmax(W, axis=0), softmax(Wv, 0)),
    ("softmax_1", sg.softmax(W, axis=1), softmax(Wv, 1)),
    ("softmax_all", sg.softmax(W), np.exp(Wv) / np.exp(Wv).sum()),
    ("logdet", sg.logdet(S), np.linalg.slogdet(Sv)[1]),
    ("logdet_negative_is_nan", sg.logdet(-S), np.nan),
    ("matmul", W @ x, Wv @ xv),
    ("matmul_with_scalar", c * (W @ x), cv * (Wv @ xv)),
    ("transpose", W.T, Wv.T),
    ("inverse", sg.inv(S), np.linalg.inv(Sv)),
    ("determinant", sg.det(S), np.linalg.det(Sv)),
    ("trace", sg.trace(S), np.trace(Sv)),
    ("matrix_element", MatrixElement(W, 1, 2), Wv[1, 2]),
    ("identity", S + sp.Identity(3), Sv + np.eye(3)),
    ("ones", W @ sp.OneMatrix(3, 2), Wv @ np.ones((3, 2))),
    ("zeros", W + sp.ZeroMatrix(2, 3), Wv),
    ("hadamard", sg.hadamard(W, W), Wv * Wv),
    ("hadamard_power", sp.HadamardPower(W, 3), Wv**3),
    ("matrix_power", S @ S, Sv @ Sv),
    ("named", sg.name("Z", W @ x), Wv @ xv),
    ("named_scalar", sg.name("z", sg.sum(W)), Wv.sum()),
    ("scatter", ops.Scatter(c, 1, 0, 2, 3), np.array([[0, 0, 0], [cv, 0, 0.0]])),
]

z = sp.Symbol("z")
zv = np.array([-2.5, -0.3, 0.0, 0.4, 3.0])
SCALARS = [
    ("sigmoid", ops.sigmoid(z), sigmoid(zv)),
    ("softplus", ops.softplus(z), np.logaddexp(0, zv)),
    ("logsigmoid", ops.logsigmoid(z), -np.logaddexp(0, -zv)),
    ("relu", ops.relu(z), np.maximum(zv, 0)),
    ("erf", sp.erf(z), special.erf(zv)),
    ("abs", sp.Abs(z), np.abs(zv)),
    ("max", sp.Max(z, 0.2), np.maximum(zv, 0.2)),
    ("min", sp.Min(z, z**2), np.minimum(zv, zv**2)),
    ("piecewise", sp.Piecewise((z**2, z > 0), (-z, True)), np.where(zv > 0, zv**2, -zv)),
    ("heaviside", sp.Heaviside(z), np.heaviside(zv, 0.5)),
    ("heaviside_at_zero", sp.Heaviside(z, 0), np.heaviside(zv, 0.0)),
    ("sign", sp.sign(z), np.sign(zv)),
    ("log1p", log1p(z**2), np.log1p(zv**2)),
    ("sqrt", sp.sqrt(z**2 + 1), np.sqrt(zv**2 + 1)),
    ("rsqrt", 1 / sp.sqrt(z**2 + 1), 1 / np.sqrt(zv**2 + 1)),
    ("fractional_power", (z**2 + 1) ** sp.Rational(3, 2), (zv**2 + 1) ** 1.5),
    ("trigonometry", sp.sin(z) + sp.cos(z) + sp.tan(z), np.sin(zv) + np.cos(zv) + np.tan(zv)),
    ("hyperbolic", sp.sinh(z) * sp.cosh(z) - sp.tanh(z),
     np.sinh(zv) * np.cosh(zv) - np.tanh(zv)),
    ("inverse_trigonometry", sp.atan(z) + sp.asin(z / 4) + sp.acos(z / 4),
     np.arctan(zv) + np.arcsin(zv / 4) + np.arccos(zv / 4)),
    ("constants", sp.pi * z + sp.E + sp.exp(-2), np.pi * zv + np.e + np.exp(-2)),
    ("real_and_imaginary_parts", sp.re(z) + sp.im(z), zv),
]


def framework(name: str):
    """Skip (never pass) the test when the framework is not installed."""
    if name != "numpy":
        pytest.importorskip(name)
    return name


def to_framework(name: str, value):
    if name == "torch":
        import torch
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    if name == "jax":
        import jax.numpy as jnp
        return jnp.asarray(value)
    return value


def to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().numpy()
    return np.asarray(value, dtype=np.float64)


@pytest.mark.parametrize("name", FRAMEWORKS)
@pytest.mark.parametrize("node, expr, expected", NODES, ids=[n[0] for n in NODES])
def test_every_matrix_node_gives_the_numpy_value(name, node, expr, expected):
    f = translate(expr, INPUTS, framework(name))
    got = f(**{k: to_framework(name, v) for k, v in VALUES.items()})
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FRAMEWORKS)
@pytest.mark.parametrize("node, expr, expected", SCALARS, ids=[n[0] for n in SCALARS])
def test_every_scalar_function_gives_the_numpy_value(name, node, expr, expected):
    f = translate(expr, [z], framework(name))
    np.testing.assert_allclose(to_numpy(f(z=to_framework(name, zv))), expected, rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_heaviside_is_numpys_at_special_points(name):
    f = translate(sp.Heaviside(z) + 2 * sp.Heaviside(z, 0), [z], framework(name))
    special_points = np.array([-np.inf, -1.0, -0.0, 0.0, 1.0, np.inf, np.nan])
    np.testing.assert_equal(to_numpy(f(z=to_framework(name, special_points))),
                            np.heaviside(special_points, 0.5)
                            + 2 * np.heaviside(special_points, 0.0))


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_canonical_and_written_forms_agree(name):
    model = sg.dot(sg.vector("u", 2), sg.sigmoid(W @ x + b)) + sg.logdet(S @ S.T) \
        + sp.log(1 - ops.sigmoid(sg.sum(W)))
    inputs = [W, S, x, b, sg.vector("u", 2)]
    values = {**VALUES, "u": np.array([[0.3], [-1.2]])}
    written = translate(model, inputs, framework(name))
    canonical = translate(Canonicalizer()(model), inputs, name)
    arguments = {k: to_framework(name, v) for k, v in values.items()}
    np.testing.assert_allclose(to_numpy(canonical(**arguments)),
                               to_numpy(written(**arguments)), rtol=1e-12)


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_stable_functions_stay_finite_far_out(name):
    expr = ops.softplus(z) + ops.logsigmoid(z) + ops.sigmoid(-z)
    f = translate(expr, [z], framework(name))
    big = np.array([-1000.0, 1000.0])
    # softplus(-1000) + logsigmoid(-1000) + sigmoid(1000) = 0 - 1000 + 1
    np.testing.assert_allclose(to_numpy(f(z=to_framework(name, big))), [-999.0, 1000.0])


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_every_node_with_a_rule_has_a_translation(name):
    """The translators stay in step with the rule table: each differentiable node type has a
    method in the shared dispatch (by class name, as the printers look it up), is an
    elementwise function whose row (symgrad/functions.py) gives this framework's code, or is
    a matrix operation whose file (symgrad/operations/) has its NumPy code (which serves every
    framework through its module aliases) or this framework's own."""
    translator = TRANSLATORS[name]
    rows = {row.node: row for row in functions.ROWS.values()}

    def translated(cls) -> bool:
        if cls in rows:     # a user's function translates the expression that defines it
            return rows[cls].value is not None or rows[cls].key in translator.functions
        if cls in operations.OPERATIONS:
            return "numpy" in operations.OPERATIONS[cls].translations
        return any(hasattr(translator, f"_print_{base.__name__}") for base in cls.__mro__)

    assert [cls.__name__ for cls in RULES if not translated(cls)] == []


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_a_node_without_a_method_fails_loudly_naming_node_and_framework(name):
    with pytest.raises(NotImplementedError, match=rf"{name} translator has no method for gamma"):
        translate(sp.gamma(z), [z], framework(name))


def test_a_function_a_framework_lacks_is_named_with_the_framework():
    class Lacking(NumpyTranslator):
        framework = "abacus"
        functions = {k: v for k, v in NumpyTranslator.functions.items() if k != "erf"}

    with pytest.raises(NotImplementedError, match="abacus has no erf"):
        Lacking().translate(sp.erf(z), [z])


def test_shared_subexpressions_are_computed_once():
    e = sp.exp(z)
    f = translate(sp.sin(e) + sp.cos(e) * e, [z])
    assert f.source.count("np.exp(") == 1


def test_the_source_is_a_readable_straight_line_function():
    f = translate(sg.sum(sg.sigmoid(W @ x)), [W, x])
    lines = f.source.splitlines()
    assert lines[0] == "def model(in_0, in_1):"     # symgrad's names: see test_trust.py
    assert lines[-1].startswith("    return _t")
    assert "special.expit(" in f.source


def test_symbolic_dimensions_take_the_given_sizes():
    n = sp.Symbol("n", integer=True, positive=True)
    X = sg.matrix("X", n, 2)
    f = translate(sg.mean(X @ sp.OneMatrix(2, 3)), [X], dims={n: 4})
    assert float(f(X=np.ones((4, 2)))) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="dimension n has no size"):
        translate(sg.sum(sp.OneMatrix(n, 2)), [X])


def test_inputs_named_like_the_modules_still_work():
    np_symbol, jnp_symbol = sp.symbols("np jnp")
    f = translate(np_symbol * sp.exp(jnp_symbol), [np_symbol, jnp_symbol])
    assert float(f(np=2.0, jnp=0.0)) == 2.0


def test_a_symbol_that_is_not_an_input_is_refused():
    with pytest.raises(ValueError, match="neither an input"):
        translate(z + c, [z])


def test_missing_framework_raises_import_error_saying_which(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(ImportError, match="torch backend of sg.check needs the 'torch'"):
        require("torch")


def test_every_framework_has_a_translator():
    assert set(TRANSLATORS) == set(FRAMEWORKS)
    for name in FRAMEWORKS[1:]:
        if importlib.util.find_spec(name) is None:
            continue
        assert TRANSLATORS[name].framework == name


@pytest.mark.parametrize("name", ["jax", "torch", "autograd"])
def test_kink_conventions_match_symgrad(name):
    """relu'(0) = 0 and a tie of max splits the gradient in halves, as symgrad's rules say."""
    from symgrad.checking.backends import BACKENDS, Problem

    framework(name)
    y = sp.Symbol("y")
    problem = Problem("kinks", ops.relu(z) + sp.Max(z, y), [z, y], [z, y])
    result = BACKENDS[name](problem).value_and_grad({"z": np.array(0.0), "y": np.array(0.0)},
                                                    {}, None)
    assert result.gradients["z"] == pytest.approx(0.5)
    assert result.gradients["y"] == pytest.approx(0.5)


def test_an_input_named_like_the_translations_code_stays_apart_from_a_maps_operand():
    """Was (found by the compiled campaign): a Map's operand stood in its body for a plain
    symbol named like the operand's code (``in_1``), which was the model's own scalar input
    ``in_1`` there, printed as that input: a matrix product of the wrong shapes."""
    from symgrad.checking.translate import translate

    n = sp.Symbol("n", integer=True, positive=True)
    s, v = sp.Symbol("in_1"), sp.MatrixSymbol("numba", n, 1)
    square = ops.broadcast(v, (n, n))
    expr = MatrixElement(v.T @ square @ ops.hadamard(v, ops.broadcast(s, (n, 1))), 0, 0)
    f = translate(expr, [s, v], dims={n: 3})
    v0 = np.array([[1.0], [2.0], [3.0]])
    expected = (v0.T @ np.repeat(v0, 3, axis=1) @ (v0 * 0.5)).item()
    assert np.asarray(f(in_1=0.5, numba=v0)).item() == pytest.approx(expected)


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_a_map_reading_a_sized_dimension_prints_its_size(name):
    """A gradient can hand an elementwise body a dimension as an operand (the m of a
    mean's 1/m): it prints as the size it is given, not as a name of the code (was: '2.0
    is neither an input nor a sized dimension', found by the second-order campaign)."""
    n, m = sp.symbols("n m", integer=True, positive=True)
    u = sg.vector("u", n)
    v0, v1 = sp.symbols("v0 v1", real=True)
    model = ops.Map(sp.Lambda((v0, v1), v0 / v1), u.shape, u, m)
    values = np.array([[1.0], [2.0], [4.0]])
    f = translate(model, [u], framework(name), {n: 3, m: 2})
    np.testing.assert_allclose(to_numpy(f(u=to_framework(name, values))), values / 2)
