"""sg.check: symgrad's gradients against JAX, PyTorch, autograd and finite differences."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad import ops
from symgrad.checking import CheckReport, check
from symgrad.checking.report import Comparison
from symgrad.derive import reverse
from symgrad.derive.rules import RULES

ALL = ["finite-differences", "jax", "torch", "autograd"]


def all_frameworks():
    """Skip (never silently pass) where a framework is missing."""
    for name in ("jax", "torch", "autograd"):
        pytest.importorskip(name)


# --------------------------------------------------------------------------------------
# The seed models
# --------------------------------------------------------------------------------------
w, x, y, z = sp.symbols("w x y z")
linear_regression = sg.Model("linear_regression", (w * x - y) ** 2, wrt=[w])
branching_graph = sg.Model("branching_graph", (x + y) * sp.Max(y, z), wrt=[x, y, z])

W, b, u, xv = sg.matrix("W", 4, 6), sg.vector("b", 4), sg.vector("u", 4), sg.vector("x", 6)
window_classifier = sg.Model("window_classifier", sg.dot(u, sg.sigmoid(W @ xv + b)),
                             wrt=[W, b, u, xv])

wl, xl = sg.vector("w", 4), sg.vector("x", 4)
bl, yl = sp.symbols("b y")
a = sg.sigmoid(sg.dot(wl, xl) + bl)
logistic_regression = sg.Model("logistic_regression",
                               -(yl * sg.log(a) + (1 - yl) * sg.log(1 - a)), wrt=[wl, bl])

n_x, n_h, m = sp.symbols("n_x n_h m", integer=True, positive=True)
X, Y = sg.matrix("X", n_x, m), sg.matrix("Y", 1, m)
W1, b1 = sg.matrix("W1", n_h, n_x), sg.vector("b1", n_h)
W2, b2 = sg.matrix("W2", 1, n_h), sg.vector("b2", 1)
A1 = sg.name("A1", sg.tanh(W1 @ X + sg.broadcast(b1, (n_h, m))))
A2 = sg.name("A2", sg.sigmoid(W2 @ A1 + sg.broadcast(b2, (1, m))))
ones = sp.OneMatrix(1, m)
cost = -(1 / m) * sg.sum(sg.hadamard(Y, sg.log(A2)) + sg.hadamard(ones - Y, sg.log(ones - A2)))
two_layer_net = sg.Model("two_layer_net", cost, wrt=[W1, b1, W2, b2])

SEED_MODELS = [linear_regression, branching_graph, window_classifier, logistic_regression,
               two_layer_net]


@pytest.mark.parametrize("model", SEED_MODELS, ids=[s.name for s in SEED_MODELS])
def test_seed_models_pass_against_all_four_backends(model):
    all_frameworks()
    report = check(model, against="all")
    assert report.ok, str(report)
    assert report.backends[:4] == ALL
    assert {c.quantity for c in report.comparisons} == {"value", *report.wrt}


def test_a_scalar_model_checks_the_path_that_floats_take_too():
    report = check(linear_regression)
    assert report.backends == ["finite-differences", "symgrad-floats"]
    assert report.comparison("symgrad-floats", "w").passed


def test_branching_graph_at_the_seed_point_matches_the_lecture():
    report = check(branching_graph, against="finite-differences",
                   inputs={"x": 1.0, "y": 2.0, "z": 0.0})
    assert report.ok, str(report)
    assert report.points == 1     # nothing random left to draw
    value, grads = branching_graph.compiled.value_and_grad(x=1.0, y=2.0, z=0.0)
    assert (value, grads) == (6.0, {"x": 2.0, "y": 5.0, "z": 0.0})


# --------------------------------------------------------------------------------------
# A wrong rule is caught, for the right parameter
# --------------------------------------------------------------------------------------
@pytest.fixture
def wrong_sine_rule():
    """d sin(x) = g sin(x) instead of g cos(x), for the duration of one test."""
    saved = RULES[sp.sin]
    sg.register_rule(sp.sin, lambda g, y, x, **_: (g * sp.sin(x),))
    reverse._PARTIALS_CACHE.clear()     # derivations of Map bodies remember the old rule
    try:
        yield
    finally:
        RULES[sp.sin] = saved
        reverse._PARTIALS_CACHE.clear()


def test_a_wrong_rule_is_reported_for_the_parameter_it_touches(wrong_sine_rule):
    pytest.importorskip("jax")
    report = check(sp.sin(w) * x + y**2, [w, x, y], against=["finite-differences", "jax"])
    assert not report.ok
    assert {(c.backend, c.quantity) for c in report.failures} == {
        ("finite-differences", "w"), ("jax", "w")}
    assert report.comparison("jax", "w").abs_error > 1e-3
    assert "FAILED: 2 of 12 comparisons" in str(report)   # symgrad-floats agrees, wrongly


def test_a_wrong_rule_inside_a_matrix_model_is_caught(wrong_sine_rule):
    report = check(sg.sum(sg.sin(W @ xv)), [W, xv], reference="symbolic")
    assert {c.quantity for c in report.failures} == {"W", "x"}


def test_a_gradient_of_the_wrong_shape_is_not_broadcast_into_agreement(monkeypatch):
    """A compiled gradient that came back as a number where a vector was given (the sum of
    the right one, say) was broadcast to the vector's shape and compared entry by entry:
    for a gradient whose entries are equal, a check that could not fail."""
    v = sg.vector("v", 3)
    model = sg.Model("m", sg.sum(sg.sin(v)) + sg.dot(v, v) * 0, wrt=[v])
    assert check(model, inputs={"v": np.zeros(3)}).ok
    compiled = model.compiled
    right = compiled.value_and_grad

    def summed(**inputs):
        value, grads = right(**inputs)
        return value, {"v": float(np.sum(grads["v"])) / 3}   # right value, wrong shape

    monkeypatch.setattr(compiled, "value_and_grad", summed)
    with pytest.raises(RuntimeError, match=r"gradient of 'v' has shape \(\), but v was given "
                                           r"with shape \(3, 1\)"):
        check(model, inputs={"v": np.zeros(3)})
    # a model of scalars answers a point's gradient as a float where a dimension is free
    s, m = sp.Symbol("s"), sp.Symbol("m", integer=True, positive=True)
    assert check(sg.sum(sg.broadcast(s, (1, m))), [s]).ok


def test_a_wrong_stable_rewrite_is_caught_by_the_model_as_written(monkeypatch, tmp_path):
    """Every backend sees the model after symgrad's stable rewrites, as symgrad computes it:
    log(sigmoid(z)) rewritten wrongly to logsigmoid(2 z) agreed with all four.  The value of
    the model as written, at the drawn points, tells."""
    from symgrad.derive import graph

    right = graph._rewrite_top

    def wrong(e):
        if isinstance(e, sp.log) and isinstance(e.args[0], ops.sigmoid):
            return ops.logsigmoid(2 * e.args[0].args[0])
        return right(e)

    model = sp.log(sg.sigmoid(w * x)) + y
    report = check(model, [w])
    assert report.ok and report.comparison("model as written", "value").passed
    monkeypatch.setattr(graph, "_rewrite_top", wrong)
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path))     # no module cached before
    report = check(model, [w])
    assert not report.ok
    assert {(c.backend, c.quantity) for c in report.failures} == {("model as written", "value")}


@pytest.mark.parametrize("case", ["logsigmoid", "log-softmax"])
def test_the_frameworks_see_the_stable_forms_inside_elementwise_maps(case):
    """Where symgrad rewrites a log inside an elementwise Map (log(sigmoid(W X)) ->
    logsigmoid(W X), log(softmax(Z)) -> Z - logsumexp(Z)), the frameworks evaluate that form
    too: at X = -1000 the textbook form is -inf for all of them, and the check failed
    although symgrad's finite value and gradient were right."""
    all_frameworks()
    W, X = sg.matrix("W", 3, 4), sg.matrix("X", 4, 5)
    Z, Y = sg.matrix("Z", 3, 5), sg.matrix("Y", 3, 5)
    rng = np.random.default_rng(1)
    if case == "logsigmoid":
        model, wrt = sg.sum(sg.log(sg.sigmoid(W @ X))), [W]
        extreme = {"X": np.full((4, 5), -1000.0), "W": rng.uniform(0.5, 1.0, (3, 4))}
        gradient = np.ones((3, 5)) @ extreme["X"].T     # logsigmoid' = 1 - sigmoid = 1 there
    else:
        model, wrt = -sg.sum(sg.hadamard(Y, sg.log(sg.softmax(Z, axis=0)))), [Z]
        z = np.zeros((3, 5))
        z[0, 0], z[1, 2] = 1000.0, -1000.0
        extreme = {"Z": z, "Y": rng.uniform(0.0, 1.0, (3, 5))}
        p = np.exp(z - z.max(axis=0))
        gradient = extreme["Y"].sum(axis=0) * p / p.sum(axis=0) - extreme["Y"]
    assert check(model, wrt).ok         # at drawn points, the model as written agrees too
    report = check(model, wrt, against=ALL, inputs=extreme)
    assert report.ok, report
    value, grads = sg.compile(model, wrt).value_and_grad(**extreme)
    assert np.isfinite(value)
    np.testing.assert_allclose(grads[wrt[0].name], gradient, rtol=1e-12)


