"""Matrix calculus: Matrix Cookbook identities, readable formulas, canonical forms, stability,
symbolic dimensions, vector shapes and vector-Jacobian products."""

import re

import numpy as np
import pytest
import sympy as sp
from scipy.special import expit
from sympy.matrices.expressions.matexpr import MatrixElement

import symgrad as sg
from symgrad import ops
from symgrad.compiled import build_spec
from symgrad.derive.graph import Canonicalizer

from .test_seeds import load_example

rng = np.random.default_rng(0)
N = 4
a, b, x = sg.vector("a", N), sg.vector("b", N), sg.vector("x", N)
A, B, X, M = (sg.matrix(name, N, N) for name in "ABXM")
y = sg.vector("y", N)
values = {"a": rng.normal(size=N), "b": rng.normal(size=N), "x": rng.normal(size=N),
          "y": rng.normal(size=N), "A": rng.normal(size=(N, N)), "B": rng.normal(size=(N, N)),
          "M": rng.normal(size=(N, N)), "X": rng.normal(size=(N, N)) + 3 * np.eye(N)}
v = values


def closed_form_cases():
    Xinv = np.linalg.inv(v["X"])
    residual = v["M"] @ v["x"] - v["y"]
    return [
        ("a^T x", sg.dot(a, x), x, v["a"]),
        ("x^T A x", sg.dot(x, A @ x), x, (v["A"] + v["A"].T) @ v["x"]),
        ("a^T X b", MatrixElement(a.T @ X @ b, 0, 0), X, np.outer(v["a"], v["b"])),
        ("tr(A X B)", sg.trace(A @ X @ B), X, v["A"].T @ v["B"].T),
        ("tr(X^T A X)", sg.trace(X.T @ A @ X), X, (v["A"] + v["A"].T) @ v["X"]),
        ("||M x - y||^2", sg.dot(M @ x - y, M @ x - y), x, 2 * v["M"].T @ residual),
        ("det X", sg.det(X), X, np.linalg.det(v["X"]) * Xinv.T),
        ("log det X", sp.log(sg.det(X)), X, Xinv.T),
        ("logdet X", sg.logdet(X), X, Xinv.T),
        ("a^T X^-1 b", MatrixElement(a.T @ sg.inv(X) @ b, 0, 0), X,
         -Xinv.T @ np.outer(v["a"], v["b"]) @ Xinv.T),
    ]


@pytest.mark.parametrize("case", closed_form_cases(), ids=lambda c: c[0])
def test_matrix_cookbook_identity(case):
    _, expr, wrt, expected = case
    f = sg.compile(expr, [wrt])
    inputs = {name: v[name] for name in f.inputs}
    _, grads = f.value_and_grad(**inputs)
    np.testing.assert_allclose(grads[wrt.name], expected, rtol=1e-10, atol=1e-12)


def test_log_det_is_not_the_wrong_zero():
    grad = sg.grad(sp.log(sg.det(X)), [X])[X]
    assert grad != 0 and not isinstance(grad, sp.ZeroMatrix)


def test_window_classifier_formulas_read_like_the_lecture():
    example = load_example("window_classifier")
    assert example.window_classifier.show() == "\n".join([
        "h = sigmoid(W x + b)",
        "delta = h ∘ u ∘ (1 - h)",
        "dwindow_classifier/dW = delta x^T",
        "dwindow_classifier/db = delta",
        "dwindow_classifier/du = h",
        "dwindow_classifier/dx = W^T delta",
    ])


def test_two_layer_net_formulas_read_like_the_course():
    example = load_example("two_layer_net")
    assert example.two_layer_net.show() == "\n".join([
        "Z1 = W1 X + b1",
        "A1 = tanh(Z1)",
        "Z2 = W2 A1 + b2",
        "A2 = sigmoid(Z2)",
        "dZ2 = (A2 - Y)/m",
        "dA1 = W2^T dZ2",
        "dZ1 = dA1 ∘ (1 - A1^2)",
        "dtwo_layer_net/dW1 = dZ1 X^T",
        "dtwo_layer_net/db1 = sum(dZ1, axis=1)",
        "dtwo_layer_net/dW2 = dZ2 A1^T",
        "dtwo_layer_net/db2 = sum(dZ2)",
    ])


