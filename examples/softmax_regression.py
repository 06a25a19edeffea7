"""Softmax regression (multinomial logistic regression) over m examples.

    Z = W X + b,  P = softmax(Z) over classes (axis 0),
    loss = -(1/m) sum(Y o log P)        (Y one-hot, K x m)
Gradient: dZ = (P - Y) / m,  dW = dZ X^T,  db = sum over columns of dZ.  The loss is computed
as logsumexp(Z) - sum(Y o Z) per column: no overflow for large logits.

Run: python examples/softmax_regression.py
"""

import sympy as sp

import symgrad as sg

K, D = 3, 5
m = sp.Symbol("m", integer=True, positive=True)
W, b = sg.matrix("W", K, D), sg.vector("b", K)
X, Y = sg.matrix("X", D, m), sg.matrix("Y", K, m)
Z = sg.name("Z", W @ X + sg.broadcast(b, (K, m)))
loss = sg.softmax_cross_entropy(Z, Y, axis=0) / m
softmax_regression = sg.Model("softmax_regression", loss, wrt=[W, b])


if __name__ == "__main__":
    import numpy as np

    print(softmax_regression.show())
    rng = np.random.default_rng(0)
    W0, b0, X0 = rng.normal(size=(K, D)), rng.normal(size=K), rng.normal(size=(D, 50))
    Y0 = np.eye(K)[:, rng.integers(0, K, size=50)]
    value, grads = softmax_regression.compiled.value_and_grad(W=W0, b=b0, X=X0, Y=Y0)
    Z0 = W0 @ X0 + b0[:, None]
    P = np.exp(Z0 - Z0.max(axis=0))
    P /= P.sum(axis=0)
    dZ = (P - Y0) / 50
    print(f"\nloss = {value:.6f} (NumPy {-np.sum(Y0 * np.log(P)) / 50:.6f}); "
          f"|dW - dZ X^T| = {np.abs(grads['W'] - dZ @ X0.T).max():.1e}")
    print(sg.check(softmax_regression, against=["finite-differences"]))
