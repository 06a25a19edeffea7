"""inv(A): the inverse of a square matrix, SymPy's :class:`~sympy.Inverse` (built by
``sg.inv``; SymPy's ``A**-1`` is one too).  In compiled code an inverse shares one
factorisation of its matrix with that matrix's determinant and log-determinant, and an
inverse that only multiplies becomes a solve (symgrad/codegen/factor.py).

>>> import symgrad as sg
>>> from symgrad.codegen.docstring import FormulaPrinter
>>> K, B = sg.matrix("K", 3, 3), sg.matrix("B", 3, 3)
>>> FormulaPrinter().doprint(sg.inv(K)), FormulaPrinter().doprint(sg.inv(K @ B))
('K^-1', '(K B)^-1')
"""

from __future__ import annotations

import sympy as sp

from symgrad import ops
from symgrad.operations.registry import Operation, register


def vjp(g, y, a, **_):
    """dA = -Y^T g Y^T, with Y = A^-1 the node's value."""
    return (-y.T @ g @ y.T,)


def jvp(e, tangent):
    """dY = -Y dA Y."""
    t = tangent(e.arg)
    return None if t is None else -e @ t @ e


def emit(emitter, target, e):
    emitter.emit(f"{target.name} = np.linalg.inv(np.ascontiguousarray({emitter.name(e.arg)}))")


def text(e, printer):
    inner = printer._print(e.arg)
    return f"{inner}^-1" if isinstance(e.arg, sp.MatrixSymbol) else f"({inner})^-1"


def example():
    A, B = ops.matrix("A", 3, 3), ops.matrix("B", 3, 3)
    # A A^T + 3 I: positive definite, so invertible everywhere
    spd = A @ A.T + 3 * sp.Identity(3)
    return ops.trace(ops.inv(spd) @ B) + ops.SumAll(ops.hadamard(ops.inv(A + 4 * sp.Identity(3)),
                                                                  B))


INVERSE = register(Operation(
    name="inv", node=sp.Inverse, example=example,
    vjp=vjp, jvp=jvp, emit=emit, text=text,
    translations={"numpy": lambda e, t: f"{t.xp}.linalg.inv({t._print(e.arg)})"},
    from_factorisation="inverse",
))
