"""One factorisation per matrix: inverses, solves and determinants share it.

A program (``codegen/ir.py``) may hold, for one matrix ``K``, ``inv(K)``, ``inv(K^T)`` (the
rules of ``det`` and ``logdet`` give ``inv(K)^T``, which SymPy writes ``inv(K^T)``), ``det K``,
``logdet K`` and products with the inverse.  :func:`share_factorisations` rewrites them, for
code only (printed formulas keep ``K^-1``):

* each matrix that is inverted or whose determinant is taken gets **one factorisation**
  statement, ``F = Factorisation(K, symmetric)``; ``logdet K``, ``det K`` and ``inv(K)``
  read it (``FactorLogDet``, ``FactorDet``, ``FactorInverse``), and ``inv(K^T)`` is the
  transpose of ``inv(K)`` (``inv(K)`` itself when ``K`` is symmetric by construction);
* an inverse that **only multiplies** (``inv(K) @ y``, ``y^T inv(K)``, also transposed)
  becomes solves with the factor (``FactorSolve``) and the inverse is never formed;
* a product with a **rank-one** matrix is reassociated first: ``A (u v^T)`` is ``(A u) v^T``
  and ``(u v^T) B`` is ``u (v^T B)`` (the gradient of ``y^T K^-1 y`` is
  ``-K^-T y y^T K^-T``: two matrix-vector products, not two matrix products).

Which factorisation (``codegen/linalg_runtime.py``, at run time): Cholesky when ``K`` is
symmetric, LU with partial pivoting otherwise or where the Cholesky fails.  ``K`` is
**symmetric by construction** (decided here, from the program) when it is

* the identity (or a square matrix of ones or zeros),
* ``B B^T`` or ``B^T B`` (a product of a matrix with its own transpose),
* the inverse or transpose of a symmetric matrix,
* an elementwise function (a Map) that is unchanged when its symmetric operands stay and
  every other operand is swapped with its transpose: ``s I + c exp(-D / (2 l^2))`` with
  ``D = r 1^T + 1 r^T - 2 X X^T`` (a kernel matrix built from the data, ``r`` the row sums
  of ``X o X``), ``A A^T + s I``, ``exp(-(B B^T))``.

A matrix given as an input (a precomputed kernel or distance matrix) is not symmetric by
construction; it gets a Cholesky when it is exactly symmetric at run time (every entry
equal to its mirror).  Positive definiteness is never assumed from the construction: the
Cholesky factorisation tests it (it fails on a matrix that is not numerically positive
definite, such as a kernel matrix without noise), and LU takes over.
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symgrad import operations, ops
from symgrad.codegen.ir import Program, Statement, live_statements, symbols_in
from symgrad.nodes import replaced


class Factorisation(MatrixExpr):
    """The factor of a square matrix (a Cholesky or an LU factor, chosen at run time);
    ``symmetric``: the matrix is symmetric by construction."""

    def __new__(cls, matrix, symmetric):
        return super().__new__(cls, matrix, sp.Integer(bool(symmetric)))

    @property
    def arg(self):
        return self.args[0]

    @property
    def symmetric(self) -> bool:
        return bool(self.args[1])

    @property
    def shape(self):
        return self.arg.shape


class FactorInverse(MatrixExpr):
    """The inverse of the matrix whose factor is ``F``."""

    def __new__(cls, factor):
        return super().__new__(cls, factor)

    @property
    def arg(self):
        return self.args[0]

    @property
    def shape(self):
        return self.arg.shape


class FactorSolve(MatrixExpr):
    """``K^-1 B`` (``K^-T B`` if transposed) from the factor ``F`` of ``K``; with
    ``right``, ``B K^-1`` (``B K^-T``)."""

    def __new__(cls, factor, rhs, transposed=False, right=False):
        return super().__new__(cls, factor, rhs, sp.Integer(bool(transposed)),
                               sp.Integer(bool(right)))

    @property
    def factor(self):
        return self.args[0]

    @property
    def rhs(self):
        return self.args[1]

    @property
    def transposed(self) -> bool:
        return bool(self.args[2])

    @property
    def right(self) -> bool:
        return bool(self.args[3])

    @property
    def shape(self):
        return self.rhs.shape


class FactorLogDet(sp.Expr):
    """log det K from the factor of K (NaN where det K is not positive)."""

    is_real = True

    @property
    def arg(self):
        return self.args[0]


class FactorDet(sp.Expr):
    """det K from the factor of K."""

    is_real = True

    @property
    def arg(self):
        return self.args[0]


# ------------------------------------------------------------------------------------------
# Structure: symmetry by construction, transposes, rank-one matrices
# ------------------------------------------------------------------------------------------
def _transposed(atom):
    """The transpose of a matrix atom, as an atom."""
    if isinstance(atom, sp.Transpose):
        return atom.arg
    if isinstance(atom, (sp.Identity, sp.ZeroMatrix, sp.OneMatrix)):
        return atom.T
    return sp.Transpose(atom)


class _Structure:
    """Facts about a program's matrices read from their definitions."""

    def __init__(self, definitions: dict):
        self.definitions = definitions
        self._symmetric: dict = {}
        self._transposes: dict = {}

    def symmetric(self, atom) -> bool:
        """Whether atom is symmetric by construction (see the module docstring)."""
        if not isinstance(atom, MatrixExpr) or atom.shape[0] != atom.shape[1]:
            return False
        if isinstance(atom, sp.Transpose):
            return self.symmetric(atom.arg)
        if isinstance(atom, (sp.Identity, sp.ZeroMatrix, sp.OneMatrix)):
            return True
        if atom in self._symmetric:
            return self._symmetric[atom]
        self._symmetric[atom] = False         # (a definition never reads itself)
        operation = self.definitions.get(atom)
        result = False
        if isinstance(operation, sp.MatMul) and len(operation.args) == 2:
            result = self.transposes(*operation.args)
        elif isinstance(operation, sp.Transpose) or _role(operation) == "inverse":
            result = self.symmetric(operation.args[0])
        elif isinstance(operation, ops.Map):
            result = self._symmetric_map(operation)
        self._symmetric[atom] = result
        return result

    def _symmetric_map(self, e: ops.Map) -> bool:
        """A Map is symmetric when swapping each operand with its transpose among the
        operands (a symmetric operand with itself) leaves its body as it is."""
        swap = {}
        for v, operand in zip(e.function.variables, e.operands):
            if not isinstance(operand, MatrixExpr) or tuple(operand.shape) == (1, 1):
                continue
            partner = next((w for w, other in zip(e.function.variables, e.operands)
                            if isinstance(other, MatrixExpr)
                            and tuple(other.shape) == tuple(operand.shape)[::-1]
                            and self.transposes(operand, other)), None)
            if partner is None:
                return False
            if partner != v:
                swap[v] = partner
        return replaced(e.body, swap) == e.body

    def transposes(self, a, b) -> bool:
        """Whether b is a^T by construction."""
        if tuple(a.shape) != tuple(b.shape)[::-1]:
            return False
        if b == _transposed(a):
            return True
        if a == b:
            return self.symmetric(a)
        key = (a, b)
        if key in self._transposes:
            return self._transposes[key]
        self._transposes[key] = False
        result = False
        if isinstance(a, sp.Transpose) and isinstance(b, sp.Transpose):
            result = self.transposes(a.arg, b.arg)
        elif isinstance(a, sp.Transpose) or isinstance(b, sp.Transpose):
            result = False          # (b == a^T was tested above)
        else:
            x, y = self.definitions.get(a), self.definitions.get(b)
            if isinstance(x, ops.AxisSum) and isinstance(y, ops.AxisSum):
                result = x.axis != y.axis and self.transposes(x.arg, y.arg)
            elif isinstance(x, sp.MatMul) and isinstance(y, sp.MatMul) \
                    and len(x.args) == len(y.args) == 2:
                result = self.transposes(x.args[0], y.args[1]) \
                    and self.transposes(x.args[1], y.args[0])
            elif isinstance(x, ops.Map) and isinstance(y, ops.Map) \
                    and len(x.operands) == len(y.operands):
                result = all(
                    self.transposes(p, q) if isinstance(p, MatrixExpr) and isinstance(
                        q, MatrixExpr) else p == q
                    for p, q in zip(x.operands, y.operands)) and \
                    replaced(x.body, dict(zip(x.function.variables, y.function.variables))) \
                    == y.body
        self._transposes[key] = result
        return result

    def rank_one(self, atom):
        """(u, v) with atom = u v (u a column, v a row) by construction, or None."""
        if not isinstance(atom, MatrixExpr) or 1 in tuple(atom.shape):
            return None
        if isinstance(atom, sp.Transpose):
            pair = self.rank_one(atom.arg)
            return None if pair is None else (_transposed(pair[1]), _transposed(pair[0]))
        operation = self.definitions.get(atom)
        if isinstance(operation, sp.MatMul) and len(operation.args) == 2 \
                and operation.args[0].shape[1] == 1:
            return operation.args
        return None


