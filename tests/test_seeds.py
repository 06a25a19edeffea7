"""The worked examples of the teaching material (examples/), with their numbers."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symgrad as sg

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_regression_gives_loss_1_and_gradient_minus_2():
    f = load_example("linear_regression").linear_regression.compiled
    loss, grads = f.value_and_grad(w=1.0, x=1.0, y=2.0)
    assert loss == 1.0
    assert grads == {"w": -2.0}


def test_linear_regression_forward_alone_gives_the_loss():
    f = load_example("linear_regression").linear_regression.compiled
    assert f(w=1.0, x=1.0, y=2.0) == 1.0
    assert f.grad(w=1.0, x=1.0, y=2.0) == {"w": -2.0}


def test_branching_graph_sums_the_two_branches_of_y():
    f = load_example("branching_graph").branching_graph.compiled
    value, grads = f.value_and_grad(x=1.0, y=2.0, z=0.0)
    assert value == 6.0
    assert grads == {"x": 2.0, "y": 5.0, "z": 0.0}


def test_max_splits_the_gradient_evenly_at_a_tie():
    x, y = sp.symbols("x y")
    f = sg.compile(sp.Max(x, y), [x, y])
    assert f.value_and_grad(x=1.0, y=1.0)[1] == {"x": 0.5, "y": 0.5}
    assert f.value_and_grad(x=2.0, y=1.0)[1] == {"x": 1.0, "y": 0.0}


def test_window_classifier_matches_its_closed_forms():
    example = load_example("window_classifier")
    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(100, 250)) / 10, rng.normal(size=100)
    u, x = rng.normal(size=100), rng.normal(size=250)
    value, grads = example.window_classifier.compiled.value_and_grad(W=W, b=b, u=u, x=x)
    h = 1 / (1 + np.exp(-(W @ x + b)))
    delta = u * h * (1 - h)
    assert value == pytest.approx(u @ h, rel=1e-13)
    np.testing.assert_allclose(grads["W"], np.outer(delta, x), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["b"], delta, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["u"], h, rtol=1e-12)
    np.testing.assert_allclose(grads["x"], W.T @ delta, rtol=1e-12, atol=1e-15)


def test_batched_window_classifier_matches_numpy():
    example = load_example("window_classifier")
    rng = np.random.default_rng(2)
    W, b = rng.normal(size=(100, 250)) / 10, rng.normal(size=100)
    u, X = rng.normal(size=100), rng.normal(size=(250, 7))
    value, grads = example.window_classifier_batched.compiled.value_and_grad(W=W, b=b, u=u, X=X)
    H = 1 / (1 + np.exp(-(W @ X + b[:, None])))
    delta = u[:, None] * H * (1 - H)
    assert value == pytest.approx(np.sum(u[:, None] * H), rel=1e-12)
    np.testing.assert_allclose(grads["W"], delta @ X.T, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(grads["b"], delta.sum(axis=1), rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(grads["u"], H.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(grads["X"], W.T @ delta, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("m", [3, 40])
def test_two_layer_net_matches_the_textbook_formulas(m):
    example = load_example("two_layer_net")
    rng = np.random.default_rng(m)
    inputs = {"W1": rng.normal(size=(6, 3)), "b1": rng.normal(size=6),
              "W2": rng.normal(size=(1, 6)), "b2": rng.normal(size=1),
              "X": rng.normal(size=(3, m)), "Y": (rng.random((1, m)) > 0.5).astype(float)}
    cost, grads = example.two_layer_net.compiled.value_and_grad(**inputs)
    expected_cost, expected = example.numpy_value_and_grad(**inputs)
    assert cost == pytest.approx(expected_cost, rel=1e-12)
    for name in expected:
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-10, atol=1e-14)
        assert grads[name].shape == inputs[name].shape


def test_logistic_regression_gives_dz_equal_a_minus_y():
    example = load_example("logistic_regression")
    w, x = np.array([0.5, -1.0, 2.0, 0.1]), np.array([1.0, 0.5, -0.3, 2.0])
    for y in (0.0, 1.0):
        value, grads = example.logistic_regression.compiled.value_and_grad(w=w, b=0.2, x=x, y=y)
        a = 1 / (1 + np.exp(-(w @ x + 0.2)))
        assert value == pytest.approx(-(y * np.log(a) + (1 - y) * np.log(1 - a)), rel=1e-13)
        assert grads["b"] == pytest.approx(a - y, rel=1e-13)
        np.testing.assert_allclose(grads["w"], x * (a - y), rtol=1e-13)


def test_softmax_regression_gradient_is_probabilities_minus_labels():
    example = load_example("softmax_regression")
    rng = np.random.default_rng(3)
    W, b, X = rng.normal(size=(3, 5)), rng.normal(size=3), rng.normal(size=(5, 20))
    Y = np.eye(3)[:, rng.integers(0, 3, size=20)]
    value, grads = example.softmax_regression.compiled.value_and_grad(W=W, b=b, X=X, Y=Y)
    Z = W @ X + b[:, None]
    P = np.exp(Z - Z.max(axis=0))
    P /= P.sum(axis=0)
    assert value == pytest.approx(-np.sum(Y * np.log(P)) / 20, rel=1e-12)
    np.testing.assert_allclose(grads["W"], (P - Y) @ X.T / 20, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(grads["b"], (P - Y).sum(axis=1) / 20, rtol=1e-11, atol=1e-15)
