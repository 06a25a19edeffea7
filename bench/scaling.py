"""Compile cost against model size: symgrad's ``sg.grad`` and ``sg.compile`` (split into
symgrad's own phases and Numba) and the first call, next to JAX's first call (trace + XLA
compile + run) and ``sympy.lambdify(cse=True)`` (the value alone), for families of models that
grow with one size parameter.

    python -m bench.scaling [--label after] [--cap 60] [--only product,nesting]
                            [--sizes product=5,10,20]
    python -m bench.scaling --render          # rewrite SCALING.md and the plot from the JSON
    python -m bench.scaling --ratio           # value and gradient / forward on the pendulums
    python -m bench.scaling --skip-array-call # leave out the first call on arrays
    python -m bench.scaling --dag-sizes       # count each model's DAG (and its gradients')

Families (n is the size):

* ``product``: prod_i (sin(a_i) + 2) over n inputs, gradient by every a_i;
* ``nesting``: f <- f sin(f + w), n times from f = x, gradient by x and w (a DAG of depth n
  whose tree is exponential);
* ``sum``: n terms sin(x_j + (k + 1) x_l) sharing 10 variables, gradient by all 10;
* ``rosenbrock``: sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2 over n variables;
* ``pendulum``: the Lagrangian of an n-link planar pendulum, gradient by its 2n angles and
  angular velocities (4n inputs with the lengths and masses).

``--ratio`` times instead the value and gradient against the forward pass on pendulums of
1 to 32 links (2 to 64 parameters) over 100,000 points, one thread, and counts the packed
SIMD instructions of the value-and-gradient loop (whether it vectorised).

Every measurement runs in a fresh process with a fresh symgrad cache folder (cold caches)
and a time cap; once a size passes the cap (or fails), the larger sizes of that family and
tool are skipped.  Each tool's curve gets the slope of a least-squares line through its
log-log points from the middle size up (the asymptotic exponent: 1 = linear).  Results are
kept per label (``before``, ``after``) in SCALING.json; SCALING.md shows every label and,
first, ``now``: the newest measurement of each size; scaling.png draws ``before`` and ``now``.

The passes are meant to be linear in the size of the model's DAG, which is not always linear
in n: SymPy flattens the product ``f sin(f + w)`` of the nesting family, so its n-th level is
a product of n + 1 factors and the DAG has about n^2/2 edges.  ``--dag-sizes`` counts, for
each family and size, the distinct nodes of the model and their operands (edges), and those
of its gradients as ``sg.grad`` returns them (SymPy expressions, flat sums and products); the
"now" section then also fits each curve against the model's edges, and ``sg.grad`` against
its result's edges.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
JSON_PATH = BENCH_DIR / "SCALING.json"
MD_PATH = BENCH_DIR / "SCALING.md"
PNG_PATH = BENCH_DIR / "scaling.png"

SIZES = {
    "product": [5, 10, 20, 50, 100, 200],
    "nesting": [5, 10, 20, 50, 100, 300, 1000],
    "sum": [10, 100, 300, 1000, 3000, 10000],
    "rosenbrock": [10, 30, 100, 300, 1000],
    "pendulum": [2, 3, 5, 8, 12, 20],
}
TOOLS = ["grad", "symgrad", "jax", "lambdify"]

# what each tool reports, in the table's column order
COLUMNS = [
    ("grad", "grad", "sg.grad"),
    ("symgrad", "own", "compile: symgrad phases"),
    ("symgrad", "docstring", "of which docstring"),
    ("symgrad", "numba", "Numba + first call"),
    ("symgrad", "total", "compile + first call"),
    ("symgrad", "array_call", "first array call"),
    ("jax", "total", "JAX first call"),
    ("lambdify", "total", "lambdify(cse) + call"),
]


# =========================================================================== the models
def model(family: str, n: int):
    """(expression, wrt, {symbol name: value}) of one family at size n."""
    import sympy as sp

    if family == "product":
        a = sp.symbols(f"a0:{n}", real=True)
        expr = sp.Mul(*[sp.sin(ai) + 2 for ai in a])
        return expr, list(a), {s.name: 0.1 + 0.01 * i for i, s in enumerate(a)}
    if family == "nesting":
        x, w = sp.symbols("x w", real=True)
        f = x
        for _ in range(n):
            f = f * sp.sin(f + w)
        return f, [x, w], {"x": 0.7, "w": 0.3}
    if family == "sum":
        x = sp.symbols("x0:10", real=True)
        expr = sp.Add(*[sp.sin(x[k % 10] + (k + 1) * x[(7 * k + 3) % 10]) for k in range(n)])
        return expr, list(x), {s.name: 0.01 * (i + 1) for i, s in enumerate(x)}
    if family == "rosenbrock":
        x = sp.symbols(f"x0:{n}", real=True)
        expr = sp.Add(*[100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2
                        for i in range(n - 1)])
        return expr, list(x), {s.name: 0.5 + 0.001 * i for i, s in enumerate(x)}
    if family == "pendulum":
        return pendulum(n)
    raise ValueError(f"unknown family {family!r}")


def pendulum(n: int):
    """The Lagrangian T - V of an n-link planar pendulum (angles q_k from the vertical,
    angular velocities u_k, link lengths l_k, point masses m_k at the link ends, g = 9.81),
    differentiated by every q_k and u_k: 2n parameters of 4n inputs.  The form
    sympy.physics.mechanics gives, with the functions of time as plain symbols."""
    import sympy as sp

    q = sp.symbols(f"q1:{n + 1}", real=True)
    u = sp.symbols(f"u1:{n + 1}", real=True)
    lengths = sp.symbols(f"l1:{n + 1}", positive=True)
    masses = sp.symbols(f"m1:{n + 1}", positive=True)
    vx = vy = height = sp.S.Zero
    kinetic = potential = sp.S.Zero
    for k in range(n):
        vx += lengths[k] * sp.cos(q[k]) * u[k]
        vy += lengths[k] * sp.sin(q[k]) * u[k]
        height -= lengths[k] * sp.cos(q[k])
        kinetic += masses[k] * (vx ** 2 + vy ** 2) / 2
        potential += masses[k] * sp.Float(9.81) * height
    point = {}
    for k in range(n):
        point.update({q[k].name: 0.3 + 0.1 * k, u[k].name: 0.5 - 0.05 * k,
                      lengths[k].name: 1.0 + 0.1 * k, masses[k].name: 2.0 - 0.1 * k})
    return kinetic - potential, list(q) + list(u), point


def jax_model(family: str, n: int):
    """The same function for JAX over one array of the differentiated inputs, written as a
    Python loop (traced to n operations, as the model has), and that array's value."""
    import jax.numpy as jnp
    import numpy as np

    if family == "product":
        def f(a):
            out = 1.0
            for i in range(n):
                out = out * (jnp.sin(a[i]) + 2)
            return out
        return f, np.array([0.1 + 0.01 * i for i in range(n)])
    if family == "nesting":
        def f(v):
            x, w = v[0], v[1]
            out = x
            for _ in range(n):
                out = out * jnp.sin(out + w)
            return out
        return f, np.array([0.7, 0.3])
    if family == "sum":
        def f(x):
            out = 0.0
            for k in range(n):
                out = out + jnp.sin(x[k % 10] + (k + 1) * x[(7 * k + 3) % 10])
            return out
        return f, np.array([0.01 * (i + 1) for i in range(10)])
    if family == "rosenbrock":
        def f(x):
            out = 0.0
            for i in range(n - 1):
                out = out + 100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2
            return out
        return f, np.array([0.5 + 0.001 * i for i in range(n)])
    if family == "pendulum":
        lengths = np.array([1.0 + 0.1 * k for k in range(n)])
        masses = np.array([2.0 - 0.1 * k for k in range(n)])

        def f(v):
            q, u = v[:n], v[n:]
            vx = vy = height = kinetic = potential = 0.0
            for k in range(n):
                vx = vx + lengths[k] * jnp.cos(q[k]) * u[k]
                vy = vy + lengths[k] * jnp.sin(q[k]) * u[k]
                height = height - lengths[k] * jnp.cos(q[k])
                kinetic = kinetic + masses[k] * (vx ** 2 + vy ** 2) / 2
                potential = potential + masses[k] * 9.81 * height
            return kinetic - potential
        return f, np.array([0.3 + 0.1 * k for k in range(n)] + [0.5 - 0.05 * k for k in range(n)])
    raise ValueError(f"unknown family {family!r}")


