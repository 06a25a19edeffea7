"""Small versions of models from outside symgrad, written as their fields write them, each
compiled and checked against JAX: through ``sg.check`` (JAX runs symgrad's translation of
the same expression) and, where the model has a plain NumPy form, against ``jax.grad`` of
that form written independently here."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symgrad as sg

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy


def _checked_against_jax(model, **kwargs):
    report = sg.check(model, against=["jax"], **kwargs)
    assert report.ok, str(report)
    compared = {c.quantity for c in report.comparisons if c.backend == "jax"}
    assert compared == {"value", *[w.name for w in model.wrt]}
    return report


def _close(got, want, rtol=1e-9, atol=1e-11):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------
# A 3-link pendulum's Lagrangian, as sympy.physics.mechanics gives it (functions of time)
# ------------------------------------------------------------------------------------------
def _pendulum_lagrangian(links: int = 3):
    from sympy.physics import mechanics as me

    q = me.dynamicsymbols(f"q1:{links + 1}")
    u = [qi.diff(me.dynamicsymbols._t) for qi in q]
    m = sp.symbols(f"m1:{links + 1}", positive=True)
    length = sp.symbols(f"l1:{links + 1}", positive=True)
    g = sp.Symbol("g", positive=True)
    N = me.ReferenceFrame("N")
    origin = me.Point("O")
    origin.set_vel(N, 0)
    point, particles = origin, []
    for k in range(links):
        frame = N.orientnew(f"A{k}", "Axis", [q[k], N.z])
        frame.set_ang_vel(N, u[k] * N.z)
        nxt = point.locatenew(f"P{k}", length[k] * frame.x)
        nxt.v2pt_theory(point, N, frame)
        particle = me.Particle(f"B{k}", nxt, m[k])
        particle.potential_energy = m[k] * g * nxt.pos_from(origin).dot(N.x)
        particles.append(particle)
        point = nxt
    return me.Lagrangian(N, *particles), q, u, m, length, g


def test_pendulum_lagrangian_from_mechanics():
    L, q, u, m, length, g = _pendulum_lagrangian(3)
    model = sg.Model("pendulum3", L, wrt=[*q, *u])
    assert [w.name for w in model.wrt] == ["q1", "q2", "q3", "q1_dot", "q2_dot", "q3_dot"]
    _checked_against_jax(model, points=1)

    # the compiled function against jax.grad of the Lagrangian written by hand (angles from
    # the x axis, y across): T = sum m_k |v_k|^2 / 2, V = sum m_k g x_k as set above
    f = model.compiled
    rng = np.random.default_rng(1)
    values = dict(zip([s.name for s in [*m, *length]], rng.uniform(0.5, 2.0, 6)),
                  g=9.81)
    angles, speeds = rng.normal(size=3), rng.normal(size=3)

    def lagrangian(angles, speeds):
        ms = jnp.array([values[f"m{k}"] for k in (1, 2, 3)])
        ls = jnp.array([values[f"l{k}"] for k in (1, 2, 3)])
        x = jnp.cumsum(ls * jnp.cos(angles))
        vx = jnp.cumsum(-ls * jnp.sin(angles) * speeds)
        vy = jnp.cumsum(ls * jnp.cos(angles) * speeds)
        return jnp.sum(ms * (vx**2 + vy**2)) / 2 - jnp.sum(ms * values["g"] * x)

    inputs = {**values, **{f"q{k + 1}": angles[k] for k in range(3)},
              **{f"q{k + 1}_dot": speeds[k] for k in range(3)}}
    value, grads = f.value_and_grad(**inputs)
    want_value = lagrangian(angles, speeds)
    d_angles, d_speeds = jax.grad(lagrangian, argnums=(0, 1))(angles, speeds)
    _close(value, want_value)
    _close([grads[f"q{k}"] for k in (1, 2, 3)], d_angles)
    _close([grads[f"q{k}_dot"] for k in (1, 2, 3)], d_speeds)
    # sg.grad keys the gradients by the functions of time the user passed
    symbolic = sg.grad(L, [q[0], u[0]])
    assert list(symbolic) == [q[0], u[0]]


# ------------------------------------------------------------------------------------------
# A 6-joint Denavit-Hartenberg arm: squared distance of the end effector from a target
# ------------------------------------------------------------------------------------------
_DH = [  # (d, a, alpha) of a UR5-like arm, in metres and radians
    (0.0892, 0.0, sp.pi / 2), (0.0, -0.425, 0.0), (0.0, -0.392, 0.0),
    (0.1093, 0.0, sp.pi / 2), (0.0947, 0.0, -sp.pi / 2), (0.0823, 0.0, 0.0)]


_TOOL = [0.05, 0.02, 0.1, 1]


def _dh(theta, d, a, alpha):
    return sp.Matrix([
        [sp.cos(theta), -sp.sin(theta) * sp.cos(alpha), sp.sin(theta) * sp.sin(alpha),
         a * sp.cos(theta)],
        [sp.sin(theta), sp.cos(theta) * sp.cos(alpha), -sp.cos(theta) * sp.sin(alpha),
         a * sp.sin(theta)],
        [0, sp.sin(alpha), sp.cos(alpha), d],
        [0, 0, 0, 1]])


def _dh_numpy(theta, d, a, alpha):
    c, s, ca, sa = jnp.cos(theta), jnp.sin(theta), np.cos(alpha), np.sin(alpha)
    return jnp.array([[c, -s * ca, s * sa, a * c], [s, c * ca, -c * sa, a * s],
                      [0.0, sa, ca, d], [0.0, 0.0, 0.0, 1.0]])


def test_denavit_hartenberg_arm():
    theta = sp.symbols("theta1:7")
    target = sp.symbols("tx ty tz")
    T = sp.eye(4)
    for th, (d, a, alpha) in zip(theta, _DH):
        T = T * _dh(th, d, a, alpha)
    tool = T * sp.Matrix(_TOOL)      # a point on the tool, off the last joint's axis
    error = sum((tool[k] - target[k]) ** 2 for k in range(3))
    model = sg.Model("dh_arm", error, wrt=list(theta))
    _checked_against_jax(model, points=1)

    def jax_error(angles, goal):
        T = jnp.eye(4)
        for k, (d, a, alpha) in enumerate(_DH):
            T = T @ _dh_numpy(angles[k], float(d), float(a), float(alpha))
        return jnp.sum(((T @ jnp.array(_TOOL, dtype=float))[:3] - goal) ** 2)

    rng = np.random.default_rng(2)
    angles, goal = rng.uniform(-np.pi, np.pi, 6), rng.normal(size=3) * 0.3
    value, grads = model.compiled.value_and_grad(
        **{f"theta{k + 1}": angles[k] for k in range(6)}, tx=goal[0], ty=goal[1], tz=goal[2])
    _close(value, jax_error(angles, goal))
    _close([grads[f"theta{k}"] for k in range(1, 7)], jax.grad(jax_error)(angles, goal))


# ------------------------------------------------------------------------------------------
# A Gaussian process's negative log marginal likelihood, RBF kernel
# ------------------------------------------------------------------------------------------
def test_gaussian_process_negative_log_marginal_likelihood():
    n, d = 8, 2
    X, y = sg.matrix("X", n, d), sg.vector("y", n)
    log_scale, log_signal, log_noise = sp.symbols("log_scale log_signal log_noise")
    norms = sg.sum(sg.hadamard(X, X), axis=1)                       # n x 1
    distances = (sg.broadcast(norms, (n, n)) + sg.broadcast(norms.T, (n, n))
                 - 2 * X @ X.T)
    K = (sp.exp(2 * log_signal) * sg.exp(-distances * sp.exp(-2 * log_scale) / 2)
         + sp.exp(2 * log_noise) * sp.Identity(n))
    nll = (sg.dot(y, sg.inv(K) @ y) / 2 + sg.logdet(K) / 2
           + sp.Rational(n, 2) * sp.log(2 * sp.pi))
    model = sg.Model("gp_nll", nll, wrt=[log_scale, log_signal, log_noise, X])
    _checked_against_jax(model, points=1)

    rng = np.random.default_rng(3)
    X0, y0 = rng.normal(size=(n, d)), rng.normal(size=n)
    theta = np.array([0.1, 0.3, -1.0])

    def jax_nll(theta, X):
        sq = jnp.sum((X[:, None, :] - X[None, :, :]) ** 2, axis=-1)
        K = (jnp.exp(2 * theta[1]) * jnp.exp(-sq * jnp.exp(-2 * theta[0]) / 2)
             + jnp.exp(2 * theta[2]) * jnp.eye(n))
        return (y0 @ jnp.linalg.solve(K, y0) / 2 + jnp.linalg.slogdet(K)[1] / 2
                + n / 2 * np.log(2 * np.pi))

    value, grads = model.compiled.value_and_grad(
        log_scale=theta[0], log_signal=theta[1], log_noise=theta[2], X=X0, y=y0)
    d_theta, d_X = jax.grad(jax_nll, argnums=(0, 1))(theta, X0)
    _close(value, jax_nll(theta, X0))
    _close([grads["log_scale"], grads["log_signal"], grads["log_noise"]], d_theta, rtol=1e-8)
    _close(grads["X"], d_X, rtol=1e-8)


# ------------------------------------------------------------------------------------------
# A Gaussian mixture's log-likelihood (isotropic components, weights by log-softmax)
# ------------------------------------------------------------------------------------------
def test_gaussian_mixture_log_likelihood():
    N, d, K = 20, 2, 3
    X, M = sg.matrix("X", N, d), sg.matrix("M", K, d)
    w, s = sg.vector("w", K), sg.vector("s", K)          # weight logits, log std devs
    distances = (sg.broadcast(sg.sum(sg.hadamard(X, X), axis=1), (N, K))
                 + sg.broadcast(sg.sum(sg.hadamard(M, M), axis=1).T, (N, K)) - 2 * X @ M.T)
    log_weights = sg.log(sg.softmax(w, axis=0))           # the textbook form: log(softmax)
    log_density = (-sg.hadamard(distances, sg.broadcast(sg.exp(-2 * s).T, (N, K))) / 2
                   - sg.broadcast((d * s + d * sp.log(2 * sp.pi) / 2 * sp.OneMatrix(K, 1)).T,
                                  (N, K)))
    loglik = sg.sum(sg.logsumexp(log_density + sg.broadcast(log_weights.T, (N, K)), axis=1))
    model = sg.Model("gmm", loglik, wrt=[M, w, s])
    _checked_against_jax(model, points=1)

    rng = np.random.default_rng(4)
    X0, M0, w0, s0 = (rng.normal(size=(N, d)), rng.normal(size=(K, d)), rng.normal(size=K),
                      rng.normal(size=K) * 0.3)

    def jax_loglik(M, w, s):
        sq = jnp.sum((X0[:, None, :] - M[None, :, :]) ** 2, axis=-1)
        log_dens = -sq * jnp.exp(-2 * s) / 2 - d * s - d * np.log(2 * np.pi) / 2
        return jnp.sum(jax.scipy.special.logsumexp(log_dens + jax.nn.log_softmax(w), axis=1))

    value, grads = model.compiled.value_and_grad(X=X0, M=M0, w=w0, s=s0)
    _close(value, jax_loglik(M0, w0, s0))
    for name, want in zip("Mws", jax.grad(jax_loglik, argnums=(0, 1, 2))(M0, w0, s0)):
        _close(np.reshape(grads[name], np.shape(want)), want)
    # weight logits a thousand apart: log(softmax) is log-softmax, finite in both passes
    value, grads = model.compiled.value_and_grad(X=X0, M=M0, w=np.array([1000.0, 0, -1000]),
                                                 s=s0)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads.values())


# ------------------------------------------------------------------------------------------
# A 3-layer MLP with the textbook softmax cross-entropy -sum(Y o log(softmax(Z)))
# ------------------------------------------------------------------------------------------
def test_three_layer_mlp_softmax_cross_entropy():
    d, h1, h2, c, m = 5, 7, 6, 4, 9
    X, Y = sg.matrix("X", d, m), sg.matrix("Y", c, m)
    W1, W2, W3 = sg.matrix("W1", h1, d), sg.matrix("W2", h2, h1), sg.matrix("W3", c, h2)
    b1, b2, b3 = sg.vector("b1", h1), sg.vector("b2", h2), sg.vector("b3", c)
    H1 = sg.tanh(W1 @ X + sg.broadcast(b1, (h1, m)))
    H2 = sg.sigmoid(W2 @ H1 + sg.broadcast(b2, (h2, m)))
    Z = W3 @ H2 + sg.broadcast(b3, (c, m))
    loss = -sg.sum(sg.hadamard(Y, sg.log(sg.softmax(Z, axis=0)))) / m
    params = [W1, b1, W2, b2, W3, b3]
    model = sg.Model("mlp3", loss, wrt=params)
    _checked_against_jax(model, points=1)

    rng = np.random.default_rng(5)
    X0, Y0 = rng.normal(size=(d, m)), np.eye(c)[:, rng.integers(0, c, m)]
    p0 = [rng.normal(size=(p.shape[0], p.shape[1])) for p in params]

    def jax_loss(W1, b1, W2, b2, W3, b3):
        H1 = jnp.tanh(W1 @ X0 + b1)
        H2 = jax.nn.sigmoid(W2 @ H1 + b2)
        return -jnp.sum(Y0 * jax.nn.log_softmax(W3 @ H2 + b3, axis=0)) / m

    value, grads = model.compiled.value_and_grad(
        X=X0, Y=Y0, **{p.name: v for p, v in zip(params, p0)})
    _close(value, jax_loss(*p0))
    for p, want in zip(params, jax.grad(jax_loss, argnums=tuple(range(6)))(*p0)):
        _close(np.reshape(grads[p.name], want.shape), want)
    # logits of size 1000: the textbook form stays finite in both passes
    big = [v * (1000 if k == 5 else 1) for k, v in enumerate(p0)]
    value, grads = model.compiled.value_and_grad(
        X=X0, Y=Y0, **{p.name: v for p, v in zip(params, big)})
    _close(value, jax_loss(*big), rtol=1e-12)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


# ------------------------------------------------------------------------------------------
# Single-head attention
# ------------------------------------------------------------------------------------------
def test_single_head_attention():
    n, d, k = 6, 5, 4
    X, T = sg.matrix("X", n, d), sg.matrix("T", n, k)
    Wq, Wk, Wv = sg.matrix("Wq", d, k), sg.matrix("Wk", d, k), sg.matrix("Wv", d, k)
    scores = (X @ Wq) @ (X @ Wk).T / sp.sqrt(k)
    out = sg.softmax(scores, axis=1) @ (X @ Wv)
    loss = sg.sum(sg.hadamard(out - T, out - T))
    model = sg.Model("attention", loss, wrt=[Wq, Wk, Wv])
    _checked_against_jax(model, points=1)

    rng = np.random.default_rng(6)
    X0, T0 = rng.normal(size=(n, d)), rng.normal(size=(n, k))
    Ws = [rng.normal(size=(d, k)) for _ in range(3)]

    def jax_loss(Wq, Wk, Wv):
        A = jax.nn.softmax((X0 @ Wq) @ (X0 @ Wk).T / np.sqrt(k), axis=1)
        return jnp.sum((A @ (X0 @ Wv) - T0) ** 2)

    value, grads = model.compiled.value_and_grad(X=X0, T=T0, Wq=Ws[0], Wk=Ws[1], Wv=Ws[2])
    _close(value, jax_loss(*Ws))
    for name, want in zip(["Wq", "Wk", "Wv"], jax.grad(jax_loss, argnums=(0, 1, 2))(*Ws)):
        _close(grads[name], want)


# ------------------------------------------------------------------------------------------
# Rosenbrock, written with sympy.Sum over a vector's entries
# ------------------------------------------------------------------------------------------
def test_rosenbrock_as_a_sum():
    n = 10
    x, i = sg.vector("x", n), sp.Symbol("i", integer=True)
    f = sp.Sum(100 * (x[i + 1, 0] - x[i, 0] ** 2) ** 2 + (1 - x[i, 0]) ** 2, (i, 0, n - 2))
    model = sg.Model("rosenbrock", f, wrt=[x])
    _checked_against_jax(model, points=1)

    def jax_rosenbrock(x):
        return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    x0 = np.random.default_rng(7).normal(size=n)
    value, grads = model.compiled.value_and_grad(x=x0)
    _close(value, jax_rosenbrock(x0))
    _close(grads["x"], jax.grad(jax_rosenbrock)(x0))
    value, grads = model.compiled.value_and_grad(x=np.ones(n))      # the minimum
    assert value == 0.0 and not np.any(grads["x"])
