"""symgrad functions inside PyTorch and JAX, and over Dask arrays.

``f.to_torch()`` (:mod:`symgrad.interop.torch`) and ``f.to_jax()`` (:mod:`symgrad.interop.jax`)
wrap a :class:`~symgrad.compiled.CompiledFunction` so that the frameworks' autodiff calls
symgrad's compiled gradient (scalar outputs) or vector-Jacobian product (matrix outputs) for
the backward pass.  Neither framework is imported until a wrapper is made.
:mod:`symgrad.interop.dask` evaluates a model chunk by chunk when its data are Dask arrays.

Both differentiate twice for a scalar output: the gradient's own derivative is symgrad's
Hessian-vector product ``f.hvp`` (:func:`hessian_vector_product`), the Hessian being
symmetric so that the same product is the transpose that reverse mode needs.

This module holds what both wrappers share: which inputs a call names, the shape of the
output for given input shapes, summing a broadcast gradient back to an input's shape, and
the Hessian-vector product in the gradients' layout.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from symgrad.nodes import replaced

__all__ = ["check_names", "hessian_vector_product", "is_elementwise", "output_shape",
           "sum_to_shape"]


def check_names(function, given) -> None:
    """Raise ``TypeError`` naming an unknown or a missing input.

    ``given`` are the keyword names of one call; the model's inputs must all be there, and
    the only other names allowed are its free dimensions (integers).
    """
    dimensions = sorted(function.spec.public_name(d) for d in function.spec.free_dimensions)
    takes = list(function.inputs) + [d for d in dimensions if d not in function.inputs]
    unknown = [n for n in given if n not in takes]
    if unknown:
        raise TypeError(f"unknown input {unknown[0]!r}; this model takes {', '.join(takes)}")
    missing = [n for n in takes if n not in given]
    if missing:
        raise TypeError(f"missing input {missing[0]!r}; this model takes {', '.join(takes)}")


def sum_to_shape(gradient: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum a gradient that has the broadcast shape of a call back to one input's shape
    (what NumPy broadcasting did forwards, summed backwards).

    >>> sum_to_shape(np.ones((2, 3)), (3,)).tolist()
    [2.0, 2.0, 2.0]
    >>> sum_to_shape(np.ones((2, 3)), (2, 1)).tolist()
    [[3.0], [3.0]]
    """
    if not hasattr(gradient, "ndim"):       # NumPy and JAX arrays pass as they are
        gradient = np.asarray(gradient)
    shape = tuple(shape)
    if tuple(gradient.shape) == shape:
        return gradient
    leading = gradient.ndim - len(shape)
    if leading > 0:
        gradient = gradient.sum(axis=tuple(range(leading)))
    kept = tuple(k for k, n in enumerate(shape) if n == 1 and gradient.shape[k] != 1)
    if kept:
        gradient = gradient.sum(axis=kept, keepdims=True)
    return gradient.reshape(shape)


def is_elementwise(function) -> bool:
    """Whether the model has only scalar inputs: it then broadcasts its inputs like a NumPy
    ufunc and returns per-element values and gradients."""
    return not any(isinstance(s, sp.MatrixSymbol) for s in function.spec.inputs)


