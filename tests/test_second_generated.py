"""Second order beyond f.hessian: generated modules that offer hessian, hvp and jacobian
(sg.Model(..., second_order=True)), the symmetric product of Hessian blocks A^T diag(c) A,
sg.check(..., order=2), and sg.compile of an explicit sympy.Matrix."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.codegen.second_runtime import _sg_symmetric_product
from symgrad.generation import module_text

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_IMPORTS = {"numpy", "numba", "llvmlite", "math"}

n, d = sp.symbols("n d", integer=True, positive=True)
X, y, w = sg.matrix("X", n, d), sg.vector("y", n), sg.vector("w", d)
lam, b = sp.symbols("lam b")
LOGISTIC = (sg.sum(sg.softplus(-sg.hadamard(y, X @ w + sg.broadcast(b, (n, 1)))))
            + lam / 2 * sg.dot(w, w))
W, x = sg.matrix("W", 3, 4), sg.vector("x", 4)


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"second_generated_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _logistic_inputs(seed=0, rows=7, cols=5):
    rng = np.random.default_rng(seed)
    return dict(w=rng.normal(size=cols), b=0.3, X=rng.normal(size=(rows, cols)),
                y=np.where(rng.random(rows) < 0.5, -1.0, 1.0), lam=0.1)


def _imports(text: str) -> set:
    names = set()
    for line in text.splitlines():
        found = re.match(r"\s*(?:from\s+([\w.]+)\s+import|import\s+([\w., ]+))", line)
        if found:
            modules = found.group(1) or found.group(2)
            names |= {m.strip().split()[0].split(".")[0] for m in modules.split(",")}
    return names


def _assert_blocks_equal(got: dict, want: dict):
    assert set(got) == set(want)
    for key in want:
        assert np.shape(got[key]) == np.shape(want[key]), key
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-14, err_msg=key)


# ------------------------------------------------------------------------------------------
# Generated modules
# ------------------------------------------------------------------------------------------
def test_a_generated_module_offers_hessian_and_hvp_that_agree_with_the_compiled(tmp_path):
    model = sg.Model("second_logistic", LOGISTIC, [w, b], second_order=True)
    text = module_text(model)
    assert text == module_text(model)                     # the same bytes every time
    assert _imports(text) <= RUNTIME_IMPORTS
    assert "\ndef hessian(*, w, b, X, lam, y):" in text and "\ndef hvp(tangents, /, *," in text
    module = _load(sg.generate(model, tmp_path / "second_logistic.py"))
    inputs = _logistic_inputs()
    _assert_blocks_equal(module.hessian(**inputs), model.compiled.hessian(**inputs))
    tangents = {"w": np.linspace(-1, 1, 5), "b": 0.5}
    _assert_blocks_equal(module.hvp(tangents, **inputs), model.compiled.hvp(tangents, **inputs))
    # and the Hessian is the closed form lam I + X^T diag(s (1 - s)) X (with b's row)
    s = 1 / (1 + np.exp(inputs["y"] * (inputs["X"] @ inputs["w"] + inputs["b"])))
    expected = inputs["X"].T @ (inputs["X"] * (s * (1 - s))[:, None]) + 0.1 * np.eye(5)
    np.testing.assert_allclose(module.hessian(**inputs)[("w", "w")], expected, rtol=1e-12)


def test_a_model_without_second_order_generates_what_it_did():
    plain = sg.Model("plain_logistic", LOGISTIC, [w, b])
    text = module_text(plain)
    assert "def hessian" not in text and "Second order" not in text
    with pytest.raises(TypeError, match="second_order must be True or False"):
        sg.Model("bad", LOGISTIC, [w, b], second_order="yes")


def test_generated_jacobian_and_matrix_parameter_blocks_agree_with_the_compiled(tmp_path):
    rng = np.random.default_rng(1)
    inputs = dict(W=rng.normal(size=(3, 4)), x=rng.normal(size=4))
    energy = sg.Model("second_tanh_energy", sg.sum(sg.tanh(W @ x)), [W, x], second_order=True)
    layer = sg.Model("second_tanh_layer", sg.tanh(W @ x), [W, x], second_order=True)
    texts = {m.name: module_text(m) for m in (energy, layer)}
    assert "\ndef jacobian(*, W, x):" in texts["second_tanh_layer"]
    assert "def hessian" not in texts["second_tanh_layer"]
    for m in (energy, layer):
        assert _imports(texts[m.name]) <= RUNTIME_IMPORTS
    module = _load(sg.generate(energy, tmp_path / "e.py"))
    # (W, W) and (W, x) have four and three axes: assembled from HVPs in both
    _assert_blocks_equal(module.hessian(**inputs), energy.compiled.hessian(**inputs))
    module = _load(sg.generate(layer, tmp_path / "l.py"))
    _assert_blocks_equal(module.jacobian(**inputs), layer.compiled.jacobian(**inputs))


def test_generated_scalar_model_hessian_is_per_point(tmp_path):
    a, c = sp.symbols("a c")
    model = sg.Model("second_scalar", sp.sin(a * c) + a**2 * c, [a, c], second_order=True)
    module = _load(sg.generate(model, tmp_path / "s.py"))
    points = dict(a=np.array([0.5, -1.0, 2.0]), c=np.array([1.5, 0.25, -0.5]))
    got = module.hessian(**points)
    _assert_blocks_equal(got, model.compiled.hessian(**points))
    A, C = points["a"], points["c"]
    np.testing.assert_allclose(got[("a", "c")], np.cos(A * C) - A * C * np.sin(A * C) + 2 * A,
                               rtol=1e-12)
    assert module.hessian(a=1.0, c=2.0)[("c", "c")] == pytest.approx(-np.sin(2.0))


def test_generated_newton_logistic_has_second_order_and_matches_compile(tmp_path):
    from symgrad.generation import load_models

    (model,) = load_models(ROOT / "examples" / "newton_logistic.py")
    assert model.second_order
    path = ROOT / "generated" / "newton_logistic.py"
    assert path.read_text(encoding="utf-8") == module_text(model)
    copy = tmp_path / "newton_logistic.py"      # Numba's cache goes beside it, not in generated/
    copy.write_bytes(path.read_bytes())
    module = _load(copy)
    inputs = _logistic_inputs(seed=3, rows=20, cols=6)
    del inputs["b"]
    _assert_blocks_equal(module.hessian(**inputs), model.compiled.hessian(**inputs))
    v = {"w": np.cos(np.arange(6.0))}
    _assert_blocks_equal(module.hvp(v, **inputs), model.compiled.hvp(v, **inputs))


# ------------------------------------------------------------------------------------------
# The symmetric product
# ------------------------------------------------------------------------------------------
def test_the_logistic_hessian_block_is_one_symmetric_product():
    f = sg.compile(LOGISTIC, [w, b], name="second_symmetric")
    f.hessian(**_logistic_inputs())
    table = f._second_order["hessian"].table
    assert table["symmetric"] == {("w", "w"): ("X", ("symmetric", "w", "w"))}


@pytest.mark.parametrize("signs", ["positive", "mixed", "negative", "zero"])
def test_symmetric_product_any_sign(signs):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(90, 70))       # wide enough for dsyrk
    c = {"positive": rng.random(90), "mixed": rng.normal(size=90),
         "negative": -rng.random(90), "zero": np.zeros(90)}[signs]
    got = _sg_symmetric_product(a, c)
    np.testing.assert_allclose(got, a.T @ (a * c[:, None]), rtol=1e-12, atol=1e-13)
    assert np.array_equal(got, got.T)


def test_symmetric_product_keeps_nan():
    a = np.ones((3, 70))
    assert np.isnan(_sg_symmetric_product(a, np.array([1.0, np.nan, -1.0]))).all()
    assert np.isnan(_sg_symmetric_product(a, np.array([1.0, np.nan, 1.0]))).all()


def test_a_sign_indefinite_block_agrees_with_jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    energy = sg.sum(sg.tanh(W @ x)) + sg.dot(x, W.T @ W @ x)
    f = sg.compile(energy, [x], name="second_indefinite")
    rng = np.random.default_rng(4)
    W0, x0 = rng.normal(size=(3, 4)), rng.normal(size=4)
    H = f.hessian(x=x0, W=W0)[("x", "x")]
    assert f._second_order["hessian"].table["symmetric"]
    expected = jax.hessian(lambda v: jax.numpy.sum(jax.numpy.tanh(W0 @ v))
                           + v @ (W0.T @ W0 @ v))(x0)
    np.testing.assert_allclose(H, np.asarray(expected), rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------------------------------
# sg.check(..., order=2)
# ------------------------------------------------------------------------------------------
def test_check_order_two_compares_hessian_and_hvp():
    pytest.importorskip("jax")
    pytest.importorskip("torch")
    report = sg.check(sg.Model("check_logistic", LOGISTIC, [w, b]),
                      against=["fd", "jax", "torch"], order=2, points=2)
    assert report.ok, str(report)
    for backend in ("finite-differences", "jax", "torch"):
        for quantity in ("hessian", "hvp"):
            assert report.comparison(backend, quantity).passed
    assert report.to_dict()["second_order"] == ["hessian", "hvp"]


def test_check_order_two_compares_jacobians():
    pytest.importorskip("jax")
    pytest.importorskip("torch")
    report = sg.check(sg.tanh(W @ x), [W, x], against=["fd", "jax", "torch"], order=2,
                      points=1)
    assert report.ok, str(report)
    assert {c.backend for c in report.comparisons if c.quantity == "jacobian"} == {
        "finite-differences", "jax", "torch"}


def test_a_wrong_hessian_fails_the_check():
    pytest.importorskip("jax")
    model = sg.Model("check_wrong", LOGISTIC, [w, b])
    f = model.compiled
    right = f.hessian

    def wrong(**inputs):
        blocks = right(**inputs)
        blocks[("w", "w")] = blocks[("w", "w")] * 1.001      # off by 0.1%
        return blocks

    f.hessian = wrong
    report = sg.check(model, against=["fd", "jax"], order=2, points=1)
    assert not report.ok
    assert not report.comparison("jax", "hessian").passed
    assert not report.comparison("finite-differences", "hessian").passed
    assert report.comparison("jax", "hvp").passed          # f.hvp was left right


def test_a_wrong_jacobian_fails_the_check():
    pytest.importorskip("jax")
    model = sg.Model("check_wrong_jacobian", sg.tanh(W @ x), [W, x])
    f = model.compiled
    right = f.jacobian
    f.jacobian = lambda **inputs: {k: v + 1e-3 for k, v in right(**inputs).items()}
    report = sg.check(model, against=["jax"], order=2, points=1)
    assert not report.comparison("jax", "jacobian").passed and not report.ok


def test_check_order_two_needs_compiled_reference_and_a_second_order_backend():
    a = sp.Symbol("a")
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        sg.check(a**3, [a], order=3)
    with pytest.raises(ValueError, match="reference='compiled'"):
        sg.check(a**3, [a], order=2, reference="symbolic")
    pytest.importorskip("autograd")
    report = sg.check(a**3, [a], against=["autograd"], order=2)
    assert not report.ok and report.uncompared == ["hessian", "hvp"]


# ------------------------------------------------------------------------------------------
# An explicit sympy.Matrix
# ------------------------------------------------------------------------------------------
def test_an_explicit_matrix_compiles_and_its_jacobian_agrees_with_jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    p, q, r = sp.symbols("p q r")
    M = sp.Matrix([[p * q, sp.sin(p) + q**2], [sp.exp(r * p), sp.S(3)], [q, sp.log(1 + r**2)]])
    f = sg.compile(M, [p, q, r], name="explicit")
    at = dict(p=0.7, q=-1.3, r=0.4)
    value = f(**at)
    assert value.shape == (3, 2)

    def g(v):
        p, q, r = v
        return jnp.array([[p * q, jnp.sin(p) + q**2], [jnp.exp(r * p), 3.0],
                          [q, jnp.log(1 + r**2)]])

    v = jnp.array([at["p"], at["q"], at["r"]])
    np.testing.assert_allclose(value, np.asarray(g(v)), rtol=1e-13)
    expected = np.asarray(jax.jacfwd(g)(v))                # (3, 2, 3)
    J = f.jacobian(**at)
    for k, name in enumerate("pqr"):
        assert J[name].shape == (3, 2)
        np.testing.assert_allclose(J[name], expected[..., k], rtol=1e-13, atol=1e-15)
    # points: the broadcast shape comes last
    J = f.jacobian(p=np.array([0.7, 0.1]), q=-1.3, r=0.4)
    assert J["p"].shape == (3, 2, 2)
    np.testing.assert_allclose(J["p"][..., 0], expected[..., 0], rtol=1e-13, atol=1e-15)


def test_an_explicit_matrix_says_what_is_wrong():
    p, q = sp.symbols("p q")
    with pytest.raises(TypeError, match="scalar symbols; wrt has"):
        sg.compile(sp.Matrix([p, q]), [sg.vector("v", 2)])
    f = sg.compile(sp.Matrix([p * q, p]), [p], name="explicit_errors")
    with pytest.raises(TypeError, match="missing input 'q'"):
        f.jacobian(p=1.0)
    with pytest.raises(TypeError, match="unknown input 's'"):
        f(p=1.0, q=2.0, s=3.0)


# ------------------------------------------------------------------------------------------
# HVPs: the pieces at x computed once
# ------------------------------------------------------------------------------------------
def test_the_hvp_applies_weights_computed_at_x():
    f = sg.compile(LOGISTIC, [w, b], name="second_hvp_split")
    inputs = _logistic_inputs(seed=5, rows=30, cols=6)
    f.hvp({"w": np.ones(6)}, **inputs)
    bundle = f._second_order["hvp"]
    # the product part takes sigmoid's weights as an input: no forward pass in it
    assert "sigmoid" not in str(bundle.compiled.expression)
    assert "sigmoid" in str(bundle.linearize.compiled.expression)


def test_hessp_reuses_the_pieces_at_x_and_refreshes_them_when_x_moves():
    f = sg.compile(LOGISTIC, [w, b], name="second_hessp_cache")
    inputs = _logistic_inputs(seed=6, rows=30, cols=6)
    data = {k: inputs[k] for k in ("X", "y", "lam")}
    problem = f.scipy(**data)
    rng = np.random.default_rng(7)
    for _ in range(2):                      # a new x each round
        x = problem.pack(w=rng.normal(size=6), b=float(rng.normal()))
        H = problem.hess(x)
        for _ in range(3):                  # several products at that x
            v = rng.normal(size=7)
            np.testing.assert_allclose(problem.hessp(x, v), H @ v, rtol=1e-12, atol=1e-13)
    calls = []
    linearize = f._second_order["hvp"].linearize
    original = linearize.value_and_grad
    linearize.value_and_grad = lambda **kw: calls.append(1) or original(**kw)
    try:
        problem.hessp(x + 1.0, np.ones(7))
        problem.hessp(x + 1.0, np.ones(7) * 2)
        problem.hessp(x, np.ones(7))
    finally:
        linearize.value_and_grad = original
    assert len(calls) == 2                  # once per distinct x
