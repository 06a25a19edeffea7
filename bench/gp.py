"""R3: a Gaussian process's negative log marginal likelihood, RBF kernel, n = 200, one thread.

    nll = y^T K^-1 y / 2 + logdet(K) / 2 + n log(2 pi) / 2,
    K = s^2 exp(-D / (2 l^2)) + sigma^2 I,  D_ij = |x_i - x_j|^2 built from X (n x 3)

value and gradient with respect to the three log hyper-parameters (log l, log s, log sigma),
symgrad's ``f.value_and_grad`` against JAX's jitted ``value_and_grad`` of the same model
written as a JAX user writes it (``jnp.linalg.solve`` and ``slogdet``), and of the Cholesky
form (``cho_factor`` / ``cho_solve``).  Interleaved repeats, medians.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.gp [--no-write]

writes the "R3: Gaussian-process likelihood" section of bench/RESULTS.md (replacing an older
one) unless --no-write.
"""

from __future__ import annotations

import os

for _variable in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                  "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"]:
    os.environ[_variable] = "1"       # one thread: set before numpy, numba, jax load
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bench.second_order import _fmt, timed  # noqa: E402

N, D = 200, 3
THETA = (0.3, 0.2, -1.0)          # log length scale, log signal, log noise
SECTION = "## R3: Gaussian-process likelihood (RBF kernel, n = 200)"


def model(n=N, d=D):
    import sympy as sp

    import symgrad as sg
    X, y = sg.matrix("X", n, d), sg.vector("y", n)
    log_scale, log_signal, log_noise = sp.symbols("log_scale log_signal log_noise")
    norms = sg.sum(sg.hadamard(X, X), axis=1)
    distances = sg.broadcast(norms, (n, n)) + sg.broadcast(norms.T, (n, n)) - 2 * X @ X.T
    K = (sp.exp(2 * log_signal) * sg.exp(-distances * sp.exp(-2 * log_scale) / 2)
         + sp.exp(2 * log_noise) * sp.Identity(n))
    nll = (sg.dot(y, sg.inv(K) @ y) / 2 + sg.logdet(K) / 2
           + sp.Rational(n, 2) * sp.log(2 * sp.pi))
    return nll, [log_scale, log_signal, log_noise]


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2.0, 2.0, size=(N, D))
    y = np.sin(X.sum(axis=1)) + 0.1 * rng.normal(size=N)
    return X, y


def implementations(X, y):
    """{name: callable returning (value, gradient as an array of 3)}, and symgrad's compile
    time in seconds (sg.compile and the first call)."""
    import symgrad as sg

    nll, wrt = model()
    start = time.perf_counter()
    f = sg.compile(nll, wrt, name="r3_gp")
    theta = dict(zip(["log_scale", "log_signal", "log_noise"], THETA))
    f.value_and_grad(X=X, y=y, **theta)
    compile_seconds = time.perf_counter() - start

    def symgrad_vg():
        value, grads = f.value_and_grad(X=X, y=y, **theta)
        return value, np.array([grads["log_scale"], grads["log_signal"], grads["log_noise"]])

    out = {"symgrad": symgrad_vg}
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        jnp = jax.numpy
        from jax.scipy.linalg import cho_factor, cho_solve

        def kernel(theta, X):
            sq = jnp.sum((X[:, None, :] - X[None, :, :]) ** 2, axis=-1)
            return (jnp.exp(2 * theta[1]) * jnp.exp(-sq * jnp.exp(-2 * theta[0]) / 2)
                    + jnp.exp(2 * theta[2]) * jnp.eye(X.shape[0]))

        def nll_solve(theta, X, y):
            K = kernel(theta, X)
            return (y @ jnp.linalg.solve(K, y) / 2 + jnp.linalg.slogdet(K)[1] / 2
                    + N / 2 * np.log(2 * np.pi))

        def nll_cholesky(theta, X, y):
            factor = cho_factor(kernel(theta, X), lower=True)
            return (y @ cho_solve(factor, y) / 2 + jnp.sum(jnp.log(jnp.diag(factor[0])))
                    + N / 2 * np.log(2 * np.pi))

        arguments = (jnp.asarray(THETA), jnp.asarray(X), jnp.asarray(y))
        for name, fn in [("JAX jit (solve, slogdet)", nll_solve),
                         ("JAX jit (Cholesky)", nll_cholesky)]:
            vg = jax.jit(jax.value_and_grad(fn))

            def call(vg=vg):
                value, grad = jax.block_until_ready(vg(*arguments))
                return float(value), np.asarray(grad)

            out[name] = call
    except ImportError:
        pass
    return out, compile_seconds, f


def main(write: bool = True) -> str:
    import symgrad as sg

    X, y = data()
    functions, compile_seconds, f = implementations(X, y)
    reference = functions["symgrad"]()
    errors = {}
    for name, fn in functions.items():
        value, grad = fn()
        errors[name] = max(abs(value - reference[0]) / abs(reference[0]),
                           float(np.abs(grad - reference[1]).max() / np.abs(reference[1]).max()))
    times = timed(functions)
    kernel = f.source[f.source.index("def _value_and_grad_kernel("):]
    kernel = kernel[:kernel.index("\ndef ", 1)]
    calls = {c: kernel.count(c + "(") for c in ("sg_factor", "sg_factor_inverse",
                                                "sg_factor_solve", "sg_factor_logdet",
                                                "np.dot")}
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i.get('internal_api')} {i.get('version')} "
                         f"{i.get('architecture')}" for i in threadpool_info()
                         if i.get("user_api") == "blas")
    except ImportError:
        blas = "unknown"
    nll, wrt = model()
    formulas = sg.show(sg.grad(nll, wrt), output="nll")
    lines = [SECTION, "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
             "`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.gp`; one thread; "
             f"BLAS {blas}. n = {N} points in {D} dimensions, the kernel matrix built from "
             "the data inside each model; value and gradient with respect to the three log "
             "hyper-parameters. Median of 7 interleaved repeats of >= 0.2 s loops; symgrad's "
             "calls include its wrapper (input checks, the result dict). Error: largest "
             "relative difference from symgrad (value, gradient). Load average at the end "
             f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine). "
             f"symgrad's sg.compile and first call: {compile_seconds:.1f} s.",
             "",
             "symgrad's gradient, as printed by `sg.show`:", "", "```", formulas, "```", "",
             "Its value-and-gradient kernel factorises K once (a Cholesky: K is symmetric by "
             "construction) and reads the factor for the log-determinant and the one inverse "
             "the gradient needs; the value alone solves with the factor and forms no "
             f"inverse. Calls in the kernel: {calls}.", "",
             "| implementation | median | ratio to symgrad | error |",
             "|---|---:|---:|---:|"]
    base = times["symgrad"]
    for name, seconds in times.items():
        lines.append(f"| {name} | {_fmt(seconds)} | {seconds / base:.2f} | "
                     f"{errors[name]:.1e} |")
    lines.append("")
    section = "\n".join(lines)
    if write:
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
    print(main(write="--no-write" not in sys.argv[1:]))
