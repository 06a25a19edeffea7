"""Forward mode over symgrad's expressions: Jacobians, Hessians and Hessian-vector products
at the matrix level.

The tangent (directional derivative) of every node is computed from its children's tangents
by a JVP rule, the forward-mode companion of the VJP rules of :mod:`symgrad.derive.rules`.
Second order is forward over reverse: the Hessian-vector product of a scalar ``f`` is the
JVP of its gradient (itself a matrix expression, from reverse mode) in the direction ``v``.

Two modes:

* **one direction** (``jvp``): every tangent has its node's shape; any model symgrad can
  differentiate.  This gives Hessian-vector products and the Hessian blocks of a scalar
  parameter.
* **all directions of a vector parameter q at once** (``jacobian_columns``): the tangent of
  q is the identity matrix I (q x q), one column per direction.  A column-vector node's
  tangent is then a matrix (rows x q), a scalar's a row (1 x q), and a row vector's is kept
  transposed (cols x q).  Elementwise rules broadcast a column over the q columns, which is
  exactly diag(column) @ tangent: pushing I through the gradient of the logistic loss gives
  X^T (s ∘ (1 - s) ∘ X) + lam I, i.e. X^T diag(s ∘ (1 - s)) X + lam I, one matrix product.
  A node that is a full matrix (rows and cols > 1) whose tangent is not zero would need a
  third axis: :class:`NoMatrixForm` is raised and the caller falls back to Hessian-vector
  products (compiled) or reports it (symbolic).

>>> import symgrad as sg
>>> x = sg.vector("x", 3)
>>> A = sg.matrix("A", 3, 3)
>>> block = jacobian_columns(A @ x, x)          # d(A x)/dx
>>> block
A
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

from symgrad import operations, ops
from symgrad.nodes import derivative, mul, replaced, unevaluated

__all__ = ["NoMatrixForm", "jvp", "jacobian_columns"]


class NoMatrixForm(NotImplementedError):
    """The derivative has no form as a matrix expression (it would need a third axis)."""


def _is_matrix(e) -> bool:
    return isinstance(e, MatrixExpr)


def _zero(e) -> bool:
    return e is None


def _add(terms):
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    if len(terms) == 1:
        return terms[0]
    if _is_matrix(terms[0]):
        return sp.MatAdd(*terms).doit()
    return sp.Add(*terms)


def _scalar_partials(body, variables) -> list:
    """d body / d variable for each variable (see :func:`symgrad.nodes.derivative`)."""
    return [derivative(body, v) for v in variables]


# A product of more factors than this, more than one of them moving, takes the product rule
# through shared partial products: the gradient of a model nested n deep holds products of
# n factors (SymPy flattens f sin(f + w)), whose k flat terms of k - 1 factors each would be
# quadratic in k.
FLAT_PRODUCT_RULE_MAX = 8


def _product_terms(factors: list, tangents: list) -> list:
    """The terms of the product rule, one per moving factor: that factor's tangent times the
    other factors.  Up to FLAT_PRODUCT_RULE_MAX factors, or with one factor moving, each
    term is a product as SymPy builds it; beyond, the others are the pieces of a balanced
    tree of partial products over the factors (built once, unevaluated, shared by the
    terms): log k pieces a term, k log k nodes in all.

    >>> a, b, c, t = sp.symbols("a b c t")
    >>> _product_terms([a, b, c], [None, t, None])
    [a*c*t]
    """
    moving = [k for k, t in enumerate(tangents) if t is not None]
    if len(factors) <= FLAT_PRODUCT_RULE_MAX or len(moving) == 1:
        return [mul(*factors[:k], *factors[k + 1:], tangents[k]) for k in moving]
    products: dict = {}

    def product(lo: int, hi: int):
        """The product of factors lo .. hi - 1 (a node of the tree)."""
        if hi - lo == 1:
            return factors[lo]
        if (lo, hi) not in products:
            middle = (lo + hi) // 2
            products[lo, hi] = unevaluated(sp.Mul, (product(lo, middle), product(middle, hi)))
        return products[lo, hi]

    terms = []
    for k in moving:
        others, lo, hi = [], 0, len(factors)
        while hi - lo > 1:          # the tree's nodes beside the path down to factor k
            middle = (lo + hi) // 2
            if k < middle:
                others.append(product(middle, hi))
                hi = middle
            else:
                others.append(product(lo, middle))
                lo = middle
        rest = others[0]
        for piece in others[1:]:
            rest = unevaluated(sp.Mul, (rest, piece))
        t = tangents[k]
        terms.append(rest if t == 1 else unevaluated(sp.Mul, (t, rest)))
    return terms


def _map_variables(n: int, prefix: str):
    return tuple(sp.Symbol(f"{prefix}{k}", real=True) for k in range(n))


# ------------------------------------------------------------------------------------------
# One direction: tangents with their node's shape
# ------------------------------------------------------------------------------------------
class _Forward:
    """JVP of an expression in one direction (``tangents``: symbol -> its tangent)."""

    def __init__(self, tangents: dict):
        self.tangents = tangents
        self.memo: dict = {}

    def __call__(self, e):
        if e in self.memo:
            return self.memo[e]
        result = self._rule(e)
        self.memo[e] = result
        return result

    def _rule(self, e):
        if e in self.tangents:
            return self.tangents[e]
        if isinstance(e, (sp.MatrixSymbol, sp.Identity, sp.ZeroMatrix, sp.OneMatrix)):
            return None
        if not isinstance(e, sp.Basic) or e.is_Atom:
            return None
        if isinstance(e, ops.Map):
            return self._map(e)
        if isinstance(e, sp.MatAdd):
            return _add([self(a) for a in e.args])
        if isinstance(e, sp.MatMul):
            return self._product(e)
        if isinstance(e, sp.HadamardProduct):
            variables = _map_variables(len(e.args), "h")
            return self._map(ops.Map(sp.Lambda(variables, sp.Mul(*variables)), e.shape,
                                     *e.args))
        if isinstance(e, sp.Transpose):
            t = self(e.arg)
            return None if t is None else t.T
        operation = operations.of(e)
        if operation is not None:
            return operation.jvp(e, self)
        if isinstance(e, MatrixElement):
            t = self(e.parent)
            return None if t is None else ops.Entry(t, e.i, e.j)
        if _is_matrix(e):
            raise NotImplementedError(f"symgrad has no forward-mode rule for "
                                      f"{type(e).__name__} (in {e})")
        return self._scalar(e)

    def _scalar(self, e):
        """Any scalar function of scalar arguments: the chain rule with SymPy's partials."""
        if isinstance(e, sp.Piecewise):
            # the derivative of each branch where its condition holds (a comparison's
            # derivative is zero almost everywhere)
            branches = [self(v) for v, _ in e.args]
            if all(t is None for t in branches):
                return None
            if any(_is_matrix(t) for t in branches):
                # SymPy's Piecewise holds scalars only
                raise NoMatrixForm(f"a conditional expression {e} in every direction")
            zero = sp.S.Zero
            return sp.Piecewise(*[(zero if t is None else t, c)
                                  for t, (_, c) in zip(branches, e.args)])
        args = list(e.args)
        tangents = [self(a) if isinstance(a, sp.Expr) else None for a in args]
        if all(t is None for t in tangents):
            return None
        if type(e) is sp.Add:
            return _add(tangents)
        if type(e) is sp.Mul and not any(_is_matrix(t) for t in tangents):
            # the product rule, each term built once (SymPy's partials of a product of k
            # factors, each put back in place of its variable, build every product of k - 1
            # factors twice)
            return _add(_product_terms(args, tangents))
        variables = _map_variables(len(args), "_j")
        local = e.func(*variables)
        partials = _scalar_partials(local, variables)
        terms = []
        for partial, t in zip(partials, tangents):
            if t is None or partial == 0:
                continue
            p = replaced(partial, dict(zip(variables, args)))
            terms.append(self._scale(p, t))
        return _add(terms)

    @staticmethod
    def _scale(p, t):
        return p * t

    def _product(self, e):
        args = list(e.args)
        terms = []
        for k, a in enumerate(args):
            t = self(a)
            if t is None:
                continue
            terms.append(sp.MatMul(*args[:k], t, *args[k + 1:]).doit())
        return _add(terms)

    def _map(self, e: ops.Map):
        operands = list(e.operands)
        tangents = [self(o) for o in operands]
        if all(t is None for t in tangents):
            return None
        partials = _scalar_partials(e.body, e.function.variables)
        used = [(k, t) for k, t in enumerate(tangents) if t is not None and partials[k] != 0]
        if not used:
            return None
        tvars = _map_variables(len(used), "_t")
        body = sp.Add(*[partials[k] * tv for (k, _), tv in zip(used, tvars)])
        return ops.Map(sp.Lambda((*e.function.variables, *tvars), body), e.shape,
                       *operands, *[t for _, t in used])


