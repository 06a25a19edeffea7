"""Backpropagation as the lecture draws it: nodes, edges, forward values and gradients.

:func:`backprop` runs symgrad's own derivation (``derive/reverse.py``) once and reads the walk
it records (:class:`~symgrad.derive.reverse.Walk`): the canonical DAG in topological order,
what each node sent to each child, and each node's summed adjoint.  Nothing is derived a
second time, so the picture (``sg.graph``) and the explanation (``sg.explain``) show exactly
what the compiled code computes, with the same names as ``sg.show`` (``h``, ``delta``,
``Z1``, ``dZ1``).

With values for the inputs, every node value, edge contribution and adjoint is evaluated with
NumPy (the translator of ``sg.check``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

from symgrad import operations, ops
from symgrad.codegen.runtime import _reals
from symgrad.nodes import built, replaced

__all__ = ["Node", "Edge", "Backprop", "backprop", "format_value", "describe_point",
           "dimension_size"]


def _named(node) -> bool:
    """Whether the node is its operand under a name (``sg.name``): it is drawn as that."""
    return operations.label_of(node) is not None


def UPSTREAM(rows, cols):  # noqa: N802 - reads as the symbol it makes
    """The upstream gradient of a matrix node in a printed rule (never in a program)."""
    return sp.MatrixSymbol("upstream", rows, cols)

_OPERATORS = {sp.Add: "+", sp.Mul: "*", sp.Max: "max", sp.Min: "min"}


@dataclass(eq=False)
class Node:
    """One node of the computation graph.

    ``kind`` is ``"input"`` (a symbol of the model), ``"constant"`` (a number, a dimension,
    a constant matrix) or ``"operation"``; ``text`` is what the picture writes in it (``+``,
    ``W x``, ``sigmoid(• + b)``), ``formula`` the whole expression with ``sg.show``'s names,
    ``name`` the input's or the piece's name (``h``, ``Z1``) and ``gradient_name`` the name of
    its adjoint (``delta``, ``dZ1``).  ``value`` and ``gradient`` are NumPy values (a float,
    or an array in the node's shape) when the graph was built ``at`` a point; ``gradient`` is
    the sum of what the node's consumers sent back (``None`` where nothing depends on a
    parameter).
    """

    id: str
    expression: Any
    kind: str
    text: str
    formula: str
    shape: tuple = ()
    name: str | None = None
    gradient_name: str | None = None
    value: Any = None
    gradient: Any = None
    incoming: list = field(default_factory=list)   # the edges that bring its operands
    outgoing: list = field(default_factory=list)   # the edges to its consumers


@dataclass(eq=False)
class Edge:
    """An operand ``tail`` flowing into the operation ``head``.

    ``value`` is the tail's value (written above the edge), ``gradient`` what the head sent
    back to the tail (written below it), ``gradient_formula`` that contribution as a formula,
    ``local_formula`` the head's local gradient with respect to this operand (for a scalar
    head, a number times ``upstream``; for a matrix head, the vector-Jacobian product with
    ``upstream`` standing for the head's adjoint) and ``local`` its value for a scalar head.
    """

    tail: Node
    head: Node
    gradient_formula: str | None = None
    local_formula: str | None = None
    gradient: Any = None
    local: Any = None
    contribution: Any = field(default=None, repr=False)      # over the derivation's names
    local_expression: Any = field(default=None, repr=False)

    @property
    def value(self):
        return self.tail.value


@dataclass(eq=False)
class Backprop:
    """The walk of reverse mode over one model, ready to draw or to explain.

    ``nodes`` are in topological order (operands before the operations that use them),
    ``output`` is the node whose value is the model's, ``output_name`` what the picture calls
    it (``f``), ``steps`` the edges in the order the backward walk visited them, and
    ``wrt`` the symbols whose gradients were derived.  ``at`` holds the input values (by
    name) when the walk was evaluated, else ``None``.
    """

    expression: Any
    wrt: list
    output_name: str
    nodes: list
    edges: list
    steps: list
    output: Node
    at: dict | None = None
    dimensions: dict = field(default_factory=dict)

    def node(self, name: str) -> Node:
        """The node called ``name`` (an input, or a piece such as ``h`` or ``Z1``)."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node is called {name!r}; names: "
                       f"{[n.name for n in self.nodes if n.name]}")

    @property
    def inputs(self) -> list:
        return [n for n in self.nodes if n.kind == "input"]


