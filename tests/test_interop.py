"""symgrad inside PyTorch (``f.to_torch()``) and JAX (``f.to_jax()``).

Gradients through the wrappers are compared with PyTorch's and JAX's own autodiff of the same
models written in those frameworks: a scalar loss (a two-layer softmax network), a
matrix-valued layer (a vjp), and an elementwise scalar model whose inputs broadcast.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symgrad as sg

torch = pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# ------------------------------------------------------------------------------------------
# models and data
# ------------------------------------------------------------------------------------------
N_X, N_H, N_Y = 5, 4, 3
_m = sp.Symbol("m", integer=True, positive=True)
_X, _Y = sg.matrix("X", N_X, _m), sg.matrix("Y", N_Y, _m)
_W1, _b1 = sg.matrix("W1", N_H, N_X), sg.vector("b1", N_H)
_W2, _b2 = sg.matrix("W2", N_Y, N_H), sg.vector("b2", N_Y)
_A1 = sg.tanh(_W1 @ _X + sg.broadcast(_b1, (N_H, _m)))
_Z2 = _W2 @ _A1 + sg.broadcast(_b2, (N_Y, _m))
NET = sg.compile(sg.softmax_cross_entropy(_Z2, _Y, axis=0) / _m, [_W1, _b1, _W2, _b2],
                 name="interop_net")
LAYER = sg.compile(sg.sigmoid(_W1 @ _X + sg.broadcast(_b1, (N_H, _m))), [_W1, _b1],
                   name="interop_layer")
_w, _x, _y = sp.symbols("w x y")
ELEMENTWISE = sg.compile((_w * _x - _y) ** 2 + sg.sin(_w), [_w, _x], name="interop_elementwise")


def net_inputs(seed=0, m=7):
    rng = np.random.default_rng(seed)
    return {"W1": rng.normal(size=(N_H, N_X)), "b1": rng.normal(size=N_H),
            "W2": rng.normal(size=(N_Y, N_H)), "b2": rng.normal(size=N_Y),
            "X": rng.normal(size=(N_X, m)), "Y": np.eye(N_Y)[:, rng.integers(0, N_Y, m)]}


def layer_inputs(seed=1, m=6):
    rng = np.random.default_rng(seed)
    return {"W1": rng.normal(size=(N_H, N_X)), "b1": rng.normal(size=N_H),
            "X": rng.normal(size=(N_X, m))}


def net_in(xp, nn_log_softmax, W1, b1, W2, b2, X, Y):
    """The network in PyTorch or JAX (the framework's own autodiff is the reference)."""
    A1 = xp.tanh(W1 @ X + b1[:, None])
    Z2 = W2 @ A1 + b2[:, None]
    return -(Y * nn_log_softmax(Z2)).sum() / X.shape[1]


def layer_in(xp, sigmoid, W1, b1, X):
    return sigmoid(W1 @ X + b1[:, None])


def tensors(inputs, grad=(), dtype=None):
    dtype = dtype or torch.float64
    return {k: torch.tensor(v, dtype=dtype, requires_grad=k in grad) for k, v in inputs.items()}


PARAMS = ("W1", "b1", "W2", "b2")


# ------------------------------------------------------------------------------------------
# PyTorch
# ------------------------------------------------------------------------------------------
def torch_net(W1, b1, W2, b2, X, Y):
    return net_in(torch, lambda z: torch.log_softmax(z, dim=0), W1, b1, W2, b2, X, Y)


def test_to_torch_scalar_loss_gradients_equal_pytorch():
    inputs = net_inputs()
    ours, theirs = tensors(inputs, PARAMS), tensors(inputs, PARAMS)
    loss = NET.to_torch()(**ours)
    loss.backward()
    reference = torch_net(**theirs)
    reference.backward()
    assert loss.dtype == torch.float64 and loss.shape == ()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-13)
    for k in PARAMS:
        assert ours[k].grad.shape == ours[k].shape
        np.testing.assert_allclose(ours[k].grad, theirs[k].grad, rtol=1e-11, atol=1e-14)


