"""softmax(A, axis): exp(A) normalised along an axis (0: each column sums to 1, 1: each row),
or over all entries (axis None), computed stably.  The node is :class:`symgrad.ops.Softmax`,
built by ``sg.softmax``.

>>> import symgrad as sg
>>> print(sg.softmax(sg.matrix("Z", 3, 4), axis=0))
softmax(Z, axis=0)
"""

from __future__ import annotations

import sympy as sp

from symgrad import ops
from symgrad.operations.registry import Operation, axis_split, map_of, register, variables


def vjp(g, y, a, node):
    """dA = y ∘ (g - sum(g ∘ y, axis)): the output's own values, no exponential again."""
    weighted = map_of(lambda gv, yv: gv * yv, a.shape, g, y)
    total = ops.SumAll(weighted) if node.axis is None else ops.AxisSum(weighted, node.axis)
    return (map_of(lambda yv, gv, sv: yv * (gv - sv), a.shape, y, g, total),)


def jvp(e, tangent):
    """dy = y ∘ (dA - sum(y ∘ dA, axis))."""
    t = tangent(e.arg)
    if t is None:
        return None
    s, dt = variables(2, "s")
    weighted = ops.Map(sp.Lambda((s, dt), s * dt), e.shape, e, t)
    total = ops.SumAll(weighted) if e.axis is None else ops.AxisSum(weighted, e.axis)
    s, dt, c = variables(3, "s")
    return ops.Map(sp.Lambda((s, dt, c), s * (dt - c)), e.shape, e, t, total)


def stable_log_operand(operand, v, transpose):
    """log(v) for v = softmax(Z, axis): z - l, with Z and logsumexp(Z, axis) (over all
    entries for axis None) as new operands, finite at |z| = 1000 in both passes."""
    transposed = isinstance(operand, sp.Transpose) and isinstance(operand.arg, ops.Softmax)
    if not (transposed or isinstance(operand, ops.Softmax)):
        return None
    softmax = operand.arg if transposed else operand
    argument, axis = softmax.arg, softmax.axis
    logsumexp = ops.LogSumExpAll(argument) if axis is None else ops.LogSumExp(argument, axis)
    if transposed:      # log(softmax(Z)^T) = Z^T - logsumexp(Z)^T
        argument = transpose(argument)
        logsumexp = logsumexp if axis is None else transpose(logsumexp)
    z, lse = ops.map_variables(2, [f"{v.name}_z", f"{v.name}_l"])
    return z - lse, [z, lse], [argument, logsumexp]


def emit(emitter, target, e):
    """Per column (axis 0) or row (axis 1), or over all entries: a running maximum, the
    exponentials of the shifted entries and their sum, then a normalisation."""
    a = e.arg
    emitter.emit(f"{target.name} = np.empty({emitter.shape(a.shape)})")
    if e.axis is None:
        emitter.emit("_peak = -np.inf")
        i, j, depth = emitter.loops(a.shape)
        emitter.emit(f"_peak = sg_max(_peak, {emitter.load(a, i, j, a.shape)})", depth)
        emitter.emit("_total = 0.0")
        i, j, depth = emitter.loops(a.shape)
        emitter.emit(f"{target.name}[{i}, {j}] = np.exp({emitter.load(a, i, j, a.shape)} - "
                     "_peak)", depth)
        emitter.emit(f"_total += {target.name}[{i}, {j}]", depth)
        i, j, depth = emitter.loops(a.shape)
        emitter.emit(f"{target.name}[{i}, {j}] /= _total", depth)
        return
    outer, inner, index = emitter.axis_loops(a.shape, e.axis)
    i, j = index("_k", "_r")
    emitter.emit(f"for _k in range({outer}):")
    emitter.emit("_peak = -np.inf", 2)
    emitter.emit(f"for _r in range({inner}):", 2)
    emitter.emit(f"_peak = sg_max(_peak, {emitter.load(a, i, j, a.shape)})", 3)
    emitter.emit("_total = 0.0", 2)
    emitter.emit(f"for _r in range({inner}):", 2)
    emitter.emit(f"{target.name}[{i}, {j}] = np.exp({emitter.load(a, i, j, a.shape)} - _peak)",
                 3)
    emitter.emit(f"_total += {target.name}[{i}, {j}]", 3)
    emitter.emit(f"for _r in range({inner}):", 2)
    emitter.emit(f"{target.name}[{i}, {j}] /= _total", 3)


def loops(e):
    """Over all entries: a running maximum, a sum of exponentials, then a normalisation of
    each entry (only that one may be split between threads).  Along an axis the loops are
    the operation's own."""
    if e.axis is not None:
        return ()
    size = sp.sympify(e.arg.shape[0]) * sp.sympify(e.arg.shape[1])
    return ((size, False), (size, False), (size, True))


def text(e, printer):
    axis = "" if e.axis is None else f", axis={e.axis}"
    return f"softmax({printer._print(e.arg)}{axis})"


def _autograd(e, t):
    # autograd has no softmax: exp(a - logsumexp(a)), the stable textbook form
    a = t._print(e.arg)
    if e.axis is None:
        return f"anp.exp({a} - aspecial.logsumexp({a}))"
    return f"anp.exp({a} - aspecial.logsumexp({a}, axis={e.axis}, keepdims=True))"


def _torch(e, t):
    a = t._print(e.arg)
    if e.axis is None:
        return f"torch.softmax({a}.reshape(-1), dim=0).reshape({a}.shape)"
    return f"torch.softmax({a}, dim={e.axis})"


def example():
    Z, Y = ops.matrix("Z", 3, 4), ops.matrix("Y", 3, 4)
    return (ops.SumAll(ops.hadamard(Y, ops.softmax(Z, axis=0)))
            + ops.SumAll(ops.hadamard(Y, ops.softmax(Z, axis=1)))
            + ops.SumAll(ops.hadamard(Y, ops.softmax(Z))))


SOFTMAX = register(Operation(
    name="softmax", node=ops.Softmax, parameters=("axis",), example=example,
    vjp=vjp, jvp=jvp, emit=emit, loops=loops, text=text,
    stable_log_operand=stable_log_operand,
    translations={
        "numpy": lambda e, t: f"{t.special}.softmax({t._print(e.arg)}, axis={e.axis})",
        "jax": lambda e, t: (f"jax.nn.softmax({t._print(e.arg)}, "
                             f"axis={(0, 1) if e.axis is None else e.axis})"),
        "autograd": _autograd,
        "torch": _torch,
    },
    split=axis_split("softmax"),
))