# ------------------------------------------------------------------------------------------
# Building the walk
# ------------------------------------------------------------------------------------------
def backprop(model_or_expr, at: dict | None = None, wrt=None,
             output: str | None = None) -> Backprop:
    """Derive the model's gradients once and lay out the walk (see the module docstring).

    ``model_or_expr`` is an ``sg.Model`` or a scalar SymPy expression; ``wrt`` defaults to the
    model's parameters, or to every input of an expression.  ``at`` maps input names (or
    symbols) to values: numbers for scalars, arrays for matrices (a vector as ``(n,)`` or
    ``(n, 1)``).

    >>> import sympy as sp
    >>> x, y, z = sp.symbols("x y z")
    >>> walk = backprop((x + y) * sp.Max(y, z), at={"x": 1, "y": 2, "z": 0})
    >>> [float(walk.node(v).gradient) for v in "xyz"]
    [2.0, 5.0, 0.0]
    """
    from symgrad.compiled import _check_wrt, inputs_of
    from symgrad.derive.reverse import derive
    from symgrad.model import Model

    if isinstance(model_or_expr, Model):
        expr = model_or_expr.output
        wrt = model_or_expr.wrt if wrt is None else wrt
        output = output or model_or_expr.name
    else:
        expr = sp.sympify(model_or_expr)
    if isinstance(expr, MatrixExpr) and tuple(expr.shape) != (1, 1):
        raise ValueError(f"the graph needs a scalar output (a loss); this one has shape "
                         f"{tuple(expr.shape)}")
    wrt = inputs_of(expr, []) if wrt is None else _check_wrt(expr, wrt)
    output = output or "f"
    derivation = derive(expr, wrt)
    builder = _Builder(derivation, wrt)
    walk = builder.build(expr, output)
    if at is not None:
        _evaluate(walk, derivation, expr, wrt, at)
    return walk


