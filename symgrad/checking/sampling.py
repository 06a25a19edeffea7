"""Inputs for ``sg.check``: sizes for symbolic dimensions and random values in the domain.

Sizes.  Symbolic dimensions, sorted by name, get distinct sizes so that a transposition shows
up as a shape error: at point p (from 0) the k-th dimension (from 0) has size 3 + k + p, so
with points=3 and dimensions m, n the sizes are m=3, n=4, then m=4, n=5, then m=5, n=6.  A
dimension fixed by an input the caller gave keeps that input's size at every point.

Values.  Every entry is drawn from a seeded ``numpy.random.Generator``: first from the
standard normal distribution; when the model's value or a gradient is not finite there (the
log or square root of a negative number, an overflow) the inputs are drawn again, up to
four times from each of: the standard normal, uniform(0.5, 2) (positive: logs, square roots,
fractional powers), uniform(0.1, 0.9) (inside (0, 1): asin, acos, log(1 - x)).  Inputs the
caller gave are never redrawn.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symgrad.codegen.runtime import _reals
from symgrad.compiled import shape_symbols
from symgrad.nodes import replaced

__all__ = ["DRAWS", "shape_symbols", "sizes_at", "bind_dimensions", "normalize", "draws",
           "concrete_shape"]

# (name, how to draw an array of a shape, tries)
DRAWS = [
    ("normal(0, 1)", lambda rng, shape: rng.standard_normal(shape), 4),
    ("uniform(0.5, 2)", lambda rng, shape: rng.uniform(0.5, 2.0, shape), 4),
    ("uniform(0.1, 0.9)", lambda rng, shape: rng.uniform(0.1, 0.9, shape), 4),
]


def sizes_at(point: int, dims: list, fixed: dict) -> dict:
    """The size of each dimension at a point (see the module docstring).

    >>> m, n = sp.symbols("m n")
    >>> sizes_at(1, [m, n], {})
    {m: 4, n: 5}
    """
    return {d: fixed.get(d, 3 + k + point) for k, d in enumerate(dims)}


def bind_dimensions(symbols, given: dict) -> dict:
    """The sizes that the caller's arrays fix: a matrix input whose extent is a bare
    dimension symbol fixes that dimension."""
    bound: dict = {}
    for s in symbols:
        if not isinstance(s, MatrixExpr) or s.name not in given:
            continue
        shape = _matrix_shape(s, np.asarray(given[s.name]))
        for extent, actual in zip(s.shape, shape, strict=True):
            extent = sp.sympify(extent)
            if extent.is_Symbol:
                if bound.get(extent, actual) != actual:
                    raise ValueError(f"inputs give dimension {extent} two sizes, "
                                     f"{bound[extent]} and {actual}")
                bound[extent] = actual
    return bound


def _matrix_shape(symbol, value: np.ndarray) -> tuple:
    """The (rows, cols) an array stands for: a 1-D array is a vector of the symbol's kind."""
    if value.ndim == 2:
        return value.shape
    if value.ndim == 1:
        return (value.shape[0], 1) if symbol.shape[1] == 1 else (1, value.shape[0])
    if value.ndim == 0:
        return (1, 1)
    raise ValueError(f"input {symbol.name} has {value.ndim} dimensions; matrices have 2")


def concrete_shape(symbol, dims: dict) -> tuple:
    """A matrix symbol's shape with its dimensions replaced by sizes; () for a scalar."""
    if not isinstance(symbol, MatrixExpr):
        return ()
    return tuple(int(replaced(sp.sympify(e), dims)) for e in symbol.shape)


def normalize(symbols, given: dict, dims: dict, elementwise: bool) -> dict:
    """The caller's values as float64 arrays in symgrad's conventions: matrices 2-D in the
    symbol's shape, scalars as 0-d arrays, or for an elementwise model all broadcast to one
    shape (each entry a point)."""
    out = {}
    for s in symbols:
        if s.name not in given:
            continue
        value = _reals(f"input {s.name!r}", given[s.name])
        if isinstance(s, MatrixExpr):
            shape = concrete_shape(s, dims)
            if value.size != int(np.prod(shape)) or value.ndim > 2:
                raise ValueError(f"input {s.name} has shape {value.shape}; the model needs "
                                 f"{shape}")
            value = value.reshape(shape)
        elif not elementwise and value.ndim != 0:
            raise ValueError(f"input {s.name} is a scalar of a matrix model; got shape "
                             f"{value.shape}")
        out[s.name] = np.array(value)
    if elementwise and out:
        shape = np.broadcast_shapes(*[v.shape for v in out.values()])
        out = {n: np.array(np.broadcast_to(v, shape)) for n, v in out.items()}
    return out


def draws(symbols, fixed: dict, dims: dict, rng: np.random.Generator,
          elementwise: bool) -> Iterator[tuple[str, dict]]:
    """Candidate inputs for one point, in the order of ``DRAWS``: (distribution, values)."""
    shape = np.broadcast_shapes(*[v.shape for v in fixed.values()]) \
        if elementwise and fixed else ()
    for distribution, draw, tries in DRAWS:
        for _ in range(tries):
            values = dict(fixed)
            for s in symbols:
                if s.name not in fixed:
                    size = concrete_shape(s, dims) if isinstance(s, MatrixExpr) else shape
                    values[s.name] = np.asarray(draw(rng, size), dtype=np.float64)
            yield distribution, values
