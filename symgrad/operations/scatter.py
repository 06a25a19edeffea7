"""E[i, j]*v: a matrix that is zero except for the scalar ``v`` at (i, j), the adjoint of an
entry ``A[i, j]``.  The node is :class:`symgrad.ops.Scatter`; reverse mode builds it with
:func:`adjoint_of_entry` (the rule of ``A[i, j]``, symgrad/derive/rules.py).

>>> print(adjoint_of_entry(sp.Symbol("g"), 1, 0, (2, 3)))
E[1, 0]*g
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.printing.precedence import PRECEDENCE

from symgrad import ops
from symgrad.operations.registry import Operation, register


def adjoint_of_entry(g, i, j, shape):
    """The adjoint of the entry (i, j) of a matrix of ``shape`` whose adjoint is ``g``: zero
    but for ``g`` at (i, j).

    >>> adjoint_of_entry(sp.Symbol("g"), 0, 1, (2, 2)).shape
    (2, 2)
    """
    return ops.Scatter(g, i, j, *shape)


def vjp(g, y, value, node, **_):
    """dv = dY[i, j]."""
    i, j = node.index
    return (ops.Entry(g, i, j),)


def jvp(e, tangent):
    """dY = E[i, j] dv."""
    t = tangent(e.value)
    return None if t is None else ops.Scatter(t, *e.args[1:])


def split(e, walk):
    """A scalar placed in a matrix: without data, or a sum over the examples, as it is."""
    return walk.kind(e.value)


def emit(emitter, target, e):
    i, j = e.index
    emitter.emit(f"{target.name} = np.zeros({emitter.shape(e.shape)})")
    emitter.emit(f"{target.name}[{int(i)}, {int(j)}] = {emitter.scalar(e.value)}")


def text(e, printer):
    i, j = e.index
    return f"E[{i}, {j}]*{printer.parenthesize(e.value, PRECEDENCE['Mul'])}"


def translate(e, t):
    i, j = (int(k) for k in e.index)
    one_hot = np.zeros(t._shape(e.shape))
    one_hot[i, j] = 1.0
    return f"({t._print(e.value)} * {t._constant(one_hot)})"


def example():
    x, A = ops.matrix("x", 2, 2), ops.matrix("A", 2, 2)
    placed = ops.Scatter(sp.sin(x[0, 1]) * x[1, 0], 1, 0, 2, 2)
    return ops.SumAll(ops.hadamard(placed, A @ A)) + ops.SumAll(ops.hadamard(x, A))


SCATTER = register(Operation(
    name="scatter", node=ops.Scatter, example=example,
    vjp=vjp, jvp=jvp, emit=emit, split=split, text=text, parameters=("index", "shape"),
    translations={"numpy": translate},
))