class _Builder:
    """Turns a derivation's walk into nodes and edges with printable texts."""

    def __init__(self, derivation, wrt):
        from symgrad.codegen.docstring import piece_names

        self.derivation = derivation
        self.walk = derivation.walk
        self.definitions = dict(derivation.assignments)
        # the names sg.show gives: lower the program the same way, then map each of the
        # derivation's names to its atom in that program
        program = _lowered(derivation, wrt)
        named, _ = piece_names(program)
        self.pieces = {name: named[atom] for name, atom in program.names.items()
                       if isinstance(atom, sp.Basic) and atom in named}
        self.memo: dict = {}

    # -- representatives ---------------------------------------------------------------
    @staticmethod
    def represented(node):
        """A named node (``sg.name``) is drawn as the node it names."""
        while _named(node):
            node = node.arg
        return node

    def build(self, expr, output_name: str) -> Backprop:
        from symgrad.derive.graph import children
        from symgrad.derive.reverse import is_leaf

        walk = self.walk
        labels = {}       # representative -> the user's sg.name label
        for node in walk.nodes:
            if _named(node):
                labels.setdefault(self.represented(node), operations.label_of(node))
        dims = _dimension_symbols(expr)
        nodes: dict = {}
        for node in walk.nodes:
            if _named(node):
                continue
            drawn = Node(id=f"n{len(nodes)}", expression=node, kind="operation", text="",
                         formula="", shape=_shape(node))
            if is_leaf(node):
                drawn.kind = "input" if (isinstance(node, (sp.Symbol, sp.MatrixSymbol))
                                         and node not in dims) else "constant"
                drawn.text = drawn.formula = _printed(node)
                drawn.name = drawn.text if drawn.kind == "input" else None
            else:
                value_name = walk.values[node]
                drawn.name = labels.get(node) or self.pieces.get(value_name)
                drawn.text = self.operator_text(node)
                drawn.formula = self.formula(value_name, top=True)
            adjoint = walk.adjoints.get(node)
            if adjoint is not None:
                drawn.gradient_name = self.pieces.get(adjoint)
            nodes[node] = drawn
        # a named node's adjoint is its child's: give the child the label's d-name
        for node in walk.nodes:
            if _named(node):
                drawn = nodes[self.represented(node)]
                adjoint = walk.adjoints.get(node)
                if adjoint is not None and drawn.gradient_name is None:
                    drawn.gradient_name = self.pieces.get(adjoint)

        # One edge per operand position: an operation that takes one value twice (A A,
        # x^x) has two edges from it, each carrying its own contribution, so that what they
        # show adds up to the value's gradient.  Keyed by (operand, operation, occurrence).
        edges: dict = {}
        for node in walk.nodes:
            if _named(node) or is_leaf(node):
                continue
            seen: dict = {}
            for child in children(node):
                if isinstance(node, sp.Pow) and child is node.exp and child.is_number:
                    continue       # a number exponent is written in the node (^2, 1/•)
                tail = self.represented(child)
                occurrence = seen[tail] = seen.get(tail, -1) + 1
                edges[(tail, node, occurrence)] = Edge(tail=nodes[tail], head=nodes[node])
        # constants left without a consumer (those exponents) are not drawn
        used = {edge.tail for edge in edges.values()} | {edge.head for edge in edges.values()}
        nodes = {k: v for k, v in nodes.items()
                 if v.kind != "constant" or v in used or len(nodes) == 1}
        steps = []
        locals_of = self._local_formulas()
        sent_so_far: dict = {}     # (operand, operation) -> contributions seen
        senders: dict = {}         # operand -> how many contributions it receives
        for sender, kid, _ in walk.sent:
            if not _named(sender):
                kid = self.represented(kid)
                senders[kid] = senders.get(kid, 0) + 1
        for node, child, contribution in walk.sent:
            if _named(node):
                continue
            pair = (self.represented(child), node)
            occurrence = sent_so_far[pair] = sent_so_far.get(pair, -1) + 1
            edge = edges[(*pair, occurrence)]
            edge.contribution = contribution
            edge.gradient_formula = self.formula(contribution)
            tail = edge.tail
            if tail.gradient_name and senders[tail.expression] == 1:
                edge.gradient_formula = tail.gradient_name   # the one part of its adjoint
            local = locals_of.get((node, pair[0], occurrence))
            if local is not None:
                edge.local_expression = local
                edge.local_formula = self.formula(local)
            steps.append(edge)
        for edge in edges.values():
            edge.tail.outgoing.append(edge)
            edge.head.incoming.append(edge)
        output = nodes[self.represented(walk.nodes[-1])]
        return Backprop(expression=expr, wrt=list(self.derivation.wrt),
                        output_name=output_name, nodes=list(nodes.values()),
                        edges=list(edges.values()), steps=steps, output=output)

    def _local_formulas(self) -> dict:
        """(node, operand, occurrence) -> the node's rule applied to a unit upstream gradient
        (for a scalar node: the local gradient itself), or for a matrix node to the
        placeholder ``upstream`` (the vector-Jacobian product, since a Jacobian is no
        picture).  ``occurrence`` counts the positions where the node takes that operand."""
        from symgrad.derive.graph import Canonicalizer, children, is_matrix
        from symgrad.derive.reverse import is_leaf
        from symgrad.derive.rules import rule_for

        canonicalize = Canonicalizer()
        walk = self.walk
        out = {}
        for node in walk.nodes:
            if is_leaf(node) or _named(node) or node not in walk.adjoints:
                continue
            kids = children(node)
            upstream = UPSTREAM(*node.shape) if is_matrix(node) else sp.S.One
            contributions = rule_for(node)(upstream, walk.values[node],
                                           *[walk.values[c] for c in kids],
                                           node=walk.operations[node])
            seen: dict = {}
            for kid, contribution in zip(kids, contributions):
                if contribution is not None:
                    kid = self.represented(kid)     # as the edges are keyed
                    occurrence = seen[kid] = seen.get(kid, -1) + 1
                    out[(node, kid, occurrence)] = canonicalize(contribution)
        return out

    # -- text ------------------------------------------------------------------------------
    def operator_text(self, node) -> str:
        """What the picture writes in an operation's node."""
        from symgrad.codegen.docstring import FormulaPrinter

        if not isinstance(node, MatrixExpr):
            if isinstance(node, MatrixElement):
                return f"[{node.i}, {node.j}]"
            for kind, symbol in _OPERATORS.items():
                if isinstance(node, kind):
                    return symbol
            if isinstance(node, sp.Pow):
                exponent = node.exp
                if exponent == -1:
                    return "1/•"
                if exponent == sp.Rational(1, 2):
                    return "sqrt"
                return f"^{_printed(exponent)}" if exponent.is_number else "pow"
            if isinstance(node, sp.Function):
                return type(node).__name__
        operation = self.walk.operations[node]
        placeholders = {}
        for child in _operands(operation):
            if child in self.definitions:
                # an unnamed operand is a bullet (its arrow says where it comes from);
                # "#" sorts first, so that a bias reads "• + b", as written on the board
                text = self.pieces.get(child) or f"#placeholder{len(placeholders)}#"
                placeholders[child] = sp.MatrixSymbol(text, *child.shape) \
                    if isinstance(child, MatrixExpr) else sp.Symbol(text)
        text = FormulaPrinter().doprint(replaced(operation, placeholders))
        for k in range(len(placeholders)):
            text = text.replace(f"#placeholder{k}#", "•")
        return _tidy(text)

    def formula(self, expression, top: bool = False) -> str:
        """An expression of the derivation's names, written out with the pieces' names, and
        cut to its first ``FORMULA_NODES`` nodes (written out, a piece that a deep model
        shares is repeated at each use: its text grows exponentially with the depth)."""
        from symgrad.codegen.docstring import FormulaPrinter

        return _tidy(FormulaPrinter().doprint(_elided(self._readable(expression, top))))

    def _readable(self, e, top=False):
        from symgrad.derive.graph import Canonicalizer

        if e in self.definitions:
            piece = self.pieces.get(e)
            if piece and not top:
                return sp.MatrixSymbol(piece, *e.shape) if isinstance(e, MatrixExpr) \
                    else sp.Symbol(piece)
            key = (e, top)
            if key not in self.memo:
                self.memo[key] = self._readable(self.definitions[e])
            return self.memo[key]
        if isinstance(e, ops.Map):
            return ops.Map(e.function, e.shape, *[self._readable(o) for o in e.operands])
        if isinstance(e, sp.Transpose):
            return Canonicalizer()._transpose(self._readable(e.arg))
        if isinstance(e, sp.Basic) and e.args and not isinstance(e, (sp.MatrixSymbol,
                                                                     sp.Lambda)):
            return built(e.func, [self._readable(a) if isinstance(a, sp.Basic) else a
                              for a in e.args])
        return e