def _outer_map(e: ops.Map):
    """A Map that is a product of a column-only factor and a row-only factor:
    (column Map or operand, row Map or operand), else None."""
    rows, cols = e.shape
    if rows == 1 or cols == 1:
        return None
    column, row = [], []
    kind = {}
    for v, operand in zip(e.function.variables, e.operands):
        if not isinstance(operand, MatrixExpr) or tuple(operand.shape) == (1, 1):
            kind[v] = "scalar"
        elif tuple(operand.shape) == (rows, 1):
            kind[v] = "column"
        elif tuple(operand.shape) == (1, cols):
            kind[v] = "row"
        else:
            return None
    factors = sp.Mul.make_args(e.body)
    for factor in factors:
        kinds = {kind[s] for s in factor.free_symbols if s in kind} - {"scalar"}
        if len(kinds) > 1:
            return None
        (row if kinds == {"row"} else column).append(factor)
    if not row or not any(kind[s] == "column" for f in column for s in f.free_symbols
                          if s in kind):
        return None

    def part(factors, shape):
        body = sp.Mul(*factors)
        variables = [v for v in e.function.variables if v in body.free_symbols]
        operands = [o for v, o in zip(e.function.variables, e.operands) if v in variables]
        if body in variables:
            return operands[variables.index(body)]
        return ops.Map(sp.Lambda(tuple(variables), body), shape, *operands)

    return part(column, (rows, 1)), part(row, (1, cols))


