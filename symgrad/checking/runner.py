"""``sg.check``: symgrad's value and gradients against autodiff and finite differences."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

from symgrad.checking.backends import (
    BACKENDS,
    Backend,
    CompiledFloats,
    CompiledReference,
    Problem,
    SymbolicReference,
)
from symgrad.checking.report import TOLERANCES, CheckReport, Comparison, Timing, Tolerance, compare
from symgrad.checking.sampling import (
    bind_dimensions,
    concrete_shape,
    draws,
    normalize,
    shape_symbols,
    sizes_at,
)
from symgrad.nodes import one_call

__all__ = ["check"]

_ALIASES = {"fd": "finite-differences", "finite_differences": "finite-differences"}


@one_call
def check(model_or_expr, wrt: Sequence | None = None,
          against: str | Sequence[str] | None = ("finite-differences",), points: int = 3,
          seed: int = 0, inputs: dict | None = None, time: bool = False, *,
          reference: str = "compiled",
          tolerances: dict[str, tuple[Tolerance, Tolerance]] | None = None,
          order: int = 1) -> CheckReport:
    """Compare symgrad's value and gradients with autodiff frameworks and finite differences.

    ``model_or_expr`` is a :class:`symgrad.Model`, or a SymPy expression with ``wrt`` (the
    parameters; all inputs when omitted), or an ``(expr, wrt)`` pair.

    ``against`` names the backends: ``"finite-differences"`` (alias ``"fd"``), ``"jax"``,
    ``"torch"``, ``"autograd"``, a list of them, or ``"all"`` / ``None`` for every one.  A
    backend named explicitly whose framework is not installed raises ImportError; with
    ``"all"`` it is skipped, and the report says so.

    ``points`` sets of random inputs are drawn from ``numpy.random.default_rng(seed)``, in the
    functions' domain (see :mod:`symgrad.checking.sampling`: symbolic dimensions get sizes
    3, 4, ..., and inputs are drawn again where the value is not finite); ``inputs`` fixes
    some or all of them (name -> value, vectors as (n,) or (n, 1)).  A matrix-valued model is
    checked through its vector-Jacobian product with a random ``upstream``.

    ``reference="compiled"`` checks the Numba module (``sg.compile``; for a scalar model its
    array path is the reference, and what Python floats take is compared with it as
    ``"symgrad-floats"``); ``"symbolic"`` checks the formulas of ``sg.grad`` evaluated with
    NumPy, without compiling.  ``tolerances``
    overrides the defaults of :data:`symgrad.checking.report.TOLERANCES`, per backend:
    ``{"jax": ((rtol, atol) of the value, (rtol, atol) of the gradients)}``.  ``time=True``
    adds the median time of one value-and-gradient call per backend, on the last point.

    The backends see the model after symgrad's stable rewrites (``log(sigmoid(z))`` ->
    ``logsigmoid(z)``, in scalars and inside elementwise Maps), as symgrad computes it;
    where those changed the model, its value as written is compared too, at drawn points
    where it is finite (``"model as written"``, loosely: textbook forms lose digits to
    cancellation).

    ``order=2`` also compares the compiled second order (``reference="compiled"`` only;
    see :mod:`symgrad.checking.second`): for a scalar output ``f.hessian`` and ``f.hvp`` (the
    quantities ``"hessian"`` and ``"hvp"``) against ``jax.hessian`` and jvp of grad,
    ``torch.func.hessian`` and jvp of grad, and central differences of symgrad's gradient;
    for a vector or matrix output ``f.jacobian`` (``"jacobian"``) against ``jax.jacfwd``,
    ``torch.func.jacfwd`` and differences of the value (``tolerances``' gradient tolerance of
    a backend applies to them too).  The report is then ok only if these were compared.

    >>> import sympy as sp
    >>> w, x, y = sp.symbols("w x y")
    >>> report = check((w * x - y) ** 2, [w], against="finite-differences", reference="symbolic")
    >>> report.ok
    True
    """
    if reference not in ("compiled", "symbolic"):
        raise ValueError(f"reference must be 'compiled' or 'symbolic', got {reference!r}")
    if not isinstance(points, int) or points < 1:
        raise ValueError(f"points must be a positive integer, got {points!r}")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if order == 2 and reference != "compiled":
        raise ValueError("order=2 checks the compiled f.hessian, f.hvp and f.jacobian: use "
                         "reference='compiled'")
    problem, compiled = _problem(model_or_expr, wrt)
    names, explicit = _backend_names(against)
    rng = np.random.default_rng(seed)
    report = CheckReport(model=problem.name, wrt=problem.parameter_names, backends=[],
                         points=points, reference=reference)
    backends = _backends(problem, names, explicit, rng, report)
    given = dict(inputs or {})
    if reference == "compiled":
        symgrad = CompiledReference(problem, compiled(), rng)
        if problem.elementwise and all(np.ndim(v) == 0 for v in given.values()):
            # the path that floats take is code of its own (a Python twin): check it too
            backends.append(CompiledFloats(problem, symgrad.compiled, rng))
    else:
        symgrad = SymbolicReference(problem, rng)
    tolerance = _tolerances(tolerances)
    unknown = set(given) - {s.name for s in problem.inputs}
    if unknown:
        raise ValueError(f"inputs {sorted(unknown)} are not inputs of {problem.name} "
                         f"(its inputs: {[s.name for s in problem.inputs]})")
    fixed_dims = bind_dimensions(problem.inputs, given)
    if len(given) == len(problem.inputs):
        points = report.points = 1    # nothing random: one point says it all

    comparisons: dict = {}
    as_written_translations: dict = {}
    for point in range(points):
        dims = sizes_at(point, problem.dims, fixed_dims)
        report.sizes.append({str(d): size for d, size in dims.items()})
        fixed = normalize(problem.inputs, given, dims, problem.elementwise)
        upstream = None
        if problem.output_shape:
            upstream = rng.standard_normal(concrete_shape(
                sp.MatrixSymbol("upstream", *problem.output_shape), dims))
        values, expected = _inputs_in_domain(problem, symgrad, fixed, dims, rng, upstream,
                                             point, report)
        for backend in list(backends):
            try:
                result = backend.value_and_grad(values, dims, upstream)
            except NotImplementedError as error:   # an operation the framework lacks
                if backend.name in explicit:
                    raise
                report.skipped[backend.name] = str(error)
                backends.remove(backend)
                continue
            _compare_point(problem, backend.name, result, expected, tolerance[backend.name],
                           comparisons)
        if problem.as_written is not None and len(fixed) < len(problem.inputs):
            _compare_as_written(problem, values, dims, expected, comparisons, report,
                                as_written_translations)
        if order == 2:
            from symgrad.checking.second import compare_second_order, quantities
            report.second_order = quantities(problem)
            second_tolerances = {name: Tolerance(*pair[1]) for name, pair
                                 in (tolerances or {}).items()}
            compare_second_order(problem, symgrad.compiled, backends, values, dims, rng,
                                 comparisons, {_ALIASES.get(k, k): v for k, v
                                               in second_tolerances.items()}, report.skipped)
    report.backends = [b.name for b in backends]
    if any(c.backend == AS_WRITTEN for c in comparisons.values()):
        report.backends.append(AS_WRITTEN)
    report.comparisons = [c for c in comparisons.values() if c.backend in report.backends]
    if time:
        report.timings = _timings(symgrad, backends, values, dims, upstream)
        untimed = any(b.name == "finite-differences" for b in backends)
        report.notes.append("times are medians on the last point's inputs; torch on one "
                            "thread" + ("; finite differences are not timed" if untimed else ""))
    return report


# Every backend sees the model after symgrad's stable rewrites (log(sigmoid(z)) ->
# logsigmoid(z) ...), as symgrad computes it, so a wrong rewrite would agree with all of them.
# At drawn points symgrad's value is also compared with the model as written (NumPy), where
# that is finite: loosely, since a textbook form loses digits to cancellation (1 - sigmoid(z)
# at z = 25 keeps 5 of them) while a wrong rewrite is off by O(1).
AS_WRITTEN = "model as written"
AS_WRITTEN_TOLERANCE = Tolerance(1e-3, 1e-8)


def _compare_as_written(problem, values, dims, expected, comparisons, report,
                        translations) -> None:
    from symgrad.checking.translate import translate

    key = tuple(sorted((str(k), v) for k, v in dims.items()))
    if key not in translations:
        try:
            translations[key] = translate(problem.as_written, problem.inputs, "numpy", dims)
        except NotImplementedError as error:    # a form the translator lacks
            translations[key] = None
            report.skipped[AS_WRITTEN] = str(error)
    function = translations[key]
    if function is None:
        return
    with np.errstate(all="ignore"):
        raw = np.asarray(function(**values), dtype=np.float64)
    reference = np.asarray(expected.value, dtype=np.float64)
    raw, reference = np.broadcast_arrays(raw, reference)
    # where the textbook form overflows (log(1 - sigmoid(40)) = log(0)) it says nothing
    written = np.where(np.isfinite(raw), raw, reference)
    comparison = comparisons.setdefault((AS_WRITTEN, "value"), Comparison(
        AS_WRITTEN, "value", rtol=AS_WRITTEN_TOLERANCE.rtol, atol=AS_WRITTEN_TOLERANCE.atol,
        note="the value before symgrad's stable rewrites"))
    comparison.add(*compare(written, reference, AS_WRITTEN_TOLERANCE, problem.elementwise))


def _backends(problem, names, explicit, rng, report) -> list[Backend]:
    """The backends that can run here; a missing framework asked for by name raises."""
    backends = []
    for name in names:
        try:
            backends.append(BACKENDS[name](problem, rng))
        except ImportError as error:
            if name in explicit:
                raise
            report.skipped[name] = f"not installed ({error.__cause__ or error})"
    return backends


def _tolerances(overrides) -> dict:
    tolerance = dict(TOLERANCES)
    for name, (value_tolerance, gradient_tolerance) in (overrides or {}).items():
        name = _ALIASES.get(name, name)
        if name not in tolerance:   # a misspelt name would leave the default in force
            raise ValueError(f"tolerances name an unknown backend {name!r}: choose from "
                             f"{', '.join(tolerance)}")
        tolerance[name] = (Tolerance(*value_tolerance), Tolerance(*gradient_tolerance))
    return tolerance


def _compare_point(problem, backend: str, result, expected, tolerance, comparisons) -> None:
    """Fold one point's value and gradients by a backend into the comparisons."""
    value_tolerance, gradient_tolerance = tolerance
    quantities = [("value", result.value, expected.value, value_tolerance, None, None)]
    quantities += [(n, result.gradients[n], expected.gradients[n], gradient_tolerance,
                    result.compared.get(n), result.slack.get(n))
                   for n in problem.parameter_names]
    for quantity, got, want, tol, mask, slack in quantities:
        key = (backend, quantity)
        if key not in comparisons:
            comparisons[key] = Comparison(backend, quantity, rtol=tol.rtol, atol=tol.atol,
                                          note=result.notes.get(quantity, ""))
        elif result.notes.get(quantity) and not comparisons[key].note:
            comparisons[key].note = result.notes[quantity]      # seen at a later point only
        comparisons[key].add(*compare(got, want, tol, problem.elementwise, mask, slack))
        largest = _largest(got, want, mask)
        for caveat, applies in ((_TOO_SMALL, largest is not None and 0.0 < largest <= tol.atol),
                                (_NOT_FINITE, largest is None)):
            # a gradient of -1e-8 against 1e-8 passes an atol of 1e-7, and NaN agrees with
            # NaN: say that nothing else could be told there
            if applies and caveat not in comparisons[key].note:
                comparisons[key].note = "; ".join(filter(None, [comparisons[key].note,
                                                                caveat]))


