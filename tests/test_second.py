"""Second order and Jacobians: closed forms (the Matrix Cookbook), JAX, finite differences of
the gradient, symmetry, and Newton-type SciPy solvers on the logistic loss."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symgrad as sg

N, D = 3, 3


def _same(block, expected):
    """Entry by entry, symbolically (small fixed shapes)."""
    difference = (block - expected).as_explicit()
    assert all(sp.simplify(e) == 0 for e in difference), difference


# ------------------------------------------------------------------------------------------
# Symbolic closed forms
# ------------------------------------------------------------------------------------------
def test_quadratic_form_hessian_is_a_plus_a_transpose():
    x, A = sg.vector("x", D), sg.matrix("A", D, D)
    H = sg.hessian(sg.dot(x, A @ x), [x])
    _same(H[(x, x)], A + A.T)
    assert sg.show(H) == "d²f/dx dx = A + A^T"


def test_least_squares_hessian_is_two_m_transpose_m():
    M, x, y = sg.matrix("M", 4, D), sg.vector("x", D), sg.vector("y", 4)
    r = M @ x - y
    H = sg.hessian(sg.dot(r, r), [x])
    _same(H[(x, x)], 2 * M.T @ M)
    assert sg.show(H) == "d²f/dx dx = 2 M^T M"


def test_cookbook_bilinear_form():
    # Matrix Cookbook (2012) eq. 98: d²/dx² (Bx + b)^T C (Dx + d) = B^T C D + D^T C^T B
    x = sg.vector("x", D)
    B, C, Dm = sg.matrix("B", 2, D), sg.matrix("C", 2, 2), sg.matrix("Dm", 2, D)
    b, d = sg.vector("b", 2), sg.vector("d", 2)
    H = sg.hessian(sg.dot(B @ x + b, C @ (Dm @ x + d)), [x])
    _same(H[(x, x)], B.T @ C @ Dm + Dm.T @ C.T @ B)


def test_cookbook_squared_norm_and_weighted_norm():
    # ||x||^2 -> 2 I;  (Ax + b)^T W (Ax + b) with W symmetric in form -> A^T (W + W^T) A
    x, A, W, b = sg.vector("x", D), sg.matrix("A", 2, D), sg.matrix("W", 2, 2), sg.vector("b", 2)
    _same(sg.hessian(sg.dot(x, x), [x])[(x, x)], 2 * sp.Identity(D))
    r = A @ x + b
    _same(sg.hessian(sg.dot(r, W @ r), [x])[(x, x)], A.T @ (W + W.T) @ A)


def test_logistic_loss_hessian_prints_x_transpose_diag_x():
    n, d = sp.symbols("n d", integer=True, positive=True)
    X, y, w = sg.matrix("X", n, d), sg.vector("y", n), sg.vector("w", d)
    lam = sp.Symbol("lam")
    loss = sg.sum(sg.binary_cross_entropy_with_logits(X @ w, y)) + lam / 2 * sg.dot(w, w)
    text = sg.show(sg.hessian(loss, [w]), output="L")
    assert text == "h = sigmoid(X w)\nd²L/dw dw = lam I + X^T diag(h ∘ (1 - h)) X"
    latex = sg.latex(sg.hessian(loss, [w]), output="L")
    assert r"\operatorname{diag}\left(h \circ \left(1 - h\right)\right)" in latex
    assert r"h &= \operatorname{sigmoid}{\left(X w \right)}" in latex and r"\partial^2 L" in latex


def test_logistic_hessian_matches_the_closed_form_entrywise():
    X, y, w = sg.matrix("X", N, D), sg.vector("y", N), sg.vector("w", D)
    lam = sp.Symbol("lam")
    loss = sg.sum(sg.binary_cross_entropy_with_logits(X @ w, y)) + lam / 2 * sg.dot(w, w)
    block = sg.hessian(loss, [w])[(w, w)]
    s = sg.sigmoid(X @ w)
    expected = X.T @ sp.DiagMatrix(sg.hadamard(s, sp.OneMatrix(N, 1) - s)) @ X \
        + lam * sp.Identity(D)
    rng = np.random.default_rng(1)
    values = {**{X[i, j]: rng.normal() for i in range(N) for j in range(D)},
              **{w[i, 0]: rng.normal() for i in range(D)}, lam: 0.3}
    got = np.array(block.as_explicit().subs(values).evalf(), dtype=float)
    want = np.array(expected.as_explicit().subs(values).evalf(), dtype=float)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_jacobian_of_tanh_layer_and_explicit_matrix():
    W, x = sg.matrix("W", 2, D), sg.vector("x", D)
    J = sg.jacobian(sg.tanh(W @ x), [x])
    assert sg.show(J, output="y") == "dy/dx = diag(1 - tanh(W x)^2) W"
    _same(J[x], sp.DiagMatrix(sp.OneMatrix(2, 1) - sg.square(sg.tanh(W @ x))) @ W)
    assert sg.jacobian(x, [x])[x] == sp.Identity(D)
    a, b = sp.symbols("a b")
    explicit = sg.jacobian(sp.Matrix([a * b, sp.sin(a)]), [a, b])
    assert explicit[a] == sp.ImmutableMatrix([b, sp.cos(a)])
    assert explicit[b] == sp.ImmutableMatrix([a, 0])


def test_hvp_is_forward_over_reverse():
    x, A, v = sg.vector("x", D), sg.matrix("A", D, D), sg.vector("v", D)
    product = sg.hvp(sg.dot(x, A @ x), [x], {x: v})[x]
    _same(product, (A + A.T) @ v)
    with pytest.raises(ValueError, match="shape"):
        sg.hvp(sg.dot(x, A @ x), [x], {x: sg.vector("u", 2)})


def test_matrix_parameter_block_has_no_matrix_form():
    W, x, u = sg.matrix("W", 2, D), sg.vector("x", D), sg.vector("u", 2)
    with pytest.raises(sg.NoMatrixForm, match=r"\(W, W\).*four axes"):
        sg.hessian(sg.dot(u, sg.tanh(W @ x)), [W])


def test_scalar_parameters_mass_matrix():
    # kinetic energy of a point on a rotating arm: T = m/2 (l^2 w^2 + v^2), H = diag(m l^2, m)
    m, l, w, v = sp.symbols("m l w v")
    H = sg.hessian(m / 2 * (l**2 * w**2 + v**2), [w, v])
    assert sp.simplify(H[(w, w)] - m * l**2) == 0
    assert H[(w, v)] == 0 and H[(v, w)] == 0
    assert sp.simplify(H[(v, v)] - m) == 0


# ------------------------------------------------------------------------------------------
# Compiled: against JAX and finite differences of the gradient
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logistic():
    n, d = sp.symbols("n d", integer=True, positive=True)
    X, y, w = sg.matrix("X", n, d), sg.vector("y", n), sg.vector("w", d)
    lam, b = sp.symbols("lam b")
    z = X @ w + sg.broadcast(b, (n, 1))
    loss = sg.sum(sg.binary_cross_entropy_with_logits(z, y)) + lam / 2 * sg.dot(w, w)
    rng = np.random.default_rng(0)
    data = {"X": rng.normal(size=(40, 5)), "y": (rng.random(40) < 0.5) * 1.0, "lam": 0.7}
    return sg.compile(loss, [w, b]), data, rng


def _finite_difference_hessian(f, params: dict, data: dict, h=1e-6):
    """Central differences of the compiled gradient, flattened over all parameters."""
    names = list(f.parameters)
    flat = np.concatenate([np.ravel(params[n]) for n in names])
    shapes = [np.shape(params[n]) for n in names]

    def grad_at(x):
        out, start = {}, 0
        for n, s in zip(names, shapes):
            size = int(np.prod(s))
            out[n] = x[start:start + size].reshape(s) if s else float(x[start])
            start += size
        _, g = f.value_and_grad(**data, **out)
        return np.concatenate([np.ravel(g[n]) for n in names])

    columns = []
    for k in range(flat.size):
        e = np.zeros_like(flat)
        e[k] = h
        columns.append((grad_at(flat + e) - grad_at(flat - e)) / (2 * h))
    return np.stack(columns, axis=1)


def test_compiled_logistic_hessian_hvp_against_closed_form_and_differences(logistic):
    f, data, rng = logistic
    w0, b0 = rng.normal(size=5) * 0.3, 0.2
    H = f.hessian(w=w0, b=b0, **data)
    assert H[("w", "w")].shape == (5, 5) and H[("w", "b")].shape == (5,)
    assert np.shape(H[("b", "b")]) == ()
    s = 1 / (1 + np.exp(-(data["X"] @ w0 + b0)))
    closed = data["X"].T @ (data["X"] * (s * (1 - s))[:, None]) + data["lam"] * np.eye(5)
    np.testing.assert_allclose(H[("w", "w")], closed, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(H[("w", "w")], H[("w", "w")].T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(H[("b", "w")], H[("w", "b")], rtol=0, atol=0)
    full = np.block([[H[("w", "w")], H[("w", "b")][:, None]],
                     [H[("b", "w")][None, :], np.reshape(H[("b", "b")], (1, 1))]])
    fd = _finite_difference_hessian(f, {"w": w0, "b": b0}, data)
    np.testing.assert_allclose(full, fd, rtol=1e-5, atol=1e-5)
    v, vb = rng.normal(size=5), 0.4
    product = f.hvp({"w": v, "b": vb}, w=w0, b=b0, **data)
    np.testing.assert_allclose(np.concatenate([product["w"], [product["b"]]]),
                               full @ np.concatenate([v, [vb]]), rtol=1e-10, atol=1e-10)


def test_compiled_against_jax_with_a_matrix_parameter():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    W, x, u = sg.matrix("W", 3, 4), sg.vector("x", 4), sg.vector("u", 3)
    f = sg.compile(sg.dot(u, sg.tanh(W @ x)) + sg.sum(sg.exp(x)) / 2, [W, x])
    rng = np.random.default_rng(2)
    W0, x0, u0 = rng.normal(size=(3, 4)), rng.normal(size=4), rng.normal(size=3)
    H = f.hessian(W=W0, x=x0, u=u0)

    def F(W, x):
        return jnp.dot(u0, jnp.tanh(W @ x)) + jnp.sum(jnp.exp(x)) / 2

    J = jax.hessian(F, argnums=(0, 1))(W0, x0)
    for (i, p) in enumerate("Wx"):
        for (j, q) in enumerate("Wx"):
            np.testing.assert_allclose(H[(p, q)], np.asarray(J[i][j]), rtol=1e-10, atol=1e-12)
    v, vx = rng.normal(size=(3, 4)), rng.normal(size=4)
    product = f.hvp({"W": v, "x": vx}, W=W0, x=x0, u=u0)
    _, tangent = jax.jvp(jax.grad(F, argnums=(0, 1)), (W0, x0), (v, vx))
    np.testing.assert_allclose(product["W"], np.asarray(tangent[0]), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(product["x"], np.asarray(tangent[1]), rtol=1e-10, atol=1e-12)


def test_compiled_jacobian_against_jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    W, x = sg.matrix("W", 3, 4), sg.vector("x", 4)
    f = sg.compile(sg.tanh(W @ x), [W, x])
    rng = np.random.default_rng(3)
    W0, x0 = rng.normal(size=(3, 4)), rng.normal(size=4)
    J = f.jacobian(W=W0, x=x0)
    ref = jax.jacfwd(lambda W, x: jnp.tanh(W @ x), argnums=(0, 1))(W0, x0)
    assert J["x"].shape == (3, 1, 4) and J["W"].shape == (3, 1, 3, 4)
    np.testing.assert_allclose(J["x"][:, 0, :], np.asarray(ref[1]), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(J["W"][:, 0], np.asarray(ref[0]), rtol=1e-12, atol=1e-14)
    with pytest.raises(AttributeError, match="scalar"):
        sg.compile(sg.dot(x, x), [x]).jacobian(x=x0)


def test_scalar_model_per_point_hessian():
    a, b, t = sp.symbols("a b t")
    f = sg.compile(sp.exp(a * t) * b**2, [a, b])
    t0 = np.linspace(0.0, 1.0, 7)
    H = f.hessian(a=0.3, b=2.0, t=t0)
    np.testing.assert_allclose(H[("a", "a")], t0**2 * np.exp(0.3 * t0) * 4.0, rtol=1e-12)
    np.testing.assert_allclose(H[("a", "b")], t0 * np.exp(0.3 * t0) * 4.0, rtol=1e-12)
    np.testing.assert_allclose(H[("b", "b")], 2 * np.exp(0.3 * t0), rtol=1e-12)


def test_scalar_model_blocks_are_per_point_zero_blocks_included():
    """Over arrays, every block of a scalar model's Hessian and every HVP result has the
    inputs' broadcast shape, a block that is 0 (d2/dy2 of y sin x) and a scalar parameter
    given as a float included."""
    x, y = sp.symbols("x y")
    f = sg.compile(sp.sin(x) * y, [x, y])
    xs = np.array([0.1, 0.2, 0.3])
    for y0 in (np.array([1.0, 2.0, 3.0]), 2.0):
        H = f.hessian(x=xs, y=y0)
        assert all(np.shape(block) == (3,) for block in H.values()), H
        np.testing.assert_array_equal(H[("y", "y")], np.zeros(3))
        np.testing.assert_allclose(H[("x", "y")], np.cos(xs), rtol=1e-15)
        Hv = f.hvp({"y": 1.0 if np.ndim(y0) == 0 else np.ones(3)}, x=xs, y=y0)
        assert np.shape(Hv["y"]) == (3,) and not Hv["y"].any()
        np.testing.assert_allclose(Hv["x"], np.cos(xs), rtol=1e-15)


def test_bad_tangents_are_named(logistic):
    f, data, rng = logistic
    with pytest.raises(ValueError, match="'q'.*not a parameter"):
        f.hvp({"q": np.zeros(5)}, w=np.zeros(5), b=0.0, **data)
    with pytest.raises(ValueError, match="tangent of 'w' has shape"):
        f.hvp({"w": np.zeros(3)}, w=np.zeros(5), b=0.0, **data)
    # a tangent that is not real numbers names the parameter, for a scalar and a vector
    # parameter alike (and for SciPy's hessp, its direction v)
    for name, bad in [("b", "a"), ("b", None), ("b", 1j), ("w", ["a"] * 5),
                      ("w", np.ones(5, dtype=complex)), ("w", object())]:
        with pytest.raises(TypeError, match=f"tangent of '{name}'.*(real numbers|numbers)"):
            f.hvp({name: bad}, w=np.zeros(5), b=0.0, **data)
    problem = f.scipy(**data)
    x = problem.pack(w=np.zeros(5), b=0.0)
    with pytest.raises(TypeError, match="^v must hold real numbers"):
        problem.hessp(x, ["a"] * 6)
    with pytest.raises(TypeError, match="^parameter 'b' must hold real numbers"):
        problem.pack(w=np.zeros(5), b="a")


# ------------------------------------------------------------------------------------------
# SciPy
# ------------------------------------------------------------------------------------------
def test_scipy_newton_methods_converge_on_the_logistic_loss(logistic):
    optimize = pytest.importorskip("scipy.optimize")
    f, data, _ = logistic
    p = f.scipy(**data)
    x0 = p.pack(w=np.zeros(5), b=0.0)
    assert x0.shape == (6,)
    reference = optimize.minimize(p.fun, x0, jac=p.jac, method="L-BFGS-B",
                                  options={"gtol": 1e-10, "ftol": 1e-15})
    for method in ["trust-ncg", "Newton-CG", "trust-krylov", "trust-exact"]:
        second = {"hess": p.hess} if method == "trust-exact" else {"hessp": p.hessp}
        result = optimize.minimize(p.fun, x0, jac=p.jac, method=method, **second)
        assert result.success, (method, result.message)
        assert np.abs(p.jac(result.x)).max() < 1e-5
        np.testing.assert_allclose(result.x, reference.x, rtol=1e-4, atol=1e-4)
    assert set(p.unpack(reference.x)) == {"w", "b"}
    assert p.unpack(reference.x)["w"].shape == (5,)
    with pytest.raises(TypeError, match="'w' is a parameter"):
        f.scipy(w=np.zeros(5), **data)


def test_scipy_pack_refuses_a_matrix_of_the_wrong_shape_and_its_parts_agree_with_differences():
    """pack of a (3, 2) array for a 2 x 3 parameter put its entries in the wrong order
    (f itself refuses it); a vector may come as (n,), (n, 1) or (1, n).  fun, jac, hess and
    hessp over mixed parameters (vector, matrix, scalar, row) agree with differences, and
    trust-exact finds the least-squares minimum."""
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    W, A, B = sg.matrix("W", 2, 3), sg.matrix("A", 3, 5), sg.matrix("B", 2, 5)
    v, R, s = sg.vector("v", 2), sg.matrix("R", 1, 2), sp.Symbol("s")
    f = sg.compile(sg.sum(sg.square(W @ A - B)) + s**2 * sg.dot(v, v) + (s - 1)**2
                   + sg.sum(sg.tanh(R @ W)) + sg.dot(v, v), [v, W, s, R])
    A0, B0 = rng.normal(size=(3, 5)), rng.normal(size=(2, 5))
    p = f.scipy(A=A0, B=B0)
    with pytest.raises(ValueError, match=r"parameter 'W' has shape \(3, 2\); expected \(2, 3\)"):
        p.pack(v=np.zeros(2), W=np.zeros((3, 2)), s=0.0, R=np.zeros((1, 2)))
    x0 = p.pack(v=rng.normal(size=(2, 1)), W=rng.normal(size=(2, 3)), s=0.3,
                R=rng.normal(size=2))
    assert {k: np.shape(a) for k, a in p.unpack(x0).items()} == {
        "v": (2,), "W": (2, 3), "s": (), "R": (1, 2)}
    h, eye = 1e-6, np.eye(x0.size)
    differences = np.array([(p.fun(x0 + h * e) - p.fun(x0 - h * e)) / (2 * h) for e in eye])
    np.testing.assert_allclose(p.jac(x0), differences, rtol=1e-6, atol=1e-6)
    H = p.hess(x0)
    np.testing.assert_allclose(H, np.array([(p.jac(x0 + h * e) - p.jac(x0 - h * e)) / (2 * h)
                                            for e in eye]).T, rtol=1e-6, atol=1e-6)
    direction = rng.normal(size=x0.size)
    np.testing.assert_allclose(p.hessp(x0, direction), H @ direction, rtol=1e-12, atol=1e-12)
    g = sg.compile(sg.sum(sg.square(W @ A - B)), [W])
    q = g.scipy(A=A0, B=B0)
    result = optimize.minimize(q.fun, q.pack(W=np.zeros((2, 3))), jac=q.jac, hess=q.hess,
                               method="trust-exact")
    np.testing.assert_allclose(q.unpack(result.x)["W"], B0 @ np.linalg.pinv(A0), atol=1e-8)


def test_scipy_refuses_a_scalar_model_over_arrays_of_points():
    """A model of scalars called with arrays has a value per point: f.scipy said so only
    as 'only 0-dimensional arrays can be converted to Python scalars' from p.fun."""
    w, x, y = sp.symbols("w x y")
    f = sg.compile((w * x - y) ** 2, [w])
    with pytest.raises(ValueError, match="'x' is an array .* value per point"):
        f.scipy(x=np.arange(3.0), y=1.0)
    p = f.scipy(x=2.0, y=1.0)
    assert p.fun(p.pack(w=0.5)) == 0.0


def test_the_readme_second_order_example_prints_what_it_says(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Second order"):text.index("## Architecture")]
    code, printed = re.findall(r"```python\n(.*?)```\nprints\n```\n(.*?)```", section, re.S)[0]
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out == printed


def test_pendulum_mass_matrix_is_the_hessian_of_the_kinetic_energy():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "pendulum_mass_matrix.py"
    spec = importlib.util.spec_from_file_location("pendulum_mass_matrix_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    difference = (example.mass_matrix() - example.lagrange_mass_matrix()).applyfunc(
        lambda e: sp.simplify(sp.expand_trig(e)))
    assert difference == sp.zeros(example.LINKS, example.LINKS)


def test_scalar_parameters_come_back_as_floats():
    a, b = sp.symbols("a b")
    f = sg.compile(a**2 * b + sp.sin(b), [a, b])
    H = f.hessian(a=1.5, b=0.5)
    assert isinstance(H[("a", "b")], float) and H[("a", "b")] == 3.0
    assert H[("b", "a")] == 3.0 and H[("b", "b")] == pytest.approx(-np.sin(0.5))
    product = f.hvp({"b": 1.0}, a=1.5, b=0.5)
    assert isinstance(product["a"], float) and product["a"] == 3.0


def test_scipy_least_squares_with_a_residual_model():
    optimize = pytest.importorskip("scipy.optimize")
    t, y = sg.vector("t", 30), sg.vector("y", 30)
    a, b = sp.symbols("a b")
    f = sg.compile(a * sg.exp(-b * t) - y, [a, b])
    t0 = np.linspace(0.0, 3.0, 30)
    y0 = 2.5 * np.exp(-1.3 * t0)
    p = f.scipy(t=t0, y=y0)
    x0 = p.pack(a=1.0, b=0.5)
    J = p.jac(x0)
    assert J.shape == (30, 2)
    np.testing.assert_allclose(J[:, 0], np.exp(-0.5 * t0), rtol=1e-12)
    np.testing.assert_allclose(J[:, 1], -t0 * np.exp(-0.5 * t0), rtol=1e-12)
    result = optimize.least_squares(p.fun, x0, jac=p.jac)
    np.testing.assert_allclose(result.x, [2.5, 1.3], rtol=1e-8)
    with pytest.raises(AttributeError, match="least_squares"):
        p.hess(x0)


# ------------------------------------------------------------------------------------------
# The arrays second order is given, and the arrays it gives back
# ------------------------------------------------------------------------------------------
def _no_two_share_memory(arrays):
    arrays = [a for a in arrays if isinstance(a, np.ndarray)]
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:]:
            assert not np.shares_memory(a, b)


def test_hessian_blocks_are_fresh_arrays_none_a_view_of_another():
    """Results are fresh arrays (README, conventions): H[(q, p)] is no view of H[(p, q)], of
    a scalar model over arrays or of a matrix model, so updating one in place leaves the
    other as it was; no block shares memory with another or with an input."""
    w, x, t = sp.symbols("w x t")
    scalar = sg.compile(sp.exp(w * t) * x**2 + w * x, [w, x])
    v, b, X = sg.vector("v", D), sg.vector("b", D), sg.matrix("X", N, D)
    matrix = sg.compile(sg.sum(sg.softplus(X @ v)) + sg.dot(v, b) * sg.dot(b, b), [v, b])
    rng = np.random.default_rng(7)
    cases = [(scalar, {"w": rng.normal(size=4), "x": rng.normal(size=4), "t": 0.5}),
             (matrix, {"X": rng.normal(size=(N, D)), "v": rng.normal(size=D),
                       "b": rng.normal(size=D)})]
    for f, inputs in cases:
        H = f.hessian(**inputs)
        _no_two_share_memory(list(H.values()) + list(inputs.values()))
        before = {k: np.copy(block) for k, block in H.items()}
        for key, block in H.items():
            block[...] = np.nan                       # each block updated in place ...
            for other, kept in before.items():        # ... leaves every other one alone
                if other != key:
                    np.testing.assert_array_equal(H[other], kept)
            block[...] = before[key]


def test_second_order_takes_a_row_vector_given_1d_as_given_1_x_d():
    """A 1 x d row may be given as a (d,) array, as f.grad takes it: hessian, hvp and
    f.scipy then give what they give for the (1, d) array (1-D shapes as given), where they
    took it for a d x 1 column (read d = 1 off it, refused it or failed to reshape)."""
    d = sp.Symbol("d", integer=True, positive=True)
    r, A, w = sg.matrix("r", 1, d), sg.matrix("A", d, d), sg.vector("w", d)
    rng = np.random.default_rng(8)
    r0, A0, w0 = rng.normal(size=3), rng.normal(size=(3, 3)), rng.normal(size=3)
    # a row parameter (its dimension read off it), with an entry read at a fixed position
    f = sg.compile(sg.sum(sg.square(r)) * sg.sum(r) + sg.sum(r @ A @ r.T) + r[0, 2] ** 3, [r])
    H1, H2 = f.hessian(r=r0, A=A0), f.hessian(r=r0.reshape(1, 3), A=A0)
    assert H1[("r", "r")].shape == (3, 3)
    np.testing.assert_array_equal(H1[("r", "r")], H2[("r", "r")].reshape(3, 3))
    t = rng.normal(size=3)
    p1 = f.hvp({"r": t}, r=r0, A=A0)["r"]
    p2 = f.hvp({"r": t.reshape(1, 3)}, r=r0.reshape(1, 3), A=A0)["r"]
    assert p1.shape == (3,)
    np.testing.assert_array_equal(p1, p2.reshape(3))
    np.testing.assert_allclose(p1, H1[("r", "r")] @ t, rtol=1e-12, atol=1e-12)
    # a row of data in a block A^T diag(c) A (computed as a symmetric product)
    g = sg.compile(sg.sum(sg.softplus(r @ w)) + sg.dot(w, w), [w])
    s = 1 / (1 + np.exp(-(r0 @ w0)))
    closed = s * (1 - s) * np.outer(r0, r0) + 2 * np.eye(3)
    for r_given in (r0, r0.reshape(1, 3)):
        np.testing.assert_allclose(g.hessian(r=r_given, w=w0)[("w", "w")], closed,
                                   rtol=1e-12, atol=1e-12)
        problem = g.scipy(r=r_given)
        np.testing.assert_allclose(problem.hess(problem.pack(w=w0)), closed,
                                   rtol=1e-12, atol=1e-12)


def test_second_order_names_an_input_that_is_no_matrix():
    """A matrix input given as a 3-D array is refused naming it, as f.grad refuses it (the
    dimension it fixes went unread: NameError: name 'n' is not defined)."""
    n = sp.Symbol("n", integer=True, positive=True)
    X, w = sg.matrix("X", n, D), sg.vector("w", D)
    f = sg.compile(sg.sum(sg.softplus(X @ w)), [w])
    for call in (lambda **i: f.hessian(**i), lambda **i: f.hvp({"w": np.ones(D)}, **i)):
        with pytest.raises(ValueError, match=r"input 'X' must be a matrix.*\(4, 3, 1\)"):
            call(X=np.ones((4, D, 1)), w=np.ones(D))


def test_a_tangent_or_packed_parameter_of_another_shape_is_refused_not_reshaped():
    """A (3, 2) array is no direction for a 2 x 3 matrix, as f.grad refuses it as the
    matrix: f.hvp and p.pack refuse it naming the parameter, where they took any array of
    the same size and reshaped it (its entries moved: H V^T.reshape(2, 3), not H V).  A
    vector's direction may still come as (n,), (n, 1) or (1, n)."""
    W, x = sg.matrix("W", 2, 3), sg.vector("x", 3)
    f = sg.compile(sg.sum(sg.exp(W @ x)), [W, x])
    rng = np.random.default_rng(9)
    W0, x0, V = rng.normal(size=(2, 3)), rng.normal(size=3), rng.normal(size=(2, 3))
    with pytest.raises(ValueError, match=r"tangent of 'W' has shape \(3, 2\).*\(2, 3\)"):
        f.hvp({"W": V.T.copy()}, W=W0, x=x0)
    expected = f.hvp({"x": x0}, W=W0, x=x0)
    for given in (x0, x0.reshape(3, 1), x0.reshape(1, 3)):
        got = f.hvp({"x": given}, W=W0, x=x0)
        np.testing.assert_array_equal(got["W"], expected["W"])
        np.testing.assert_array_equal(got["x"], expected["x"])
    problem = f.scipy()
    with pytest.raises(ValueError, match=r"parameter 'W' has shape \(3, 2\); expected \(2, 3\)"):
        problem.pack(W=W0.T.copy(), x=x0)
    w, t = sp.symbols("w t")
    g = sg.compile(sp.exp(w * t), [w])     # a scalar model over arrays: per point
    with pytest.raises(ValueError, match=r"tangent of 'w' has shape \(4, 3\)"):
        g.hvp({"w": np.ones((4, 3))}, w=np.ones((3, 4)), t=1.0)


