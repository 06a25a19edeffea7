"""Newton's method on L2-regularised logistic regression with symgrad's Hessian.

    loss = sum softplus(-y ∘ (X w)) + (lam/2) ||w||^2,   labels y in {-1, 1}
    d²loss/dw dw = lam I + X^T diag(h ∘ y^2 ∘ (1 - h)) X,   h = sigmoid((X w) ∘ y)

The Hessian is derived at the matrix level and computed as one symmetric X^T D X product
(BLAS dsyrk); ``f.scipy(...)`` hands fun, jac, hess and hessp to ``scipy.optimize.minimize``.
The model asks for second order, so its generated module (generated/newton_logistic.py)
has ``hessian`` and ``hvp`` too.  The script
prints the formula, then the iterations each method needs to converge.

Run: python examples/newton_logistic.py
"""

import sympy as sp

import symgrad as sg

n, d = sp.symbols("n d", integer=True, positive=True)
X, y, w = sg.matrix("X", n, d), sg.vector("y", n), sg.vector("w", d)
lam = sp.Symbol("lam")
loss = sg.sum(sg.softplus(-sg.hadamard(y, X @ w))) + lam / 2 * sg.dot(w, w)
newton_logistic = sg.Model("newton_logistic", loss, wrt=[w], second_order=True)


if __name__ == "__main__":
    import time

    import numpy as np
    from scipy.optimize import minimize

    print(sg.show(sg.hessian(loss, [w]), output="loss"))
    rng = np.random.default_rng(0)
    N, D = 1000, 100
    X0 = rng.normal(size=(N, D)) / np.sqrt(D)
    y0 = np.where(X0 @ rng.normal(size=D) + 0.5 * rng.normal(size=N) > 0, 1.0, -1.0)
    problem = newton_logistic.compiled.scipy(X=X0, y=y0, lam=0.1)
    start = problem.pack(w=np.zeros(D))
    problem.hess(start)          # compile the Hessian and HVP kernels before timing
    problem.hessp(start, start)
    print(f"\n{'method':<28}{'iterations':>11}{'|gradient|':>12}{'time':>10}")
    for method, extra in [("trust-exact", {"hess": problem.hess}),
                          ("Newton-CG", {"hessp": problem.hessp}),
                          ("trust-ncg", {"hessp": problem.hessp}),
                          ("L-BFGS-B", {})]:
        minimize(problem.fun, start, jac=problem.jac, method=method, **extra)  # warm-up:
        t = time.perf_counter()                       # SciPy's first call loads its solvers
        result = minimize(problem.fun, start, jac=problem.jac, method=method, **extra)
        elapsed = time.perf_counter() - t
        gradient = np.abs(problem.jac(result.x)).max()
        print(f"{method:<28}{result.nit:>11}{gradient:>12.1e}{elapsed * 1e3:>8.1f} ms")
