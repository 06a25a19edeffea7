"""sg.graph and sg.explain: the lecture's picture of backpropagation, with its numbers."""

from __future__ import annotations

import collections
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.cli import main
from symgrad.present.graph import GraphvizNotFound, escape

ROOT = Path(__file__).resolve().parent.parent
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed")
SVG = "{http://www.w3.org/2000/svg}"
GREEN, RED = "#1a7f37", "#c62828"

x, y, z = sp.symbols("x y z")
BRANCHING = (x + y) * sp.Max(y, z)
SEED_POINT = {"x": 1, "y": 2, "z": 0}


def window_classifier():
    d, H = 4, 3
    xv, W = sg.vector("x", 5 * d), sg.matrix("W", H, 5 * d)
    b, u = sg.vector("b", H), sg.vector("u", H)
    model = sg.Model("window_classifier", sg.dot(u, sg.sigmoid(W @ xv + b)), wrt=[W, b, u, xv])
    rng = np.random.default_rng(0)
    at = {"W": rng.normal(size=(H, 5 * d)), "b": rng.normal(size=H), "u": rng.normal(size=H),
          "x": rng.normal(size=5 * d)}
    return model, at


def svg_texts(svg: str) -> list[tuple[str, str | None]]:
    """(text, fill colour) of every text element of a well-formed SVG document."""
    root = ET.fromstring(svg)
    return [("".join(t.itertext()), t.get("fill")) for t in root.iter(f"{SVG}text")]


# ------------------------------------------------------------------------------------------
# The walk: numbers of the seed
# ------------------------------------------------------------------------------------------
def test_branching_graph_values_and_gradients_are_the_lectures():
    G = sg.graph(BRANCHING, at=SEED_POINT)
    walk = G.walk
    assert [walk.node(v).gradient for v in "xyz"] == [2.0, 5.0, 0.0]
    assert walk.output.value == 6.0
    by_operator = {n.text: n for n in walk.nodes if n.kind == "operation"}
    assert by_operator["+"].value == 3.0 and by_operator["max"].value == 2.0
    # y branches: 2 comes back through x + y, 3 through max(y, z); its gradient is their sum
    from_y = {e.head.text: e.gradient for e in walk.node("y").outgoing}
    assert from_y == {"+": 2.0, "max": 3.0}
    assert walk.node("z").outgoing[0].gradient == 0.0


def test_edge_gradients_are_local_gradient_times_upstream():
    walk = sg.graph(BRANCHING, at=SEED_POINT).walk
    for edge in walk.steps:
        assert edge.gradient == pytest.approx(edge.local * edge.head.gradient)


def test_gradients_agree_with_the_compiled_function_at_random_points():
    compiled = sg.compile(BRANCHING, [x, y, z])
    rng = np.random.default_rng(1)
    for _ in range(3):
        point = dict(zip("xyz", rng.normal(size=3)))
        walk = sg.graph(BRANCHING, at=point).walk
        value, grads = compiled.value_and_grad(**point)
        assert walk.output.value == pytest.approx(value)
        for v in "xyz":
            assert walk.node(v).gradient == pytest.approx(grads[v])


@pytest.mark.parametrize("case", ["A A", "x^x"])
def test_an_operand_taken_twice_has_an_edge_per_use_and_they_add_up(case):
    """A A (and x^x) takes one value in two positions, whose contributions differ (1 A^T and
    A^T 1): each use is its own edge, and what the edges leaving a value show adds up to its
    gradient, which is the compiled one (one shared edge showed one contribution twice)."""
    A = sg.matrix("A", 2, 2)
    expr, wrt, at = {"A A": (sg.sum(A @ A), [A], {"A": np.array([[1.0, 2.0], [3.0, 4.0]])}),
                     "x^x": (x**x + y, [x, y], {"x": 2.0, "y": 0.5})}[case]
    walk = sg.graph(expr, at=at, wrt=wrt).walk
    _, grads = sg.compile(expr, wrt).value_and_grad(**at)
    for node in walk.nodes:
        if node.gradient is None or node is walk.output:
            continue
        sent = [np.asarray(e.gradient) for e in walk.steps if e.tail is node]
        assert len({id(e) for e in walk.steps if e.tail is node}) == len(sent)
        np.testing.assert_allclose(sum(sent), node.gradient, rtol=1e-12)
    name = wrt[0].name
    np.testing.assert_allclose(walk.node(name).gradient, grads[name], rtol=1e-12)
    twice = [e for e in walk.node(name).outgoing if e.head.kind == "operation"]
    assert len(twice) == 2 and twice[0].head is twice[1].head
    text = str(sg.explain(expr, at=at, wrt=wrt))
    total = {"A A": "[3, 7, 3, 7] + [4, 4, 6, 6] = [7, 11, 9, 13]", "x^x": "4 + 2.77 = 6.77"}
    assert total[case] in text


