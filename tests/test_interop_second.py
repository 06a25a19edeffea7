"""Second derivatives through ``f.to_jax()`` and ``f.to_torch()``.

For a scalar output the wrappers differentiate twice with symgrad's own second order (the
gradient's derivative is ``f.hvp``): ``jax.hessian``, ``jax.grad(jax.grad(...))``,
``jax.jacfwd(jax.grad(...))`` under ``jax.jit`` or not, and in PyTorch a backward pass with
``create_graph=True`` followed by another (``torch.autograd.functional.hessian`` and
``hvp``).  The Hessians are compared with closed forms, with symgrad's ``f.hessian`` and with
each framework's autodiff of the same model written in it.  A third derivative, and a second
derivative of a model with a matrix output, raise symgrad's ``NotImplementedError``.
"""

import numpy as np
import pytest
import sympy as sp

import symgrad as sg

RTOL = 1e-10
THIRD = "a third derivative is not supported"
MATRIX_OUTPUT = "second derivatives of a model with a vector or matrix output are not supported"

# ------------------------------------------------------------------------------------------
# models (each compiled once for the module) and data
# ------------------------------------------------------------------------------------------
_x, _y = sp.symbols("x y", real=True)
_W, _v, _c = sg.matrix("W", 3, 4), sg.vector("v", 4), sg.vector("c", 3)
_lam = sp.Symbol("lam")


@pytest.fixture(scope="module")
def scalar_model():
    """The report's example: scalar inputs, so also elementwise over arrays."""
    return sg.compile(sp.sin(_x) * _y**2 + _x * _y, [_x, _y], name="second_scalar")


@pytest.fixture(scope="module")
def matrix_model():
    """A matrix and a vector parameter and a data vector c: XLA custom calls in JAX."""
    return sg.compile(sg.sum(sg.hadamard(_c, sg.tanh(_W @ _v))) + sg.dot(_v, _v) ** 2 / 4,
                      [_W, _v], name="second_matrix")


@pytest.fixture(scope="module")
def penalty_model():
    """A scalar parameter beside a matrix (JAX's Python-callback path)."""
    return sg.compile(_lam * sg.sum(sg.hadamard(_W, _W)) + sg.sum(sg.tanh(_W @ _v)),
                      [_W, _lam], name="second_penalty")


@pytest.fixture(scope="module")
def layer_model():
    """A matrix output: first derivatives only (f.vjp)."""
    return sg.compile(sg.tanh(_W @ _v), [_W], name="second_layer")


def closed_hessian(x, y):
    """d²/d(x, y)² of sin(x) y² + x y."""
    cross = 2 * y * np.cos(x) + 1
    return np.array([[-np.sin(x) * y**2, cross], [cross, 2 * np.sin(x)]])


def matrix_data(seed=0):
    rng = np.random.default_rng(seed)
    return {"W": rng.normal(size=(3, 4)), "v": rng.normal(size=4), "c": rng.normal(size=3)}


def matrix_in(xp, W, v, c):
    return (c * xp.tanh(W @ v)).sum() + (v @ v) ** 2 / 4


def penalty_in(xp, W, lam, v):
    return lam * (W * W).sum() + xp.tanh(W @ v).sum()


def assert_blocks(ours, expected, names):
    """``ours[i][j]`` (a framework's nested Hessian) against ``expected[(p, q)]``."""
    for i, p in enumerate(names):
        for j, q in enumerate(names):
            reference = np.asarray(expected[(p, q)] if isinstance(expected, dict)
                                   else expected[i][j])
            block = np.asarray(ours[i][j])
            assert block.shape == reference.shape, (p, q)
            np.testing.assert_allclose(block, reference, rtol=RTOL, atol=1e-13,
                                       err_msg=f"block ({p}, {q})")


# ------------------------------------------------------------------------------------------
# JAX
# ------------------------------------------------------------------------------------------
def test_jax_hessian_of_a_scalar_model_every_way(jax, scalar_model):
    jnp = jax.numpy
    jf = scalar_model.to_jax()

    def ours(x, y):
        return jf(x=x, y=y)

    def theirs(x, y):
        return jnp.sin(x) * y**2 + x * y

    x, y = 1.0, 2.0
    closed = closed_hessian(x, y)
    symgrad = scalar_model.hessian(x=x, y=y)
    both = (0, 1)
    ways = (lambda g: jax.hessian(g, both),
            lambda g: jax.jacfwd(jax.grad(g, both), both),
            lambda g: jax.jacrev(jax.grad(g, both), both))
    results = [(jax.hessian(ours, both)(x, y), ways[0])]          # not jitted
    results += [(jax.jit(make(ours))(x, y), make) for make in ways]
    for hessian, make in results:
        assert_blocks(hessian, closed, "xy")
        assert_blocks(hessian, symgrad, "xy")
        assert_blocks(hessian, jax.jit(make(theirs))(x, y), "xy")
    # reverse over reverse, one entry at a time
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
        entry = jax.grad(lambda x, y, j=j: jax.grad(ours, j)(x, y), i)
        np.testing.assert_allclose(jax.jit(entry)(x, y), closed[j, i], rtol=RTOL)
    np.testing.assert_allclose(jax.grad(jax.grad(ours))(x, y), closed[0, 0], rtol=RTOL)


