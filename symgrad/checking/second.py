"""``sg.check(..., order=2)``: symgrad's compiled Hessian, Hessian-vector product and Jacobian
against the frameworks and finite differences of symgrad's own gradient.

Every quantity is compared as one flat matrix over all parameters together (their entries
in ``wrt`` order, each raveled): ``"hessian"`` (P x P) and ``"hvp"`` (P, with a random
direction) for a scalar output, ``"jacobian"`` (output entries x P) for a vector or matrix
output.

* ``jax``: ``jax.hessian``, ``jax.jvp`` of ``jax.grad``, ``jax.jacfwd``;
* ``torch``: ``torch.func.hessian``, ``torch.func.jvp`` of ``torch.func.grad``,
  ``torch.func.jacfwd``;
* ``finite-differences``: central differences of symgrad's compiled gradient (a Hessian
  column per parameter entry, at most :data:`MAX_COLUMNS` of them, drawn at random; the HVP
  along its direction) or of the compiled value (a Jacobian column).

A scalar model over arrays of points is compared at its first point (all inputs floats).
"""

from __future__ import annotations

import numpy as np

from symgrad.checking.report import Comparison, Tolerance, compare

__all__ = ["SECOND_ORDER_TOLERANCES", "MAX_COLUMNS", "quantities", "compare_second_order"]

SECOND_ORDER_TOLERANCES: dict[str, Tolerance] = {
    "finite-differences": Tolerance(1e-5, 1e-7),
    "jax": Tolerance(1e-7, 1e-10),
    "torch": Tolerance(1e-7, 1e-10),
}
MAX_COLUMNS = 20
_STEP = np.finfo(np.float64).eps ** (1 / 3)


def quantities(problem) -> list[str]:
    """What ``order=2`` compares for this problem."""
    return ["jacobian"] if problem.output_shape else ["hessian", "hvp"]


def _layout(values: dict, names: list[str]) -> list[tuple[str, tuple, int, int]]:
    layout, start = [], 0
    for name in names:
        shape = np.shape(values[name])
        size = int(np.prod(shape))
        layout.append((name, shape, start, start + size))
        start += size
    return layout


def _unflatten(x, layout):
    return {name: x[start:stop].reshape(shape) for name, shape, start, stop in layout}


def _point(problem, values: dict) -> dict:
    """The inputs as the second-order functions take them: a scalar model over arrays at its
    first point, as floats."""
    if problem.elementwise:
        return {n: float(np.ravel(v)[0]) for n, v in values.items()}
    return dict(values)


class _Symgrad:
    """The reference: the compiled f.hessian, f.hvp, f.jacobian, f.value_and_grad."""

    def __init__(self, compiled, values, dims):
        self.f = compiled
        self.arguments = dict(values)
        self.arguments.update({d.name: size for d, size in dims.items()
                               if d.name in compiled.inputs})

    def _with(self, x, layout):
        arguments = dict(self.arguments)
        for name, shape, start, stop in layout:
            part = np.asarray(x[start:stop], dtype=np.float64).reshape(shape)
            arguments[name] = float(part) if shape == () else part
        return arguments

    def gradient(self, x, layout):
        _, g = self.f.value_and_grad(**self._with(x, layout))
        return np.concatenate([np.ravel(g[name]) for name, *_ in layout])

    def value(self, x, layout):
        return np.ravel(np.asarray(self.f(**self._with(x, layout)), dtype=np.float64))

    def hessian(self, layout):
        blocks = self.f.hessian(**self.arguments)
        return np.block([[np.reshape(blocks[(p, q)], (p1 - p0, q1 - q0))
                          for q, _, q0, q1 in layout] for p, _, p0, p1 in layout])

    def hvp(self, v, layout):
        products = self.f.hvp(_unflatten(v, layout), **self.arguments)
        return np.concatenate([np.ravel(products[name]) for name, *_ in layout])

    def jacobian(self, layout, outputs: int):
        blocks = self.f.jacobian(**self.arguments)
        return np.concatenate([np.reshape(blocks[name], (outputs, stop - start))
                               for name, _, start, stop in layout], axis=1)


def _jax(backend, values, dims, layout, x, v, matrix_output):
    import jax
    import jax.numpy as jnp

    f = backend.function(dims)
    names = {name for name, *_ in layout}
    data = {n: jnp.asarray(val) for n, val in values.items() if n not in names}

    def model(x):
        return f(**_unflatten(x, layout), **data)

    x = jnp.asarray(x)
    if matrix_output:
        return {"jacobian": np.asarray(jax.jacfwd(lambda x: jnp.ravel(model(x)))(x))}

    def objective(x):
        return jnp.sum(model(x))

    return {"hessian": np.asarray(jax.hessian(objective)(x)),
            "hvp": np.asarray(jax.jvp(jax.grad(objective), (x,), (jnp.asarray(v),))[1])}