def test_window_classifier_gradients_are_the_closed_forms():
    model, at = window_classifier()
    walk = sg.graph(model, at=at).walk
    W0, b0, u0, x0 = (at[k] for k in "Wbux")
    h = 1 / (1 + np.exp(-(W0 @ x0 + b0)))
    delta = u0 * h * (1 - h)
    np.testing.assert_allclose(walk.node("W").gradient, np.outer(delta, x0), rtol=1e-12)
    np.testing.assert_allclose(walk.node("b").gradient.ravel(), delta, rtol=1e-12)
    np.testing.assert_allclose(walk.node("u").gradient.ravel(), h, rtol=1e-12)
    np.testing.assert_allclose(walk.node("x").gradient.ravel(), W0.T @ delta, rtol=1e-12)
    np.testing.assert_allclose(walk.node("h").value.ravel(), h, rtol=1e-12)
    assert walk.output.value == pytest.approx(u0 @ h)


def test_two_layer_net_graph_has_the_named_pieces_and_the_compiled_gradients():
    from examples.two_layer_net import two_layer_net

    rng = np.random.default_rng(2)
    at = {"W1": rng.normal(size=(3, 2)), "b1": rng.normal(size=3), "W2": rng.normal(size=(1, 3)),
          "b2": rng.normal(size=1), "X": rng.normal(size=(2, 5)),
          "Y": rng.integers(0, 2, size=(1, 5)).astype(float)}
    walk = sg.graph(two_layer_net, at=at).walk
    names = {n.name for n in walk.nodes} | {n.gradient_name for n in walk.nodes}
    assert {"Z1", "A1", "Z2", "dZ1", "dZ2"} <= names
    value, grads = two_layer_net.compiled.value_and_grad(**at)
    assert walk.output.value == pytest.approx(value)
    for name in ("W1", "b1", "W2", "b2"):
        np.testing.assert_allclose(np.ravel(walk.node(name).gradient), np.ravel(grads[name]),
                                   rtol=1e-10, atol=1e-12)
    assert walk.dimensions == {"m": 5, "n_h": 3, "n_x": 2}


# ------------------------------------------------------------------------------------------
# Pictures
# ------------------------------------------------------------------------------------------
@needs_dot
def test_branching_graph_svg_is_well_formed_and_carries_the_seed_numbers():
    texts = svg_texts(sg.graph(BRANCHING, at=SEED_POINT)._repr_svg_())
    green = collections.Counter(t for t, fill in texts if fill == GREEN)
    red = collections.Counter(t for t, fill in texts if fill == RED)
    # forward values above the edges: x, y (twice), z, x + y, max(y, z), f
    values = collections.Counter(["1", "2", "2", "0", "3", "2", "6"])
    assert green - collections.Counter(["forward values above the edges"]) == values
    # gradients below the edges (x: 2, y: 2 and 3, z: 0, x + y: 2, max: 3, the seed 1) and
    # the sums at the inputs (2, 5, 0)
    gradients = collections.Counter(["2", "2", "3", "0", "2", "3", "1", "2", "5", "0"])
    assert red - collections.Counter(["gradients below"]) == gradients
    plain = {t for t, fill in texts if fill not in (GREEN, RED)}
    assert {"x", "y", "z", "+", "max", "*", "f"} <= plain


@needs_dot
def test_window_classifier_graph_names_delta_and_shapes():
    model, _ = window_classifier()
    svg = sg.graph(model).svg()
    texts = [t for t, _ in svg_texts(svg)]
    assert "delta" in texts                      # the adjoint of W x and of b
    assert "h = sigmoid(• + b)" in texts         # the named elementwise piece
    assert "delta x^T" in texts and "W^T delta" in texts   # the gradients of W and x
    assert "3×20" in texts                       # matrix level: W's shape


