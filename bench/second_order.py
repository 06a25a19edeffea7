"""W5: second order on L2-regularised logistic regression (N = 1000, D = 100), one thread.

f(w) = sum log(1 + exp(-y_i x_i^T w)) + (lam/2) ||w||^2, labels y_i in {-1, 1}.  The full
Hessian and a Hessian-vector product, symgrad (``f.hessian``, ``f.hvp``) against the
hand-written NumPy formula X^T diag(s (1 - s)) X + lam I, JAX (``jax.hessian``, jvp of grad,
jit) and PyTorch (``torch.func.hessian``, jvp of grad), and symgrad's model inside them
(``f.to_jax()`` under the same JAX transforms, ``f.to_torch()`` under
``torch.autograd.functional``: second order through the wrappers); then per-point
Hessians of W4 (the 3-link arm at 100,000 points) against ``jax.vmap(jax.hessian)``.
Interleaved repeats, medians.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.second_order

writes the "W5: second order" section of bench/RESULTS.md (replacing an older one).
"""

from __future__ import annotations

import os

for _variable in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                  "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"]:
    os.environ[_variable] = "1"       # one thread: set before numpy, numba, jax, torch load
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

N, D, LAM = 1000, 100, 0.1
SECTION = "## W5: second order (logistic regression, L2, N = 1000, D = 100)"


def model():
    import sympy as sp

    import symgrad as sg
    n, d = sp.symbols("n d", integer=True, positive=True)
    X, y, w = sg.matrix("X", n, d), sg.vector("y", n), sg.vector("w", d)
    lam = sp.Symbol("lam")
    loss = sg.sum(sg.softplus(-sg.hadamard(y, X @ w))) + lam / 2 * sg.dot(w, w)
    return loss, w


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D)) / np.sqrt(D)
    y = np.where(rng.random(N) < 0.5, -1.0, 1.0)
    w = rng.normal(size=D) * 0.5
    v = rng.normal(size=D)
    return X, y, w, v


def implementations(X, y, w, v):
    """{(task, name): callable returning an array}, and the reference of each task."""
    import symgrad as sg

    loss, wsym = model()
    f = sg.compile(loss, [wsym], name="w5_logistic")
    out = {}
    out[("hessian", "symgrad")] = lambda: f.hessian(w=w, X=X, y=y, lam=LAM)[("w", "w")]
    out[("hvp", "symgrad")] = lambda: f.hvp({"w": v}, w=w, X=X, y=y, lam=LAM)["w"]

    def hand_hessian():
        s = 1.0 / (1.0 + np.exp(y * (X @ w)))
        d = s * (1.0 - s)
        H = X.T @ (X * d[:, None])
        H.flat[::D + 1] += LAM
        return H

    def hand_hvp():
        s = 1.0 / (1.0 + np.exp(y * (X @ w)))
        return X.T @ (s * (1.0 - s) * (X @ v)) + LAM * v

    out[("hessian", "hand NumPy")] = hand_hessian
    out[("hvp", "hand NumPy")] = hand_hvp
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        jnp = jax.numpy

        def jloss(w):
            return jnp.sum(jnp.logaddexp(0.0, -y * (X @ w))) + LAM / 2 * jnp.dot(w, w)

        jhess = jax.jit(jax.hessian(jloss))
        jhvp = jax.jit(lambda w, v: jax.jvp(jax.grad(jloss), (w,), (v,))[1])
        wj, vj = jnp.asarray(w), jnp.asarray(v)
        out[("hessian", "JAX jit")] = lambda: np.asarray(jhess(wj).block_until_ready())
        out[("hvp", "JAX jit")] = lambda: np.asarray(jhvp(wj, vj).block_until_ready())
        # symgrad inside JAX: the same jit'd transforms of f.to_jax() (second order from f.hvp)
        jf = f.to_jax()

        def jsym(w):
            return jf(w=w, X=X, y=y, lam=LAM)

        shess = jax.jit(jax.hessian(jsym))
        shvp = jax.jit(lambda w, v: jax.jvp(jax.grad(jsym), (w,), (v,))[1])
        out[("hessian", "symgrad to_jax, JAX jit")] = lambda: np.asarray(
            shess(wj).block_until_ready())
        out[("hvp", "symgrad to_jax, JAX jit")] = lambda: np.asarray(
            shvp(wj, vj).block_until_ready())
    except ImportError:
        pass
    try:
        import torch
        torch.set_num_threads(1)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        wt, vt = torch.from_numpy(w), torch.from_numpy(v)

        def tloss(w):
            return torch.nn.functional.softplus(-yt * (Xt @ w)).sum() + LAM / 2 * (w @ w)

        thess = torch.func.hessian(tloss)
        tgrad = torch.func.grad(tloss)
        out[("hessian", "torch.func")] = lambda: thess(wt).numpy()
        out[("hvp", "torch.func")] = lambda: torch.func.jvp(tgrad, (wt,), (vt,))[1].numpy()
        # symgrad inside PyTorch: torch.autograd.functional of f.to_torch() (double backward
        # through f.hvp; torch.func transforms do not reach its kernels)
        tf = f.to_torch()

        def tsym(w):
            return tf(w=w, X=Xt, y=yt, lam=LAM)

        out[("hessian", "symgrad to_torch, autograd.functional")] = lambda: \
            torch.autograd.functional.hessian(tsym, wt).numpy()
        out[("hvp", "symgrad to_torch, autograd.functional")] = lambda: \
            torch.autograd.functional.hvp(tsym, wt, vt)[1].numpy()
    except ImportError:
        pass
    return out, f


