"""``sg.graph``: the computation graph of a model, drawn the way the lecture draws it.

Inputs stand at the left, the output at the right, seeded with 1.  Each edge carries the
value that flows forward along it (above, green) and the gradient that flows back along it
(below, red): what its consumer's rule sent (upstream x local gradient).  An input or an
operation whose value feeds several consumers shows the sum of what came back.  Matrix models
are drawn at the matrix level with shapes, and with the names ``sg.show`` gives (``h``,
``delta``, ``Z1``, ``dZ1``).  Without values, the edges carry the gradient formulas.

Layout is by Graphviz's ``dot`` program (the system package; no Python binding needed):
``G.save("graph.svg")`` (or ``.png``, ``.pdf``, ``.dot``), ``G._repr_svg_()`` in Jupyter,
``G.source`` for the DOT text.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import sympy as sp

from symgrad.nodes import one_call, replaced
from symgrad.present.walk import Backprop, Edge, Node, backprop, describe_point, format_value

__all__ = ["graph", "Graph", "GraphvizNotFound"]

VALUE_COLOUR = "#1a7f37"      # forward values: green, above the edges
GRADIENT_COLOUR = "#c62828"   # gradients: red, below the edges
MUTED_COLOUR = "#6e7781"      # shapes, constants
FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": None, ".gv": None}
_FORMULA_LIMIT = 32           # longer gradient formulas are left off the edges


class GraphvizNotFound(RuntimeError):
    """Graphviz's ``dot`` program is not installed (or not on ``PATH``)."""


@one_call
def graph(model_or_expr, at: dict | None = None, wrt=None, output: str | None = None) -> Graph:
    """The computation graph of a model as symgrad differentiates it.

    ``model_or_expr`` is an ``sg.Model`` or a scalar SymPy expression; ``wrt`` defaults to
    the model's parameters, or every input of an expression; ``output`` names the output
    (the model's name, else ``f``).  With ``at`` (input name -> value), every edge carries
    its forward value and its gradient.

    >>> import sympy as sp, symgrad as sg
    >>> x, y, z = sp.symbols("x y z")
    >>> G = sg.graph((x + y) * sp.Max(y, z), at={"x": 1, "y": 2, "z": 0})
    >>> [float(G.walk.node(v).gradient) for v in "xyz"]
    [2.0, 5.0, 0.0]
    >>> G.save("branching_graph.svg")  # doctest: +SKIP
    """
    return Graph(backprop(model_or_expr, at=at, wrt=wrt, output=output))


