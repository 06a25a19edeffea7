"""Linear algebra shares its factorisations: one Cholesky or LU per matrix serves its inverse,
the inverse of its transpose, its determinant, its log-determinant and its solves."""

import numpy as np
import pytest
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement

import symgrad as sg
from symgrad.codegen import linalg_runtime
from symgrad.codegen.factor import (
    FactorInverse,
    Factorisation,
    FactorLogDet,
    FactorSolve,
    share_factorisations,
)
from symgrad.compiled import build_spec

rng = np.random.default_rng(7)


def gp_model(n, d=2):
    """A Gaussian process's negative log marginal likelihood, RBF kernel built from the data."""
    X, y = sg.matrix("X", n, d), sg.vector("y", n)
    log_scale, log_signal, log_noise = sp.symbols("log_scale log_signal log_noise")
    norms = sg.sum(sg.hadamard(X, X), axis=1)
    distances = sg.broadcast(norms, (n, n)) + sg.broadcast(norms.T, (n, n)) - 2 * X @ X.T
    K = (sp.exp(2 * log_signal) * sg.exp(-distances * sp.exp(-2 * log_scale) / 2)
         + sp.exp(2 * log_noise) * sp.Identity(n))
    constant = n * sp.log(2 * sp.pi) / 2
    nll = sg.dot(y, sg.inv(K) @ y) / 2 + sg.logdet(K) / 2 + constant
    return nll, [log_scale, log_signal, log_noise, X]


def _statements(program, kind):
    return [s for s in program.statements if isinstance(s.operation, kind)]


def _kernel(source, name):
    body = source[source.index(f"def {name}("):]
    return body[:body.index("\ndef ", 1)]


N = 12
X0, Y0 = rng.normal(size=(N, 2)), rng.normal(size=N)
THETA = {"log_scale": 0.1, "log_signal": 0.3, "log_noise": -1.0}


@pytest.fixture(scope="module")
def gp():
    nll, wrt = gp_model(N)
    return sg.compile(nll, wrt)


def _numpy_nll(theta, X):
    sq = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    K = (np.exp(2 * theta[1]) * np.exp(-sq * np.exp(-2 * theta[0]) / 2)
         + np.exp(2 * theta[2]) * np.eye(len(X)))
    return (Y0 @ np.linalg.solve(K, Y0) / 2 + np.linalg.slogdet(K)[1] / 2
            + len(X) / 2 * np.log(2 * np.pi))


def test_gp_likelihood_gradient_agrees_with_finite_differences(gp):
    value, grads = gp.value_and_grad(X=X0, y=Y0, **THETA)
    theta = np.array(list(THETA.values()))
    assert value == pytest.approx(_numpy_nll(theta, X0), rel=1e-12)
    # the value alone: a Cholesky solve instead of the inverse
    assert gp(X=X0, y=Y0, **THETA) == pytest.approx(value, rel=1e-13)
    h = 1e-6
    for k, name in enumerate(THETA):
        step = np.eye(3)[k] * h
        central = (_numpy_nll(theta + step, X0) - _numpy_nll(theta - step, X0)) / (2 * h)
        assert grads[name] == pytest.approx(central, rel=1e-6, abs=1e-8)
    for i, j in [(0, 0), (3, 1), (N - 1, 1)]:
        step = np.zeros_like(X0)
        step[i, j] = h
        central = (_numpy_nll(theta, X0 + step) - _numpy_nll(theta, X0 - step)) / (2 * h)
        assert grads["X"][i, j] == pytest.approx(central, rel=1e-6, abs=1e-8)


def test_gp_likelihood_gradient_agrees_with_jax(gp):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy

    def nll(theta, X):
        sq = jnp.sum((X[:, None, :] - X[None, :, :]) ** 2, axis=-1)
        K = (jnp.exp(2 * theta[1]) * jnp.exp(-sq * jnp.exp(-2 * theta[0]) / 2)
             + jnp.exp(2 * theta[2]) * jnp.eye(N))
        return (Y0 @ jnp.linalg.solve(K, Y0) / 2 + jnp.linalg.slogdet(K)[1] / 2
                + N / 2 * np.log(2 * np.pi))

    theta = np.array(list(THETA.values()))
    value, (d_theta, d_X) = jax.value_and_grad(nll, argnums=(0, 1))(theta, X0)
    ours, grads = gp.value_and_grad(X=X0, y=Y0, **THETA)
    np.testing.assert_allclose(ours, float(value), rtol=1e-12)
    np.testing.assert_allclose([grads[k] for k in THETA], np.asarray(d_theta), rtol=1e-9)
    np.testing.assert_allclose(grads["X"], np.asarray(d_X), rtol=1e-9, atol=1e-12)