# =========================================================================== worker side
def _emit(**record) -> None:
    print(json.dumps(record), flush=True)


def timing(spent: dict, key: str, fn, clock=time.perf_counter):
    """``fn``, adding the seconds (of ``clock``) each call takes to ``spent[key]`` (to time a
    phase of ``sg.compile`` from inside, by wrapping the function it calls)."""
    def wrapper(*args, **kwargs):
        start = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[key] += clock() - start
    return wrapper


def _worker(family: str, n: int, tool: str) -> None:
    """Measure one tool at one size; print one JSON line per finished phase (a killed run
    still reports the phases it finished)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))   # Python's default
    t0 = time.perf_counter()
    if tool == "jax":
        import jax
        jax.config.update("jax_enable_x64", True)
        f, x0 = jax_model(family, n)
        t0 = time.perf_counter()
        jf = jax.jit(jax.value_and_grad(f))
        value, g = jf(x0)
        jax.block_until_ready(g)
        _emit(phase="total", s=time.perf_counter() - t0, value=float(value))
        return
    expr, wrt, point = model(family, n)
    _emit(phase="model", s=time.perf_counter() - t0)
    if tool == "lambdify":
        import sympy as sp
        symbols = sorted(expr.free_symbols, key=lambda s: s.name)
        t0 = time.perf_counter()
        fn = sp.lambdify(symbols, expr, modules="math", cse=True)
        value = fn(*[point[s.name] for s in symbols])
        _emit(phase="total", s=time.perf_counter() - t0, value=float(value))
        return
    import symgrad as sg
    if tool == "grad":
        t0 = time.perf_counter()
        sg.grad(expr, wrt)
        _emit(phase="grad", s=time.perf_counter() - t0)
        return
    # sg.compile, with its symgrad phases timed from inside
    import importlib
    compiled = importlib.import_module("symgrad.compiled")
    spent = {"spec": 0.0, "source": 0.0, "docstring": 0.0}
    compiled.build_spec = timing(spent, "spec", compiled.build_spec)
    compiled.module_source = timing(spent, "source", compiled.module_source)
    compiled.module_docstring = timing(spent, "docstring", compiled.module_docstring)
    t0 = time.perf_counter()
    f = sg.compile(expr, wrt)
    t_compile = time.perf_counter() - t0
    own = spent["spec"] + spent["source"]
    _emit(phase="own", s=own)
    _emit(phase="docstring", s=spent["docstring"])
    t1 = time.perf_counter()
    value, grads = f.value_and_grad(**point)
    t_first = time.perf_counter() - t1
    _emit(phase="numba", s=t_compile - own + t_first)
    _emit(phase="total", s=t_compile + t_first, value=float(value))
    # the first call on arrays (the batched loop kernels compile now): reported, not plotted,
    # and skipped with --skip-array-call (it compiles the point kernel: minutes for the
    # largest models, which the cap would otherwise spend)
    if os.environ.get("SCALING_SKIP_ARRAY_CALL"):
        return
    import numpy as np
    t2 = time.perf_counter()
    arrays = {k: np.full(4, v) for k, v in point.items()}
    f.value_and_grad(**arrays)
    _emit(phase="array_call", s=time.perf_counter() - t2)


def dag_size(exprs) -> tuple:
    """(distinct nodes, edges: the operands of each distinct node) of one or more SymPy
    expressions together, counted without recursion."""
    seen: set = set()
    stack = list(exprs)
    edges = 0
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        args = getattr(node, "args", ())
        edges += len(args)
        stack.extend(a for a in args if a not in seen)
    return len(seen), edges


def _size_worker(family: str, n: int) -> None:
    """The model's DAG size, then its gradients' (one JSON line each: a capped run still
    reports the model's)."""
    expr, wrt, _ = model(family, n)
    nodes, edges = dag_size([expr])
    _emit(phase="model_dag", s=0.0, nodes=nodes, edges=edges)
    import symgrad as sg
    gradients = sg.grad(expr, wrt)
    nodes, edges = dag_size(list(gradients.values()))
    _emit(phase="grad_dag", s=0.0, nodes=nodes, edges=edges)


def measure_dag_sizes(families: list, sizes: dict, cap: float) -> dict:
    """{family: {n: {"model": [nodes, edges], "grad": [nodes, edges]}}}, each size in a
    fresh process ("grad" missing where sg.grad passed the cap)."""
    found: dict = {}
    for family in families:
        for n in sizes[family]:
            command = [sys.executable, "-m", "bench.scaling", "--worker", family, str(n),
                       "dag"]
            try:
                done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                                      timeout=cap)
                out = done.stdout
            except subprocess.TimeoutExpired as expired:
                out = expired.stdout or ""
                out = out.decode() if isinstance(out, bytes) else out
            row = {}
            for line in out.splitlines():
                if line.startswith("{"):
                    record = json.loads(line)
                    row[record["phase"].split("_")[0]] = [record["nodes"], record["edges"]]
            found.setdefault(family, {})[str(n)] = row
            print(f"dag {family:10s} n={n:<6d} {row}", flush=True)
    return found


