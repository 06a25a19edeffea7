"""What ``sg.check`` found: errors per backend and quantity, tolerances, timings.

Errors are measured against symgrad's result (the reference).  For each quantity (the value,
each parameter's gradient) and backend, over all points:

* the absolute error is the largest |other - symgrad| over the entries;
* the relative error divides each entry's absolute error by its scale: for a matrix, the
  largest magnitude in either result (the array is one mathematical object, and a small
  entry that is the difference of large terms carries their rounding error); for an
  elementwise scalar model, the larger of the two entries themselves (each is its own point);
* a comparison passes when every entry's error is at most ``atol + rtol * scale``, plus,
  for finite differences, the entry's estimated truncation error (see
  :class:`~symgrad.checking.backends.FiniteDifferences`).

Entries that are NaN in both results, or the same infinity, agree; a NaN or infinity on one
side only is an infinite error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["Tolerance", "TOLERANCES", "Comparison", "Timing", "CheckReport", "compare"]


@dataclass(frozen=True)
class Tolerance:
    """Relative and absolute tolerance of one comparison (see the module docstring).

    >>> Tolerance(*Tolerance(1e-7, 1e-10))
    Tolerance(rtol=1e-07, atol=1e-10)
    """

    rtol: float
    atol: float

    def __iter__(self):
        return iter((self.rtol, self.atol))

    def __str__(self) -> str:
        return f"{self.rtol:.0e}, {self.atol:.0e}"


# Default tolerances, (value, gradient) per backend.  Autodiff computes the same floating-point
# operations in another order (and symgrad's fast math functions are within a few ulp), so a
# tight bound.  Central differences are about 1e-10 relative on smooth models, but they
# divide the model's own rounding error by the step: a model evaluated to 1e-10 relative
# (a determinant of a nearly singular matrix) gives differences good to 1e-5 only, hence a
# looser bound, still far below the O(1) error of a wrong rule.
TOLERANCES: dict[str, tuple[Tolerance, Tolerance]] = {
    "finite-differences": (Tolerance(1e-7, 1e-10), Tolerance(1e-4, 1e-7)),
    "jax": (Tolerance(1e-7, 1e-10), Tolerance(1e-7, 1e-10)),
    "torch": (Tolerance(1e-7, 1e-10), Tolerance(1e-7, 1e-10)),
    "autograd": (Tolerance(1e-7, 1e-10), Tolerance(1e-7, 1e-10)),
    "symgrad-floats": (Tolerance(1e-7, 1e-10), Tolerance(1e-7, 1e-10)),
}

# Backends that compare symgrad with itself (the Python-float path against the compiled
# kernel): they may fail a report, but they alone do not make a quantity compared.
SELF_COMPARISONS = frozenset({"symgrad-floats"})


def compare(other, reference, tolerance: Tolerance, elementwise: bool = False,
            mask=None, slack=None) -> tuple[float, float, bool]:
    """(absolute error, relative error, passed) of ``other`` against ``reference``.

    ``mask`` selects the entries to compare; ``slack`` adds an allowance per entry (the
    estimated error of finite differences).

    >>> compare(np.array([1.0, 2.0]), np.array([1.0, 2.5]), Tolerance(1e-9, 0.0))
    (0.5, 0.2, False)
    """
    a, b, allowance = np.broadcast_arrays(np.asarray(other, dtype=np.float64),
                                          np.asarray(reference, dtype=np.float64),
                                          np.asarray(0.0 if slack is None else slack))
    if mask is not None:
        a, b, allowance = a[mask], b[mask], allowance[mask]
    if a.size == 0:
        return 0.0, 0.0, True
    agree = (np.isnan(a) & np.isnan(b)) | (a == b)
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.where(agree, 0.0, np.abs(a - b))
    error = np.where(np.isnan(error), np.inf, error)
    magnitude = np.maximum(np.abs(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)),
                           np.abs(np.nan_to_num(b, nan=0.0, posinf=0.0, neginf=0.0)))
    scale = magnitude if elementwise else np.full(a.shape, magnitude.max())
    passed = bool(np.all(error <= tolerance.atol + tolerance.rtol * scale + allowance))
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(error == 0.0, 0.0, error / scale)
    return float(error.max()), float(np.nan_to_num(relative, nan=np.inf).max()), passed


@dataclass
class Comparison:
    """One backend against symgrad on one quantity ("value" or a parameter's name)."""

    backend: str
    quantity: str
    abs_error: float = 0.0
    rel_error: float = 0.0
    rtol: float = 0.0
    atol: float = 0.0
    passed: bool = True
    note: str = ""

    def add(self, abs_error: float, rel_error: float, passed: bool) -> None:
        """Fold in one point's result (largest errors; passed at every point)."""
        self.abs_error = max(self.abs_error, float(abs_error))
        self.rel_error = max(self.rel_error, float(rel_error))
        self.passed = self.passed and passed


@dataclass
class Timing:
    """Median seconds of one value-and-gradient call, and the ratio to symgrad's."""

    backend: str
    seconds: float
    ratio: float


@dataclass
class CheckReport:
    """The result of :func:`symgrad.check`: ``report.ok``, ``print(report)``,
    ``report.to_dict()``.

    A report is ok only when every comparison passed and the value and every parameter were
    compared at least once: a check whose backends were all skipped proves nothing.

    >>> report = CheckReport(model="m", wrt=["w"], backends=["jax"], points=1)
    >>> report.ok, report.uncompared
    (False, ['value', 'w'])
    """

    model: str
    wrt: list[str]
    backends: list[str]
    points: int
    reference: str = "compiled"
    sizes: list[dict] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: list[Timing] | None = None
    second_order: list[str] = field(default_factory=list)   # with order=2: "hessian", ...

    @property
    def uncompared(self) -> list[str]:
        """The value, the parameters (and with ``order=2`` the second-order quantities) that
        no backend compared (all skipped, or none; symgrad's float path against its kernel
        does not count: it is symgrad on both sides)."""
        compared = {c.quantity for c in self.comparisons if c.backend not in SELF_COMPARISONS}
        return [q for q in ["value", *self.wrt, *self.second_order] if q not in compared]

    @property
    def ok(self) -> bool:
        """Whether every comparison passed and nothing went uncompared."""
        return all(c.passed for c in self.comparisons) and not self.uncompared

    @property
    def failures(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.passed]

    def comparison(self, backend: str, quantity: str) -> Comparison:
        """The comparison of one backend on one quantity."""
        for c in self.comparisons:
            if c.backend == backend and c.quantity == quantity:
                return c
        raise KeyError(f"no comparison of {quantity!r} by {backend!r} in this report")

    def to_dict(self) -> dict:
        """Plain data (str, float, bool, list, dict) for machines: strict JSON.

        A number that is not finite (an error of ``inf`` where one side is NaN and the other
        not, an infinite tolerance) is the string ``"inf"``, ``"-inf"`` or ``"nan"``, as the
        printed table writes it: JSON has no such numbers (Python's ``json`` would write
        ``Infinity``, which strict parsers refuse), and ``float(...)`` reads the strings back.

        >>> report = CheckReport(model="m", wrt=[], backends=["jax"], points=1,
        ...                      comparisons=[Comparison("jax", "value", math.inf, math.nan)])
        >>> c = report.to_dict()["comparisons"][0]
        >>> c["abs_error"], c["rel_error"], c["rtol"]
        ('inf', 'nan', 0.0)
        """
        return _finite_or_text({
            "model": self.model,
            "ok": self.ok,
            "wrt": list(self.wrt),
            "backends": list(self.backends),
            "reference": self.reference,
            "points": self.points,
            "sizes": [dict(s) for s in self.sizes],
            "comparisons": [asdict(c) for c in self.comparisons],
            "skipped": dict(self.skipped),
            "uncompared": self.uncompared,
            "second_order": list(self.second_order),
            "notes": list(self.notes),
            "timings": None if self.timings is None else [asdict(t) for t in self.timings],
        })

    def __str__(self) -> str:
        sizes = ""
        if self.sizes and any(self.sizes):
            sizes = "; sizes " + " / ".join(", ".join(f"{k}={v}" for k, v in s.items())
                                            for s in self.sizes)
        lines = [f"sg.check {self.model}: {self.points} point{'s' if self.points != 1 else ''}"
                 f"{sizes}; reference symgrad ({self.reference})"]
        header = ("backend", "quantity", "max abs err", "max rel err", "rtol, atol", "result")
        rows = [(c.backend, c.quantity, _number(c.abs_error), _number(c.rel_error),
                 str(Tolerance(c.rtol, c.atol)),
                 ("ok" if c.passed else "FAIL") + (f"  ({c.note})" if c.note else ""))
                for c in self.comparisons]
        widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header) - 1)]
        for row in [header, *rows]:
            cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)] + [row[-1]]
            lines.append("  ".join(cells).rstrip())
        if self.timings:
            lines.append("")
            lines.append("time of value and gradient (median per call)")
            width = max(len(t.backend) for t in self.timings)
            for t in self.timings:
                lines.append(f"{t.backend.ljust(width)}  {_duration(t.seconds):>10}  "
                             f"{t.ratio:8.2f}x symgrad")
        for backend, reason in self.skipped.items():
            lines.append(f"skipped {backend}: {reason}")
        lines.extend(self.notes)
        failed = len(self.failures)
        if self.uncompared:
            lines.append(f"NOT OK: nothing compared {', '.join(self.uncompared)} (every "
                         "backend that could was skipped)")
        lines.append("OK" if not failed and not self.uncompared else
                     f"FAILED: {failed} of {len(self.comparisons)} comparisons" if failed else
                     "NOT OK")
        return "\n".join(lines)


def _finite_or_text(data):
    """``data`` with every float that is not finite written as ``"inf"``, ``"-inf"`` or
    ``"nan"`` (see :meth:`CheckReport.to_dict`).

    >>> _finite_or_text({"a": [1.5, -math.inf], "b": (math.nan, True, 2)})
    {'a': [1.5, '-inf'], 'b': ['nan', True, 2]}
    """
    if isinstance(data, dict):
        return {k: _finite_or_text(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite_or_text(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return "nan" if math.isnan(data) else ("inf" if data > 0 else "-inf")
    return data


def _number(x: float) -> str:
    return "inf" if math.isinf(x) else ("nan" if math.isnan(x) else f"{x:.2e}")


def _duration(seconds: float) -> str:
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= factor:
            return f"{seconds / factor:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"
