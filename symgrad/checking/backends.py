"""The value and gradients of one model by each means ``sg.check`` compares.

* ``symgrad`` (the reference): the compiled Numba module (``reference="compiled"``), or the
  symbolic gradients of ``sg.grad`` evaluated with NumPy (``reference="symbolic"``: no
  compilation, for checking many models quickly);
* ``jax``, ``torch``, ``autograd``: the model translated to the framework
  (:mod:`symgrad.checking.translate`) and differentiated by the framework's own autodiff;
* ``finite-differences``: the model translated to NumPy, and central differences with the
  step h = eps^(1/3) max(1, |x|) for each coordinate (eps the float64 machine epsilon) and
  h / 2, combined by Richardson extrapolation (and h / 4 for the error estimate);
* ``symgrad-floats``: a compiled scalar model called with Python floats, the path of its own
  (a pure-Python twin of the kernel) that ``f.value_and_grad(w=1.0, ...)`` takes, against
  the Numba kernel that arrays take.

Every backend answers ``value_and_grad(values, dims, upstream)`` with a :class:`Result`
(NumPy arrays).  For a scalar model the gradient is that of the value itself (elementwise
over array inputs: the gradient of the sum); for a matrix output it is the gradient of
``sum(upstream o value)``, a vector-Jacobian product, which is what ``f.vjp`` computes.
"""

from __future__ import annotations

import statistics
import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symgrad.checking.translate import TRANSLATORS, Translated, require, translate

__all__ = ["Problem", "Result", "Backend", "FrameworkBackend", "JaxBackend", "TorchBackend",
           "AutogradBackend", "FiniteDifferences", "CompiledReference", "CompiledFloats",
           "SymbolicReference", "BACKENDS", "median_time", "MAX_FD_COORDINATES"]

# Finite differences whose own error estimate passes this fraction of the gradient's size
# get a note in the report, next to their result.
UNCERTAIN = 1e-4

# Central differences on at most this many coordinates of each matrix parameter (drawn at
# random, without repetition, from the check's seeded generator); smaller ones are done whole.
MAX_FD_COORDINATES = 20

_EPS = np.finfo(np.float64).eps
_FD_STEP = _EPS ** (1 / 3)


@dataclass
class Problem:
    """One model as every backend sees it.

    ``expr`` is the model as written (after symgrad's stable rewrites), ``inputs`` its
    symbols (parameters first), ``wrt`` the parameters, ``output_shape`` () for a scalar,
    ``dims`` the symbols in its matrices' shapes.
    ``elementwise`` marks a scalar model of scalar inputs: arrays are independent points.
    """

    name: str
    expr: sp.Expr
    inputs: list
    wrt: list
    output_shape: tuple = ()
    dims: list = field(default_factory=list)   # dimension symbols, sorted by name
    as_written: sp.Expr | None = None   # the model before the stable rewrites changed it

    @property
    def elementwise(self) -> bool:
        return not self.output_shape and not any(isinstance(s, MatrixExpr) for s in self.inputs)

    @property
    def parameter_names(self) -> list[str]:
        return [s.name for s in self.wrt]


@dataclass
class Result:
    """A backend's answer: the value and each parameter's gradient, as float64 arrays.

    ``compared`` says, for a gradient computed on some coordinates only (finite differences
    of a large parameter), which entries hold a result; ``slack`` is an estimate of an
    approximation's own error per entry, added to the tolerance.
    """

    value: np.ndarray
    gradients: dict[str, np.ndarray]
    compared: dict[str, np.ndarray] = field(default_factory=dict)
    slack: dict[str, np.ndarray] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def _objective_of(value, upstream, xp):
    """The scalar a backend differentiates: the sum of the value (elementwise models, where
    it gives each point's gradient), or of upstream o value (a matrix output)."""
    return xp.sum(value if upstream is None else value * upstream)