def test_hessian_of_a_long_product_is_the_closed_form():
    # d2/da_i da_j prod_k (sin a_k + 2): cos a_i cos a_j times the other factors (i != j),
    # -sin a_i times the others on the diagonal; 12 factors take the shared partial products
    a = sp.symbols("a0:12", real=True)
    factors = [sp.sin(s) + 2 for s in a]
    H = sg.hessian(sp.Mul(*factors), list(a))
    point = {s: sp.Float(0.1 * (k + 1)) for k, s in enumerate(a)}
    values = [float(f.subs(point)) for f in factors]
    for (p, q), block in H.items():
        i, j = a.index(p), a.index(q)
        others = np.prod([v for k, v in enumerate(values) if k not in (i, j)])
        expected = (-np.sin(float(point[p])) if i == j
                    else np.cos(float(point[p])) * np.cos(float(point[q]))) * others
        assert abs(float(block.subs(point)) - expected) <= 1e-12 * abs(expected), (p, q)


def test_forward_mode_through_a_long_product_shares_its_partial_products():
    # the product rule of k factors as k flat terms holds k (k - 1) factors in all; through
    # a balanced tree of partial products each term holds log2 k pieces
    from symgrad.derive.second import jvp

    k = 256
    x = sp.symbols(f"x0:{k}", real=True)
    v = sp.symbols(f"v0:{k}", real=True)
    tangent = jvp(sp.Mul(*x), dict(zip(x, v)))
    nodes, stack, edges = set(), [tangent], 0
    while stack:
        node = stack.pop()
        if id(node) not in nodes:
            nodes.add(id(node))
            edges += len(node.args)
            stack.extend(node.args)
    assert edges < 4 * k * 8, edges          # k log2 k = 2,048; flat terms: 65,536
    point = {s: sp.Float(1 + 0.001 * n) for n, s in enumerate(x)}
    point.update({s: sp.Float(0.5 - 0.002 * n) for n, s in enumerate(v)})
    values = np.array([float(point[s]) for s in x])
    expected = sum(float(point[v[n]]) * np.prod(np.delete(values, n)) for n in range(k))
    assert abs(float(tangent.xreplace(point)) - expected) <= 1e-12 * abs(expected)


