"""``symgrad demo``: the seed models derived, shown, compiled, checked and timed.

The models come from the repository's ``examples/`` folder (the seed files first); when
symgrad is installed without that folder, from :func:`builtin_models`, the same four seed
models written here once more.  For each model the demo prints the derived formulas,
compiles (a progress line on stderr while Numba works, when stderr is a terminal), checks
the gradients against central differences (``sg.check``), and times the compiled
value-and-gradient against a hand-written NumPy value-and-gradient (:data:`NUMPY_BASELINES`).

>>> import sympy as sp, symgrad as sg
>>> w, x, y = sp.symbols("w x y")
>>> inputs = sample_inputs(sg.Model("lr", (w * x - y) ** 2, wrt=[w]), seed=0)
>>> sorted(inputs), type(inputs["w"]).__name__
(['w', 'x', 'y'], 'float')
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symgrad.checking import check
from symgrad.checking.backends import median_time
from symgrad.generation import has_scalar_output, load_models
from symgrad.model import Model
from symgrad.nodes import replaced

__all__ = ["run_demo", "demo_models", "builtin_models", "sample_inputs", "NUMPY_BASELINES",
           "DEMO_SIZES"]

# The seed models (examples/), in the order the lectures build them up.
SEED_FILES = ("linear_regression", "branching_graph", "window_classifier", "two_layer_net",
              "logistic_regression")

# Concrete sizes for symbolic dimensions (by model, then by dimension name), chosen like
# the benchmarks; a scalar model is timed over POINTS points at once.
DEMO_SIZES: dict[str, dict[str, int]] = {
    "linear_regression_batched": {"n": 1024, "d": 16},
    "window_classifier_batched": {"m": 256},
    "two_layer_net": {"n_x": 64, "n_h": 128, "m": 1024},
    "softmax_regression": {"m": 1024},
}
DEFAULT_SIZE = 64
POINTS = 100_000


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------
def examples_folder() -> Path | None:
    """The repository's examples/ folder, if symgrad runs from a checkout that has one."""
    folder = Path(__file__).resolve().parent.parent / "examples"
    return folder if any(folder.glob("*.py")) else None


def demo_models(files: Sequence[str | Path] | None = None) -> list[tuple[Model, str]]:
    """``[(model, where it came from)]``: the models of ``files``, else of examples/ (seed
    files first), else the built-in seed models."""
    if files is None:
        folder = examples_folder()
        if folder is None:
            return [(m, "built in") for m in builtin_models()]
        order = {name: k for k, name in enumerate(SEED_FILES)}
        files = sorted(folder.glob("*.py"), key=lambda p: (order.get(p.stem, len(order)),
                                                           p.stem))
    out = []
    for file in files:
        shown = _relative(Path(file))
        out += [(m, shown) for m in load_models(file)]
    return out


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def builtin_models() -> list[Model]:
    """The four seed models, for an installed symgrad without examples/.

    >>> [m.name for m in builtin_models()]
    ['linear_regression', 'branching_graph', 'window_classifier', 'two_layer_net']
    """
    import symgrad as sg

    w, x, y, z = sp.symbols("w x y z")
    linear_regression = Model("linear_regression", (w * x - y) ** 2, wrt=[w])
    branching_graph = Model("branching_graph", (x + y) * sp.Max(y, z), wrt=[x, y, z])

    d, H = 50, 100
    xv, W = sg.vector("x", 5 * d), sg.matrix("W", H, 5 * d)
    b, u = sg.vector("b", H), sg.vector("u", H)
    window_classifier = Model("window_classifier", sg.dot(u, sg.sigmoid(W @ xv + b)),
                              wrt=[W, b, u, xv])

    n_x, n_h, m = sp.symbols("n_x n_h m", integer=True, positive=True)
    X, Y = sg.matrix("X", n_x, m), sg.matrix("Y", 1, m)
    W1, b1 = sg.matrix("W1", n_h, n_x), sg.vector("b1", n_h)
    W2, b2 = sg.matrix("W2", 1, n_h), sg.vector("b2", 1)
    A1 = sg.name("A1", sg.tanh(sg.name("Z1", W1 @ X + sg.broadcast(b1, (n_h, m)))))
    A2 = sg.name("A2", sg.sigmoid(sg.name("Z2", W2 @ A1 + sg.broadcast(b2, (1, m)))))
    ones = sp.OneMatrix(1, m)
    cost = -(1 / m) * sg.sum(sg.hadamard(Y, sg.log(A2))
                             + sg.hadamard(ones - Y, sg.log(ones - A2)))
    two_layer_net = Model("two_layer_net", cost, wrt=[W1, b1, W2, b2])
    return [linear_regression, branching_graph, window_classifier, two_layer_net]