def test_jax_hessian_of_a_scalar_model_over_arrays(jax, scalar_model):
    """Elementwise: per-point gradients, broadcast inputs, and jax.vmap of jax.hessian."""
    jnp = jax.numpy
    jf = scalar_model.to_jax()
    xs, y = jnp.linspace(-1.0, 2.0, 5), 0.7

    def ours(x, y):
        return (jf(x=x, y=y) * jnp.arange(1.0, 6.0)).sum()

    def theirs(x, y):
        return ((jnp.sin(x) * y**2 + x * y) * jnp.arange(1.0, 6.0)).sum()

    assert_blocks(jax.jit(jax.hessian(ours, (0, 1)))(xs, y),
                  jax.jit(jax.hessian(theirs, (0, 1)))(xs, y), "xy")
    ys = jnp.linspace(0.5, 1.5, 5)
    per_point = jax.jit(jax.vmap(jax.hessian(lambda x, y: jf(x=x, y=y), (0, 1))))(xs, ys)
    expected = scalar_model.hessian(x=np.asarray(xs), y=np.asarray(ys))
    assert_blocks(per_point, expected, "xy")
    np.testing.assert_allclose(per_point[0][1], [closed_hessian(a, b)[0, 1]
                                                 for a, b in zip(xs, ys)], rtol=RTOL)


def test_jax_second_order_of_a_matrix_model_under_jit(jax, matrix_model):
    from symgrad.interop import xla

    assert xla.supports(matrix_model)        # the first-order passes are XLA custom calls
    jnp = jax.numpy
    jf = matrix_model.to_jax()
    data = matrix_data()
    W, v, c = (jnp.asarray(data[k]) for k in "Wvc")

    def ours(W, v):
        return jf(W=W, v=v, c=c)

    def theirs(W, v):
        return matrix_in(jnp, W, v, c)

    expected = matrix_model.hessian(**data)
    reference = jax.jit(jax.hessian(theirs, (0, 1)))(W, v)
    for hessian in (jax.jit(jax.hessian(ours, (0, 1)))(W, v),
                    jax.jit(jax.jacfwd(jax.grad(ours, (0, 1)), (0, 1)))(W, v)):
        assert hessian[0][0].shape == (3, 4, 3, 4) and hessian[1][0].shape == (4, 3, 4)
        assert_blocks(hessian, expected, "Wv")
        assert_blocks(hessian, reference, "Wv")

    # a gradient penalty: reverse over reverse, under jit
    def penalty(loss):
        return jax.jit(jax.grad(lambda W, v: sum(
            (g**2).sum() for g in jax.grad(loss, (0, 1))(W, v)), (0, 1)))

    for a, b in zip(penalty(ours)(W, v), penalty(theirs)(W, v), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-13)
    # a Hessian-vector product as JAX writes it (forward over reverse)
    tW, tv = jnp.cos(jnp.arange(12.0)).reshape(3, 4), jnp.sin(jnp.arange(4.0))
    products = jax.jvp(jax.grad(ours, (0, 1)), (W, v), (tW, tv))[1]     # not jitted
    symgrad = matrix_model.hvp({"W": np.asarray(tW), "v": np.asarray(tv)}, **data)
    np.testing.assert_allclose(products[0], symgrad["W"], rtol=RTOL, atol=1e-13)
    np.testing.assert_allclose(products[1], symgrad["v"], rtol=RTOL, atol=1e-13)


def test_jax_second_order_with_a_scalar_input_beside_a_matrix(jax, penalty_model):
    """The Python-callback path (a scalar input), and differentiating with respect to one
    parameter only."""
    jnp = jax.numpy
    jf = penalty_model.to_jax()
    data = matrix_data(1)
    W, v = jnp.asarray(data["W"]), jnp.asarray(data["v"])

    def ours(W, lam):
        return jf(W=W, lam=lam, v=v)

    def theirs(W, lam):
        return penalty_in(jnp, W, lam, v)

    hessian = jax.jit(jax.hessian(ours, (0, 1)))(W, 0.3)
    assert_blocks(hessian, jax.jit(jax.hessian(theirs, (0, 1)))(W, 0.3), ["W", "lam"])
    assert_blocks(hessian, penalty_model.hessian(W=data["W"], lam=0.3, v=data["v"]),
                  ["W", "lam"])
    mixed = jax.grad(lambda W, lam: jax.grad(ours, 1)(W, lam))(W, 0.3)    # not jitted
    np.testing.assert_allclose(mixed, 2 * data["W"], rtol=RTOL)


