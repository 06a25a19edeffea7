"""Linear regression as a computation graph (the AssemblyAI worked example).

    yhat = w x,  s = yhat - y,  loss = s^2
At x = 1, y = 2, w = 1: yhat = 1, s = -1, loss = 1, dloss/dw = 2 s x = -2.

The batched form, loss = mean((X w - y)^2), is the same model over n examples.

Run: python examples/linear_regression.py
"""

import sympy as sp

import symgrad as sg

w, x, y = sp.symbols("w x y")
yhat = w * x
s = yhat - y
linear_regression = sg.Model("linear_regression", s**2, wrt=[w])

n, d = sp.symbols("n d", integer=True, positive=True)
X = sg.matrix("X", n, d)
wv = sg.vector("w", d)
t = sg.vector("t", n)
residual = X @ wv - t
linear_regression_batched = sg.Model("linear_regression_batched",
                                     sg.mean(sg.square(residual)), wrt=[wv])


if __name__ == "__main__":
    import numpy as np

    print(linear_regression.show())
    f = linear_regression.compiled
    loss, grads = f.value_and_grad(w=1.0, x=1.0, y=2.0)
    print(f"\nat x = 1, y = 2, w = 1: loss = {loss}, dloss/dw = {grads['w']}   (seed: 1, -2)")
    print(sg.check(linear_regression, against=["finite-differences"]))

    print("\n" + linear_regression_batched.show())
    rng = np.random.default_rng(0)
    Xv, wv0 = rng.normal(size=(1024, 16)), rng.normal(size=16)
    tv = Xv @ np.ones(16) + 0.1 * rng.normal(size=1024)
    loss, grads = linear_regression_batched.compiled.value_and_grad(w=wv0, X=Xv, t=tv)
    by_hand = 2 * Xv.T @ (Xv @ wv0 - tv) / len(tv)
    print(f"\nbatched loss {loss:.6f}; |dw - 2 X^T (X w - t) / n| = "
          f"{np.abs(grads['w'] - by_hand).max():.2e}")
    print(sg.check(linear_regression_batched, against=["finite-differences"]))