def test_window_classifier_gradient_is_a_matrix_product_not_an_array_expression():
    example = load_example("window_classifier")
    grads = example.window_classifier.grad()
    dW = grads[example.W]
    assert isinstance(dW, sp.MatMul)
    assert dW.args[-1] == example.x.T
    assert dW.shape == example.W.shape


def test_elementwise_work_on_one_shape_shares_one_loop():
    """The batched window classifier's value, dZ, db and du all need sigmoid(Z + b): one loop
    computes it once per element, as a hand-written kernel would."""
    model = load_example("window_classifier").window_classifier_batched
    source = _readable_source(build_spec(model.output, model.wrt))
    kernel = source[source.index("def _value_and_grad_kernel("):]
    kernel = kernel[:kernel.index("\n\n")]
    assert kernel.count("sg_sigmoid(") == 1
    assert kernel.count("for _j in") == 1


def test_a_layer_writes_over_the_product_it_no_longer_needs():
    """Z1 = W1 X, A1 = tanh(Z1 + b1) and dZ1 share one n_h x m array: the product into dW2,
    the last other reader of A1, runs before dZ1 overwrites it (and the values stay right:
    the seed tests compare this model with hand-written NumPy)."""
    model = load_example("two_layer_net").two_layer_net
    source = _readable_source(build_spec(model.output, model.wrt))
    for kernel in ("_forward_kernel(", "_value_and_grad_kernel("):
        body = source[source.index(f"def {kernel}"):]
        body = body[:body.index("\n\n")]
        assert "np.empty((n_h, m))" not in body
    body = source[source.index("def _value_and_grad_kernel("):]
    body = body[:body.index("\n\n")]
    # A1 is the array the tanh loop writes, dW2 the array returned as W2's gradient, and
    # dZ1 takes over A1's array (a line "dZ1 = A1"): dW2 must be computed before that line
    a1 = re.search(r"_e0 = sg_tanh\(.*\)\n\s+(_t\d+)\[_i, _j\] = _e0", body).group(1)
    dw2 = re.search(r"(_t\d+)\.reshape\(_in_in_2\.shape\)", body).group(1)
    takeover = re.search(rf"\n    _t\d+ = {a1}\n", body)
    assert takeover is not None, "dZ1 no longer reuses A1's array"
    assert body.index(f"\n    {dw2} = ") < takeover.start()


def _readable_source(spec) -> str:
    """The module's text with symgrad's input and dimension names (in_0, dim_0) replaced by
    the user's, so that assertions read like the model."""
    import re

    from symgrad.codegen.module import module_source

    names = {s.name: name for s, name in spec.public.items()}
    return re.sub(r"\b(?:in|dim)_\d+\b", lambda m: names.get(m.group(), m.group()),
                  module_source(spec, "test"))


def _kernel_source(expr, wrt, kernel="_value_and_grad_kernel"):
    source = _readable_source(build_spec(expr, wrt))
    body = source[source.index(f"def {kernel}("):]
    return body[:body.index("\n\n")]


@pytest.fixture(scope="module")
def four_matrix_vector_products():
    n, k = sp.symbols("n k", integer=True, positive=True)
    Am, u, w = sg.matrix("A", n, k), sg.vector("u", n), sg.vector("w", k)
    cs = [sg.vector(f"c{q}", k if q % 2 == 0 else n) for q in range(4)]
    s = sg.sum(sg.hadamard(cs[0], sg.tanh(Am.T @ u))) + sg.sum(sg.hadamard(cs[1], Am @ w)) \
        + sg.sum(sg.hadamard(cs[2].T, sg.sin(u.T @ Am))) + sg.sum(sg.hadamard(cs[3].T, w.T @ Am.T))
    return sg.compile(s, [Am, u, w])