def test_compiled_hessian_of_a_nested_model_is_its_gradients_differences():
    # the bundle that computes the blocks held copies of their shared pieces, and compiling
    # it compared them node by node along every path: at depth 12 it did not finish in
    # five minutes
    from symgrad.second import BundlePlan, hessian_plan
    from tests.test_nodes import _one_object_per_value

    x, w = sp.symbols("x w", real=True)
    f = x
    for _ in range(12):
        f = f * sp.sin(f + w)
    plan = hessian_plan(f, [x, w], {"x", "w"})
    assert isinstance(plan, BundlePlan)
    one_object_each = _one_object_per_value([plan.expression])   # (pytest prints no tree)
    assert one_object_each, "the bundle holds two objects of one value"
    model = sg.compile(f, [x, w])
    hessian = model.hessian(x=0.7, w=0.3)
    h = 1e-6
    for (p, q), value in hessian.items():
        step = {"x": 0.0, "w": 0.0}
        step[q] = h
        up = model.grad(x=0.7 + step["x"], w=0.3 + step["w"])[p]
        down = model.grad(x=0.7 - step["x"], w=0.3 - step["w"])[p]
        difference = (up - down) / (2 * h)
        assert abs(value - difference) <= 1e-5 * (1 + abs(difference)), (p, q)