def sample_inputs(model: Model, sizes: dict[str, int] | None = None, default_size: int = 3,
                  points: int | None = None, seed: int = 0) -> dict:
    """Random inputs for ``model``, by name: a float per scalar (an array of ``points``
    values if given), a float64 array per matrix symbol, 1-D for a column vector.  Symbolic
    dimensions take their size from ``sizes`` (by name), else ``default_size``.  Parameter
    matrices are scaled by 1/sqrt(columns), as in the usual initialisations.

    >>> import symgrad as sg
    >>> n = sp.Symbol("n")
    >>> m = Model("norm", sg.dot(sg.vector("v", n), sg.vector("v", n)), wrt=[sg.vector("v", n)])
    >>> sample_inputs(m, {"n": 5})["v"].shape
    (5,)
    """
    rng = np.random.default_rng(seed)
    sizes = sizes or {}
    values = {}
    for symbol in model.inputs:
        if not isinstance(symbol, MatrixExpr):
            values[symbol.name] = (rng.standard_normal(points) if points
                                   else float(rng.standard_normal()))
            continue
        shape = tuple(_size(extent, sizes, default_size) for extent in symbol.shape)
        array = rng.standard_normal(shape)
        if symbol in model.wrt and shape[1] > 1:
            array /= math.sqrt(shape[1])
        values[symbol.name] = array[:, 0].copy() if shape[1] == 1 else array
    return values


def _size(extent, sizes: dict[str, int], default_size: int) -> int:
    extent = sp.sympify(extent)
    bound = {d: sizes.get(d.name, default_size) for d in extent.free_symbols}
    return int(replaced(extent, bound))


# ------------------------------------------------------------------------------------------
# NumPy baselines: the textbook value-and-gradient of each seed model, by hand
# ------------------------------------------------------------------------------------------
def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))    # = 1 / (1 + exp(-z)), without overflow


def _linear_regression(w, x, y):
    s = w * x - y
    return s**2, {"w": 2 * s * x}


def _linear_regression_batched(w, X, t):
    residual = X @ w - t
    n = len(t)
    return residual @ residual / n, {"w": 2 * (X.T @ residual) / n}


def _branching_graph(x, y, z):
    a, b = x + y, np.maximum(y, z)
    y_wins = np.greater(y, z).astype(float)   # max sends the gradient to its larger input
    return a * b, {"x": b, "y": b + a * y_wins, "z": a * (1 - y_wins)}


def _window_classifier(W, b, u, x):
    h = _sigmoid(W @ x + b)
    delta = u * h * (1 - h)
    return u @ h, {"W": np.outer(delta, x), "b": delta, "u": h, "x": W.T @ delta}


def _window_classifier_batched(W, b, u, X):
    H = _sigmoid(W @ X + b[:, None])
    delta = u[:, None] * H * (1 - H)
    return u @ H.sum(axis=1), {"W": delta @ X.T, "b": delta.sum(axis=1),
                               "u": H.sum(axis=1), "X": W.T @ delta}


def _two_layer_net(W1, b1, W2, b2, X, Y):
    m = X.shape[1]
    A1 = np.tanh(W1 @ X + b1[:, None])
    Z2 = W2 @ A1 + b2[:, None]
    cost = np.mean(Y * np.logaddexp(0, -Z2) + (1 - Y) * np.logaddexp(0, Z2))
    dZ2 = (_sigmoid(Z2) - Y) / m
    dZ1 = (W2.T @ dZ2) * (1 - A1**2)
    return cost, {"W1": dZ1 @ X.T, "b1": dZ1.sum(axis=1), "W2": dZ2 @ A1.T,
                  "b2": dZ2.sum(axis=1)}


