"""The CS224N window classifier for named entity recognition.

x in R^(5d) concatenates the word vectors of a 5-word window; z = W x + b, h = sigmoid(z),
s = u^T h.  With delta = u o h o (1 - h):
    ds/du = h,  ds/db = delta,  ds/dW = delta x^T,  ds/dx = W^T delta.

Run: python examples/window_classifier.py
"""

import sympy as sp

import symgrad as sg

d, H = 50, 100
x = sg.vector("x", 5 * d)
W = sg.matrix("W", H, 5 * d)
b = sg.vector("b", H)
u = sg.vector("u", H)
s = sg.dot(u, sg.sigmoid(W @ x + b))
window_classifier = sg.Model("window_classifier", s, wrt=[W, b, u, x])

m = sp.Symbol("m", integer=True, positive=True)
X = sg.matrix("X", 5 * d, m)
scores = sg.sum(sg.hadamard(sg.broadcast(u, (H, m)),
                            sg.sigmoid(W @ X + sg.broadcast(b, (H, m)))))
window_classifier_batched = sg.Model("window_classifier_batched", scores, wrt=[W, b, u, X])


if __name__ == "__main__":
    import numpy as np

    print(window_classifier.show())
    rng = np.random.default_rng(0)
    W0, b0 = rng.normal(size=(H, 5 * d)) / 10, rng.normal(size=H)
    u0, x0 = rng.normal(size=H), rng.normal(size=5 * d)
    value, grads = window_classifier.compiled.value_and_grad(W=W0, b=b0, u=u0, x=x0)
    h = 1 / (1 + np.exp(-(W0 @ x0 + b0)))
    delta = u0 * h * (1 - h)
    print(f"\ns = {value:.6f}; largest difference from the closed forms: "
          f"dW {np.abs(grads['W'] - np.outer(delta, x0)).max():.1e}, "
          f"db {np.abs(grads['b'] - delta).max():.1e}, du {np.abs(grads['u'] - h).max():.1e}, "
          f"dx {np.abs(grads['x'] - W0.T @ delta).max():.1e}")
    print(sg.check(window_classifier, against=["finite-differences"]))