def test_the_rule_table_is_restored_after_the_wrong_rule():
    assert check(sp.sin(w) * x, [w]).ok


# --------------------------------------------------------------------------------------
# Frameworks that are not installed
# --------------------------------------------------------------------------------------
def test_a_missing_framework_is_skipped_with_a_note_when_all_are_asked(monkeypatch):
    # scipy.stats (which autograd's backend imports) looks torch up in sys.modules as it
    # loads and fails on the None below: loaded first, whichever test ran before this one
    import scipy.stats  # noqa: F401
    monkeypatch.setitem(sys.modules, "torch", None)     # import torch now fails
    report = check(linear_regression, against="all")
    assert "torch" not in report.backends
    assert "not installed" in report.skipped["torch"]
    assert "skipped torch: not installed" in str(report)
    assert report.ok


def test_a_missing_framework_named_explicitly_raises_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)
    with pytest.raises(ImportError, match="jax backend of sg.check needs the 'jax' package"):
        check(linear_regression, against=["jax"])


def test_an_operation_a_framework_lacks_is_skipped_or_raised(monkeypatch):
    pytest.importorskip("autograd")
    from symgrad.checking.translate import AutogradTranslator

    lacking = {k: v for k, v in AutogradTranslator.functions.items() if k != "sin"}
    monkeypatch.setattr(AutogradTranslator, "functions", lacking)
    report = check(sp.sin(w) * x, [w], against="all", reference="symbolic")
    assert "autograd" not in report.backends
    assert "autograd has no sin" in report.skipped["autograd"]
    assert "skipped autograd: autograd has no sin" in str(report)
    with pytest.raises(NotImplementedError, match="autograd has no sin"):
        check(sp.sin(w) * x, [w], against="autograd", reference="symbolic")


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        check(linear_regression, against="tensorflow")