def test_to_torch_layer_backward_is_the_vjp():
    inputs = layer_inputs()
    ours, theirs = tensors(inputs, ("W1", "b1")), tensors(inputs, ("W1", "b1"))
    upstream = torch.tensor(np.cos(np.arange(N_H * 6)).reshape(N_H, 6))
    out = LAYER.to_torch()(**ours)
    reference = layer_in(torch, torch.sigmoid, **theirs)
    np.testing.assert_allclose(out.detach(), reference.detach(), rtol=1e-14)
    (out * upstream).sum().backward()
    (reference * upstream).sum().backward()
    for k in ("W1", "b1"):
        np.testing.assert_allclose(ours[k].grad, theirs[k].grad, rtol=1e-12, atol=1e-15)
    expected = LAYER.vjp(upstream.numpy(), **inputs)
    np.testing.assert_array_equal(ours["W1"].grad.numpy(), expected["W1"])


def test_to_torch_scales_by_the_output_gradient_and_sums_broadcast_inputs():
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0.5], [2.0]], dtype=torch.float64)
    out = ELEMENTWISE.to_torch()(w=w, x=x, y=y)
    assert out.shape == (2, 5)
    weights = torch.arange(10, dtype=torch.float64).reshape(2, 5)
    (out * weights).sum().backward()
    w2, x2 = w.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    ((((w2 * x2 - y) ** 2 + torch.sin(w2))) * weights).sum().backward()
    assert w.grad.shape == () and x.grad.shape == (5,)
    np.testing.assert_allclose(w.grad, w2.grad, rtol=1e-13)
    np.testing.assert_allclose(x.grad, x2.grad, rtol=1e-13)


def test_to_torch_gradients_reach_only_inputs_that_ask():
    inputs = net_inputs()
    ours = tensors(inputs, ("W2",))
    NET.to_torch()(**ours).backward()
    assert ours["W2"].grad is not None
    assert all(ours[k].grad is None for k in ("W1", "b1", "b2"))
    with torch.no_grad():
        value = NET.to_torch()(**tensors(inputs, PARAMS))
    assert not value.requires_grad
    assert value.item() == pytest.approx(NET(**inputs), rel=1e-15)


def test_to_torch_refuses_gradient_of_a_data_input():
    with pytest.raises(ValueError, match=r"input 'X' requires grad.*parameters are W1, b1"):
        NET.to_torch()(**tensors(net_inputs(), ("W1", "X")))
    with torch.no_grad():      # nothing is differentiated: fine
        NET.to_torch()(**tensors(net_inputs(), ("W1", "X")))


def test_to_torch_float64_inputs_reach_the_kernel_without_copies(monkeypatch):
    # a fresh CompiledFunction of the same model, so that the spy stays in this test
    f = sg.compile(sg.softmax_cross_entropy(_Z2, _Y, axis=0) / _m, [_W1, _b1, _W2, _b2],
                   name="interop_net")
    seen = {}
    original = f.value_and_grad

    def spy(**arrays):
        seen.update(arrays)
        return original(**arrays)

    monkeypatch.setattr(f, "value_and_grad", spy)
    ours = tensors(net_inputs(), PARAMS)
    f.to_torch()(**ours).backward()
    for k, t in ours.items():
        assert isinstance(seen[k], np.ndarray)
        assert seen[k].ctypes.data == t.data_ptr(), f"{k} was copied"


def test_to_torch_float32_computes_in_float64_and_returns_float32():
    inputs = net_inputs()
    ours = tensors(inputs, PARAMS, dtype=torch.float32)
    loss = NET.to_torch()(**ours)
    loss.backward()
    assert loss.dtype == torch.float32
    assert all(ours[k].grad.dtype == torch.float32 for k in PARAMS)
    # the float64 answer for the float32-rounded inputs, rounded once at the end
    rounded = {k: v.astype(np.float32).astype(np.float64) for k, v in inputs.items()}
    value, grads = NET.value_and_grad(**rounded)
    assert loss.item() == np.float32(value)
    for k in PARAMS:
        np.testing.assert_array_equal(ours[k].grad.numpy(), grads[k].astype(np.float32))