def test_jax_first_order_stays_one_host_call(jax, matrix_model, scalar_model, monkeypatch):
    """value and gradient: one custom call of the value_and_grad kernel, nothing else."""
    jf = matrix_model.to_jax()
    data = matrix_data()
    step = jax.jit(jax.value_and_grad(lambda W, v: jf(W=W, v=v, c=data["c"]), (0, 1)))
    text = step.lower(data["W"], data["v"]).compile().as_text()
    calls = [line for line in text.splitlines() if "custom_call_target=" in line]
    assert len(calls) == 1 and "value_and_grad" in calls[0]
    # the callback path: one f.value_and_grad, no f.forward
    f = sg.compile(sp.sin(_x) * _y**2 + _x * _y, [_x, _y], name="second_scalar")
    counts = {"value_and_grad": 0, "forward": 0}

    def spy(name):
        original = getattr(f, name)

        def counted(**inputs):
            counts[name] += 1
            return original(**inputs)
        return counted

    for name in counts:
        monkeypatch.setattr(f, name, spy(name))
    value, grads = jax.value_and_grad(lambda x, y: f.to_jax()(x=x, y=y), (0, 1))(1.0, 2.0)
    assert counts == {"value_and_grad": 1, "forward": 0}
    assert float(value) == scalar_model(x=1.0, y=2.0)


def test_jax_forward_mode_first_order(jax, scalar_model):
    """A scalar model's JAX function is a custom_jvp: jax.jvp works (it did not as a
    custom_vjp)."""
    jf = scalar_model.to_jax()
    value, tangent = jax.jvp(lambda x, y: jf(x=x, y=y), (1.0, 2.0), (0.5, -1.0))
    grads = scalar_model.grad(x=1.0, y=2.0)
    assert float(value) == scalar_model(x=1.0, y=2.0)
    np.testing.assert_allclose(tangent, 0.5 * grads["x"] - grads["y"], rtol=1e-14)


def test_jax_third_derivatives_raise_symgrads_error(jax, scalar_model, matrix_model):
    jf = scalar_model.to_jax()

    def g(x, y):
        return jf(x=x, y=y)

    for third in (jax.grad(jax.grad(jax.grad(g))), jax.jacfwd(jax.hessian(g)),
                  jax.jit(jax.hessian(jax.grad(g))), jax.jacrev(jax.hessian(g))):
        with pytest.raises(NotImplementedError, match=f"second_scalar has first and second "
                                                      f"derivatives.*{THIRD}"):
            third(1.0, 2.0)
    jm = matrix_model.to_jax()
    data = matrix_data()
    with pytest.raises(NotImplementedError, match=THIRD):
        jax.jacfwd(jax.hessian(lambda v: jm(W=data["W"], v=v, c=data["c"])))(data["v"])


def test_jax_second_order_of_a_matrix_output_raises_symgrads_error(jax, layer_model):
    jl = layer_model.to_jax()
    data = matrix_data()

    def loss(W):
        return (jl(W=W, v=data["v"]) ** 2).sum()

    assert jax.grad(loss)(data["W"]).shape == (3, 4)       # first order works
    for second in (jax.hessian(loss), jax.jit(jax.hessian(loss)),
                   jax.grad(lambda W: jax.grad(loss)(W).sum())):
        with pytest.raises(NotImplementedError, match=f"second_layer has a matrix output.*"
                                                      f"{MATRIX_OUTPUT}"):
            second(data["W"])


def test_jax_second_order_in_a_data_input_raises(jax, matrix_model):
    jf = matrix_model.to_jax()
    data = matrix_data()
    with pytest.raises(ValueError, match=r"input 'c' is differentiated.*parameters are W, v"):
        jax.jacfwd(lambda c: jax.grad(lambda W: jf(W=W, v=data["v"], c=c))(data["W"]))(
            data["c"])