def test_no_backend_at_all_is_refused_rather_than_symgrad_against_itself():
    """against=[] would leave only symgrad-floats (symgrad's float path against its own
    kernel), which agrees with a wrong rule: it must not make a report ok."""
    with pytest.raises(ValueError, match="against names no backend"):
        check(linear_regression, against=[])


def test_symgrad_against_its_own_float_path_does_not_count_as_compared():
    report = check(linear_regression)
    only_itself = CheckReport(model="m", wrt=["w"], backends=["symgrad-floats"], points=1,
                              comparisons=[c for c in report.comparisons
                                           if c.backend == "symgrad-floats"])
    assert only_itself.comparisons and all(c.passed for c in only_itself.comparisons)
    assert not only_itself.ok and only_itself.uncompared == ["value", "w"]


def test_tolerances_for_an_unknown_backend_are_refused():
    """A misspelt backend in tolerances would silently leave the default in force."""
    with pytest.raises(ValueError, match="unknown backend 'finite-difference'"):
        check(linear_regression, tolerances={"finite-difference": ((0, 0), (0, 0))})
    assert check(linear_regression, tolerances={"fd": ((1e-7, 1e-10), (1e-4, 1e-7))}).ok


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------
def test_to_dict_is_strict_json_where_a_number_is_not_finite():
    """JSON has no inf or NaN: json.dumps wrote Infinity, which strict parsers refuse; such a
    number is the text the printed table shows, and float() reads it back."""
    w, x = sp.symbols("w x")
    report = check((w * x) ** 2, [w], against="fd", points=1,
                   tolerances={"fd": ((math.inf, 0.0), (1e-6, math.inf))})
    report.comparisons.append(Comparison("jax", "value", math.inf, math.nan, -math.inf))
    data = report.to_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    rtol = [c["rtol"] for c in data["comparisons"] if c["backend"] == "finite-differences"]
    assert rtol[0] == "inf" and isinstance(rtol[1], float)
    last = data["comparisons"][-1]
    assert (last["abs_error"], last["rel_error"], last["rtol"]) == ("inf", "nan", "-inf")
    assert float(last["abs_error"]) == math.inf


