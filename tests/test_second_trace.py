"""Compiled second order of scalar functions of traces.

The gradient of tr(M) with respect to M is g I: a Map whose operand is the identity.  Its
Hessian-vector product, split into the part computed at x and the part linear in the
tangents, keeps that identity an operand of the Map (a constant matrix is no scalar
coefficient to fold into the body), so that the body stays scalar code."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad import ops

N = 3
A, B = sg.matrix("A", N, N), sg.matrix("B", N, N)
x, c = sg.vector("x", N), sp.Symbol("c")


def _tr(M):
    return float(np.trace(M))


def _products_of_trace_and_trace(a, b, va, vb):
    """f = tr(AB) tr(A): grad_A = tr(A) B^T + tr(AB) I, grad_B = tr(A) A^T."""
    s = _tr(a)
    du, ds = _tr(va @ b + a @ vb), _tr(va)
    eye = np.eye(N)
    return {"A": ds * b.T + s * vb.T + du * eye, "B": ds * a.T + s * va.T}


def _square_of_trace(a, b, va, vb):
    """f = tr(AB)^2: grad_A = 2 tr(AB) B^T, grad_B = 2 tr(AB) A^T."""
    u, du = _tr(a @ b), _tr(va @ b + a @ vb)
    return {"A": 2 * du * b.T + 2 * u * vb.T, "B": 2 * du * a.T + 2 * u * va.T}


def _sine_of_trace_plus_cubic(a, b, va, vb):
    """f = sin(tr(AB)) + tr(A A^T A): grad_A = cos(tr(AB)) B^T + A^T A + A A + A A^T,
    grad_B = cos(tr(AB)) A^T."""
    u, du = _tr(a @ b), _tr(va @ b + a @ vb)
    cubic = va.T @ a + a.T @ va + va @ a + a @ va + va @ a.T + a @ va.T
    return {"A": -np.sin(u) * du * b.T + np.cos(u) * vb.T + cubic,
            "B": -np.sin(u) * du * a.T + np.cos(u) * va.T}


CLOSED_FORMS = [
    pytest.param(sp.Trace(A @ B) * sp.Trace(A), _products_of_trace_and_trace,
                 id="trace_times_trace"),
    pytest.param(sp.Trace(A @ B) ** 2, _square_of_trace, id="square_of_trace"),
    pytest.param(sp.sin(sp.Trace(A @ B)) + sp.Trace(A @ A.T @ A), _sine_of_trace_plus_cubic,
                 id="sine_of_trace_plus_cubic"),
]


def _point(seed: int = 4):
    rng = np.random.default_rng(seed)
    return [0.5 * rng.normal(size=(N, N)) for _ in range(4)]


@pytest.mark.parametrize("model, closed_form", CLOSED_FORMS)
def test_compiled_hvp_and_hessian_match_the_closed_form(model, closed_form):
    a, b, va, vb = _point()
    f = sg.compile(model, [A, B])
    want = closed_form(a, b, va, vb)
    got = f.hvp({"A": va, "B": vb}, A=a, B=b)
    for name in ("A", "B"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12)
    # the Hessian (4 axes per block: d²f / dP_ij dQ_kl) contracted with the tangents
    H = f.hessian(A=a, B=b)
    tangent = {"A": va, "B": vb}
    for p in ("A", "B"):
        product = sum(np.einsum("ijkl,kl->ij", H[(p, q)], tangent[q]) for q in ("A", "B"))
        np.testing.assert_allclose(product, want[p], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(H[("A", "B")], H[("B", "A")].transpose(2, 3, 0, 1),
                               rtol=1e-12, atol=1e-12)


NEIGHBOURS = [
    pytest.param(sp.Trace(A @ B) * sp.Trace(A), [A, B], id="trace_times_trace"),
    pytest.param(sp.Trace(A @ B) ** 2, [A, B], id="square_of_trace"),
    pytest.param(sp.sin(sp.Trace(A @ B)) + sp.Trace(A @ A.T @ A), [A, B],
                 id="sine_of_trace_plus_cubic"),
    pytest.param(c * sp.Trace(A @ B) * sp.Trace(A), [A, B, c], id="scalar_times_traces"),
    pytest.param(sp.exp(sp.Trace(A @ B)), [A, B], id="exp_of_trace"),
    pytest.param(sp.Trace(A @ B) * sg.sum(A), [A, B], id="trace_times_sum"),
    pytest.param(sp.log(1 + sp.Trace(A @ A.T)), [A], id="log_of_trace"),
    pytest.param(sp.Trace(A) * sg.dot(x, x), [A, x], id="trace_times_vector_norm"),
    pytest.param(sp.Trace(A) ** 3, [A], id="cube_of_trace"),
]


@pytest.mark.parametrize("model, wrt", NEIGHBOURS)
def test_compiled_second_order_of_traces_agrees_with_jax_and_differences(model, wrt):
    pytest.importorskip("jax")
    report = sg.check(model, wrt, against=["jax", "finite-differences"], order=2)
    assert report.ok, report


def test_a_map_body_that_computes_with_a_matrix_is_refused():
    t, u = sp.Symbol("t", real=True), sp.Symbol("u", real=True)
    with pytest.raises(TypeError, match="a matrix"):
        ops.Map(sp.Lambda((t,), t * sp.Identity(N)), (N, N), sp.Trace(A))
    with pytest.raises(TypeError, match="a matrix"):
        # (as a sum of terms builds it: SymPy's Add does not look at its terms' kinds)
        ops.Map(sp.Lambda((t, u), sp.Add(t * sp.Identity(N), u)), (N, N), sp.Trace(A), B)
    # a constant matrix is an operand like any other
    kept = ops.Map(sp.Lambda((t, u), t * u), (N, N), sp.Trace(A), sp.Identity(N))
    assert kept.operands == (sp.Trace(A), sp.Identity(N))