RATIO_SIZES = [1, 2, 3, 5, 8, 16, 32]      # pendulum links: 2, ..., 64 parameters
RATIO_POINTS = 100_000
_PACKED = r"\bv(?:mul|add|sub|div|fn?m(?:add|sub)\d{3})pd\s+[^\n]*%[yz]mm"


def _ratio_worker(n: int) -> None:
    """Forward and value-and-gradient of the n-link pendulum on RATIO_POINTS points, one
    thread, best of 5; whether the value-and-gradient loop runs on packed SIMD registers
    (counted as in tests/test_fastmath.py)."""
    import re
    import timeit

    import numba
    import numpy as np

    import symgrad as sg

    numba.set_num_threads(1)
    expr, wrt, point = model("pendulum", n)
    f = sg.compile(expr, wrt)
    rng = np.random.default_rng(0)
    arrays = {k: v + 0.1 * rng.standard_normal(RATIO_POINTS) for k, v in point.items()}
    f(**arrays)
    f.value_and_grad(**arrays)
    forward = min(timeit.repeat(lambda: f(**arrays), number=1, repeat=5))
    both = min(timeit.repeat(lambda: f.value_and_grad(**arrays), number=1, repeat=5))
    loop = f.module._value_and_grad_loop
    packed = len(re.findall(_PACKED, loop.inspect_asm(loop.signatures[0])))
    _emit(phase="ratio", s=both / forward, forward_ns=forward / RATIO_POINTS * 1e9,
          both_ns=both / RATIO_POINTS * 1e9, packed=packed, parameters=len(wrt))