@pytest.mark.parametrize("n, k", [(7, 9), (8, 40), (5, 33), (1, 6), (3, 2)])
def test_matrix_vector_products_as_loops_agree_with_numpy(four_matrix_vector_products, n, k):
    """A v, A^T u, u^T A and v^T A^T: a dot product per stored row or a scaled-row update,
    four rows at a time with the remainder rows on their own (sizes not multiples of 4)."""
    f = four_matrix_vector_products
    assert "np.dot" not in f.source
    r = np.random.default_rng(n * k)
    A0, u0, w0 = r.normal(size=(n, k)), r.normal(size=n), r.normal(size=k)
    c0 = [r.normal(size=k if q % 2 == 0 else n) for q in range(4)]
    given = {"A": A0, "u": u0, "w": w0, **{f"c{q}": c0[q] for q in range(4)}}
    value, grads = f.value_and_grad(**given)
    expected = c0[0] @ np.tanh(A0.T @ u0) + c0[1] @ (A0 @ w0) + c0[2] @ np.sin(u0 @ A0) \
        + c0[3] @ (A0 @ w0)
    assert value == pytest.approx(expected, rel=1e-12)
    g = c0[0] * (1 - np.tanh(A0.T @ u0) ** 2)
    h = c0[2] * np.cos(u0 @ A0)
    np.testing.assert_allclose(grads["A"], np.outer(u0, g) + np.outer(c0[1] + c0[3], w0)
                               + np.outer(u0, h), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads["u"], A0 @ g + A0 @ h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads["w"], A0.T @ (c0[1] + c0[3]), rtol=1e-12, atol=1e-14)


def test_short_known_rows_go_to_blas():
    """Rows of 16 known entries: LLVM would vectorise the loops with gathers (5-10x
    slower than BLAS), so that product stays with BLAS; long rows become loops."""
    Xs, w = sg.matrix("X", 1024, 16), sg.vector("w", 16)
    assert "np.dot(X, w" in _kernel_source(sg.sum(sg.square(Xs @ w)), [w], "_forward_kernel")
    Xl, wl = sg.matrix("X", 100, 250), sg.vector("w", 250)
    assert "np.dot" not in _kernel_source(sg.sum(sg.square(Xl @ wl)), [wl], "_forward_kernel")


def test_a_row_vector_times_a_layer_is_summed_in_the_layer_loop():
    """Z2 = W2 tanh(W1 X + b1): the forward never stores tanh(...), it adds each entry,
    weighted by W2, into Z2 as it goes; a row sum (db1) goes through a local variable."""
    model = load_example("two_layer_net").two_layer_net
    forward = _kernel_source(model.output, model.wrt, "_forward_kernel")
    assert forward.count("for _i in") == 1 and "+= _e0 * W2[0, _i]" in forward
    assert "_t4[_i, _j] =" not in forward          # A1 is not stored in the forward pass
    backward = _kernel_source(model.output, model.wrt)
    assert "_acc0 += _e0" in backward


def test_latex_and_jupyter_show_formulas():
    example = load_example("window_classifier")
    grads = example.window_classifier.grad()
    text = sg.latex(grads)
    assert r"\circ" in text and r"\delta" in text
    assert grads._repr_latex_().startswith("$")


def test_matrix_chain_order_is_chosen_from_the_shapes():
    Tall, v50 = sg.matrix("T", 100, 50), sg.vector("v", 50)
    canonical = Canonicalizer()(Tall.T @ Tall @ v50)
    # T^T (T v): two matrix-vector products, never the 50 x 50 product T^T T
    assert canonical == sp.MatMul(Tall.T, sp.MatMul(Tall, v50))


