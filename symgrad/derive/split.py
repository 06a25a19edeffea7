"""A model as a sum over its examples: the form that lets symgrad evaluate it chunk by chunk.

A loss over a data set is a sum (or a mean) over the examples of per-example terms, plus terms
without data (a penalty on the parameters):

    L(w) = c(w) * sum_i t(w, x_i) + r(w)

The partial sums of the chunks of the data then add up to the whole,
``L = sum over chunks of (c * sum_{i in chunk} t) + r``, and so do the gradients.
:func:`split_over_batch` proves, in one walk over the expression, that a model has this form
over a batch dimension (the ``m`` columns of X, the ``n`` rows of X) and returns the two pieces
to compile:

* ``per_chunk``: the part with data.  Evaluated on a chunk, its shapes take the chunk's size,
  and wherever the model uses the batch size as a number (the 1/m of a mean) a separate scalar
  (``m_total``) stands for the size of the whole batch;
* ``once``: the terms without data, counted once (not once per chunk).

A model that is not of this form (a logsumexp over the examples, a product of two sums over the
examples, a function of a sum over the examples) is refused, naming the node that breaks it.

>>> import sympy as sp
>>> import symgrad as sg
>>> n = sp.Symbol("n", integer=True, positive=True)
>>> X, t, w = sg.matrix("X", n, 3), sg.vector("t", n), sg.vector("w", 3)
>>> split = split_over_batch(sg.mean(sg.square(X @ w - t)) + sg.dot(w, w), [w], n)
>>> split.total, split.once
(n_total, (w.T*w)[0, 0])
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

from symgrad import operations, ops
from symgrad.derive.graph import dag_free_symbols
from symgrad.nodes import built, replaced

__all__ = ["NotSplittable", "BatchSplit", "split_over_batch"]

# How a node depends on the examples of the batch dimension.
FIXED = "fixed"          # not at all: parameters, data without the batch dimension, numbers
ROWS = "rows"            # one row per example (shape m x k), each row from its own example
COLUMNS = "columns"      # one column per example (shape k x m)
SUM = "sum"              # a sum over the examples (times factors without data), plus FIXED terms

_AXIS_KIND = {0: ROWS, 1: COLUMNS}


class NotSplittable(ValueError):
    """The model is not a sum over the batch dimension of per-example terms plus terms without
    data; the message names the node that breaks that form."""


@dataclass(frozen=True)
class BatchSplit:
    """A model split over its batch dimension (see :func:`split_over_batch`):
    ``model = sum over chunks of per_chunk + once``, with ``total`` set to the whole batch's
    size."""

    dimension: sp.Symbol
    total: sp.Symbol
    per_chunk: sp.Basic
    once: sp.Basic | None


def split_over_batch(expr, wrt, dimension: sp.Symbol) -> BatchSplit:
    """Split a scalar model into its per-chunk part and its part without data, or raise
    :class:`NotSplittable` naming the node that keeps it from being a sum over ``dimension``.

    The data are the matrix symbols not in ``wrt`` whose shape has ``dimension``.

    >>> import sympy as sp
    >>> import symgrad as sg
    >>> m = sp.Symbol("m", integer=True, positive=True)
    >>> X, w = sg.matrix("X", 2, m), sg.vector("w", 2)
    >>> try:
    ...     split_over_batch(sg.logsumexp(X.T @ w), [w], m)
    ... except NotSplittable as error:
    ...     print(error)  # doctest: +NORMALIZE_WHITESPACE
    the model is not a sum over m of per-example terms: logsumexp over all entries mixes the
    examples, in logsumexp(X^T w)
    """
    expr = sp.sympify(expr)
    if isinstance(expr, MatrixExpr) and tuple(expr.shape) != (1, 1):
        raise NotSplittable(f"only a scalar model splits over {dimension}; this one has shape "
                            f"{tuple(expr.shape)}")
    walk = _Walk(expr, list(wrt), dimension)
    kind = walk.kind(expr)
    if kind != SUM:
        raise NotSplittable(f"the model has no sum over {dimension}: no data of that "
                            "dimension enters it as a sum over the examples")
    per_chunk, once = walk.parts(expr)
    total = _total_symbol(expr, dimension)
    per_chunk = _replace_size(per_chunk, dimension, total)
    once = None if once is None else _replace_size(once, dimension, total)
    return BatchSplit(dimension, total, per_chunk, once)


def _total_symbol(expr, dimension: sp.Symbol) -> sp.Symbol:
    """``m_total`` (or ``m_total_2`` ... if the model already has a symbol of that name)."""
    taken = {s.name for s in dag_free_symbols(expr)}     # (matrix symbols among them)
    name, k = f"{dimension.name}_total", 1
    while name in taken:
        k += 1
        name = f"{dimension.name}_total_{k}"
    return sp.Symbol(name, positive=True)


def _short(node) -> str:
    text = str(node)
    return text if len(text) <= 120 else text[:117] + "..."


class _Walk:
    """The kind of each node (memoized: each shared subexpression is looked at once) and the
    split of the SUM nodes into their data part and their part without data."""

    # the kinds, for the split hooks of symgrad/operations/
    FIXED, ROWS, COLUMNS, SUM, AXIS_KIND = FIXED, ROWS, COLUMNS, SUM, _AXIS_KIND

    def __init__(self, expr, wrt: list, dimension: sp.Symbol):
        self.dimension = dimension
        self.wrt = set(wrt)
        self.kinds: dict = {}
        self.split: dict = {}

    # -- errors ------------------------------------------------------------------------------
    def refuse(self, node, why: str):
        raise NotSplittable(f"the model is not a sum over {self.dimension} of per-example "
                            f"terms: {why}, in {_short(node)}")

    def batch_axis(self, node) -> int | None:
        """The axis along which a matrix node has the batch dimension (None if neither); a
        shape that uses it otherwise (both axes, 2*m) is refused."""
        m = self.dimension
        axes = [k for k, extent in enumerate(node.shape) if m in sp.sympify(extent).free_symbols]
        if not axes:
            return None
        if len(axes) == 2:
            self.refuse(node, f"it has {m} on both axes (shape {tuple(node.shape)}), which "
                        "pairs examples with examples")
        if sp.sympify(node.shape[axes[0]]) != m:
            self.refuse(node, f"its extent {node.shape[axes[0]]} is not {m} itself")
        return axes[0]

    # -- kinds -------------------------------------------------------------------------------
    def kind(self, node) -> str:
        found = self.kinds.get(node)
        if found is None:
            found = self.kinds[node] = self._kind(node)
        return found

    def _kind(self, node) -> str:   # noqa: C901 - one branch per node type, as a table
        m = self.dimension
        if isinstance(node, sp.MatrixSymbol):
            axis = self.batch_axis(node)
            if axis is None:
                return FIXED
            if node in self.wrt:
                self.refuse(node, f"the parameter {node.name} has the batch dimension {m} in "
                            "its shape, so its gradient is not a sum over chunks")
            return _AXIS_KIND[axis]
        if isinstance(node, (sp.OneMatrix, sp.ZeroMatrix, sp.Identity)):
            axis = self.batch_axis(node)
            return FIXED if axis is None else _AXIS_KIND[axis]
        if not node.args:
            return FIXED            # numbers and scalar symbols (m itself is the total size)
        if isinstance(node, sp.Transpose):
            kind = self.kind(node.arg)
            return {ROWS: COLUMNS, COLUMNS: ROWS}.get(kind, kind)
        if isinstance(node, sp.MatMul):
            return self._matmul_kind(node)
        if isinstance(node, (sp.Add, sp.MatAdd, sp.HadamardProduct, sp.Mul)):
            return self._elementwise_kind(node, node.args,
                                          linear=isinstance(node, (sp.Add, sp.MatAdd)))
        if isinstance(node, ops.Map):
            return self._map_kind(node)
        if isinstance(node, (MatrixElement,)):
            kind = self.kind(node.parent)
            if kind in (ROWS, COLUMNS):
                self.refuse(node, "an entry of a matrix over the examples picks out one "
                            "example")
            return kind
        operation = operations.of(node)
        if operation is not None and operation.split is not None:
            return operation.split(node, self)
        if isinstance(node, sp.HadamardPower):
            kind = self.kind(node.base)
            if self.kind(node.exp) != FIXED:
                self.refuse(node, "an exponent that depends on the examples")
            if kind == SUM and node.exp != 1:
                self.refuse(node, "a power of a sum over the examples")
            return kind
        # anything else (exp, log, det, inverse, logdet, Max, powers ...)
        # is nonlinear in its arguments: it splits only when none depends on the examples
        kinds = {self.kind(a) for a in node.args if isinstance(a, sp.Basic)}
        if kinds <= {FIXED}:
            if isinstance(node, MatrixExpr) and self.batch_axis(node) is not None:
                self.refuse(node, f"{type(node).__name__} over {m} is not elementwise")
            return FIXED
        self.refuse(node, _nonlinear_reason(node, kinds))

    def _elementwise_kind(self, node, args, linear: bool) -> str:
        """Sums, products and Hadamard products: per-example operands stay per-example; a
        sum over the examples may be added to anything without data, and multiplied by it."""
        kinds = [self.kind(a) for a in args]
        moving = {k for k in kinds if k != FIXED}
        if not moving:
            return FIXED
        if len(moving) > 1:
            self.refuse(node, "it combines a sum over the examples with per-example terms")
        (kind,) = moving
        if kind == SUM and not linear and kinds.count(SUM) > 1:
            self.refuse(node, "a product of two sums over the examples")
        return kind

    def _matmul_kind(self, node) -> str:
        m = self.dimension
        scalars = [a for a in node.args if not isinstance(a, MatrixExpr)]
        matrices = [a for a in node.args if isinstance(a, MatrixExpr)]
        kind, shape = self.kind(matrices[0]), tuple(matrices[0].shape)
        for right in matrices[1:]:
            right_kind, right_shape = self.kind(right), tuple(right.shape)
            pair = (kind, right_kind)
            if sp.sympify(shape[1]) == m:
                if pair != (COLUMNS, ROWS):
                    self.refuse(node, f"a product over {m} of {kind} and {right_kind} factors")
                kind = SUM          # sum over i of (column i) (row i): a sum over examples
            elif pair == (FIXED, FIXED):
                kind = FIXED
            elif pair in ((ROWS, FIXED), (FIXED, COLUMNS)):
                kind = ROWS if pair[0] == ROWS else COLUMNS
            elif pair in ((SUM, FIXED), (FIXED, SUM)):
                kind = SUM
            elif pair == (ROWS, COLUMNS):
                self.refuse(node, f"a product that pairs examples with examples ({m} x {m})")
            else:
                self.refuse(node, "a product of a sum over the examples with data over them"
                            if SUM in pair else f"a product of {kind} and {right_kind} factors")
            shape = (shape[0], right_shape[1])
        scalar_kinds = [self.kind(s) for s in scalars]
        if SUM in scalar_kinds:
            if kind != FIXED or scalar_kinds.count(SUM) > 1:
                self.refuse(node, "a product of a sum over the examples with data over them")
            kind = SUM
        return kind

    def _map_kind(self, node: ops.Map) -> str:
        m = self.dimension
        axis = self.batch_axis(node)
        kinds = [self.kind(o) for o in node.operands]
        if axis is not None:
            # an elementwise function over the examples: each operand per-example along the
            # same axis, or without data and broadcast across the examples
            for operand, kind in zip(node.operands, kinds):
                if kind == SUM:
                    self.refuse(node, f"a sum over the examples ({_short(operand)}) used in "
                                "each example's term")
                if kind not in (FIXED, _AXIS_KIND[axis]):
                    self.refuse(node, f"operand {_short(operand)} runs over {m} along the "
                                "other axis")
            return _AXIS_KIND[axis]
        if SUM not in kinds:
            return FIXED
        variables = [v for v, k in zip(node.function.variables, kinds) if k == SUM]
        if not _linear_homogeneous(node.body, variables):
            self.refuse(node, f"{_body_text(node)} is not linear in a sum over the examples")
        return SUM

    # -- parts -------------------------------------------------------------------------------
    def parts(self, node) -> tuple:
        """(data part, part without data or None) of a node: node = data part + the other."""
        kind = self.kind(node)
        if kind == FIXED:
            return None, node
        found = self.split.get(node)
        if found is None:
            found = self.split[node] = self._parts(node)
        return found

    def _parts(self, node) -> tuple:
        if isinstance(node, (sp.Add, sp.MatAdd)):
            data, fixed = [], []
            for a in node.args:
                d, f = self.parts(a)
                if d is not None:
                    data.append(d)
                if f is not None:
                    fixed.append(f)
            return _add(node, data), _add(node, fixed) if fixed else None
        if isinstance(node, ops.Map):
            summed = [self.kind(o) == SUM for o in node.operands]
            data = [self.parts(o)[0] if s else o for o, s in zip(node.operands, summed)]
            fixed_parts = [self.parts(o)[1] if s else o for o, s in zip(node.operands, summed)]
            if all(f is None for f, s in zip(fixed_parts, summed) if s):
                return ops.Map(node.function, node.shape, *data), None
            fixed_parts = [_zero_like(o) if f is None else f
                           for o, f in zip(node.operands, fixed_parts)]
            return (ops.Map(node.function, node.shape, *data),
                    ops.Map(node.function, node.shape, *fixed_parts))
        # every other SUM node is linear in its one argument of kind SUM; where there is none,
        # the node itself forms the sum over the examples and has no part without data
        args = list(node.args)
        summed = [k for k, a in enumerate(args) if isinstance(a, sp.Basic)
                  and self.kind(a) == SUM]
        if not summed:
            return node, None
        (k,) = summed
        data, fixed = self.parts(args[k])
        with_data = built(node.func, [*args[:k], data, *args[k + 1:]])
        if fixed is None:
            return with_data, None
        return with_data, built(node.func, [*args[:k], fixed, *args[k + 1:]])


def _add(node, terms: list):
    if isinstance(node, sp.MatAdd):
        return terms[0] if len(terms) == 1 else sp.MatAdd(*terms)
    return sp.Add(*terms)


def _zero_like(operand):
    return sp.ZeroMatrix(*operand.shape) if isinstance(operand, MatrixExpr) else sp.S.Zero


def _linear_homogeneous(body, variables) -> bool:
    """Whether body is a sum of the variables times factors free of them."""
    try:
        poly = sp.Poly(body, *variables)
    except sp.PolynomialError:
        return False
    return poly.total_degree() <= 1 and poly.coeff_monomial(1) == 0


def _body_text(node: ops.Map) -> str:
    names = {v: sp.Symbol(f"<{_short(o)}>") for v, o in zip(node.function.variables,
                                                             node.operands)}
    return str(replaced(node.body, names))


def _nonlinear_reason(node, kinds: set) -> str:
    name = type(node).__name__
    if SUM in kinds:
        return f"{name} of a sum over the examples (a function of the whole batch, not a sum " \
               "of per-example terms)"
    return f"{name} of data over the examples mixes them"


def _replace_size(expr, dimension: sp.Symbol, total: sp.Symbol):
    """expr with the batch size, where it is used as a number, replaced by ``total``; the
    shapes keep ``dimension`` (a chunk's size, bound from its arrays)."""
    if expr == dimension:
        return total
    if not isinstance(expr, sp.Basic) or not expr.args or not expr.has(dimension):
        return expr
    if isinstance(expr, (sp.MatrixSymbol, sp.OneMatrix, sp.ZeroMatrix, sp.Identity)):
        return expr
    if isinstance(expr, ops.Map):
        return ops.Map(expr.function, expr.shape,
                       *[_replace_size(o, dimension, total) for o in expr.operands])
    operation = operations.of(expr)
    if operation is not None:       # its operands; its parameters (a Scatter's shape) kept
        return operation.rebuild(expr, [_replace_size(o, dimension, total)
                                         for o in operation.operands(expr)])
    return built(expr.func, [_replace_size(a, dimension, total) for a in expr.args])