# ------------------------------------------------------------------------------------------
# PyTorch
# ------------------------------------------------------------------------------------------
@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def test_torch_hessian_of_a_scalar_model(torch, scalar_model):
    tf = scalar_model.to_torch()
    x = torch.tensor(1.0, dtype=torch.float64)
    y = torch.tensor(2.0, dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(lambda x, y: tf(x=x, y=y), (x, y))
    assert_blocks(hessian, closed_hessian(1.0, 2.0), "xy")
    assert_blocks(hessian, scalar_model.hessian(x=1.0, y=2.0), "xy")
    reference = torch.autograd.functional.hessian(
        lambda x, y: torch.sin(x) * y**2 + x * y, (x, y))
    assert_blocks(hessian, reference, "xy")
    # over arrays (per-point gradients summed to each input's shape)
    xs = torch.linspace(-1.0, 2.0, 5, dtype=torch.float64)
    weights = torch.arange(1.0, 6.0, dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(lambda x, y: (tf(x=x, y=y) * weights).sum(),
                                                (xs, y))
    reference = torch.autograd.functional.hessian(
        lambda x, y: ((torch.sin(x) * y**2 + x * y) * weights).sum(), (xs, y))
    assert_blocks(hessian, reference, "xy")


def test_torch_double_backward_of_a_matrix_model(torch, matrix_model):
    tf = matrix_model.to_torch()
    data = matrix_data()
    c = torch.tensor(data["c"])

    def ours(W, v):
        return tf(W=W, v=v, c=c)

    def theirs(W, v):
        return matrix_in(torch, W, v, c)

    # a gradient penalty: create_graph=True, then a second backward pass
    grads = {}
    for loss in (ours, theirs):
        W = torch.tensor(data["W"], requires_grad=True)
        v = torch.tensor(data["v"], requires_grad=True)
        gW, gv = torch.autograd.grad(loss(W, v), (W, v), create_graph=True)
        ((gW**2).sum() + (gv**2).sum() + loss(W, v)).backward()
        grads[loss] = (W.grad, v.grad)
    for a, b in zip(grads[ours], grads[theirs], strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-13)
    W, v = torch.tensor(data["W"]), torch.tensor(data["v"])
    hessian = torch.autograd.functional.hessian(ours, (W, v))
    assert_blocks(hessian, matrix_model.hessian(**data), "Wv")
    assert_blocks(hessian, torch.autograd.functional.hessian(theirs, (W, v)), "Wv")
    # the double-backward trick of torch.autograd.functional.hvp differentiates the
    # Hessian-vector product in its direction
    tW, tv = torch.cos(torch.arange(12.0)).reshape(3, 4).double(), torch.sin(torch.arange(4.0))
    products = torch.autograd.functional.hvp(ours, (W, v), (tW, tv.double()))[1]
    symgrad = matrix_model.hvp({"W": tW.numpy(), "v": tv.double().numpy()}, **data)
    np.testing.assert_allclose(products[0], symgrad["W"], rtol=RTOL, atol=1e-13)
    np.testing.assert_allclose(products[1], symgrad["v"], rtol=RTOL, atol=1e-13)


def test_torch_second_order_float32(torch, penalty_model):
    """float32 tensors: second derivatives in float32, computed in float64."""
    tf = penalty_model.to_torch()
    data = matrix_data(1)
    W = torch.tensor(data["W"], dtype=torch.float32)
    lam = torch.tensor(0.3, dtype=torch.float32)
    v = torch.tensor(data["v"], dtype=torch.float32)
    hessian = torch.autograd.functional.hessian(lambda W, lam: tf(W=W, lam=lam, v=v), (W, lam))
    assert all(block.dtype == torch.float32 for row in hessian for block in row)
    expected = penalty_model.hessian(W=W.double().numpy(), lam=float(lam),
                                     v=v.double().numpy())
    for i, p in enumerate(["W", "lam"]):
        for j, q in enumerate(["W", "lam"]):
            np.testing.assert_allclose(hessian[i][j], np.float32(expected[(p, q)]),
                                       rtol=1e-6, atol=1e-7)


def test_torch_third_derivatives_raise_symgrads_error(torch, scalar_model):
    tf = scalar_model.to_torch()
    x = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(2.0, dtype=torch.float64)
    (g,) = torch.autograd.grad(tf(x=x, y=y), x, create_graph=True)
    (h,) = torch.autograd.grad(g, x, create_graph=True)
    assert h.item() == pytest.approx(closed_hessian(1.0, 2.0)[0, 0], rel=RTOL)
    with pytest.raises(NotImplementedError, match=f"second_scalar has first and second "
                                                  f"derivatives.*{THIRD}"):
        h.backward()


def test_torch_second_order_of_a_matrix_output_raises_symgrads_error(torch, layer_model):
    tl = layer_model.to_torch()
    v = torch.tensor(matrix_data()["v"])
    W = torch.tensor(matrix_data()["W"], requires_grad=True)
    (g,) = torch.autograd.grad((tl(W=W, v=v) ** 2).sum(), W, create_graph=True)
    with pytest.raises(NotImplementedError, match=f"second_layer has a matrix output.*"
                                                  f"{MATRIX_OUTPUT}"):
        g.sum().backward()
    with pytest.raises(NotImplementedError, match=MATRIX_OUTPUT):
        torch.autograd.functional.hessian(lambda W: (tl(W=W, v=v) ** 2).sum(), W.detach())
