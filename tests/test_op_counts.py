"""Reverse mode shares work: value-and-gradient costs a small multiple of the forward pass,
and a long product stays linear where differentiating each variable separately is quadratic."""

import pytest
import sympy as sp

import symgrad as sg
from symgrad.compiled import build_spec

from .test_random_scalar import EXPRESSIONS


def symgrad_op_counts(expr, wrt):
    return build_spec(expr, wrt).op_counts


def sympy_diff_op_count(expr, wrt):
    """What differentiating each variable separately with sympy.diff costs (no sharing)."""
    return sum(sp.count_ops(sp.diff(expr, w)) for w in wrt)


@pytest.mark.parametrize("n", [10, 20, 40])
def test_product_of_n_factors_costs_linear_ops_in_symgrad(n):
    xs = sp.symbols(f"x0:{n}")
    counts = symgrad_op_counts(sp.Mul(*xs), list(xs))
    assert counts["forward"] == n - 1
    assert counts["value_and_grad"] <= 4 * (n - 1)


def test_product_of_40_factors_sympy_diff_is_quadratic_symgrad_linear():
    growth = {}
    for n in (20, 40):
        xs = sp.symbols(f"x0:{n}")
        product = sp.Mul(*xs)
        growth[n] = (sympy_diff_op_count(product, xs),
                     symgrad_op_counts(product, list(xs))["value_and_grad"])
    sympy_ratio = growth[40][0] / growth[20][0]
    symgrad_ratio = growth[40][1] / growth[20][1]
    assert sympy_ratio > 3.8            # (40 * 39) / (20 * 19) = 4.1: quadratic
    assert symgrad_ratio < 2.2          # linear
    assert growth[40][0] > 10 * growth[40][1]


def test_seed_op_counts():
    w, x, y = sp.symbols("w x y")
    assert symgrad_op_counts((w * x - y) ** 2, [w]) == {"forward": 3, "value_and_grad": 5}
    a, b, c = sp.symbols("x y z")
    counts = symgrad_op_counts((a + b) * sp.Max(b, c), [a, b, c])
    assert counts["forward"] == 3
    assert counts["value_and_grad"] <= 4 * counts["forward"]


@pytest.mark.parametrize("make, forward", [
    (lambda x, y, z: x - y, 1),
    (lambda x, y, z: 1 - x, 1),
    (lambda x, y, z: -x - y, 2),          # one negation, one subtraction
    (lambda x, y, z: x - y - z, 2),
])
def test_a_subtracted_term_costs_no_negation_of_its_own(make, forward):
    x, y, z = sp.symbols("x y z")
    expr = make(x, y, z)
    assert symgrad_op_counts(expr, sorted(expr.free_symbols, key=str))["forward"] == forward


def test_max_gradient_is_one_selection_per_input():
    # d Max(x, y)/dx: 1 if x > y, 1/2 if x = y, else 0 (two comparisons), and so for y
    x, y = sp.symbols("x y")
    assert symgrad_op_counts(sp.Max(x, y), [x, y]) == {"forward": 1, "value_and_grad": 5}


# Random models whose gradient costs more than four forward passes, each a gap: a Max of three
# (each input's share is a selection by the count of the inputs equal to the Max, and the
# chain below it multiplies each).
OVER_FOUR_TIMES = {64: "Max of three"}


@pytest.mark.parametrize("seed", [
    pytest.param(seed, marks=pytest.mark.xfail(strict=True, reason=OVER_FOUR_TIMES[seed]))
    if seed in OVER_FOUR_TIMES else seed for seed in range(0, 220, 4)])
def test_value_and_grad_costs_at_most_four_times_the_forward_pass(seed):
    expr = EXPRESSIONS[seed]
    wrt = sorted(expr.free_symbols, key=lambda s: s.name)     # never a constant
    counts = symgrad_op_counts(expr, wrt)
    assert counts["value_and_grad"] <= 4 * counts["forward"], (expr, counts)


def test_shared_subexpression_is_computed_once():
    x = sp.Symbol("x")
    shared = sp.sin(x)
    expr = shared * sp.cos(shared) + sp.exp(shared)
    spec = build_spec(expr, [x])
    operations = [s.operation for s in spec.value_and_grad.statements]
    x = spec.internal[x]                          # the code's name for x
    assert operations.count(sp.sin(x)) == 1       # used by the value and by every derivative
    assert operations.count(sp.cos(x)) == 1       # d sin(x)/dx, once


def test_window_classifier_value_and_grad_shares_the_delta():
    d, H = 5, 4
    x, W = sg.vector("x", 5 * d), sg.matrix("W", H, 5 * d)
    b, u = sg.vector("b", H), sg.vector("u", H)
    spec = build_spec(sg.dot(u, sg.sigmoid(W @ x + b)), [W, b, u, x])
    program = spec.value_and_grad
    maps = [s.operation for s in program.statements if type(s.operation).__name__ == "Map"]
    # the deltas of W x and of b are one statement: the only Map that reads u
    assert len([m for m in maps if spec.internal[u] in m.operands]) == 1
    # and nothing else is elementwise but h = sigmoid(W x + b) and the outer product delta x^T
    assert len(maps) == 3
