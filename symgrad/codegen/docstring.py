"""Readable formulas, the way a person writes gradients on a whiteboard, for the docstrings
of compiled and generated modules (and, through symgrad.present.formulas, ``sg.show``).

``sg.show(grads)`` prints each shared piece once, with a name (``delta = u ∘ h ∘ (1 - h)``),
then each gradient in terms of the pieces (``ds/dW = delta x^T``).  Names come from
``sg.name`` labels (``Z2`` and its adjoint ``dZ2``), else ``h`` for a shared elementwise
value and ``delta`` for a shared adjoint.  ``sg.latex`` gives the same as LaTeX.

Notation: juxtaposition is the matrix product, ``∘`` the elementwise product, ``X^T`` the
transpose, ``sum(A, axis=1)`` row sums; a column vector added to a matrix is broadcast.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

from symgrad import operations, ops
from symgrad.codegen.ir import OrderedSum, one_operation
from symgrad.nodes import built, held, released, replaced, unevaluated

__all__ = ["FormulaPrinter", "Gradients", "fresh_names", "module_docstring", "piece_names"]


class _Piece(sp.Symbol):
    """A symbol standing for a printed operand inside an elementwise body."""

    is_commutative = True

    def __new__(cls, text: str, matrix: bool, atomic: bool):
        obj = super().__new__(cls, text, real=True)   # real: Max and Min accept it
        obj.matrix = matrix
        obj.atomic = atomic
        return obj


class FormulaPrinter(StrPrinter):
    """Plain-text formulas: ``W^T delta``, ``u ∘ h ∘ (1 - h)``, ``sum(dZ1, axis=1)``."""

    def __init__(self, names: dict | None = None, hadamard: str = " ∘ ", transpose: str = "^T",
                 aliases: dict | None = None):
        super().__init__()
        self.names = names or {}
        self.hadamard = hadamard
        self.transpose = transpose
        self.aliases = aliases or {}   # printed text -> the user's name for it
        self.aliased: dict = {}        # the user's names printed so far -> what they stand for
        self._depth = 0

    def _print(self, expr, **kwargs):
        if expr in self.names:
            return self.names[expr]
        self._depth += 1
        try:
            operation = operations.of(expr)     # symgrad/operations/: its file prints it
            text = (operation.text(expr, self) if operation is not None
                    else super()._print(expr, **kwargs))
        finally:
            self._depth -= 1
        if self._depth > 0 and text in self.aliases:
            return self.alias(text)
        return text

    def _print_OrderedSum(self, expr):
        """A sum's statement in the code's order: ``t1 + t2 - t3``."""
        return expr.text(lambda atom: self.parenthesize(atom, PRECEDENCE["Mul"]))

    def alias(self, text: str) -> str:
        """The user's name for the printed piece ``text``, remembered as printed."""
        label = self.aliases[text]
        self.aliased.setdefault(label, text)
        return label

    def _print_Pow(self, expr, rational=False):
        if isinstance(expr.base, _Piece) and expr.base.matrix and expr.exp.is_Integer:
            # an elementwise power of a matrix; a negative one is marked elementwise (M^∘-1),
            # since M^-1 is the notation of the matrix inverse
            base = self.parenthesize(expr.base, PRECEDENCE['Pow'])
            return f"{base}^{'∘' if expr.exp < 0 else ''}{expr.exp}"
        return super()._print_Pow(expr, rational)

    def _print_Symbol(self, expr):
        return expr.name

    def _print__Piece(self, expr):
        return expr.name

    def _print_Piecewise(self, expr):
        """Each value with the condition that selects it, as a conditional reads, NaN where
        none holds (as the compiled code): the local gradients of Max and relu read as
        their rules are said.

        >>> y, z = sp.symbols("y z")
        >>> FormulaPrinter().doprint(sp.Piecewise((1, y > z), (sp.S.Half, sp.Eq(y, z)),
        ...                                       (0, True)))
        '(1 if y > z else 1/2 if y = z else 0)'
        """
        text = " else ".join(f"{self._print(value)} if {self._print(condition)}"
                             for value, condition in expr.args if condition != sp.true)
        last_value, last_condition = expr.args[-1]
        last = self._print(last_value) if last_condition == sp.true else "nan"
        return f"({text} else {last})" if text else last

    def _print_Equality(self, expr):
        return f"{self._print(expr.lhs)} = {self._print(expr.rhs)}"

    def _print_Unequality(self, expr):
        return f"{self._print(expr.lhs)} ≠ {self._print(expr.rhs)}"

    def parenthesize(self, item, level, strict=False):
        # a piece of several terms is grouped wherever it is an operand: SymPy asks with the
        # precedence of Add for the factors of a negated product (-(X w + b))
        if isinstance(item, _Piece) and not item.atomic and level >= PRECEDENCE["Add"]:
            return f"({item.name})"
        return super().parenthesize(item, level, strict)

    def _print_MatrixSymbol(self, expr):
        return expr.name

    def _print_Transpose(self, expr):
        inner = self._print(expr.arg)
        atomic = isinstance(expr.arg, sp.MatrixSymbol) or expr.arg in self.names
        return f"{inner}{self.transpose}" if atomic else f"({inner}){self.transpose}"

    def _print_MatMul(self, expr):
        if expr.args and expr.args[0] == -1:
            rest = sp.MatMul(*expr.args[1:]) if len(expr.args) > 2 else expr.args[1]
            return f"-{self.parenthesize(rest, PRECEDENCE['Mul'])}"
        parts = []
        for a in expr.args:
            text = self._print(a)
            # a product of matrices binds tighter than ∘ (A ∘ (B C) is printed so), so an
            # elementwise product among its factors is grouped: (A ∘ B) C, not A ∘ B C
            # and a scalar with a fraction bar too: (1/m) A, not 1/m A (which reads 1/(m A))
            if (isinstance(a, (sp.MatAdd, sp.Add, sp.HadamardProduct))
                    or (isinstance(a, ops.Map) and a not in self.names
                        and not _is_atomic_map(a))
                    or (not isinstance(a, MatrixExpr) and "/" in text
                        and not _enclosed(text))):
                text = f"({text})"
            parts.append(text)
        return " ".join(parts)

    def _print_Add(self, expr, order=None):
        # positive terms first: "A2 - Y", not "-Y + A2"
        terms = sorted(expr.as_ordered_terms(), key=lambda t: t.could_extract_minus_sign())
        text = self._print(terms[0])
        for t in terms[1:]:
            if t.could_extract_minus_sign():
                text += " - " + self.parenthesize(-t, PRECEDENCE["Add"])
            else:       # a sum added needs no grouping; one subtracted does (above)
                text += " + " + self._print(t)
        return text

    def _print_MatAdd(self, expr):
        positive = [t for t in expr.args if not _negated(t)]
        negative = [t for t in expr.args if _negated(t)]
        text = " + ".join(self._print(t) for t in positive) if positive else ""
        for t in negative:
            inner = self._print(_negate(t))
            inner = f"({inner})" if isinstance(_negate(t), sp.MatAdd) else inner
            text = f"{text} - {inner}" if text else f"-{inner}"
        return text

    def _print_HadamardProduct(self, expr):
        return self.hadamard.join(self.parenthesize(a, PRECEDENCE["Mul"]) for a in expr.args)

    def _print_HadamardPower(self, expr):
        """An elementwise power: ``A^2``; a negative one marked elementwise, ``A^∘-1`` (as
        in elementwise bodies: ``A^-1`` is the inverse); an exponent of more than one
        symbol or digit grouped, ``A^(x + 1)``, ``A^(1/2)``."""
        exponent = expr.exp
        mark = "∘" if exponent.could_extract_minus_sign() else ""
        text = self._print(exponent)
        if not (exponent.is_Integer or exponent.is_Symbol):
            text = f"({text})"
        return f"{self.parenthesize(expr.base, PRECEDENCE['Pow'])}^{mark}{text}"

    def _print_OneMatrix(self, expr):
        return "1"

    def _print_ZeroMatrix(self, expr):
        return "0"

    def _print_Identity(self, expr):
        return "I"

    def _print_MatrixElement(self, expr):
        parent = expr.parent
        if parent.shape == (1, 1):
            return self._print(parent)
        text = self._print(parent)
        # an entry of a compound matrix: (A B)[0, 1], (X^-1)[1, 1], not A B[0, 1]
        if not (_looks_atomic(text) and "^" not in text):
            text = f"({text})"
        return f"{text}[{expr.i}, {expr.j}]"

    def _print_Map(self, expr):
        body = _readable_body(expr, self)
        self._depth -= 1       # the body stands for the Map itself: no alias for the whole
        try:
            return self._print(body)
        finally:
            self._depth += 1

    def _print_Mul(self, expr):
        factors = expr.as_ordered_factors()
        matrix_factors = [f for f in factors if _is_matrix_valued(f)]
        if len(matrix_factors) < 2:
            return super()._print_Mul(expr)
        coefficient = sp.Mul(*[f for f in factors if not _is_matrix_valued(f)])
        text = self.hadamard.join(self.parenthesize(f, PRECEDENCE["Mul"])
                                  for f in matrix_factors)
        if coefficient == 1:
            return text
        if coefficient == -1:
            return f"-{text}"
        return f"{self.parenthesize(coefficient, PRECEDENCE['Mul'])}*{text}"