def test_to_torch_refuses_other_devices_and_complex_tensors():
    tf = NET.to_torch()
    inputs = tensors(net_inputs())
    meta = dict(inputs, W2=torch.empty(N_Y, N_H, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match=r"input 'W2' is a tensor on meta; symgrad computes on "
                                         r"the CPU"):
        tf(**meta)
    complex_ = dict(inputs, b1=torch.zeros(N_H, dtype=torch.complex128))
    with pytest.raises(TypeError, match=r"input 'b1' is a torch.complex128 tensor"):
        tf(**complex_)
    with pytest.raises(TypeError, match=r"missing input 'Y'"):
        tf(**{k: v for k, v in inputs.items() if k != "Y"})
    with pytest.raises(TypeError, match=r"unknown input 'Z'"):
        tf(Z=inputs["X"], **inputs)


def test_to_torch_notices_an_input_changed_in_place_before_backward():
    inputs = tensors(layer_inputs(), ("W1",))
    out = LAYER.to_torch()(**inputs)
    with torch.no_grad():
        inputs["W1"].add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_to_torch_passes_gradcheck():
    inputs = net_inputs(seed=3, m=4)
    tf = NET.to_torch()
    data = {k: torch.tensor(inputs[k]) for k in ("X", "Y")}
    params = tuple(torch.tensor(inputs[k], requires_grad=True) for k in PARAMS)
    assert torch.autograd.gradcheck(
        lambda W1, b1, W2, b2: tf(W1=W1, b1=b1, W2=W2, b2=b2, **data), params)
    layer = LAYER.to_torch()
    X = torch.tensor(layer_inputs()["X"])
    lp = tuple(torch.tensor(layer_inputs()[k], requires_grad=True) for k in ("W1", "b1"))
    assert torch.autograd.gradcheck(lambda W1, b1: layer(W1=W1, b1=b1, X=X), lp)


def test_to_torch_layer_has_first_derivatives_only():
    inputs = tensors(layer_inputs(), ("W1",))
    # squared: the gradient reaching the layer depends on W1, so a second pass would need
    # the layer's second derivative (a matrix output: symgrad has its vjp only)
    out = (LAYER.to_torch()(**inputs) ** 2).sum()
    (g,) = torch.autograd.grad(out, inputs["W1"], create_graph=True)
    with pytest.raises(NotImplementedError, match="interop_layer has a matrix output and "
                                                  "first derivatives only"):
        g.sum().backward()


def test_to_torch_retain_graph_twice_accumulates_correctly():
    inputs = tensors(net_inputs(), PARAMS)
    loss = NET.to_torch()(**inputs)
    for _ in range(3):
        loss.backward(retain_graph=True)
    grads = NET.grad(**net_inputs())
    for k in PARAMS:
        np.testing.assert_allclose(inputs[k].grad.numpy(), 3 * grads[k], rtol=1e-14)


def test_adam_trajectory_through_to_torch_matches_pytorch():
    inputs = net_inputs(seed=5, m=16)
    ours, theirs = tensors(inputs, PARAMS), tensors(inputs, PARAMS)
    tf = NET.to_torch()
    opt_ours = torch.optim.Adam([ours[k] for k in PARAMS], lr=0.05)
    opt_theirs = torch.optim.Adam([theirs[k] for k in PARAMS], lr=0.05)
    losses = []
    for _ in range(50):
        for opt, loss_fn, t in ((opt_ours, tf, ours), (opt_theirs, torch_net, theirs)):
            opt.zero_grad()
            loss = loss_fn(**t)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    ours_l, theirs_l = losses[0::2], losses[1::2]
    assert theirs_l[-1] < 0.5 * theirs_l[0]          # it trained
    np.testing.assert_allclose(ours_l, theirs_l, rtol=1e-10)
    for k in PARAMS:
        np.testing.assert_allclose(ours[k].detach(), theirs[k].detach(), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------
# JAX
# ------------------------------------------------------------------------------------------
def jax_net(jax):
    return lambda W1, b1, W2, b2, X, Y: net_in(
        jax.numpy, lambda z: jax.nn.log_softmax(z, axis=0), W1, b1, W2, b2, X, Y)


def test_to_jax_scalar_loss_under_jit_and_grad_equals_jax(jax):
    jnp = jax.numpy
    jf = NET.to_jax()
    inputs = {k: jnp.asarray(v) for k, v in net_inputs().items()}
    ours = jax.jit(jax.value_and_grad(
        lambda W1, b1, W2, b2, X, Y: jf(W1=W1, b1=b1, W2=W2, b2=b2, X=X, Y=Y),
        argnums=(0, 1, 2, 3)))
    theirs = jax.jit(jax.value_and_grad(jax_net(jax), argnums=(0, 1, 2, 3)))
    args = [inputs[k] for k in (*PARAMS, "X", "Y")]
    (v1, g1), (v2, g2) = ours(*args), theirs(*args)
    assert v1.dtype == jnp.float64 and float(v1) == pytest.approx(float(v2), rel=1e-13)
    for a, b, k in zip(g1, g2, PARAMS, strict=True):
        assert a.shape == inputs[k].shape
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    # and without jit, and the plain value
    np.testing.assert_allclose(jax.grad(lambda W2: jf(**dict(inputs, W2=W2)))(inputs["W2"]),
                               g2[2], rtol=1e-11, atol=1e-14)
    assert float(jf(**inputs)) == pytest.approx(NET(**net_inputs()), rel=1e-15)


def test_to_jax_layer_backward_is_the_vjp(jax):
    jnp = jax.numpy
    jl = LAYER.to_jax()
    inputs = {k: jnp.asarray(v) for k, v in layer_inputs().items()}
    upstream = jnp.asarray(np.cos(np.arange(N_H * 6)).reshape(N_H, 6))

    def ours(W1, b1):
        return jl(W1=W1, b1=b1, X=inputs["X"])

    def theirs(W1, b1):
        return layer_in(jnp, jax.nn.sigmoid, W1, b1, inputs["X"])

    out1, vjp1 = jax.vjp(jax.jit(ours), inputs["W1"], inputs["b1"])
    out2, vjp2 = jax.vjp(theirs, inputs["W1"], inputs["b1"])
    np.testing.assert_allclose(out1, out2, rtol=1e-14)
    for a, b in zip(vjp1(upstream), vjp2(upstream), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    # a loss built on the layer, differentiated under jit
    g1 = jax.jit(jax.grad(lambda W1: (ours(W1, inputs["b1"]) ** 2).sum()))(inputs["W1"])
    g2 = jax.grad(lambda W1: (theirs(W1, inputs["b1"]) ** 2).sum())(inputs["W1"])
    np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-15)


def test_to_jax_elementwise_model_broadcasts(jax):
    jnp = jax.numpy
    jf = ELEMENTWISE.to_jax()
    y = jnp.asarray([[0.5], [2.0]])
    weights = jnp.arange(10.0).reshape(2, 5)

    def ours(w, x):
        return (jf(w=w, x=x, y=y) * weights).sum()

    def theirs(w, x):
        return (((w * x - y) ** 2 + jnp.sin(w)) * weights).sum()

    w, x = jnp.asarray(0.7), jnp.linspace(-1, 1, 5)
    for a, b in zip(jax.jit(jax.grad(ours, argnums=(0, 1)))(w, x),
                    jax.grad(theirs, argnums=(0, 1))(w, x), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-13)


def test_to_jax_refuses_gradient_of_a_data_input(jax):
    jf = NET.to_jax()
    inputs = {k: jax.numpy.asarray(v) for k, v in net_inputs().items()}
    with pytest.raises(ValueError, match=r"input 'X' is differentiated.*parameters are W1"):
        jax.grad(lambda X: jf(**dict(inputs, X=X)))(inputs["X"])


def test_to_jax_float32_inputs(jax):
    jnp = jax.numpy
    jf = NET.to_jax()
    inputs = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in net_inputs().items()}
    value, g = jax.value_and_grad(lambda W1: jf(**dict(inputs, W1=W1)))(inputs["W1"])
    assert value.dtype == jnp.float32 and g.dtype == jnp.float32
    rounded = {k: np.asarray(v, dtype=np.float64) for k, v in inputs.items()}
    expected_value, expected = NET.value_and_grad(**rounded)
    assert float(value) == np.float32(expected_value)
    np.testing.assert_array_equal(np.asarray(g), expected["W1"].astype(np.float32))


def test_to_jax_needs_x64_and_names_its_inputs(jax):
    jax.config.update("jax_enable_x64", False)
    with pytest.raises(RuntimeError, match="jax_enable_x64"):
        NET.to_jax()
    jax.config.update("jax_enable_x64", True)
    jf = NET.to_jax()
    inputs = {k: jax.numpy.asarray(v) for k, v in net_inputs().items()}
    with pytest.raises(TypeError, match=r"missing input 'b2'"):
        jf(**{k: v for k, v in inputs.items() if k != "b2"})
    with pytest.raises(TypeError, match=r"input 'b1' is a complex128 array"):
        jf(**dict(inputs, b1=inputs["b1"] + 0j))


# ------------------------------------------------------------------------------------------
# the training example
# ------------------------------------------------------------------------------------------
def test_training_example_runs_on_a_small_subset(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLES / "train_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    plot = tmp_path / "curves.png"
    results = module.main(["--subset", "400", "--epochs", "3", "--plot", str(plot)])
    assert torch.get_num_threads() == threads        # the example puts them back
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "| symgrad via to_torch, Adam |" in out and "test accuracy" in out
    assert results["gap_adam"] < 1e-9 and results["gap_gd"] < 1e-9
    for label in ("symgrad, gradient descent", "symgrad via to_torch, Adam"):
        losses = results[label]["losses"]
        assert losses[-1] < losses[0]
        assert results[label]["accuracy"] > 0.5       # 10 classes: chance is 0.1


def test_to_jax_custom_call_agrees_with_the_python_callback(jax):
    """Matrix models run as XLA custom calls; the Python callback (the path of elementwise
    models) gives the same numbers, for any batch size and vectors given as columns."""
    from symgrad.interop import xla

    assert xla.supports(NET) and xla.supports(LAYER) and not xla.supports(ELEMENTWISE)
    jnp = jax.numpy

    def run(custom_calls):
        jf, jl = NET.to_jax(), LAYER.to_jax()
        jf._custom_calls = jl._custom_calls = custom_calls
        out = []
        for m in (7, 3):
            inputs = {k: jnp.asarray(v) for k, v in net_inputs(seed=m, m=m).items()}
            inputs["b1"] = inputs["b1"].reshape(-1, 1)          # a column, not 1-D
            out.append(jax.jit(jax.value_and_grad(
                lambda p, inputs=inputs: jf(**dict(inputs, **p))))(
                    {k: inputs[k] for k in PARAMS}))
            layer = {k: inputs[k] for k in ("W1", "b1", "X")}
            value, vjp = jax.vjp(lambda W1, b1, layer=layer: jl(**dict(layer, W1=W1, b1=b1)),
                                 layer["W1"], layer["b1"])
            out.append((value, vjp(jnp.cos(value))))
        return out

    native, callback = run(True), run(False)
    for a, b in zip(jax.tree_util.tree_leaves(native), jax.tree_util.tree_leaves(callback),
                    strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert native[0][1]["b1"].shape == (N_H, 1)


def test_to_jax_checks_shapes_when_tracing_in_the_compiled_functions_words(jax):
    # the extent given, then the one expected (and where a dimension was read): the words of
    # the compiled function's own check, for a fixed extent, a transposed matrix and a
    # symbolic one
    jf = NET.to_jax()
    inputs = net_inputs()
    for name, wrong, message in [
            ("W2", np.zeros((N_Y, N_X)), r"input 'W2' has 5 columns \(shape \(3, 5\)\), but "
                                         r"expected 4"),
            ("W1", np.zeros((N_X, N_H)), r"input 'W1' has 5 rows \(shape \(5, 4\)\), but "
                                         r"expected 4"),
            ("Y", inputs["Y"][:, :6], r"input 'Y' has 6 columns \(shape \(3, 6\)\), but "
                                      r"expected m \(m = 7 from 'X'\)")]:
        given = dict(inputs, **{name: wrong})
        with pytest.raises(ValueError, match=message):
            NET(**given)
        with pytest.raises(ValueError, match=message):
            jax.jit(lambda a, g=given, n=name: jf(**dict(g, **{n: a})))(jax.numpy.asarray(wrong))


def test_the_readme_example_runs(jax):
    """The README's example of to_torch and to_jax runs as written and trains."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Inside PyTorch and JAX"):
                     readme.index("## What a model may contain")]
    namespace: dict = {}
    exec(compile("\n".join(re.findall(r"```python\n(.*?)```", section, re.S)), "README.md",
                 "exec"), namespace)
    start = namespace["f"](W=np.zeros((3, 4)), b=np.zeros(3), X=namespace["X0"].numpy(),
                           Y=namespace["Y0"].numpy())
    assert float(namespace["loss"]) < start            # Adam moved the parameters downhill
    expected = namespace["f"].grad(W=namespace["W0"].detach().numpy(),
                                   b=namespace["b0"].detach().numpy(),
                                   X=namespace["X0"].numpy(), Y=namespace["Y0"].numpy())
    np.testing.assert_allclose(namespace["dW"], expected["W"], rtol=1e-12, atol=1e-15)
    hessian = namespace["f"].hessian(W=namespace["W0"].detach().numpy(),
                                     b=namespace["b0"].detach().numpy(),
                                     X=namespace["X0"].numpy(), Y=namespace["Y0"].numpy())
    for name in ("H_jax", "H_torch"):
        np.testing.assert_allclose(np.asarray(namespace[name]), hessian[("b", "b")],
                                   rtol=1e-10, atol=1e-15)


def test_scalar_inputs_and_free_dimensions_in_both_frameworks(jax):
    """A scalar input beside a matrix (lam) and a dimension no input fixes (m): JAX takes
    the Python callback for them, PyTorch passes them through."""
    lam = sp.Symbol("lam")
    W, x = sg.matrix("W", 3, 4), sg.vector("x", 4)
    f = sg.compile(lam * sg.sum(sg.hadamard(W, W)) + sg.sum(sg.tanh(W @ x)), [W, lam],
                   name="interop_penalty")
    W0, x0 = np.random.default_rng(2).normal(size=(3, 4)), np.linspace(-1, 1, 4)
    value, grads = f.value_and_grad(W=W0, lam=0.3, x=x0)
    Wt = torch.tensor(W0, requires_grad=True)
    lt = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    out = f.to_torch()(W=Wt, lam=lt, x=torch.tensor(x0))
    out.backward()
    assert out.item() == value
    np.testing.assert_array_equal(Wt.grad.numpy(), grads["W"])
    assert lt.grad.item() == grads["lam"]
    jf = f.to_jax()
    jv, (jW, jl) = jax.jit(jax.value_and_grad(lambda W, lam: jf(W=W, lam=lam, x=x0),
                                              argnums=(0, 1)))(W0, 0.3)
    assert float(jv) == value and float(jl) == grads["lam"]
    np.testing.assert_array_equal(np.asarray(jW), grads["W"])

    m = sp.Symbol("m", integer=True, positive=True)
    u = sg.vector("u", 3)
    h = sg.compile(sg.sum(sg.tanh(u.T @ sp.OneMatrix(3, m))), [u], name="interop_free")
    u0 = np.array([0.1, -0.2, 0.3])
    value, grads = h.value_and_grad(u=u0, m=4)
    ut = torch.tensor(u0, requires_grad=True)
    out = h.to_torch()(u=ut, m=4)
    out.backward()
    assert out.item() == value
    np.testing.assert_array_equal(ut.grad.numpy(), grads["u"])
    hj = h.to_jax()
    jv, jg = jax.jit(jax.value_and_grad(lambda u: hj(u=u, m=4)))(u0)
    assert float(jv) == value
    np.testing.assert_array_equal(np.asarray(jg), grads["u"])
    with pytest.raises(TypeError, match="dimension 'm' must be a Python int"):
        hj(u=u0, m=4.0)


def test_an_error_in_the_kernel_is_an_error_in_both_frameworks(jax):
    A, x = sg.matrix("A", 2, 2), sg.vector("x", 2)
    f = sg.compile(sg.sum(sg.inv(A) @ x), [A], name="interop_inverse")
    singular = np.ones((2, 2))
    with pytest.raises(np.linalg.LinAlgError):
        f.to_torch()(A=torch.tensor(singular, requires_grad=True), x=torch.ones(2))
    jf = f.to_jax()
    step = jax.jit(jax.value_and_grad(lambda A: jf(A=A, x=np.ones(2))))
    assert float(step(np.eye(2))[0]) == 2.0
    with pytest.raises(Exception, match="value_and_grad kernel of interop_inverse raised an "
                                        "error"):       # XLA's own error type
        step(singular)
