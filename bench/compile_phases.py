"""Where ``sg.compile`` spends its time on the seed models: symgrad's phases, then Numba.

    python -m bench.compile_phases [--label after] [--render]

Each model (``symgrad demo``'s list: examples/, seed files first) is compiled in a fresh
process with a fresh symgrad cache folder (cold caches, one thread), and each phase is
timed in CPU seconds of that process.  The phases are timed
from inside by wrapping the functions ``symgrad.compiled`` calls:

* ``derive``: reverse mode (``derive``), after the model's forms are normalised;
* ``lower``: lowering to programs, CSE and fusion (``lower``, ``fuse``);
* ``docstring``: the module docstring's formulas (``module_docstring``);
* ``source``: the module text (``module_source``: runtime, kernels, wrappers);
* ``other``: the rest of ``sg.compile`` before Numba (checks, renaming, writing, importing
  the module; numba itself is imported before the clock starts);
* ``numba``: the first ``value_and_grad`` (or ``forward`` and ``vjp``) call, where Numba
  compiles the kernels (on arrays of 4 points for a scalar model, whose floats run its
  Python twin).

Results are kept per label in COMPILE_PHASES.json and shown in COMPILE_PHASES.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "COMPILE_PHASES.json"
REPORT = HERE / "COMPILE_PHASES.md"
PHASES = ("derive", "lower", "docstring", "source", "other", "numba")
# CPU seconds of the process: symgrad and Numba compile on one thread, and CPU time is what
# a shared machine's other jobs disturb least
CLOCK = time.process_time
WRAPPED = {"derive": "derive", "lower": "lower", "fuse": "lower",
           "module_docstring": "docstring", "module_source": "source"}


def _worker(index: int) -> None:
    """Compile the index-th demo model and print its phases as one JSON line."""
    import numba  # noqa: F401 - imported once per process by any use, not timed here

    import symgrad.compiled as compiled
    from bench.scaling import timing
    from symgrad.demo import demo_models, sample_inputs

    model, _ = demo_models()[index]
    spent = dict.fromkeys(PHASES, 0.0)
    for name, phase in WRAPPED.items():
        setattr(compiled, name, timing(spent, phase, getattr(compiled, name), CLOCK))
    start = CLOCK()
    f = compiled.compile(model.output, model.wrt, name=model.name)
    before_numba = CLOCK() - start
    spent["other"] = before_numba - sum(spent[p] for p in set(WRAPPED.values()))
    # a scalar model runs its Python twin on floats: arrays reach the Numba kernels
    inputs = sample_inputs(model, points=4 if f.spec.is_scalar_model else None)
    start = CLOCK()
    if hasattr(f, "value_and_grad"):
        f.value_and_grad(**inputs)
    else:
        import numpy as np
        value = f.forward(**inputs)
        f.vjp(np.ones(np.shape(value)), **inputs)
    spent["numba"] = CLOCK() - start
    print(json.dumps({"model": model.name, **spent}))


def measure() -> list[dict]:
    from symgrad.demo import demo_models

    rows = []
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0")
    for index, (model, _) in enumerate(demo_models()):
        with tempfile.TemporaryDirectory() as cache:
            env["SYMGRAD_CACHE_DIR"] = cache
            done = subprocess.run([sys.executable, "-m", "bench.compile_phases", "--worker",
                                   str(index)], env=env, cwd=HERE.parent, text=True,
                                  capture_output=True, check=False)
        if done.returncode != 0:
            print(f"{model.name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print("  ".join([f"{row['model']:28s}"] + [f"{p} {row[p]:6.2f}" for p in PHASES]),
              flush=True)
    return rows


def render(results: dict) -> str:
    lines = ["# sg.compile by phase on the seed models", "",
             "CPU seconds, cold caches, one thread, each model in a fresh process "
             "(`python -m bench.compile_phases`; the phases are defined in its docstring).",
             ""]
    for label, entry in results.items():
        lines += [f"## {label} ({entry['commit']}, {entry['date']})", "",
                  "| model | " + " | ".join(PHASES) + " | symgrad | total |",
                  "|---" * (len(PHASES) + 3) + "|"]
        for row in entry["rows"]:
            own = sum(row[p] for p in PHASES if p != "numba")
            lines.append(f"| {row['model']} | " + " | ".join(f"{row[p]:.2f}" for p in PHASES)
                         + f" | {own:.2f} | {own + row['numba']:.2f} |")
        totals = {p: sum(r[p] for r in entry["rows"]) for p in PHASES}
        own = sum(v for p, v in totals.items() if p != "numba")
        lines += ["| **all** | " + " | ".join(f"{totals[p]:.2f}" for p in PHASES)
                  + f" | {own:.2f} | {own + totals['numba']:.2f} |", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after")
    parser.add_argument("--render", action="store_true", help="only rewrite the report")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker(args.worker)
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not args.render:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                capture_output=True, text=True).stdout.strip()
        results[args.label] = {"commit": commit, "date": time.strftime("%Y-%m-%d"),
                               "rows": measure()}
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    REPORT.write_text(render(results))
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