@needs_dot
@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".pdf", b"%PDF"),
                                           (".svg", b"<?xml")])
def test_save_writes_the_format_of_the_extension(tmp_path, suffix, magic):
    model, at = window_classifier()
    path = sg.graph(model, at=at).save(tmp_path / f"graph{suffix}")
    assert path.read_bytes().startswith(magic)
    assert path.stat().st_size > 1000


def test_save_dot_needs_no_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    G = sg.graph(BRANCHING, at=SEED_POINT)
    text = G.save(tmp_path / "g.dot").read_text()
    assert text.startswith("digraph symgrad {") and "rankdir=LR" in text
    with pytest.raises(GraphvizNotFound, match="apt-get install graphviz"):
        G.save(tmp_path / "g.svg")
    with pytest.raises(GraphvizNotFound, match="conda install"):
        G._repr_svg_()


def test_save_rejects_an_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="'.jpeg'"):
        sg.graph(BRANCHING).save(tmp_path / "g.jpeg")


HOSTILE = 'a"<b>{c}|\\N \'q\' & d\ne]; évil [label="x'


@needs_dot
def test_hostile_names_are_escaped():
    q = sp.Symbol(HOSTILE)
    A = sg.vector(HOSTILE + "M", 2)
    G = sg.graph(q * sg.sum(sg.exp(A)), at={q.name: 1.5, A.name: [0.0, 1.0]},
                 output='f"<>{}\n')
    texts = [t for t, _ in svg_texts(G.svg())]      # dot accepted it; the SVG parses
    first, second = HOSTILE.split("\n")
    assert first in texts and second in texts        # shown as written, newline as a break
    assert second + "M" in texts
    assert 'f"<>{}' in texts
    assert "évil [" not in G.source.replace(escape("évil ["), "")


def test_escape_leaves_no_markup_and_no_graphviz_escapes():
    text = escape('<b>"x" & {y}\n\x00z\\N')
    assert "<" not in text.replace("<br/>", "") and '"' not in text and "\x00" not in text
    assert text == r"&lt;b&gt;&quot;x&quot; &amp; {y}<br/>z\\N"


# ------------------------------------------------------------------------------------------
# explain
# ------------------------------------------------------------------------------------------
def test_explain_ends_with_the_lectures_gradients():
    text = str(sg.explain(BRANCHING, at=SEED_POINT))
    assert text.splitlines()[-3:] == ["  df/dx = 2", "  df/dy = 3 + 2 = 5", "  df/dz = 0"]
    assert "f = (x + y)*Max(y, z) = 6" in text
    # each step: local gradient x upstream, with numbers
    assert "to Max(y, z): local gradient x + y = 3; 3 × 1 = 3" in text
    assert "to y: local gradient (1 if y > z else 1/2 if y = z else 0) = 1; 1 × 3 = 3" in text
    assert "to z: local gradient (1 if y < z else 1/2 if y = z else 0) = 0; 0 × 3 = 0" in text
    assert "to x: local gradient 1; 1 × 2 = 2" in text


def test_explain_walks_in_reverse_topological_order():
    text = str(sg.explain(BRANCHING, at=SEED_POINT))
    visits = [line.split(":")[0].strip() for line in text.splitlines()
              if line.startswith("  ") and not line.startswith("    ") and "upstream" in line]
    assert visits == ["f", "Max(y, z)", "x + y"]


def test_explain_shows_the_matrix_rules_with_the_named_pieces():
    model, at = window_classifier()
    text = str(sg.explain(model, at=at))
    assert "to W: upstream x^T → delta x^T = [" in text
    assert "to x: W^T upstream → W^T delta = [" in text
    assert "h = sigmoid(W x + b) (3×1) = [" in text
    assert "dwindow_classifier/dW (3×20) = [" in text


def test_explain_sums_a_branching_operation():
    a = sp.Symbol("a")
    s = sp.sin(a)
    text = str(sg.explain(s * s + s, at={"a": 0.5}))   # sin(a) feeds a product and a sum
    value = np.sin(0.5)
    assert f"{2 * value + 1:.3g}" in text
    walk = sg.explain(s * s + s, at={"a": 0.5}).walk
    assert walk.node("a").gradient == pytest.approx((2 * value + 1) * np.cos(0.5))


