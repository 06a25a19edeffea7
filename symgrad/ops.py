"""symgrad's operations on top of SymPy.

Scalars are plain SymPy expressions; matrices are SymPy matrix expressions built from
``MatrixSymbol``.  This module adds what SymPy lacks for models:

* numerically stable scalar functions (:class:`sigmoid`, :class:`softplus`,
  :class:`logsigmoid`, :class:`relu`);
* matrix nodes: :class:`Map` (an elementwise function of same-shaped operands, with
  broadcasting of column vectors, row vectors and scalars), :class:`AxisSum` (along an axis),
  :class:`SumAll`, :class:`LogSumExp`, :class:`Softmax`, :class:`LogDet` and :class:`Named`
  (a label that names a piece of the model in printed formulas);
* the user-facing builders: ``matrix``, ``vector``, ``dot``, ``hadamard``, ``sum``, ``mean``,
  ``broadcast``, ``trace``, ``det``, ``logdet``, ``inv``, ``logsumexp`` and ``softmax`` (the
  elementwise functions ``sg.sigmoid``, ``sg.exp`` ... are rows of symgrad/functions.py).

>>> import symgrad as sg
>>> x = sg.vector("x", 3)
>>> sg.sum(sg.exp(x)).free_symbols == {x}
True
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp
from sympy.codegen.cfunctions import log1p as _log1p
from sympy.core.symbol import Str
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

from symgrad.nodes import built, replaced

__all__ = [
    "sigmoid", "softplus", "logsigmoid", "relu", "Map", "AxisSum", "SumAll", "LogSumExp",
    "LogSumExpAll", "Softmax", "LogDet", "Named", "NamedScalar", "Scatter", "matrix", "vector",
    "dot", "hadamard", "sum",
    "mean", "broadcast", "trace", "det", "logdet", "inv", "logsumexp", "softmax", "name",
    "binary_cross_entropy_with_logits", "softmax_cross_entropy", "Equal",
]

Shape = tuple  # (rows, cols) of SymPy integers or symbols


# --------------------------------------------------------------------------------------
# Scalar functions.  fdiff lets plain sympy.diff work on them (tests compare with it);
# symgrad's own rules live in derive/rules.py.
# --------------------------------------------------------------------------------------
class _ScalarFunction(sp.Function):
    """A real function of one argument defined by a closed form: ``closed_form(x)`` gives
    its value at numbers, its numerical evaluation and its rewriting."""

    nargs = 1

    @staticmethod
    def closed_form(x):
        raise NotImplementedError

    def _eval_is_real(self):
        return self.args[0].is_real

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return cls.closed_form(x)

    def _eval_evalf(self, prec):
        return self.closed_form(self.args[0])._eval_evalf(prec)


class Equal(sp.Equality):
    """``lhs == rhs`` as the model computes both sides: the condition by which Max and Min
    route their gradient.  SymPy's Piecewise solves a relational for a symbol whenever it
    is rebuilt (``doit``, ``diff``, substitution): Eq(6 a + 3, max) becomes
    Eq(a, max/6 - 1/2), an identity on reals but false in floats wherever 6 a + 3 is the
    maximum.  This equality is no relational to SymPy's rewriting, so it stays as written;
    printers print it as the equality it is.

    >>> a = sp.Symbol("a", real=True)
    >>> p = sp.Piecewise((1, Equal(6 * a + 3, sp.Max(a, 6 * a + 3))), (0, True))
    >>> p.doit()
    Piecewise((1, Eq(6*a + 3, Max(a, 6*a + 3))), (0, True))
    >>> sp.Piecewise((1, sp.Eq(6 * a + 3, sp.Max(a, 6 * a + 3))), (0, True))
    Piecewise((1, Eq(a, Max(a, 6*a + 3)/6 - 1/2)), (0, True))
    """

    is_Relational = False       # (what SymPy's Piecewise asks before it solves)

    @property
    def canonical(self):
        return self

    @property
    def negated(self):
        return sp.Ne(*self.args, evaluate=False)


class sigmoid(_ScalarFunction):
    """The logistic function 1 / (1 + exp(-x)), evaluated stably for any x."""

    @staticmethod
    def closed_form(x):
        return 1 / (1 + sp.exp(-x))

    def fdiff(self, argindex=1):
        return self * (1 - self)

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return self.closed_form(x)


class softplus(_ScalarFunction):
    """log(1 + exp(x)), evaluated without overflow for large x."""

    @staticmethod
    def closed_form(x):
        return sp.log(1 + sp.exp(x))

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return self.closed_form(x)


class logsigmoid(_ScalarFunction):
    """log(sigmoid(x)) = -softplus(-x), evaluated without overflow."""

    @staticmethod
    def closed_form(x):
        return -sp.log(1 + sp.exp(-x))

    def fdiff(self, argindex=1):
        return sigmoid(-self.args[0])

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return self.closed_form(x)


class relu(_ScalarFunction):
    """max(x, 0); its derivative is taken as 0 at x = 0."""

    @staticmethod
    def closed_form(x):
        return sp.Max(x, 0)

    def fdiff(self, argindex=1):
        return relu_slope(self.args[0])

    def _eval_rewrite_as_Max(self, x, **kwargs):
        return self.closed_form(x)


def relu_slope(x):
    """The derivative of relu: 1 where x > 0, else 0, NaN included (not Heaviside(x, 0),
    which is NaN at NaN), as JAX's relu and the gradient of Max(x, 0).

    >>> relu_slope(sp.Symbol("x"))
    Piecewise((1, x > 0), (0, True))
    """
    return sp.Piecewise((1, x > 0), (0, True))


log1p = _log1p

# --------------------------------------------------------------------------------------
# Matrix nodes
# --------------------------------------------------------------------------------------
def _shape(expr) -> Shape:
    """(rows, cols) of a matrix expression; () for a scalar."""
    return tuple(expr.shape) if isinstance(expr, MatrixExpr) else ()


def map_variables(count: int, names: list[str] | None = None) -> tuple:
    """Real symbols for the variables of a Map's body: ``a0, a1, ...`` or the given names.

    >>> map_variables(2)
    (a0, a1)
    """
    names = names or [f"a{k}" for k in range(count)]
    return tuple(sp.Symbol(name, real=True) for name in names)


class Map(MatrixExpr):
    """An elementwise function of matrices: ``Map(Lambda((a, b), body), (rows, cols), A, B)``.

    Each operand is a matrix of the Map's shape, a column vector (rows x 1) or a row vector
    (1 x cols) broadcast across the other axis, a 1 x 1 matrix, or a scalar; ``body`` is a
    scalar SymPy expression of the lambda's variables.  Chains of elementwise operations
    (Hadamard products, sums, scalar multiples, functions) are fused into one Map, which the
    code generator turns into one loop.

    >>> import sympy as sp
    >>> A = sp.MatrixSymbol("A", 2, 3)
    >>> a = sp.Symbol("a")
    >>> Map(sp.Lambda((a,), sp.exp(a)), (2, 3), A).shape
    (2, 3)
    """

    is_commutative = False

    def __new__(cls, function, shape, *operands):
        shape = sp.Tuple(*[sp.sympify(s) for s in shape])
        operands = [sp.sympify(o) for o in operands]
        if any(not v.is_real for v in function.variables):
            # entries of symgrad's matrices are real: with plain symbols SymPy would keep
            # complex forms (|exp(a)| = exp(re(a))) that have no place in real code
            function = sp.Lambda(map_variables(len(function.variables),
                                               [v.name for v in function.variables]),
                                 replaced(function.expr,
                                     {v: sp.Symbol(v.name, real=True)
                                      for v in function.variables}))
        if len(function.variables) != len(operands):
            raise ValueError(f"Map: {len(function.variables)} variables for {len(operands)} "
                             "operands")
        if _matrix_in_arithmetic(function.expr):
            # the code generator prints a body as scalar code: a matrix there (t * I) would
            # print as a call on a matrix, or not at all
            raise TypeError(f"Map: its body {function.expr} computes with a matrix; a body "
                            "is scalar, and a matrix (even a constant one) is an operand")
        for operand in operands:
            oshape = _shape(operand)
            if oshape and not _broadcastable(oshape, tuple(shape)):
                raise sp.ShapeError(f"Map: operand {operand} of shape {oshape} does not "
                                    f"broadcast to {tuple(shape)}")
        return super().__new__(cls, function, shape, *operands)

    @property
    def function(self) -> sp.Lambda:
        return self.args[0]

    @property
    def operands(self) -> tuple:
        return self.args[2:]

    @property
    def shape(self):
        return tuple(self.args[1])

    @property
    def body(self) -> sp.Expr:
        return self.function.expr

    def _entry(self, i, j, **kwargs):
        values = [o[i if o.shape[0] != 1 else 0, j if o.shape[1] != 1 else 0]
                  if isinstance(o, MatrixExpr) else o for o in self.operands]
        return self.function(*values)

    def _eval_transpose(self):
        operands = [o.T if isinstance(o, MatrixExpr) else o for o in self.operands]
        return Map(self.function, self.shape[::-1], *operands)


def _matrix_in_arithmetic(body) -> bool:
    """Whether a scalar body adds, multiplies or applies a function to a matrix (or is one);
    matrices under a scalar-valued node (an entry, a trace) are not arithmetic on them.

    >>> t, K = sp.Symbol("t"), sp.MatrixSymbol("K", 2, 2)
    >>> _matrix_in_arithmetic(t * sp.Identity(2)), _matrix_in_arithmetic(t * sp.Trace(K))
    (True, False)
    """
    # iterative, each distinct subexpression once: a fused body can be deep, and shared
    stack, seen = [body], {body}
    while stack:
        node = stack.pop()
        if isinstance(node, MatrixExpr):
            return True
        if isinstance(node, (sp.Add, sp.Mul, sp.Pow, sp.Function)):
            for a in node.args:
                if a not in seen:
                    seen.add(a)
                    stack.append(a)
    return False


def _broadcastable(operand_shape: Shape, shape: Shape) -> bool:
    rows, cols = operand_shape
    return (rows == shape[0] or rows == 1) and (cols == shape[1] or cols == 1)


class AxisSum(MatrixExpr):
    """Sum of a matrix along an axis: axis 0 gives a row (1 x cols), axis 1 a column."""

    def __new__(cls, arg, axis):
        if int(axis) not in (0, 1):
            raise ValueError(f"AxisSum: axis must be 0 or 1, got {axis}")
        return super().__new__(cls, arg, sp.Integer(axis))

    @property
    def arg(self):
        return self.args[0]

    @property
    def axis(self) -> int:
        return int(self.args[1])

    @property
    def shape(self):
        rows, cols = self.arg.shape
        return (sp.Integer(1), cols) if self.axis == 0 else (rows, sp.Integer(1))

    def _entry(self, i, j, **kwargs):
        k = sp.Dummy("k", integer=True)
        rows, cols = self.arg.shape
        if self.axis == 0:
            return sp.Sum(self.arg[k, j], (k, 0, rows - 1))
        return sp.Sum(self.arg[i, k], (k, 0, cols - 1))


class _Reduction(sp.Expr):
    """A real scalar computed from a matrix: SymPy must know it is real, or it refuses it
    where only real values are allowed (Heaviside) and keeps re() and im() of it."""

    is_real = True

    def __new__(cls, arg):
        return super().__new__(cls, arg)

    @property
    def arg(self):
        return self.args[0]


class SumAll(_Reduction):
    """The sum of all entries of a matrix (a scalar)."""


class LogSumExp(MatrixExpr):
    """log(sum(exp(A), axis)) computed stably: axis 0 gives a row, axis 1 a column."""

    def __new__(cls, arg, axis):
        return super().__new__(cls, arg, sp.Integer(axis))

    @property
    def arg(self):
        return self.args[0]

    @property
    def axis(self) -> int:
        return int(self.args[1])

    @property
    def shape(self):
        rows, cols = self.arg.shape
        return (sp.Integer(1), cols) if self.axis == 0 else (rows, sp.Integer(1))


class LogSumExpAll(_Reduction):
    """log(sum(exp(A))) over all entries, computed stably (a scalar)."""


class Softmax(MatrixExpr):
    """exp(A) normalised along an axis (0: each column sums to 1, 1: each row), or over all
    entries with axis None; computed stably."""

    def __new__(cls, arg, axis):
        return super().__new__(cls, arg, sp.Integer(-1 if axis is None else axis))

    @property
    def arg(self):
        return self.args[0]

    @property
    def axis(self) -> int | None:
        axis = int(self.args[1])
        return None if axis == -1 else axis

    @property
    def shape(self):
        return self.arg.shape


class LogDet(_Reduction):
    """log(det(A)) for a matrix with positive determinant, computed without overflow."""


class Named(MatrixExpr):
    """A matrix expression with a name for printed formulas (``Z2``, ``A1``); the name
    changes nothing in the mathematics.  Its adjoint prints as ``d`` + name."""

    def __new__(cls, label, arg):
        return super().__new__(cls, Str(str(label)), arg)

    @property
    def label(self) -> str:
        return self.args[0].name

    @property
    def arg(self):
        return self.args[1]

    @property
    def shape(self):
        return self.arg.shape

    def _entry(self, i, j, **kwargs):
        return self.arg._entry(i, j, **kwargs)


class NamedScalar(_Reduction):
    """A scalar expression with a name for printed formulas."""

    def __new__(cls, label, arg):
        return sp.Expr.__new__(cls, Str(str(label)), sp.sympify(arg))

    @property
    def label(self) -> str:
        return self.args[0].name

    @property
    def arg(self):
        return self.args[1]


# --------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------
def _dim(value, what: str):
    value = sp.sympify(value)
    if value.is_number and not (value.is_integer and value > 0):
        raise ValueError(f"{what} must be a positive integer or a SymPy symbol, got {value}")
    return value


def matrix(name: str, rows, cols) -> sp.MatrixSymbol:
    """A matrix parameter or input: ``sg.matrix("W", 100, 250)``; dimensions may be SymPy
    symbols.

    >>> matrix("W", 2, 3).shape
    (2, 3)
    """
    return sp.MatrixSymbol(name, _dim(rows, f"matrix {name!r} rows"),
                           _dim(cols, f"matrix {name!r} cols"))


def vector(name: str, n) -> sp.MatrixSymbol:
    """A column vector (n x 1): ``sg.vector("x", 250)``.

    >>> vector("x", 3).shape
    (3, 1)
    """
    return sp.MatrixSymbol(name, _dim(n, f"vector {name!r} length"), 1)


def _is_matrix(x) -> bool:
    return isinstance(x, MatrixExpr)


class Entry(MatrixElement):
    """``A[i, j]`` that stays an entry: SymPy's ``doit`` (called by ``c * W``) would expand a
    plain MatrixElement of a product into an explicit ``Sum`` over indices."""

    def doit(self, **hints):
        parent = self.parent.doit(**hints) if hints.get("deep", True) else self.parent
        return Entry(parent, self.i, self.j)


def _as_scalar(m: MatrixExpr) -> sp.Expr:
    """A 1 x 1 matrix expression as the scalar it holds."""
    return Entry(m, 0, 0)


def dot(u, v) -> sp.Expr:
    """The scalar u^T v of two column vectors (or same-shaped matrices: sum of products).

    >>> u, v = vector("u", 3), vector("v", 3)
    >>> dot(u, v)
    (u.T*v)[0, 0]
    """
    if not (_is_matrix(u) and _is_matrix(v)):
        raise TypeError(f"dot needs two matrix expressions, got {u!r} and {v!r}")
    if u.shape != v.shape:
        raise sp.ShapeError(f"dot: shapes {u.shape} and {v.shape} differ")
    if u.shape[1] == 1:
        return _as_scalar(u.T @ v)
    return SumAll(sp.HadamardProduct(u, v))


def hadamard(*factors) -> MatrixExpr:
    """The elementwise product of same-shaped matrices.

    >>> A = matrix("A", 2, 2); B = matrix("B", 2, 2)
    >>> hadamard(A, B).shape
    (2, 2)
    """
    shapes = {f.shape for f in factors}
    if len(shapes) != 1:
        raise sp.ShapeError(f"hadamard: operands have different shapes {sorted(map(str, shapes))}")
    return sp.HadamardProduct(*factors)


def _axis(axis, A, where: str, allow_none: bool = True):
    """The axis of a reduction over the matrix A, as 0 or 1: negative axes count from the
    end as in NumPy (-1 is 1, -2 is 0); anything else is an error naming it.

    >>> _axis(-1, matrix("A", 2, 3), "sum")
    1
    """
    if axis is None and allow_none:
        return None
    if isinstance(axis, bool) or not isinstance(axis, (int, sp.Integer)) \
            and not (hasattr(axis, "__index__") and not isinstance(axis, float)):
        raise TypeError(f"{where}: axis must be an integer (0, 1, -1 or -2)"
                        + (" or None" if allow_none else "") + f", got {axis!r}")
    index = int(axis.__index__()) if not isinstance(axis, sp.Integer) else int(axis)
    if not -2 <= index <= 1:
        shape = tuple(A.shape) if _is_matrix(A) else ()
        raise ValueError(f"{where}: axis {axis!r} is out of range for {A} of shape {shape} "
                         "(a matrix has axes 0 and 1, or -2 and -1)")
    return index % 2


def sum(A, axis: int | None = None):  # noqa: A001 - mirrors numpy.sum
    """Sum of the entries of A: all (a scalar), along axis 0 (a row) or 1 (a column).

    >>> A = matrix("A", 2, 3)
    >>> sum(A, axis=1).shape
    (2, 1)
    """
    axis = _axis(axis, A, "sum")
    if not _is_matrix(A):
        return A
    if axis is None:
        return SumAll(A)
    return AxisSum(A, axis)


def mean(A, axis: int | None = None):
    """Mean of the entries of A (all, along axis 0 or along axis 1).

    >>> A = matrix("A", 2, 4)
    >>> mean(A).args[0]
    1/8
    """
    axis = _axis(axis, A, "mean")
    if not _is_matrix(A):
        return A
    rows, cols = A.shape
    count = rows * cols if axis is None else (rows if axis == 0 else cols)
    return sum(A, axis) * (1 / sp.sympify(count))


def broadcast(v, shape: Sequence) -> MatrixExpr:
    """Repeat a column vector across columns, a row vector across rows, or a scalar (or 1 x 1
    matrix) over a whole matrix of the given shape: ``W @ X + sg.broadcast(b, (H, m))``.

    >>> b = vector("b", 3)
    >>> broadcast(b, (3, 5)).shape
    (3, 5)
    """
    shape = tuple(sp.sympify(s) for s in shape)
    if len(shape) != 2:
        raise ValueError(f"broadcast: shape must be (rows, cols), got {shape}")
    if _is_matrix(v) and not _broadcastable(v.shape, shape):
        raise sp.ShapeError(f"broadcast: {v} of shape {v.shape} cannot broadcast to {shape}")
    (a,) = map_variables(1, ["a"])
    return Map(sp.Lambda((a,), a), shape, v)


def trace(A) -> sp.Expr:
    """tr(A) of a square matrix."""
    return sp.Trace(A)


def det(A) -> sp.Expr:
    """det(A) of a square matrix."""
    return sp.Determinant(A)


def logdet(A) -> sp.Expr:
    """log(det(A)) of a square matrix with positive determinant, without overflow."""
    if A.shape[0] != A.shape[1]:
        raise sp.ShapeError(f"logdet: {A} is not square, its shape is {A.shape}")
    return LogDet(A)


def inv(A) -> MatrixExpr:
    """The inverse of a square matrix."""
    return sp.Inverse(A)


def logsumexp(A, axis: int | None = None):
    """log(sum(exp(A))) over all entries (a scalar) or along an axis, computed stably."""
    axis = _axis(axis, A, "logsumexp")
    return LogSumExpAll(A) if axis is None else LogSumExp(A, axis)


def softmax(A, axis: int | None = None) -> MatrixExpr:
    """exp(A) / sum(exp(A)) along an axis (0: columns sum to 1; 1: rows), stably."""
    return Softmax(A, _axis(axis, A, "softmax"))


def name(label: str, expr):
    """Give a piece of the model a name for printed formulas: ``Z1 = sg.name("Z1", W1 @ X)``.

    Printed gradients then call the value ``Z1`` and its adjoint ``dZ1``.
    """
    return Named(label, expr) if _is_matrix(expr) else NamedScalar(label, expr)


def binary_cross_entropy_with_logits(logits, labels):
    """-(y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))), elementwise, in the stable form
    y softplus(-z) + (1 - y) softplus(z)."""
    z, y = sp.Symbol("z"), sp.Symbol("y")
    body = y * softplus(-z) + (1 - y) * softplus(z)
    if _is_matrix(logits):
        return Map(sp.Lambda((z, y), body), logits.shape, logits, labels)
    return replaced(body, {z: logits, y: labels})


class Scatter(MatrixExpr):
    """A (rows x cols) matrix that is zero except for ``value`` at (i, j): the adjoint of
    ``A[i, j]``."""

    def __new__(cls, value, i, j, rows, cols):
        return super().__new__(cls, sp.sympify(value), *map(sp.sympify, (i, j, rows, cols)))

    @property
    def value(self):
        return self.args[0]

    @property
    def index(self) -> tuple:
        return self.args[1], self.args[2]

    @property
    def shape(self):
        return self.args[3], self.args[4]

    def _entry(self, i, j, **kwargs):
        # a negative position counts from the end, as A[-1, 0] reads the last row in
        # compiled code (and in NumPy)
        at = [k + n if k.is_Integer and k < 0 else k
              for k, n in zip(self.index, self.shape)]
        return sp.Piecewise((self.value, sp.And(sp.Eq(i, at[0]), sp.Eq(j, at[1]))), (0, True))


def softmax_cross_entropy(logits, labels, axis: int = 0):
    """The summed cross-entropy -sum(Y o log softmax(Z, axis)), computed stably as
    sum(Y o (logsumexp(Z, axis) - Z)) (labels along ``axis`` sum to 1 for one-hot Y).

    >>> Z, Y = matrix("Z", 3, 4), matrix("Y", 3, 4)
    >>> softmax_cross_entropy(Z, Y).is_commutative
    True
    """
    if not (_is_matrix(logits) and _is_matrix(labels)) or logits.shape != labels.shape:
        raise sp.ShapeError("softmax_cross_entropy needs logits and labels of the same shape")
    axis = _axis(axis, logits, "softmax_cross_entropy", allow_none=False)
    z, y, lse = sp.symbols("z y l")
    per_entry = Map(sp.Lambda((z, y, lse), y * (lse - z)), logits.shape, logits, labels,
                    LogSumExp(logits, axis))
    return SumAll(per_entry)


def map_of_applyfunc(node, operand=None, function=None):
    """``A.applyfunc(f)`` as symgrad's elementwise Map of ``operand`` (default: A) and of
    ``function`` (default: f; the caller's rewritten f, its sums written out).

    Whatever in ``f``'s body does not depend on its variable and reads the model (a
    parameter ``w`` in ``lambda e: sin(w * e)``, an entry ``X[0, 0]``) becomes a scalar
    operand of the Map, so that gradients reach it; left in the body, it would be a constant
    to differentiation.

    >>> A = sp.MatrixSymbol("A", 2, 2)
    >>> map_of_applyfunc(A.applyfunc(sp.sin)).body
    sin(a0)
    >>> w = sp.Symbol("w")
    >>> m = map_of_applyfunc(A.applyfunc(lambda e: sp.sin(w * e)))
    >>> m.body, m.operands
    (sin(a0*a1), (A, w))
    """
    operand = node.expr if operand is None else operand
    function = node.function if function is None else function
    if isinstance(function, sp.Lambda):
        if len(function.variables) != 1:
            raise ValueError(f"{node}: applyfunc needs a function of one variable, got "
                             f"{function}")
        variable, body = function.variables[0], function.expr
    else:
        variable = sp.Dummy("e", real=True)
        body = function(variable)
    body, lifted = _lift_model_terms(sp.sympify(body), variable)
    nested = [m for m in sp.preorder_traversal(body)
              if isinstance(m, MatrixExpr) and variable in m.free_symbols]
    if nested:
        raise ValueError(f"{node.expr}.applyfunc(f): f computes the matrix {nested[0]} from "
                         "its variable; an elementwise function is scalar in each entry (a "
                         "matrix it reads must not depend on the entry)")
    fresh = map_variables(1 + len(lifted))
    body = replaced(body, dict(zip([variable, *lifted.values()], fresh)))
    return Map(sp.Lambda(fresh, body), node.shape, operand, *lifted)


def _lift_model_terms(body, variable) -> tuple:
    """``(body, {term: dummy})``: body with each largest scalar term that reads the model but
    not ``variable`` (nor a variable a Sum or Lambda inside binds) replaced by a dummy."""
    lifted: dict = {}

    def walk(e, bound: frozenset):
        free = e.free_symbols
        if (free and variable not in free and not free & bound and isinstance(e, sp.Expr)
                and not isinstance(e, MatrixExpr)):
            if e not in lifted:
                lifted[e] = sp.Dummy(real=True)
            return lifted[e]
        if not e.args or variable not in free and not free - bound:
            return e
        inner = bound | set(getattr(e, "bound_symbols", ()))
        args = [walk(a, inner) for a in e.args]
        return built(e.func, args) if args != list(e.args) else e

    return walk(body, frozenset()), lifted
