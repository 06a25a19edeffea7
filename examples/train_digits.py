"""A two-layer network trained on scikit-learn's handwritten digits, three ways.

The model: 8 x 8 images (64 pixels scaled to [0, 1], columns of X), ten classes (Y one-hot),

    Z1 = W1 X + b1,  A1 = tanh(Z1),  Z2 = W2 A1 + b2,
    loss = -(1/m) sum(Y o log softmax(Z2))          (softmax over the classes, axis 0)

trained on mini-batches of 64 examples
  1. by symgrad alone: ``value_and_grad`` and plain gradient descent in NumPy;
  2. by ``torch.optim.Adam`` on symgrad's loss, through ``f.to_torch()``;
  3. by pure PyTorch (the same formulas in torch, the same initialisation and batches),
     with Adam and with SGD, the references for 2 and 1.
It prints test accuracy and time per epoch for each, how far the symgrad loss curves are from
PyTorch's, and saves the loss curves as a PNG.  The digits ship with scikit-learn (no
download); the run needs scikit-learn, matplotlib and PyTorch
(``pip install -e ".[train,torch]"``).

Run: python examples/train_digits.py [--epochs 30] [--plot examples/train_digits.png]
"""

import sympy as sp

import symgrad as sg

n_x, n_h, n_y = 64, 32, 10
m = sp.Symbol("m", integer=True, positive=True)
X, Y = sg.matrix("X", n_x, m), sg.matrix("Y", n_y, m)
W1, b1 = sg.matrix("W1", n_h, n_x), sg.vector("b1", n_h)
W2, b2 = sg.matrix("W2", n_y, n_h), sg.vector("b2", n_y)
Z1 = sg.name("Z1", W1 @ X + sg.broadcast(b1, (n_h, m)))
A1 = sg.name("A1", sg.tanh(Z1))
Z2 = sg.name("Z2", W2 @ A1 + sg.broadcast(b2, (n_y, m)))
digits_net = sg.Model("digits_net", sg.softmax_cross_entropy(Z2, Y, axis=0) / m,
                      wrt=[W1, b1, W2, b2])

PARAMETERS = ("W1", "b1", "W2", "b2")


def load_data(subset=None, seed=0):
    """Train and test arrays, examples as columns: X (64, m) in [0, 1], Y one-hot (10, m),
    labels (m,).  ``subset`` keeps the first that many images (a quick run)."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images, labels = digits.data / 16.0, digits.target
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=0.25, random_state=seed, stratify=labels)

    def columns(x, y):
        return (np.ascontiguousarray(x.T), np.ascontiguousarray(np.eye(n_y)[y].T), y)

    return columns(train_x, train_y), columns(test_x, test_y)


def initial_parameters(seed=0):
    """Scaled normal weights (1/sqrt(fan-in)), zero biases; biases are 1-D arrays."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"W1": rng.normal(size=(n_h, n_x)) / np.sqrt(n_x), "b1": np.zeros(n_h),
            "W2": rng.normal(size=(n_y, n_h)) / np.sqrt(n_h), "b2": np.zeros(n_y)}


def batches(train, epochs, batch_size, seed=0):
    """Per epoch, the mini-batches (X, Y) of a seeded shuffle: every method sees the same."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    x, y, _ = train
    out = []
    for _ in range(epochs):
        order = rng.permutation(x.shape[1])
        out.append([(np.ascontiguousarray(x[:, idx]), np.ascontiguousarray(y[:, idx]))
                    for idx in np.array_split(order, max(1, len(order) // batch_size))])
    return out


def accuracy(params, data):
    """Share of the data's images whose largest logit is the right class."""
    import numpy as np

    x, _, labels = data
    hidden = np.tanh(params["W1"] @ x + params["b1"][:, None])
    logits = params["W2"] @ hidden + params["b2"][:, None]
    return float(np.mean(logits.argmax(axis=0) == labels))


def train_symgrad_gd(params, epochs_batches, lr):
    """symgrad's value_and_grad and plain gradient descent; per epoch the mean batch loss
    and the seconds the epoch took."""
    import time

    f = digits_net.compiled
    params = {k: v.copy() for k, v in params.items()}
    losses, times = [], []
    for epoch in epochs_batches:
        start, total = time.perf_counter(), 0.0
        for xb, yb in epoch:
            loss, grads = f.value_and_grad(X=xb, Y=yb, **params)
            for k in PARAMETERS:
                params[k] -= lr * grads[k]
            total += loss
        times.append(time.perf_counter() - start)
        losses.append(total / len(epoch))
    return params, losses, times


def _torch_tensors(torch, epochs_batches):
    """The batches as tensors sharing the arrays' memory."""
    return [[(torch.from_numpy(xb), torch.from_numpy(yb)) for xb, yb in epoch]
            for epoch in epochs_batches]