def test_compiled_hvp_of_a_nested_model_is_its_hessian_times_the_tangent():
    # splitting the product into what moves with the tangent and what is computed at x
    # asked SymPy for free_symbols of each node and recursed into shared pieces as a tree:
    # at depth 12 the first call did not finish in five minutes
    x, w = sp.symbols("x w", real=True)
    f = x
    for _ in range(12):
        f = f * sp.sin(f + w)
    model = sg.compile(f, [x, w])
    point, tangent = {"x": 0.7, "w": 0.3}, {"x": 0.4, "w": -1.3}
    hessian = model.hessian(**point)
    product = model.hvp(tangent, **point)
    for p in "xw":
        expected = sum(hessian[p, q] * tangent[q] for q in "xw")
        assert abs(product[p] - expected) <= 1e-9 * (1 + abs(expected)), p


def _nested_outputs(depth: int, every: int):
    """(x, w, f, outputs): the model f <- f sin(f + w) nested depth deep from f = x, and its
    value at every ``every``-th level (outputs that share their pieces)."""
    x, w = sp.symbols("x w", real=True)
    f, outputs = x, []
    for k in range(depth):
        f = f * sp.sin(f + w)
        if k % every == every - 1:
            outputs.append(f)
    return x, w, f, outputs


def test_jacobian_of_an_explicit_matrix_of_nested_outputs_is_its_entries_differences():
    # the outputs of a model taken at several depths share their pieces: each entry was
    # differentiated by each symbol apart, after SymPy's free_symbols (a walk as a tree), in
    # a cache holding the earlier entries' derivatives, which SymPy compared node by node
    # with the new ones: at depth 48 sg.jacobian did not finish in five minutes
    from symgrad.derive.graph import dag_xreplace
    from tests.test_nodes import _one_object_per_value

    x, w, _, outputs = _nested_outputs(48, every=8)
    jacobian = sg.jacobian(sp.Matrix(outputs), [x, w])
    one_object_each = _one_object_per_value(list(jacobian.values()))   # (pytest prints no tree)
    assert one_object_each, "the Jacobian holds two objects of one value"

    def at(e, x0, w0):      # in 40 digits (SymPy's own xreplace walks the DAG as a tree)
        return dag_xreplace(e, {x: sp.Float(x0, 40), w: sp.Float(w0, 40)})

    x0, w0, h = sp.Rational(3, 2), sp.Rational(6, 5), sp.Rational(1, 10**10)
    for q, column in jacobian.items():
        step = (h, 0) if q == x else (0, h)
        for entry, derivative in zip(outputs, column):
            difference = float((at(entry, x0 + step[0], w0 + step[1])
                                - at(entry, x0 - step[0], w0 - step[1])) / (2 * h))
            value = float(at(derivative, x0, w0))
            assert abs(difference) > 1e-3     # (a point where no entry vanishes)
            assert abs(value - difference) <= 1e-9 * abs(difference), (value, difference)