def _negated(term) -> bool:
    """A term printed after a minus sign: -X, -2 X."""
    return (isinstance(term, sp.MatMul) and term.args[0].is_number
            and term.args[0].is_negative)


def _negate(term):
    coefficient, *rest = term.args
    if coefficient == -1:
        return sp.MatMul(*rest) if len(rest) > 1 else rest[0]
    return sp.MatMul(-coefficient, *rest)


def _enclosed(text: str) -> bool:
    """Whether one pair of brackets encloses the whole text: ``(a + b)``, not
    ``(a + b)/(c + d)``."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    depth = 0
    for k, c in enumerate(text):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth == 0 and k < len(text) - 1:
            return False
    return True


def _is_atomic_map(m: ops.Map) -> bool:
    body = m.body
    return body in m.function.variables or isinstance(body, sp.Function)


def _elementwise_reciprocal(e) -> bool:
    """A negative power of a matrix piece inside an elementwise body."""
    return (e.is_Pow and isinstance(e.base, _Piece) and e.base.matrix
            and e.exp.is_Integer and e.exp < 0)


def _is_matrix_valued(e) -> bool:
    return any(getattr(s, "matrix", False) for s in e.atoms(_Piece)) if isinstance(e, sp.Basic) \
        else False


def _readable_body(m: ops.Map, printer) -> sp.Expr:
    """The Map's body with each variable replaced by its operand's printed form."""
    substitution = {}
    for v, operand in zip(m.function.variables, m.operands):
        if isinstance(operand, MatrixExpr):
            text = printer._print(operand)
            substitution[v] = _Piece(text, True, _looks_atomic(text))
        elif operand.is_number or (all(d.is_integer for d in operand.free_symbols)
                                   and not operand.atoms(MatrixElement, ops.SumAll)):
            substitution[v] = operand      # constants such as 1/m join the body's arithmetic
        else:
            text = printer._print(operand)
            substitution[v] = _Piece(text, False, _looks_atomic(text))
    body = replaced(m.body, substitution)
    if getattr(printer, "aliases", None):
        def aliased(e):
            return (isinstance(e, sp.Function) and e != body
                    and printer._print(e) in printer.aliases)

        body = body.replace(aliased, lambda e: _Piece(printer.alias(printer._print(e)),
                                                      True, True))
    from symgrad.derive.reverse import small_enough_to_expand
    if not small_enough_to_expand(body):
        return body
    try:
        tidy = released(sp.together(sp.expand(held(body))))
    except (TypeError, ValueError):      # e.g. Max of arguments SymPy cannot order
        return body
    return tidy if sp.count_ops(tidy) < sp.count_ops(body) else body


def _looks_atomic(text: str) -> bool:
    depth = 0
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and ch in " +-*/":
            return False
    return True


# ------------------------------------------------------------------------------------------
# show: shared pieces named once
# ------------------------------------------------------------------------------------------
def piece_names(program) -> tuple[dict, list]:
    """The names ``show`` gives a lowered program's pieces: ``({target: name}, [(target,
    label or None)])``; a piece is named by ``sg.name`` (``Z1``, ``dZ1``) or, when shared and
    worth naming, ``h`` (an elementwise value), ``delta`` (an adjoint), ``z`` or ``v``."""
    uses = collections.Counter()       # (counted by Counter's own loop, in C)
    for s in program.statements:
        uses.update(_operands(s.operation))
    uses.update(program.outputs.values())
    named: dict = {}
    counters: dict = {}
    candidates = []
    definitions = {}        # the candidates' operations
    for s in program.statements:
        label = program.labels.get(s.target)
        shared = uses[s.target] >= 2 and _worth_naming(s.operation)
        if label or shared:
            candidates.append((s.target, label))
            definitions[s.target] = s.operation
    kinds = {}
    for target, label in candidates:
        if label:
            continue
        kind = "delta" if target in program.adjoints else _kind(definitions[target])
        kinds[target] = kind
        counters[kind] = counters.get(kind, 0) + 1
    taken = _model_names(program) | {label for _, label in candidates if label}
    fresh = {kind: fresh_names(kind, counters[kind], taken) for kind in counters}
    for target, label in candidates:
        named[target] = label if label else next(fresh[kinds[target]])
    return named, candidates


def fresh_names(kind: str, count: int, taken: set):
    """``count`` names for pieces of one kind: ``kind`` alone for one, else ``kind1``,
    ``kind2``, ...; a name the model already uses (an input ``v``, a dimension ``h``) is
    skipped, so a printed formula never reads a piece as an input. Names given are added to
    ``taken``.

    >>> list(fresh_names("h", 2, {"h1"}))
    ['h2', 'h3']
    """
    numbered = (f"{kind}{k}" for k in itertools.count(1))
    given = 0
    for name in itertools.chain([kind] if count == 1 else [], numbered):
        if given == count:
            return
        if name not in taken:
            taken.add(name)
            given += 1
            yield name


def _model_names(program) -> set:
    """Names of the model's own symbols: inputs and the dimensions of their shapes."""
    names = set()
    for symbol in program.inputs:
        names.add(str(symbol))
        for d in getattr(symbol, "shape", ()):
            names |= {str(s) for s in sp.sympify(d).free_symbols}
    return names


