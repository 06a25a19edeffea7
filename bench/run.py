"""Run the benchmark suite and write bench/RESULTS.md.

    python -m bench.run [--quick] [--only W2a,W3] [--threads one|default|both]
                        [--out bench/RESULTS.md]

Each thread configuration runs in its own subprocess (thread settings must be in the
environment before numpy/numba/jax/torch are imported); the subprocess writes JSON and this
process merges the runs into the Markdown report (and a JSON file next to it).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

# timing protocol: (seconds per timing loop, repeats)
FULL = {"loop_s": 0.2, "repeats": 7}
QUICK = {"loop_s": 0.01, "repeats": 5}  # indicative only

# default threads: a pause before each timing loop, so that the thread pools of the library
# timed before (OpenBLAS in numpy and again in scipy, OpenMP in torch, Eigen in JAX), which
# spin for a while after their last job, are asleep: with two cores, one library's
# spinning threads beside another's working ones slowed BLAS-bound loops up to 9x
SETTLE_S = 0.15
LOOP_BUDGET = 5  # a timing loop stops early after 5x its planned length (see _loop)
NOISY = 0.05  # flag cells where other processes used more than this share of the CPUs

THREAD_LABEL = {"one": "one thread", "default": "default threads"}


# =========================================================================== worker side
def _loop(impl, n: int, budget_s: float | None = None) -> tuple[float, int]:
    """Time n calls; returns (seconds, calls made). The calls run in up to 10 chunks and
    the loop stops after the chunk that passes budget_s (a machine that slows down mid-run
    must not turn a 0.2 s loop into minutes); seconds / calls stays the per-call time."""
    fn, a, kw = impl.fn, impl.args, impl.kwargs
    chunks = min(n, 10)
    base, extra = divmod(n, chunks)
    done = 0
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for c in range(chunks):
            m = base + (1 if c < extra else 0)
            if kw:
                for _ in range(m):
                    fn(*a, **kw)
            else:
                for _ in range(m):
                    fn(*a)
            done += m
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
        t1 = time.perf_counter()
    finally:
        if gc_was:
            gc.enable()
    return t1 - t0, done


def _calibrate(impl, loop_s: float) -> int:
    """Call count for a loop of about loop_s (at least 1 call). Grows the count tenfold
    until a loop takes >= loop_s / 10, then extrapolates; doubles as warm-up."""
    n = 1
    while True:
        t, done = _loop(impl, n, budget_s=LOOP_BUDGET * loop_s)
        if t >= loop_s:
            return n if done == n else max(1, math.ceil(loop_s * done / t))
        if t >= loop_s / 10:
            return max(n + 1, math.ceil(n * loop_s * 1.05 / t))
        n *= 10


class _CpuWatch:
    """CPU time used by other processes (and stolen by the hypervisor) while a cell runs:
    /proc/stat busy time minus this process's own CPU time (all its threads)."""

    def __init__(self):
        self.t0 = self._snap()

    @staticmethod
    def _snap():
        try:
            with open("/proc/stat") as fh:
                f = [int(x) for x in fh.readline().split()[1:]]
        except OSError:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(f[:8]) - f[3] - f[4]) / hz  # user..steal minus idle, iowait
        steal = f[7] / hz if len(f) > 7 else 0.0
        ot = os.times()
        return time.perf_counter(), busy, steal, ot.user + ot.system

    def stop(self) -> dict:
        t1 = self._snap()
        if self.t0 is None or t1 is None:
            return {}
        wall = t1[0] - self.t0[0]
        ncpu = os.cpu_count() or 1
        own = t1[3] - self.t0[3]
        steal = t1[2] - self.t0[2]
        other = max(0.0, (t1[1] - self.t0[1]) - own - steal)
        return {"wall_s": wall, "other_cpu_frac": other / (wall * ncpu),
                "steal_frac": steal / (wall * ncpu)}