def test_to_dict_is_plain_json_with_one_entry_per_backend_and_quantity():
    report = check(window_classifier, against="finite-differences", points=2)
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"model", "ok", "wrt", "backends", "reference", "points", "sizes",
                         "comparisons", "skipped", "uncompared", "second_order", "notes",
                         "timings"}
    assert data["model"] == "window_classifier"
    assert data["ok"] is True and data["points"] == 2
    assert data["wrt"] == ["W", "b", "u", "x"]
    assert [c["quantity"] for c in data["comparisons"]] == ["value", "W", "b", "u", "x"]
    assert set(data["comparisons"][0]) == {"backend", "quantity", "abs_error", "rel_error",
                                           "rtol", "atol", "passed", "note"}
    assert data["comparisons"][1]["note"] == "20 of 24 coordinates"
    assert data["timings"] is None


def test_the_printed_report_is_the_whole_table():
    text = str(check(linear_regression, against="finite-differences"))
    lines = text.splitlines()
    assert lines[0] == "sg.check linear_regression: 3 points; reference symgrad (compiled)"
    assert lines[1].split() == ["backend", "quantity", "max", "abs", "err", "max", "rel", "err",
                                "rtol,", "atol", "result"]
    assert lines[2].startswith("finite-differences  value")
    assert lines[-1] == "OK"


def test_an_empty_report_is_not_ok():
    """Nothing compared proves nothing: an empty report (every backend skipped) is not ok."""
    report = CheckReport(model="m", wrt=["w"], backends=[], points=0)
    assert not report.ok and report.uncompared == ["value", "w"]


def test_timing_lists_each_backend_beside_symgrad():
    pytest.importorskip("autograd")
    report = check(linear_regression, against=["finite-differences", "autograd"], time=True)
    assert [t.backend for t in report.timings] == ["symgrad", "autograd"]
    assert report.timings[0].ratio == 1.0
    assert report.timings[1].seconds > 0
    assert "time of value and gradient (median per call)" in str(report)


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------
def test_the_same_seed_gives_the_same_report():
    first = check(two_layer_net, against="finite-differences", seed=3).to_dict()
    assert check(two_layer_net, against="finite-differences", seed=3).to_dict() == first


def test_symbolic_dimensions_get_distinct_growing_sizes():
    report = check(two_layer_net, against="finite-differences", points=2)
    assert report.sizes == [{"m": 3, "n_h": 4, "n_x": 5}, {"m": 4, "n_h": 5, "n_x": 6}]


def test_inputs_outside_the_domain_are_drawn_again():
    report = check(sp.log(x) * w + sp.sqrt(y), [w, x], reference="symbolic")
    assert report.ok, str(report)
    assert any("inputs drawn" in note for note in report.notes)


def test_an_error_at_every_draw_is_told_not_blamed_on_the_domain():
    """a[5, 0] of an n x 1 vector drawn with n = 3: the compiled function refuses the input
    at every draw, and the check said only 'no inputs with a finite value ... in the
    model's domain'."""
    n = sp.Symbol("n", integer=True, positive=True)
    a = sg.vector("a", n)
    with pytest.raises(ValueError, match=r"after 12 draws \(the last draw raised ValueError: "
                                         r"input 'a' has 3 rows.*a\[5, 0\]"):
        check(a[5, 0] ** 2, [a])