def describe_symbol(symbol) -> str:
    """A symbol told apart from its namesakes: its shape, or its assumptions.

    >>> describe_symbol(sp.Symbol("x", positive=True))
    'a symbol with positive=True'
    """
    if isinstance(symbol, sp.MatrixSymbol):
        return f"a {symbol.shape[0]} x {symbol.shape[1]} matrix"
    assumptions = getattr(symbol, "_assumptions_orig", {})
    return ("a symbol with " + ", ".join(f"{k}={v}" for k, v in sorted(assumptions.items()))
            if assumptions else "a symbol with no assumptions")


def refuse_namesakes(symbols) -> None:
    """Formulas name a symbol by its name: two different symbols of one name among
    ``symbols`` (other assumptions, or a matrix and a scalar) would print as one, and
    gradients by both would have one label, so they are an error naming both.  Matrix
    dimensions may share names.

    >>> refuse_namesakes([sp.Symbol("x"), sp.Symbol("x", positive=True)])
    Traceback (most recent call last):
    ...
    ValueError: two different symbols are both named 'x' (a symbol with no assumptions, ...
    """
    symbols = [s for s in symbols if isinstance(s, (sp.Symbol, sp.MatrixSymbol))]
    # dimensions are not printed with the matrices they size, and may share names (two
    # dimensions n stay apart, README "Names")
    dimensions = {d for s in symbols if isinstance(s, sp.MatrixSymbol)
                  for extent in s.shape for d in sp.sympify(extent).free_symbols}
    by_name: dict = {}
    for s in symbols:
        if s not in dimensions:
            by_name.setdefault(s.name, set()).add(s)
    for name, found in by_name.items():
        if len(found) > 1:
            told = sorted(describe_symbol(s) for s in found)
            raise ValueError(
                f"two different symbols are both named {name!r} ({', '.join(told)}): "
                f"formulas would print both as {name} (a gradient by each would have one "
                "label); give them distinct names")