def test_inverse_and_logdet_of_one_matrix_share_one_cholesky(gp):
    nll, wrt = gp_model(sp.Symbol("n", integer=True, positive=True))
    spec = build_spec(nll, wrt)
    for program in (spec.forward, spec.value_and_grad):
        factors = _statements(program, Factorisation)
        assert len(factors) == 1
        # the kernel matrix is symmetric by construction: a Cholesky, no symmetry test
        assert factors[0].operation.symmetric
        assert not _statements(program, (sp.Inverse, sp.Determinant))
        assert len(_statements(program, FactorLogDet)) == 1
    # the value needs K^-1 y only: a solve, no inverse; the gradient needs K^-1 itself, once
    assert _statements(spec.forward, FactorSolve)
    assert not _statements(spec.forward, FactorInverse)
    assert len(_statements(spec.value_and_grad, FactorInverse)) == 1
    for kernel in ("_forward_kernel", "_value_and_grad_kernel"):
        body = _kernel(gp.source, kernel)
        assert body.count("sg_factor(") == 1
        assert "np.linalg" not in body


def test_gradient_of_the_quadratic_form_has_no_matrix_product():
    """The adjoint of K^-1 in y^T K^-1 y is y y^T: -K^-T y y^T K^-T is two matrix-vector
    products and an outer product, never two n x n products."""
    nll, wrt = gp_model(sp.Symbol("n", integer=True, positive=True))
    program = build_spec(nll, wrt).value_and_grad
    square = [s for s in _statements(program, sp.MatMul)
              if all(1 not in tuple(a.shape) for a in s.operation.args)]
    assert all(2 in tuple(s.operation.args[0].shape) + tuple(s.operation.args[1].shape)
               for s in square), [str(s.operation) for s in square]   # X X^T only


def test_a_general_matrix_goes_through_lu():
    n = 5
    A, a, b = sg.matrix("A", n, n), sg.vector("a", n), sg.vector("b", n)
    expr = MatrixElement(a.T @ sg.inv(A) @ b, 0, 0) + sg.logdet(A) + sg.det(A)
    f = sg.compile(expr, [A, a])
    program = f.spec.value_and_grad
    assert len(_statements(program, Factorisation)) == 1
    assert not _statements(program, Factorisation)[0].operation.symmetric
    A0 = rng.normal(size=(n, n)) + 2 * np.eye(n)
    A0 *= np.sign(np.linalg.det(A0))       # a positive determinant: logdet is finite
    assert not np.allclose(A0, A0.T)
    _, _, cholesky = linalg_runtime.sg_factor(A0, False)
    assert not cholesky
    a0, b0 = rng.normal(size=n), rng.normal(size=n)
    inverse = np.linalg.inv(A0)
    det = np.linalg.det(A0)
    value, grads = f.value_and_grad(A=A0, a=a0, b=b0)
    assert value == pytest.approx(a0 @ inverse @ b0 + np.log(det) + det, rel=1e-12)
    expected = -inverse.T @ np.outer(a0, b0) @ inverse.T + inverse.T + det * inverse.T
    np.testing.assert_allclose(grads["A"], expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["a"], inverse @ b0, rtol=1e-12)
    # a negative determinant: logdet is NaN (as before), det and the solve still right
    flipped = A0.copy()
    flipped[0] *= -1
    assert np.isnan(f(A=flipped, a=a0, b=b0))
    # a singular matrix: the solve (value) and the inverse (gradient) are errors
    for call in (f, f.value_and_grad):
        with pytest.raises(np.linalg.LinAlgError, match="singular"):
            call(A=np.ones((n, n)), a=a0, b=b0)


def test_transpose_of_an_inverse_shares_the_factor():
    n = 4
    A, B = sg.matrix("A", n, n), sg.matrix("B", n, n)
    expr = sg.trace(sg.inv(A).T @ B) + sg.trace(sg.inv(A) @ B @ B) + sg.logdet(A)
    spec = build_spec(expr, [A])
    program = spec.value_and_grad
    assert len(_statements(program, Factorisation)) == 1
    assert len(_statements(program, FactorInverse)) == 1
    A0 = rng.normal(size=(n, n)) + 3 * np.eye(n)
    B0 = rng.normal(size=(n, n))
    f = sg.compile(expr, [A])
    value, grads = f.value_and_grad(A=A0, B=B0)
    Ai = np.linalg.inv(A0)
    assert value == pytest.approx(np.trace(Ai.T @ B0) + np.trace(Ai @ B0 @ B0)
                                  + np.linalg.slogdet(A0)[1], rel=1e-12)
    # d tr(A^-T B) = -A^-T B^T A^-T ... checked against central differences
    h = 1e-6
    for i, j in [(0, 1), (2, 3), (3, 3)]:
        step = np.zeros((n, n))
        step[i, j] = h
        central = (f(A=A0 + step, B=B0) - f(A=A0 - step, B=B0)) / (2 * h)
        assert grads["A"][i, j] == pytest.approx(central, rel=1e-6, abs=1e-8)


def test_symmetric_by_construction():
    n = sp.Symbol("n", integer=True, positive=True)
    B, D = sg.matrix("B", n, 3), sg.matrix("D", n, n)
    s = sp.Symbol("s")
    cases = {
        "B B^T + s I": (B @ B.T + s**2 * sp.Identity(n), True),
        "exp(-B B^T)": (sg.exp(-(B @ B.T)), True),
        "exp(-D) + s I, D an input": (sg.exp(-D) + s * sp.Identity(n), False),
        "D + D^T": (D + D.T, True),
        "D B B^T": (D @ B @ B.T, False),
    }
    for label, (K, symmetric) in cases.items():
        wrt = [w for w in (s, B, D) if w in K.free_symbols][:1]
        spec = build_spec(sg.logdet(K), wrt)
        factors = _statements(spec.value_and_grad, Factorisation)
        assert len(factors) == 1, label
        assert factors[0].operation.symmetric == symmetric, label


