"""A branching graph (CS224N lecture 3): f(x, y, z) = (x + y) max(y, z).

At (x, y, z) = (1, 2, 0): a = x + y = 3, b = max(y, z) = 2, f = 6;
df/dx = 2, df/dy = 2 + 3 = 5 (y feeds two branches: their gradients add up),
df/dz = 0 (max routes the gradient to its larger input only).

Run: python examples/branching_graph.py
"""

import sympy as sp

import symgrad as sg

x, y, z = sp.symbols("x y z")
branching_graph = sg.Model("branching_graph", (x + y) * sp.Max(y, z), wrt=[x, y, z])


if __name__ == "__main__":
    print(branching_graph.show())
    value, grads = branching_graph.compiled.value_and_grad(x=1.0, y=2.0, z=0.0)
    print(f"\nat (1, 2, 0): f = {value}, df/dx = {grads['x']}, df/dy = {grads['y']}, "
          f"df/dz = {grads['z']}   (seed: 6, 2, 5, 0)")
    print(sg.check(branching_graph, against=["finite-differences"]))