def _pieces(grads, output: str):
    """(named pieces [(name, expression)], gradient lines [(name, expression)], names)."""
    from symgrad.derive.graph import Canonicalizer, dag_free_symbols
    from symgrad.derive.reverse import _smallest
    from symgrad.optimize import lower

    # the symbols the gradients are of (sg.grad keys q1(t)'s by the object the user passed)
    symbols = [getattr(grads, "symbol_of", {}).get(w, w) for w in grads]
    refuse_namesakes(itertools.chain(symbols, *(
        dag_free_symbols(g) for g in grads.values() if isinstance(g, sp.Basic))))
    derivation = getattr(grads, "derivation", None)
    if derivation is None:
        return [], [(f"d{output}/d{_label(w)}", g) for w, g in grads.items()], {}
    program = getattr(grads, "program", None)       # lowered already (sg.compile)
    if program is None:
        outputs = {_label(w): derivation.gradients[w] for w in symbols}
        program = lower(derivation, outputs, symbols)
    if len(program.statements) > SHOW_MAX_STATEMENTS:
        return _program_pieces(program, output, getattr(grads, "rename", None))
    named, candidates = piece_names(program)
    definitions = {s.target: s.operation for s in program.statements}

    memo: dict = {}

    def expand(e, top=False):
        # each distinct piece once: an unnamed piece used twice is not expanded twice
        key = (e, top)
        if key not in memo:
            memo[key] = expand_once(e, top)
        return memo[key]

    def expand_once(e, top):
        if not top and e in named:
            return sp.Symbol(named[e]) if not isinstance(e, MatrixExpr) else \
                sp.MatrixSymbol(named[e], *e.shape)
        if e in definitions:
            return expand(definitions[e], top=False) if not top else expand(definitions[e])
        if isinstance(e, ops.Map):
            return ops.Map(e.function, e.shape, *[expand(o) for o in e.operands])
        if isinstance(e, sp.Transpose):
            # (a Map)^T reads better as the Map of transposed operands
            return Canonicalizer()._transpose(expand(e.arg))
        if isinstance(e, sp.Basic) and e.args and not isinstance(e, (sp.MatrixSymbol, sp.Lambda)):
            args = [expand(a) if isinstance(a, sp.Basic) else a for a in e.args]
            # (a sum's statement in the code's order is the sum in a formula)
            result = built(sp.Add if type(e) is OrderedSum else e.func, args)
            if isinstance(result, sp.Expr) and not isinstance(result, MatrixExpr):
                return _smallest(result)
            return result
        return e

    pieces = [(named[t], expand(definitions[t])) for t, _ in candidates]
    lines = [(f"d{output}/d{name}", expand(atom, top=atom not in named))
             for name, atom in program.outputs.items()]
    if any(_tree_size(e, SHOW_MAX_NODES) > SHOW_MAX_NODES for _, e in pieces + lines):
        # formulas whose printed trees would repeat unnamed pieces many times
        return _program_pieces(program, output, getattr(grads, "rename", None))
    return pieces, lines, named