def torch_loss(torch, W1, b1, W2, b2, X, Y):
    """The same model written in PyTorch."""
    A1 = torch.tanh(W1 @ X + b1[:, None])
    Z2 = W2 @ A1 + b2[:, None]
    return -(Y * torch.log_softmax(Z2, dim=0)).sum() / X.shape[1]


def train_torch(params, epochs_batches, optimizer, lr, through_symgrad):
    """A torch.optim loop on the loss of symgrad (through ``to_torch``) or of PyTorch."""
    import time

    import torch

    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
               for k, v in params.items()}
    make = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer]
    opt = make(list(tensors.values()), lr=lr)
    if through_symgrad:
        tf = digits_net.compiled.to_torch()

        def loss_of(xb, yb):
            return tf(X=xb, Y=yb, **tensors)
    else:
        def loss_of(xb, yb):
            return torch_loss(torch, X=xb, Y=yb, **tensors)

    losses, times = [], []
    for epoch in _torch_tensors(torch, epochs_batches):
        start, total = time.perf_counter(), 0.0
        for xb, yb in epoch:
            opt.zero_grad()
            loss = loss_of(xb, yb)
            loss.backward()
            opt.step()
            total += loss.item()
        times.append(time.perf_counter() - start)
        losses.append(total / len(epoch))
    return {k: v.detach().numpy().copy() for k, v in tensors.items()}, losses, times


def plot(curves, path):
    """The loss curves, one line per run, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    styles = {"symgrad, gradient descent": ("C0", "-"), "PyTorch, SGD": ("C1", "--"),
              "symgrad via to_torch, Adam": ("C2", "-"), "PyTorch, Adam": ("C3", "--")}
    for label, losses in curves.items():
        color, style = styles.get(label, (None, "-"))
        ax.plot(range(1, len(losses) + 1), losses, style, color=color, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean over the epoch's batches)")
    ax.set_title("Two-layer network on scikit-learn's digits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> dict:
    """Train, print the table and save the plot; returns the figures (for tests)."""
    import argparse
    from pathlib import Path

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.2, help="gradient descent step")
    parser.add_argument("--adam-lr", type=float, default=0.01)
    parser.add_argument("--subset", type=int, default=None,
                        help="use only the first N images (a quick run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="PyTorch's intra-op threads (default 1: the batches are small, "
                             "and waking threads costs more than they save)")
    parser.add_argument("--plot", default=str(Path(__file__).with_suffix(".png")),
                        help="where to save the PNG of the loss curves")
    args = parser.parse_args(argv)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads_before)


def run(args) -> dict:
    """What main does once the arguments are read and PyTorch's threads set."""
    import numpy as np
    import torch

    train, test = load_data(args.subset, args.seed)
    init = initial_parameters(args.seed)
    epochs_batches = batches(train, args.epochs, args.batch_size, args.seed)
    print(f"digits: {train[0].shape[1]} training and {test[0].shape[1]} test images, "
          f"{len(epochs_batches[0])} batches per epoch, {args.epochs} epochs; "
          f"torch threads {torch.get_num_threads()}")
    digits_net.compiled.value_and_grad(X=epochs_batches[0][0][0], Y=epochs_batches[0][0][1],
                                       **init)   # compile (or load) before the clock starts

    runs = {
        "symgrad, gradient descent": train_symgrad_gd(init, epochs_batches, args.lr),
        "PyTorch, SGD": train_torch(init, epochs_batches, "sgd", args.lr, False),
        "symgrad via to_torch, Adam": train_torch(init, epochs_batches, "adam", args.adam_lr,
                                                  True),
        "PyTorch, Adam": train_torch(init, epochs_batches, "adam", args.adam_lr, False),
    }
    results = {}
    print("\n| run | final loss | test accuracy | time per epoch (median) |")
    print("|---|---:|---:|---:|")
    for label, (params, losses, times) in runs.items():
        results[label] = {"losses": losses, "accuracy": accuracy(params, test),
                          "epoch_s": float(np.median(times)), "params": params}
        print(f"| {label} | {losses[-1]:.4f} | {100 * results[label]['accuracy']:.1f}% | "
              f"{1e3 * results[label]['epoch_s']:.2f} ms |")

    def gap(a, b):
        x, y = np.array(runs[a][1]), np.array(runs[b][1])
        return float(np.max(np.abs(x - y) / np.abs(y)))

    results["gap_gd"] = gap("symgrad, gradient descent", "PyTorch, SGD")
    results["gap_adam"] = gap("symgrad via to_torch, Adam", "PyTorch, Adam")
    print(f"\nlargest relative difference between the loss curves: gradient descent vs "
          f"PyTorch SGD {results['gap_gd']:.1e}; to_torch + Adam vs PyTorch Adam "
          f"{results['gap_adam']:.1e}")
    plot({label: runs[label][1] for label in runs}, args.plot)
    print(f"loss curves saved to {args.plot}")
    return results


if __name__ == "__main__":
    main()