class Graph:
    """A computation graph ready to draw (see :func:`graph`).

    ``walk`` holds the nodes and edges with their values and gradients
    (:class:`~symgrad.present.walk.Backprop`); ``source`` is the DOT text.
    """

    def __init__(self, walk: Backprop):
        self.walk = walk

    @property
    def nodes(self) -> list[Node]:
        return self.walk.nodes

    @property
    def edges(self) -> list[Edge]:
        return self.walk.edges

    def __repr__(self) -> str:
        where = "" if self.walk.at is None else " at " + _point(self.walk)
        return (f"<symgrad graph of {self.walk.output_name}: {len(self.nodes)} nodes, "
                f"{len(self.edges)} edges{where}>")

    # -- drawing -----------------------------------------------------------------------
    @property
    def source(self) -> str:
        """The graph in Graphviz's DOT language (every user text escaped)."""
        return _Dot(self.walk).text()

    def render(self, format: str = "svg") -> bytes:  # noqa: A002 - Graphviz's word
        """The picture laid out by ``dot`` in a Graphviz output format (svg, png, pdf)."""
        command = [_dot_program(), f"-T{format}"]
        if format == "png":
            command.append("-Gdpi=144")
        try:
            done = subprocess.run(command, input=self.source.encode("utf-8"),
                                  capture_output=True, timeout=120, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError("Graphviz's dot took over 120 s to lay out the graph") from None
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip()
            raise RuntimeError(f"Graphviz's dot failed (exit status {done.returncode}): "
                               f"{message}")
        return done.stdout

    def svg(self) -> str:
        """The picture as SVG text."""
        return self.render("svg").decode("utf-8")

    def _repr_svg_(self) -> str:
        return self.svg()

    def save(self, path) -> Path:
        """Write the picture; the extension picks the format: ``.svg``, ``.png``, ``.pdf``,
        or ``.dot``/``.gv`` for the DOT text.  Returns the path."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in FORMATS:
            raise ValueError(f"cannot tell the format of {str(path)!r} from its extension "
                             f"{suffix or '(none)'!r}; use one of {', '.join(FORMATS)}")
        data = self.source.encode("utf-8") if FORMATS[suffix] is None \
            else self.render(FORMATS[suffix])
        path.write_bytes(data)
        return path


def _dot_program() -> str:
    found = shutil.which("dot")
    if found is None:
        raise GraphvizNotFound(
            "sg.graph lays pictures out with Graphviz's `dot` program, which is not on PATH. "
            "Install Graphviz: `apt-get install graphviz` (Debian, Ubuntu), `brew install "
            "graphviz` (macOS), `conda install -c conda-forge graphviz`, or see "
            "https://graphviz.org/download/. Meanwhile G.source holds the DOT text and "
            "G.save('graph.dot') writes it.")
    return found


def _point(walk: Backprop) -> str:
    return describe_point(walk.at)


# ------------------------------------------------------------------------------------------
# DOT text
# ------------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def escape(text: str) -> str:
    r"""User text for an HTML-like Graphviz label: markup characters as entities, line
    breaks as ``<br/>``, backslashes doubled (Graphviz reads ``\N`` in a label as the node's
    id), other control characters dropped (XML has no place for them).

    >>> print(escape('a<b> & "c" \\N\n{d}'))
    a&lt;b&gt; &amp; &quot;c&quot; \\N<br/>{d}
    """
    text = _CONTROL.sub("", str(text).replace("\r\n", "\n").replace("\r", "\n"))
    return "<br/>".join(html.escape(line, quote=True).replace("\\", "\\\\")
                        for line in text.split("\n"))


def _font(text: str, colour: str | None = None, size: int | None = None) -> str:
    attributes = (f' color="{colour}"' if colour else "") + \
        (f' point-size="{size}"' if size else "")
    return f"<font{attributes}>{text}</font>" if attributes else text


class _Dot:
    """Writes the DOT text of a walk.  Node ids are generated (``n3``, ``e5``); user text
    appears only inside escaped HTML-like labels."""

    def __init__(self, walk: Backprop):
        self.walk = walk
        self.numbers = walk.at is not None
        self.lines: list[str] = []

    def text(self) -> str:
        walk = self.walk
        self.lines = [
            "digraph symgrad {",
            '  graph [rankdir=LR, nodesep=0.18, ranksep=0.3, pad=0.25, bgcolor="white", '
            'fontname="Helvetica", fontsize=12, labelloc=t, labeljust=l];',
            '  node [fontname="Helvetica", fontsize=13];',
            '  edge [fontname="Helvetica", fontsize=11, arrowsize=0.7, color="#444444"];',
            f"  label=<{self.title()}>;",
        ]
        inputs = [n.id for n in walk.nodes if n.kind == "input"]
        if inputs:
            self.lines.append(f"  {{ rank=source; {'; '.join(inputs)}; }}")
        for node in walk.nodes:
            self.lines.append(f"  {node.id} [{self.node_attributes(node)}];")
        for k, edge in enumerate(walk.edges):
            self.edge(f"e{k}", edge.tail.id, edge.head.id, edge.value, edge.gradient,
                      edge.gradient_formula)
        # the output, seeded with 1
        output = walk.output
        self.lines.append(f'  out [shape=plaintext, label=<<b>{escape(walk.output_name)}</b>>];')
        self.lines.append("  { rank=sink; out; }")
        self.edge("eout", output.id, "out", output.value, 1.0 if self.numbers else None, "1")
        self.lines.append("}")
        return "\n".join(self.lines) + "\n"

    def title(self) -> str:
        walk = self.walk
        lines = [escape(f"{walk.output_name} = {walk.output.formula}")]
        if self.numbers:
            lines.append(escape("at " + _point(walk)))
            lines.append(_font("forward values above the edges", VALUE_COLOUR, 11) + ", "
                         + _font("gradients below", GRADIENT_COLOUR, 11))
        else:
            lines.append(_font("gradients below the edges", GRADIENT_COLOUR, 11))
        return "".join(line + '<br align="left"/>' for line in lines)

    # -- nodes -------------------------------------------------------------------------
    def node_attributes(self, node: Node) -> str:
        rows = []
        if node.kind == "operation":
            head = node.text if not node.name else f"{node.name} = {node.text}"
            rows.append(escape(head))
        elif node.kind == "input":
            rows.append(f"<b>{escape(node.text)}</b>")
        else:
            rows.append(_font(escape(node.text), MUTED_COLOUR))
        if node.shape:
            rows.append(_font(escape(self.shape_text(node.shape)), MUTED_COLOUR, 10))
        gradient = self.node_gradient(node)
        if gradient:
            rows.append(_font(escape(gradient), GRADIENT_COLOUR, 11))
        label = "<br/>".join(rows)
        tooltip = _attribute(self.tooltip(node))
        if node.kind == "operation" and not node.shape and not node.name:
            return (f'shape=circle, margin=0.02, width=0.45, fixedsize=false, '
                    f'label=<{label}>, tooltip={tooltip}')
        if node.kind == "operation":
            return (f'shape=box, style="rounded", margin="0.12,0.05", label=<{label}>, '
                    f'tooltip={tooltip}')
        return f"shape=plaintext, margin=0.04, label=<{label}>, tooltip={tooltip}"

    def node_gradient(self, node: Node) -> str:
        """What a node shows in red: an input's (or a branching value's) summed gradient,
        else the name of its adjoint (``delta``, ``dZ1``)."""
        if node is self.walk.output:
            return ""
        branches = len(node.outgoing)
        if self.numbers and node.gradient is not None and (node.kind == "input"
                                                           or branches > 1):
            total = format_value(node.gradient, entries=0)
            return f"{node.gradient_name} = {total}" if node.gradient_name else total
        if node.gradient_name and node.kind != "constant":
            return node.gradient_name
        return ""

    def shape_text(self, shape) -> str:
        dims = {sp.Symbol(k, integer=True, positive=True): v
                for k, v in getattr(self.walk, "dimensions", {}).items()}
        texts = []
        for extent in shape:
            extent = sp.sympify(extent)
            concrete = replaced(extent, {s: dims.get(s, dims.get(sp.Symbol(s.name), s))
                                    for s in extent.free_symbols})
            texts.append(str(concrete))
        return "×".join(texts)

    def tooltip(self, node: Node) -> str:
        parts = [node.formula]
        if node.value is not None:
            parts.append(f"value {format_value(node.value, 4)}")
        if node.gradient is not None:
            parts.append(f"gradient {format_value(node.gradient, 4)}")
        return "; ".join(parts)

    # -- edges -------------------------------------------------------------------------
    def edge(self, mid: str, tail: str, head: str, value, gradient, formula) -> None:
        """An edge through a small label node: the value above a rule that continues the
        edge's line, the gradient below it (the lecture's picture)."""
        if self.numbers:
            above = format_value(value, entries=0)
            below = format_value(gradient, entries=0) if gradient is not None else ""
        else:
            above = ""
            below = formula if formula and len(formula) <= _FORMULA_LIMIT else ""
        if not (above or below):
            self.lines.append(f"  {tail} -> {head};")
            return
        cell = '<td align="center" cellpadding="1">'
        label = ('<table border="0" cellborder="0" cellspacing="0">'
                 f'<tr>{cell}{_font(escape(above) or " ", VALUE_COLOUR)}</td></tr><hr/>'
                 f'<tr>{cell}{_font(escape(below) or " ", GRADIENT_COLOUR)}</td></tr>'
                 "</table>")
        self.lines.append(f"  {mid} [shape=plaintext, margin=0, width=0, height=0, "
                          f"label=<{label}>];")
        self.lines.append(f"  {tail} -> {mid} [arrowhead=none];")
        self.lines.append(f"  {mid} -> {head};")


def _attribute(text: str) -> str:
    """A quoted DOT attribute value (tooltips): quotes and backslashes escaped."""
    text = _CONTROL.sub("", str(text)).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("\n", "\\n") + '"'