def measure_ratio(cap: float) -> dict:
    rows = {}
    for n in RATIO_SIZES:
        env = dict(os.environ)
        with tempfile.TemporaryDirectory(prefix="symgrad-ratio-") as cache:
            env["SYMGRAD_CACHE_DIR"] = cache
            env["NUMBA_CACHE_DIR"] = os.path.join(cache, "numba")
            command = [sys.executable, "-m", "bench.scaling", "--worker", "ratio", str(n),
                       "symgrad"]
            try:
                done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True,
                                      text=True, timeout=cap)
            except subprocess.TimeoutExpired:
                rows[str(n)] = {"capped": cap}
                print(f"ratio n={n} capped", flush=True)
                break
        records = [json.loads(line) for line in done.stdout.splitlines()
                   if line.startswith("{")]
        rows[str(n)] = records[-1] if records else {"error": done.stderr.strip()[-300:]}
        print(f"ratio n={n} {rows[str(n)]}", flush=True)
    return rows


def render_ratio(entry: dict) -> list:
    meta = entry.get("meta", {})
    lines = ["## Value and gradient against the forward pass", "",
             f"n-link pendulum Lagrangians (`model('pendulum', n)`: 2n parameters, 4n inputs) "
             f"on {RATIO_POINTS:,} points, one thread, best of 5: nanoseconds per point and "
             "their ratio; `packed`: packed AVX (ymm/zmm) double instructions in the "
             "value-and-gradient loop (0: the loop runs one point at a time).", "",
             f"{meta.get('date', '')}, `{meta.get('command', '')}`, {meta.get('machine', '')}. "
             f"{meta.get('note', '')}".rstrip(),
             "", "| links | parameters | forward ns/point | value and gradient ns/point | "
             "ratio | packed |", "|---:|---:|---:|---:|---:|---:|"]
    for n, r in sorted(entry["rows"].items(), key=lambda item: int(item[0])):
        if r.get("phase") != "ratio":
            lines.append(f"| {n} | | | | {'> cap' if 'capped' in r else 'error'} | |")
            continue
        lines.append(f"| {n} | {r['parameters']} | {r['forward_ns']:.1f} | "
                     f"{r['both_ns']:.1f} | {r['s']:.2f} | {r['packed']} |")
    return lines + [""]


