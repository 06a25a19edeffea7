"""Matrix operations: one file each, with everything symgrad knows about the operation.

Elementwise functions are rows of one table (symgrad/functions.py); a matrix operation has
more to say, so it is one file of this package that registers an :class:`Operation`: its
node class (kept in symgrad/ops.py with the builders), its operands and parameters and how to
rebuild it, its VJP rule (reverse mode), its JVP rules (forward mode, for second order), its
Numba code and the loops that code opens, how it prints (text and LaTeX), its code in every
framework of ``sg.check`` and what it does to a split over the examples (Dask).

The machinery looks a node up with :func:`of` and calls the hooks; it names no operation of
this package.  To add an operation: its node class in symgrad/ops.py (and a builder), then a
file here that calls :func:`register`, imported by this module.  SymPy's own matrix
operations (``Determinant``, ``Trace``) are files here too; outside symgrad's formulas they
print as SymPy prints them.

>>> import symgrad as sg
>>> A = sg.matrix("A", 2, 3)
>>> of(sg.softmax(A, axis=0)).name
'softmax'
>>> of(A) is None
True
"""

from symgrad.operations import (
    determinant,
    inverse,
    logdet,
    logsumexp,
    named,
    reductions,
    scatter,
    softmax,
    trace,
)
from symgrad.operations.registry import (
    HOOKS,
    OPERATIONS,
    OPTIONAL_HOOKS,
    Operation,
    axis_split,
    exponent_of,
    label_of,
    map_of,
    of,
    register,
    stable_log,
    variables,
)

__all__ = ["Operation", "register", "of", "label_of", "OPERATIONS", "map_of", "variables",
           "axis_split", "HOOKS", "OPTIONAL_HOOKS", "exponent_of", "stable_log", "determinant",
           "inverse", "logdet", "logsumexp", "named", "reductions", "scatter", "softmax", "trace"]
