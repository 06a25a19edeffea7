"""What symgrad costs inside PyTorch and JAX: W2a (one window) through ``f.to_torch()`` and
``f.to_jax()``, side by side with each framework's own autodiff of the same model.

    python -m bench.interop [--quick] [--threads one|default|both] [--no-write]

Rows, value and gradient (vg) and value alone (fwd), median per call:
- symgrad: the compiled function called directly (``f.value_and_grad`` / ``f(...)``);
- symgrad via to_torch: ``tf(**tensors)`` then ``torch.autograd.grad`` (vg), or the call
  under ``torch.no_grad()`` (fwd);
- torch eager: the model in PyTorch, forward + ``torch.autograd.grad`` (as bench.run);
- symgrad via to_jax, jit: ``jax.jit(jax.value_and_grad(lambda ...: jf(...)))``;
- torch autograd.Function, no work: a Function of the same tensors that returns answers
  computed beforehand: the cost of torch's Python-defined autograd node by itself;
- symgrad via to_jax, jit, pure_callback: the same with the kernels called back through
  Python (``jax.pure_callback``, the path of models with scalar inputs) instead of XLA
  custom calls;
- JAX jit: ``jax.jit(jax.value_and_grad(model))`` (as bench.run).
The protocol is bench.run's (one process per thread setting, calibrated loops of 0.2 s,
7 interleaved repeats, GC off in the loops, a settling pause before each default-threads
loop).  Writes bench/INTEROP.md and bench/INTEROP.json; bench/RESULTS.md carries INTEROP.md
as its last section (``bench.run`` adds it after its own).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.run import (
    FULL,
    QUICK,
    REPO_ROOT,
    SETTLE_S,
    THREAD_LABEL,
    _calibrate,
    _CpuWatch,
    _fmt_spread,
    _fmt_t,
    _log,
    _loop,
    _rel_err,
    _worker_env,
)

BENCH_DIR = Path(__file__).resolve().parent
SECTION = BENCH_DIR / "INTEROP.md"
MARKER = "## symgrad inside PyTorch and JAX"

FLOOR = "torch autograd.Function, no work"
CALLBACK = "symgrad via to_jax, jit, pure_callback"
ROWS = ("symgrad", "symgrad via to_torch", "torch eager", FLOOR, "symgrad via to_jax, jit",
        CALLBACK, "JAX jit")
# (wrapper, the framework's own) pairs whose ratio is the target: the wrapper costs no more
PAIRS = (("symgrad via to_torch", "torch eager"), ("symgrad via to_jax, jit", "JAX jit"))


# =========================================================================== worker side
def _implementations(mode: str):
    """{row: (call, convert)}: call() runs once; convert(result) -> (value, [gradients])."""
    import jax
    import numpy as np
    import torch

    import symgrad as sg
    from bench.peers import _torch_nn, array_model
    from bench.workloads import w2a_inputs, w2a_model

    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    names = ("W", "b", "u", "x")
    inputs = w2a_inputs()
    expr, wrt = w2a_model()
    f = sg.compile(expr, wrt, name="window_classifier")
    impls = {}

    # symgrad, direct
    if mode == "vg":
        impls["symgrad"] = (lambda: f.value_and_grad(**inputs), lambda r: r)
    else:
        impls["symgrad"] = (lambda: f(**inputs), lambda r: (r, {}))

    # PyTorch: through to_torch, and eager autograd of the same model
    tf = f.to_torch()
    tensors = {n: torch.from_numpy(inputs[n].copy()).requires_grad_(mode == "vg")
               for n in names}
    params = [tensors[n] for n in names]
    torch_model = array_model("W2a", torch, _torch_nn()[1])
    torch_grad = torch.autograd.grad

    def torch_convert(r):
        if mode == "fwd":
            return r.item(), {}
        return r[0].item(), {n: g.numpy() for n, g in zip(names, r[1], strict=True)}

    if mode == "vg":
        def via_torch():
            loss = tf(**tensors)
            return loss, torch_grad(loss, params)

        def torch_eager():
            loss = torch_model(*params)
            return loss, torch_grad(loss, params)
    else:
        def via_torch():
            with torch.no_grad():
                return tf(**tensors)

        def torch_eager():
            return torch_model(*params)
    impls["symgrad via to_torch"] = (via_torch, torch_convert)
    impls["torch eager"] = (torch_eager, torch_convert)
    impls[FLOOR] = (_function_floor(torch, f, inputs, names, tensors, mode), torch_convert)

    # JAX: through to_jax under jit, and JAX's own jitted value_and_grad
    class nn:
        sigmoid = staticmethod(jax.nn.sigmoid)

    jf = f.to_jax()
    jax_model = array_model("W2a", jnp, nn)
    args = tuple(jnp.asarray(inputs[n]) for n in names)

    def wrapped(W, b, u, x):
        return jf(W=W, b=b, u=u, x=x)

    if mode == "vg":
        ours = jax.jit(jax.value_and_grad(wrapped, argnums=(0, 1, 2, 3)))
        theirs = jax.jit(jax.value_and_grad(jax_model, argnums=(0, 1, 2, 3)))

        def jax_convert(r):
            return float(r[0]), {n: np.asarray(g) for n, g in zip(names, r[1], strict=True)}
    else:
        ours, theirs = jax.jit(wrapped), jax.jit(jax_model)

        def jax_convert(r):
            return float(r), {}
    block = jax.block_until_ready
    impls["symgrad via to_jax, jit"] = (lambda: block(ours(*args)), jax_convert)
    # the same through jax.pure_callback (what models with scalar inputs use): why the
    # custom call
    jf_callback = f.to_jax()
    jf_callback._custom_calls = False

    def wrapped_callback(W, b, u, x):
        return jf_callback(W=W, b=b, u=u, x=x)

    callback = (jax.jit(jax.value_and_grad(wrapped_callback, argnums=(0, 1, 2, 3)))
                if mode == "vg" else jax.jit(wrapped_callback))
    impls[CALLBACK] = (lambda: block(callback(*args)), jax_convert)
    impls["JAX jit"] = (lambda: block(theirs(*args)), jax_convert)
    return impls


def _function_floor(torch, f, inputs, names, tensors, mode):
    """What torch's autograd.Function machinery costs by itself: a Function of the same four
    tensors whose forward returns symgrad's value and whose backward returns its gradients,
    both computed once beforehand (the answers are right; no work is done per call)."""
    value, grads = f.value_and_grad(**inputs)
    value = torch.tensor(value, dtype=torch.float64)
    grads = tuple(torch.from_numpy(grads[n]) for n in names)

    class Floor(torch.autograd.Function):
        @staticmethod
        def forward(ctx, W, b, u, x):
            return value.clone()

        @staticmethod
        def backward(ctx, grad_output):
            return grads

    params = [tensors[n] for n in names]
    if mode == "vg":
        def call():
            loss = Floor.apply(*params)
            return loss, torch.autograd.grad(loss, params)
    else:
        def call():
            with torch.no_grad():
                return Floor.apply(*params)
    return call


class _Call:
    """The shape bench.run's _loop and _calibrate expect."""

    def __init__(self, fn):
        self.fn, self.args, self.kwargs = fn, (), {}