@pytest.mark.parametrize("at, message", [
    ({"x": 1, "y": 2}, "no value for z"),
    ({"x": 1, "y": 2, "z": 0, "w": 3}, "'w', which is not an input"),
    ({"x": [1, 2], "y": 2, "z": 0}, r"at\['x'\] has shape \(2,\)"),
    ({"x": "one", "y": 2, "z": 0}, r"at\['x'\] must hold real numbers, got dtype <U3"),
    ({"x": np.ma.masked_array(1.0), "y": 2, "z": 0}, r"at\['x'\] is a NumPy masked array"),
])
def test_bad_points_name_the_input(at, message):
    with pytest.raises((ValueError, TypeError), match=message):
        sg.graph(BRANCHING, at=at)


def test_a_point_may_hold_sympys_own_numbers():
    exact = sg.graph(BRANCHING, at={"x": sp.Rational(1, 2), "y": sp.Integer(2), "z": 0})
    floats = sg.graph(BRANCHING, at={"x": 0.5, "y": 2.0, "z": 0.0})
    assert exact.walk.node("x").gradient == floats.walk.node("x").gradient


def test_explain_needs_values():
    with pytest.raises(ValueError, match="needs values"):
        sg.explain(BRANCHING, at=None)


def test_a_matrix_output_is_refused():
    A = sg.matrix("A", 2, 2)
    with pytest.raises(ValueError, match=r"scalar output .* shape \(2, 2\)"):
        sg.graph(sg.exp(A))


# ------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------
@needs_dot
def test_cli_graph_writes_the_picture(tmp_path, capsys):
    out = tmp_path / "graph.svg"
    status = main(["graph", str(ROOT / "examples" / "branching_graph.py"), "--at", "x=1",
                   "--at", "y=2", "--at", "z=0", "-o", str(out)])
    assert status == 0 and capsys.readouterr().out.strip() == str(out)
    reds = [t for t, fill in svg_texts(out.read_text()) if fill == RED]
    assert "5" in reds


@needs_dot
def test_cli_graph_draws_random_inputs_for_a_chosen_model(tmp_path, capsys):
    out = tmp_path / "graph.png"
    status = main(["graph", str(ROOT / "examples" / "window_classifier.py"), "--model",
                   "window_classifier_batched", "--random", "0", "--at", "m=4", "-o", str(out)])
    assert status == 0
    assert out.read_bytes().startswith(b"\x89PNG")


def test_cli_graph_asks_which_model(tmp_path, capsys):
    status = main(["graph", str(ROOT / "examples" / "window_classifier.py"), "-o",
                   str(tmp_path / "g.svg")])
    assert status == 1
    error = capsys.readouterr().err
    assert "window_classifier, window_classifier_batched" in error and "--model" in error


def test_cli_graph_rejects_a_bad_value(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["graph", "examples/branching_graph.py", "--at", "x=abc", "-o", "g.svg"])
    assert exit_.value.code == 2
    assert "x=abc" in capsys.readouterr().err



def test_a_dimension_given_at_a_point_is_a_whole_size_that_agrees_with_the_inputs(tmp_path,
                                                                                  capsys):
    """at={'m': 4} beside an X of 5 columns was overridden silently (the picture divided by
    5), and --at m=2.5 drew inputs of 2 columns: both are errors naming the dimension."""
    from examples.two_layer_net import two_layer_net

    rng = np.random.default_rng(2)
    at = {"W1": rng.normal(size=(3, 2)), "b1": rng.normal(size=3), "W2": rng.normal(size=(1, 3)),
          "b2": rng.normal(size=1), "X": rng.normal(size=(2, 5)), "Y": rng.normal(size=(1, 5))}
    with pytest.raises(ValueError, match="at= gives m = 4, but the inputs' shapes give m = 5"):
        sg.graph(two_layer_net, at={**at, "m": 4})
    assert sg.graph(two_layer_net, at={**at, "m": 5}).walk.dimensions["m"] == 5
    for size in (2.5, 0, -1, float("nan")):
        with pytest.raises(ValueError, match="whole number of at least 1"):
            sg.graph(two_layer_net, at={**at, "m": size})
        assert main(["graph", "examples/two_layer_net.py", "--random", "0", "--at", f"m={size}",
                     "-o", str(tmp_path / "never.dot")]) == 1
        assert "whole number of at least 1" in capsys.readouterr().err