# A program longer than this is shown step by step (each statement once, named), not as
# formulas: expanding the unnamed pieces back into formulas costs more than linear time, and
# formulas of thousands of terms are no easier to read than the steps.
SHOW_MAX_STATEMENTS = 120
# ... and so is a program whose formulas would print as trees of more nodes than this.
SHOW_MAX_NODES = 600


def _program_pieces(program, output: str, rename=None):
    """Every statement of the program as a named piece (``t12 = t11 + cos(x3)``), in order:
    linear in the program's size, each line as shallow as one operation; ``rename``, where
    given, renames a statement's operation when its piece is made (to the user's symbols)."""
    taken = {str(s) for s in program.inputs}
    prefix = "t"
    while any(name.startswith(prefix) and name[len(prefix):].isdigit() for name in taken):
        prefix = "_" + prefix
    named = dict(piece_names(program)[0])
    names = {}
    for k, statement in enumerate(program.statements):
        label = named.get(statement.target, f"{prefix}{k}")
        names[statement.target] = label
    pieces = _Steps(program.statements, names, rename)
    lines = [(f"d{output}/d{name}", _named_operands(atom, names))
             for name, atom in program.outputs.items()]
    return pieces, lines, names


class _Steps(Sequence):
    """The statements of a program as ``(name, operation over display names)`` pieces, each
    made when it is read: a docstring shows the first and last steps of a long program only,
    and naming the operands of thousands of steps it does not show is most of its cost.

    >>> x = sp.Symbol("x")
    >>> t0, t1 = sp.symbols("_t0 _t1")
    >>> from symgrad.codegen.ir import Statement
    >>> steps = _Steps([Statement(t0, sp.sin(x)), Statement(t1, 2 * t0)], {t0: "a", t1: "b"})
    >>> len(steps), steps[-1], steps[:1]
    (2, ('b', 2*a), [('a', sin(x))])
    """

    def __init__(self, statements: list, names: dict, rename=None):
        self._statements = statements
        self._names = names
        self._rename = rename

    def __len__(self) -> int:
        return len(self._statements)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._piece(s) for s in self._statements[index]]
        return self._piece(self._statements[index])

    def __add__(self, other) -> list:
        return list(self) + list(other)

    def _piece(self, statement) -> tuple:
        operation = statement.operation
        if self._rename is not None:
            operation = self._rename(operation)
        return (self._names[statement.target], _named_operands(operation, self._names))