def test_products_with_ones_become_sums_and_no_ones_matrix_is_built():
    R = sg.matrix("R", 3, 5)
    total = MatrixElement(sp.OneMatrix(1, 3) @ R @ sp.OneMatrix(5, 1), 0, 0)
    spec = build_spec(total, [R])
    for program in (spec.forward, spec.value_and_grad):
        for statement in program.statements:
            assert not statement.operation.atoms(sp.OneMatrix), statement
    f = sg.compile(total, [R])
    Rv = rng.normal(size=(3, 5))
    value, grads = f.value_and_grad(R=Rv)
    assert value == pytest.approx(Rv.sum())
    np.testing.assert_allclose(grads["R"], np.ones((3, 5)))


def test_transpose_of_a_product_is_recognised():
    assert Canonicalizer()((A @ B).T) == sp.MatMul(B.T, A.T)


@pytest.mark.parametrize("size", [3, 11])
def test_symbolic_dimensions_compile_once_and_run_at_any_size(size):
    n = sp.Symbol("n", integer=True, positive=True)
    An, xn = sg.matrix("A", n, n), sg.vector("x", n)
    f = sg.compile(sg.dot(xn, An @ xn), [xn])
    Av, xv = rng.normal(size=(size, size)), rng.normal(size=size)
    value, grads = f.value_and_grad(A=Av, x=xv)
    assert value == pytest.approx(xv @ Av @ xv)
    np.testing.assert_allclose(grads["x"], (Av + Av.T) @ xv)


def test_vectors_accept_1d_and_column_arrays_and_keep_the_shape_given():
    f = sg.compile(sg.dot(a, sg.tanh(A @ x)), [a, x, A])
    inputs = {"a": v["a"], "x": v["x"], "A": v["A"]}
    _, flat = f.value_and_grad(**inputs)
    assert flat["a"].shape == (N,) and flat["x"].shape == (N,)
    columns = {"a": v["a"][:, None], "x": v["x"][:, None], "A": v["A"]}
    _, column = f.value_and_grad(**columns)
    assert column["a"].shape == (N, 1) and column["x"].shape == (N, 1)
    np.testing.assert_allclose(column["x"][:, 0], flat["x"])


def test_arrays_of_any_layout_and_real_dtype_give_the_same_gradients():
    """The compiled entry takes float64 arrays as they are and converts the others (other
    dtypes, other layouts, lists through the checked path): one answer for all of them."""
    f = sg.compile(sg.dot(a, sg.tanh(A @ x)), [a, x, A])
    reference_value, reference = f.value_and_grad(a=v["a"], x=v["x"], A=v["A"])
    integers = {"a": np.arange(N), "x": np.arange(N) % 3, "A": np.eye(N, dtype=np.int32)}
    variants = [
        {"a": v["a"], "x": v["x"], "A": np.asfortranarray(v["A"])},
        {"a": v["a"], "x": np.stack([v["x"], v["x"]], axis=1)[:, 0], "A": v["A"]},  # strided
        {"a": list(v["a"]), "x": tuple(v["x"]), "A": v["A"].tolist()},
    ]
    for inputs in variants:
        value, grads = f.value_and_grad(**inputs)
        assert value == pytest.approx(reference_value, rel=1e-14)
        for name in reference:
            np.testing.assert_allclose(grads[name], reference[name], rtol=1e-14)
    value, grads = f.value_and_grad(**integers)
    expected_value, expected = f.value_and_grad(
        **{k: np.asarray(w, dtype=np.float64) for k, w in integers.items()})
    assert value == expected_value
    for name in expected:
        np.testing.assert_array_equal(grads[name], expected[name])
    float32 = {k: np.asarray(w, dtype=np.float32) for k, w in integers.items()}
    assert f.value_and_grad(**float32)[0] == expected_value


