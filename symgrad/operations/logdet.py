"""logdet(A): log(det(A)) of a square matrix with a positive determinant, computed without
overflow (from a factorisation: a determinant of a large matrix overflows where its log does
not); NaN where the determinant is not positive.  The node is :class:`symgrad.ops.LogDet`,
built by ``sg.logdet`` and by the canonical form of log(det(A)) (symgrad/derive/graph.py).

>>> import symgrad as sg
>>> print(sg.logdet(sg.matrix("K", 3, 3)))
logdet(K)
"""

from __future__ import annotations

import sympy as sp

from symgrad import ops
from symgrad.operations.registry import Operation, map_of, register


def vjp(g, y, a, **_):
    """dA = g A^-T."""
    return (map_of(lambda gv, i: gv * i, a.shape, g, sp.Inverse(a).T),)


def jvp(e, tangent):
    """dy = tr(A^-1 dA)."""
    t = tangent(e.arg)
    return None if t is None else sp.Trace(sp.Inverse(e.arg) @ t)


def stable_log(inner):
    """log(det(A)) -> logdet(A)."""
    return ops.LogDet(inner.arg) if isinstance(inner, sp.Determinant) else None


def emit(emitter, target, e):
    emitter.emit(f"_sign, {target.name} = np.linalg.slogdet("
                 f"np.ascontiguousarray({emitter.name(e.arg)}))")
    emitter.emit("if _sign <= 0.0:")
    emitter.emit(f"{target.name} = np.nan", 2)


def translate(e, t):
    # symgrad's logdet is NaN where the determinant is not positive
    parts = t._assign(f"{t.xp}.linalg.slogdet({t._print(e.arg)})")
    return t._where(f"({parts}[0] > 0)", f"{parts}[1]", 'float("nan")')


def example():
    A, B = ops.matrix("A", 3, 3), ops.matrix("B", 3, 3)
    # A A^T + 3 I: positive definite, so the log of its determinant is defined everywhere
    return ops.logdet(A @ A.T + 3 * sp.Identity(3)) + ops.SumAll(ops.hadamard(A, B))


LOGDET = register(Operation(
    name="logdet", node=ops.LogDet, example=example,
    vjp=vjp, jvp=jvp, emit=emit, stable_log=stable_log,
    text=lambda e, p: f"logdet({p._print(e.arg)})",
    latex=lambda e, p: rf"\log\det\left({p._print(e.arg)}\right)",
    from_factorisation="logdet", translations={"numpy": translate},
))
