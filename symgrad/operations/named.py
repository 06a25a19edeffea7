"""sg.name(label, expr): a piece of the model under a name for printed formulas (``Z1``,
whose adjoint prints as ``dZ1``); the name changes nothing in the mathematics.  The nodes are
:class:`symgrad.ops.Named` (a matrix) and :class:`symgrad.ops.NamedScalar`.  Their ``label``
hook tells the machinery that the node is its operand under a name: the canonical form keeps
a matrix's name (and drops a scalar's), reverse mode gives the operand the name and its
adjoint ``d`` + the name, and the lowering drops the node.

>>> import symgrad as sg
>>> print(sg.name("Z", sg.matrix("W", 2, 3) @ sg.matrix("X", 3, 4)))
Z
"""

from __future__ import annotations

from symgrad import ops
from symgrad.operations.registry import Operation, register


def vjp(g, y, a, **_):
    """The operand's adjoint is the node's."""
    return (g,)


def jvp(e, tangent):
    """The operand's tangent."""
    return tangent(e.arg)


def split(e, walk):
    return walk.kind(e.arg)


def emit(emitter, target, e):
    # the lowering drops the name, so this is there for a node that reaches the emitter
    # all the same: the operand's value under the target's name
    emitter.emit(f"{target.name} = {emitter.name(e.arg)}")


def example():
    W, X = ops.matrix("W", 2, 3), ops.matrix("X", 3, 2)
    Z = ops.name("Z", W @ X)
    return ops.name("s", ops.SumAll(ops.hadamard(Z, Z))) + ops.SumAll(ops.hadamard(W, W))


def _label(e, printer):
    return e.label


def _operand(e, t):
    return t._print(e.arg)


def _rebuild(node, new_operands):
    return type(node)(node.label, new_operands[0])


_COMMON = dict(example=example, vjp=vjp, jvp=jvp, emit=emit, split=split, text=_label,
               translations={"numpy": _operand}, parameters=("label",),
               operands=lambda node: (node.arg,), rebuild=_rebuild,
               label=lambda node: node.label)

NAMED = register(Operation(name="named", node=ops.Named, latex=_label, **_COMMON))
NAMED_SCALAR = register(Operation(name="named scalar", node=ops.NamedScalar, latex=_label,
                                  **_COMMON))