def _named_operands(operation, names: dict):
    """The operation with each program name replaced by a symbol of its display name."""
    substitution = {}
    for symbol in _symbols_of(operation):
        if symbol in names:
            substitution[symbol] = sp.MatrixSymbol(names[symbol], *symbol.shape) \
                if isinstance(symbol, MatrixExpr) else sp.Symbol(names[symbol])
    if not substitution:
        return operation
    if type(operation) is OrderedSum:
        # term by term, as written (a product c*x rebuilt by SymPy would deduce its facts
        # anew, and the sum be sorted)
        return OrderedSum(*[
            unevaluated(sp.Mul, [t.args[0], substitution.get(t.args[1], t.args[1])])
            if type(t) is sp.Mul else substitution.get(t, t) for t in operation.args])
    return replaced(operation, substitution)


def _symbols_of(operation) -> list:
    if isinstance(operation, (sp.Symbol, sp.MatrixSymbol)):
        return [operation]
    if isinstance(operation, ops.Map):
        return [o for a in operation.operands for o in _symbols_of(a)]
    if not isinstance(operation, sp.Basic) or isinstance(operation, sp.Lambda):
        return []
    return [o for a in operation.args for o in _symbols_of(a)]


def _label(w) -> str:
    return w.name if hasattr(w, "name") else str(w)


def _operands(operation):
    if isinstance(operation, ops.Map):
        return list(operation.operands)
    out = []
    for a in getattr(operation, "args", ()):
        if isinstance(a, sp.Transpose):
            out.append(a.arg)
        elif isinstance(a, (sp.Symbol, sp.MatrixSymbol)):
            out.append(a)
        elif isinstance(a, sp.Basic) and not isinstance(a, sp.Lambda):
            out.extend(_operands(a))
    return out


def _worth_naming(operation) -> bool:
    if isinstance(operation, ops.Map):
        return operation.body not in operation.function.variables
    if isinstance(operation, MatrixExpr):
        return True
    if one_operation(operation):
        # count_ops is 1 by its form: a function of a name, or arithmetic of names and numbers
        return bool(operation.is_Function)
    return sp.count_ops(operation) >= 2 or bool(operation.atoms(sp.Function))


def _kind(operation) -> str:
    if isinstance(operation, ops.Map) and operation.body.atoms(sp.Function):
        return "h"
    return "z" if isinstance(operation, MatrixExpr) else "v"


def _show_lines(grads, output: str, keep: int | None = None) -> list[str]:
    """The lines of show(grads); with ``keep``, a longer list is cut to its first and last
    ``keep`` lines around one that says how many were left out (only those are printed)."""
    pieces, lines, names = _pieces(grads, output)
    printer = FormulaPrinter(aliases=_aliases(grads))
    total = len(pieces) + len(lines)
    left_out = []
    if keep is not None and total > 2 * keep + 1:
        # only the lines shown are made (the pieces of a long program are made when read)
        left_out = [f"... ({total - 2 * keep} more steps)"]
        head, tail = _items(pieces, lines, 0, keep), _items(pieces, lines, total - keep, total)
    else:
        head, tail = _items(pieces, lines, 0, total), []
    defined = set(names.values())     # (the pieces' names, without making the pieces)

    def written(items) -> list[str]:
        # a piece the user named that a formula reads by that name without a line of its
        # own (sigmoid(Z2), computed inside dZ2's loop, printed A2) is defined before it
        out = []
        for name, e in items:
            text = _tidy(printer.doprint(e))
            for label, meaning in printer.aliased.items():
                if label not in defined:
                    defined.add(label)
                    out.append(f"{label} = {_tidy(meaning)}")
            out.append(f"{name} = {text}")
        return out

    return written(head) + left_out + written(tail)