# ------------------------------------------------------------------------------------------
# The README's section
# ------------------------------------------------------------------------------------------
README = ROOT / "README.md"


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Pictures of backpropagation")
    return text[start:text.index("\n## ", start + 1)]


@needs_dot
def test_readme_pictures_example_runs_and_prints_what_the_readme_shows(tmp_path, monkeypatch,
                                                                       capsys):
    import re

    section = readme_section()
    code, shown = re.findall(r"```(?:python)?\n(.*?)```", section, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith(shown.rstrip())
    texts = svg_texts((tmp_path / "branching_graph.svg").read_text())
    assert "5" in [t for t, fill in texts if fill == RED]


def test_readme_picture_is_committed_and_carries_the_seed_numbers():
    assert "(docs/branching_graph.svg)" in readme_section()
    texts = svg_texts((ROOT / "docs" / "branching_graph.svg").read_text(encoding="utf-8"))
    reds = collections.Counter(t for t, fill in texts if fill == RED)
    greens = collections.Counter(t for t, fill in texts if fill == GREEN)
    assert reds["5"] == 1 and reds["3"] == 2 and greens["6"] == 1 and greens["3"] == 1


def test_cli_graph_has_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["graph", "--help"])
    assert exit_.value.code == 0
    assert "usage: symgrad graph" in capsys.readouterr().out


def test_points_may_be_keyed_by_symbol():
    walk = sg.graph(BRANCHING, at={x: 1, y: 2, z: 0}).walk
    assert walk.node("y").gradient == 5.0


def test_a_tie_in_max_splits_the_gradient_in_half():
    walk = sg.graph(BRANCHING, at={"x": 1, "y": 2, "z": 2}).walk
    from_max = {e.tail.name: e.gradient for e in walk.edges if e.head.text == "max"}
    assert from_max == {"y": 1.5, "z": 1.5}        # upstream x + y = 3, halved


def test_the_walk_of_a_deep_model_is_the_compiled_gradient_with_formulas_cut_short():
    # each value was inlined apart (copies of the shared pieces, which SymPy compared node by
    # node along every path) and each formula written out as a tree: at depth 12 sg.graph did
    # not finish in a minute
    from symgrad.present.walk import ELLIPSIS, FORMULA_NODES

    w = sp.Symbol("w", real=True)
    f = x
    for _ in range(24):
        f = f * sp.sin(f + w)
    point = {"x": 1.5, "w": 1.2}
    walk = sg.graph(f, at=point, wrt=[x, w]).walk
    value, grads = sg.compile(f, [x, w]).value_and_grad(**point)
    assert walk.output.value == pytest.approx(value, rel=1e-12)
    for v in "xw":
        assert walk.node(v).gradient == pytest.approx(grads[v], rel=1e-10)
    for edge in walk.steps:      # the numbers stay exact where the formulas are cut
        assert edge.gradient == pytest.approx(edge.local * edge.head.gradient, rel=1e-10)
    formulas = [n.formula for n in walk.nodes] + [e.gradient_formula for e in walk.steps]
    assert any(ELLIPSIS in text for text in formulas)
    # a cut formula has at most FORMULA_NODES nodes, each of a few characters
    assert max(len(text) for text in formulas) < 12 * FORMULA_NODES
    assert str(sg.explain(f, point, wrt=[x, w])).count("\n") > len(walk.steps)


def test_laying_out_the_walk_is_linear_in_the_model(monkeypatch):
    # whether an edge carries its operand's whole gradient was found by scanning every
    # contribution for each edge: quadratic (a sum of 1,000 terms: 12.9 s, now 4.1 s).
    # Counted, not timed: the nodes looked at grow as the model, 4 times for 4 times the terms
    import symgrad.present.walk as walk_module

    looked_at = [0]
    named = walk_module._named

    def counted(node):
        looked_at[0] += 1
        return named(node)

    monkeypatch.setattr(walk_module, "_named", counted)
    v = sp.symbols("v0:10", real=True)

    def looked_at_for(terms: int) -> int:
        looked_at[0] = 0
        sg.graph(sp.Add(*[sp.sin(v[k % 10] + (k + 1) * v[(7 * k + 3) % 10])
                          for k in range(terms)]))
        return looked_at[0]

    small, large = looked_at_for(50), looked_at_for(200)
    assert large <= 5 * small, (small, large)