def jvp(expr, tangents: dict):
    """The directional derivative of ``expr`` when each symbol of ``tangents`` moves along
    its tangent (an expression of the symbol's shape); ``None`` if it does not move.

    >>> import sympy as sp
    >>> w, v = sp.symbols("w v")
    >>> jvp(w**3, {w: v})
    3*v*w**2
    """
    return _Forward(dict(tangents))(sp.sympify(expr))


# ------------------------------------------------------------------------------------------
# All directions of a vector parameter at once
# ------------------------------------------------------------------------------------------
def _kind(e) -> str:
    """'s' scalar, 'c' column (1 x 1 included), 'r' row, 'm' full matrix."""
    if not _is_matrix(e):
        return "s"
    rows, cols = e.shape
    if cols == 1:
        return "c"
    if rows == 1:
        return "r"
    return "m"


class _Columns(_Forward):
    """Tangents of all q's directions: column nodes (rows x k), scalars (1 x k), row nodes
    stored transposed (cols x k); full matrices only when their tangent is zero."""

    def __init__(self, wrt, k):
        super().__init__({wrt: sp.Identity(k)})
        self.k = k

    def __call__(self, e):
        result = super().__call__(e)
        if result is not None and _kind(e) == "m":
            raise NoMatrixForm(f"the derivative of the matrix {e} (shape {tuple(e.shape)}) in "
                               "every direction of a vector needs a third axis")
        return result

    def _rule(self, e):
        if e in self.tangents:
            return self.tangents[e]
        if isinstance(e, sp.Transpose):
            # a column's tangent and its transpose's stored tangent are the same matrix
            return self(e.arg)
        operation = operations.of(e)
        if operation is not None and operation.jvp_columns is not None:
            return operation.jvp_columns(e, self, _kind)
        if isinstance(e, MatrixElement):
            if tuple(e.parent.shape) != (1, 1):
                t = self(e.parent)
                if t is None:
                    return None
                raise NoMatrixForm(f"an entry {e} of a vector in every direction")
            return self(e.parent)
        if operation is not None:
            if all(self(a) is None for a in e.args if isinstance(a, sp.Basic)):
                return None
            raise NoMatrixForm(f"{type(e).__name__} in every direction of a vector")
        return super()._rule(e)

    def _product(self, e):
        scalars = [a for a in e.args if not _is_matrix(a)]
        factors = [a for a in e.args if _is_matrix(a)]
        # the matrix product, left to right, with its tangent
        value, tangent = factors[0], self(factors[0])
        for b in factors[1:]:
            tangent = self._binary(value, tangent, b, self(b))
            value = value @ b
        coefficient = sp.Mul(*scalars)
        if coefficient == 1:
            return tangent
        terms = [None if tangent is None else coefficient * tangent]
        dc = self(coefficient)
        if dc is not None:
            kind = _kind(value)
            if kind == "c":
                terms.append(value @ dc)
            elif kind == "r":
                terms.append(value.T @ dc)
            else:
                raise NoMatrixForm(f"the scalar factor {coefficient} of the matrix {value}")
        return _add(terms)

    def _binary(self, a, ta, b, tb):
        """The stored tangent of a @ b from those of a and b."""
        ka, kb = _kind(a), _kind(b)
        terms = []
        if ta is not None:
            if ka == "r" or (tuple(a.shape) == (1, 1) and kb == "r"):
                # a row times a column (1 x 1), a row times a matrix (a row, kept
                # transposed) or a 1 x 1 times a row: (b^T da_j^T)_j, all directions at once
                terms.append(b.T @ ta)
            elif ka == "c" and tuple(b.shape) == (1, 1):
                terms.append(ops.Entry(b, 0, 0) * ta)
            else:
                raise NoMatrixForm(f"the product {a} @ {b} in every direction of a vector")
        if tb is not None:
            if kb == "c":                     # any matrix times a column: a db_j
                terms.append(a @ tb)
            elif kb == "r" and tuple(a.shape) == (1, 1):
                terms.append(ops.Entry(a, 0, 0) * tb)
            else:
                raise NoMatrixForm(f"the product {a} @ {b} in every direction of a vector")
        return _add(terms)

    def _map(self, e: ops.Map):
        operands = list(e.operands)
        tangents = [self(o) for o in operands]
        if all(t is None for t in tangents):
            return None
        kind = _kind(e)
        if kind == "m":
            raise NoMatrixForm(f"the elementwise {e} in every direction of a vector")
        partials = _scalar_partials(e.body, e.function.variables)
        used = [(k, t) for k, t in enumerate(tangents) if t is not None and partials[k] != 0]
        if not used:
            return None
        # a row Map is computed in its transposed frame, where it is a column
        frame = [o.T if kind == "r" and _is_matrix(o) and _kind(o) == "r" else o
                 for o in operands]
        rows = e.shape[0] if kind != "r" else e.shape[1]
        # each partial derivative is its own column, computed once per row and broadcast
        # across the k directions (inside the rows x k loop it would be computed k times)
        factors = []
        for k, _ in used:
            partial = partials[k]
            inside = partial.free_symbols & set(e.function.variables)
            if inside and all(not _is_matrix(o) for v, o in zip(e.function.variables, frame)
                              if v in inside):
                factors.append(replaced(partial, dict(zip(e.function.variables, frame))))
            elif inside:
                factors.append(ops.Map(sp.Lambda(e.function.variables, partial), (rows, 1),
                                       *frame))
            else:
                factors.append(partial)
        pvars = _map_variables(len(used), "_p")
        tvars = _map_variables(len(used), "_t")
        body = sp.Add(*[pv * tv for pv, tv in zip(pvars, tvars)])
        return ops.Map(sp.Lambda((*pvars, *tvars), body), (rows, self.k),
                       *factors, *[t for _, t in used])


def jacobian_columns(expr, wrt):
    """d expr / d wrt for a vector parameter ``wrt`` (n x 1), every direction at once: for a
    column output (m x 1) the m x n Jacobian; for a scalar output a 1 x n row; for a row
    output (1 x m) the transposed Jacobian (m x n).  Raises :class:`NoMatrixForm` when a full
    matrix on the way depends on ``wrt``.
    """
    n = wrt.shape[0]
    result = _Columns(wrt, n)(sp.sympify(expr))
    if result is None:
        rows = 1 if _kind(expr) == "s" else (expr.shape[0] if _kind(expr) == "c"
                                              else expr.shape[1])
        return sp.ZeroMatrix(rows, n)
    return result