def _items(pieces, lines: list, start: int, stop: int) -> list:
    """Items start to stop of pieces followed by lines, reading only those."""
    n = len(pieces)
    return (list(pieces[min(start, n):min(stop, n)])
            + lines[max(start - n, 0):max(stop - n, 0)])


def _aliases(grads) -> dict:
    """Printed forms of the pieces the user named (``sigmoid(Z2)`` -> ``A2``)."""
    derivation = getattr(grads, "derivation", None)
    if derivation is None:
        return {}
    printer = FormulaPrinter()
    return {printer.doprint(expr): label for label, expr in derivation.named.items()}


def _tidy(text: str) -> str:
    return text.replace("+ -", "- ")


# The docstring of a generated module shows at most this many lines of gradient formulas.
DOCSTRING_MAX_LINES = 300
# A model whose expression tree has more nodes than this is not printed whole (its tree
# may be exponentially larger than its DAG): the docstring then shows its size.
DOCSTRING_MAX_NODES = 2000


class Gradients(dict):
    """``{symbol: gradient}`` as SymPy expressions, remembering the derivation they came from
    so that ``sg.show`` can name the shared pieces.  Its notebook display (``_repr_latex_``)
    is symgrad.present.formulas', which adds it on import, as it adds LaTeX to the nodes."""

    derivation: object = None    # a symgrad.derive.reverse.Derivation
    program: object = None       # its lowered program, where sg.compile has it
    rename: object = None        # renames the program's statements, where they are not yet
    # the key -> the symbol it stands for, where they differ: sg.grad keys the gradient of
    # the input q1 by q1(t) when the user passed q1(t)
    symbol_of: dict = {}

    def __str__(self) -> str:
        return "\n".join(_show_lines(self, "f"))