def w4_implementations():
    """Per-point Hessians of W4 (the 3-link arm, 100,000 points, 6 scalar parameters):
    symgrad's f.hessian (21 distinct blocks, each one fused loop over the points) against
    jax.vmap(jax.hessian) under jit.  Returns ({name: callable giving (N, 6, 6)}, seconds
    symgrad took to compile its blocks)."""
    import symgrad as sg
    from bench.workloads import W4_ARGS, w4_inputs, w4_model

    energy, wrt = w4_model()
    inputs = w4_inputs()
    f = sg.compile(energy, wrt, name="w5_arm")
    names = list(W4_ARGS)
    start = time.perf_counter()
    f.hessian(**inputs)
    compile_seconds = time.perf_counter() - start

    def symgrad_hessian():
        blocks = f.hessian(**inputs)
        return np.stack([np.stack([blocks[(p, q)] for q in names], axis=-1) for p in names],
                        axis=-2)

    out = {"symgrad": symgrad_hessian}
    try:
        import jax

        from symgrad.checking.translate import translate
        jax.config.update("jax_enable_x64", True)
        model = translate(energy, wrt, "jax")

        def of_vector(v):
            return model(**{n: v[k] for k, n in enumerate(names)})

        batched = jax.jit(jax.vmap(jax.hessian(of_vector)))
        stacked = jax.numpy.asarray(np.stack([inputs[n] for n in names], axis=1))
        out["JAX jit vmap(hessian)"] = lambda: np.asarray(batched(stacked).block_until_ready())
    except ImportError:
        pass
    return out, compile_seconds


def scipy_overhead() -> list[tuple[str, float, float]]:
    """f.scipy's calls on a small problem (the logistic loss, N = 20, D = 5, where the
    kernels take microseconds) against the compiled calls they wrap: f.forward,
    f.value_and_grad, and the Hessian's and HVP's compiled parts called with their
    arguments ready (recorded from one call).  [(method, seconds, wrapped seconds)]."""
    import symgrad as sg

    loss, wsym = model()
    f = sg.compile(loss, [wsym], name="w5_scipy_overhead")
    rng = np.random.default_rng(1)
    X0, y0 = rng.normal(size=(20, 5)), np.where(rng.random(20) < 0.5, -1.0, 1.0)
    data = dict(X=X0, y=y0, lam=LAM)
    p = f.scipy(**data)
    x, v = rng.normal(size=5), rng.normal(size=5)

    def wrapped(kind, call):
        piece = f._second_order[kind]
        recorded = {}
        original = piece.value_and_grad

        def record(**arguments):
            recorded.update(arguments)
            return original(**arguments)

        piece.value_and_grad = record
        call()
        piece.value_and_grad = original
        return lambda: original(**recorded)

    p.hess(x)
    p.hessp(x, v)       # compile, and keep the pieces at x: the products of Newton-CG
    pairs = {"fun": (lambda: p.fun(x), lambda: f.forward(w=x, **data)),
             "jac": (lambda: p.jac(x), lambda: f.value_and_grad(w=x, **data)),
             "hess": (lambda: p.hess(x), wrapped("hessian", lambda: p.hess(x))),
             "hessp": (lambda: p.hessp(x, v), wrapped("hvp", lambda: p.hessp(x, v)))}
    functions = {}
    for name, (call, inner) in pairs.items():
        functions[(name, "p")] = call
        functions[(name, "wrapped")] = inner
    times = timed(functions, budget=0.05)
    return [(name, times[(name, "p")], times[(name, "wrapped")]) for name in pairs]