def test_show_of_deep_blocks_writes_steps_that_rebuild_the_blocks():
    # written out, the Hessian of a model nested 12 deep repeats its shared pieces at each
    # use (sg.show did not finish in 90 s): the blocks are written as steps over the values
    # they share, which, put back in order, give the blocks' values
    from symgrad.derive.graph import dag_xreplace
    from symgrad.second import _as_steps

    x, w, f, outputs = _nested_outputs(12, every=4)
    point = {x: sp.Float("1.5", 30), w: sp.Float("1.2", 30)}
    for blocks in (sg.hessian(f, [x, w]), sg.jacobian(sp.Matrix(outputs), [x, w])):
        text = sg.show(blocks)
        steps, forms = _as_steps(blocks)
        assert len(text.splitlines()) >= len(steps) + len(forms)
        assert all(f"{name} = " in text for name, _ in steps)
        values = dict(point)
        for name, step in steps:      # each step over the inputs and earlier steps only
            values[sp.Symbol(name)] = step.xreplace(values)
        for key, form in forms.items():
            rebuilt = sp.Matrix(form.xreplace(values)) if isinstance(form, sp.MatrixBase) \
                else sp.Matrix([form.xreplace(values)])
            direct = dag_xreplace(blocks[key], point)
            direct = sp.Matrix(direct) if isinstance(direct, sp.MatrixBase) \
                else sp.Matrix([direct])
            assert rebuilt.free_symbols == set(), key
            difference = max(abs(float(a - b)) for a, b in zip(rebuilt, direct))
            assert difference <= 1e-20 * (1 + max(abs(float(b)) for b in direct)), key