def test_an_input_that_is_exactly_symmetric_gets_a_cholesky():
    n = 6
    D = sg.matrix("D", n, n)
    y = sg.vector("y", n)
    s = sp.Symbol("s")
    K = sg.exp(-D) + sp.exp(s) * sp.Identity(n)
    f = sg.compile(sg.dot(y, sg.inv(K) @ y) + sg.logdet(K), [s])
    points = rng.normal(size=(n, 1))
    D0 = (points - points.T) ** 2
    K0 = np.exp(-D0) + np.exp(0.5) * np.eye(n)
    assert linalg_runtime.sg_factor(K0, False)[2]            # exactly symmetric: Cholesky
    y0 = rng.normal(size=n)
    value, grads = f.value_and_grad(D=D0, y=y0, s=0.5)
    Ki = np.linalg.inv(K0)
    assert value == pytest.approx(y0 @ Ki @ y0 + np.linalg.slogdet(K0)[1], rel=1e-12)
    expected = np.exp(0.5) * (np.trace(Ki) - y0 @ Ki @ Ki @ y0)
    assert grads["s"] == pytest.approx(expected, rel=1e-10)


def test_a_symmetric_matrix_that_is_not_positive_definite_falls_back_to_lu():
    n = 4
    B = sg.matrix("B", n, n)
    f = sg.compile(sg.logdet(B + B.T), [B])
    # eigenvalues of B + B^T: two negative, two positive -> det > 0, Cholesky fails
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    S = Q @ np.diag([-2.0, -1.0, 1.5, 3.0]) @ Q.T
    B0 = S / 2
    assert not linalg_runtime.sg_factor(S, True)[2]
    value, grads = f.value_and_grad(B=B0)
    assert value == pytest.approx(np.log(2 * 1 * 1.5 * 3.0), rel=1e-12)
    np.testing.assert_allclose(grads["B"], 2 * np.linalg.inv(S), rtol=1e-10, atol=1e-12)


def test_products_with_an_inverse_become_solves_on_both_sides():
    n = 5
    A, b, c = sg.matrix("A", n, n), sg.vector("b", n), sg.vector("c", n)
    M = sg.matrix("M", n, 2)
    expr = sg.sum(sg.inv(A) @ M) + MatrixElement(c.T @ sg.inv(A).T @ b, 0, 0)
    program = build_spec(expr, [b]).forward
    assert not _statements(program, FactorInverse)
    solves = _statements(program, FactorSolve)
    assert solves and len(_statements(program, Factorisation)) == 1
    A0, M0 = rng.normal(size=(n, n)) + 3 * np.eye(n), rng.normal(size=(n, 2))
    b0, c0 = rng.normal(size=n), rng.normal(size=n)
    f = sg.compile(expr, [b])
    Ai = np.linalg.inv(A0)
    value, grads = f.value_and_grad(A=A0, M=M0, b=b0, c=c0)
    assert value == pytest.approx((Ai @ M0).sum() + c0 @ Ai.T @ b0, rel=1e-12)
    np.testing.assert_allclose(grads["b"], Ai @ c0, rtol=1e-12)


def test_programs_without_linear_algebra_are_unchanged():
    W, x = sg.matrix("W", 3, 4), sg.vector("x", 4)
    program = build_spec(sg.sum(sg.tanh(W @ x)), [W]).value_and_grad
    assert share_factorisations(program).statements == program.statements


@pytest.mark.parametrize("symmetric", [True, False], ids=["cholesky", "lu"])
def test_factor_helpers_agree_with_numpy(symmetric):
    n = 7
    A0 = rng.normal(size=(n, n))
    A0 = A0 @ A0.T + n * np.eye(n) if symmetric else A0 + 2 * np.eye(n)
    factor, pivots, cholesky = linalg_runtime.sg_factor(A0, False)
    assert cholesky == symmetric
    for columns in (1, 3):
        B0 = rng.normal(size=(n, columns))
        for transposed in (False, True):
            expected = np.linalg.solve(A0.T if transposed else A0, B0)
            np.testing.assert_allclose(
                linalg_runtime.sg_factor_solve(factor, pivots, cholesky, B0, transposed),
                expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(linalg_runtime.sg_factor_inverse(factor, pivots, cholesky),
                               np.linalg.inv(A0), rtol=1e-10, atol=1e-12)
    sign, logdet = np.linalg.slogdet(A0)
    expected_logdet = logdet if sign > 0 else np.nan
    np.testing.assert_allclose(linalg_runtime.sg_factor_logdet(factor, pivots, cholesky),
                               expected_logdet, rtol=1e-12)
    assert linalg_runtime.sg_factor_det(factor, pivots, cholesky) == pytest.approx(
        np.linalg.det(A0), rel=1e-10)