def _torch(backend, values, dims, layout, x, v, matrix_output):
    import torch

    f = backend.function(dims)
    names = {name for name, *_ in layout}
    data = {n: torch.as_tensor(np.asarray(val, dtype=np.float64))
            for n, val in values.items() if n not in names}

    def model(x):
        return torch.as_tensor(f(**_unflatten(x, layout), **data), dtype=torch.float64)

    x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if matrix_output:
        jacobian = torch.func.jacfwd(lambda x: torch.ravel(model(x)))(x)
        return {"jacobian": jacobian.detach().numpy()}

    def objective(x):
        return torch.sum(model(x))

    hessian = torch.func.hessian(objective)(x)
    _, product = torch.func.jvp(torch.func.grad(objective), (x,),
                                (torch.as_tensor(np.asarray(v, dtype=np.float64)),))
    return {"hessian": hessian.detach().numpy(), "hvp": product.detach().numpy()}


def _finite_differences(reference: _Symgrad, layout, x, v, matrix_output, rng):
    """Central differences of symgrad's gradient (or value): (results, masks, notes)."""
    size = x.size
    columns = np.arange(size) if size <= MAX_COLUMNS else \
        np.sort(rng.choice(size, MAX_COLUMNS, replace=False))
    differentiated = reference.value if matrix_output else reference.gradient

    def along(direction, scale):
        h = _STEP * max(1.0, scale)
        return (differentiated(x + h * direction, layout)
                - differentiated(x - h * direction, layout)) / (2 * h)

    found = {}
    for j in columns:
        unit = np.zeros(size)
        unit[j] = 1.0
        found[j] = along(unit, abs(x[j]))
    rows = next(iter(found.values())).size if found else 0
    full = np.zeros((rows, size))
    mask = np.zeros((rows, size), dtype=bool)
    for j, column in found.items():
        full[:, j] = column
        mask[:, j] = True
    quantity = "jacobian" if matrix_output else "hessian"
    notes = {quantity: "" if size <= MAX_COLUMNS else f"{MAX_COLUMNS} of {size} columns"}
    if matrix_output:
        return {"jacobian": full}, {"jacobian": mask}, notes
    norm = float(np.max(np.abs(v))) if size else 1.0
    scale = float(np.max(np.abs(x))) if size else 1.0
    product = along(v / norm, scale) * norm if size else np.zeros(0)
    return {"hessian": full, "hvp": product}, {"hessian": mask}, notes


def compare_second_order(problem, compiled, backends, values, dims, rng, comparisons: dict,
                         tolerances: dict, skipped: dict) -> None:
    """Fold one point's second-order comparisons into ``comparisons`` (keyed by (backend,
    quantity)); a backend that compares first order only is named in ``skipped``."""
    values = _point(problem, values)
    names = problem.parameter_names
    layout = _layout(values, names)
    x = np.concatenate([np.ravel(np.asarray(values[n], dtype=np.float64)) for n in names])
    v = rng.standard_normal(x.size)
    matrix_output = bool(problem.output_shape)
    reference = _Symgrad(compiled, values, dims)
    if matrix_output:
        outputs = reference.value(x, layout).size
        expected = {"jacobian": reference.jacobian(layout, outputs)}
    else:
        expected = {"hessian": reference.hessian(layout), "hvp": reference.hvp(v, layout)}
    for backend in backends:
        masks, notes = {}, {}
        if backend.name == "jax":
            got = _jax(backend, values, dims, layout, x, v, matrix_output)
        elif backend.name == "torch":
            got = _torch(backend, values, dims, layout, x, v, matrix_output)
        elif backend.name == "finite-differences":
            got, masks, notes = _finite_differences(reference, layout, x, v, matrix_output,
                                                    rng)
        else:
            skipped.setdefault(f"{backend.name} (second order)", "compares first order only")
            continue
        tolerance = tolerances.get(backend.name, SECOND_ORDER_TOLERANCES[backend.name])
        for quantity, want in expected.items():
            key = (backend.name, quantity)
            if key not in comparisons:
                comparisons[key] = Comparison(backend.name, quantity, rtol=tolerance.rtol,
                                              atol=tolerance.atol,
                                              note=notes.get(quantity, ""))
            result = np.asarray(got[quantity], dtype=np.float64).reshape(want.shape)
            comparisons[key].add(*compare(result, want, tolerance, False,
                                          masks.get(quantity)))