def _logistic_regression(w, b, x, y):
    z = w @ x + b
    loss = y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)
    dz = _sigmoid(z) - y
    return loss, {"w": x * dz, "b": dz}


def _softmax_regression(W, b, X, Y):
    m = X.shape[1]
    Z = W @ X + b[:, None]
    top = Z.max(axis=0)
    logsumexp = top + np.log(np.exp(Z - top).sum(axis=0))
    P = np.exp(Z - logsumexp)
    dZ = (P * Y.sum(axis=0) - Y) / m
    return np.sum(Y * (logsumexp - Z)) / m, {"W": dZ @ X.T, "b": dZ.sum(axis=1)}


NUMPY_BASELINES: dict[str, Callable] = {
    "linear_regression": _linear_regression,
    "linear_regression_batched": _linear_regression_batched,
    "branching_graph": _branching_graph,
    "window_classifier": _window_classifier,
    "window_classifier_batched": _window_classifier_batched,
    "two_layer_net": _two_layer_net,
    "logistic_regression": _logistic_regression,
    "softmax_regression": _softmax_regression,
}


# ------------------------------------------------------------------------------------------
# Progress, checking, timing
# ------------------------------------------------------------------------------------------
class Progress:
    """``with Progress("compiling m"):`` shows ``compiling m ... 1.3 s`` on stderr, updated
    from a thread while the block runs; quiet unless stderr is a terminal."""

    _FRAMES = "|/-\\"

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.active = bool(getattr(self.stream, "isatty", lambda: False)())
        self._done = threading.Event()
        self._thread = None

    def __enter__(self) -> Progress:
        self.start = time.perf_counter()
        if self.active:
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        return self

    def _spin(self) -> None:
        frame = 0
        while not self._done.wait(0.1):
            elapsed = time.perf_counter() - self.start
            self.stream.write(f"\r  {self._FRAMES[frame % 4]} {self.label} ... {elapsed:4.1f} s")
            self.stream.flush()
            frame += 1

    def __exit__(self, *exc) -> None:
        self.elapsed = time.perf_counter() - self.start
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self.stream.write("\r\033[K")     # clear the progress line
            self.stream.flush()


def _numba_cache_state(module) -> str:
    """Whether the module's Numba functions came from the on-disk cache or were compiled."""
    misses = hits = 0
    for value in vars(module).values():
        stats = getattr(value, "stats", None)
        if stats is not None and hasattr(stats, "cache_misses"):
            misses += sum(stats.cache_misses.values())
            hits += sum(stats.cache_hits.values())
    return "loaded from Numba's cache" if hits and not misses else "compiled"


def _call(function, inputs: dict):
    """(value, gradients) of a scalar model, or (value, vjp with ones) of a matrix model."""
    if hasattr(function, "value_and_grad"):
        return function.value_and_grad(**inputs)
    value = function.forward(**inputs)
    return value, function.vjp(np.ones(np.shape(value)), **inputs)


def _check_line(model: Model) -> tuple[str, bool]:
    """The demo's line for ``sg.check`` against central differences, and whether it agrees."""
    try:
        report = check(model, against=["finite-differences"], points=3, seed=0)
    except Exception as exc:     # the demo goes on with the next model, and fails at the end
        return f"finite differences (sg.check): raised {type(exc).__name__}: {exc}", False
    if report.ok:
        return "finite differences (sg.check): ok", True
    table = "\n".join("    " + line for line in str(report).splitlines())
    return f"finite differences (sg.check): DISAGREES\n{table}", False


def _seconds(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:.1f} µs"
    if t < 1:
        return f"{t * 1e3:.2f} ms"
    return f"{t:.2f} s"


def _agrees(ours, theirs) -> bool:
    value, grads = ours
    ref_value, ref_grads = theirs
    if not np.allclose(value, ref_value, rtol=1e-7, atol=1e-9):
        return False
    return all(np.allclose(np.reshape(ref_grads[k], np.shape(grads[k])), grads[k],
                           rtol=1e-6, atol=1e-9) for k in grads)


