"""From a derivation to an optimized :class:`~symgrad.codegen.ir.Program`.

* **Flattening with value numbering** (common-subexpression elimination): every compound
  subexpression becomes one statement whose operands are atoms; an operation already computed
  with the same operands is not computed again, whether it came from the forward pass or from
  a rule's output (a sigmoid's ``1 - y`` is shared, the two identical adjoints of ``W x`` and
  ``b`` become one).
* **Copy propagation**: an adjoint that only passes its upstream gradient on is that gradient.
* **Constant folding**: SymPy folds numbers as operations are rebuilt on atoms.
* **Dead-code removal**: statements no output needs are dropped (the forward program keeps
  only what the value needs).

Canonical forms (transposes on symbols, OneMatrix products as sums, chain order) were already
chosen when the graph was built (``derive/graph.py``).
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

from symgrad import operations, ops
from symgrad.codegen.factor import share_factorisations
from symgrad.codegen.ir import (
    OrderedSum,
    Program,
    Statement,
    live_statements,
    signed_term,
    symbols_in,
)
from symgrad.derive.graph import children, with_children
from symgrad.derive.reverse import Derivation
from symgrad.nodes import (
    add,
    built,
    dag_rebuild,
    eval_keeps,
    function_of,
    mul,
    real_symbol,
    replaced,
)

_CONSTANT_MATRICES = (sp.Identity, sp.ZeroMatrix, sp.OneMatrix)

# The terms of one statement of a long sum (see _Flattener._chain)
ORDERED_SUM_TERMS = 16


def is_atom(e) -> bool:
    """Operands a statement may use directly."""
    kind = type(e)
    if kind is sp.Symbol:           # (most operands: the names of the program)
        return True
    by_args = _NUMBER_BY_ARGS.get(kind)
    if by_args is None:
        by_args = _NUMBER_BY_ARGS[kind] = _is_number_by_args(kind)
    if by_args:
        # (most operations: one that reads a name is no number, so no atom)
        for a in e.args:
            if type(a) is sp.Symbol:
                return False
    if isinstance(e, (sp.MatrixSymbol, *_CONSTANT_MATRICES)):
        return True
    if isinstance(e, sp.Transpose) and isinstance(e.arg, sp.MatrixSymbol):
        return True
    if isinstance(e, MatrixExpr):
        return False
    return isinstance(e, sp.Basic) and (e.is_Atom or (e.is_number and not e.atoms(sp.Function)
                                                      and not isinstance(e, MatrixElement)))


def _is_number_by_args(kind) -> bool:
    """Whether an expression of this kind is a number exactly when all its args are (SymPy's
    own ``Expr.is_number``): one that reads a name is then no number, whatever else it
    reads."""
    return (issubclass(kind, sp.Expr) and not issubclass(kind, MatrixExpr)
            and not kind.is_Atom and kind.is_number is _EXPR_IS_NUMBER)


_EXPR_IS_NUMBER = sp.Expr.__dict__["is_number"]
_NUMBER_BY_ARGS: dict = {}      # kind of expression -> _is_number_by_args(kind)


class _Flattener:
    """Rewrites expressions into statements over atoms, each distinct operation once."""

    def __init__(self):
        self.statements: list[Statement] = []
        self.table: dict = {}
        self.negations: dict = {}       # target of -a -> a
        # the sum or product renamed_atom has just built as SymPy evaluates it (see _chain)
        self._evaluated = None

    def atom(self, e):
        if is_atom(e):
            return e
        return self._named(self._operation(e))

    def renamed_atom(self, e, names: dict):
        """``atom(_substituted(e, names))``: the atom of e with its names replaced by
        theirs.  An operation over names and numbers (most statements of a derivation) is
        built once where :meth:`_renamed_operation` can, not once renamed and once more by
        :meth:`_operation` over the same atoms (with its checks of every kind on the way: a
        third of the cost of lowering such a statement)."""
        operation = self._renamed_operation(e, names)
        if operation is not None:
            return self._named(operation)
        if type(e) is sp.Add and len(e.args) > 2:
            terms = self._renamed_terms(e, names)
            if terms is not None:
                return self._named(self._ordered_sum(terms))
        renamed = _substituted(e, names)
        if renamed is not e and (type(renamed) is sp.Add or type(renamed) is sp.Mul):
            self._evaluated = renamed       # (rebuilt by _built: in SymPy's form)
        return self.atom(renamed)

    def _renamed_operation(self, e, names: dict):
        """The operation that ``atom(_substituted(e, names))`` names, built once, where e is
        a sum of two terms that subtracts neither, a product of two factors, a power, or a
        function that is not a registered operation, of names and numbers, and SymPy builds
        it over exactly the renamed operands, at least one of them a name (it folds
        nothing; a sum or a product at most orders them): :meth:`_operation` would build
        the same again from them.  None for any other e."""
        kind = type(e)
        if kind is sp.Add or kind is sp.Mul:
            if len(e.args) != 2:
                return None     # (a longer sum or product is a chain)
        elif not (kind is sp.Pow or (issubclass(kind, sp.Function) and kind is not sp.Piecewise
                                     and operations.of(e) is None)):
            return None
        operands = []
        for a in e.args:
            if a.args:
                return None
            a = names.get(a, a)
            if not is_atom(a) or (kind is sp.Add and a in self.negations):
                return None     # (a difference: _operation's own)
            operands.append(a)
        if not any(type(a) is sp.Symbol for a in operands):
            return None         # (an operation on numbers alone may be an atom)
        operation = _built(kind, operands)
        operands = tuple(operands)
        if type(operation) is kind and (operation.args == operands or (
                (kind is sp.Add or kind is sp.Mul) and operation.args == operands[::-1])):
            return operation
        return None

    def _named(self, operation):
        """The atom of an operation over atoms: itself if it folded to one, else the target
        of its statement (a new one the first time)."""
        if is_atom(operation):
            return operation
        target = self.table.get(operation)
        if target is not None:
            return target
        k = len(self.statements)
        if isinstance(operation, MatrixExpr):
            target = sp.MatrixSymbol(f"_t{k}", *operation.shape)
        else:
            target = real_symbol(f"_t{k}")
        self.statements.append(Statement(target, operation))
        self.table[operation] = target
        if (isinstance(operation, sp.Mul) and len(operation.args) == 2
                and operation.args[0] == -1):
            self.negations[target] = operation.args[1]
        return target

    def _term(self, e):
        """A term of a sum as an atom, or as the negation of one: the sum subtracts it
        instead of adding a negated copy (a negation that nothing else reads is then dead)."""
        if isinstance(e, sp.Mul) and len(e.args) == 2 and e.args[0] == -1:
            return _negated(self.atom(e.args[1]))
        term = self.atom(e)
        negated = self.negations.get(term)
        return term if negated is None else _negated(negated)

    def _renamed_terms(self, e, names: dict):
        """The terms of the sum e (of a derivation: a gradient's sum of contributions, a sum
        of the model's terms) with its names replaced by theirs, as an :class:`OrderedSum`
        takes them, in e's order, without building the renamed sum: SymPy's form of it
        would be sorted again (n log n comparisons of terms) only to be cut into a chain.
        None where a term is not a name, a negated name or an integer or float times a
        name, or where two terms read one atom (SymPy would combine them)."""
        terms, seen = [], set()
        for a in e.args:
            if not a.args:
                atom = names.get(a, a)
                if not is_atom(atom):
                    return None
                term = self._term(atom)
            elif type(a) is sp.Mul and len(a.args) == 2 and not a.args[1].args:
                coefficient, atom = a.args[0], names.get(a.args[1], a.args[1])
                if type(atom) is not sp.Symbol or not (coefficient.is_Integer
                                                       or coefficient.is_Float):
                    return None
                term = (self._term(_negated(atom)) if coefficient is sp.S.NegativeOne
                        else self._sum_term(mul(coefficient, atom)))
            else:
                return None
            if atom in seen:
                return None
            seen.add(atom)
            terms.append(term)
        return terms

    def _ordered_sum(self, terms: list):
        """The sum of the terms, left to right, ``ORDERED_SUM_TERMS`` a statement: the
        statements of all but the last stretch, and the last stretch's OrderedSum.  A term
        added, not subtracted, goes first where there is one (``b - a``, not ``-a + b``)."""
        first = next((k for k, t in enumerate(terms) if not signed_term(t)[0]), 0)
        if first:
            terms = [terms[first]] + terms[:first] + terms[first + 1:]
        while len(terms) > ORDERED_SUM_TERMS:
            head = self._named(OrderedSum(*terms[:ORDERED_SUM_TERMS]))
            terms = [head] + terms[ORDERED_SUM_TERMS:]
        return OrderedSum(*terms)

    def _sum_term(self, e):
        """A term of an :class:`OrderedSum`: an integer or float times an atom that no
        statement computes yet stays in the sum (a statement less per term: the terms of
        a gradient are mostly such), anything else as :meth:`_term` gives it."""
        if type(e) is sp.Mul and len(e.args) == 2:
            coefficient, atom = e.args
            if ((coefficient.is_Integer or coefficient.is_Float) and type(atom) is sp.Symbol
                    and coefficient is not sp.S.NegativeOne and e not in self.table):
                return e
        return self._term(e)

    def _operation(self, e):
        """e as one operation over atoms (its operands flattened first)."""
        kind = type(e)
        if (kind is sp.Mul or kind is sp.Pow) and len(e.args) == 2:
            # (most operations, the terms of long sums among them: what the general path
            # below does with them, without its checks of every other kind first)
            a, b = e.args
            if kind is sp.Pow or not _is_reciprocal(b) or _is_reciprocal(a):
                return _built(kind, (self.atom(a), self.atom(b)))
        if isinstance(e, ops.Map):
            operands = [self.atom(o) for o in e.operands]
            return _normalized_map(e.function, e.shape, operands)
        if isinstance(e, sp.Mul) and len(e.args) > 2 and e.args[0] == -1:
            # -a b is the negation of a b, which a sum then subtracts
            return _negated(self.atom(mul(*e.args[1:])))
        if isinstance(e, (sp.Add, sp.Mul)) and len(e.args) > 2:
            return self._chain(e)
        if isinstance(e, sp.Add):
            # x - y is one subtraction, not a negation and an addition
            a, b = e.args
            return add(self._term(a), self._term(b))
        if isinstance(e, sp.Mul) and len(e.args) == 2:
            a, b = e.args
            if _is_reciprocal(b) and not _is_reciprocal(a):   # a / b is one operation
                return sp.Mul(self.atom(a), sp.Pow(self.atom(b.base), -1, evaluate=False),
                              evaluate=False)
        if isinstance(e, sp.MatMul) and len(e.args) > 2:
            head = self.atom(sp.MatMul(*e.args[:-1]))
            return sp.MatMul(head, self.atom(e.args[-1]))
        if isinstance(e, sp.Transpose):
            inner = self.atom(e.arg)
            return sp.Transpose(inner) if not isinstance(inner, sp.Transpose) else inner.arg
        if operations.label_of(e) is not None:    # a name changes nothing in the code
            return self.atom(e.arg)
        return with_children(e, [self.atom(c) for c in children(e)], _evaluated)

    def _chain(self, e):
        """An n-ary sum or product as a sequence of statements, left to right.

        A product is a chain of binary operations: ``head * a_n`` whose head is the
        statement of ``a_1 ... a_{n-1}``, and so on down to ``a_1 a_2``.  A sum is the same
        chain written ``ORDERED_SUM_TERMS`` terms a statement (:class:`OrderedSum`, added
        left to right: the same value to the last bit, a statement per 15 terms instead of
        per term; the gradients of a sum of 10,000 terms are 20,000 additions).

        The prefixes of an evaluated sum's (or product's) arguments are sums in SymPy's
        form already (sorted, like terms combined), so they are not built and evaluated
        again: that costs O(n) per prefix, O(n^2) for the chain, and a recursion per prefix
        (a sum of 3,000 terms would exhaust Python's stack).  The first two arguments are
        evaluated as before (SymPy distributes 2 (x + y)), and so is a prefix of numbers
        only (an atom of its own, such as 1 + sqrt(2)).  Arguments SymPy may combine in
        other ways (non-commutative, infinite, a sum built unevaluated) take the general
        path.
        """
        args, func = e.args, e.func
        operand = self._term if func is sp.Add else self.atom
        if (not all(a.is_commutative for a in args)
                or (args[0].is_Number and not args[0].is_finite)
                # (a sum SymPy has just evaluated is in its form: a sum of 10,000 terms
                # need not be built again to find that out)
                or (e is not self._evaluated and _built(func, args).args != args)):
            head = self.atom(_built(func, args[:-1]))
            return _built(func, (head, operand(args[-1])))
        head = self.atom(_built(func, args[:2]))
        k = 2
        numbers = all(a.is_number for a in args[:2])
        while k < len(args) - 1 and numbers and args[k].is_number:
            # the prefix is a number: an atom, or one operation, as SymPy has it
            head = self.atom(_built(func, args[:k + 1]))
            k += 1
        if func is sp.Mul:
            for factor in args[k:-1]:
                head = self._named(_built(func, (head, operand(factor))))
            return _built(func, (head, operand(args[-1])))
        terms = [self._sum_term(a) for a in args[k:]]
        if len(terms) == 1:
            return _built(func, (head, terms[0]))
        return self._ordered_sum([head] + terms)


def _evaluated(node, args):
    """A plain node over atoms, as SymPy builds it."""
    return _built(node.func, args)


def _built(func, args):
    """``func(*args)`` as SymPy evaluates it; sums and products by :func:`symgrad.nodes.add`
    and :func:`~symgrad.nodes.mul`, the same expressions without SymPy's flattening where it
    would only sort them."""
    if func is sp.Add:
        return add(*args)
    if func is sp.Mul:
        return mul(*args)
    if len(args) == 1 and type(args[0]) is sp.Symbol and eval_keeps(func, args[0]):
        return function_of(func, args)
    return built(func, args)


def _negated(e):
    """``-e``, as SymPy's ``__neg__`` builds it (``Mul(-1, e)``)."""
    return mul(sp.S.NegativeOne, e) if isinstance(e, sp.Expr) and not e.is_Number else -e


def _substituted(e, table: dict):
    """``e.xreplace(table)``: each node rebuilt (once, without recursion) where a name of
    the table is in it, sums and products as :func:`_built` builds them.

    >>> x, t = sp.symbols("x _t1")
    >>> _substituted(2 * t + sp.cos(t), {t: x}) == (2 * t + sp.cos(t)).xreplace({t: x})
    True
    """
    def visit(node, new):
        if not new:
            return table.get(node, node)
        if all(n is o for n, o in zip(new, node.args)):
            return node
        return _built(node.func, new)

    if not isinstance(e, sp.Basic):
        return e
    if e in table:
        return table[e]
    if e.args and not any(a.args for a in e.args):
        # an operation over names and numbers (most statements of a derivation): one level
        return visit(e, [table.get(a, a) for a in e.args])
    return dag_rebuild(e, visit, operands=lambda node: () if node in table else node.args)


def _is_reciprocal(e) -> bool:
    return isinstance(e, sp.Pow) and e.exp == -1


def _normalized_map(function: sp.Lambda, shape, operands):
    """The Map with variables renamed _v0, _v1, ... and repeated operands merged, so that equal
    elementwise operations compare equal."""
    variables, unique = [], []
    substitution = {}
    for v, o in zip(function.variables, operands):
        if not isinstance(o, MatrixExpr) and o.is_number:
            substitution[v] = o
            continue
        if o in unique:
            substitution[v] = variables[unique.index(o)]
            continue
        fresh = sp.Symbol(f"_v{len(variables)}", real=True)
        variables.append(fresh)
        unique.append(o)
        substitution[v] = fresh
    body = replaced(function.expr, substitution)
    used = body.free_symbols
    kept = [(v, o) for v, o in zip(variables, unique) if v in used]
    if not kept:
        # a constant: broadcast a number
        fresh = sp.Symbol("_v0", real=True)
        return ops.Map(sp.Lambda((fresh,), fresh), shape, body)
    renamed = {v: sp.Symbol(f"_v{i}", real=True) for i, (v, _) in enumerate(kept)}
    body = replaced(body, renamed)
    return ops.Map(sp.Lambda(tuple(renamed.values()), body), shape, *[o for _, o in kept])


def lower(derivation: Derivation, outputs: dict, inputs: list,
          renamed: dict | None = None) -> Program:
    """Flatten, share and prune the derivation's statements for the given outputs.

    ``outputs`` maps an output name (``"value"``, a parameter's name) to an expression of the
    derivation's names; ``renamed``, symbols of the derivation (the user's inputs) to the
    program's own (``inputs``).
    """
    flat = _Flattener()
    resolved: dict = dict(renamed or {})
    labels: dict = {}
    adjoints: set = set()
    for name, expression in derivation.assignments:
        atom = flat.renamed_atom(expression, resolved)
        resolved[name] = atom
        if name in derivation.labels and atom not in labels and not atom.is_number:
            labels[atom] = derivation.labels[name]
        if name in derivation.adjoints:
            adjoints.add(atom)
    program_outputs = {}
    for output_name, expression in outputs.items():
        program_outputs[output_name] = flat.atom(_substituted(sp.sympify(expression),
                                                              resolved))
    whole = Program(inputs=list(inputs), statements=flat.statements, outputs=program_outputs,
                    labels=labels, adjoints=adjoints, names=resolved)
    return restricted(whole, list(program_outputs))


def restricted(program: Program, outputs: list) -> Program:
    """The program for some of its outputs only: the statements they depend on, in order.

    Lowering flattens every statement of a derivation whatever the outputs, so lowering
    once for all outputs and restricting gives, for each output set, the very program
    that lowering for it alone gives (the same statements, the same names).

    >>> x = sp.Symbol("x")
    >>> t0, t1 = sp.symbols("_t0 _t1")
    >>> p = Program([x], [Statement(t0, sp.sin(x)), Statement(t1, sp.cos(x))], {"a": t0, "b": t1})
    >>> [str(s.target) for s in restricted(p, ["b"]).statements]
    ['_t1']
    """
    kept_outputs = {name: program.outputs[name] for name in outputs}
    statements = live_statements(program.statements, kept_outputs.values())
    kept = {s.target for s in statements}
    return Program(inputs=program.inputs, statements=statements, outputs=kept_outputs,
                   labels={t: label for t, label in program.labels.items() if t in kept},
                   adjoints={a for a in program.adjoints if a in kept}, names=program.names)


# ------------------------------------------------------------------------------------------
# Loop fusion (for code generation; printed formulas keep their named pieces)
# ------------------------------------------------------------------------------------------
def fuse(program: Program) -> Program:
    """Merge elementwise work into fewer loops.

    * a product with inner dimension 1 (an outer product ``delta x^T``) becomes a Map of a
      column and a row, so it can fuse like any elementwise operation;
    * a Map used once, by another Map of the same shape, is inlined into it (no temporary
      matrix is written and read back).

    Reductions of a Map are fused into the Map's loop by the emitter.  Inverses and
    determinants first share one factorisation per matrix (codegen/factor.py).
    """
    program = share_factorisations(program)
    if not any(s.is_matrix for s in program.statements):
        # no matrix, nothing to fuse (a scalar model of 20,000 statements: 0.5 s of counting)
        return Program(inputs=program.inputs, statements=list(program.statements),
                       outputs=program.outputs, labels=program.labels,
                       adjoints=program.adjoints)
    statements = [Statement(s.target, _outer_product_as_map(s.operation))
                  for s in program.statements]
    uses: dict = {}
    for s in statements:
        for operand in _operands_of(s.operation):
            uses[operand] = uses.get(operand, 0) + 1
    for atom in program.outputs.values():
        for symbol in symbols_in(atom):
            uses[symbol] = uses.get(symbol, 0) + 2      # an output is always kept
    definitions = {s.target: s for s in statements}
    inlined: set = set()
    result = []
    for s in statements:
        operation = s.operation
        if isinstance(operation, ops.Map):
            operation = _inline_single_use(operation, definitions, uses, inlined)
        # a later consumer inlines this Map as it is now, with what it inlined itself
        definitions[s.target] = Statement(s.target, operation)
        result.append(definitions[s.target])
    kept = [s for s in result if s.target not in inlined]
    return Program(inputs=program.inputs, statements=kept, outputs=program.outputs,
                   labels=program.labels, adjoints=program.adjoints)


def _outer_product_as_map(operation):
    if isinstance(operation, sp.MatMul) and operation.args[0].shape[1] == 1:
        a, b = operation.args
        x, y = sp.symbols("_v0 _v1", real=True)
        return ops.Map(sp.Lambda((x, y), x * y), operation.shape, a, b)
    return operation


def _operands_of(operation) -> list:
    """The program names an operation reads (a transposed name counts as its name)."""
    return sorted(symbols_in(operation), key=str)


def _inline_single_use(operation: ops.Map, definitions: dict, uses: dict, inlined: set):
    substitution, operands, variables = {}, [], []
    for v, operand in zip(operation.function.variables, operation.operands):
        producer = definitions.get(operand)
        # read once by the program, and once by this Map: as itself, not also transposed
        # (X + X^T reads X twice in one statement)
        if (producer is not None and isinstance(producer.operation, ops.Map)
                and uses.get(operand, 0) == 1
                and sum(operand in symbols_in(o) for o in operation.operands) == 1
                and tuple(producer.operation.shape) == tuple(operation.shape)):
            inner = {iv: _variable_for(io, operands, variables)
                     for iv, io in zip(producer.operation.function.variables,
                                       producer.operation.operands)}
            substitution[v] = replaced(producer.operation.body, inner)
            inlined.add(operand)
        else:
            substitution[v] = _variable_for(operand, operands, variables)
    body = replaced(operation.body, substitution)
    if not inlined.intersection(operation.operands):
        return operation
    return _normalized_map(sp.Lambda(tuple(variables), body), operation.shape, operands)


def _variable_for(operand, operands: list, variables: list):
    if operand in operands:
        return variables[operands.index(operand)]
    fresh = sp.Symbol(f"_f{len(variables)}", real=True)
    operands.append(operand)
    variables.append(fresh)
    return fresh