def test_given_inputs_are_kept_and_vectors_may_be_one_dimensional():
    report = check(window_classifier, against="finite-differences",
                   inputs={"x": np.linspace(-1, 1, 6)}, points=2)
    assert report.ok, str(report)


def test_scalar_models_compare_arrays_elementwise():
    report = check(linear_regression, against="finite-differences",
                   inputs={"x": np.linspace(-2, 2, 7), "y": np.linspace(0, 1, 7)})
    assert report.ok, str(report)


def test_a_matrix_output_is_checked_through_its_vector_jacobian_product():
    report = check(sg.sigmoid(W @ xv + b), [W, b], against="finite-differences")
    assert report.ok, str(report)


def test_an_expression_and_its_parameters_may_come_as_a_pair():
    assert check(((w * x - y) ** 2, [w]), reference="symbolic").wrt == ["w"]


def test_without_wrt_every_input_is_a_parameter():
    assert check((w * x - y) ** 2, reference="symbolic").wrt == ["w", "x", "y"]


def test_a_model_carries_its_own_wrt():
    with pytest.raises(ValueError, match="carries its own wrt"):
        check(linear_regression, wrt=[x])


def test_inputs_the_model_does_not_have_are_refused():
    with pytest.raises(ValueError, match=r"inputs \['q'\] are not inputs"):
        check(linear_regression, inputs={"q": 1.0})


def test_tolerances_can_be_set_per_backend(wrong_sine_rule):
    pytest.importorskip("jax")
    model = (sp.sin(w) * x, [w])
    assert not check(model, against="jax").ok
    lenient = check(model, against="jax", tolerances={"jax": ((1e-7, 1e-10), (1e3, 1e3))})
    assert lenient.ok
    assert lenient.comparison("jax", "w").rtol == 1e3


def test_a_comparison_whose_entries_are_all_within_atol_of_zero_says_it_cannot_tell(
        monkeypatch):
    """Gradients of 1e-8 (a model scaled by 1e-8) pass the differences' atol of 1e-7 even
    with the wrong sign: the report says so in the row, instead of a bare ok."""
    from symgrad.checking.backends import CompiledReference

    model = (1e-8 * (w - 1) ** 2, [w])
    right = CompiledReference.value_and_grad

    def flipped(self, values, dims, upstream):
        result = right(self, values, dims, upstream)
        result.gradients = {k: -g for k, g in result.gradients.items()}
        return result

    monkeypatch.setattr(CompiledReference, "value_and_grad", flipped)
    report = check(model)
    assert report.comparison("finite-differences", "w").passed     # what atol allows
    assert "wrong sign or factor there would pass" in report.comparison(
        "finite-differences", "w").note
    assert "wrong sign" in str(report)
    monkeypatch.undo()
    assert not check((w - 1) ** 2, [w]).comparison("finite-differences", "w").note
    # at a point where everything is NaN, NaN agrees with NaN: ok, but said to compare nothing
    nan = check(sp.sqrt(w) * x, [w], inputs={"w": -1.0, "x": 1.0})
    assert nan.ok and all("nothing compared there" in c.note for c in nan.comparisons)


def test_finite_differences_say_when_they_cannot_be_trusted():
    """In sin(cosh(cosh(D))) a step of 1e-5 turns the sine by half a radian: the differences
    are off by 40% and say so in a note, rather than blaming symgrad (which JAX confirms)."""
    D = sg.matrix("D", 3, 3)
    a = sp.Symbol("a")
    model = sg.logsumexp(sg.sin(ops.Map(sp.Lambda((a,), sp.cosh(sp.cosh(a))), (3, 3), D)))
    report = check(model, [D], against=("jax", "finite-differences"), points=2, seed=26,
                   reference="symbolic")
    rows = {(c.backend, c.quantity): c for c in report.comparisons}
    assert rows["jax", "D"].passed and rows["jax", "D"].rel_error < 1e-9
    assert rows["finite-differences", "D"].rel_error > 0.1
    assert "uncertain" in rows["finite-differences", "D"].note
    well_behaved = check(sg.logsumexp(sg.sin(D)), [D], against="finite-differences", seed=26)
    assert not any(c.note for c in well_behaved.comparisons)