def output_shape(function, shapes: dict, dimensions: dict) -> tuple:
    """The shape of ``function``'s value for inputs of the given shapes, checking that the
    shapes fit the model (``ValueError`` naming the input and the dimension otherwise).

    Scalar inputs broadcast (an elementwise model); otherwise a scalar output is ``()`` and a
    matrix output's symbolic dimensions are bound from the inputs that have them (a vector
    may be given as ``(n,)`` or ``(n, 1)``) or from ``dimensions``, the free ones.
    """
    spec = function.spec
    if is_elementwise(function):
        try:
            return tuple(np.broadcast_shapes(*shapes.values()))
        except ValueError:
            raise ValueError("the inputs' shapes do not broadcast together: " + ", ".join(
                f"{n} {tuple(s)}" for n, s in shapes.items())) from None
    # the user's symbols: shapes and messages in the model's own names
    binding = {d: dimensions[d.name] for d in spec.user_free_dimensions if d.name in dimensions}
    source = {}             # dimension -> the input it was read from
    given = {}
    for symbol in spec.user_inputs:
        shape = tuple(shapes[symbol.name])
        if not isinstance(symbol, sp.MatrixSymbol):
            if shape != ():
                raise ValueError(f"input {symbol.name!r} has shape {shape}; it is a scalar")
            continue
        if len(shape) == 1 and symbol.shape[1] == 1:
            shape = (shape[0], 1)
        if len(shape) != 2:
            raise ValueError(f"input {symbol.name!r} has shape {shape}; it is a "
                             f"{symbol.shape[0]} x {symbol.shape[1]} matrix")
        given[symbol] = shape
        for extent, n in zip(symbol.shape, shape, strict=True):
            extent = sp.sympify(extent)
            if isinstance(extent, sp.Symbol) and extent not in binding:
                binding[extent], source[extent] = n, symbol.name
    for symbol, shape in given.items():
        for axis, (extent, n) in enumerate(zip(symbol.shape, shape, strict=True)):
            extent = sp.sympify(extent)
            expected = replaced(extent, binding)
            if expected.is_Integer and int(expected) != n:
                # the words of the compiled function's own check: the extent given, then
                # the one expected and where its dimensions were read
                which = "rows" if axis == 0 else "columns"
                origin = ", ".join(
                    f"{d} = {binding[d]} from {source[d]!r}" if d in source else
                    f"{d} = {binding[d]}" for d in sorted(extent.free_symbols, key=str))
                raise ValueError(f"input {symbol.name!r} has {n} {which} (shape "
                                 f"{tuple(shapes[symbol.name])}), but expected {extent}"
                                 + (f" ({origin})" if origin else ""))
    out = []
    for extent in spec.user_output_shape:
        value = replaced(sp.sympify(extent), binding)
        if not value.is_Integer:
            raise ValueError(f"the output's dimension {extent} is fixed by no input; pass it "
                             "as an integer argument")
        out.append(int(value))
    return tuple(out)


def hessian_vector_product(function, inputs: dict, directions: dict,
                           elementwise: bool) -> dict:
    """``{p: sum_q H[p, q] directions[q]}`` by ``function.hvp``, each product in its
    direction's shape; ``inputs`` are the model's inputs (and free dimensions).

    The directions are in the layout of the wrappers' gradients: a parameter's own shape, or
    for an elementwise model (scalar inputs broadcast together) the broadcast shape, one
    direction per point; every input is then broadcast to that shape, so that each point has
    its own direction and its own product (per point the Hessian is symmetric, so this map
    is its own transpose in that layout too).

    >>> import sympy as sp, symgrad as sg
    >>> w, x = sp.symbols("w x")
    >>> f = sg.compile(w**3 * x, [w])
    >>> hessian_vector_product(f, {"w": np.array([1.0, 2.0]), "x": 1.0},
    ...                        {"w": np.array([1.0, 1.0])}, True)["w"].tolist()
    [6.0, 12.0]
    """
    if elementwise:
        shape = np.broadcast_shapes(*(np.shape(v) for v in directions.values()),
                                    *(np.shape(inputs[n]) for n in function.inputs))
        inputs = {n: (_contiguous(np.broadcast_to(v, shape)) if n in function.inputs else v)
                  for n, v in inputs.items()}
        directions = {p: _contiguous(np.broadcast_to(d, shape)) for p, d in directions.items()}
    else:
        directions = {p: _contiguous(d) for p, d in directions.items()}
    products = function.hvp(directions, **inputs)
    return {p: np.asarray(products[p], dtype=np.float64).reshape(np.shape(d))
            for p, d in directions.items()}


def _contiguous(array):
    """A C-contiguous float64 array (a broadcast view or a strided slice copied), as the
    compiled kernels are typed for."""
    return np.asarray(array, dtype=np.float64, order="C")     # a 0-d array stays 0-d
