"""det(A): the determinant of a square matrix, SymPy's :class:`~sympy.Determinant` (built by
``sg.det``).  Its log has a stable form of its own, ``logdet`` (symgrad/operations/logdet.py).

>>> import symgrad as sg
>>> from symgrad.codegen.docstring import FormulaPrinter
>>> FormulaPrinter().doprint(sg.det(sg.matrix("K", 3, 3)))
'det(K)'
"""

from __future__ import annotations

import sympy as sp

from symgrad import ops
from symgrad.operations.registry import Operation, map_of, register


def vjp(g, y, a, **_):
    """dA = g det(A) A^-T."""
    return (map_of(lambda gv, yv, i: gv * yv * i, a.shape, g, y, sp.Inverse(a).T),)


def jvp(e, tangent):
    """dy = det(A) tr(A^-1 dA)."""
    t = tangent(e.arg)
    return None if t is None else e * sp.Trace(sp.Inverse(e.arg) @ t)


def emit(emitter, target, e):
    emitter.emit(f"{target.name} = np.linalg.det(np.ascontiguousarray({emitter.name(e.arg)}))")


def example():
    A, B = ops.matrix("A", 3, 3), ops.matrix("B", 3, 3)
    return ops.det(A @ A.T + 3 * sp.Identity(3)) + ops.det(A + B)


DETERMINANT = register(Operation(
    name="det", node=sp.Determinant, example=example,
    vjp=vjp, jvp=jvp, emit=emit,
    text=lambda e, p: f"det({p._print(e.arg)})",
    from_factorisation="det",
    translations={"numpy": lambda e, t: f"{t.xp}.linalg.det({t._print(e.arg)})"},
))