def run_worker(cfg: str, quick: bool, json_out: str) -> None:
    import numpy as np  # noqa: F401  (imported under the thread settings)
    import torch

    if cfg == "one":
        torch.set_num_threads(1)
    proto = QUICK if quick else FULL
    cells = {}
    for mode in ("vg", "fwd"):
        impls = _implementations(mode)
        reference = impls["symgrad"][1](impls["symgrad"][0]())
        rows = {}
        calls = {}
        for name, (fn, convert) in impls.items():
            start = time.perf_counter()
            result = convert(fn())
            first = time.perf_counter() - start
            err = _rel_err(result, reference)
            rows[name] = {"first_call_s": first, "max_rel_err": err, "times": []}
            calls[name] = (_Call(fn), _calibrate(_Call(fn), proto["loop_s"]))
        order = list(impls)
        watch = _CpuWatch()
        for repeat in range(proto["repeats"]):
            shift = repeat % len(order)
            for name in order[shift:] + order[:shift]:
                call, n = calls[name]
                if cfg == "default":
                    time.sleep(SETTLE_S)
                seconds, done = _loop(call, n, budget_s=5 * proto["loop_s"])
                rows[name]["times"].append(seconds / done)
        load = watch.stop()
        for row in rows.values():
            row.update(median_s=statistics.median(row["times"]), min_s=min(row["times"]),
                       max_s=max(row["times"]))
        cells[mode] = rows
        cells[mode + "_load"] = load
    meta = {"cfg": cfg, "quick": quick, "protocol": proto,
            "versions": _versions(), "torch_threads": torch.get_num_threads(),
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS",
                                                   "XLA_FLAGS")}}
    with open(json_out, "w") as fh:
        json.dump({"meta": meta, "cells": cells}, fh, indent=1)


def _versions() -> dict:
    import jax
    import numba
    import numpy
    import torch

    import symgrad

    return {"symgrad": symgrad.__version__, "numpy": numpy.__version__,
            "numba": numba.__version__, "torch": torch.__version__, "jax": jax.__version__}


