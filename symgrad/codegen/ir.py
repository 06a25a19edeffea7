"""The program representation shared by the optimizer, the code generator and the printers.

A :class:`Program` is a list of :class:`Statement` ``target = operation(operands)`` in
execution order.  Every operand is an *atom*: an input symbol, an earlier target, a number,
a constant matrix (Identity, OneMatrix, ZeroMatrix) or the transpose of a matrix symbol (a
view, never a copy).  The operations are SymPy nodes with atoms as arguments:

======================  ===========================================================
scalar                  Add, Mul, Pow (binary), functions, Max, Min, Piecewise, ...;
                        ``OrderedSum`` (a stretch of a long sum, left to right, whose
                        terms may be ``-x`` and ``c*x``)
``MatMul(A, B)``        a matrix product (BLAS)
``Map(f, shape, ...)``  an elementwise function of matrices (one fused loop)
``AxisSum(A, axis)``    row or column sums; ``SumAll(A)`` the sum of all entries
``MatrixElement``       ``A[i, j]``; ``Trace``, ``Determinant``, ``LogDet``, ``Inverse``
``LogSumExp``, ``LogSumExpAll``, ``Softmax``, ``Scatter``, ``Transpose`` (of a target)
======================  ===========================================================
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symgrad import ops
from symgrad.nodes import assumptions_key


class OrderedSum(sp.Function):
    """``a1 + a2 + ... + an``, added left to right in the order of its arguments: one
    statement for a stretch of a long sum, which would otherwise be a statement per term.
    A term is an atom, ``-atom`` (subtracted), or an integer or float times an atom (written
    into the sum, not a statement of its own).  Its order is the chain's own, so the value
    is the same to the last bit as that of a statement per operation; SymPy's Add would
    sort its terms, and its printer order them again.

    >>> a, b = sp.symbols("a b")
    >>> OrderedSum(b, -a, 3 * a).args
    (b, -a, 3*a)
    """

    def signed_terms(self) -> list:
        """:func:`signed_term` of each term."""
        return [signed_term(term) for term in self.args]

    def text(self, print_atom) -> str:
        """The sum as code or a formula reads it, its numbers and atoms printed by
        ``print_atom``.

        >>> a, b = sp.symbols("a b")
        >>> OrderedSum(b, -a, -3 * a, sp.Integer(2)).text(str)
        'b - a - 3*a + 2'
        """
        out = []
        for subtracted, coefficient, atom in self.signed_terms():
            text = (print_atom(coefficient) if atom is None else print_atom(atom)
                    if coefficient is None else f"{print_atom(coefficient)}*{print_atom(atom)}")
            out.append((" - " if subtracted else " + ") + text if out
                       else "-" + text if subtracted else text)
        return "".join(out)

    def cost(self) -> int:
        """Its operations: an addition or subtraction per term after the first, and a
        multiplication per coefficient (a first term subtracted is a negation)."""
        terms = self.signed_terms()
        return (len(terms) - 1 + sum(c is not None and a is not None for _, c, a in terms)
                + terms[0][0])


def signed_term(term) -> tuple:
    """``(subtracted, coefficient or None, atom or None)`` of a term of an OrderedSum:
    ``-3*x`` is ``(True, 3, x)``, ``-x`` is ``(True, None, x)``, the number ``-2`` is
    ``(True, 2, None)``.

    >>> signed_term(-3 * sp.Symbol("x"))
    (True, 3, x)
    """
    coefficient, atom = term.args if type(term) is sp.Mul else (None, term)
    if atom.is_Number:
        coefficient, atom = atom, None
    subtracted = coefficient is not None and float(coefficient) < 0
    if subtracted:
        coefficient = -coefficient
    return subtracted, None if coefficient is sp.S.One else coefficient, atom


@dataclass(frozen=True)
class Statement:
    target: sp.Basic       # Symbol (scalar) or MatrixSymbol
    operation: sp.Basic    # one operation whose arguments are atoms

    @property
    def is_matrix(self) -> bool:
        return isinstance(self.target, MatrixExpr)


@dataclass
class Program:
    """A straight-line program: statements, inputs, named outputs."""

    inputs: list                                  # parameters first, then data inputs
    statements: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)   # output name -> atom
    labels: dict = field(default_factory=dict)    # target -> the user's name for it
    adjoints: set = field(default_factory=set)    # targets that hold an adjoint
    names: dict = field(default_factory=dict)     # derivation name -> its atom here (lower)

    def op_count(self) -> int:
        """Arithmetic operations: one per scalar operation, per matrix operation, and per
        operation in the body of each elementwise loop."""
        return sum(operation_cost(s.operation) for s in self.statements)


@functools.lru_cache(maxsize=1 << 16)     # op_count runs on each program several times
def operation_cost(operation) -> int:
    if isinstance(operation, ops.Map):
        # a fused body can be deep: count_ops walks it without recursion, which the
        # rewrites of _statement_cost (SymPy's replace) would not
        return max(1, sp.count_ops(operation.body))
    if isinstance(operation, (sp.Symbol, sp.MatrixSymbol, sp.Number)):
        return 0
    if type(operation) is OrderedSum:
        return operation.cost()
    if isinstance(operation, MatrixExpr) or not isinstance(operation, sp.Expr):
        return 1
    return _statement_cost(operation)


def _statement_cost(e) -> int:
    """Arithmetic operations of a scalar statement (an operation over atoms: shallow); one
    count per shape (``-a + b`` as ``-c + d``): count_ops costs a walk and a few SymPy
    constructions."""
    if one_operation(e):
        return 1
    shape = shape_of(e)
    if shape is None:
        return _counted(e)
    cost = _COSTS.get(shape[0])
    if cost is None:
        if len(_COSTS) >= _SHAPES_MAX:
            _COSTS.clear()
        cost = _COSTS[shape[0]] = _counted(e)
    return cost


_COSTS: dict = {}


def _counted(e) -> int:
    if e.has(sp.Heaviside):
        # Heaviside's second argument is its value at 0, a parameter: not a division
        e = e.replace(sp.Heaviside, lambda x, *_: _HEAVISIDE(x))
    # a constant such as 2/sqrt(pi) is folded when the code compiles: no operation at run time
    e = e.replace(lambda n: n.is_number and not n.is_Atom, lambda n: _CONSTANT)
    return max(1, sp.count_ops(e))


_HEAVISIDE = sp.Function("Heaviside_")      # counts as one operation, whatever its value at 0
_CONSTANT = sp.Symbol("constant_")


def one_operation(e) -> bool:
    """Whether ``sympy.count_ops(e)`` is 1 by its form alone: most statements of a large
    program are such (``a + b``, ``2*a``, ``a**2``, ``sin(a)`` over names), and count_ops
    costs a walk and a few SymPy constructions each.  Forms it counts otherwise (``-3*a``
    is a negation and a product, ``a**-2`` a division and a power, ``a + 1/2`` an addition
    and a division) are left to count_ops.

    >>> a, b = sp.symbols("a b")
    >>> [one_operation(e) for e in (a + b, 2 * a, -a, a**-1, sp.sin(a), -3 * a, a**-2)]
    [True, True, True, True, True, False, False]
    """
    args = e.args
    if e.is_Function:
        return bool(len(args) == 1 and args[0].is_Symbol)
    if len(args) != 2:
        return False
    a, b = args
    if e.is_Pow:
        return bool(a.is_Symbol and b.is_Integer and (b >= 2 or b == -1))
    if not (e.is_Add or e.is_Mul):
        return False
    if a.is_Symbol and b.is_Symbol:
        return True
    if e.is_Mul:        # SymPy's order, the coefficient first (x*(-1) counts two)
        return bool(a.is_Integer and b.is_Symbol and (a >= 1 or a == -1))
    return bool((a.is_Integer and b.is_Symbol) or (a.is_Symbol and b.is_Integer))


def live_statements(statements: list, outputs) -> list:
    """The statements the outputs depend on, in their original order."""
    needed = set()
    for o in outputs:
        needed |= symbols_in(o)
    live = []
    for statement in reversed(statements):
        if statement.target in needed:
            live.append(statement)
            needed |= symbols_in(statement.operation)
    return live[::-1]


def symbols_in(e) -> set:
    """The symbols an operation reads (a Map's operands, not its body's variables)."""
    if isinstance(e, sp.MatrixSymbol):
        return {e}
    if isinstance(e, sp.Symbol):
        return {e}
    if isinstance(e, ops.Map):
        out = set()
        for o in e.operands:
            out |= symbols_in(o)
        return out
    if not isinstance(e, sp.Basic):
        return set()
    out = set()
    for a in e.args:
        if type(a) is sp.Symbol:        # (most operands: no call for them)
            out.add(a)
        elif a.args or isinstance(a, sp.Symbol):   # (a matrix symbol has args)
            out |= symbols_in(a)
    return out


# ------------------------------------------------------------------------------------------
# Statement shapes: what printing a statement and counting its operations depend on
# ------------------------------------------------------------------------------------------
def shape_of(e):
    """(a hashable key of e's shape, e's symbols in the order of their names, e's numbers
    in slots), or None where printing e directly is as cheap or its shape could print
    differently (two symbols of one name).

    A number that is a term of a sum or a factor of a product (an integer other than 0 and
    +-1, a float other than 0 and +-1) is a slot of the shape, by its kind and sign: it
    prints as its own text (the sign apart) whatever its value, so that ``3*x`` and
    ``7*y`` share a shape.  Numbers elsewhere (exponents, conditions, arguments of
    functions) stay in the key with their values.

    >>> x, y = sp.symbols("x y")
    >>> shape_of(x - 2 * y)[0] == shape_of(sp.Symbol("a") - 7 * sp.Symbol("b"))[0]
    True
    >>> shape_of(x - 2 * y)[2]
    [-2]
    """
    if not isinstance(e, sp.Basic) or not e.args:
        return None
    shape = _shape_over_leaves(e)
    if shape is not None:
        return shape        # (found again faster than it is remembered)
    known = _SHAPES.get(e)
    if known is not None:
        return known
    shape = _walked_shape(e)
    if shape is None:
        return None
    if len(_SHAPES) >= _SHAPES_MAX:
        _SHAPES.clear()
    _SHAPES[e] = shape
    return shape


def _shape_over_leaves(e):
    """:func:`shape_of` an operation whose operands are all leaves, with at most two
    symbols (most statements: ``a + b``, ``3*a``, ``sin(a)``): the very shape that
    :func:`_walked_shape` finds, without its stack and tables; None for any other operation
    (and for two symbols of one name, which the walk refuses too)."""
    symbols: list = []
    numbers: list = []
    place: dict = {}        # a symbol, or (kind, value) of a slotted number -> its place
    fixed: set = set()
    top = [type(e)]
    slotted = e.is_Add or e.is_Mul
    for a in e.args:
        if a.args:
            return None
        if type(a) is sp.Symbol:
            k = place.get(a)
            if k is None:       # (a repeated symbol keeps the place where it was first met)
                k = place[a] = len(symbols)
                symbols.append(a)
            top.append(k)
        elif slotted and _is_number_slot(a):
            top.append(_number_slot(a, place, numbers))
        else:
            if getattr(a, "is_Number", False):
                fixed.add(a)
            top.append((type(a), a))
    if len(symbols) == 2:
        first, second = symbols
        if first.name == second.name:
            return None
        by_name = (0, 1) if first.name < second.name else (1, 0)
        ordered = [symbols[k] for k in by_name]
    elif len(symbols) < 2:
        by_name, ordered = tuple(range(len(symbols))), symbols
    else:
        return None
    key = (tuple(top), by_name, tuple([assumptions_key(s) for s in symbols]))
    return Shape(key, ordered, numbers, fixed)


def _walked_shape(e):
    """:func:`shape_of` any expression, by a walk of its DAG."""
    symbols: list = []      # in the order the walk meets them; the key holds their places
    numbers: list = []      # the values of the number slots, in the order met
    slot_of: dict = {}
    fixed: set = set()      # the numbers outside the slots
    done: dict = {}
    stack = [(e, False)]
    while stack:
        node, expanded = stack.pop()
        if node in done:
            continue
        if type(node) is sp.Symbol:
            done[node] = len(symbols)
            symbols.append(node)
            continue
        if not node.args:
            done[node] = (type(node), node)
            continue
        if not expanded:
            stack.append((node, True))
            stack.extend((a, False) for a in reversed(node.args) if a not in done)
            continue
        fixed.update(a for a in node.args if getattr(a, "is_Number", False) and not (
            (node.is_Add or node.is_Mul) and _is_number_slot(a)))
        if node.is_Add or node.is_Mul:
            parts = []
            for a in node.args:
                if _is_number_slot(a):
                    parts.append(_number_slot(a, slot_of, numbers))
                else:
                    parts.append(done[a])
            done[node] = (type(node), *parts)
            continue
        done[node] = (type(node), *[done[a] for a in node.args])
    by_name = sorted(range(len(symbols)), key=lambda k: symbols[k].name)
    ordered = [symbols[k] for k in by_name]
    if len({s.name for s in ordered}) != len(ordered):
        return None
    key = (done[e], tuple(by_name), tuple(assumptions_key(s) for s in symbols))
    return Shape(key, ordered, numbers, fixed)


def _number_slot(a, slot_of: dict, numbers: list) -> tuple:
    """The key part of the number a in a slot of a sum or product: its kind, its sign and
    the slot, one per distinct value (``numbers`` grows by the values in the order met)."""
    slot = slot_of.get((type(a), a))
    if slot is None:
        slot = slot_of[(type(a), a)] = len(numbers)
        numbers.append(a)
    return (_NUMBER_SLOT, type(a), _negative(a), slot)


class Shape(NamedTuple):
    """What :func:`shape_of` finds: the key, the symbols in the order of their names, the
    numbers in the slots, and the numbers outside them."""

    key: tuple
    symbols: list
    numbers: list
    fixed: set


_NUMBER_SLOT = "number slot"


def _is_number_slot(a) -> bool:
    if type(a) is sp.Integer:
        return a.p > 1 or a.p < -1
    if type(a) is sp.Float:
        return a != 0 and abs(a) != 1 and a.is_finite
    return False


def _negative(number) -> bool:
    # (SymPy's is_negative deduces every assumption of a new number: 40 us)
    return number.p < 0 if type(number) is sp.Integer else float(number) < 0


def forget_shapes() -> None:
    """Drop the shapes of a program's statements (kept while its kernels print)."""
    _SHAPES.clear()


_SHAPES: dict = {}      # expression -> its shape: one statement prints in several kernels
_SHAPES_MAX = 300_000   # (cleared after each module: see forget_shapes)
