"""Formulas for people: ``sg.show`` (text) and ``sg.latex`` (LaTeX) of gradients.

The text printer and the naming of shared pieces are symgrad.codegen.docstring's (compiled
and generated modules print their formulas with them); this adds the LaTeX printer, with the
same conventions, and the notebook display of gradients and of symgrad's nodes.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE

from symgrad import operations, ops
from symgrad.codegen.docstring import (
    FormulaPrinter,
    Gradients,
    _elementwise_reciprocal,
    _is_matrix_valued,
    _looks_atomic,
    _Piece,
    _pieces,
    _readable_body,
    _show_lines,
)
from symgrad.nodes import one_call

__all__ = ["FormulaLatexPrinter", "latex", "show"]


class FormulaLatexPrinter(LatexPrinter):
    """LaTeX with the same conventions: \\circ for elementwise products."""

    def __init__(self, names: dict | None = None):
        super().__init__()
        self.names = names or {}

    def _print(self, expr, **kwargs):
        if expr in self.names:
            return self.names[expr]
        operation = operations.of(expr)     # symgrad/operations/: its file prints it
        if operation is not None and operation.latex is not None:
            return operation.latex(expr, self)
        return super()._print(expr, **kwargs)

    def _print_Map(self, expr):
        # the body in LaTeX, as SymPy prints scalars (\tanh, \operatorname{sigmoid}, \frac),
        # each operand a piece printed by this printer
        return self._print(_readable_body(expr, self))

    def _print__Piece(self, expr):
        return expr.name

    def _needs_mul_brackets(self, expr, first=False, last=False) -> bool:
        # SymPy brackets the factors of a product by their type, and a piece is a symbol
        if isinstance(expr, _Piece):
            return not expr.atomic
        return super()._needs_mul_brackets(expr, first, last)

    def _needs_add_brackets(self, expr) -> bool:
        if isinstance(expr, _Piece):
            return not expr.atomic
        return super()._needs_add_brackets(expr)

    def _print_Mul(self, expr):
        negated = -expr
        if isinstance(negated, _Piece) and not negated.atomic:
            # SymPy prints -(piece) as "- " and the piece, which it takes for a symbol
            return rf"- \left({negated.name}\right)"
        factors = expr.as_ordered_factors()
        matrix_factors = [f for f in factors if _is_matrix_valued(f)]
        if len(matrix_factors) < 2 and not any(_elementwise_reciprocal(f) for f in factors):
            return super()._print_Mul(expr)
        # 1/M of a matrix piece M stays M^{\circ -1}: a fraction would read as an inverse
        coefficient = sp.Mul(*[f for f in factors if not _is_matrix_valued(f)])
        text = r" \circ ".join(self.parenthesize(f, PRECEDENCE["Mul"]) for f in matrix_factors)
        if coefficient == 1:
            return text
        if coefficient == -1:
            return f"- {text}"
        return f"{self.parenthesize(coefficient, PRECEDENCE['Mul'])} {text}"

    def _print_Pow(self, expr):
        if isinstance(expr.base, _Piece) and expr.base.matrix and expr.exp.is_Integer:
            # an elementwise power; a negative one marked elementwise, as in the text
            base = self.parenthesize(expr.base, PRECEDENCE["Pow"])
            mark = r"\circ " if expr.exp < 0 else ""
            return f"{base}^{{{mark}{expr.exp}}}"
        return super()._print_Pow(expr)

    def parenthesize(self, item, level, is_neg=False, strict=False):
        # an elementwise region prints as its body, whose precedence SymPy cannot see: group
        # it wherever its text is more than one term, as the text printer does
        if isinstance(item, ops.Map):
            text = self._print(item)
            return text if _looks_atomic(text) else rf"\left({text}\right)"
        if isinstance(item, _Piece) and not item.atomic and level >= PRECEDENCE["Add"]:
            return rf"\left({item.name}\right)"
        return super().parenthesize(item, level, is_neg, strict)


@one_call
def show(grads, output: str = "f") -> str:
    """The gradients as text, each shared piece named once.

    >>> import sympy as sp, symgrad as sg
    >>> w, x, y = sp.symbols("w x y")
    >>> print(sg.show(sg.grad((w * x - y) ** 2, [w]), output="loss"))
    dloss/dw = x*(2*w*x - 2*y)
    """
    if isinstance(grads, sp.Basic):
        return FormulaPrinter().doprint(grads)
    if hasattr(grads, "_show"):          # Hessians, HVPs, Jacobians (symgrad.second)
        return grads._show(output)
    return "\n".join(_show_lines(grads, output))


@one_call
def latex(grads, output: str = "f") -> str:
    """The gradients (or one expression) as LaTeX, shared pieces named once."""
    printer = FormulaLatexPrinter()
    if isinstance(grads, sp.Basic):
        return printer.doprint(grads)
    if hasattr(grads, "_show"):          # Hessians, HVPs, Jacobians (symgrad.second)
        return grads._show(output, latex=True)
    pieces, lines, _ = _pieces(grads, output)
    rows = [rf"{_latex_name(name)} &= {printer.doprint(e)}" for name, e in pieces + lines]
    return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"


def _latex_name(name: str) -> str:
    if "/" in name:
        top, bottom = name.split("/")
        return rf"\frac{{\partial {top[1:]}}}{{\partial {bottom[1:]}}}"
    return {"delta": r"\delta"}.get(name, name)


def _install_printing() -> None:
    """latex() of symgrad's nodes uses the LaTeX printer; gradients display as LaTeX in a
    notebook.  The operations of symgrad/operations/ print by their ``latex`` hook (those
    without one as SymPy prints them)."""
    ops.Map._latex = lambda self, printer: FormulaLatexPrinter()._print_Map(self)
    for cls, operation in operations.OPERATIONS.items():
        if operation.latex is not None and cls.__module__.partition(".")[0] == "symgrad":
            cls._latex = (lambda latex: lambda self, printer: latex(self, FormulaLatexPrinter()))(
                operation.latex)
    Gradients._repr_latex_ = lambda self: "$\\displaystyle " + latex(self) + "$"


_install_printing()
