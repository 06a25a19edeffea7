"""Logistic regression, the starting point of Andrew Ng's course.

    a = sigmoid(w^T x + b),  loss = -(y log a + (1 - y) log(1 - a))
    dz = a - y,  dw = x dz,  db = dz

Run: python examples/logistic_regression.py
"""

import sympy as sp

import symgrad as sg

n = 4
w, x = sg.vector("w", n), sg.vector("x", n)
b, y = sp.symbols("b y")
a = sg.sigmoid(sg.dot(w, x) + b)
loss = -(y * sg.log(a) + (1 - y) * sg.log(1 - a))
logistic_regression = sg.Model("logistic_regression", loss, wrt=[w, b])


if __name__ == "__main__":
    import numpy as np

    print(logistic_regression.show())
    w0, x0 = np.array([0.5, -1.0, 2.0, 0.1]), np.array([1.0, 0.5, -0.3, 2.0])
    value, grads = logistic_regression.compiled.value_and_grad(w=w0, b=0.2, x=x0, y=1.0)
    a0 = 1 / (1 + np.exp(-(w0 @ x0 + 0.2)))
    print(f"\nloss = {value:.6f} (closed form {-np.log(a0):.6f}); dz = a - y = {a0 - 1:.6f}; "
          f"db = {grads['b']:.6f}; |dw - x dz| = {np.abs(grads['w'] - x0 * (a0 - 1)).max():.1e}")
    print(sg.check(logistic_regression, against=["finite-differences"]))