def timed(functions: dict, repeats: int = 7, budget: float = 0.2) -> dict:
    """Median seconds per call of each function: loops of >= budget seconds, repeats
    interleaved across functions (order rotated)."""
    loops = {}
    for key, fn in functions.items():
        fn()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < budget:
            fn()
            count += 1
        loops[key] = max(count, 1)
    samples: dict = {key: [] for key in functions}
    keys = list(functions)
    for r in range(repeats):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            fn, count = functions[key], loops[key]
            start = time.perf_counter()
            for _ in range(count):
                fn()
            samples[key].append((time.perf_counter() - start) / count)
    return {key: statistics.median(s) for key, s in samples.items()}


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    return f"{seconds * 1e3:.2f} ms"


def main() -> str:
    import symgrad as sg

    X, y, w, v = data()
    functions, f = implementations(X, y, w, v)
    reference = {task: functions[(task, "hand NumPy")]() for task in ("hessian", "hvp")}
    errors = {}
    for (task, name), fn in functions.items():
        got, want = np.asarray(fn()), reference[task]
        errors[(task, name)] = float(np.abs(got - want).max() / np.abs(want).max())
    times = timed(functions)
    loss, wsym = model()
    formula = sg.show(sg.hessian(loss, [wsym]), output="f")
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i.get('internal_api')} {i.get('version')} "
                         f"{i.get('architecture')}" for i in threadpool_info()
                         if i.get("user_api") == "blas")
    except ImportError:
        blas = "unknown"
    lines = [SECTION, "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
             "`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.second_order`; "
             f"one thread; BLAS {blas}. Median of 7 interleaved repeats of >= 0.2 s loops. "
             "symgrad's calls include its wrapper (input checks, the result dict). "
             "Error: max|a - r| / max|r| against hand NumPy. Load average at the end "
             f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine: other "
             "processes' load makes all rows slower, the interleaving keeps ratios fair).",
             "",
             "symgrad's Hessian, as printed by `sg.show(sg.hessian(f, [w]))`:", "", "```",
             formula, "```", "",
             "| task | implementation | median | ratio to symgrad | error |",
             "|---|---|---:|---:|---:|"]
    for task in ("hessian", "hvp"):
        base = times[(task, "symgrad")]
        for (t, name), seconds in times.items():
            if t != task:
                continue
            lines.append(f"| {'Hessian' if task == 'hessian' else 'Hessian-vector'} | {name} "
                         f"| {_fmt(seconds)} | {seconds / base:.2f} | "
                         f"{errors[(t, name)]:.1e} |")
    lines += ["", "`f.scipy` on a small problem (logistic loss, N = 20, D = 5): each call against "
              "the compiled call it wraps (`f.forward`, `f.value_and_grad`, the Hessian's and "
              "HVP's compiled parts with their arguments ready; `hess` includes the mirrored "
              "product, `hessp` reuses the pieces at x):", "",
              "| call | median | compiled call | beyond it |", "|---|---:|---:|---:|"]
    for name, seconds, inner in scipy_overhead():
        lines.append(f"| p.{name} | {seconds * 1e6:.1f} us | {inner * 1e6:.1f} us | "
                     f"{(seconds - inner) * 1e6:.1f} us |")
    arm, arm_compile = w4_implementations()
    arm_reference = arm["symgrad"]()
    arm_times = timed(arm, repeats=5)
    lines += ["", "Per-point Hessians of W4 (3-link arm, 6 scalar parameters, 100,000 points; "
              f"symgrad compiled its 21 distinct blocks in {arm_compile:.1f} s on first use):",
              "", "| task | implementation | median | ratio to symgrad | error |",
              "|---|---|---:|---:|---:|"]
    for name, seconds in arm_times.items():
        got = arm[name]()
        error = float(np.abs(got - arm_reference).max() / np.abs(arm_reference).max())
        lines.append(f"| W4 per-point Hessian | {name} | {_fmt(seconds)} | "
                     f"{seconds / arm_times['symgrad']:.2f} | {error:.1e} |")
    lines.append("")
    section = "\n".join(lines)
    results = Path(__file__).with_name("RESULTS.md")
    text = results.read_text(encoding="utf-8") if results.exists() else ""
    if SECTION in text:
        before, _, after = text.partition(SECTION)
        rest = after.split("\n## ", 1)
        text = before + section + ("\n## " + rest[1] if len(rest) > 1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results.write_text(text, encoding="utf-8")
    return section


if __name__ == "__main__":
    print(main())