def test_row_vector_parameter_keeps_its_shape():
    r = sg.matrix("r", 1, N)
    f = sg.compile(MatrixElement(r @ x, 0, 0), [r])
    _, grads = f.value_and_grad(r=np.ones(N), x=v["x"])
    assert grads["r"].shape == (N,)
    _, grads = f.value_and_grad(r=np.ones((1, N)), x=v["x"])
    assert grads["r"].shape == (1, N)
    np.testing.assert_allclose(grads["r"][0], v["x"])


def test_matrix_element_gradient_is_one_entry():
    f = sg.compile(A[0, 1] * A[1, 0], [A])
    _, grads = f.value_and_grad(A=v["A"])
    expected = np.zeros((N, N))
    expected[0, 1], expected[1, 0] = v["A"][1, 0], v["A"][0, 1]
    np.testing.assert_allclose(grads["A"], expected)


def test_hadamard_power_identity_and_broadcast_scalar():
    s = sp.Symbol("s")
    expr = sg.sum(sp.HadamardPower(A, 2) + s * sp.Identity(N))
    f = sg.compile(expr, [A, s])
    value, grads = f.value_and_grad(A=v["A"], s=0.5)
    assert value == pytest.approx(np.sum(v["A"] ** 2) + 0.5 * N)
    np.testing.assert_allclose(grads["A"], 2 * v["A"])
    assert grads["s"] == pytest.approx(N)


def test_vjp_of_a_layer_gives_upstream_weighted_gradients():
    W, bias = sg.matrix("W", 3, N), sg.vector("c", 3)
    layer = sg.compile(sg.tanh(W @ x + bias), [W, bias, x])
    Wv, cv = rng.normal(size=(3, N)), rng.normal(size=3)
    upstream = rng.normal(size=(3, 1))
    out = layer(W=Wv, c=cv, x=v["x"])
    h = np.tanh(Wv @ v["x"] + cv)
    np.testing.assert_allclose(out[:, 0], h)
    grads = layer.vjp(upstream, W=Wv, c=cv, x=v["x"])
    delta = upstream[:, 0] * (1 - h**2)
    np.testing.assert_allclose(grads["W"], np.outer(delta, v["x"]))
    np.testing.assert_allclose(grads["c"], delta)
    np.testing.assert_allclose(grads["x"], Wv.T @ delta)


def test_vjp_upstream_shape_is_checked():
    W = sg.matrix("W", 3, N)
    layer = sg.compile(sg.tanh(W @ x), [W])
    with pytest.raises(ValueError, match="upstream"):
        layer.vjp(np.ones((4, 1)), W=np.ones((3, N)), x=v["x"])


# ------------------------------------------------------------------------------------------
# Numerical stability: finite and correct at |z| = 1000
# ------------------------------------------------------------------------------------------
z = sg.vector("z", 4)
big = np.array([-1000.0, -30.0, 30.0, 1000.0])


def test_softplus_and_logsigmoid_are_stable_in_both_passes():
    for builder, value, derivative in [
        (sg.softplus, np.logaddexp(0, big), expit(big)),
        (sg.logsigmoid, -np.logaddexp(0, -big), expit(-big)),
    ]:
        f = sg.compile(sg.sum(builder(z)), [z])
        total, grads = f.value_and_grad(z=big)
        assert np.isfinite(total) and total == pytest.approx(value.sum(), rel=1e-14)
        np.testing.assert_allclose(grads["z"], derivative, rtol=1e-14, atol=0)


