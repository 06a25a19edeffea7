"""``sg.explain``: reverse mode told step by step, with numbers.

The forward pass lists every value, operands before the operations that use them.  The
backward pass seeds the output with 1, then visits the operations in reverse topological
order: each one's upstream gradient (the sum of what its consumers sent back, written out
where a value branches), and for each operand the local gradient, and the product
``local x upstream`` that travels down the edge.  For a matrix operation the local gradient
is a Jacobian, so the step shows the rule's vector-Jacobian product instead (``upstream x^T``
for ``W x``, with ``upstream`` the operation's adjoint).  It ends with each gradient as the
sum of its branches.
"""

from __future__ import annotations

import numpy as np
from sympy.matrices.expressions.matexpr import MatrixExpr

from symgrad.nodes import one_call
from symgrad.present.walk import Backprop, Edge, Node, backprop, describe_point, format_value

__all__ = ["explain", "Explanation"]

_NAME_LIMIT = 40     # longer formulas are called by their node instead


@one_call
def explain(model_or_expr, at: dict, wrt=None, output: str | None = None) -> Explanation:
    """Walk through reverse mode on a model at a point, with numbers.

    ``model_or_expr``, ``wrt`` and ``output`` as for :func:`symgrad.graph`; ``at`` maps
    every input's name to its value.  The result prints as text.

    >>> import sympy as sp, symgrad as sg
    >>> x, y, z = sp.symbols("x y z")
    >>> text = str(sg.explain((x + y) * sp.Max(y, z), at={"x": 1, "y": 2, "z": 0}))
    >>> for line in text.splitlines()[-3:]: print(line)
      df/dx = 2
      df/dy = 3 + 2 = 5
      df/dz = 0
    """
    if at is None:
        raise ValueError("sg.explain needs values: at={input name: value, ...}")
    return Explanation(backprop(model_or_expr, at=at, wrt=wrt, output=output))


class Explanation:
    """The step-by-step text of :func:`explain`; ``str()`` (or ``print``) shows it and
    ``walk`` holds the numbers (:class:`~symgrad.present.walk.Backprop`)."""

    def __init__(self, walk: Backprop):
        self.walk = walk
        self.lines = _Writer(walk).lines()

    def __str__(self) -> str:
        return "\n".join(self.lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer, cycle) -> None:   # IPython shows the text itself
        printer.text(str(self))


class _Writer:
    def __init__(self, walk: Backprop):
        self.walk = walk
        self.f = walk.output_name

    # -- how nodes are called ------------------------------------------------------------
    def called(self, node: Node) -> str:
        if node is self.walk.output:
            return self.f
        if node.name:
            return node.name
        if len(node.formula) <= _NAME_LIMIT:
            return node.formula
        return f"node {node.id} ({node.text})"

    @staticmethod
    def shape(node: Node) -> str:
        if not node.shape:
            return ""
        value = np.asarray(node.value) if node.value is not None else None
        dims = value.shape if value is not None and value.ndim == 2 else node.shape
        return " (" + "×".join(str(d) for d in dims) + ")"

    # -- the text --------------------------------------------------------------------------
    def lines(self) -> list[str]:
        walk = self.walk
        point = describe_point(walk.at)
        out = [f"Reverse mode through {self.f} = {walk.output.formula} at {point}", ""]
        out.append("Forward pass (operands before the operations that use them):")
        for node in walk.nodes:
            if node.kind == "constant" and node.expression.is_number:
                continue
            head = self.called(node)
            text = head if head == node.formula else f"{head} = {node.formula}"
            if node is walk.output:
                text = f"{self.f} = {node.formula}"
            out.append(f"  {text}{self.shape(node)} = {_value(node.value)}")
        out.append("")
        out.append(f"Backward pass (the output seeded with d{self.f}/d{self.f} = 1; "
                   "downstream = local gradient × upstream):")
        for node, edges in self.visits():
            out.append(f"  {self.called(node)}{self.shape(node)}: upstream "
                       f"{self.upstream(node)}")
            for edge in edges:
                out.append("    " + self.step(edge))
        out.append("")
        out.append("Gradients (summed over the branches where a value is used twice or "
                   "more):")
        by_symbol = {node.expression: node for node in walk.inputs}
        for symbol in walk.wrt:
            node = by_symbol.get(symbol)
            if node is None:       # a parameter the output does not use: gradient 0
                out.append(f"  d{self.f}/d{symbol.name} = 0 (the output does not use it)")
                continue
            out.append(f"  d{self.f}/d{node.name}{self.shape(node)} = {self.total(node)}")
        return out

    def visits(self) -> list[tuple[Node, list[Edge]]]:
        """The operations in the order the backward walk visited them, with the edges each
        sent a gradient along."""
        order: list = []
        sent: dict = {}
        for edge in self.walk.steps:
            if edge.head not in sent:
                order.append(edge.head)
                sent[edge.head] = []
            if edge not in sent[edge.head]:
                sent[edge.head].append(edge)
        return [(node, sent[node]) for node in order]

    def upstream(self, node: Node) -> str:
        if node is self.walk.output:
            return "1 (the seed)"
        parts = [e for e in self.walk.steps if e.tail is node]
        total = _value(node.gradient)
        if node.gradient_name:
            total = f"{node.gradient_name} = {total}"
        if len(parts) > 1:
            return " + ".join(_value(e.gradient) for e in parts) + f" = {total}" + \
                f" (from {', '.join(self.called(e.head) for e in parts)})"
        return total

    def step(self, edge: Edge) -> str:
        to = f"to {self.called(edge.tail)}:"
        if isinstance(edge.head.expression, MatrixExpr) or edge.local is None:
            # the rule's vector-Jacobian product, then what it is with this upstream
            rule = edge.local_formula or ""
            actual = edge.gradient_formula or ""
            text = f"{to} {rule}" + ("" if actual in ("", rule) else f" → {actual}")
            return f"{text} = {_value(edge.gradient)}"
        local = _value(edge.local)
        formula = edge.local_formula
        local_text = local if formula in (None, local) else f"{formula} = {local}"
        upstream = _value(edge.head.gradient) if edge.head is not self.walk.output else "1"
        return (f"{to} local gradient {local_text}; {local} × {upstream} = "
                f"{_value(edge.gradient)}")

    def total(self, node: Node) -> str:
        parts = [e for e in self.walk.steps if e.tail is node]
        total = _value(node.gradient)
        if len(parts) > 1:
            return " + ".join(_value(e.gradient) for e in parts) + f" = {total}"
        return total


def _value(value) -> str:
    return format_value(value, entries=3)