def _rel_err(out, ref) -> float:
    """max over outputs (value, each gradient) of max|a - r| / max|r|."""
    import numpy as np

    (v, g), (rv, rg) = out, ref
    pairs = [(v, rv)] + [(g.get(k), rg[k]) for k in rg]
    worst = 0.0
    for a, r in pairs:
        if a is None:
            return float("inf")
        a = np.asarray(a, dtype=np.float64).ravel()
        r = np.asarray(r, dtype=np.float64).ravel()
        if a.shape != r.shape:
            return float("inf")
        if not np.all(np.isfinite(a)):
            return float("inf")
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        diff = float(np.max(np.abs(a - r))) if r.size else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def _copy_inputs(inp: dict) -> dict:
    import numpy as np

    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in inp.items()}


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return msg[:160]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_worker(cfg: str, quick: bool, only: str | None, json_out: str) -> None:
    t_start = time.perf_counter()
    import numpy as np  # noqa: F401  (import under the thread settings)

    if cfg == "one":
        import torch

        torch.set_num_threads(1)
    from bench import peers as P
    from bench import workloads as W

    proto = QUICK if quick else FULL
    results = []
    for wl in W.select(only):
        inputs = wl.inputs()
        for mode in ("vg", "fwd"):
            results.append(_run_cell(wl, mode, inputs, proto, quick, cfg, P))
    meta = _worker_meta(cfg, quick, proto)
    meta["worker_wall_s"] = time.perf_counter() - t_start
    with open(json_out, "w") as fh:
        json.dump({"meta": meta, "cells": results}, fh, indent=1)


def _run_cell(wl, mode, inputs, proto, quick, cfg, P) -> dict:
    rows, impls, outs = [], [], {}
    for name, builder in P.PEERS:
        if not P.applicable(name, wl):
            continue
        row = {"name": name, "status": "ok", "reason": ""}
        rows.append(row)
        if name == P.TORCH_COMPILE and quick:
            row.update(status="skipped", reason="--quick (slow to compile)")
            continue
        if name in (P.SYMGRAD_GEN, P.SYMGRAD_POSITIONAL) and quick and cfg == "default":
            row.update(status="skipped", reason="--quick (run in the one-thread run only)")
            continue
        if name == P.HAND_NUMBA_PRANGE and cfg == "one":
            row.update(status="skipped", reason="one-thread run (prange needs threads)")
            continue
        try:
            t0 = time.perf_counter()
            impl = builder(wl, mode, _copy_inputs(inputs))
            res = impl.call()
            row["first_s"] = time.perf_counter() - t0 + impl.first_extra_s
            outs[name] = impl.convert(res)
            impls.append((name, impl))
        except P.Unavailable as e:
            row.update(status="unavailable", reason=str(e))
        except (ImportError, AttributeError, NotImplementedError) as e:
            row.update(status="unavailable", reason=_short(e))
        except Exception as e:  # noqa: BLE001 - a failing peer is a result, not a crash
            status = "unavailable" if name in P.SYMGRAD_NAMES else "error"
            row.update(status=status, reason=_short(e))
        if row["status"] != "ok":
            _log(f"[{cfg}] {wl.key} {mode}: {name}: {row['status']} ({row['reason']})")
    row_by = {r["name"]: r for r in rows}
    if "PyTensor" not in row_by:
        import importlib.util

        have = importlib.util.find_spec("pytensor") is not None
        rows.append({"name": "PyTensor", "status": "unavailable",
                     "reason": "installed, no peer written" if have else "not installed"})

    # reference for errors and ratios: symgrad, else hand Numba, else hand NumPy
    baseline = next((n for n in (P.SYMGRAD, P.HAND_NUMBA, "hand NumPy") if n in outs), None)
    for name, out in outs.items():
        try:
            row_by[name]["rel_err"] = _rel_err(out, outs[baseline])
        except Exception as e:  # noqa: BLE001
            row_by[name]["rel_err"] = float("inf")
            row_by[name]["reason"] = f"comparison failed: {_short(e)}"

    # timing: calibrate each, then interleave whole loops, rotating the order each repeat
    watch = _CpuWatch()
    ns = {}
    for name, impl in impls:
        try:
            ns[name] = _calibrate(impl, proto["loop_s"])
        except Exception as e:  # noqa: BLE001
            row_by[name].update(status="error", reason=f"while timing: {_short(e)}")
    timed = [(n, i) for n, i in impls if n in ns]
    samples = {n: [] for n, _ in timed}
    for r in range(proto["repeats"]):
        k = r % max(len(timed), 1)
        for name, impl in timed[k:] + timed[:k]:
            if cfg == "default" and not quick:
                time.sleep(SETTLE_S)
            t, done = _loop(impl, ns[name], budget_s=LOOP_BUDGET * proto["loop_s"])
            samples[name].append(t / done)
    for name, ts in samples.items():
        row_by[name].update(median_s=statistics.median(ts), min_s=min(ts), max_s=max(ts),
                            calls_per_loop=ns[name], repeats=len(ts))
    load = watch.stop()
    summary = ", ".join(f"{n} {row_by[n]['median_s'] * 1e6:.3g}us" for n in samples)
    noisy = load.get("other_cpu_frac", 0) + load.get("steal_frac", 0)
    _log(f"[{cfg}] {wl.key} {mode}: {summary}"
         + (f"  [others used {100 * noisy:.0f}% of the CPUs]" if noisy > NOISY else ""))
    return {"workload": wl.key, "family": wl.family, "title": wl.title, "mode": mode,
            "baseline": baseline, "rows": rows, "load": load}


