"""``f.to_jax()``: a compiled symgrad function as a JAX function with a custom VJP.

The function is a ``jax.custom_vjp`` whose passes call symgrad's compiled kernels from XLA:
the forward pass under ``jax.grad`` computes the value and the gradient together (scalar
outputs, ``f.value_and_grad``) and the backward pass scales the gradient by the output's
cotangent; a matrix output's backward pass is ``f.vjp``.  The calls are XLA custom calls
into the Numba kernels (JAX's FFI, :mod:`symgrad.interop.xla`) for models whose inputs are
all matrices and vectors, and ``jax.pure_callback`` otherwise (elementwise models of
scalars, scalar inputs, free dimensions).  It works under ``jax.jit`` and ``jax.grad``
(first derivatives; ``jax.vmap`` maps the call sequentially).  A custom call runs the serial
kernel: the threaded twins that ``f`` picks for very large inputs are not used from XLA.

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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from symgrad.interop import check_names, is_elementwise, output_shape, sum_to_shape, xla

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
    """A compiled symgrad function on JAX arrays, differentiable by ``jax.grad`` and usable
    under ``jax.jit``.  Made by ``f.to_jax()``.

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
        """The custom_vjp function of the inputs (positional, in ``f.inputs`` order) for one
        set of free dimensions."""
        jax = self._jax
        jnp = jax.numpy
        function = self.function
        names = self.inputs
        parameters = set(self.parameters)
        scalar = function.spec.value_and_grad is not None
        elementwise = is_elementwise(function)
        native = self._custom_calls and xla.supports(function)

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

        def host_call(pass_, results, operands, host):
            """One call into symgrad: an XLA custom call where the model allows it, else a
            Python callback; results are float64 arrays of the given shapes."""
            if native:
                return jax.ffi.ffi_call(xla.handler_name(function, pass_),
                                        [float64(s) for s in results],
                                        vmap_method="sequential")(*operands)
            return jax.pure_callback(host, [float64(s) for s in results], *operands,
                                     vmap_method="sequential")

        def shapes_of(arrays):
            return {n: tuple(a.shape) for n, a in zip(names, arrays, strict=True)}

        def result_dtype(arrays):
            floating = [a.dtype for a in arrays if jnp.issubdtype(a.dtype, jnp.floating)]
            return jnp.result_type(*floating) if floating else jnp.float64

        def host_inputs(arrays):
            inputs = {n: np.asarray(a) for n, a in zip(names, arrays, strict=True)}
            inputs.update(dimensions)
            return inputs

        def call_forward(arrays):
            shape = output_shape(function, shapes_of(arrays), dimensions)

            def host(*arrays):
                return [np.asarray(function.forward(**host_inputs(arrays)),
                                   dtype=np.float64).reshape(shape)]

            operands = kernel_operands(arrays) if native else arrays
            (value,) = host_call("forward", [shape], operands, host)
            return value.astype(result_dtype(arrays))

        @jax.custom_vjp
        def core(*arrays):
            return call_forward(arrays)

        def fwd(*primals):
            arrays = tuple(p.value for p in primals)
            for name, primal in zip(names, primals, strict=True):
                if primal.perturbed and name not in parameters:
                    raise ValueError(
                        f"input {name!r} is differentiated, but symgrad does not differentiate "
                        f"with respect to it (the parameters are {', '.join(self.parameters)})"
                        f": compile with {name} in wrt, or wrap it in jax.lax.stop_gradient")
            if not scalar:
                return call_forward(arrays), arrays
            shapes = shapes_of(arrays)
            shape = output_shape(function, shapes, dimensions)
            # an elementwise model's gradients are per element: the broadcast shape
            grad_shapes = {n: shape if elementwise else shapes[n] for n in self.parameters}
            results = [shape, *grad_shapes.values()]

            def host(*arrays):
                value, grads = function.value_and_grad(**host_inputs(arrays))
                return [np.asarray(value, dtype=np.float64).reshape(shape)] + [
                    np.asarray(grads[n], dtype=np.float64).reshape(s)
                    for n, s in grad_shapes.items()]

            operands = kernel_operands(arrays) if native else arrays
            value, *grads = host_call("value_and_grad", results, operands, host)
            grads = dict(zip(grad_shapes, grads, strict=True))
            return value.astype(result_dtype(arrays)), (arrays, grads)

        def bwd(residuals, cotangent):
            arrays = residuals[0] if scalar else residuals
            zero = isinstance(cotangent, jax.custom_derivatives.SymbolicZero)
            if zero:
                return tuple(None if n not in parameters else jnp.zeros_like(a)
                             for n, a in zip(names, arrays, strict=True))
            cotangent = jnp.asarray(cotangent, dtype=jnp.float64)
            if scalar:
                grads = {n: g * cotangent for n, g in residuals[1].items()}
            else:
                grad_shapes = {n: shapes_of(arrays)[n] for n in self.parameters}

                def host(upstream, *arrays):
                    grads = function.vjp(np.ascontiguousarray(upstream), **host_inputs(arrays))
                    return [np.asarray(grads[n], dtype=np.float64).reshape(s)
                            for n, s in grad_shapes.items()]

                operands = [cotangent, *(kernel_operands(arrays) if native else arrays)]
                grads = dict(zip(grad_shapes, host_call("vjp", list(grad_shapes.values()),
                                                        operands, host), strict=True))
            out = []
            for name, array in zip(names, arrays, strict=True):
                if name not in parameters:
                    out.append(None)
                    continue
                gradient = grads[name]
                if gradient.shape != array.shape:
                    gradient = sum_to_shape(gradient, array.shape)   # a JAX array
                out.append(gradient.astype(array.dtype))
            return tuple(out)

        core.defvjp(fwd, bwd, symbolic_zeros=True)
        return core


def to_jax(function: CompiledFunction) -> JaxFunction:
    """``function`` as a JAX function with its gradient (see :class:`JaxFunction`); the same
    as ``function.to_jax()``."""
    return JaxFunction(function)