def _as_array(x, shape) -> np.ndarray:
    """x as a float64 array of the shape: reshaped where it has as many entries (a
    one-element result of a scalar), else broadcast (a gradient that is a constant)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == int(np.prod(shape)):
        return np.array(x.reshape(shape))
    return np.array(np.broadcast_to(x, shape))


class Backend:
    """A means of computing the value and gradients of a :class:`Problem`."""

    name = "backend"
    framework: str | None = None    # the package it needs, for ImportError messages

    def __init__(self, problem: Problem, rng: np.random.Generator | None = None):
        self.problem = problem
        self.rng = rng if rng is not None else np.random.default_rng(0)

    def value_and_grad(self, values: dict, dims: dict, upstream: np.ndarray | None) -> Result:
        raise NotImplementedError

    def timer(self, values: dict, dims: dict, upstream) -> Callable[[], object] | None:
        """A call that computes the value and gradients once (None: not timed)."""
        return None

    def seconds(self, values: dict, dims: dict, upstream) -> float | None:
        """The median time of one value-and-gradient call (None: not timed)."""
        call = self.timer(values, dims, upstream)
        return None if call is None else median_time(call)

    def _shapes(self, values: dict) -> dict:
        return {n: np.shape(values[n]) for n in self.problem.parameter_names}


class FrameworkBackend(Backend):
    """A framework's autodiff on the model's translation."""

    def __init__(self, problem: Problem, rng=None):
        require(self.framework)
        super().__init__(problem, rng)
        self._translations: dict = {}

    def function(self, dims: dict) -> Translated:
        key = tuple(sorted((str(k), v) for k, v in dims.items()))
        if key not in self._translations:
            self._translations[key] = translate(self.problem.expr, self.problem.inputs,
                                                self.framework, dims)
        return self._translations[key]

    def _split(self, values: dict, convert):
        names = set(self.problem.parameter_names)
        params = {n: convert(v) for n, v in values.items() if n in names}
        data = {n: convert(v) for n, v in values.items() if n not in names}
        return params, data


class JaxBackend(FrameworkBackend):
    """``jax.value_and_grad`` (eagerly for the comparison, under ``jax.jit`` when timed)."""

    name = framework = "jax"

    def _value_and_grad(self, values, dims, upstream):
        import jax
        import jax.numpy as jnp

        f = self.function(dims)
        params, data = self._split(values, jnp.asarray)
        weights = None if upstream is None else jnp.asarray(upstream)

        def objective(params):
            value = f(**params, **data)
            return _objective_of(value, weights, jnp), value

        return jax.value_and_grad(objective, has_aux=True), params

    def value_and_grad(self, values, dims, upstream):
        function, params = self._value_and_grad(values, dims, upstream)
        (_, value), grads = function(params)
        shapes = self._shapes(values)
        return Result(np.asarray(value, dtype=np.float64),
                      {n: _as_array(g, shapes[n]) for n, g in grads.items()})

    def timer(self, values, dims, upstream):
        import jax

        function, params = self._value_and_grad(values, dims, upstream)
        compiled = jax.jit(function)
        return lambda: jax.block_until_ready(compiled(params))


class TorchBackend(FrameworkBackend):
    """``torch.autograd.grad`` on float64 tensors."""

    name = framework = "torch"

    def _prepare(self, values, dims, upstream):
        import torch

        def tensor(v):
            return torch.as_tensor(np.asarray(v, dtype=np.float64))

        f = self.function(dims)
        params, data = self._split(values, tensor)
        params = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        weights = None if upstream is None else tensor(upstream)

        def run():
            value = torch.as_tensor(f(**params, **data), dtype=torch.float64)
            total = _objective_of(value, weights, torch)
            if total.requires_grad:
                grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
            else:   # the value does not depend on any parameter
                grads = [None] * len(params)
            return value, dict(zip(params, grads, strict=True))

        return run

    def value_and_grad(self, values, dims, upstream):
        value, grads = self._prepare(values, dims, upstream)()
        shapes = self._shapes(values)
        return Result(value.detach().numpy().astype(np.float64),
                      {n: _as_array(0.0 if g is None else g.detach().numpy(), shapes[n])
                       for n, g in grads.items()})

    def timer(self, values, dims, upstream):
        return self._prepare(values, dims, upstream)

    def seconds(self, values, dims, upstream):
        # On one thread, like symgrad's kernels: torch's thread pool spins for small
        # operations, and on a busy machine that costs it 40 times its single-thread time.
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return super().seconds(values, dims, upstream)
        finally:
            torch.set_num_threads(threads)


class AutogradBackend(FrameworkBackend):
    """HIPS ``autograd.value_and_grad`` with respect to the dict of parameters."""

    name = framework = "autograd"

    def _prepare(self, values, dims, upstream):
        import autograd
        import autograd.numpy as anp
        from autograd.tracer import getval

        f = self.function(dims)
        params, data = self._split(values, lambda v: np.asarray(v, dtype=np.float64))
        captured = []

        def objective(params):
            value = f(**params, **data)
            captured.append(value)
            return _objective_of(value, upstream, anp)

        function = autograd.value_and_grad(objective)

        def run():
            captured.clear()
            _, grads = function(params)
            return getval(captured[-1]), grads

        return run

    def value_and_grad(self, values, dims, upstream):
        value, grads = self._prepare(values, dims, upstream)()
        shapes = self._shapes(values)
        return Result(np.asarray(value, dtype=np.float64),
                      {n: _as_array(g, shapes[n]) for n, g in grads.items()})

    def timer(self, values, dims, upstream):
        return self._prepare(values, dims, upstream)


class FiniteDifferences(Backend):
    """Central differences of the model's NumPy translation, with Richardson extrapolation.

    The step for a coordinate x is h = eps^(1/3) max(1, |x|) (the step that balances the
    truncation error, O(h^2), against rounding, O(eps / h)); each quotient divides by the
    step actually taken, (x + h) - (x - h).  With D(h) and D(h/2) the result is
    D(h/2) + (D(h/2) - D(h)) / 3, whose O(h^2) error term cancels; |D(h/2) - D(h)| / 3 (an
    upper estimate of what is left) and the rounding error of the quotients (2 eps |f| / h)
    are added to that entry's tolerance: on models whose higher derivatives are huge
    (cosh(cosh(cosh(y)))) the differences themselves are only that good.

    An elementwise model is differenced on all points at once; a matrix parameter on every
    coordinate when it has at most ``MAX_FD_COORDINATES``, else on that many drawn at random.
    """

    name = "finite-differences"
    framework = "numpy"

    def __init__(self, problem: Problem, rng=None):
        super().__init__(problem, rng)
        self._translations: dict = {}

    def function(self, dims):
        key = tuple(sorted((str(k), v) for k, v in dims.items()))
        if key not in self._translations:
            self._translations[key] = translate(self.problem.expr, self.problem.inputs,
                                                "numpy", dims)
        return self._translations[key]

    def value_and_grad(self, values, dims, upstream):
        f = self.function(dims)
        values = {n: np.asarray(v, dtype=np.float64) for n, v in values.items()}

        def objective(**changed):
            with np.errstate(all="ignore"):
                value = np.asarray(f(**{**values, **changed}), dtype=np.float64)
            if self.problem.elementwise:
                return value
            return np.sum(value if upstream is None else value * upstream)

        with np.errstate(all="ignore"):
            value = np.asarray(f(**values), dtype=np.float64)
        result = Result(value, {})
        for name in self.problem.parameter_names:
            x = values[name]
            if self.problem.elementwise:
                gradient, slack = self._extrapolated(objective, name, x, None)
                result.gradients[name], result.slack[name] = gradient, slack
                continue
            size = x.size
            if size <= MAX_FD_COORDINATES:
                chosen = np.arange(size)
            else:
                chosen = np.sort(self.rng.choice(size, MAX_FD_COORDINATES, replace=False))
                result.notes[name] = f"{MAX_FD_COORDINATES} of {size} coordinates"
            gradient = np.full(x.shape, np.nan)
            slack = np.zeros(x.shape)
            compared = np.zeros(x.shape, dtype=bool)
            for k in chosen:
                index = np.unravel_index(k, x.shape) if x.shape else ()
                gradient[index], slack[index] = self._extrapolated(objective, name, x, index)
                compared[index] = True
            result.gradients[name] = gradient
            result.slack[name] = slack
            result.compared[name] = compared
        for name, slack in result.slack.items():
            scale = np.nanmax(np.abs(result.gradients[name]), initial=1.0)
            if np.max(slack, initial=0.0) > UNCERTAIN * scale:
                # a pass there says little: the differences themselves are that rough
                uncertain = f"differences uncertain by up to {np.max(slack):.1e}"
                result.notes[name] = "; ".join(filter(None, [result.notes.get(name),
                                                             uncertain]))
        return result

    def _extrapolated(self, objective, name, x, index):
        """(Richardson's D(h/2) + (D(h/2) - D(h)) / 3, its error estimate: the size of that
        correction, how far D(h/4) is from D(h/2), and the rounding error of the quotients,
        eps |f| / h each).

        The D(h/4) term is tiny (h^2 times the third derivative) where the differences behave
        as their Taylor series says, and large where they do not: in sin(cosh(cosh(x))) a
        step of 1e-5 turns the sine's argument by half a radian, and D(h) and D(h/2) can
        agree by chance."""
        coarse, rounding = self._difference(objective, name, x, index, 1.0)
        fine, fine_rounding = self._difference(objective, name, x, index, 0.5)
        finer, finer_rounding = self._difference(objective, name, x, index, 0.25)
        with np.errstate(all="ignore"):
            correction = (fine - coarse) / 3
            estimate = (np.abs(correction) + np.abs(finer - fine) + finer_rounding
                        + rounding / 3 + 4 * fine_rounding / 3)
        return fine + correction, np.nan_to_num(estimate, nan=0.0, posinf=0.0)

    @staticmethod
    def _difference(objective, name, x, index, fraction):
        """(f(x + h) - f(x - h)) / ((x + h) - (x - h)) at one coordinate (index) or at every
        point of an elementwise model (index None), with h the step times fraction; and the
        rounding error of that quotient, 2 eps max |f(x +- h)| / ((x + h) - (x - h))."""
        if index is None:
            step = fraction * _FD_STEP * np.maximum(1.0, np.abs(x))
            plus, minus = x + step, x - step
            taken = plus - minus
        else:
            step = fraction * _FD_STEP * max(1.0, abs(float(x[index])))
            plus, minus = x.copy(), x.copy()
            plus[index] = x[index] + step
            minus[index] = x[index] - step
            taken = plus[index] - minus[index]
        with np.errstate(all="ignore"):
            above, below = objective(**{name: plus}), objective(**{name: minus})
            rounding = 2 * _EPS * np.maximum(np.abs(above), np.abs(below)) / np.abs(taken)
            return (above - below) / taken, rounding


class CompiledReference(Backend):
    """symgrad's compiled module: ``f.value_and_grad``, or ``f`` and ``f.vjp``.

    An elementwise model is called with arrays (a scalar as a one-element array), so that
    its Numba loop computes; what Python floats take (a pure-Python twin of the kernel, for
    small models) is checked against that by :class:`CompiledFloats`, and timed.
    """

    name = "symgrad"
    framework = None
    floats = False      # call an elementwise model with Python floats

    def __init__(self, problem: Problem, compiled, rng=None):
        super().__init__(problem, rng)
        self.compiled = compiled

    def _arguments(self, values, dims, floats):
        if self.problem.elementwise and not floats:
            arguments = {n: np.reshape(v, (1,)) if np.ndim(v) == 0 else v
                         for n, v in values.items()}
        else:
            arguments = {n: (float(v) if np.ndim(v) == 0 else v) for n, v in values.items()}
        # a dimension that no input's shape fixes is an argument of the compiled function
        arguments.update({d.name: size for d, size in dims.items()
                          if d.name in self.compiled.inputs})
        return arguments

    def _call(self, arguments, upstream):
        if self.problem.output_shape:
            return self.compiled(**arguments), self.compiled.vjp(upstream, **arguments)
        return self.compiled.value_and_grad(**arguments)

    def value_and_grad(self, values, dims, upstream):
        arguments = self._arguments(values, dims, self.floats)
        value, grads = self._call(arguments, upstream)
        for n in self.problem.parameter_names:
            # a gradient comes back in its parameter's shape as given: one of another shape
            # (a sum where a vector was due) must not be broadcast into agreement below.  A
            # model of scalars may answer one point's gradient as a float (one with a free
            # dimension does): there the number of entries must agree.
            got, given = np.shape(grads[n]), np.shape(arguments[n])
            if got != given and (not self.problem.elementwise
                                 or np.prod(got) != np.prod(given)):
                raise RuntimeError(f"symgrad's gradient of {n!r} has shape {got}, but {n} "
                                   f"was given with shape {given}")
        shape = np.broadcast_shapes(*[np.shape(v) for v in values.values()]) \
            if self.problem.elementwise and values else np.shape(value)
        shapes = self._shapes(values)
        return Result(_as_array(value, shape),
                      {n: _as_array(grads[n], shapes[n]) for n in self.problem.parameter_names})

    def timer(self, values, dims, upstream):
        # timed as it is called: floats where the inputs are scalars
        scalars = all(np.ndim(v) == 0 for v in values.values())
        arguments = self._arguments(values, dims, floats=scalars)
        return lambda: self._call(arguments, upstream)


class CompiledFloats(CompiledReference):
    """The compiled elementwise model called with Python floats: the path (a pure-Python twin
    of the kernel, for small models) that ``f.value_and_grad(w=1.0, ...)`` takes."""

    name = "symgrad-floats"
    floats = True

    def timer(self, values, dims, upstream):
        return None     # the reference is timed on this path already


class SymbolicReference(Backend):
    """symgrad's symbolic gradients (the derivation behind ``sg.grad``) evaluated by the
    NumPy translator: the same formulas the compiled module computes, without compiling."""

    name = "symgrad"
    framework = "numpy"

    def __init__(self, problem: Problem, rng=None):
        from symgrad.derive.reverse import derive, inline_all

        super().__init__(problem, rng)
        self.upstream = None
        if problem.output_shape:
            self.upstream = sp.MatrixSymbol("upstream", *problem.output_shape)
        derivation = derive(problem.expr, problem.wrt, seed=self.upstream)
        self.outputs = [problem.expr] + inline_all(
            derivation, [derivation.gradients[w] for w in problem.wrt])
        self._translations: dict = {}

    def function(self, dims):
        key = tuple(sorted((str(k), v) for k, v in dims.items()))
        if key not in self._translations:
            inputs = self.problem.inputs + ([self.upstream] if self.upstream is not None else [])
            self._translations[key] = TRANSLATORS["numpy"](dims).translate(self.outputs, inputs)
        return self._translations[key]

    def _call(self, values, dims, upstream):
        extra = {} if upstream is None else {"upstream": upstream}
        with np.errstate(all="ignore"):
            return self.function(dims)(**values, **extra)

    def value_and_grad(self, values, dims, upstream):
        value, *grads = self._call(values, dims, upstream)
        shapes = self._shapes(values)
        return Result(np.asarray(value, dtype=np.float64),
                      {n: _as_array(g, shapes[n])
                       for n, g in zip(self.problem.parameter_names, grads, strict=True)})

    def timer(self, values, dims, upstream):
        return lambda: self._call(values, dims, upstream)


# The backends ``against=`` can name, in the order a report lists them.
BACKENDS: dict[str, type[Backend]] = {
    "finite-differences": FiniteDifferences, "jax": JaxBackend, "torch": TorchBackend,
    "autograd": AutogradBackend,
}


def median_time(call: Callable[[], object], repeats: int = 5, budget: float = 0.002) -> float:
    """The median time of one call, in seconds, over ``repeats`` timed loops.

    One call first warms up (JIT compilation, caches); each loop then repeats the call often
    enough to last about ``budget`` seconds, so that fast calls are not lost in timer noise.
    """
    call()
    number = 1
    while True:
        start = _time.perf_counter()
        for _ in range(number):
            call()
        elapsed = _time.perf_counter() - start
        if elapsed >= budget or number >= 10_000:
            break
        number = min(10_000, max(number * 2, int(number * budget / max(elapsed, 1e-9))))
    samples = [elapsed / number]
    for _ in range(repeats - 1):
        start = _time.perf_counter()
        for _ in range(number):
            call()
        samples.append((_time.perf_counter() - start) / number)
    return statistics.median(samples)