# ------------------------------------------------------------------------------------------
# The pass
# ------------------------------------------------------------------------------------------
class _Rewriter:
    def __init__(self, program: Program):
        self.program = program
        self.statements: list[Statement] = []
        self.definitions: dict = {}
        self.structure = _Structure(self.definitions)
        self.count = 0
        self._outer: dict = {}

    def fresh(self, operation, prefix: str):
        """A new statement computing operation, before the one being rewritten."""
        name = f"_{prefix}{self.count}"
        self.count += 1
        if isinstance(operation, MatrixExpr):
            target = sp.MatrixSymbol(name, *operation.shape)
        else:
            target = sp.Symbol(name, real=True)
        self.add(Statement(target, operation))
        return target

    def add(self, statement: Statement) -> None:
        self.statements.append(statement)
        self.definitions[statement.target] = statement.operation

    def outer(self, atom):
        """(u, v) when atom is an outer product u v by construction; a Map that is one gets
        its two factors computed as statements (once)."""
        if atom in self._outer:
            return self._outer[atom]
        self._outer[atom] = pair = self._find_outer(atom)
        return pair

    def _find_outer(self, atom):
        pair = self.structure.rank_one(atom)
        if pair is not None:
            return pair
        stored = atom.arg if isinstance(atom, sp.Transpose) else atom
        operation = self.definitions.get(stored)
        if isinstance(operation, ops.Map):
            parts = _outer_map(operation)
            if parts is not None:
                u, v = (p if not isinstance(p, ops.Map) else self.fresh(p, "r") for p in parts)
                if isinstance(atom, sp.Transpose):
                    return _transposed(v), _transposed(u)
                return u, v
        return None

    def product(self, a, b):
        """a b as an operation, reassociated when a or b has rank one: (u v) b = u (v b),
        a (u v) = (a u) v, which costs (rows + cols) x the other extent, not their product."""
        pair = self.outer(a) if a.shape[1] != 1 else None
        if pair is not None:
            u, v = pair
            return sp.MatMul(u, self.fresh(self.product(v, b), "r"))
        pair = self.outer(b) if b.shape[0] != 1 else None
        if pair is not None:
            u, v = pair
            return sp.MatMul(self.fresh(self.product(a, u), "r"), v)
        return sp.MatMul(a, b)

    def run(self) -> Program:
        program = self.program
        for s in program.statements:
            operation = s.operation
            if isinstance(operation, sp.MatMul) and len(operation.args) == 2:
                operation = self.product(*operation.args)
            self.add(Statement(s.target, operation))
        statements = self._share()
        statements = live_statements(statements, self.outputs.values())
        return Program(inputs=program.inputs, statements=statements, outputs=dict(self.outputs),
                       labels=program.labels, adjoints=program.adjoints, names=program.names)

    def _share(self) -> list:
        self.outputs = dict(self.program.outputs)
        groups: dict = {}       # stored matrix -> its linear-algebra statements
        for s in self.statements:
            operation = s.operation
            if _role(operation) is not None:
                matrix = operation.args[0]
                stored = matrix.arg if isinstance(matrix, sp.Transpose) else matrix
                if isinstance(stored, sp.MatrixSymbol):
                    groups.setdefault(stored, []).append(s)
        if not groups:
            return self.statements
        standing_for: dict = {}  # old target -> what stands for it now
        factor_of: dict = {}    # stored matrix -> its factor's target
        inverse_of: dict = {}   # stored matrix -> the target of its inverse
        result = []
        first_use = {id(group[0]): stored for stored, group in groups.items()}
        for s in self.statements:
            operation = _substituted(s.operation, standing_for)
            stored = first_use.get(id(s))
            if stored is not None:
                symmetric = self.structure.symmetric(stored)
                factor = sp.MatrixSymbol(f"_factor{len(factor_of)}", *stored.shape)
                result.append(Statement(factor, Factorisation(stored, symmetric)))
                factor_of[stored] = factor
            role = _role(s.operation)
            if role is not None:
                matrix = s.operation.args[0]
                stored = matrix.arg if isinstance(matrix, sp.Transpose) else matrix
                if stored in factor_of:
                    factor = factor_of[stored]
                    if role != "inverse":       # a scalar: the determinant or its log
                        result.append(Statement(s.target, _FROM_FACTOR[role](factor)))
                    else:
                        transposed = isinstance(matrix, sp.Transpose) and \
                            not self.structure.symmetric(stored)
                        if stored not in inverse_of:
                            inverse_of[stored] = s.target if not transposed else \
                                sp.MatrixSymbol(f"_inverse{len(inverse_of)}", *stored.shape)
                            result.append(Statement(inverse_of[stored], FactorInverse(factor)))
                        inverse = inverse_of[stored]
                        if inverse != s.target:
                            standing_for[s.target] = _transposed(inverse) if transposed else inverse
                    continue
            result.append(Statement(s.target, operation))
        for name, atom in self.outputs.items():
            self.outputs[name] = _substituted(atom, standing_for)
        return self._solves(result, factor_of, inverse_of)

    def _solves(self, statements: list, factor_of: dict, inverse_of: dict) -> list:
        """Products with an inverse that nothing else reads become solves."""
        for stored, inverse in inverse_of.items():
            factor = factor_of[stored]
            if any(inverse in symbols_in(atom) for atom in self.outputs.values()):
                continue
            readers = [s for s in statements if inverse in symbols_in(s.operation)
                       and s.target != inverse]
            if not all(_solve_for(s.operation, inverse, factor) is not None for s in readers):
                continue
            statements = [Statement(s.target, _solve_for(s.operation, inverse, factor))
                          if s in readers else s for s in statements]
        return statements