_TOO_SMALL = ("every entry within atol of 0 at a point: a wrong sign or factor there would "
              "pass; compare with jax or torch, or set a smaller atol")
_NOT_FINITE = "no finite entry at a point (NaN agrees with NaN): nothing compared there"


def _largest(got, want, mask) -> float | None:
    """The largest finite magnitude in two results (the entries of ``mask``); None where
    every entry is NaN or infinite."""
    a, b = np.broadcast_arrays(np.asarray(got, dtype=np.float64),
                               np.asarray(want, dtype=np.float64))
    if mask is not None:
        a, b = a[mask], b[mask]
    both = np.abs(np.concatenate([np.ravel(a), np.ravel(b)]))
    if not both.size:
        return 0.0
    both = both[np.isfinite(both)]
    return float(both.max()) if both.size else None


def _problem(model_or_expr, wrt):
    """(Problem, a function returning the compiled module) from a Model or (expr, wrt)."""
    from symgrad.compiled import _check_wrt, compile, inputs_of
    from symgrad.derive.graph import stabilize_model
    from symgrad.model import Model

    if isinstance(model_or_expr, Model):
        if wrt is not None:
            raise ValueError(f"{model_or_expr!r} carries its own wrt; pass wrt only with an "
                             "expression")
        name, expr, wrt = model_or_expr.name, model_or_expr.output, model_or_expr.wrt

        def compiled():
            return model_or_expr.compiled
    else:
        if isinstance(model_or_expr, tuple) and len(model_or_expr) == 2 and wrt is None:
            model_or_expr, wrt = model_or_expr
        from symgrad.forms import normalize, refuse_explicit_matrix

        refuse_explicit_matrix(model_or_expr, "sg.check")
        name, (expr, wrt) = "model", normalize(model_or_expr, wrt, compiled=True)
        if wrt is None:
            dims = shape_symbols(expr)
            wrt = [s for s in inputs_of(expr, []) if s not in dims]
        wrt = _check_wrt(expr, wrt)

        def compiled():
            return compile(expr, wrt, name=name)
    expr = sp.sympify(expr)
    output_shape = tuple(expr.shape) if isinstance(expr, MatrixExpr) else ()
    if output_shape == (1, 1):      # a 1 x 1 output is a scalar, as sg.compile takes it
        expr, output_shape = MatrixElement(expr, 0, 0), ()
    # The frameworks see the model as written, after symgrad's stable rewrites only (so that
    # log(sigmoid(z)) stays finite for them too, in a scalar or inside an elementwise Map),
    # not its canonical form: canonicalization is then checked along with the rules.
    written = stabilize_model(expr)
    dims = shape_symbols(expr)
    problem = Problem(name=name, expr=written, wrt=list(wrt), output_shape=output_shape,
                      as_written=None if written == expr else expr,
                      inputs=[s for s in inputs_of(expr, wrt) if s not in dims],
                      dims=sorted(dims, key=lambda d: d.name))
    if output_shape and any(s.name == "upstream" for s in problem.inputs):
        raise ValueError("a model with a matrix output cannot have an input named 'upstream'")
    return problem, compiled


