"""Peer implementations of the workloads in ``bench/workloads.py``.

Every builder has the signature ``build(wl, mode, inputs) -> Impl`` where ``mode`` is
``"vg"`` (value and gradient) or ``"fwd"`` (forward alone). Building includes whatever the
framework needs before the first call (tracing, jit objects, converting the inputs to the
framework's arrays); the driver times build + first call as the "first call" time and then
times ``impl.fn(*impl.args, **impl.kwargs)`` in loops.

``impl.convert(result)`` turns one call's result into ``(value, {name: ndarray})`` (numpy)
for the agreement check; it is never timed.

Sections: hand NumPy, hand Numba, JAX / torch / autograd (one shared array model per
workload, written against the framework's numpy-like namespace), SymPy lambdify, symgrad.
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bench import workloads as wls


@dataclass
class Impl:
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    convert: Callable | None = None  # result -> (value, {name: ndarray})
    # build time spent earlier in shared state (symgrad's compile object serves vg and fwd)
    first_extra_s: float = 0.0

    def call(self):
        return self.fn(*self.args, **self.kwargs)


class Unavailable(Exception):
    """The implementation cannot run here (library missing, not applicable, skipped)."""


def _np_out(wl, mode):
    """Converter for results shaped (value, g1, g2, ...) / value."""
    if mode == "fwd":
        return lambda r: (np.asarray(r, dtype=np.float64), {})

    def conv(r):
        value, *grads = r
        return np.asarray(value, dtype=np.float64), {
            n: np.asarray(g, dtype=np.float64) for n, g in zip(wl.wrt, grads, strict=True)
        }

    return conv


# =========================================================================== hand NumPy
def _expit():
    from scipy.special import expit

    return expit


def numpy_w1a_vg(w, x, y):
    s = w * x - y
    return s * s, 2.0 * s * x


def numpy_w1a_fwd(w, x, y):
    s = w * x - y
    return s * s


def numpy_w1b_vg(w, X, y):
    r = X @ w
    r -= y
    n = r.shape[0]
    loss = (r @ r) / n
    g = r @ X
    g *= 2.0 / n
    return loss, g


def numpy_w1b_fwd(w, X, y):
    r = X @ w
    r -= y
    return (r @ r) / r.shape[0]


def _numpy_w2(expit):
    def w2a_vg(W, b, u, x):
        z = W @ x
        z += b
        h = expit(z, out=z)
        s = u @ h
        dz = 1.0 - h
        dz *= h
        dz *= u
        dW = np.outer(dz, x)
        dx = dz @ W
        return s, dW, dz, h, dx

    def w2a_fwd(W, b, u, x):
        z = W @ x
        z += b
        return u @ expit(z, out=z)

    def w2b_vg(W, b, u, X):
        Z = W @ X
        Z += b[:, None]
        H = expit(Z, out=Z)
        hs = H.sum(axis=1)
        s = u @ hs
        G = 1.0 - H
        G *= H
        G *= u[:, None]
        db = G.sum(axis=1)
        dW = G @ X.T
        dX = W.T @ G
        return s, dW, db, hs, dX

    def w2b_fwd(W, b, u, X):
        Z = W @ X
        Z += b[:, None]
        return u @ expit(Z, out=Z).sum(axis=1)

    return w2a_vg, w2a_fwd, w2b_vg, w2b_fwd


def _numpy_w3(expit):
    # cost = mean(softplus(Z2) - Y Z2): the stable form of the cross-entropy (workloads.w3_model)
    def vg(W1, b1, W2, b2, X, Y):
        m = X.shape[1]
        A1 = W1 @ X
        A1 += b1[:, None]
        np.tanh(A1, out=A1)
        Z2 = W2 @ A1
        Z2 += b2[:, None]
        cost = (np.logaddexp(0.0, Z2).sum() - np.vdot(Y, Z2)) / m
        dZ2 = expit(Z2, out=Z2)
        dZ2 -= Y
        dZ2 *= 1.0 / m
        dW2 = dZ2 @ A1.T
        db2 = dZ2.sum(axis=1)
        np.multiply(A1, A1, out=A1)  # A1 <- 1 - A1^2, then dZ1 = (W2^T dZ2) * (1 - A1^2)
        np.subtract(1.0, A1, out=A1)
        A1 *= W2.T @ dZ2
        dW1 = A1 @ X.T
        db1 = A1.sum(axis=1)
        return cost, dW1, db1, dW2, db2

    def fwd(W1, b1, W2, b2, X, Y):
        m = X.shape[1]
        A1 = W1 @ X
        A1 += b1[:, None]
        np.tanh(A1, out=A1)
        Z2 = W2 @ A1
        Z2 += b2[:, None]
        return (np.logaddexp(0.0, Z2).sum() - np.vdot(Y, Z2)) / m

    return vg, fwd


# W4 constants, shared by the hand implementations
_L1, _L2, _L3 = wls.W4_L
_M1, _M2, _M3 = wls.W4_MASS
_MS1, _MS2, _MS3 = _M1 + _M2 + _M3, _M2 + _M3, _M3  # mass beyond each joint
_G, _K = wls.W4_G, wls.W4_K
_TX, _TY = wls.W4_TARGET


def numpy_w4_vg(q1, q2, q3, dq1, dq2, dq3):
    """Energy and its gradient, reverse mode by hand over absolute angles a_i and
    absolute rates w_i (a2 = q1 + q2, w2 = dq1 + dq2, ...): 6 trig calls per point."""
    a2 = q1 + q2
    a3 = a2 + q3
    C1, S1 = np.cos(q1), np.sin(q1)
    C2, S2 = np.cos(a2), np.sin(a2)
    C3, S3 = np.cos(a3), np.sin(a3)
    w2 = dq1 + dq2
    w3 = w2 + dq3
    t1 = _L1 * dq1
    t2 = _L2 * w2
    t3 = _L3 * w3
    # link velocity contributions u_i = t_i (-S_i, C_i); end velocities v_k = sum_{i<=k} u_i
    v1x = -t1 * S1
    v1y = t1 * C1
    v2x = v1x - t2 * S2
    v2y = v1y + t2 * C2
    v3x = v2x - t3 * S3
    v3y = v2y + t3 * C3
    kin = _M1 * (v1x * v1x + v1y * v1y)
    kin += _M2 * (v2x * v2x + v2y * v2y)
    kin += _M3 * (v3x * v3x + v3y * v3y)
    kin *= 0.5
    ex = _L1 * C1 + _L2 * C2 + _L3 * C3 - _TX
    ey = _L1 * S1 + _L2 * S2 + _L3 * S3 - _TY
    pot = (_G * _MS1 * _L1) * S1 + (_G * _MS2 * _L2) * S2 + (_G * _MS3 * _L3) * S3
    energy = kin
    energy += pot
    energy += _K * (ex * ex + ey * ey)
    # backward: gu_i = sum_{k>=i} m_k v_k
    gu3x, gu3y = _M3 * v3x, _M3 * v3y
    gu2x, gu2y = gu3x + _M2 * v2x, gu3y + _M2 * v2y
    gu1x, gu1y = gu2x + _M1 * v1x, gu2y + _M1 * v1y
    gw1 = _L1 * (C1 * gu1y - S1 * gu1x)
    gw2 = _L2 * (C2 * gu2y - S2 * gu2x)
    gw3 = _L3 * (C3 * gu3y - S3 * gu3x)
    kex, key = 2.0 * _K * ex, 2.0 * _K * ey
    # d/da_i = l_i [C_i (g M_i + 2k ey) - S_i 2k ex] - t_i (C_i gux_i + S_i guy_i)
    ga3 = _L3 * (C3 * (_G * _MS3 + key) - S3 * kex) - t3 * (C3 * gu3x + S3 * gu3y)
    ga2 = _L2 * (C2 * (_G * _MS2 + key) - S2 * kex) - t2 * (C2 * gu2x + S2 * gu2y)
    ga1 = _L1 * (C1 * (_G * _MS1 + key) - S1 * kex) - t1 * (C1 * gu1x + S1 * gu1y)
    gq2 = ga2
    gq2 += ga3
    gq1 = ga1
    gq1 += gq2
    gdq2 = gw2
    gdq2 += gw3
    gdq1 = gw1
    gdq1 += gdq2
    return energy, gq1, gq2, ga3, gdq1, gdq2, gw3


def numpy_w4_fwd(q1, q2, q3, dq1, dq2, dq3):
    a2 = q1 + q2
    a3 = a2 + q3
    C1, S1 = np.cos(q1), np.sin(q1)
    C2, S2 = np.cos(a2), np.sin(a2)
    C3, S3 = np.cos(a3), np.sin(a3)
    w2 = dq1 + dq2
    w3 = w2 + dq3
    t1 = _L1 * dq1
    t2 = _L2 * w2
    t3 = _L3 * w3
    v1x = -t1 * S1
    v1y = t1 * C1
    v2x = v1x - t2 * S2
    v2y = v1y + t2 * C2
    v3x = v2x - t3 * S3
    v3y = v2y + t3 * C3
    energy = _M1 * (v1x * v1x + v1y * v1y)
    energy += _M2 * (v2x * v2x + v2y * v2y)
    energy += _M3 * (v3x * v3x + v3y * v3y)
    energy *= 0.5
    ex = _L1 * C1 + _L2 * C2 + _L3 * C3 - _TX
    ey = _L1 * S1 + _L2 * S2 + _L3 * S3 - _TY
    energy += (_G * _MS1 * _L1) * S1 + (_G * _MS2 * _L2) * S2 + (_G * _MS3 * _L3) * S3
    energy += _K * (ex * ex + ey * ey)
    return energy


def build_numpy(wl, mode, inp):
    fam = wl.family
    args = tuple(inp[a] for a in wl.args)
    if fam == "W1a":
        fn = numpy_w1a_vg if mode == "vg" else numpy_w1a_fwd
    elif fam == "W1b":
        fn = numpy_w1b_vg if mode == "vg" else numpy_w1b_fwd
    elif fam in ("W2a", "W2b"):
        a_vg, a_fwd, b_vg, b_fwd = _numpy_w2(_expit())
        fn = {("W2a", "vg"): a_vg, ("W2a", "fwd"): a_fwd,
              ("W2b", "vg"): b_vg, ("W2b", "fwd"): b_fwd}[fam, mode]
    elif fam == "W3":
        vg, fwd = _numpy_w3(_expit())
        fn = vg if mode == "vg" else fwd
    elif fam == "W4":
        fn = numpy_w4_vg if mode == "vg" else numpy_w4_fwd
    else:
        raise Unavailable(f"no NumPy version of {fam}")
    return Impl(fn, args, convert=_np_out(wl, mode))


# =========================================================================== hand Numba
_NUMBA_CACHE: dict = {}


def _numba_kernels(parallel: bool):
    """Compile-on-first-call kernels (not cached on disk: the first call includes the
    compilation). ``parallel=True`` gives the prange variants used for W3 and W4."""
    key = ("kernels", parallel)
    if key in _NUMBA_CACHE:
        return _NUMBA_CACHE[key]
    import numba

    njit = numba.njit(parallel=parallel) if parallel else numba.njit
    prange = numba.prange
    exp, log1p, sin, cos, tanh = math.exp, math.log1p, math.sin, math.cos, math.tanh

    def w1a_vg(w, x, y):
        s = w * x - y
        return s * s, 2.0 * s * x

    def w1a_fwd(w, x, y):
        s = w * x - y
        return s * s

    def w1b_vg(w, X, y):
        r = np.dot(X, w)
        n = r.shape[0]
        acc = 0.0
        c = 2.0 / n
        for i in range(n):
            t = r[i] - y[i]
            acc += t * t
            r[i] = c * t
        return acc / n, np.dot(r, X)

    def w1b_fwd(w, X, y):
        r = np.dot(X, w)
        n = r.shape[0]
        acc = 0.0
        for i in range(n):
            t = r[i] - y[i]
            acc += t * t
        return acc / n

    def w2a_vg(W, b, u, x):
        z = np.dot(W, x)
        H = z.shape[0]
        n = x.shape[0]
        h = np.empty(H)
        dz = np.empty(H)
        s = 0.0
        for i in range(H):
            hi = 1.0 / (1.0 + exp(-(z[i] + b[i])))
            h[i] = hi
            s += u[i] * hi
            dz[i] = u[i] * hi * (1.0 - hi)
        dW = np.empty((H, n))
        for i in range(H):
            di = dz[i]
            for j in range(n):
                dW[i, j] = di * x[j]
        dx = np.dot(dz, W)
        return s, dW, dz, h, dx

    def w2a_fwd(W, b, u, x):
        z = np.dot(W, x)
        s = 0.0
        for i in range(z.shape[0]):
            s += u[i] / (1.0 + exp(-(z[i] + b[i])))
        return s

    def w2b_vg(W, b, u, X):
        Z = np.dot(W, X)
        H, m = Z.shape
        hs = np.empty(H)
        db = np.empty(H)
        s = 0.0
        for i in range(H):
            bi = b[i]
            ui = u[i]
            acc = 0.0
            accg = 0.0
            for j in range(m):
                h = 1.0 / (1.0 + exp(-(Z[i, j] + bi)))
                g = ui * h * (1.0 - h)
                Z[i, j] = g
                acc += h
                accg += g
            hs[i] = acc
            db[i] = accg
            s += ui * acc
        dW = np.dot(Z, X.T)
        dX = np.dot(W.T, Z)
        return s, dW, db, hs, dX

    def w2b_fwd(W, b, u, X):
        Z = np.dot(W, X)
        H, m = Z.shape
        s = 0.0
        for i in range(H):
            bi = b[i]
            acc = 0.0
            for j in range(m):
                acc += 1.0 / (1.0 + exp(-(Z[i, j] + bi)))
            s += u[i] * acc
        return s

    def w3_vg(W1, b1, W2, b2, X, Y):
        nh = W1.shape[0]
        m = X.shape[1]
        A1 = np.dot(W1, X)
        for i in prange(nh):
            bi = b1[i]
            for j in range(m):
                A1[i, j] = tanh(A1[i, j] + bi)
        Z2 = np.dot(W2, A1)  # (1, m)
        dZ2 = np.empty((1, m))
        cost = 0.0
        db2 = 0.0
        inv_m = 1.0 / m
        c2 = b2[0]
        for j in range(m):
            z = Z2[0, j] + c2
            e = exp(-abs(z))
            cost += max(z, 0.0) + log1p(e) - Y[0, j] * z
            sig = 1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)
            g = (sig - Y[0, j]) * inv_m
            dZ2[0, j] = g
            db2 += g
        dW2 = np.dot(dZ2, A1.T)
        db1 = np.empty(nh)
        for i in prange(nh):  # A1 <- dZ1 = W2^T dZ2 * (1 - A1^2)
            wi = W2[0, i]
            acc = 0.0
            for j in range(m):
                a = A1[i, j]
                g = wi * dZ2[0, j] * (1.0 - a * a)
                A1[i, j] = g
                acc += g
            db1[i] = acc
        dW1 = np.dot(A1, X.T)
        return cost * inv_m, dW1, db1, dW2, np.array([db2])

    def w3_fwd(W1, b1, W2, b2, X, Y):
        nh = W1.shape[0]
        m = X.shape[1]
        A1 = np.dot(W1, X)
        for i in prange(nh):
            bi = b1[i]
            for j in range(m):
                A1[i, j] = tanh(A1[i, j] + bi)
        Z2 = np.dot(W2, A1)
        cost = 0.0
        c2 = b2[0]
        for j in range(m):
            z = Z2[0, j] + c2
            cost += max(z, 0.0) + log1p(exp(-abs(z))) - Y[0, j] * z
        return cost / m

    L1, L2, L3 = _L1, _L2, _L3
    M1, M2, M3 = _M1, _M2, _M3
    G1, G2, G3 = _G * _MS1, _G * _MS2, _G * _MS3
    P1, P2, P3 = G1 * L1, G2 * L2, G3 * L3
    K, K2, TX, TY = _K, 2.0 * _K, _TX, _TY

    def w4_vg(q1, q2, q3, dq1, dq2, dq3):
        n = q1.shape[0]
        E = np.empty(n)
        gq1 = np.empty(n)
        gq2 = np.empty(n)
        gq3 = np.empty(n)
        gd1 = np.empty(n)
        gd2 = np.empty(n)
        gd3 = np.empty(n)
        for p in prange(n):
            a1 = q1[p]
            a2 = a1 + q2[p]
            a3 = a2 + q3[p]
            C1, S1 = cos(a1), sin(a1)
            C2, S2 = cos(a2), sin(a2)
            C3, S3 = cos(a3), sin(a3)
            w1 = dq1[p]
            w2 = w1 + dq2[p]
            w3 = w2 + dq3[p]
            t1, t2, t3 = L1 * w1, L2 * w2, L3 * w3
            v1x, v1y = -t1 * S1, t1 * C1
            v2x, v2y = v1x - t2 * S2, v1y + t2 * C2
            v3x, v3y = v2x - t3 * S3, v2y + t3 * C3
            ex = L1 * C1 + L2 * C2 + L3 * C3 - TX
            ey = L1 * S1 + L2 * S2 + L3 * S3 - TY
            E[p] = (0.5 * (M1 * (v1x * v1x + v1y * v1y) + M2 * (v2x * v2x + v2y * v2y)
                           + M3 * (v3x * v3x + v3y * v3y))
                    + P1 * S1 + P2 * S2 + P3 * S3 + K * (ex * ex + ey * ey))
            u3x, u3y = M3 * v3x, M3 * v3y
            u2x, u2y = u3x + M2 * v2x, u3y + M2 * v2y
            u1x, u1y = u2x + M1 * v1x, u2y + M1 * v1y
            kex, key = K2 * ex, K2 * ey
            ga3 = L3 * (C3 * (G3 + key) - S3 * kex) - t3 * (C3 * u3x + S3 * u3y)
            ga2 = L2 * (C2 * (G2 + key) - S2 * kex) - t2 * (C2 * u2x + S2 * u2y)
            ga1 = L1 * (C1 * (G1 + key) - S1 * kex) - t1 * (C1 * u1x + S1 * u1y)
            gw3 = L3 * (C3 * u3y - S3 * u3x)
            gw2 = L2 * (C2 * u2y - S2 * u2x) + gw3
            gw1 = L1 * (C1 * u1y - S1 * u1x) + gw2
            gq3[p] = ga3
            gq2[p] = ga2 + ga3
            gq1[p] = ga1 + ga2 + ga3
            gd3[p] = gw3
            gd2[p] = gw2
            gd1[p] = gw1
        return E, gq1, gq2, gq3, gd1, gd2, gd3

    def w4_fwd(q1, q2, q3, dq1, dq2, dq3):
        n = q1.shape[0]
        E = np.empty(n)
        for p in prange(n):
            a1 = q1[p]
            a2 = a1 + q2[p]
            a3 = a2 + q3[p]
            C1, S1 = cos(a1), sin(a1)
            C2, S2 = cos(a2), sin(a2)
            C3, S3 = cos(a3), sin(a3)
            w1 = dq1[p]
            w2 = w1 + dq2[p]
            w3 = w2 + dq3[p]
            t1, t2, t3 = L1 * w1, L2 * w2, L3 * w3
            v1x, v1y = -t1 * S1, t1 * C1
            v2x, v2y = v1x - t2 * S2, v1y + t2 * C2
            v3x, v3y = v2x - t3 * S3, v2y + t3 * C3
            ex = L1 * C1 + L2 * C2 + L3 * C3 - TX
            ey = L1 * S1 + L2 * S2 + L3 * S3 - TY
            E[p] = (0.5 * (M1 * (v1x * v1x + v1y * v1y) + M2 * (v2x * v2x + v2y * v2y)
                           + M3 * (v3x * v3x + v3y * v3y))
                    + P1 * S1 + P2 * S2 + P3 * S3 + K * (ex * ex + ey * ey))
        return E

    fns = {
        ("W1a", "vg"): w1a_vg, ("W1a", "fwd"): w1a_fwd,
        ("W1b", "vg"): w1b_vg, ("W1b", "fwd"): w1b_fwd,
        ("W2a", "vg"): w2a_vg, ("W2a", "fwd"): w2a_fwd,
        ("W2b", "vg"): w2b_vg, ("W2b", "fwd"): w2b_fwd,
        ("W3", "vg"): w3_vg, ("W3", "fwd"): w3_fwd,
        ("W4", "vg"): w4_vg, ("W4", "fwd"): w4_fwd,
    }
    # one dispatcher per (family, mode): compiled lazily by the first call that uses it
    out = {k: njit(f) for k, f in fns.items()}
    _NUMBA_CACHE[key] = out
    return out


PARALLEL_FAMILIES = ("W3", "W4")


def _build_numba(wl, mode, inp, parallel):
    if parallel and wl.family not in PARALLEL_FAMILIES:
        raise Unavailable("no prange variant for this workload")
    fn = _numba_kernels(parallel)[wl.family, mode]
    args = tuple(inp[a] for a in wl.args)
    return Impl(fn, args, convert=_np_out(wl, mode))


def build_numba(wl, mode, inp):
    return _build_numba(wl, mode, inp, parallel=False)


def build_numba_parallel(wl, mode, inp):
    return _build_numba(wl, mode, inp, parallel=True)


# =========================================================================== array models
# One model per workload for the autodiff frameworks, written against a numpy-like namespace
# ``xp`` (jax.numpy, torch, autograd.numpy) and ``nn`` (sigmoid / log_sigmoid of that
# framework). Arguments in ``wl.args`` order (wrt first). Constants are Python floats.
def array_model(family, xp, nn):
    if family == "W1a":

        def f(w, x, y):
            s = w * x - y
            return s * s

    elif family == "W1b":

        def f(w, X, y):
            r = X @ w - y
            return xp.mean(r * r)

    elif family == "W2a":

        def f(W, b, u, x):
            return u @ nn.sigmoid(W @ x + b)

    elif family == "W2b":

        def f(W, b, u, X):
            return xp.sum(u @ nn.sigmoid(W @ X + b[:, None]))

    elif family == "W3":

        def f(W1, b1, W2, b2, X, Y):
            A1 = xp.tanh(W1 @ X + b1[:, None])
            Z2 = W2 @ A1 + b2[:, None]
            m = X.shape[1]
            # log A2 = log_sigmoid(Z2) = -softplus(-Z2); log(1 - A2) = log_sigmoid(-Z2)
            return -(xp.sum(Y * nn.log_sigmoid(Z2)) + xp.sum((1.0 - Y) * nn.log_sigmoid(-Z2))) / m

    elif family == "W4":
        L1, L2, L3 = _L1, _L2, _L3
        M1, M2, M3 = _M1, _M2, _M3
        G, K, TX, TY = _G, _K, _TX, _TY

        def f(q1, q2, q3, dq1, dq2, dq3):
            a2 = q1 + q2
            a3 = a2 + q3
            C1, S1 = xp.cos(q1), xp.sin(q1)
            C2, S2 = xp.cos(a2), xp.sin(a2)
            C3, S3 = xp.cos(a3), xp.sin(a3)
            # positions of the three masses; velocities = Jacobian @ dq
            x1, y1 = L1 * C1, L1 * S1
            x2, y2 = x1 + L2 * C2, y1 + L2 * S2
            x3, y3 = x2 + L3 * C3, y2 + L3 * S3
            w2 = dq1 + dq2
            w3 = w2 + dq3
            vx1, vy1 = -y1 * dq1, x1 * dq1
            vx2, vy2 = vx1 - (L2 * S2) * w2, vy1 + (L2 * C2) * w2
            vx3, vy3 = vx2 - (L3 * S3) * w3, vy2 + (L3 * C3) * w3
            kin = 0.5 * (M1 * (vx1**2 + vy1**2) + M2 * (vx2**2 + vy2**2) + M3 * (vx3**2 + vy3**2))
            pot = G * (M1 * y1 + M2 * y2 + M3 * y3)
            pen = K * ((x3 - TX) ** 2 + (y3 - TY) ** 2)
            return kin + pot + pen

    else:
        raise Unavailable(f"no array model for {family}")
    return f


# --------------------------------------------------------------------------- JAX
def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return jax, jnp


def build_jax(wl, mode, inp):
    jax, jnp = _jax()

    class nn:
        sigmoid = staticmethod(jax.nn.sigmoid)
        log_sigmoid = staticmethod(jax.nn.log_sigmoid)

    f = array_model(wl.family, jnp, nn)
    args = tuple(jnp.asarray(inp[a], dtype=jnp.float64) for a in wl.args)
    nw = len(wl.wrt)
    argnums = tuple(range(nw))
    if mode == "fwd":
        jf = jax.jit(f)
        conv = lambda r: (np.asarray(r), {})  # noqa: E731
    elif wl.family == "W4":
        # per-point value_and_grad under vmap (measured ~25% faster here than the sum trick
        # with has_aux)
        jf = jax.jit(jax.vmap(jax.value_and_grad(f, argnums=argnums)))

        def conv(r):
            e, g = r
            return np.asarray(e), {n: np.asarray(v) for n, v in zip(wl.wrt, g, strict=True)}
    else:
        jf = jax.jit(jax.value_and_grad(f, argnums=argnums))

        def conv(r):
            v, g = r
            return np.asarray(v), {n: np.asarray(x) for n, x in zip(wl.wrt, g, strict=True)}

    block = jax.block_until_ready

    def call(*a):
        return block(jf(*a))

    return Impl(call, args, convert=conv)


# --------------------------------------------------------------------------- torch
def _torch_nn():
    import torch
    import torch.nn.functional as F

    class nn:
        sigmoid = staticmethod(torch.sigmoid)
        log_sigmoid = staticmethod(F.logsigmoid)

    return torch, nn


def _build_torch(wl, mode, inp, compiled):
    torch, nn = _torch_nn()
    f = array_model(wl.family, torch, nn)
    if compiled:
        f = torch.compile(f, dynamic=False)
    nw = len(wl.wrt)

    def tensor(v, grad):
        t = torch.tensor(v, dtype=torch.float64) if np.ndim(v) == 0 else torch.from_numpy(
            np.array(v, dtype=np.float64))
        return t.requires_grad_(grad)

    args = tuple(tensor(inp[a], mode == "vg" and i < nw) for i, a in enumerate(wl.args))
    if mode == "fwd":
        # plain tensors (requires_grad=False): no graph is recorded
        def conv(r):
            return r.detach().numpy(), {}

        return Impl(f, args, convert=conv)

    params = args[:nw]
    grad = torch.autograd.grad
    if wl.family == "W4":

        def vg(*a):
            e = f(*a)
            return e, grad(e.sum(), params)
    else:

        def vg(*a):
            loss = f(*a)
            return loss, grad(loss, params)

    def conv(r):
        v, g = r
        return v.detach().numpy(), {n: x.numpy() for n, x in zip(wl.wrt, g, strict=True)}

    return Impl(vg, args, convert=conv)


def build_torch(wl, mode, inp):
    return _build_torch(wl, mode, inp, compiled=False)


def build_torch_compile(wl, mode, inp):
    return _build_torch(wl, mode, inp, compiled=True)


# --------------------------------------------------------------------------- autograd (HIPS)
def build_autograd(wl, mode, inp):
    import autograd
    import autograd.numpy as anp

    class nn:
        @staticmethod
        def sigmoid(z):
            return 0.5 * (anp.tanh(0.5 * z) + 1.0)

        @staticmethod
        def log_sigmoid(z):
            return -anp.logaddexp(0.0, -z)

    f = array_model(wl.family, anp, nn)
    nw = len(wl.wrt)
    vals = tuple(inp[a] for a in wl.args)
    if mode == "fwd":
        return Impl(f, vals, convert=lambda r: (np.asarray(r), {}))
    params, data = tuple(vals[:nw]), tuple(vals[nw:])

    if wl.family == "W4":
        ga = autograd.grad_and_aux(lambda p: (lambda e: (anp.sum(e), e))(f(*p)))

        def conv(r):
            g, e = r
            return np.asarray(e), {n: np.asarray(x) for n, x in zip(wl.wrt, g, strict=True)}

        return Impl(ga, (params,), convert=conv)

    vg = autograd.value_and_grad(lambda p, *d: f(*p, *d))

    def conv(r):
        v, g = r
        return np.asarray(v), {n: np.asarray(x) for n, x in zip(wl.wrt, g, strict=True)}

    return Impl(vg, (params, *data), convert=conv)


# =========================================================================== SymPy lambdify
def build_lambdify(wl, mode, inp):
    if not wl.elementwise:
        raise Unavailable("lambdify only for the elementwise models")
    import sympy

    expr, wrt = wl.symgrad_model()
    syms = sorted(expr.free_symbols, key=lambda s: wl.args.index(s.name))
    if mode == "fwd":
        fn = sympy.lambdify(syms, expr, modules="numpy", cse=True)
        conv = lambda r: (np.asarray(r, dtype=np.float64), {})  # noqa: E731
    else:
        exprs = [expr] + [sympy.diff(expr, v) for v in wrt]
        fn = sympy.lambdify(syms, exprs, modules="numpy", cse=True)

        def conv(r):
            v, *g = r
            return np.asarray(v, dtype=np.float64), {
                n: np.asarray(x, dtype=np.float64) for n, x in zip(wl.wrt, g, strict=True)
            }

    return Impl(fn, tuple(inp[s.name] for s in syms), convert=conv)


# =========================================================================== symgrad
def _symgrad_conv(wl, mode):
    if mode == "fwd":
        return lambda r: (np.asarray(r, dtype=np.float64), {})

    def conv(r):
        v, g = r
        return np.asarray(v, dtype=np.float64), {
            n: np.asarray(g[n], dtype=np.float64) for n in wl.wrt
        }

    return conv


_SG_CACHE: dict = {}


def _shared(key, make):
    """Build once per process, return (object, build seconds, built_now)."""
    if key in _SG_CACHE:
        obj, secs = _SG_CACHE[key]
        return obj, secs, False
    t0 = time.perf_counter()
    obj = make()
    secs = time.perf_counter() - t0
    _SG_CACHE[key] = (obj, secs)
    return obj, secs, True


def build_symgrad(wl, mode, inp):
    """sg.compile once per workload (its time counts in both the vg and fwd first call)."""
    import symgrad as sg

    def make():
        expr, wrt = wl.symgrad_model()
        return sg.compile(expr, wrt=wrt)

    f, secs, now = _shared(("compile", wl.key), make)
    fn = f.value_and_grad if mode == "vg" else f
    return Impl(fn, (), dict(inp), convert=_symgrad_conv(wl, mode),
                first_extra_s=0.0 if now else secs)


def _generated_module(wl):
    """sg.generate the workload's module into a temporary folder and import it."""
    import symgrad as sg

    d = tempfile.mkdtemp(prefix="symgrad_bench_")
    modname = f"bench_gen_{wl.key.replace('-', '_').lower()}"
    path = os.path.join(d, modname + ".py")
    expr, wrt = wl.symgrad_model()
    sg.generate(expr, wrt=wrt, path=path)
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_symgrad_generated(wl, mode, inp):
    """sg.generate a standalone module once per workload into a temp dir and import it."""
    import symgrad as sg

    if not hasattr(sg, "generate"):
        raise Unavailable("symgrad.generate does not exist")

    mod, secs, now = _shared(("generate", wl.key), lambda: _generated_module(wl))
    fn = mod.value_and_grad if mode == "vg" else mod.forward
    return Impl(fn, (), dict(inp), convert=_symgrad_conv(wl, mode),
                first_extra_s=0.0 if now else secs)


