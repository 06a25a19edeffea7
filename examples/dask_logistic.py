"""L2-regularised logistic regression on 10^7 rows that live on a Dask cluster.

    loss = mean over the N rows of bce(X w + b, y) + (lam / 2) ||w||^2

X (N x D) and y are generated lazily with dask.array.random and kept on the workers; symgrad
checks that the loss is a mean over the rows plus a penalty, runs its kernel on each chunk
where the chunk lives, adds the partial values and gradients in a tree, and adds the penalty
once.  scipy.optimize.minimize (L-BFGS-B) drives the fit with the distributed value and
gradient, on a LocalCluster of 1 and then 2 worker processes, and the script compares it with
the in-memory fit on the first 10^6 rows.

Run: python examples/dask_logistic.py [--rows 10000000] [--workers 1,2]
(Loading this file, as `symgrad show` and `symgrad generate` do, only defines the model.)
"""

import numpy as np
import sympy as sp

import symgrad as sg

N = sp.Symbol("N", integer=True, positive=True)
D = 10
X, y = sg.matrix("X", N, D), sg.vector("y", N)
w, b, lam = sg.vector("w", D), sp.Symbol("b"), sp.Symbol("lam")
logits = X @ w + sg.broadcast(b, (N, 1))
loss = sg.mean(sg.binary_cross_entropy_with_logits(logits, y)) + lam / 2 * sg.dot(w, w)
l2_logistic_regression = sg.Model("l2_logistic_regression", loss, wrt=[w, b])


def _labels(X_block, uniform_block, true_w, true_b):
    probability = 1 / (1 + np.exp(-(X_block @ true_w + true_b)))
    return (uniform_block[:, 0] < probability).astype(float)[:, None]


def make_data(rows: int, chunk_rows: int, seed: int = 0):
    """Lazy X (rows x D, standard normal) and labels y drawn from a known model: (X, y, w, b)
    as Dask arrays and the true parameters.  Each chunk of y is made from the chunk of X it
    belongs with, so the cluster keeps the two on one worker."""
    import dask.array as da

    true_w = np.linspace(-1.0, 1.0, D)
    true_b = 0.25
    rng = da.random.default_rng(seed)
    Xd = rng.normal(size=(rows, D), chunks=(chunk_rows, D))
    uniform = rng.random(size=(rows, 1), chunks=(chunk_rows, 1))
    yd = da.map_blocks(_labels, Xd, uniform, true_w, true_b, dtype=float,
                       chunks=uniform.chunks)[:, 0]
    return Xd, yd, true_w, true_b


def fit(f, X, y, lam: float):
    """L-BFGS-B on the value and gradient of f; returns (w, b, seconds, evaluations)."""
    import time

    from scipy.optimize import minimize

    def value_and_grad(theta):
        value, grads = f.value_and_grad(w=theta[:D], b=float(theta[D]), X=X, y=y, lam=lam)
        return value, np.append(grads["w"], grads["b"])

    start = time.perf_counter()
    result = minimize(value_and_grad, np.zeros(D + 1), jac=True, method="L-BFGS-B",
                      options={"gtol": 1e-8, "ftol": 1e-12})
    seconds = time.perf_counter() - start
    return result.x[:D], result.x[D], seconds, result.nfev


def main(argv=None) -> None:
    import argparse
    import os
    import time

    from dask.distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10**7)
    parser.add_argument("--chunk-rows", type=int, default=10**6)
    parser.add_argument("--in-memory-rows", type=int, default=10**6)
    parser.add_argument("--workers", default="1,2", help="cluster sizes to run, e.g. 1,2")
    parser.add_argument("--lam", type=float, default=1e-4)
    args = parser.parse_args(argv)

    f = l2_logistic_regression.compiled
    print(l2_logistic_regression.show())
    X_lazy, y_lazy, true_w, true_b = make_data(args.rows, args.chunk_rows)

    # in memory: the first rows, as NumPy arrays, fitted in this process
    rows = args.in_memory_rows
    X_memory = X_lazy[:rows].compute(scheduler="threads")
    y_memory = y_lazy[:rows].compute(scheduler="threads")
    f.value_and_grad(w=np.zeros(D), b=0.0, X=X_memory, y=y_memory, lam=args.lam)   # compile
    w_memory, b_memory, seconds, evaluations = fit(f, X_memory, y_memory, args.lam)
    table = [("in memory, this process", rows, seconds, evaluations, w_memory, b_memory)]

    # one thread per worker, and Numba's and BLAS's too: a worker's speed is one core's
    single_threaded = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                       "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    same_rows = None
    for workers in [int(k) for k in args.workers.split(",")]:
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None, env=single_threaded) as cluster, \
                Client(cluster):
            start = time.perf_counter()
            X_cluster, y_cluster = X_lazy.persist(), y_lazy.persist()     # data on the workers
            f.value_and_grad(w=np.zeros(D), b=0.0, X=X_cluster, y=y_cluster, lam=args.lam)
            setup = time.perf_counter() - start
            w_dask, b_dask, seconds, evaluations = fit(f, X_cluster, y_cluster, args.lam)
            table.append((f"Dask, {workers} worker{'s' if workers > 1 else ''}", args.rows,
                          seconds, evaluations, w_dask, b_dask))
            print(f"\n{workers} worker(s): data generated and persisted, first call "
                  f"(workers compile) {setup:.1f} s")
            if same_rows is None:
                # the same rows as in memory, in 4 chunks: the same fit, to rounding
                chunks = max(1, rows // 4)
                w_same, b_same, _, _ = fit(f, X_cluster[:rows].rechunk((chunks, D)),
                                           y_cluster[:rows].rechunk(chunks), args.lam)
                same_rows = max(np.abs(w_same - w_memory).max(), abs(b_same - b_memory))

    print(f"\nL-BFGS-B fits (D = {D}, lam = {args.lam}; os.cpu_count() = {os.cpu_count()}); "
          "an evaluation is one value-and-gradient call (the fit's time / its evaluations):")
    print(f"{'':26s} {'rows':>10s} {'fit s':>7s} {'evals':>6s} {'s/eval':>7s} "
          f"{'rows/s':>9s} {'max|w - w_true|':>16s}")
    for name, n, seconds, evaluations, w_fit, b_fit in table:
        error = max(np.abs(w_fit - true_w).max(), abs(b_fit - true_b))
        print(f"{name:26s} {n:>10,d} {seconds:7.2f} {evaluations:6d} {seconds / evaluations:7.3f} "
              f"{n * evaluations / seconds:9.3g} {error:16.2e}")
    if same_rows is not None:
        print(f"\nDask fit on the in-memory rows (4 chunks) against the in-memory fit: max "
              f"difference {same_rows:.1e}")
    if len(table) > 1:
        w_big = table[-1][4]
        print(f"{args.rows:,d}-row fit against the {rows:,d}-row fit: max difference "
              f"{np.abs(w_big - w_memory).max():.2e} (sampling error ~ 1/sqrt(rows))")


if __name__ == "__main__":
    main()