FORMULA_NODES = 120     # nodes of a formula written out; the rest is "…"
ELLIPSIS = "…"


def _elided(e, budget: int = FORMULA_NODES):
    """e with the subexpressions beyond its first ``budget`` nodes, breadth first (the top
    of the formula kept, its depths cut), written as ``…``; e itself where it is no larger.
    Visits at most ``budget`` nodes and their operands, however large e is as a tree.

    >>> x, y = sp.symbols("x y")
    >>> _elided(sp.sin(x + y) * sp.cos(x + y), budget=5), _elided(x + y, budget=3)
    (sin(…)*cos(…), x + y)
    >>> _elided(x * y * sp.sin(x), budget=3)
    …
    """
    def opened(node) -> bool:
        return bool(node.args) and not isinstance(node, (sp.MatrixSymbol, sp.Lambda, ops.Map))

    nodes = [e]            # the nodes visited, breadth first
    operands: list = []    # of each: its operands' indices in nodes (None: not an
    k = 0                  # expression), [] for a leaf, or None where it is cut
    while k < len(nodes):
        node = nodes[k]
        positions: list | None = []
        if opened(node):
            # all of a node's operands or none (a product is no row of …)
            if len(nodes) + sum(isinstance(a, sp.Expr) for a in node.args) <= budget:
                for a in node.args:
                    positions.append(len(nodes) if isinstance(a, sp.Expr) else None)
                    if isinstance(a, sp.Expr):
                        nodes.append(a)
            else:
                positions = None
        operands.append(positions)
        k += 1
    rebuilt: list = [None] * len(nodes)
    for k in reversed(range(len(nodes))):
        node = nodes[k]
        if operands[k] is None:
            rebuilt[k] = _ellipsis_like(node)
            continue
        if not operands[k]:
            rebuilt[k] = node
            continue
        new = [rebuilt[j] if j is not None else a for a, j in zip(node.args, operands[k])]
        if all(n is a for n, a in zip(new, node.args)):
            rebuilt[k] = node
        elif isinstance(node, (sp.Add, sp.Mul)):
            rebuilt[k] = type(node)._from_args(new)     # as it stands: … + … is no 2*…
        else:
            rebuilt[k] = built(node.func, new)
    return rebuilt[0]