def _version(mod: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(mod)
    except Exception:  # noqa: BLE001
        try:
            m = __import__(mod)
            return str(getattr(m, "__version__", "?"))
        except Exception as e:  # noqa: BLE001
            return f"unavailable ({_short(e)})"


def _worker_meta(cfg, quick, proto) -> dict:
    import numba
    import numpy as np

    versions = {m: _version(m) for m in
                ("numpy", "scipy", "numba", "llvmlite", "sympy", "jax", "jaxlib", "torch",
                 "autograd")}
    try:
        import symgrad

        versions["symgrad"] = str(getattr(symgrad, "__version__", "present (no __version__)"))
    except Exception as e:  # noqa: BLE001
        versions["symgrad"] = f"unavailable ({_short(e)})"
    versions["pytensor"] = _version("pytensor") if _has("pytensor") else "not installed"
    threads = {"numba": numba.config.NUMBA_NUM_THREADS}
    try:
        import torch

        threads["torch"] = torch.get_num_threads()
    except Exception:  # noqa: BLE001
        pass
    try:
        from threadpoolctl import threadpool_info

        threads["blas"] = [(i.get("internal_api"), i.get("num_threads"))
                           for i in threadpool_info()]
    except Exception:  # noqa: BLE001
        pass
    blas = ""
    try:
        cfgd = np.show_config(mode="dicts")
        b = cfgd["Build Dependencies"]["blas"]
        blas = f"{b.get('name')} {b.get('version')}"
    except Exception:  # noqa: BLE001
        pass
    return {
        "threads_cfg": cfg, "quick": quick, "protocol": proto, "versions": versions,
        "python": platform.python_version(), "numba_svml": bool(numba.config.USING_SVML),
        "blas": blas, "threads": threads,
        "env": {k: os.environ.get(k) for k in (*THREAD_VARS, "XLA_FLAGS")},
    }


def _has(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


# =========================================================================== parent side
def _worker_env(cfg: str, cache_dir: str, quick: bool) -> dict:
    env = dict(os.environ)
    for k in (*THREAD_VARS, "XLA_FLAGS"):
        env.pop(k, None)
    if cfg == "one":
        for k in THREAD_VARS:
            env[k] = "1"
        env["XLA_FLAGS"] = XLA_ONE_THREAD
    env["JAX_ENABLE_X64"] = "1"
    env["JAX_PLATFORMS"] = "cpu"
    # cold caches, so first-call times include compilation: torch.compile (inductor) and
    # symgrad's own module/Numba cache (sg.compile); hand Numba uses no disk cache
    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_dir, "inductor")
    if not quick:  # --quick keeps the user's symgrad cache (time); first calls then warm
        env["SYMGRAD_CACHE_DIR"] = os.path.join(cache_dir, "symgrad")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


# ==================================================== generated module, fresh process
FIRST_CALL_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import {module} as m
t1 = time.perf_counter()
args = {args}
t2 = time.perf_counter()
m.{function}(**args)
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "first_call_s": t3 - t2}}))
"""
# a one-line cached Numba function: the floor any Numba-compiled module starts from
FLOOR_MODULE = "import numba\n\n\n@numba.njit(cache=True)\ndef add(a, b):\n    return a + b\n"
FIRST_CALL_CASES = (
    ("generated/window_classifier.py: value_and_grad", "window_classifier",
     "value_and_grad",
     "dict(W=np.full((100, 250), 0.01), b=np.zeros(100), u=np.ones(100), x=np.ones(250))"),
    ("floor: one-line @numba.njit(cache=True) function", "floor_module", "add",
     "dict(a=1.0, b=2.0)"),
)


def fresh_process_first_calls(repeats: int = 5) -> list[dict]:
    """Import a module and make its first call in fresh processes: once with a cold Numba
    cache (it compiles and writes the cache), then `repeats` times with the warm cache.
    Runs on a copy of the module in a temporary folder, so the repository's cache is not
    touched and the cold run is really cold."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_first_call_") as tmp:
        shutil.copy(REPO_ROOT / "generated" / "window_classifier.py", tmp)
        Path(tmp, "floor_module.py").write_text(FLOOR_MODULE)
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
        env["PYTHONPATH"] = tmp
        for label, module, function, args in FIRST_CALL_CASES:
            script = FIRST_CALL_SCRIPT.format(module=module, function=function, args=args)
            runs = []
            for _ in range(1 + repeats):
                out = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp,
                                     capture_output=True, text=True, check=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            warm = [r["first_call_s"] for r in runs[1:]]
            results.append({"label": label, "cold_s": runs[0]["first_call_s"],
                            "warm_median_s": statistics.median(warm), "warm_min_s": min(warm),
                            "warm_max_s": max(warm),
                            "import_s": statistics.median(r["import_s"] for r in runs[1:])})
            _log(f"first call, fresh process: {label}: cold {runs[0]['first_call_s']:.2f} s, "
                 f"warm {statistics.median(warm):.3f} s")
    return results


