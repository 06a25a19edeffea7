"""Second order and Jacobians: ``sg.hessian``, ``sg.hvp``, ``sg.jacobian`` (symbolic, at the
matrix level) and their compiled counterparts ``f.hessian``, ``f.hvp``, ``f.jacobian`` and
``f.scipy``.

Hessians are forward over reverse: the gradient (a matrix expression from reverse mode) is
differentiated again in forward mode (:mod:`symgrad.derive.second`).  For two vector
parameters p (n x 1) and q (m x 1) every direction of q is pushed through at once as the
identity matrix, so a block is a closed matrix form:

>>> import sympy as sp, symgrad as sg
>>> x, A = sg.vector("x", 3), sg.matrix("A", 3, 3)
>>> print(sg.show(sg.hessian(sg.dot(x, A @ x), [x])))
d²f/dx dx = A + A^T

Layouts (the shape convention, unit axes dropped):

* ``hessian(f, wrt)[(p, q)]`` has shape p.shape + q.shape: an n x m matrix for two vectors,
  p's (or q's) shape when the other one is a scalar, a scalar for two scalars.  A block with
  a matrix parameter has four axes and no matrix form: the symbolic API raises
  :class:`NoMatrixForm`; the compiled ``f.hessian`` computes it from Hessian-vector products.
* ``jacobian(y, wrt)[q]`` has shape y.shape + q.shape: an m x n matrix for a column output
  (m x 1) and a vector q (n x 1); y's shape for a scalar q; q's shape for a scalar output;
  for a row output (1 x m) and a vector q, the m x n matrix of rows d y_i / d q^T.
* ``hvp(f, wrt, tangents)[p]`` has p's shape: sum over q of H[p, q] v_q.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symgrad.derive.second import NoMatrixForm, jacobian_columns, jvp

__all__ = ["hessian", "hvp", "jacobian", "SecondOrder", "NoMatrixForm", "ScipyProblem"]


class SecondOrder(dict):
    """Second-order (or Jacobian) blocks as SymPy expressions; prints with ``sg.show``."""

    kind: str = "hessian"

    def _show(self, output: str = "f", latex: bool = False) -> str:
        return _show(self, output, latex)

    def __str__(self) -> str:
        return _show(self, "f", False)

    def _repr_latex_(self) -> str:
        return "$\\displaystyle " + _show(self, "f", True) + "$"


def _is_vector(s) -> bool:
    return isinstance(s, MatrixExpr) and s.shape[1] == 1 and s.shape[0] != 1


def _is_scalar(s) -> bool:
    return not isinstance(s, MatrixExpr)


def _zero_like(shape_of):
    return sp.ZeroMatrix(*shape_of.shape) if isinstance(shape_of, MatrixExpr) else sp.S.Zero


def _tidy(e):
    """The canonical form (fused elementwise loops, products in the cheapest order)."""
    from symgrad.derive.graph import Canonicalizer
    return Canonicalizer()(e)


def _block(gradient, p, q):
    """d gradient / d q, where gradient = df/dp: shape p.shape + q.shape (unit axes
    dropped)."""
    if _is_scalar(q):
        d = jvp(gradient, {q: sp.S.One})
        return _zero_like(gradient) if d is None else _tidy(d)
    if not _is_vector(q):
        raise NoMatrixForm(f"the Hessian block ({_name(p)}, {_name(q)}) has four axes (the "
                           f"parameter {_name(q)} is a {q.shape[0]} x {q.shape[1]} matrix) "
                           "and no matrix form: use sg.hvp, or the compiled f.hessian, which "
                           "computes it from Hessian-vector products")
    if not (_is_scalar(p) or _is_vector(p)):
        raise NoMatrixForm(f"the Hessian block ({_name(p)}, {_name(q)}) has four axes (the "
                           f"parameter {_name(p)} is a {p.shape[0]} x {p.shape[1]} matrix) "
                           "and no matrix form: use sg.hvp, or the compiled f.hessian")
    try:
        d = jacobian_columns(gradient, q)
    except NoMatrixForm as error:
        raise NoMatrixForm(f"the Hessian block ({_name(p)}, {_name(q)}) has no matrix form "
                           f"({error}): use sg.hvp, or the compiled f.hessian") from None
    d = _tidy(d)
    return d.T if _is_scalar(p) else d       # a scalar's row of directions: q's shape


def _name(s) -> str:
    return getattr(s, "name", str(s))


def hessian(expr, wrt) -> SecondOrder:
    """The Hessian of a scalar expression, block by block: ``{(p, q): d²f/dp dq}`` for every
    pair of ``wrt`` entries, each block in the shape convention (see the module docstring).

    >>> import sympy as sp, symgrad as sg
    >>> M, x, y = sg.matrix("M", 4, 3), sg.vector("x", 3), sg.vector("y", 4)
    >>> r = M @ x - y
    >>> sg.hessian(sg.dot(r, r), [x])[(x, x)]
    2*M.T*M
    """
    from symgrad.compiled import grad

    gradients = grad(expr, wrt)
    wrt = list(gradients)
    result = SecondOrder()
    result.kind = "hessian"
    for i, p in enumerate(wrt):
        for q in wrt[i:]:
            block = _block(gradients[p], p, q)
            result[(p, q)] = block
            if q is not p:
                result[(q, p)] = block.T if (_is_vector(p) and _is_vector(q)) else block
    # in wrt order, pair by pair
    ordered = SecondOrder({(p, q): result[(p, q)] for p in wrt for q in wrt})
    ordered.kind = "hessian"
    return ordered


def hvp(expr, wrt, tangents: Mapping) -> SecondOrder:
    """The Hessian-vector product ``{p: sum_q H[p, q] v_q}`` as expressions, forward over
    reverse (no Hessian is formed).  ``tangents`` maps parameters to directions of their shape;
    a parameter it leaves out does not move.

    >>> import sympy as sp, symgrad as sg
    >>> x, A, v = sg.vector("x", 3), sg.matrix("A", 3, 3), sg.vector("v", 3)
    >>> sg.hvp(sg.dot(x, A @ x), [x], {x: v})[x]
    A*v + A.T*v
    """
    from symgrad.compiled import grad

    gradients = grad(expr, wrt)
    moving = {}
    for s, v in dict(tangents).items():
        if s not in gradients:
            raise ValueError(f"tangent given for {_name(s)}, which is not in wrt "
                             f"({', '.join(_name(w) for w in gradients)})")
        v = sp.sympify(v)
        if isinstance(s, MatrixExpr) != isinstance(v, MatrixExpr) or (
                isinstance(s, MatrixExpr) and tuple(v.shape) != tuple(s.shape)):
            shape = tuple(v.shape) if isinstance(v, MatrixExpr) else "a scalar"
            want = tuple(s.shape) if isinstance(s, MatrixExpr) else "a scalar"
            raise ValueError(f"the tangent of {_name(s)} must have its shape {want}, got {shape}")
        moving[s] = v
    result = SecondOrder()
    result.kind = "hvp"
    for p, g in gradients.items():
        d = jvp(g, moving)
        result[p] = _zero_like(g) if d is None else _tidy(d)
    return result


def jacobian(expr, wrt) -> SecondOrder:
    """The Jacobian of a vector or matrix output, ``{q: d expr / d q}`` in the layout of the
    module docstring: for a column output y (m x 1) and a vector q (n x 1), an m x n matrix
    expression (d tanh(W x)/dx = (1 - y^2) ∘ W, i.e. diag(1 - y^2) W).  ``expr`` may also be
    an explicit ``sympy.Matrix`` of scalar expressions, differentiated entry by entry with
    respect to scalar symbols.

    >>> import symgrad as sg
    >>> W, x = sg.matrix("W", 2, 3), sg.vector("x", 3)
    >>> print(sg.show(sg.jacobian(sg.tanh(W @ x), [x]), output="y"))
    dy/dx = diag(1 - tanh(W x)^2) W
    """
    result = SecondOrder()
    result.kind = "jacobian"
    if isinstance(expr, sp.MatrixBase):
        explicit = sp.ImmutableMatrix(expr)
        for q in (wrt if isinstance(wrt, (list, tuple)) else [wrt]):
            if not isinstance(q, sp.Symbol):
                raise TypeError(f"the Jacobian of an explicit sympy.Matrix is taken with "
                                f"respect to scalar symbols; {q!r} is a {type(q).__name__}")
            result[q] = explicit.applyfunc(lambda e, q=q: _entry_derivative(e, q))
        return result
    expr = sp.sympify(expr)
    if not isinstance(expr, MatrixExpr):
        from symgrad.compiled import grad
        gradients = grad(expr, wrt)
        result.update(gradients)
        return result
    from symgrad.compiled import _check_wrt
    for q in _check_wrt(expr, wrt):
        if _is_scalar(q):
            d = jvp(expr, {q: sp.S.One})
            result[q] = _zero_like(expr) if d is None else _tidy(d)
            continue
        if not _is_vector(q) or (expr.shape[0] != 1 and expr.shape[1] != 1):
            raise NoMatrixForm(f"d {expr} / d {_name(q)} has more than two axes (output "
                               f"{tuple(expr.shape)}, parameter {tuple(q.shape)}): use the "
                               "compiled f.jacobian, or f.vjp")
        try:
            result[q] = _tidy(jacobian_columns(expr, q))
        except NoMatrixForm as error:
            raise NoMatrixForm(f"d {expr} / d {_name(q)} has no matrix form ({error}): use "
                               "the compiled f.jacobian") from None
    return result


def _entry_derivative(e, q):
    from symgrad.compiled import grad
    e = sp.sympify(e)
    if q not in e.free_symbols:
        return sp.S.Zero
    return grad(e, [q])[q]


# ------------------------------------------------------------------------------------------
# Printing
# ------------------------------------------------------------------------------------------
def readable(e):
    """The same matrix, written with matrix algebra where an elementwise loop is one:
    a column broadcast against a matrix is diag(column) times the matrix, a sum of maps is
    a sum of matrices (so that equal terms add up: lam/2 I + lam/2 I = lam I)."""
    from symgrad import ops

    if isinstance(e, ops.Map):
        operands = [readable(o) for o in e.operands]
        variables = e.function.variables
        body = e.body
        shape = e.shape
        full = [k for k, o in enumerate(operands) if isinstance(o, MatrixExpr)
                and tuple(o.shape) == tuple(shape)]
        if isinstance(body, sp.Add):
            terms = []
            for body_term in body.args:
                negative = body_term.could_extract_minus_sign()
                term = _restricted(-body_term if negative else body_term, variables,
                                   operands, shape)
                if not isinstance(term, MatrixExpr):     # a constant: broadcast
                    term = sp.MatMul(term, sp.OneMatrix(*shape))
                term = readable(term)
                terms.append(sp.MatMul(-1, term) if negative else term)
            return sp.MatAdd(*terms).doit()
        if len(full) == 1:
            k = full[0]
            rest, dependent = body.as_independent(variables[k], as_Add=False)
            if dependent == variables[k]:
                others = _restricted(rest, variables, operands, shape)
                if not isinstance(others, MatrixExpr):
                    return sp.MatMul(others, operands[k]).doit() if others != 1 \
                        else operands[k]
                if shape[1] != 1 and tuple(others.shape) == (shape[0], 1):
                    if isinstance(operands[k], sp.Identity):
                        return sp.DiagMatrix(readable(others))
                    return sp.MatMul(sp.DiagMatrix(readable(others)), operands[k])
                if shape[0] != 1 and tuple(others.shape) == (1, shape[1]):
                    return sp.MatMul(operands[k], sp.DiagMatrix(readable(others).T))
        return ops.Map(e.function, e.shape, *operands)
    if isinstance(e, (sp.MatAdd, sp.MatMul, sp.Transpose)):
        return e.func(*[readable(a) if isinstance(a, sp.Basic) else a for a in e.args]).doit()
    return e


def _restricted(body, variables, operands, shape):
    """The Map of ``body`` over only the operands it uses, narrowed to their broadcast shape;
    a scalar when it uses no matrix."""
    from symgrad import ops

    used = [k for k, v in enumerate(variables) if body.has(v)]
    matrices = [operands[k] for k in used if isinstance(operands[k], MatrixExpr)]
    if not matrices:
        return body.xreplace({variables[k]: operands[k] for k in used})
    rows = shape[0] if any(m.shape[0] != 1 for m in matrices) else 1
    cols = shape[1] if any(m.shape[1] != 1 for m in matrices) else 1
    if len(used) == 1 and body == variables[used[0]] and tuple(matrices[0].shape) == (rows, cols):
        return matrices[0]
    return ops.Map(sp.Lambda(tuple(variables[k] for k in used), body), (rows, cols),
                   *[operands[k] for k in used])


def _show(blocks: SecondOrder, output: str, latex: bool) -> str:
    from symgrad.show import FormulaLatexPrinter, FormulaPrinter

    class Printer(FormulaPrinter):
        def _print_DiagMatrix(self, expr):
            return f"diag({self._print(expr.args[0])})"

    class LatexPrinter(FormulaLatexPrinter):
        def _print_DiagMatrix(self, expr):
            return rf"\operatorname{{diag}}\left({self._print(expr.args[0])}\right)"

    printer = LatexPrinter() if latex else Printer()
    lines = []
    for key, e in blocks.items():
        text = printer.doprint(readable(e)).replace("+ -", "- ")
        if not latex:
            text = text.replace("**", "^")
        if blocks.kind == "hessian":
            p, q = key
            name = (rf"\frac{{\partial^2 {output}}}{{\partial {_name(p)}\, \partial {_name(q)}}}"
                    if latex else f"d²{output}/d{_name(p)} d{_name(q)}")
        elif blocks.kind == "hvp":
            name = (rf"\left(H v\right)_{{{_name(key)}}}" if latex
                    else f"(H v)_{_name(key)}")
        else:
            name = (rf"\frac{{\partial {output}}}{{\partial {_name(key)}}}" if latex
                    else f"d{output}/d{_name(key)}")
        lines.append(f"{name} &= {text}" if latex else f"{name} = {text}")
    if latex:
        return "\\begin{aligned}\n" + " \\\\\n".join(lines) + "\n\\end{aligned}"
    return "\n".join(lines)