# =========================================================================== parent side
def render(saved: dict) -> str:
    runs = saved["runs"]
    any_meta = next(iter(runs.values()))["meta"]
    lines = [
        MARKER, "",
        f"Generated {saved['generated']} by `python -m bench.interop"
        f"{' ' + ' '.join(saved['argv']) if saved['argv'] else ''}` in {saved['wall_s']:.0f} s"
        + (" (**--quick**: indicative only)" if any_meta["quick"] else "") + "; "
        + ", ".join(f"{k} {v}" for k, v in any_meta["versions"].items()) + ".",
        "",
        "W2a (one window, u^T sigmoid(W x + b), W 100 x 250): value and gradient (vg) and "
        "value alone (fwd), median per call over the repeats (min-max in brackets), with "
        "bench.run's protocol. `to_torch` vg is `tf(**tensors)` + `torch.autograd.grad`, fwd "
        "the call under `torch.no_grad()`; `to_jax` is `jax.jit(jax.value_and_grad(...))` "
        "of a function calling `jf`, fwd `jax.jit` of it. The target: each wrapper costs no "
        "more than its framework's own autodiff of the same model (ratio <= 1).",
        "",
    ]
    for cfg, run in runs.items():
        cells = run["cells"]
        loads = [cells.get(f"{mode}_load") or {} for mode in ("vg", "fwd")]
        noise = max(ld.get("other_cpu_frac", 0.0) + ld.get("steal_frac", 0.0) for ld in loads)
        lines += [f"**{THREAD_LABEL[cfg]}** (other processes / steal used up to "
                  f"{100 * noise:.0f}% of the CPUs while this was timed)", "",
                  "| implementation | vg | fwd | max rel err vs symgrad (vg) |",
                  "|---|---:|---:|---:|"]
        for name in ROWS:
            vg, fwd = cells["vg"][name], cells["fwd"][name]
            lines.append(f"| {name} | {_cell(vg)} | {_cell(fwd)} | "
                         f"{vg['max_rel_err']:.1e} |")
        lines.append("")
        for ours, theirs in PAIRS:
            ratios = [cells[mode][ours]["median_s"] / cells[mode][theirs]["median_s"]
                      for mode in ("vg", "fwd")]
            extra = [(cells[mode][ours]["median_s"] - cells["vg" if mode == "vg" else "fwd"]
                      ["symgrad"]["median_s"]) for mode in ("vg", "fwd")]
            lines.append(f"- {ours} / {theirs}: vg {ratios[0]:.2f}, fwd {ratios[1]:.2f} "
                         f"(the wrapper adds {_fmt_t(extra[0])} to symgrad's own vg call, "
                         f"{_fmt_t(extra[1])} to fwd)")
        lines.append("")
    notes = BENCH_DIR / "INTEROP_NOTES.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def _cell(row: dict) -> str:
    return f"{_fmt_t(row['median_s'])} ({_fmt_spread(row)})"


def splice_into_results(section: str, results: Path) -> None:
    """Put the section at the end of RESULTS.md, replacing an earlier one."""
    text = results.read_text() if results.exists() else ""
    if MARKER in text:
        text = text[:text.index(MARKER)]
    results.write_text(text.rstrip() + "\n\n" + section)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m bench.interop", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short loops (indicative only)")
    ap.add_argument("--threads", choices=("one", "default", "both"), default="both")
    ap.add_argument("--no-write", action="store_true",
                    help="print the table only; leave bench/ as it is")
    ap.add_argument("--render", action="store_true",
                    help="rewrite INTEROP.md and the RESULTS.md section from INTEROP.json")
    ap.add_argument("--worker", choices=("one", "default"), help=argparse.SUPPRESS)
    ap.add_argument("--json-out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        run_worker(a.worker, a.quick, a.json_out)
        return 0
    if a.render:
        saved = json.loads(SECTION.with_suffix(".json").read_text())
    else:
        start = time.perf_counter()
        runs = {}
        for cfg in (["one", "default"] if a.threads == "both" else [a.threads]):
            with tempfile.TemporaryDirectory(prefix=f"interop_{cfg}_") as tmp:
                out = os.path.join(tmp, "result.json")
                cmd = [sys.executable, "-m", "bench.interop", "--worker", cfg, "--json-out", out]
                if a.quick:
                    cmd.append("--quick")
                _log(f"== {THREAD_LABEL[cfg]}: {' '.join(cmd[1:])}")
                # symgrad's cache kept (first calls are not what this measures)
                env = _worker_env(cfg, os.path.join(tmp, "caches"), quick=True)
                proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, check=False)
                if proc.returncode != 0 or not os.path.exists(out):
                    _log(f"worker for {cfg} failed with exit code {proc.returncode}")
                    return 1
                with open(out) as fh:
                    runs[cfg] = json.load(fh)
        saved = {"generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "argv": [x for x in argv if x != "--no-write"],
                 "wall_s": time.perf_counter() - start, "runs": runs}
    section = render(saved)
    print(section)
    if not a.no_write:
        SECTION.write_text(section)
        if not a.render:
            SECTION.with_suffix(".json").write_text(json.dumps(saved, indent=1))
        splice_into_results(section, BENCH_DIR / "RESULTS.md")
        _log(f"wrote {SECTION}, {SECTION.with_suffix('.json')} and its section of "
             f"{BENCH_DIR / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
