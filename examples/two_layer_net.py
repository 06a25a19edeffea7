"""Andrew Ng's two-layer network, vectorized over m examples (columns of X).

    Z1 = W1 X + b1, A1 = tanh(Z1), Z2 = W2 A1 + b2, A2 = sigmoid(Z2),
    cost = -(1/m) sum(Y log A2 + (1 - Y) log(1 - A2))
Textbook gradients: dZ2 = A2 - Y, dW2 = (1/m) dZ2 A1^T, db2 = (1/m) sum over columns of dZ2,
dZ1 = (W2^T dZ2) o (1 - A1^2), dW1 = (1/m) dZ1 X^T, db1 = (1/m) sum over columns of dZ1.
symgrad prints the same with the 1/m folded into dZ2.  The cost is evaluated in the stable
form (log sigmoid(z) = -softplus(-z)), found by symgrad from the textbook form.

Run: python examples/two_layer_net.py
"""

import sympy as sp

import symgrad as sg

n_x, n_h, m = sp.symbols("n_x n_h m", integer=True, positive=True)
X = sg.matrix("X", n_x, m)
Y = sg.matrix("Y", 1, m)
W1, b1 = sg.matrix("W1", n_h, n_x), sg.vector("b1", n_h)
W2, b2 = sg.matrix("W2", 1, n_h), sg.vector("b2", 1)

Z1 = sg.name("Z1", W1 @ X + sg.broadcast(b1, (n_h, m)))
A1 = sg.name("A1", sg.tanh(Z1))
Z2 = sg.name("Z2", W2 @ A1 + sg.broadcast(b2, (1, m)))
A2 = sg.name("A2", sg.sigmoid(Z2))
ones = sp.OneMatrix(1, m)
cost = -(1 / m) * sg.sum(sg.hadamard(Y, sg.log(A2)) + sg.hadamard(ones - Y, sg.log(ones - A2)))
two_layer_net = sg.Model("two_layer_net", cost, wrt=[W1, b1, W2, b2])


def numpy_value_and_grad(W1, b1, W2, b2, X, Y):
    """The textbook formulas in NumPy (b1, b2 as 1-D arrays)."""
    import numpy as np

    m = X.shape[1]
    A1 = np.tanh(W1 @ X + b1[:, None])
    Z2 = W2 @ A1 + b2[:, None]
    A2 = 1 / (1 + np.exp(-Z2))
    cost = np.mean(Y * np.logaddexp(0, -Z2) + (1 - Y) * np.logaddexp(0, Z2))
    dZ2 = A2 - Y
    dZ1 = (W2.T @ dZ2) * (1 - A1**2)
    return cost, {"W1": dZ1 @ X.T / m, "b1": dZ1.sum(axis=1) / m,
                  "W2": dZ2 @ A1.T / m, "b2": dZ2.sum(axis=1) / m}


if __name__ == "__main__":
    import numpy as np

    print(two_layer_net.show())
    rng = np.random.default_rng(0)
    inputs = {"W1": rng.normal(size=(4, 2)), "b1": np.zeros(4), "W2": rng.normal(size=(1, 4)),
              "b2": np.zeros(1), "X": rng.normal(size=(2, 400)),
              "Y": (rng.random((1, 400)) > 0.5).astype(float)}
    cost_value, grads = two_layer_net.compiled.value_and_grad(**inputs)
    reference, expected = numpy_value_and_grad(**inputs)
    print(f"\ncost = {cost_value:.6f} (NumPy {reference:.6f}); largest gradient difference "
          f"{max(np.abs(grads[k] - expected[k]).max() for k in expected):.1e}")
    print(sg.check(two_layer_net, against=["finite-differences"]))