def _ellipsis_like(a):
    """``…`` in a's place: a matrix symbol of its shape, a scalar symbol, or a itself where
    it is no expression (a Map's shape)."""
    if not isinstance(a, sp.Expr):
        return a
    if isinstance(a, MatrixExpr):
        return sp.MatrixSymbol(ELLIPSIS, *a.shape)
    return sp.Symbol(ELLIPSIS)


def _lowered(derivation, wrt):
    from symgrad.optimize import lower

    outputs = {getattr(w, "name", str(w)): derivation.gradients[w] for w in wrt}
    return lower(derivation, outputs, list(wrt))


def _operands(operation) -> list:
    if isinstance(operation, ops.Map):
        return list(operation.operands)
    out = []
    for a in getattr(operation, "args", ()):
        if isinstance(a, (sp.Symbol, sp.MatrixSymbol)):
            out.append(a)
        elif isinstance(a, sp.Transpose) and isinstance(a.arg, sp.MatrixSymbol):
            out.append(a.arg)
    return out


def _printed(e) -> str:
    from symgrad.codegen.docstring import FormulaPrinter

    return _tidy(FormulaPrinter().doprint(e))


def _tidy(text: str) -> str:
    return text.replace("+ -", "- ")


def _shape(node) -> tuple:
    if isinstance(node, MatrixExpr):
        return tuple(node.shape)
    return ()


def _dimension_symbols(expr) -> set:
    from symgrad.compiled import shape_symbols

    return shape_symbols(expr)


# ------------------------------------------------------------------------------------------
# Numbers
# ------------------------------------------------------------------------------------------
def _evaluate(walk: Backprop, derivation, expr, wrt, at: dict) -> None:
    """Evaluate every node value, adjoint, edge contribution and local gradient at ``at``."""
    from symgrad.checking.sampling import bind_dimensions, normalize
    from symgrad.checking.translate import translate
    from symgrad.compiled import inputs_of, shape_symbols
    from symgrad.derive.reverse import inline_all
    from symgrad.nodes import shared

    inputs = inputs_of(expr, wrt)
    given = _given(at, inputs, shape_symbols(expr))
    dims = {d: dimension_size(d.name, given.pop(d.name))
            for d in shape_symbols(expr) if d.name in given}
    for d, size in bind_dimensions(inputs, given).items():
        if dims.get(d, size) != size:
            raise ValueError(f"at= gives {d.name} = {dims[d]}, but the inputs' shapes give "
                             f"{d.name} = {size}")
        dims[d] = size
    missing = [d.name for d in shape_symbols(expr) if d not in dims]
    if missing:
        raise ValueError(f"at= fixes no size for the dimension(s) {', '.join(missing)}: give "
                         "an input of that shape or the size itself (at={'"
                         f"{missing[0]}': 4}})")
    for s in inputs:
        if not isinstance(s, MatrixExpr) and s.name in given:
            value = np.asarray(given[s.name])
            if value.ndim != 0:
                raise ValueError(f"at[{s.name!r}] has shape {value.shape}; {s.name} is a "
                                 "scalar of the model, so the picture needs one number")
    values = normalize(inputs, given, dims, elementwise=False)

    wanted: list = []          # (object, attribute, expression of the derivation's names)
    for node in walk.nodes:
        wanted.append((node, "value", node.expression))
        adjoint = derivation.walk.adjoints.get(node.expression)
        if adjoint is not None:
            wanted.append((node, "gradient", adjoint))
    for edge in walk.steps:
        wanted.append((edge, "gradient", edge.contribution))
        if edge.local_expression is not None and not isinstance(edge.head.expression,
                                                                MatrixExpr):
            wanted.append((edge, "local", edge.local_expression))
    # over the inputs in one walk, one object per value: the translation then writes each
    # shared piece once (inlined one by one, the pieces of a deep model were copies, which
    # SymPy compares node by node along every path)
    expressions = shared(inline_all(derivation, [w[2] for w in wanted]))
    function = translate(expressions, inputs, "numpy", dims)
    with np.errstate(all="ignore"):
        results = function(**values)
    for (target, attribute, _), result in zip(wanted, results):
        setattr(target, attribute, _as_value(result))
    walk.at = {s.name: values[s.name] for s in inputs}
    walk.dimensions = {d.name: n for d, n in dims.items()}


