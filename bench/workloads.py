"""The benchmark workloads (see bench/README.md).

For every workload this module holds the one definition of
  * its deterministic inputs (``inputs()``: name -> float64 array or Python float, from a
    seeded ``numpy.random.Generator``),
  * which inputs are differentiated (``wrt``, in the order the peers return gradients),
  * its symgrad model (``symgrad_model()`` -> ``(expr, wrt_symbols)``, written with the
    symgrad API; W1a and W4 are plain SymPy and need no symgrad at all).

The peer implementations (hand NumPy, hand Numba, JAX, torch, autograd, SymPy lambdify)
live in ``bench/peers.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

SEED = 20240607


@dataclass(frozen=True)
class Workload:
    key: str  # "W2a", "W3-m1024", ...
    family: str  # "W1a", "W1b", "W2a", "W2b", "W3", "W4": selects the peer code
    title: str
    args: tuple[str, ...]  # every input, wrt first, in the order the peers take them
    wrt: tuple[str, ...]
    make_inputs: Callable[[], dict]
    symgrad_model: Callable[[], tuple]
    elementwise: bool = False  # scalar model broadcast over arrays (W1a, W4)
    params: dict = field(default_factory=dict)

    def inputs(self) -> dict:
        return self.make_inputs()


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(SEED + offset)


# --------------------------------------------------------------------------- W1a
def w1a_inputs() -> dict:
    r = _rng(1)
    w, x, y = (float(v) for v in r.standard_normal(3))
    return {"w": w, "x": x, "y": y}


def w1a_model():
    import sympy

    w, x, y = sympy.symbols("w x y")
    yhat = w * x
    s = yhat - y
    loss = s**2
    return loss, [w]


# --------------------------------------------------------------------------- W1b
W1B_N, W1B_D = 1024, 16


def w1b_inputs() -> dict:
    r = _rng(2)
    X = r.standard_normal((W1B_N, W1B_D))
    w_true = r.standard_normal(W1B_D)
    y = X @ w_true + 0.1 * r.standard_normal(W1B_N)
    w = r.standard_normal(W1B_D)
    return {"w": w, "X": X, "y": y}


def w1b_model():
    import symgrad as sg

    w = sg.vector("w", W1B_D)
    X = sg.matrix("X", W1B_N, W1B_D)
    y = sg.vector("y", W1B_N)
    loss = sg.mean(sg.square(X @ w - y))
    return loss, [w]


# --------------------------------------------------------------------------- W2a / W2b
W2_D, W2_WIN, W2_H, W2_M = 50, 5, 100, 256
W2_N = W2_D * W2_WIN  # 250


def _w2_params(r: np.random.Generator) -> dict:
    W = r.standard_normal((W2_H, W2_N)) * np.sqrt(1.0 / W2_N)
    b = 0.1 * r.standard_normal(W2_H)
    u = r.standard_normal(W2_H) * np.sqrt(1.0 / W2_H)
    return {"W": W, "b": b, "u": u}


def w2a_inputs() -> dict:
    r = _rng(3)
    p = _w2_params(r)
    p["x"] = r.standard_normal(W2_N)
    return p


def w2b_inputs() -> dict:
    r = _rng(4)
    p = _w2_params(r)
    p["X"] = r.standard_normal((W2_N, W2_M))
    return p


def w2a_model():
    import symgrad as sg

    x = sg.vector("x", W2_N)
    W = sg.matrix("W", W2_H, W2_N)
    b = sg.vector("b", W2_H)
    u = sg.vector("u", W2_H)
    s = sg.dot(u, sg.sigmoid(W @ x + b))
    return s, [W, b, u, x]


def w2b_model():
    import symgrad as sg

    W = sg.matrix("W", W2_H, W2_N)
    b = sg.vector("b", W2_H)
    u = sg.vector("u", W2_H)
    X = sg.matrix("X", W2_N, W2_M)
    shape = (W2_H, W2_M)
    S = sg.sum(sg.hadamard(sg.broadcast(u, shape), sg.sigmoid(W @ X + sg.broadcast(b, shape))))
    return S, [W, b, u, X]


# --------------------------------------------------------------------------- W3
W3_NX, W3_NH, W3_NY = 64, 128, 1
W3_MS = (32, 1024, 16384)


def w3_inputs(m: int) -> dict:
    r = _rng(5)  # same parameters for every m; the data differ only in their length
    W1 = r.standard_normal((W3_NH, W3_NX)) * np.sqrt(1.0 / W3_NX)
    b1 = 0.1 * r.standard_normal(W3_NH)
    W2 = r.standard_normal((W3_NY, W3_NH)) * np.sqrt(1.0 / W3_NH)
    b2 = 0.1 * r.standard_normal(W3_NY)
    rd = _rng(50 + m)
    X = rd.standard_normal((W3_NX, m))
    Y = (rd.random((W3_NY, m)) < 0.5).astype(np.float64)
    return {"W1": W1, "b1": b1, "W2": W2, "b2": b2, "X": X, "Y": Y}


def w3_model(m: int):
    """cost = -(1/m) sum(Y log A2 + (1-Y) log(1-A2)), written stably.

    With log A2 = -softplus(-Z2) and log(1-A2) = -softplus(Z2) the summand is
    Y softplus(-Z2) + (1-Y) softplus(Z2) = softplus(Z2) - Y Z2 (softplus(-z) = softplus(z) - z),
    which needs no matrix of ones.
    """
    import symgrad as sg

    W1 = sg.matrix("W1", W3_NH, W3_NX)
    b1 = sg.vector("b1", W3_NH)
    W2 = sg.matrix("W2", W3_NY, W3_NH)
    b2 = sg.vector("b2", W3_NY)
    X = sg.matrix("X", W3_NX, m)
    Y = sg.matrix("Y", W3_NY, m)
    A1 = sg.tanh(W1 @ X + sg.broadcast(b1, (W3_NH, m)))
    Z2 = W2 @ A1 + sg.broadcast(b2, (W3_NY, m))
    cost = sg.mean(sg.softplus(Z2) - sg.hadamard(Y, Z2))
    return cost, [W1, b1, W2, b2]


# --------------------------------------------------------------------------- W4
# 3-link planar arm; fixed parameters.
W4_N = 100_000
W4_L = (1.0, 0.8, 0.6)  # link lengths
W4_MASS = (1.5, 1.0, 0.5)  # point masses at the link ends
W4_G = 9.81
W4_TARGET = (1.2, 0.9)
W4_K = 10.0  # penalty weight
W4_ARGS = ("q1", "q2", "q3", "dq1", "dq2", "dq3")


def w4_inputs(n: int = W4_N) -> dict:
    r = _rng(6)
    q = r.uniform(-np.pi, np.pi, (3, n))
    dq = r.standard_normal((3, n))
    out = {f"q{i + 1}": np.ascontiguousarray(q[i]) for i in range(3)}
    out.update({f"dq{i + 1}": np.ascontiguousarray(dq[i]) for i in range(3)})
    return out


def w4_model():
    """Energy of the arm: kinetic (velocities from the Jacobian of the positions),
    potential (m g y) and an end-effector target penalty. Plain SymPy scalars."""
    import sympy

    q = sympy.symbols("q1 q2 q3")
    dq = sympy.symbols("dq1 dq2 dq3")
    L = [sympy.Float(v) for v in W4_L]
    M = [sympy.Float(v) for v in W4_MASS]
    g, k = sympy.Float(W4_G), sympy.Float(W4_K)
    tx, ty = (sympy.Float(v) for v in W4_TARGET)
    px, py = [], []
    x = y = sympy.Integer(0)
    angle = sympy.Integer(0)
    for i in range(3):
        angle = angle + q[i]
        x = x + L[i] * sympy.cos(angle)
        y = y + L[i] * sympy.sin(angle)
        px.append(x)
        py.append(y)
    kinetic = sympy.Integer(0)
    potential = sympy.Integer(0)
    for i in range(3):
        vx = sum(sympy.diff(px[i], q[j]) * dq[j] for j in range(3))
        vy = sum(sympy.diff(py[i], q[j]) * dq[j] for j in range(3))
        kinetic += M[i] * (vx**2 + vy**2) / 2
        potential += M[i] * g * py[i]
    penalty = k * ((px[2] - tx) ** 2 + (py[2] - ty) ** 2)
    energy = kinetic + potential + penalty
    return energy, [*q, *dq]


# --------------------------------------------------------------------------- registry
def _w3(m: int) -> Workload:
    return Workload(
        key=f"W3-m{m}",
        family="W3",
        title=f"W3 two-layer net, n_x=64, n_h=128, n_y=1, m={m}",
        args=("W1", "b1", "W2", "b2", "X", "Y"),
        wrt=("W1", "b1", "W2", "b2"),
        make_inputs=lambda: w3_inputs(m),
        symgrad_model=lambda: w3_model(m),
        params={"m": m},
    )


WORKLOADS: list[Workload] = [
    Workload(
        "W1a", "W1a", "W1a linear regression, scalars: loss = (w x - y)^2",
        ("w", "x", "y"), ("w",), w1a_inputs, w1a_model, elementwise=True,
    ),
    Workload(
        "W1b", "W1b", "W1b loss = mean((X w - y)^2), X 1024 x 16",
        ("w", "X", "y"), ("w",), w1b_inputs, w1b_model,
    ),
    Workload(
        "W2a", "W2a", "W2a window classifier, one window: u^T sigmoid(W x + b), x in R^250",
        ("W", "b", "u", "x"), ("W", "b", "u", "x"), w2a_inputs, w2a_model,
    ),
    Workload(
        "W2b", "W2b", "W2b window classifier over m=256 windows, summed",
        ("W", "b", "u", "X"), ("W", "b", "u", "X"), w2b_inputs, w2b_model,
    ),
    *[_w3(m) for m in W3_MS],
    Workload(
        "W4", "W4", f"W4 3-link arm energy + target penalty, per point, N={W4_N}",
        W4_ARGS, W4_ARGS, w4_inputs, w4_model, elementwise=True,
    ),
]


def select(only: str | None) -> list[Workload]:
    """``--only W2a,W3`` -> those workloads (``W3`` selects every W3-m*)."""
    if not only:
        return list(WORKLOADS)
    wanted = [s.strip() for s in only.split(",") if s.strip()]
    out = [
        w
        for w in WORKLOADS
        if any(w.key.lower() == s.lower() or w.key.lower().startswith(s.lower() + "-")
               for s in wanted)
    ]
    if not out:
        raise SystemExit(f"--only {only!r} matches no workload; have {[w.key for w in WORKLOADS]}")
    return out