# =========================================================================== driver side
def _run_one(family: str, n: int, tool: str, cap: float) -> dict:
    """{phase: seconds} of one measurement; 'error' and 'capped' say how it ended."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="symgrad-scaling-") as cache:
        env["SYMGRAD_CACHE_DIR"] = cache
        env["NUMBA_CACHE_DIR"] = os.path.join(cache, "numba")
        command = [sys.executable, "-m", "bench.scaling", "--worker", family, str(n), tool]
        try:
            done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True,
                                  text=True, timeout=cap)
            out, err, capped = done.stdout, done.stderr, False
            failed = done.returncode != 0
        except subprocess.TimeoutExpired as expired:
            out = expired.stdout or ""
            out = out.decode() if isinstance(out, bytes) else out
            err, capped, failed = "", True, False
    result: dict = {}
    for line in out.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        result[record["phase"]] = record["s"]
    if capped:
        result["capped"] = cap
    if failed:
        lines = [line.strip() for line in err.strip().splitlines() if line.strip()]
        named = [line for line in lines if "Error:" in line or "Exception:" in line]
        result["error"] = (named or lines or ["failed"])[-1][:300]
    return result


def measure(families: list, tools: list, cap: float, sizes: dict) -> dict:
    results: dict = {}
    for family in families:
        for tool in tools:
            for n in sizes[family]:
                start = time.perf_counter()
                r = _run_one(family, n, tool, cap)
                results.setdefault(family, {}).setdefault(tool, {})[str(n)] = r
                status = "capped" if "capped" in r else ("error: " + r["error"]) \
                    if "error" in r else ""
                print(f"{family:10s} n={n:<6d} {tool:9s} {time.perf_counter() - start:7.1f} s "
                      f"{_brief(r)} {status}", flush=True)
                if "capped" in r or "error" in r:
                    break
    return results


def _brief(r: dict) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in r.items() if isinstance(v, float)
                    and k not in ("capped",))


def slope(points: list) -> float | None:
    """The exponent k of t ~ n^k: least squares on log-log points from the middle size up."""
    points = [(n, t) for n, t in points if t and t > 0]
    if len(points) < 2:
        return None
    points = points[(len(points) - 1) // 2:] if len(points) >= 4 else points
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def _curve(label_results: dict, family: str, tool: str, phase: str) -> list:
    rows = label_results.get(family, {}).get(tool, {})
    return sorted((int(n), r[phase]) for n, r in rows.items() if phase in r)


def _cell(r: dict | None, phase: str) -> str:
    if r is None:
        return ""
    if phase in r:
        return f"{r[phase]:.3g}"
    if "capped" in r:
        return f"> {r['capped']:.0f}"
    if "error" in r:
        return "error"
    return ""


def _ordered(data: dict) -> list:
    """The labels in the order of their runs (``before`` first)."""
    return sorted(((label, entry) for label, entry in data.items() if "results" in entry),
                  key=lambda item: (item[0] != "before", item[0]))


PEERS = ("jax", "lambdify")     # the tools whose times do not change with symgrad's code


def _with_peers(data: dict, entry: dict) -> dict:
    """The entry, with the columns of the peers it did not run (JAX, lambdify) taken from
    another label that ran them, for the families it ran.  symgrad's own columns are never
    borrowed: a section shows only what its run measured of symgrad."""
    results = {family: dict(tools) for family, tools in entry["results"].items()}
    for _, other in _ordered(data):
        for family, tools in other["results"].items():
            if family not in results:
                continue
            for tool in PEERS:
                if tool in tools:
                    results[family].setdefault(tool, tools[tool])
    return {**entry, "results": results}


def _tables(results: dict) -> list:
    """Markdown lines: one table per family of one label's results, with fitted slopes."""
    lines = []
    for family in results:
        header = ["n"] + [title for _, _, title in COLUMNS]
        lines += [f"### {family}", "", "| " + " | ".join(header) + " |",
                  "|" + "---:|" * len(header)]
        sizes = sorted({int(n) for tool in results[family].values() for n in tool})
        for n in sizes:
            row = [str(n)]
            for tool, phase, _ in COLUMNS:
                row.append(_cell(results[family].get(tool, {}).get(str(n)), phase))
            lines.append("| " + " | ".join(row) + " |")
        row = ["slope"]
        for tool, phase, _ in COLUMNS:
            k = slope(_curve(results, family, tool, phase))
            row.append("" if k is None else f"{k:.2f}")
        lines.append("| " + " | ".join(row) + " |")
        errors = sorted({(tool, r["error"]) for tool, rows in results[family].items()
                         for r in rows.values() if "error" in r})
        for tool, error in errors:
            lines.append(f"\n{tool} failed: `{error}`")
        lines.append("")
    return lines


