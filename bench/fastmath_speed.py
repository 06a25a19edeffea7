"""Per-element timing of symgrad.codegen.fastmath against NumPy and libm-in-Numba.

For each function three variants are timed on the same float64 input:

* ``sg``    -- ``out[i] = sg_f(x[i])`` in an ``@njit`` loop (the generated-code pattern),
* ``numpy`` -- NumPy ufunc(s) writing into a preallocated array (stable expressions
  for the functions NumPy lacks, see ``NUMPY`` below),
* ``libm``  -- ``out[i] = np.f(x[i])`` / ``math.f`` in the same ``@njit`` loop.

Each time is the median of 7 repeats (interleaved across the three variants);
a repeat runs the kernel enough times to take ~20 ms on an array of 2**16
elements (fits in L2, so this measures compute, not memory bandwidth). Usage::

    python bench/fastmath_speed.py [--n 65536] [--repeats 7]
"""

import argparse
import math
import os
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from symgrad.codegen import fastmath as fm  # noqa: E402

LOOP_FLAGS = {"nsz", "arcp", "contract", "reassoc"}  # what symgrad's generator uses


def _make_loop(f):
    @numba.njit(fastmath=LOOP_FLAGS)
    def loop(x, out):
        for i in range(x.shape[0]):
            out[i] = f(x[i])

    return loop


@numba.njit
def _naive_sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


@numba.njit
def _naive_softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


@numba.njit
def _naive_logsigmoid(v):
    return -(max(-v, 0.0) + math.log1p(math.exp(-abs(v))))


# name -> (libm-style scalar function for the Numba loop, NumPy callable (x, out))
LIBM = {
    "exp": numba.njit(lambda v: np.exp(v)),
    "expm1": numba.njit(lambda v: np.expm1(v)),
    "log": numba.njit(lambda v: np.log(v)),
    "log1p": numba.njit(lambda v: np.log1p(v)),
    "tanh": numba.njit(lambda v: np.tanh(v)),
    "sigmoid": _naive_sigmoid,
    "softplus": _naive_softplus,
    "logsigmoid": _naive_logsigmoid,
    "sin": numba.njit(lambda v: np.sin(v)),
    "cos": numba.njit(lambda v: np.cos(v)),
}


def _np_sigmoid(x, out):
    # stable: exp(-log(1 + exp(-x)))
    np.logaddexp(0.0, -x, out=out)
    np.negative(out, out=out)
    np.exp(out, out=out)


def _np_logsigmoid(x, out):
    np.logaddexp(0.0, -x, out=out)
    np.negative(out, out=out)


NUMPY = {
    "exp": lambda x, out: np.exp(x, out=out),
    "expm1": lambda x, out: np.expm1(x, out=out),
    "log": lambda x, out: np.log(x, out=out),
    "log1p": lambda x, out: np.log1p(x, out=out),
    "tanh": lambda x, out: np.tanh(x, out=out),
    "sigmoid": _np_sigmoid,
    "softplus": lambda x, out: np.logaddexp(0.0, x, out=out),
    "logsigmoid": _np_logsigmoid,
    "sin": lambda x, out: np.sin(x, out=out),
    "cos": lambda x, out: np.cos(x, out=out),
}


def _inputs(name, n, rng):
    if name == "log":
        return np.exp(rng.uniform(-50.0, 50.0, n))
    if name == "log1p":
        return np.expm1(rng.uniform(-5.0, 5.0, n))
    if name in ("sin", "cos"):
        return rng.uniform(-100.0, 100.0, n)
    if name in ("exp", "expm1"):
        return rng.uniform(-50.0, 50.0, n)
    return rng.uniform(-20.0, 20.0, n)


def _time_per_element(fns, x, out, repeats):
    """Median ns/element of each fn(x, out); the repeats are interleaved across
    fns so that a background load affects all variants alike."""
    inner = []
    for fn in fns:
        fn(x, out)  # compile / warm up
        t0 = time.perf_counter()
        fn(x, out)
        inner.append(max(1, int(0.02 / max(time.perf_counter() - t0, 1e-7))))
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, k, acc in zip(fns, inner, samples, strict=True):
            t0 = time.perf_counter()
            for _ in range(k):
                fn(x, out)
            acc.append((time.perf_counter() - t0) / (k * x.size))
    return [float(np.median(acc)) * 1e9 for acc in samples]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 16)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"ns/element, float64, n={args.n}, median of {args.repeats} "
          f"({os.cpu_count()} CPUs, load average {load:.2f} at start)")
    print(f"{'function':<11} {'sg (njit)':>10} {'numpy':>8} {'libm (njit)':>12} "
          f"{'vs numpy':>9} {'vs libm':>8}")
    for name, sg_name in fm.FASTMATH_FUNCTIONS.items():
        x = _inputs(name, args.n, rng)
        out = np.empty_like(x)
        variants = [_make_loop(getattr(fm, sg_name)), NUMPY[name], _make_loop(LIBM[name])]
        t_sg, t_np, t_lm = _time_per_element(variants, x, out, args.repeats)
        print(f"{name:<11} {t_sg:10.2f} {t_np:8.2f} {t_lm:12.2f} "
              f"{t_np / t_sg:8.1f}x {t_lm / t_sg:7.1f}x")


if __name__ == "__main__":
    main()