def _sizes_text(model: Model, inputs: dict) -> str:
    if not any(isinstance(s, MatrixExpr) for s in model.inputs):
        return f"{np.size(next(iter(inputs.values())))} points"
    return ", ".join(f"{k} {'x'.join(map(str, np.shape(v))) or 'scalar'}"
                     for k, v in inputs.items())


# ------------------------------------------------------------------------------------------
# The demo
# ------------------------------------------------------------------------------------------
def run_demo(files: Sequence[str | Path] | None = None, out=None, err=None) -> int:
    """Show, compile, check and time each demo model; print the report to ``out`` (progress
    to ``err``).  Returns 0, or 1 if a check disagrees.

    >>> run_demo(["examples/branching_graph.py"])  # doctest: +SKIP
    == branching_graph  (examples/branching_graph.py)
    ...
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    started = time.perf_counter()
    rows = [_demo_one(model, where, out, err) for model, where in demo_models(files)]

    header = ["model", "check", "symgrad", "NumPy", "speed-up"]
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    print("Summary (median time per call of value and gradient, or forward and vjp; "
          "speed-up = NumPy / symgrad):", file=out)
    for row in [header, *rows]:
        cells = [c.ljust(w) if k < 2 else c.rjust(w)
                 for k, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  " + "  ".join(cells), file=out)
    print(f"\n{len(rows)} models in {time.perf_counter() - started:.1f} s", file=out)
    return 0 if all(row[1] == "ok" for row in rows) else 1


def _demo_one(model: Model, where: str, out, err) -> list[str]:
    """One model's section of the report; returns its summary row."""
    scalar = has_scalar_output(model)
    print(f"== {model.name}  ({where})", file=out)
    print(f"   {model.name} = {_formula(model.output)}", file=out)
    if scalar:
        for line in model.show().splitlines():
            print(f"   {line}", file=out)

    elementwise = not any(isinstance(s, MatrixExpr) for s in model.inputs)
    inputs = sample_inputs(model, DEMO_SIZES.get(model.name), default_size=DEFAULT_SIZE,
                           points=POINTS if elementwise else None)
    with Progress(f"compiling {model.name}", err) as progress:
        compiled = model.compiled
        ours = _call(compiled, inputs)      # Numba compiles on the first call
        if elementwise:                     # the check calls the single-point kernels too
            _call(compiled, sample_inputs(model))
    print(f"   {_numba_cache_state(compiled.module)} in {progress.elapsed:.2f} s; "
          f"operations after CSE: {_op_counts(compiled.op_counts)}", file=out)

    line, ok = _check_line(model)
    print(f"   {line}", file=out)

    what = "value and gradient" if scalar else "forward and vjp"
    ours_time = median_time(lambda: _call(compiled, inputs), repeats=7, budget=0.03)
    row = [model.name, "ok" if ok else "FAILED", _seconds(ours_time), "-", "-"]
    baseline = NUMPY_BASELINES.get(model.name)
    timing = f"{what}: symgrad {_seconds(ours_time)}"
    if baseline is None:
        timing += " (no NumPy baseline)"
    elif not _baseline_agrees(baseline, inputs, ours):
        timing += " (the NumPy baseline does not compute this model; not timed)"
    else:
        numpy_time = median_time(lambda: baseline(**inputs), repeats=7, budget=0.03)
        ratio = numpy_time / ours_time
        timing += f", NumPy {_seconds(numpy_time)}: {_speedup(ratio)}"
        row[3:] = [_seconds(numpy_time), f"{ratio:.1f}x"]
    print(f"   {timing}  [{_sizes_text(model, inputs)}]\n", file=out)
    return row


def _baseline_agrees(baseline: Callable, inputs: dict, ours) -> bool:
    """Whether the baseline computes what the model does (it is looked up by the model's
    name, so a model file may well have a different model under that name)."""
    try:
        return _agrees(ours, baseline(**inputs))
    except Exception:
        return False


def _formula(expr) -> str:
    from symgrad.codegen.docstring import FormulaPrinter

    return FormulaPrinter().doprint(expr)


def _op_counts(counts: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())


def _speedup(ratio: float) -> str:
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