def build_symgrad_positional(wl, mode, inp):
    """The generated module's positional call (scalar models): value_and_grad without
    keywords or a dict, returning (value, gradient of each parameter)."""
    mod, secs, now = _shared(("generate", wl.key), lambda: _generated_module(wl))
    if mode != "vg" or not hasattr(mod, "value_and_grad_positional"):
        raise Unavailable("positional call: value and gradient of scalar models only")
    args = tuple(inp[name] for name in mod.INPUTS)
    return Impl(mod.value_and_grad_positional, args, {}, convert=_np_out(wl, mode),
                first_extra_s=0.0 if now else secs)


# =========================================================================== registry
SYMGRAD = "symgrad"
SYMGRAD_GEN = "symgrad generated"
SYMGRAD_POSITIONAL = "symgrad positional"
HAND_NUMBA = "hand Numba"
HAND_NUMBA_PRANGE = "hand Numba prange"
TORCH_COMPILE = "torch.compile"

# (name, builder); the order is the order of the rows in the tables
PEERS: list[tuple[str, Callable]] = [
    (SYMGRAD, build_symgrad),
    (SYMGRAD_GEN, build_symgrad_generated),
    (SYMGRAD_POSITIONAL, build_symgrad_positional),
    (HAND_NUMBA, build_numba),
    (HAND_NUMBA_PRANGE, build_numba_parallel),
    ("hand NumPy", build_numpy),
    ("JAX jit", build_jax),
    ("torch eager", build_torch),
    (TORCH_COMPILE, build_torch_compile),
    ("autograd", build_autograd),
    ("SymPy lambdify cse", build_lambdify),
]

SYMGRAD_NAMES = (SYMGRAD, SYMGRAD_GEN, SYMGRAD_POSITIONAL)


def applicable(name: str, wl) -> bool:
    """Rows that make no sense for a workload are left out of its table entirely."""
    if name == HAND_NUMBA_PRANGE:
        return wl.family in PARALLEL_FAMILIES
    if name == "SymPy lambdify cse":
        return wl.elementwise
    return True
