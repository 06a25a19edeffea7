"""``f.to_jax()``: a compiled symgrad function as a differentiable JAX function.

A scalar output is a ``jax.custom_jvp`` whose tangent is sum_p <g_p, t_p>, g the gradient
from one call that computes the value and the gradient together (``f.value_and_grad``);
``jax.grad`` transposes that linear tangent, so that reverse mode still makes that one call.
The value and gradient are themselves a ``jax.custom_jvp`` function whose gradient's
tangent is symgrad's Hessian-vector product ``f.hvp`` (the primitive ``symgrad_hvp``, its
own transpose since the Hessian is symmetric): second derivatives (``jax.hessian``,
``jax.grad`` of ``jax.grad``, ``jax.jacfwd`` / ``jax.jacrev`` of ``jax.grad``) come from
symgrad's second order of the same model.  A third derivative raises
``NotImplementedError``.

A matrix output is a ``jax.custom_vjp`` whose backward pass is ``f.vjp``: first derivatives
in reverse mode; its second derivatives raise ``NotImplementedError``.

The first-order calls are XLA custom calls into the Numba kernels (JAX's FFI,
:mod:`symgrad.interop.xla`) for models whose inputs are all matrices and vectors, and
``jax.pure_callback`` otherwise (elementwise models of scalars, scalar inputs, free
dimensions); the Hessian-vector products always go through ``jax.pure_callback``.  It works
under ``jax.jit`` and ``jax.vmap`` (which maps the calls sequentially).  A custom call runs
the serial kernel: the threaded twins that ``f`` picks for very large inputs are not used
from XLA.

symgrad computes in float64, so the wrapper needs JAX's 64-bit mode: ``to_jax`` raises
``RuntimeError`` when ``jax_enable_x64`` is off rather than turn it on for the whole
program behind the caller's back.

>>> import jax, sympy as sp, symgrad as sg
>>> jax.config.update("jax_enable_x64", True)
>>> w, x = sp.symbols("w x")
>>> jf = sg.compile((w * x - 1) ** 2, wrt=[w]).to_jax()
>>> value, dw = jax.jit(jax.value_and_grad(lambda w: jf(w=w, x=2.0)))(3.0)
>>> float(value), float(dw)
(25.0, 20.0)
>>> float(jax.hessian(lambda w: jf(w=w, x=2.0))(3.0))            # 2 x^2
8.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from symgrad.interop import (
    check_names,
    hessian_vector_product,
    is_elementwise,
    output_shape,
    xla,
)

if TYPE_CHECKING:
    from symgrad.compiled import CompiledFunction

__all__ = ["JaxFunction", "to_jax"]

X64_MESSAGE = ("symgrad computes in float64 and its JAX functions need JAX's 64-bit mode: "
               "call jax.config.update('jax_enable_x64', True) first (or set "
               "JAX_ENABLE_X64=1)")


def _import_jax():
    try:
        import jax
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("f.to_jax() needs JAX: pip install jax") from exc
    return jax


def _require_x64(jax) -> None:
    if not jax.config.jax_enable_x64:
        raise RuntimeError(X64_MESSAGE)


class JaxFunction:
    """A compiled symgrad function on JAX arrays, differentiable by ``jax.grad`` (twice for
    a scalar output: ``jax.hessian``) and usable under ``jax.jit``.  Made by ``f.to_jax()``.

    Inputs are passed by symbol name, as to ``f``; the model's free dimensions, if any, are
    Python integers (static under ``jax.jit``).  The value is float64 unless every floating
    input is narrower (float32 in, float32 out); each gradient has its input's dtype.
    Differentiating with respect to a data input (one symgrad does not differentiate) raises
    ``ValueError`` naming it.

    >>> import jax, jax.numpy as jnp, symgrad as sg
    >>> jax.config.update("jax_enable_x64", True)
    >>> W, x = sg.matrix("W", 2, 3), sg.vector("x", 3)
    >>> layer = sg.compile(sg.tanh(W @ x), wrt=[W]).to_jax()       # a 2 x 1 output
    >>> jax.grad(lambda W: layer(W=W, x=jnp.ones(3)).sum())(jnp.zeros((2, 3))).tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    >>> loss = sg.compile(sg.dot(x, x) ** 2, wrt=[x]).to_jax()        # |x|^4
    >>> jax.hessian(lambda x: loss(x=x))(jnp.array([1.0, 0.0, 0.0])).tolist()
    [[12.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]]
    """

    def __init__(self, function: CompiledFunction):
        jax = _import_jax()
        _require_x64(jax)
        self.function = function
        self.inputs = function.inputs
        self.parameters = function.parameters
        self._jax = jax
        self._dimensions = tuple(sorted(d.name for d in function.spec.user_free_dimensions))
        self._cores: dict = {}
        # XLA custom calls where the model allows them; False: always jax.pure_callback
        # (what the benchmarks and tests compare the custom calls with)
        self._custom_calls = True

    def __call__(self, **inputs: Any):
        jax = self._jax
        _require_x64(jax)
        check_names(self.function, inputs)
        dimensions = {}
        for name in self._dimensions:
            value = inputs[name]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"dimension {name!r} must be a Python int (it fixes a shape), "
                                f"got {value!r}")
            dimensions[name] = int(value)
        arrays = []
        for name in self.inputs:
            array = jax.numpy.asarray(inputs[name])
            if jax.numpy.iscomplexobj(array):
                raise TypeError(f"input {name!r} is a {array.dtype} array; symgrad computes "
                                "with real numbers only")
            arrays.append(array)
        key = tuple(sorted(dimensions.items()))
        core = self._cores.get(key)
        if core is None:
            core = self._cores[key] = self._make_core(dimensions)
        return core(*arrays)

    # ------------------------------------------------------------------------------------
    def _make_core(self, dimensions: dict):
        """The differentiable function of the inputs (positional, in ``f.inputs`` order) for
        one set of free dimensions: a ``jax.custom_jvp`` for a scalar output (first and
        second derivatives), a ``jax.custom_vjp`` for a matrix output (first derivatives)."""
        jax = self._jax
        jnp = jax.numpy
        function = self.function
        names = self.inputs
        parameters = set(self.parameters)
        scalar = function.spec.value_and_grad is not None
        elementwise = is_elementwise(function)
        native = self._custom_calls and xla.supports(function)
        model = function.spec.name

        def float64(shape):
            return jax.ShapeDtypeStruct(shape, jnp.float64)

        def kernel_operands(arrays):
            """The arrays as the kernels take them: float64, vectors 1-D."""
            out = []
            for symbol, array in zip(function.spec.inputs, arrays, strict=True):
                if array.dtype != jnp.float64:
                    array = array.astype(jnp.float64)
                out.append(array.reshape(-1) if xla.is_vector(symbol) else array)
            return out

        def host_call(pass_, results, operands, host, refuse=None):
            """One call into symgrad: an XLA custom call where the model allows it, else a
            Python callback; results are float64 arrays of the given shapes.  ``refuse``: the
            message of the error that differentiating the call raises (else JAX's own)."""
            def call(*operands):
                if native:
                    return jax.ffi.ffi_call(xla.handler_name(function, pass_),
                                            [float64(s) for s in results],
                                            vmap_method="sequential")(*operands)
                return jax.pure_callback(host, [float64(s) for s in results], *operands,
                                         vmap_method="sequential")
            if refuse is None:
                return call(*operands)
            return _not_differentiable(jax, call, refuse)(*operands)

        def shapes_of(arrays):
            return {n: tuple(a.shape) for n, a in zip(names, arrays, strict=True)}

        def result_dtype(arrays):
            floating = [a.dtype for a in arrays if jnp.issubdtype(a.dtype, jnp.floating)]
            return jnp.result_type(*floating) if floating else jnp.float64

        def host_inputs(arrays):
            inputs = {n: np.asarray(a) for n, a in zip(names, arrays, strict=True)}
            inputs.update(dimensions)
            return inputs

        def refuse_data_inputs(differentiated):
            """``ValueError`` naming the first input that is differentiated but is not a
            parameter; ``differentiated``: a flag per input."""
            for name, moved in zip(names, differentiated, strict=True):
                if moved and name not in parameters:
                    raise ValueError(
                        f"input {name!r} is differentiated, but symgrad does not differentiate "
                        f"with respect to it (the parameters are {', '.join(self.parameters)})"
                        f": compile with {name} in wrt, or wrap it in jax.lax.stop_gradient")

        def call_forward(arrays, refuse=None):
            shape = output_shape(function, shapes_of(arrays), dimensions)

            def host(*arrays):
                return [np.asarray(function.forward(**host_inputs(arrays)),
                                   dtype=np.float64).reshape(shape)]

            operands = kernel_operands(arrays) if native else arrays
            (value,) = host_call("forward", [shape], operands, host, refuse)
            return value.astype(result_dtype(arrays))

        def grad_shapes_of(arrays):
            """{parameter: the shape of its gradient}: its own shape, or for an elementwise
            model the broadcast shape (the gradients are per element)."""
            shapes = shapes_of(arrays)
            shape = output_shape(function, shapes, dimensions)
            return shape, {n: shape if elementwise else shapes[n] for n in self.parameters}

        def call_value_and_grad(arrays, refuse=None):
            """[value, *gradients] in float64, the gradients in ``f.parameters`` order."""
            shape, grad_shapes = grad_shapes_of(arrays)
            results = [shape, *grad_shapes.values()]

            def host(*arrays):
                value, grads = function.value_and_grad(**host_inputs(arrays))
                return [np.asarray(value, dtype=np.float64).reshape(shape)] + [
                    np.asarray(grads[n], dtype=np.float64).reshape(s)
                    for n, s in grad_shapes.items()]

            operands = kernel_operands(arrays) if native else arrays
            return list(host_call("value_and_grad", results, operands, host, refuse))

        if scalar:
            return self._scalar_core(dimensions, call_forward, call_value_and_grad,
                                     grad_shapes_of, result_dtype, refuse_data_inputs)

        second = (f"symgrad's JAX function of {model} has a matrix output and first "
                  "derivatives only (its backward pass is f.vjp): second derivatives of a "
                  "model with a vector or matrix output are not supported (a scalar loss "
                  "compiled as one symgrad model has them)")

        @jax.custom_vjp
        def core(*arrays):
            return call_forward(arrays)

        def fwd(*primals):
            arrays = tuple(p.value for p in primals)
            refuse_data_inputs([p.perturbed for p in primals])
            return call_forward(arrays, refuse=second), arrays

        def bwd(arrays, cotangent):
            if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
                return tuple(None if n not in parameters else jnp.zeros_like(a)
                             for n, a in zip(names, arrays, strict=True))
            cotangent = jnp.asarray(cotangent, dtype=jnp.float64)
            grad_shapes = {n: shapes_of(arrays)[n] for n in self.parameters}

            def host(upstream, *arrays):
                grads = function.vjp(np.ascontiguousarray(upstream), **host_inputs(arrays))
                return [np.asarray(grads[n], dtype=np.float64).reshape(s)
                        for n, s in grad_shapes.items()]

            operands = [cotangent, *(kernel_operands(arrays) if native else arrays)]
            grads = dict(zip(grad_shapes, host_call("vjp", list(grad_shapes.values()),
                                                    operands, host, second), strict=True))
            return tuple(grads[n].astype(a.dtype) if n in parameters else None
                         for n, a in zip(names, arrays, strict=True))

        core.defvjp(fwd, bwd, symbolic_zeros=True)
        return core

    def _scalar_core(self, dimensions, call_forward, call_value_and_grad, grad_shapes_of,
                     result_dtype, refuse_data_inputs):
        """A scalar output's function: a ``jax.custom_jvp`` whose tangent is
        sum_p <g_p, t_p>, g from one host call that computes value and gradient together
        (JAX transposes that linear tangent for reverse mode: ``jax.grad`` makes that one
        call).  The value and gradient are themselves a ``jax.custom_jvp`` function whose
        gradient's tangent is symgrad's Hessian-vector product H t, bound as a primitive
        that knows its own transpose (H is symmetric: the transpose of t -> H t is itself),
        its batching and that a third derivative is not supported."""
        jax = self._jax
        jnp = jax.numpy
        function = self.function
        names = self.inputs
        order = [names.index(p) for p in self.parameters]
        elementwise = is_elementwise(function)
        third = (f"symgrad's JAX function of {function.spec.name} has first and second "
                 "derivatives (the second from symgrad's Hessian-vector products): a third "
                 "derivative is not supported")
        hvp = _HostHvp(function, names, self.parameters, dimensions, elementwise, third)

        def moved_parameters(tangents):
            """The parameters' tangents in float64, None for those that do not move; a data
            input that moves is an error."""
            zero = jax.custom_derivatives.SymbolicZero
            refuse_data_inputs([not isinstance(t, zero) for t in tangents])
            return [None if isinstance(tangents[k], zero)
                    else jnp.asarray(tangents[k], dtype=jnp.float64) for k in order]

        def directional(value, grads, moved):
            """sum_p <g_p, t_p>: the value's tangent (per element for an elementwise
            model)."""
            out = None
            for g, t in zip(grads, moved, strict=True):
                if t is None:
                    continue
                term = g * t if elementwise else (g * t).sum()
                out = term if out is None else out + term
            return jnp.zeros_like(value) if out is None else out.reshape(value.shape)

        @jax.custom_jvp
        def value_and_grad(*arrays):
            return tuple(call_value_and_grad(arrays))

        def value_and_grad_jvp(primals, tangents):
            moved = moved_parameters(tangents)
            value, *grads = call_value_and_grad(primals, refuse=third)
            _, grad_shapes = grad_shapes_of(primals)
            if all(t is None for t in moved):
                products = [jnp.zeros(s) for s in grad_shapes.values()]
            else:
                directions = [jnp.broadcast_to(jnp.zeros(()) if t is None else t, s)
                              for t, s in zip(moved, grad_shapes.values(), strict=True)]
                inputs = [jnp.asarray(a, dtype=jnp.float64) for a in primals]
                # made at the first second derivative only: first order never depends on
                # JAX's primitive API
                products = _hvp_primitive().bind(*inputs, *directions, call=hvp,
                                                 batch_ndim=0)
            return (value, *grads), (directional(value, grads, moved), *products)

        value_and_grad.defjvp(value_and_grad_jvp, symbolic_zeros=True)

        @jax.custom_jvp
        def core(*arrays):
            return call_forward(arrays)

        def core_jvp(primals, tangents):
            moved = moved_parameters(tangents)
            value, *grads = value_and_grad(*primals)
            dtype = result_dtype(primals)
            return (value.astype(dtype),
                    directional(value, grads, moved).astype(dtype))

        core.defjvp(core_jvp, symbolic_zeros=True)
        return core


def _not_differentiable(jax, call, message: str):
    """``call`` as a function whose derivative raises ``NotImplementedError(message)``
    (rather than JAX's error about a callback without a JVP)."""
    wrapped = jax.custom_jvp(call)

    def refuse(primals, tangents):
        raise NotImplementedError(message)

    wrapped.defjvp(refuse)
    return wrapped


class _HostHvp:
    """The host side of the ``symgrad_hvp`` primitive for one model and set of free
    dimensions: symgrad's ``f.hvp`` on float64 operands (the inputs, then a direction per
    parameter in the shape of its gradient) that may carry ``batch_ndim`` leading batch
    axes, of extent 1 where an operand is not batched (``jax.vmap``, ``jax.hessian``'s
    directions): one ``f.hvp`` per point of the broadcast batch."""

    def __init__(self, function, names, parameters, dimensions, elementwise, third_order):
        self.function = function
        self.names = tuple(names)
        self.parameters = tuple(parameters)
        self.dimensions = dict(dimensions)
        self.elementwise = elementwise
        self.third_order = third_order

    @property
    def n_inputs(self) -> int:
        return len(self.names)

    def __call__(self, *operands, batch_ndim: int):
        operands = [np.asarray(o, dtype=np.float64) for o in operands]
        batch = batch_shape(operands, batch_ndim)
        directions = operands[self.n_inputs:]
        outs = [np.empty(batch + d.shape[batch_ndim:]) for d in directions]
        for index in np.ndindex(*batch):
            point = [o[tuple(0 if o.shape[k] == 1 else i for k, i in enumerate(index))]
                     for o in operands]
            for out, product in zip(outs, self.one(point), strict=True):
                out[index] = product
        return outs

    def one(self, operands) -> list:
        inputs = dict(zip(self.names, operands[:self.n_inputs], strict=True))
        inputs.update(self.dimensions)
        directions = dict(zip(self.parameters, operands[self.n_inputs:], strict=True))
        products = hessian_vector_product(self.function, inputs, directions, self.elementwise)
        return [products[p] for p in self.parameters]


def batch_shape(operands, batch_ndim: int) -> tuple:
    """The broadcast shape of the operands' ``batch_ndim`` leading axes."""
    return tuple(np.broadcast_shapes(*(np.shape(o)[:batch_ndim] for o in operands)))


_PRIMITIVES: dict = {}


def _hvp_primitive():
    """The ``symgrad_hvp`` primitive (made once; JAX is imported lazily): operands the model's
    inputs and a direction per parameter, results H t per parameter, computed on the host
    by ``call`` (a :class:`_HostHvp`).  Linear in the directions and its own transpose (H
    is symmetric); vmapped by a leading batch axis that ``call`` loops over; its JVP in the
    inputs would be a third derivative, which raises ``call.third_order``."""
    if "hvp" in _PRIMITIVES:
        return _PRIMITIVES["hvp"]
    import jax

    try:
        from jax.extend.core import Primitive
        from jax.interpreters import ad, batching, mlir
    except ImportError as error:
        raise NotImplementedError(
            f"second derivatives through to_jax need JAX's primitive API (jax.extend.core, "
            f"jax.interpreters), which this JAX {jax.__version__} lacks: {error}") from None

    jnp = jax.numpy
    primitive = Primitive("symgrad_hvp")
    primitive.multiple_results = True

    def abstract(*operands, call, batch_ndim):
        batch = batch_shape(operands, batch_ndim)
        return [jax.core.ShapedArray(batch + tuple(np.shape(d)[batch_ndim:]), jnp.float64)
                for d in operands[call.n_inputs:]]

    def implementation(*operands, call, batch_ndim):
        results = [jax.ShapeDtypeStruct(a.shape, a.dtype)
                   for a in abstract(*operands, call=call, batch_ndim=batch_ndim)]
        return jax.pure_callback(lambda *o: call(*o, batch_ndim=batch_ndim), results,
                                 *operands)

    def jvp(primals, tangents, *, call, batch_ndim):
        n = call.n_inputs
        if any(type(t) is not ad.Zero for t in tangents[:n]):
            raise NotImplementedError(call.third_order)
        out = primitive.bind(*primals, call=call, batch_ndim=batch_ndim)
        directions = [ad.instantiate_zeros(t) for t in tangents[n:]]
        return out, primitive.bind(*primals[:n], *directions, call=call, batch_ndim=batch_ndim)

    def transpose(cotangents, *operands, call, batch_ndim):
        n = call.n_inputs
        if any(ad.is_undefined_primal(o) for o in operands[:n]):
            raise NotImplementedError(call.third_order)   # not linear in the inputs
        cotangents = [ad.instantiate_zeros(c) for c in cotangents]
        return [None] * n + primitive.bind(*operands[:n], *cotangents, call=call,
                                           batch_ndim=batch_ndim)

    def batch(operands, axes, *, call, batch_ndim):
        operands = [jnp.expand_dims(o, 0) if a is None else jnp.moveaxis(o, a, 0)
                    for o, a in zip(operands, axes, strict=True)]
        out = primitive.bind(*operands, call=call, batch_ndim=batch_ndim + 1)
        return out, [0] * len(out)

    primitive.def_impl(implementation)
    primitive.def_abstract_eval(abstract)
    mlir.register_lowering(primitive, mlir.lower_fun(implementation, multiple_results=True))
    ad.primitive_jvps[primitive] = jvp
    ad.primitive_transposes[primitive] = transpose
    batching.primitive_batchers[primitive] = batch
    _PRIMITIVES["hvp"] = primitive
    return primitive


def to_jax(function: CompiledFunction) -> JaxFunction:
    """``function`` as a JAX function with its gradient (see :class:`JaxFunction`); the same
    as ``function.to_jax()``."""
    return JaxFunction(function)