def _solve_for(operation, inverse, factor):
    """operation (a product with the inverse on one side) as a solve, else None."""
    if not isinstance(operation, sp.MatMul) or len(operation.args) != 2:
        return None
    a, b = operation.args
    if a in (inverse, sp.Transpose(inverse)) and inverse not in symbols_in(b):
        return FactorSolve(factor, b, transposed=a != inverse)
    if b in (inverse, sp.Transpose(inverse)) and inverse not in symbols_in(a):
        return FactorSolve(factor, a, transposed=b != inverse, right=True)
    return None


def _substituted(operation, names: dict):
    """operation with the names' replacements put in (a transposed replacement of a
    transposed name is the name itself)."""
    if not names:
        return operation
    table = dict(names)
    for old, new in names.items():
        table[sp.Transpose(old)] = _transposed(new)
    return replaced(operation, table) if isinstance(operation, sp.Basic) else operation


def _role(operation) -> str | None:
    """What the operation is of a factorisation of its operand (``"inverse"``, ``"det"``,
    ``"logdet"``: its file says, see symgrad/operations/), or None."""
    found = operations.of(operation)
    return None if found is None else found.from_factorisation


# the statement that computes each scalar role from the factor
_FROM_FACTOR = {"det": FactorDet, "logdet": FactorLogDet}


def share_factorisations(program: Program) -> Program:
    """The program with one factorisation per inverted matrix, products with an inverse
    as solves where the inverse is not otherwise needed, and products with rank-one
    matrices reassociated (see the module docstring)."""
    if not any(isinstance(s.operation, sp.MatMul) or _role(s.operation) is not None
               for s in program.statements):
        return program
    return _Rewriter(program).run()