def test_log_of_sigmoid_written_the_textbook_way_is_stable():
    f = sg.compile(sg.sum(sg.log(sg.sigmoid(z)) + sg.log(sp.OneMatrix(4, 1) - sg.sigmoid(z))),
                   [z])
    total, grads = f.value_and_grad(z=big)
    expected = -np.logaddexp(0, -big) - np.logaddexp(0, big)
    assert total == pytest.approx(expected.sum(), rel=1e-14)
    np.testing.assert_allclose(grads["z"], 1 - 2 * expit(big), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_logsumexp_and_softmax_are_stable(axis):
    Z = sg.matrix("Z", 2, 3)
    Zv = np.array([[1000.0, -1000.0, 3.0], [999.0, 0.0, -2.0]])
    reduced = sg.logsumexp(Z, axis)
    expr = reduced if axis is None else sg.sum(reduced)
    f = sg.compile(expr, [Z])
    total, grads = f.value_and_grad(Z=Zv)
    shift = Zv.max() if axis is None else Zv.max(axis=axis, keepdims=True)
    lse = shift + np.log(np.sum(np.exp(Zv - shift), axis=axis, keepdims=True))
    assert total == pytest.approx(np.sum(lse), rel=1e-14)
    np.testing.assert_allclose(grads["Z"], np.exp(Zv - lse), rtol=1e-13, atol=1e-300)
    weights = sg.matrix("G", 2, 3)
    g = sg.compile(sg.sum(sg.hadamard(weights, sg.softmax(Z, axis))), [Z])
    Gv = rng.normal(size=(2, 3))
    value, grads = g.value_and_grad(Z=Zv, G=Gv)
    P = np.exp(Zv - lse)
    assert value == pytest.approx(np.sum(Gv * P), rel=1e-13)
    total_weight = np.sum(Gv * P, axis=axis, keepdims=True)
    np.testing.assert_allclose(grads["Z"], P * (Gv - total_weight), rtol=1e-12, atol=1e-300)


def test_cross_entropies_are_stable_at_large_logits():
    labels = sg.vector("t", 4)
    bce = sg.compile(sg.sum(sg.binary_cross_entropy_with_logits(z, labels)), [z])
    tv = np.array([1.0, 0.0, 1.0, 0.0])
    total, grads = bce.value_and_grad(z=big, t=tv)
    expected = tv * np.logaddexp(0, -big) + (1 - tv) * np.logaddexp(0, big)
    assert np.isfinite(total) and total == pytest.approx(expected.sum(), rel=1e-14)
    np.testing.assert_allclose(grads["z"], expit(big) - tv, atol=1e-15)
    Z, Y = sg.matrix("Z", 3, 2), sg.matrix("Y", 3, 2)
    ce = sg.compile(sg.softmax_cross_entropy(Z, Y, axis=0), [Z])
    Zv = np.array([[1000.0, -1000.0], [0.0, 5.0], [-1000.0, 1000.0]])
    Yv = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    total, grads = ce.value_and_grad(Z=Zv, Y=Yv)
    assert total == pytest.approx(1000.0 + 2000.0, rel=1e-14)
    assert np.all(np.isfinite(grads["Z"]))


def test_map_operands_broadcast_columns_rows_and_scalars():
    col, row = sg.vector("c", 3), sg.matrix("r", 1, 4)
    s = sp.Symbol("s")
    expr = sg.sum(sg.hadamard(sg.broadcast(col, (3, 4)), sg.broadcast(row, (3, 4)))
                  + sg.broadcast(s, (3, 4)))
    f = sg.compile(expr, [col, row, s])
    cv, rv = rng.normal(size=3), rng.normal(size=4)
    value, grads = f.value_and_grad(c=cv, r=rv, s=2.0)
    assert value == pytest.approx(np.sum(np.outer(cv, rv)) + 24.0)
    np.testing.assert_allclose(grads["c"], np.full(3, rv.sum()))
    np.testing.assert_allclose(grads["r"], np.full(4, cv.sum()))
    assert grads["s"] == pytest.approx(12.0)


def test_elementwise_builders_accept_scalars_and_matrices():
    t = sp.Symbol("t")
    for name in ["sigmoid", "tanh", "relu", "exp", "log", "log1p", "softplus", "logsigmoid",
                 "sqrt", "square", "abs", "sin", "cos"]:
        builder = getattr(sg, name)
        assert not isinstance(builder(t), sp.MatrixBase)
        assert isinstance(builder(A), ops.Map) and builder(A).shape == A.shape