def _first_call_lines(first_calls: list[dict]) -> list[str]:
    if not first_calls:
        return []
    lines = ["## First call in a fresh process", "",
             "`python -c 'import module; module.f(...)'` with the Numba cache cold (once) and "
             "warm (median and min-max of 5 processes, 3 with --quick); import time (numpy, "
             "numba and the module) is not in the first call. The floor row is a module "
             "holding one "
             "one-line cached function: what Numba itself takes to load a cached function "
             "in a new process (its CPU target, and scipy.linalg for BLAS, load on the first "
             "call, whatever the function).", "",
             "| module | cold cache | warm cache | import |", "|---|---:|---:|---:|"]
    for r in first_calls:
        lines.append(f"| {r['label']} | {r['cold_s']:.2f} s | {r['warm_median_s']:.3f} s "
                     f"({r['warm_min_s']:.3f}-{r['warm_max_s']:.3f}) | {r['import_s']:.2f} s |")
    return lines + [""]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _fmt_t(s: float | None, unit: tuple[str, float] | None = None) -> str:
    if s is None:
        return "-"
    u = unit or _unit(s)
    return f"{s / u[1]:.3g} {u[0]}"


def _unit(s: float) -> tuple[str, float]:
    for name, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return name, scale
    return "ns", 1e-9


def _fmt_spread(r: dict) -> str:
    u = _unit(r["median_s"])
    return f"{r['min_s'] / u[1]:.3g}-{r['max_s'] / u[1]:.3g} {u[0]}"


