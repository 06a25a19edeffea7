"""The registry of matrix operations: :class:`Operation` (the hooks the machinery calls),
:func:`register`, :func:`of`, and helpers for the operations' files (see the package).

>>> import symgrad as sg
>>> of(sg.logdet(sg.matrix("K", 2, 2))).name
'logdet'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symgrad import ops

__all__ = ["Operation", "register", "of", "label_of", "OPERATIONS", "map_of", "variables",
           "axis_split", "HOOKS", "OPTIONAL_HOOKS", "exponent_of", "stable_log"]


def _first_operand(node) -> tuple:
    return (node.args[0],)


def _rebuild_first(node, new_operands):
    """The node with its first argument replaced, its parameters (the other args) kept."""
    return type(node)(new_operands[0], *node.args[1:])


@dataclass(frozen=True)
class Operation:
    """Everything about one matrix operation; the machinery calls these hooks.

    Structure:

    * ``name``: the operation's name in messages; ``node``: its SymPy class (symgrad/ops.py,
      or SymPy's own);
      ``example()``: a small scalar model that uses it, of matrix symbols (the checks of every
      operation compile it and compare its derivatives with finite differences);
    * ``operands(node)``: the children the passes walk (default: the first argument);
      ``parameters``: the names of the node's other properties (``("axis",)``), which
      ``rebuild`` keeps; ``rebuild(node, new_operands)``: the node with new operands;

    Derivatives (``g``: upstream adjoint, ``y``: the node's value, ``a``: its operand):

    * ``vjp(g, y, a, node=node)``: the adjoint of each operand (a rule of
      symgrad/derive/rules.py);
    * ``jvp(node, tangent)``: the tangent of the node in one direction, where
      ``tangent(e)`` is the tangent of a subexpression (None: zero); None when zero;
    * ``jvp_columns(node, tangent, kind)``: the same in every direction of a vector at once
      (``kind(e)`` is ``'s'``, ``'c'``, ``'r'`` or ``'m'``, see symgrad/derive/second.py), or
      None where the operation has no such form (the machinery then refuses it unless its
      operands' tangents are zero);

    Code:

    * ``emit(emitter, target, node)``: the Numba statements, written with the emitter's
      helpers (``emit``, ``load``, ``loops``, ``shape``, ``name``, ``axis_loops``) of
      symgrad/codegen/numba.py;
    * ``loops(node)``: ``(entries, parallel)`` for each loop nest that ``emit`` opens with
      ``emitter.loops`` at the top of the kernel, in order (the schedule's view of it);
    * ``translations``: framework -> ``f(node, translator)`` giving the node's array code
      (``"numpy"`` is required and serves the others through the translator's module aliases
      ``xp`` and ``special``);

    Presentation and analysis:

    * ``text(node, printer)``: plain text for formulas (``printer._print`` prints operands);
      ``latex(node, printer)``: LaTeX, or None to print as SymPy prints the node;
    * ``stable_log(inner)``: the operation as the stable form of ``log(inner)``
      (``log(det(A))`` -> ``logdet(A)``), or None where it is not one; and
      ``stable_log_operand(operand, v, transpose)``: the same inside an elementwise body,
      for ``log(v)`` where ``v`` stands for the matrix ``operand``: ``(expression, new
      variables, their operands)`` to put in place of ``log(v)``, or None
      (``log(softmax(Z))`` -> ``z - l`` with operands Z and logsumexp(Z)); ``transpose``
      is the canonical transpose.  Both are optional (symgrad/derive/graph.py asks every
      operation);
    * ``split(node, walk)``: the node's kind in a split over the examples (``walk.kind``,
      ``walk.refuse`` and the kinds ``walk.FIXED`` ... of symgrad/derive/split.py), or None
      for an operation that is nonlinear in its operands: it splits only where none of them
      depends on the examples;
    * ``label(node)``: for a node that is its operand under a name (``sg.name``), the name;
      the machinery then treats the node as its operand (see symgrad/operations/named.py
      and :func:`label_of`).  None for every other operation;
    * ``from_factorisation``: what the node is of a factorisation of its (square) operand,
      ``"inverse"``, ``"det"`` or ``"logdet"``: compiled code then computes every such node
      of one matrix from one factorisation (symgrad/codegen/factor.py); None for the rest.
    """

    name: str
    node: type
    example: Callable
    vjp: Callable
    jvp: Callable
    emit: Callable
    text: Callable
    translations: dict
    split: Callable | None = None
    jvp_columns: Callable | None = None
    latex: Callable | None = None
    stable_log: Callable | None = None
    stable_log_operand: Callable | None = None
    label: Callable | None = None
    from_factorisation: str | None = None
    loops: Callable = field(default=lambda node: ())
    parameters: tuple = ()
    operands: Callable = field(default=_first_operand)
    rebuild: Callable = field(default=_rebuild_first)

    @property
    def is_matrix(self) -> bool:
        """Whether the node is a matrix (else a scalar, such as a reduction of a matrix)."""
        return issubclass(self.node, MatrixExpr)

    def translate(self, node, translator) -> str:
        """The node's code for the translator's framework (its own, else NumPy's)."""
        own = self.translations.get(translator.framework, self.translations["numpy"])
        return own(node, translator)


# The hooks every operation provides (a test checks them).
HOOKS = ("example", "vjp", "jvp", "emit", "text", "operands", "rebuild", "loops")
# The hooks an operation may leave None (see Operation).
OPTIONAL_HOOKS = ("jvp_columns", "latex", "split", "stable_log", "stable_log_operand", "label")

OPERATIONS: dict[type, Operation] = {}
# of()'s answer per node type: the passes ask it for every node they visit
_BY_TYPE: dict[type, Operation | None] = {}


def register(operation: Operation) -> Operation:
    """Add an operation; the machinery finds it by its node class from now on."""
    if "numpy" not in operation.translations:
        raise ValueError(f"operation {operation.name}: a NumPy translation is required")
    OPERATIONS[operation.node] = operation
    _BY_TYPE.clear()
    return operation


def of(node) -> Operation | None:
    """The operation of a node (by its class, then its bases), or None."""
    kind = type(node)
    try:
        return _BY_TYPE[kind]
    except KeyError:
        pass
    found = next((OPERATIONS[cls] for cls in kind.__mro__ if cls in OPERATIONS), None)
    _BY_TYPE[kind] = found
    return found


def label_of(node) -> str | None:
    """The name a node gives its operand (an ``sg.name``), else None.

    >>> print(label_of(ops.name("Z", ops.matrix("A", 2, 2))), label_of(ops.matrix("A", 2, 2)))
    Z None
    """
    operation = of(node)
    return None if operation is None or operation.label is None else operation.label(node)


def axis_split(what: str) -> Callable:
    """The ``split`` hook of an operation along an axis of its operand (softmax, logsumexp):
    per-example operands stay per-example unless the axis runs over the examples.

    >>> axis_split("softmax").__name__
    'split'
    """
    def split(node, walk):
        kind = walk.kind(node.arg)
        if kind == walk.SUM:
            walk.refuse(node, f"{what} of a sum over the examples")
        if kind in (walk.ROWS, walk.COLUMNS) and (node.axis is None
                                                  or kind == walk.AXIS_KIND[node.axis]):
            walk.refuse(node, f"{what} along {walk.dimension} mixes the examples")
        return kind

    return split


def exponent_of(m):
    """Z where m is exp(Z) elementwise (a Map whose body is exp(...)), else None.

    >>> Z = ops.matrix("Z", 2, 2)
    >>> exponent_of(ops.Map(sp.Lambda((sp.Symbol("a"),), sp.exp(sp.Symbol("a"))), (2, 2), Z))
    Z
    """
    if not (isinstance(m, ops.Map) and isinstance(m.body, sp.exp)):
        return None
    argument = m.body.args[0]
    variables = m.function.variables
    if argument in variables:
        operand = m.operands[variables.index(argument)]
        if isinstance(operand, MatrixExpr) and tuple(operand.shape) == tuple(m.shape):
            return operand
    return ops.Map(sp.Lambda(variables, argument), m.shape, *m.operands)


def stable_log(inner):
    """The stable form of log(inner) that an operation gives, or None.

    >>> print(stable_log(sp.Determinant(ops.matrix("K", 2, 2))))
    logdet(K)
    """
    for operation in OPERATIONS.values():
        if operation.stable_log is not None:
            found = operation.stable_log(inner)
            if found is not None:
                return found
    return None


def map_of(body_of, shape, *operands):
    """``Map(Lambda(v, body_of(*v)), shape, *operands)``, its variables ``_r0, _r1 ...``
    (the names of the VJP rules' Maps).

    >>> map_of(lambda a: 2 * a, (2, 1), ops.matrix("x", 2, 1)).body
    2*_r0
    """
    names = ops.map_variables(len(operands), [f"_r{k}" for k in range(len(operands))])
    return ops.Map(sp.Lambda(names, body_of(*names)), shape, *operands)


def variables(n: int, prefix: str) -> tuple:
    """Real symbols ``prefix0 ... prefix{n-1}`` for the bodies of the JVP rules' Maps.

    >>> variables(2, "l")
    (l0, l1)
    """
    return tuple(sp.Symbol(f"{prefix}{k}", real=True) for k in range(n))

