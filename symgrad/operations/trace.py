"""tr(A): the trace of a square matrix, SymPy's :class:`~sympy.Trace` (built by
``sg.trace``).

>>> import symgrad as sg
>>> from symgrad.codegen.docstring import FormulaPrinter
>>> FormulaPrinter().doprint(sg.trace(sg.matrix("K", 3, 3)))
'tr(K)'
"""

from __future__ import annotations

import sympy as sp

from symgrad import ops
from symgrad.operations.registry import Operation, map_of, register


def vjp(g, y, a, **_):
    """dA = g I."""
    return (map_of(lambda gv, e: gv * e, a.shape, g, sp.Identity(a.shape[0])),)


def jvp(e, tangent):
    """dy = tr(dA)."""
    t = tangent(e.arg)
    return None if t is None else sp.Trace(t)


def emit(emitter, target, e):
    emitter.emit(f"{target.name} = np.trace({emitter.name(e.arg)})")


def split(e, walk):
    """A square matrix: without data, or a sum over the examples; its trace is the same."""
    return walk.kind(e.arg)


def example():
    A, B = ops.matrix("A", 3, 3), ops.matrix("B", 3, 3)
    return ops.trace(A @ B) + ops.trace(A @ A.T)


TRACE = register(Operation(
    name="trace", node=sp.Trace, example=example,
    vjp=vjp, jvp=jvp, emit=emit, split=split,
    text=lambda e, p: f"tr({p._print(e.arg)})",
    translations={"numpy": lambda e, t: f"{t.xp}.trace({t._print(e.arg)})"},
))