def _fmt_ratio(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _fmt_err(e) -> str:
    if e is None:
        return "-"
    if e != e or e == float("inf"):
        return "**MISMATCH**" if e == float("inf") else "nan"
    return "0" if e == 0 else f"{e:.1e}"


def _cell_label(c: dict) -> str:
    return f"{c['workload']} {c['mode']}"


def _ok(r: dict) -> bool:
    return r["status"] == "ok" and "median_s" in r


def _best_peer(cell: dict, exclude: tuple[str, ...]):
    cands = [r for r in cell["rows"] if _ok(r) and r["name"] not in exclude]
    return min(cands, key=lambda r: r["median_s"]) if cands else None


def _noise(cell: dict) -> float:
    ld = cell.get("load") or {}
    return ld.get("other_cpu_frac", 0.0) + ld.get("steal_frac", 0.0)


def _noise_note(cell: dict) -> str:
    x = _noise(cell)
    return (f" (other processes / steal used {100 * x:.0f}% of the CPUs while this was timed: "
            "treat with care)") if x > NOISY else ""


def _table(cell: dict) -> list[str]:
    from bench.peers import SYMGRAD

    base = cell["baseline"]
    rows = {r["name"]: r for r in cell["rows"]}
    base_t = rows[base].get("median_s") if base in rows else None
    note = "" if base == SYMGRAD else " (symgrad unavailable)"
    out = [f"| implementation | median | spread (min-max) | first call | ratio to {base}{note} "
           f"| max rel err vs {base} |", "|---|---:|---:|---:|---:|---:|"]
    for r in cell["rows"]:
        if _ok(r):
            ratio = _fmt_ratio(r["median_s"] / base_t) if base_t else "-"
            err = _fmt_err(r.get("rel_err"))
            out.append(f"| {r['name']} | {_fmt_t(r['median_s'])} | {_fmt_spread(r)} | "
                       f"{_fmt_t(r.get('first_s'))} | {ratio} | {err} |")
        else:
            reason = r["reason"].replace("|", "/")
            out.append(f"| {r['name']} | {r['status']}: {reason} | | | | |")
    return out


def write_report(runs: dict, out_path: Path, argv: list[str], wall_s: float,
                 generated: str | None = None, first_calls: list | None = None) -> None:
    from bench.peers import HAND_NUMBA, HAND_NUMBA_PRANGE, PEERS, SYMGRAD, SYMGRAD_NAMES

    cfgs = list(runs)
    any_meta = runs[cfgs[0]]["meta"]
    v = any_meta["versions"]
    lines = [
        "# symgrad benchmark results",
        "",
        f"Generated {generated or datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
        f"`{' '.join(['python -m bench.run', *argv])}` in {wall_s:.0f} s"
        + (" (**--quick**: short loops, no torch.compile, symgrad's disk cache kept; "
           "indicative only)"
           if any_meta["quick"] else "") + ".",
        "",
        "## Machine and software",
        "",
        f"- CPU: {_cpu_model()}, {os.cpu_count()} logical cores; {platform.system()} "
        f"{platform.release()}; Python {any_meta['python']}",
        f"- BLAS (numpy): {any_meta['blas'] or '?'}; Numba SVML: {any_meta['numba_svml']}",
        "- " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        "## Protocol",
        "",
        f"float64, CPU. Per workload and mode (vg = value and gradient, fwd = forward alone) "
        f"all implementations run in one process; each is calibrated to loops of >= "
        f"{any_meta['protocol']['loop_s']} s of calls, then {any_meta['protocol']['repeats']} "
        "repeats of whole loops are interleaved across implementations (order rotated each "
        "repeat); median and min-max of the per-call time over the repeats. First call = "
        "build (jit / trace / compile objects, input conversion) + first call, cold (no "
        "on-disk caches: fresh inductor and symgrad cache folders per run). Errors: max over "
        "value and gradients of max|a - r| / max|r| "
        "against the reference (symgrad, or hand Numba while symgrad is unavailable). "
        "Ratios are time / reference time. With default threads each timing loop starts "
        f"after a {SETTLE_S} s pause (the previous library's spinning threads go to sleep).",
        "",
    ]
    for cfg in cfgs:
        m = runs[cfg]["meta"]
        env = json.dumps({k: x for k, x in m["env"].items() if x})
        lines.append(f"- {THREAD_LABEL[cfg]}: env {env}, "
                     f"threads {json.dumps(m['threads'])}, worker {m['worker_wall_s']:.0f} s")
    lines.append("")

    all_cells = [c for cfg in cfgs for c in runs[cfg]["cells"]]
    n_noisy = sum(_noise(c) > NOISY for c in all_cells)
    if n_noisy:
        lines += [f"**Warning: {n_noisy} of {len(all_cells)} cells were timed while other "
                  f"processes (or hypervisor steal) used > {100 * NOISY:.0f}% of the CPUs. "
                  "Those numbers, the default-threads ones above all (thread pools stall "
                  "when a core is taken), are not reliable: rerun on a quiet machine.**", ""]

    # ---- summary: symgrad vs best peer
    cells_by_cfg = {cfg: {_cell_label(c): c for c in runs[cfg]["cells"]} for cfg in cfgs}
    labels = [_cell_label(c) for c in runs[cfgs[0]]["cells"]]
    lines += ["## Summary: symgrad against the best peer", "",
              "ratio = symgrad median / best peer median (< 1: symgrad faster). Where symgrad "
              "is unavailable the row compares hand Numba with the best other peer (marked *). "
              f"! = other processes used > {100 * NOISY:.0f}% of the CPUs while that cell was "
              "timed (shared machine): rerun before quoting.",
              ""]
    hdr = "| workload |"
    sep = "|---|"
    for cfg in cfgs:
        hdr += f" symgrad ({THREAD_LABEL[cfg]}) | best peer | ratio |"
        sep += "---:|---|---:|"
    lines += [hdr, sep]
    for lab in labels:
        line = f"| {lab} |"
        for cfg in cfgs:
            c = cells_by_cfg[cfg].get(lab)
            rows = {r["name"]: r for r in c["rows"]} if c else {}
            sg = rows.get(SYMGRAD)
            if sg and _ok(sg):
                best = _best_peer(c, SYMGRAD_NAMES)
                who, t = SYMGRAD, sg["median_s"]
            else:
                hn = rows.get(HAND_NUMBA)
                best = _best_peer(c, (*SYMGRAD_NAMES, HAND_NUMBA, HAND_NUMBA_PRANGE)) if c else None
                who, t = (HAND_NUMBA, hn["median_s"]) if hn and _ok(hn) else (None, None)
            if who is None or best is None:
                line += " - | - | - |"
                continue
            star = "" if who == SYMGRAD else "*"
            star += " !" if _noise(c) > NOISY else ""
            line += (f" {_fmt_t(t)}{' (hand Numba)*' if who != SYMGRAD else ''} | {best['name']} "
                     f"{_fmt_t(best['median_s'])} | {_fmt_ratio(t / best['median_s'])}{star} |")
        lines.append(line)
    lines.append("")

    lines += _first_call_lines(first_calls or [])

    # ---- peers relative to hand Numba (the BENCHMARKS.md layout)
    peer_names = [n for n, _ in PEERS if n != HAND_NUMBA]
    for cfg in cfgs:
        for c in runs[cfg]["cells"]:
            for r in c["rows"]:
                if r["name"] not in peer_names and r["name"] != HAND_NUMBA:
                    peer_names.append(r["name"])
    for cfg in cfgs:
        lines += [f"## All implementations relative to hand Numba ({THREAD_LABEL[cfg]})", "",
                  "| workload | hand Numba | " + " | ".join(peer_names) + " |",
                  "|---|---:|" + "---:|" * len(peer_names)]
        for c in runs[cfg]["cells"]:
            rows = {r["name"]: r for r in c["rows"]}
            hn = rows.get(HAND_NUMBA)
            if not (hn and _ok(hn)):
                continue
            cols = []
            for p in peer_names:
                r = rows.get(p)
                cols.append(_fmt_ratio(r["median_s"] / hn["median_s"]) if r and _ok(r) else "-")
            lines.append(f"| {_cell_label(c)} | {_fmt_t(hn['median_s'])} | "
                         + " | ".join(cols) + " |")
        lines.append("")

    # ---- detail tables
    lines += ["## Per workload", ""]
    seen = []
    for c in runs[cfgs[0]]["cells"]:
        if c["workload"] in seen:
            continue
        seen.append(c["workload"])
        lines += [f"### {c['title']}", ""]
        for mode in ("vg", "fwd"):
            for cfg in cfgs:
                cc = cells_by_cfg[cfg].get(f"{c['workload']} {mode}")
                if cc is None:
                    continue
                lines += [f"**{mode}, {THREAD_LABEL[cfg]}**{_noise_note(cc)}", ""]
                lines += _table(cc) + [""]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    notes = BENCH_DIR / "NOTES.md"      # the hand-written analysis of the latest full run
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    interop = BENCH_DIR / "INTEROP.md"  # python -m bench.interop: symgrad in PyTorch and JAX
    if interop.exists():
        lines += ["", interop.read_text().rstrip()]
    if (BENCH_DIR / "SCALING.md").exists():     # python -m bench.scaling: compile cost
        lines += ["", SCALING_LINK]
    out_path.write_text("\n".join(lines) + "\n")


SCALING_LINK = ("## Compile cost against model size\n\n"
                "`python -m bench.scaling` times `sg.grad`, `sg.compile` (symgrad's phases and "
                "Numba) and the first call on growing models (products, nesting, long sums, "
                "Rosenbrock) beside JAX's first call and `sympy.lambdify`: "
                "[SCALING.md](SCALING.md), with fitted log-log slopes and "
                "[a plot](scaling.png).")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="short timing loops, no torch.compile (< 2 min)")
    ap.add_argument("--only", help="comma-separated workloads, e.g. W2a,W3 (W3 = all W3-m*)")
    ap.add_argument("--threads", choices=("one", "default", "both"), default="both")
    ap.add_argument("--out", default=str(BENCH_DIR / "RESULTS.md"))
    ap.add_argument("--render", action="store_true",
                    help="rewrite the report from its .json (after editing bench/NOTES.md); "
                         "times nothing")
    ap.add_argument("--worker", choices=("one", "default"), help=argparse.SUPPRESS)
    ap.add_argument("--json-out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        run_worker(a.worker, a.quick, a.only, a.json_out)
        return 0

    if a.render:
        out = Path(a.out)
        saved = json.loads(out.with_suffix(".json").read_text())
        write_report(saved["runs"], out, saved["argv"], saved["wall_s"], saved["generated"],
                     saved.get("first_calls"))
        _log(f"rewrote {out} from {out.with_suffix('.json')}")
        return 0

    from bench.workloads import select

    select(a.only)  # fail early on a bad --only
    t0 = time.perf_counter()
    cfgs = ["one", "default"] if a.threads == "both" else [a.threads]
    runs = {}
    for cfg in cfgs:
        tmp = tempfile.mkdtemp(prefix=f"bench_{cfg}_")
        try:
            js = os.path.join(tmp, "result.json")
            cmd = [sys.executable, "-m", "bench.run", "--worker", cfg, "--json-out", js]
            if a.quick:
                cmd.append("--quick")
            if a.only:
                cmd += ["--only", a.only]
            _log(f"== {THREAD_LABEL[cfg]}: {' '.join(cmd[1:])}")
            proc = subprocess.run(cmd, env=_worker_env(cfg, os.path.join(tmp, "caches"), a.quick),
                                  cwd=REPO_ROOT, check=False)
            if proc.returncode != 0 or not os.path.exists(js):
                _log(f"worker for {cfg} failed with exit code {proc.returncode}")
                return 1
            with open(js) as fh:
                runs[cfg] = json.load(fh)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    first_calls = fresh_process_first_calls(repeats=3 if a.quick else 5)
    wall = time.perf_counter() - t0
    out = Path(a.out)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_report(runs, out, argv, wall, generated, first_calls)
    out.with_suffix(".json").write_text(json.dumps(
        {"generated": generated, "argv": argv, "wall_s": wall, "runs": runs,
         "first_calls": first_calls}, indent=1))
    _log(f"wrote {out} and {out.with_suffix('.json')} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
