"""logsumexp(A, axis): log(sum(exp(A))) along an axis (:class:`symgrad.ops.LogSumExp`, 0: a
row, 1: a column) or over all entries (:class:`symgrad.ops.LogSumExpAll`, a scalar), computed
stably: the largest entry is taken out before the exponentials.  Built by ``sg.logsumexp``
and by the canonical form of log(sum(exp(Z))) (symgrad/derive/graph.py).

>>> import symgrad as sg
>>> Z = sg.matrix("Z", 3, 4)
>>> print(sg.logsumexp(Z, axis=1), sg.logsumexp(Z))
logsumexp(Z, axis=1) logsumexp(Z)
"""

from __future__ import annotations

import sympy as sp

from symgrad import ops
from symgrad.operations.registry import (
    Operation,
    axis_split,
    exponent_of,
    map_of,
    register,
    variables,
)


def vjp(g, y, a, **_):
    """dA = g ∘ exp(A - y): the softmax, from the output (one rule for both nodes)."""
    return (map_of(lambda gv, av, yv: gv * sp.exp(av - yv), a.shape, g, a, y),)


def _weighted_tangent(e, tangent):
    """exp(A - y) ∘ dA, or None where dA is zero."""
    t = tangent(e.arg)
    if t is None:
        return None
    a, y, dt = variables(3, "l")
    return ops.Map(sp.Lambda((a, y, dt), sp.exp(a - y) * dt), e.arg.shape, e.arg, e, t)


def jvp_all(e, tangent):
    """dy = sum(exp(A - y) ∘ dA)."""
    weighted = _weighted_tangent(e, tangent)
    return None if weighted is None else ops.SumAll(weighted)


def jvp_axis(e, tangent):
    """dy = sum(exp(A - y) ∘ dA, axis)."""
    weighted = _weighted_tangent(e, tangent)
    return None if weighted is None else ops.AxisSum(weighted, e.axis)


def jvp_columns_all(e, tangent, kind):
    """All directions of a vector at once: the softmax weights (a column) times the
    operand's tangents."""
    t = tangent(e.arg)
    if t is None:
        return None
    a, y = variables(2, "l")
    arg = e.arg if kind(e.arg) == "c" else e.arg.T
    weights = ops.Map(sp.Lambda((a, y), sp.exp(a - y)), arg.shape, arg, e)
    return weights.T @ t


def stable_log_all(inner):
    """log(sum(exp(Z))) -> logsumexp(Z)."""
    if isinstance(inner, ops.SumAll) and exponent_of(inner.arg) is not None:
        return ops.LogSumExpAll(exponent_of(inner.arg))
    return None


def stable_log_operand(operand, v, transpose):
    """log(v) for v = sum(exp(Z), axis), the denominator of a softmax written by hand:
    l, with logsumexp(Z, axis) as the new operand."""
    if not (isinstance(operand, ops.AxisSum) and exponent_of(operand.arg) is not None):
        return None
    (lse,) = ops.map_variables(1, [f"{v.name}_l"])
    return lse, [lse], [ops.LogSumExp(exponent_of(operand.arg), operand.axis)]


def emit_all(emitter, target, e):
    """A running maximum, then the sum of the shifted exponentials (the maximum itself where
    it is infinite or NaN)."""
    a = e.arg
    emitter.emit("_peak = -np.inf")
    i, j, depth = emitter.loops(a.shape)
    emitter.emit(f"_peak = sg_max(_peak, {emitter.load(a, i, j, a.shape)})", depth)
    emitter.emit("_total = 0.0")
    emitter.emit("if np.isfinite(_peak):")
    i, j, depth = emitter.loops(a.shape, 2)
    emitter.emit(f"_total += np.exp({emitter.load(a, i, j, a.shape)} - _peak)", depth)
    emitter.emit(f"{target.name} = _peak + np.log(_total)", 2)
    emitter.emit("else:")
    emitter.emit(f"{target.name} = _peak", 2)


def emit_axis(emitter, target, e):
    """The same per column (axis 0) or per row (axis 1)."""
    a = e.arg
    outer, inner, index = emitter.axis_loops(a.shape, e.axis)
    out = (lambda k: f"0, {k}") if e.axis == 0 else (lambda k: f"{k}, 0")
    emitter.emit(f"{target.name} = np.empty({emitter.shape(e.shape)})")
    emitter.emit(f"for _k in range({outer}):")
    emitter.emit("_peak = -np.inf", 2)
    emitter.emit(f"for _r in range({inner}):", 2)
    i, j = index("_k", "_r")
    emitter.emit(f"_peak = sg_max(_peak, {emitter.load(a, i, j, a.shape)})", 3)
    emitter.emit("if not np.isfinite(_peak):", 2)
    emitter.emit(f"{target.name}[{out('_k')}] = _peak", 3)
    emitter.emit("continue", 3)
    emitter.emit("_total = 0.0", 2)
    emitter.emit(f"for _r in range({inner}):", 2)
    emitter.emit(f"_total += np.exp({emitter.load(a, i, j, a.shape)} - _peak)", 3)
    emitter.emit(f"{target.name}[{out('_k')}] = _peak + np.log(_total)", 2)


def loops_all(e):
    """The running maximum's loop (not split between threads: its order is the max's)."""
    return ((sp.sympify(e.arg.shape[0]) * sp.sympify(e.arg.shape[1]), False),)


def split_all(e, walk):
    if walk.kind(e.arg) != walk.FIXED:
        walk.refuse(e, "logsumexp over all entries mixes the examples")
    return walk.FIXED


def example():
    Z, u, v = ops.matrix("Z", 3, 4), ops.matrix("u", 1, 4), ops.matrix("v", 3, 1)
    return (ops.dot(u, ops.logsumexp(Z, axis=0)) + ops.dot(v, ops.logsumexp(Z, axis=1))
            + ops.logsumexp(Z) ** 2)


LOGSUMEXP = register(Operation(
    name="logsumexp", node=ops.LogSumExp, parameters=("axis",), example=example,
    vjp=vjp, jvp=jvp_axis, emit=emit_axis, stable_log_operand=stable_log_operand,
    text=lambda e, p: f"logsumexp({p._print(e.arg)}, axis={e.axis})",
    translations={
        "numpy": lambda e, t: (f"{t.special}.logsumexp({t._print(e.arg)}, axis={e.axis}, "
                               "keepdims=True)"),
        "torch": lambda e, t: (f"torch.logsumexp({t._print(e.arg)}, dim={e.axis}, "
                               "keepdim=True)"),
    },
    split=axis_split("logsumexp"),
))

LOGSUMEXP_ALL = register(Operation(
    name="logsumexp of all entries", node=ops.LogSumExpAll, example=example,
    vjp=vjp, jvp=jvp_all, jvp_columns=jvp_columns_all, emit=emit_all, loops=loops_all,
    stable_log=stable_log_all,
    text=lambda e, p: f"logsumexp({p._print(e.arg)})",
    translations={
        "numpy": lambda e, t: f"{t.special}.logsumexp({t._print(e.arg)})",
        "torch": lambda e, t: f"torch.logsumexp({t._print(e.arg)}.reshape(-1), dim=0)",
    },
    split=split_all,
))