# (title, tool, phase, which DAG's edges the curve is fitted against)
DAG_SLOPES = [
    ("sg.grad / model", "grad", "grad", "model"),
    ("sg.grad / its result", "grad", "grad", "grad"),
    ("symgrad phases / model", "symgrad", "own", "model"),
    ("compile + first call / model", "symgrad", "total", "model"),
    ("JAX first call / model", "jax", "total", "model"),
]


def _dag_tables(results: dict, dag_sizes: dict) -> list:
    """Markdown lines: the DAG sizes of each model and of its gradients, and the slopes of
    the "now" curves against them (t ~ edges^k, from the middle size up, as :func:`slope`)."""
    lines = ["### DAG sizes", "",
             "Distinct nodes and edges (the operands of each distinct node) of each model, and "
             "of its gradients together as `sg.grad` returns them (`python -m bench.scaling "
             "--dag-sizes`).", "",
             "| family | n | model nodes | model edges | gradient nodes | gradient edges |",
             "|---|---:|---:|---:|---:|---:|"]
    for family, rows in dag_sizes.items():
        for n, row in sorted(rows.items(), key=lambda item: int(item[0])):
            model_size, grad_size = row.get("model", ["", ""]), row.get("grad", ["", ""])
            lines.append(f"| {family} | {n} | {model_size[0]} | {model_size[1]} | "
                         f"{grad_size[0]} | {grad_size[1]} |")
    header = ["family", "model edges / n"] + [title for title, _, _, _ in DAG_SLOPES]
    lines += ["", "### Slopes against the DAG", "",
              "The exponent k of t ~ e^k, where e is the number of edges of the model's DAG "
              "(or of `sg.grad`'s result): 1 is linear in the size of the DAG. The first "
              "column is the exponent of the model's edges in n.", "",
              "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for family, rows in dag_sizes.items():
        edges = {int(n): {dag: row[dag][1] for dag in ("model", "grad") if dag in row}
                 for n, row in rows.items()}
        k = slope([(n, e["model"]) for n, e in sorted(edges.items()) if "model" in e])
        row = [family, "" if k is None else f"{k:.2f}"]
        for _, tool, phase, dag in DAG_SLOPES:
            curve = [(edges[n][dag], t) for n, t in _curve(results, family, tool, phase)
                     if dag in edges.get(n, {})]
            k = slope(curve)
            row.append("" if k is None else f"{k:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def render(data: dict) -> str:
    lines = ["# Compile cost against model size", "",
             "Written by `python -m bench.scaling` (see its docstring for the families and the "
             "protocol). Seconds, one fresh process and a cold cache per cell; `> cap`: stopped "
             "at the time cap (larger sizes then skipped); slope: least-squares exponent of "
             "t ~ n^k through the log-log points from the middle size up.",
             "",
             "Columns: `sg.grad`; `sg.compile` split into symgrad's own phases (derivation, "
             "lowering, fusion, formulas, module text) and what remains (writing and importing "
             "the module, Numba compiling the kernels on the first call); the first call on "
             "floats; JAX's `jit(value_and_grad)` first call (trace, XLA compile, run) on the "
             "same function written as a Python loop; `sympy.lambdify(cse=True)` of the value "
             "alone plus one call.", ""]
    lines += ["## now", "",
              "The newest measurement of each size by any run after `before` (the sections "
              "below, by date: later runs timed the large sizes only), and the peers' times.",
              ""]
    lines += _tables(newest(data))
    if "dag_sizes" in data:
        lines += _dag_tables(newest(data), data["dag_sizes"])
    for label, entry in _ordered(data):
        entry = _with_peers(data, entry)
        meta = entry.get("meta", {})
        lines += [f"## {label}", "",
                  f"{meta.get('date', '')}, `{meta.get('command', '')}`, cap {meta.get('cap')} s, "
                  f"{meta.get('machine', '')}. {meta.get('note', '')}".rstrip(), ""]
        lines += _tables(entry["results"])
    if "ratio" in data:
        lines += render_ratio(data["ratio"])
    lines += ["![Compile cost against model size, log-log](scaling.png)", ""]
    return "\n".join(lines)


def newest(data: dict) -> dict:
    """Results in the form of one label's: for each family, tool and size, the newest
    measurement of symgrad by any run after ``before`` (runs of later sessions measured the
    large sizes only; the small ones stand as the last run that timed them), and of the
    peers by any run."""
    runs = sorted((entry.get("meta", {}).get("date", ""), label, entry)
                  for label, entry in _ordered(data))
    merged: dict = {}
    for _, label, entry in runs:
        for family, tools in entry["results"].items():
            for tool, rows in tools.items():
                if label != "before" or tool in PEERS:
                    merged.setdefault(family, {}).setdefault(tool, {}).update(rows)
    return merged


def plot(data: dict, path: Path) -> None:
    """Log-log curves of each family: symgrad before the linear passes (dashed) and now (the
    newest measurement of each size, solid), JAX's first call and lambdify once each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(SIZES)
    columns = 3
    rows = -(-len(families) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False)
    colors = {"grad": "tab:blue", "own": "tab:orange", "total": "tab:red",
              "jax": "tab:green", "lambdify": "tab:purple"}
    curves = [("grad", "grad", "sg.grad", "grad"),
              ("symgrad", "own", "symgrad phases", "own"),
              ("symgrad", "total", "compile + first call", "total"),
              ("jax", "total", "JAX first call", "jax"),
              ("lambdify", "total", "lambdify(cse)", "lambdify")]
    runs = [("before", data.get("before", {}).get("results", {}), "--"),
            ("now", newest(data), "-")]
    for ax, family in zip(axes.flat, families):
        for run, results, style in runs:
            for tool, phase, title, key in curves:
                peer = tool in PEERS
                if peer and run != "now":
                    continue        # the peers do not change with symgrad: drawn once
                curve = _curve(results, family, tool, phase)
                if not curve:
                    continue
                k = slope(curve)
                name = title if peer else f"{title} ({run})"
                ax.loglog([n for n, _ in curve], [t for _, t in curve], style if not peer
                          else ":", marker="o", ms=3, color=colors[key],
                          label=f"{name}, k={k:.2f}" if k is not None else name)
        ax.axhline(10, color="grey", lw=0.6, ls=":")
        ax.set_title(family)
        ax.set_xlabel("model size n")
        ax.set_ylabel("seconds")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}"


def _reloaded(data: dict) -> dict:
    """SCALING.json as it is now (another run may have written it since this one read it)."""
    return json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else data


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=3, metavar=("FAMILY", "N", "TOOL"))
    parser.add_argument("--label", default="after")
    parser.add_argument("--cap", type=float, default=60.0)
    parser.add_argument("--only", default=",".join(SIZES))
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--sizes", action="append", default=[],
                        help="FAMILY=n1,n2,... (repeatable)")
    parser.add_argument("--note", default="")
    parser.add_argument("--skip-array-call", action="store_true",
                        help="do not time the first call on arrays (workers inherit it)")
    parser.add_argument("--render", action="store_true")
    parser.add_argument("--ratio", action="store_true",
                        help="value-and-gradient / forward on the pendulums (section 'ratio')")
    parser.add_argument("--dag-sizes", action="store_true",
                        help="count the DAG of each model and of its gradients ('dag_sizes')")
    args = parser.parse_args(argv)
    if args.worker:
        family, n, tool = args.worker
        if family == "ratio":
            _ratio_worker(int(n))
            return
        if tool == "dag":
            _size_worker(family, int(n))
            return
        _worker(family, int(n), tool)
        return
    if args.skip_array_call:
        os.environ["SCALING_SKIP_ARRAY_CALL"] = "1"
    data = json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else {}
    if args.dag_sizes:
        sizes = dict(SIZES)
        for item in args.sizes:
            family, values = item.split("=")
            sizes[family] = [int(v) for v in values.split(",")]
        found = measure_dag_sizes([f for f in args.only.split(",") if f], sizes, args.cap)
        data = _reloaded(data)
        for family, rows in found.items():
            data.setdefault("dag_sizes", {}).setdefault(family, {}).update(rows)
        JSON_PATH.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    elif args.ratio:
        rows = measure_ratio(args.cap)
        data = _reloaded(data)
        data["ratio"] = {"rows": rows, "meta": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python -m bench.scaling " + " ".join(argv or sys.argv[1:]),
            "machine": _machine()}}
        JSON_PATH.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    elif not args.render:
        sizes = dict(SIZES)
        for item in args.sizes:
            family, values = item.split("=")
            sizes[family] = [int(v) for v in values.split(",")]
        families = [f for f in args.only.split(",") if f]
        start = time.perf_counter()
        results = measure(families, [t for t in args.tools.split(",") if t], args.cap, sizes)
        data = _reloaded(data)
        entry = data.get(args.label, {"results": {}})
        for family, tools in results.items():      # a rerun of some sizes keeps the others
            for tool, rows in tools.items():
                entry["results"].setdefault(family, {}).setdefault(tool, {}).update(rows)
        entry["meta"] = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python -m bench.scaling " + " ".join(argv or sys.argv[1:]),
            "cap": args.cap, "machine": _machine(),
            "wall_s": round(time.perf_counter() - start),
            "note": args.note or entry.get("meta", {}).get("note", ""),
        }
        data[args.label] = entry
        JSON_PATH.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    MD_PATH.write_text(render(data))
    plot(data, PNG_PATH)
    print(f"wrote {MD_PATH}, {PNG_PATH}")


if __name__ == "__main__":
    main()