def dimension_size(name: str, value) -> int:
    """A dimension's size given in ``at=`` (or ``--at``): a whole number of at least 1, as
    an int; anything else (2.5, 0, nan) is an error naming it, not a truncated size.

    >>> dimension_size("m", 4.0)
    4
    """
    array = np.asarray(value)
    number = float(array) if array.ndim == 0 and array.dtype.kind in "biuf" else math.nan
    if not (number >= 1 and number == int(number)):
        raise ValueError(f"at[{name!r}] = {value!r}: the size of a dimension is a whole "
                         "number of at least 1")
    return int(number)


def _given(at: dict, inputs: list, dimensions: set) -> dict:
    """``at`` keyed by name, with unknown names reported."""
    if not isinstance(at, dict):
        raise TypeError(f"at= must be a dict of input names to values, got {type(at).__name__}")
    known = {s.name for s in inputs} | {d.name for d in dimensions}
    given = {}
    for key, value in at.items():
        name = key if isinstance(key, str) else getattr(key, "name", str(key))
        if name not in known:
            raise ValueError(f"at= names {name!r}, which is not an input of the model "
                             f"(inputs: {', '.join(sorted(known))})")
        given[name] = value
    absent = [s.name for s in inputs if s.name not in given]
    if absent:
        raise ValueError(f"at= gives no value for {', '.join(absent)}: the graph's values need "
                         "every input")
    for name, value in given.items():
        given[name] = _reals(f"at[{name!r}]", value)
    return given


def _as_value(result):
    """A float for a scalar, else the array."""
    array = np.asarray(result, dtype=np.float64)
    return float(array) if array.ndim == 0 else array


def format_value(value, entries: int = 2) -> str:
    """A value as the picture writes it: ``6``, ``-0.25``, ``[0.5, -1.2]`` or, for a larger
    matrix, its first ``entries`` entries (row by row) and its norm.

    >>> format_value(6.0), format_value(np.array([[1.0], [2.0]]))
    ('6', '[1, 2]')
    >>> format_value(np.array([0.5, -1.25, 2.0, 1.0])), format_value(np.ones(4), entries=0)
    ('[0.5, -1.25, …] ‖·‖ 2.61', '‖·‖ 2')
    """
    if value is None:
        return ""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return _number(float(array))
    flat = array.ravel()
    if flat.size <= max(entries, 1) + 1:
        return "[" + ", ".join(_number(v) for v in flat) + "]"
    norm = f"‖·‖ {_number(float(np.linalg.norm(flat)))}"
    if entries == 0:
        return norm
    head = ", ".join(_number(v) for v in flat[:entries])
    return f"[{head}, …] {norm}"


def _number(v: float) -> str:
    if math.isnan(v) or math.isinf(v):
        return str(v)
    if v == 0:
        return "0"
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.3g}"


def describe_point(at: dict) -> str:
    """Input values for a title: numbers written out, matrices by their shape.

    >>> describe_point({"x": 1.0, "W": np.zeros((2, 3))})
    'x = 1, W (2×3)'
    """
    parts = []
    for name, value in at.items():
        if np.ndim(value) == 0:
            parts.append(f"{name} = {format_value(value)}")
        else:
            parts.append(f"{name} ({'×'.join(str(n) for n in np.shape(value))})")
    return ", ".join(parts)
