"""The cost of one call of a scalar model with many inputs, on floats.

    python -m bench.many_inputs [--sizes 16,50,200,1000] [--repeats 9]

The model is a chain over n inputs, ``sum_i (x_i - 1)^2 x_(i+1)`` (indices mod n), with
the first five inputs differentiated (``bench.many_inputs.chain``).  Per size, in one
process, after a warm-up call, each call below is timed by ``timeit`` in loops of at least
0.05 s, the loops of all calls interleaved, ``--repeats`` times; the table gives the median
microseconds per call (min-max in brackets):

* ``f(**inputs)``: the model by keyword, from a dict of floats (``f.forward`` itself),
  whose keys are interned strings, as a call's literal keywords (``f(x0=0.5, ...)``) and a
  dict written with literal keys are;
* ``f(**built)``: the same with keys built at run time (``{s.name: ...}``), which CPython
  compares with the parameter names character by character rather than by identity;
* ``f.value_and_grad(**inputs)``: value and gradients by keyword;
* ``value_and_grad_positional(*values)``: the generated module's positional entry;
* ``receive **kw``: a Python function that takes the n keywords and returns: what CPython
  alone costs any Python function called with n keywords (a floor of the keyword call);
* ``point kernel(*values)``: the compiled Numba kernel of the value, called with n
  positional floats (Numba's dispatch, the arithmetic and the boxing of the result).

A model of 2,000 operations or more (here the one of 1,000 inputs, about 4,000) answers its
first calls with the pure-Python twin of its kernel until they have cost about what
compiling would (README, "Scalar models take any number of inputs"): its row times the twin
in the columns through ``f`` and the module, the Numba kernel only in the last column.

Writes MANY_INPUTS.md (the last run) and MANY_INPUTS.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import timeit
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "MANY_INPUTS.json"
REPORT = HERE / "MANY_INPUTS.md"
LOOP_SECONDS = 0.05


def chain(n: int):
    """(expr, wrt, inputs): the chain model over n inputs and a point of floats."""
    import sympy as sp

    x = sp.symbols(f"x0:{n}", real=True)
    expr = sp.Add(*[(x[i] - 1) ** 2 * x[(i + 1) % n] for i in range(n)])
    return expr, list(x[:5]), {s.name: 0.5 + 0.001 * i for i, s in enumerate(x)}


def _receive(**inputs):
    return inputs


def measure(n: int, repeats: int) -> dict:
    """Median, min and max microseconds per call of each call, for the model of n inputs."""
    import symgrad as sg

    expr, wrt, built = chain(n)
    inputs = {sys.intern(name): value for name, value in built.items()}
    f = sg.compile(expr, wrt)
    module = f.module
    values = [inputs[name] for name in module.INPUTS]
    calls = {
        "f(**inputs)": lambda: f(**inputs),
        "f(**built)": lambda: f(**built),
        "f.value_and_grad(**inputs)": lambda: f.value_and_grad(**inputs),
        "value_and_grad_positional(*values)":
            lambda: module.value_and_grad_positional(*values),
        "receive **kw": lambda: _receive(**inputs),
        "point kernel(*values)": lambda: module._forward_point(*values),
    }
    assert f(**inputs) == module._forward_point(*values)     # the same model, warmed up
    module.value_and_grad_positional(*values)
    timers = {label: timeit.Timer(call) for label, call in calls.items()}
    numbers = {}
    for label, timer in timers.items():
        number = 1
        while timer.timeit(number) < LOOP_SECONDS:
            number *= 2
        numbers[label] = number
    samples: dict = {label: [] for label in calls}
    for _ in range(repeats):
        for label, timer in timers.items():        # interleaved: load changes hit all alike
            samples[label].append(timer.timeit(numbers[label]) / numbers[label] * 1e6)
    return {label: {"median": statistics.median(s), "min": min(s), "max": max(s)}
            for label, s in samples.items()}


def render(run: dict) -> str:
    labels = list(next(iter(run["results"].values())))
    lines = ["# Calls of a scalar model with many inputs", "",
             f"{run['date']}, `{run['command']}`, {run['machine']}. Median microseconds per "
             "call on floats (min-max over the repeats); see bench/many_inputs.py for what "
             "each column calls. A model of 2,000 operations or more (1,000 inputs) answers "
             "through `f` and the module with its pure-Python twin until that has cost about "
             "what compiling would; the last column is its Numba kernel.", "",
             "| inputs | " + " | ".join(f"`{label}`" for label in labels) + " |",
             "|---:|" + "---:|" * len(labels)]
    for n, results in run["results"].items():
        cells = [f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"
                 for r in (results[label] for label in labels)]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,50,200,1000")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    run = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "python -m bench.many_inputs"
                      + (f" --sizes {args.sizes}" if argv else ""),
           "machine": f"{platform.processor() or platform.machine()}, Python "
                      f"{platform.python_version()}",
           "results": {}}
    for n in sizes:
        run["results"][str(n)] = measure(n, args.repeats)
        print(n, {k: round(v["median"], 2) for k, v in run["results"][str(n)].items()},
              flush=True)
    RESULTS.write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
    REPORT.write_text(render(run), encoding="utf-8")


if __name__ == "__main__":
    main()