def _backend_names(against) -> tuple[list[str], set[str]]:
    """The backends to run, in report order, and those named explicitly."""
    if against is None:
        against = "all"
    if isinstance(against, str):
        against = [against]
    explicit = set()
    for name in against:
        name = _ALIASES.get(name, name)
        if name == "all":
            continue
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}: choose from "
                             f"{', '.join(BACKENDS)} or 'all'")
        explicit.add(name)
    everything = any(name == "all" for name in against)
    names = [n for n in BACKENDS if everything or n in explicit]
    if not names:   # symgrad against its own float path alone would check nothing
        raise ValueError(f"against names no backend: choose from {', '.join(BACKENDS)} "
                         "or 'all'")
    return names, explicit


def _inputs_in_domain(problem, symgrad, fixed, dims, rng, upstream, point, report):
    """Draw inputs until symgrad's value and gradients are finite (see sampling.py)."""
    if len(fixed) == len(problem.inputs):
        return fixed, symgrad.value_and_grad(fixed, dims, upstream)
    tried, error = 0, None
    for distribution, values in draws(problem.inputs, fixed, dims, rng, problem.elementwise):
        tried += 1
        try:
            expected = symgrad.value_and_grad(values, dims, upstream)
        except (ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
            error = exc
            continue
        if all(np.all(np.isfinite(a)) for a in [expected.value, *expected.gradients.values()]):
            if tried > 1:
                report.notes.append(f"point {point + 1}: inputs drawn {tried} times to keep "
                                    f"the value and gradients finite; used {distribution}")
            return values, expected
    # an error symgrad raised at every draw is told, not taken for the model's domain
    raised = "" if error is None else (f" (the last draw raised {type(error).__name__}: "
                                       f"{' '.join(str(error).split())})")
    raise ValueError(f"{problem.name}: no inputs with a finite value and gradients after "
                     f"{tried} draws{raised}; pass inputs={{name: value}} in the model's "
                     "domain")


def _timings(symgrad, backends, values, dims, upstream) -> list[Timing]:
    reference = symgrad.seconds(values, dims, upstream)
    timings = [Timing("symgrad", reference, 1.0)]
    for backend in backends:
        seconds = backend.seconds(values, dims, upstream)
        if seconds is not None:
            timings.append(Timing(backend.name, seconds, seconds / reference))
    return timings