def module_docstring(name: str, expr, wrt, inputs, spec, derivation=None,
                     lowered=None) -> str:
    """The docstring of a generated module: the model and its derived formulas.

    ``derivation`` is the derivation of the module's model in symgrad's own symbols (the one
    ``spec`` was built from): its formulas are shown in the user's symbols without deriving
    again; ``lowered``, its program for the value and every gradient (before fusion), gives
    them without lowering again.
    """
    from symgrad.derive.graph import dag_nodes  # (the model's walk that normalize kept)
    from symgrad.derive.reverse import derive

    printer = FormulaPrinter()
    described = []
    parameters = set(wrt)
    for s, ours in zip(inputs, spec.inputs):
        role = "parameter" if s in parameters else "input"
        shape = f" ({s.shape[0]} x {s.shape[1]})" if isinstance(s, MatrixExpr) else " (scalar)"
        described.append(f"    {s.name}{shape}, {role}; in the code: {ours.name}")
    dims = sorted((d for d in spec.public if d.name.startswith("dim_")), key=lambda d: d.name)
    if dims:
        described.append("  Dimensions in the code: " + ", ".join(
            f"{d.name} = {spec.public[d]}" for d in dims))
    value = None
    if _tree_size(expr, DOCSTRING_MAX_NODES) <= DOCSTRING_MAX_NODES:
        try:
            value = _tidy(printer.doprint(expr))
        except RecursionError:      # a narrow but very deep expression
            value = None
    if value is None:
        value = (f"(an expression of more than {DOCSTRING_MAX_NODES} nodes as a tree, or too "
                 f"deep to print; {len(dag_nodes(expr))} distinct subexpressions)")
    text = [f"{name}: generated by symgrad.", "", "Inputs:", *described, "",
            f"Value:\n    {name} = {value}"]
    if spec.value_and_grad is not None:
        grads = Gradients({w: None for w in wrt})
        if derivation is None:
            grads.derivation = derive(expr, list(wrt))
        else:
            back = {ours: user for user, ours in spec.internal.items()}
            # with the program lowered already, only the pieces' names are read of the
            # derivation: its statements are not renamed
            grads.derivation = _renamed(derivation, back, statements=lowered is None)
            if lowered is not None:
                grads.program, grads.rename = _renamed_program(lowered, back, spec.parameters)
        lines = "\n".join(_show_lines(grads, name, keep=DOCSTRING_MAX_LINES // 2))
        text += ["", "Gradients (shared pieces named once):"]
        text += ["    " + line for line in lines.splitlines()]
    return "\n".join(text)


def _renamed(derivation, back: dict, statements: bool = True):
    """The derivation with symgrad's symbols replaced by the user's, also in the shapes of its
    names (statement by statement: each is one operation over names, so this is linear in
    the program); without ``statements``, its statements are left out."""
    from dataclasses import replace

    def user(e):
        return replaced(e, back) if isinstance(e, sp.Basic) else e

    return replace(
        derivation,
        wrt=[back.get(w, w) for w in derivation.wrt],
        assignments=[(user(target), user(e)) for target, e in derivation.assignments]
        if statements else [],
        value=user(derivation.value),
        gradients={back.get(w, w): user(g) for w, g in derivation.gradients.items()},
        labels={user(name): label for name, label in derivation.labels.items()},
        adjoints={user(name) for name in derivation.adjoints},
        named={label: user(e) for label, e in derivation.named.items()})


def _renamed_program(program, back: dict, parameters: list):
    """The gradients' part of a lowered program in the user's symbols, its outputs under
    the user's names (statement by statement, as :func:`_renamed`), and None; for a scalar
    program shown step by step (longer than SHOW_MAX_STATEMENTS), its statements as they are
    and the function that renames one: only the steps a docstring shows are renamed.

    >>> from symgrad.codegen.ir import Program, Statement
    >>> ours, t0, t1 = sp.symbols("in_0 _t0 _t1")
    >>> p = Program([ours], [Statement(t0, sp.sin(ours)), Statement(t1, sp.cos(ours))],
    ...             {"value": t0, "in_0": t1})
    >>> w = sp.Symbol("w")
    >>> renamed, rename = _renamed_program(p, {ours: w}, [ours])
    >>> renamed.statements, rename
    ([Statement(target=_t1, operation=cos(w))], None)
    """
    from symgrad.codegen.ir import Program, Statement
    from symgrad.derive.graph import dag_xreplace
    from symgrad.optimize import restricted

    def user(e):
        # each of symgrad's symbols back to the user's, which has the same assumptions: the
        # statements are renamed, not evaluated again (SymPy's flattening of each)
        if type(e) is sp.Symbol:        # (a statement's target: what the walk gives too)
            return back.get(e, e)
        return dag_xreplace(e, back, renaming=True) if isinstance(e, sp.Basic) else e

    program = restricted(program, [w.name for w in parameters])
    # a scalar statement's target is one of symgrad's names, which renaming leaves as it is
    # (a matrix target's shape may hold the user's dimensions)
    shown_by_steps = (len(program.statements) > SHOW_MAX_STATEMENTS
                      and not any(s.is_matrix for s in program.statements))
    statements = program.statements if shown_by_steps else [
        Statement(user(s.target), user(s.operation)) for s in program.statements]
    renamed = Program(
        inputs=[back.get(s, s) for s in program.inputs],
        statements=statements,
        outputs={back[w].name: user(program.outputs[w.name]) for w in parameters},
        labels={user(t): label for t, label in program.labels.items()},
        adjoints={user(t) for t in program.adjoints})
    return renamed, (user if shown_by_steps else None)


def _tree_size(expr, limit: int) -> int:
    """The number of nodes of expr as a tree, counted up to just past ``limit``."""
    count, stack = 0, [expr]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, sp.Basic):
            stack.extend(node.args)
    return count


def _install_printing() -> None:
    """str() of symgrad's nodes uses the formula printer (LaTeX is symgrad.present.formulas'):
    the operations of symgrad/operations/ print by their ``text`` hook, the other nodes by a
    method of the printer."""
    def printer_for(printer):
        return printer if isinstance(printer, FormulaPrinter) else FormulaPrinter()

    ops.Map._sympystr = lambda self, printer: printer_for(printer)._print_Map(self)
    for cls, operation in operations.OPERATIONS.items():
        if cls.__module__.partition(".")[0] == "symgrad":    # SymPy's own print as SymPy's
            cls._sympystr = (lambda text: lambda self, printer: text(
                self, printer_for(printer)))(operation.text)


_install_printing()
