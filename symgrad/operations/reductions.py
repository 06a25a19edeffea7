"""sum(A, axis) and sum(A): the sums of a matrix along an axis (:class:`symgrad.ops.AxisSum`,
axis 0 gives a row, axis 1 a column) and over all its entries (:class:`symgrad.ops.SumAll`,
a scalar), built by ``sg.sum``.

With Map they are the elementwise algebra that symgrad's passes are built on: reverse mode
sums a broadcast operand's adjoint back with them, the canonical form turns products with
a matrix of ones into them (and a sum of a repeated entry into a product), and a fused loop
accumulates the sums of its Maps (symgrad/codegen/schedule.py).  Those passes build and
recognise them; what a sum is beyond that (derivatives, code, printing, translations) is
here.

>>> import symgrad as sg
>>> A = sg.matrix("A", 3, 4)
>>> print(sg.sum(A, axis=0), sg.sum(A))
sum(A, axis=0) sum(A)
"""

from __future__ import annotations

import sympy as sp

from symgrad import ops
from symgrad.operations.registry import Operation, map_of, register


def _entries(shape) -> sp.Expr:
    return sp.sympify(shape[0]) * sp.sympify(shape[1])


def vjp(g, y, a, **_):
    """dA = g repeated over A's shape (along the summed axis, or everywhere)."""
    return (map_of(lambda gv: gv, a.shape, g),)


# -- along an axis ---------------------------------------------------------------------
def jvp_axis(e, tangent):
    """d sum(A, axis) = sum(dA, axis)."""
    t = tangent(e.arg)
    return None if t is None else ops.AxisSum(t, e.axis)


def jvp_columns_axis(e, tangent, kind):
    """All directions of a vector at once: a vector summed whole is its tangents' column
    sum; a matrix's rows or columns sum their tangents the same way."""
    t = tangent(e.arg)
    if t is None:
        return None
    operand = kind(e.arg)
    if (operand == "c" and e.axis == 1) or (operand == "r" and e.axis == 0):
        return t        # a column summed along its rows (a row along its columns) is itself
    return ops.AxisSum(t, 0)


def emit_axis(emitter, target, e):
    if tuple(e.shape) == (1, 1):
        # a vector summed whole: a scalar reduction (an array entry in a parallel loop
        # would be written by every thread)
        emitter.emit("_total = 0.0")
        i, j, depth = emitter.loops(e.arg.shape)
        emitter.emit(f"_total += {emitter.load(e.arg, i, j, e.arg.shape)}", depth)
        emitter.emit(f"{target.name} = np.full((1, 1), _total)")
        return
    emitter.emit(f"{target.name} = np.zeros({emitter.shape(e.shape)})")
    i, j, depth = emitter.loops(e.arg.shape)
    where = f"0, {j}" if e.axis == 0 else f"{i}, 0"
    emitter.emit(f"{target.name}[{where}] += {emitter.load(e.arg, i, j, e.arg.shape)}", depth)


def loops_axis(e):
    """One loop over the operand.  A vector summed whole is a scalar reduction, which a
    parallel loop splits into per-thread partials; row sums, and column sums of a single
    row, write an entry of their own per outer iteration; column sums of a matrix
    accumulate across it (not split)."""
    split = tuple(e.shape) == (1, 1) or e.axis == 1 or e.arg.shape[0] == 1
    return ((_entries(e.arg.shape), split),)


def split_axis(e, walk):
    """Summing along the examples' axis sums over the examples; along the other axis the
    examples stay apart."""
    kind = walk.kind(e.arg)
    if kind in (walk.ROWS, walk.COLUMNS):
        return walk.SUM if kind == walk.AXIS_KIND[e.axis] else kind
    return kind


def example_axis():
    A, u, v = ops.matrix("A", 3, 4), ops.matrix("u", 1, 4), ops.matrix("v", 3, 1)
    sine = map_of(sp.sin, A.shape, A)
    return (ops.dot(u, ops.sum(ops.hadamard(A, A), axis=0))
            + ops.dot(v, ops.sum(sine, axis=1)))


AXIS_SUM = register(Operation(
    name="sum along an axis", node=ops.AxisSum, parameters=("axis",), example=example_axis,
    vjp=vjp, jvp=jvp_axis, jvp_columns=jvp_columns_axis, emit=emit_axis, loops=loops_axis,
    split=split_axis,
    text=lambda e, p: f"sum({p._print(e.arg)}, axis={e.axis})",
    latex=lambda e, p: rf"\operatorname{{sum}}_{{{e.axis}}}\left({p._print(e.arg)}\right)",
    translations={
        "numpy": lambda e, t: f"{t.xp}.sum({t._print(e.arg)}, axis={e.axis}, keepdims=True)",
        "torch": lambda e, t: f"torch.sum({t._print(e.arg)}, dim={e.axis}, keepdim=True)",
    },
))


# -- over all entries ------------------------------------------------------------------
def jvp_all(e, tangent):
    """d sum(A) = sum(dA)."""
    t = tangent(e.arg)
    return None if t is None else ops.SumAll(t)


def jvp_columns_all(e, tangent, kind):
    """All directions of a vector at once: the column sums of the operand's tangents."""
    t = tangent(e.arg)
    return None if t is None else ops.AxisSum(t, 0)


def emit_all(emitter, target, e):
    emitter.emit(f"{target.name} = 0.0")
    i, j, depth = emitter.loops(e.arg.shape)
    emitter.emit(f"{target.name} += {emitter.load(e.arg, i, j, e.arg.shape)}", depth)


def split_all(e, walk):
    """The sum of a matrix over the examples is a sum over the examples."""
    return walk.FIXED if walk.kind(e.arg) == walk.FIXED else walk.SUM


def example_all():
    A, B = ops.matrix("A", 3, 4), ops.matrix("B", 3, 4)
    return ops.sum(ops.hadamard(A, B)) * ops.sum(map_of(sp.sin, A.shape, A))


SUM_ALL = register(Operation(
    name="sum", node=ops.SumAll, example=example_all,
    vjp=vjp, jvp=jvp_all, jvp_columns=jvp_columns_all, emit=emit_all,
    loops=lambda e: ((_entries(e.arg.shape), True),), split=split_all,
    text=lambda e, p: f"sum({p._print(e.arg)})",
    latex=lambda e, p: rf"\operatorname{{sum}}\left({p._print(e.arg)}\right)",
    translations={"numpy": lambda e, t: f"{t.xp}.sum({t._print(e.arg)})"},
))
