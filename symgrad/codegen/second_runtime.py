"""What ``f.hessian``, ``f.hvp`` and ``f.jacobian`` run around their compiled kernels, and
what a generated module that offers them carries (this file's text below the marker line is
copied into it, so it imports nothing but numpy; SciPy's BLAS is used when it is there).

Each second-order function is a *bundle*: several expressions e_k compiled as the gradient
of sum_k <P_k, e_k> with respect to probes P_k (see :mod:`symgrad.second`), so one call of
the bundle's ``value_and_grad`` computes every e_k with one CSE.  A bundle is described by a
table of plain Python values:

* ``"inputs"``: the bundle's input names, in its order (model inputs, probes, dimensions);
* ``"probes"``: probe name -> shape, ``()`` for a scalar, else ``(rows, cols)`` with each
  extent an int or the name of a dimension;
* ``"outputs"``: key -> probe name, or None for an identically zero expression.

``dimensions`` maps each dimension name to ``(input name, axis)``: where to read it.
"""

# (above the marker: a generated module carries runtime.py's own _reals)
from symgrad.codegen.runtime import _reals  # noqa: I001

# --- symgrad second order: copied verbatim into generated modules -------------------------
import numpy as np

_sg_blas = {}


def _sg_dsyrk():
    """SciPy's BLAS dsyrk, or None.  SciPy is optional here (Numba's own matrix products
    load its BLAS where it is installed), so it is looked up on first use, not imported."""
    if "dsyrk" not in _sg_blas:
        try:
            _sg_blas["dsyrk"] = __import__("scipy.linalg.blas", fromlist=["dsyrk"]).dsyrk
        except ImportError:     # pragma: no cover - SciPy comes with symgrad
            _sg_blas["dsyrk"] = None
    return _sg_blas["dsyrk"]


# Below this many columns a general product costs less than dsyrk's call and the mirroring
# (measured: 20 x 5, 7 us against 70 us; 1000 x 50, about even; 1000 x 100, dsyrk 0.6x).
_SG_SYMMETRIC_MIN_COLUMNS = 64


def _sg_symmetric_product(a, c, columns=1):
    """A^T diag(c) A for an n x d matrix A and an n-vector (or a number) c, computed as
    (sqrt(c) A)^T (sqrt(c) A) with BLAS dsyrk (one triangle: half the multiplications of
    A^T (c A)), then mirrored.  Rows with c < 0 are subtracted as a second such product, so
    any sign works; a NaN in c stays NaN.  ``columns`` is d, which reads a 1-D ``a`` (a
    vector given as the caller may: an n x 1 column when d is 1, else a 1 x d row)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a.reshape(-1, columns)
    rows, d = a.shape
    c = np.asarray(c, dtype=np.float64).reshape(-1)
    if c.size != rows:
        c = np.full(rows, c[0])
    dsyrk = _sg_dsyrk() if d >= _SG_SYMMETRIC_MIN_COLUMNS and rows else None
    if dsyrk is None:
        return a.T @ (a * c[:, None])
    with np.errstate(invalid="ignore"):     # sqrt(NaN) is NaN, as it should stay
        if c.min() < 0.0:   # (NaN compares false: it stays in the first product, as NaN)
            negative = c < 0.0
            parts = [(1.0, a[~negative] * np.sqrt(c[~negative])[:, None]),
                     (-1.0, a[negative] * np.sqrt(-c[negative])[:, None])]
        else:
            parts = [(1.0, a * np.sqrt(c)[:, None])]
    # dsyrk writes the upper triangle only; the lower one stays zero, so out + out.T is the
    # whole matrix with the diagonal twice (halving it is exact)
    out = np.zeros((d, d), order="F")
    for sign, scaled in parts:
        if scaled.shape[0]:
            # scaled is C-ordered (m x d), so scaled.T is a Fortran-ordered d x m view: no
            # copy, and dsyrk's scaled.T scaled.T^T is scaled^T scaled
            out = dsyrk(sign, scaled.T, trans=0, beta=1.0, c=out, overwrite_c=1)
    full = out + out.T
    full.flat[::d + 1] *= 0.5
    return full


def _sg_extent(value, axis):
    """The extent of a matrix input along ``axis``, or None where its shape is no matrix's.
    Only a vector may come 1-D, and only its long axis has a symbolic extent (or a fixed
    position read): the length of a 1-D array is that extent, for a column (n x 1) as for a
    row (1 x d)."""
    shape = np.shape(value)
    if len(shape) == 1:
        return int(shape[0])
    return int(shape[axis]) if len(shape) == 2 else None


def _sg_dimensions(inputs, dimensions, least=()):
    """{dimension name: its size}, read off the inputs that fix them; an input smaller than
    an entry the model reads (``least``: (input, axis, extent, why) each) is refused."""
    for source, axis, extent, why in least:
        size = _sg_extent(inputs[source], axis)
        if size is not None and size < extent:
            raise ValueError(f"input {source!r} has {size} "
                             f"{'rows' if axis == 0 else 'columns'} "
                             f"(shape {np.shape(inputs[source])}), but {why}")
    sizes = {}
    for name, (source, axis) in dimensions.items():
        size = _sg_extent(inputs[source], axis)
        if size is None:    # (a dimension left unread would fail later, naming no input)
            raise ValueError(f"input {source!r} must be a matrix (a 2-D array, or 1-D for a "
                             f"vector), got an array of shape {np.shape(inputs[source])}")
        sizes[name] = size
    return sizes


_sg_probe_cache = {}


def _sg_fixed_arguments(table, inputs, sizes):
    """The bundle's arguments that the caller does not give: zero probes and dimensions."""
    fixed = {}
    for name in table["inputs"]:
        if name in inputs:
            continue
        if name in table["probes"]:
            shape = table["probes"][name]
            if shape == ():
                fixed[name] = 0.0
                continue
            shape = tuple(e if isinstance(e, int) else sizes[e] if e in sizes
                          else int(eval(e, {"__builtins__": {}}, dict(sizes)))  # noqa: S307
                          for e in shape)
            zeros = _sg_probe_cache.get(shape)
            if zeros is None:       # read only by the kernels, so shared between calls
                zeros = _sg_probe_cache[shape] = np.zeros(shape)
            fixed[name] = zeros
        elif name in sizes:
            fixed[name] = sizes[name]
        else:
            raise TypeError(f"missing input {name!r}")
    return fixed


def _sg_bundle(value_and_grad, table, inputs, sizes):
    """Call a bundle: {key: array (or float) of each expression, None where it is zero}."""
    outputs = table["outputs"]
    if not table["probes"]:
        return dict.fromkeys(outputs)
    # the probes and dimensions depend on the sizes only: built once per sizes
    key = tuple(sizes.items())
    kept = table.get("_fixed")
    if kept is None or kept[0] != key:
        kept = table["_fixed"] = (key, _sg_fixed_arguments(table, inputs, sizes),
                                  [n for n in table["inputs"] if n in inputs])
    arguments = dict(kept[1])
    for name in kept[2]:
        arguments[name] = inputs[name]
    gradients = value_and_grad(**arguments)[1]
    return {k: None if probe is None else gradients[probe] for k, probe in outputs.items()}


def _sg_as_given(value, shape, scalar_model):
    """A result in the shape the inputs were given (a float for a scalar); per point for
    scalar models over arrays."""
    value = np.asarray(value, dtype=np.float64)
    if scalar_model:
        return float(value) if value.ndim == 0 else value
    return float(value.reshape(())) if shape == () else value.reshape(shape)


def _sg_check_inputs(inputs, names):
    if list(inputs) == list(names) or inputs.keys() == set(names):
        return
    unknown = [n for n in inputs if n not in names]
    if unknown:
        raise TypeError(f"unknown input {unknown[0]!r}; this model takes {', '.join(names)}")
    missing = [n for n in names if n not in inputs]
    raise TypeError(f"missing input {missing[0]!r}; this model takes {', '.join(names)}")


def _sg_at_x(table, linearize, inputs, sizes):
    """The pieces of an HVP that depend on x only (``table["linearize"]``, computed by the
    bundle ``linearize``): {input name of the apply bundle: value}."""
    if table.get("linearize") is None:
        return {}
    return _sg_bundle(linearize, table["linearize"], inputs, sizes)


def _sg_fits(shape, expected):
    """Whether an array of ``shape`` holds the entries of one of shape ``expected`` in their
    places: the same extents but for axes of length 1 (a vector's direction as (n,), (n, 1)
    or (1, n)).  Not the same size alone: a (3, 2) array is no direction for a 2 x 3 matrix,
    whose entries a reshape would move."""
    return [e for e in shape if e != 1] == [e for e in expected if e != 1]


def _sg_hvp(tangents, inputs, parameters, table, value_and_grad, sizes, scalar_model,
            linearize=None, at_x=None):
    """{parameter: sum_q H[p, q] v_q}; ``table["outputs"]`` is keyed by parameter and
    ``table["tangents"]`` names each parameter's tangent input.  The pieces at x come from
    ``at_x`` when given (a solver's cache), else from the bundle ``linearize``."""
    if not hasattr(tangents, "items"):
        raise TypeError(f"tangents must be a dict of parameter name -> array, got "
                        f"{type(tangents).__name__}")
    read = {}
    for name, v in tangents.items():
        if name not in parameters:
            raise ValueError(f"tangent given for {name!r}, which is not a parameter "
                             f"({', '.join(parameters)})")
        read[name] = v = _reals(f"the tangent of {name!r}", v)
        if not _sg_fits(v.shape, np.shape(inputs[name])):
            raise ValueError(f"the tangent of {name!r} has shape {v.shape}; the "
                             f"parameter has shape {np.shape(inputs[name])}")
    arguments = dict(inputs)
    for p in parameters:
        v = read.get(p)
        given = np.shape(inputs[p])
        if v is None:
            v = np.zeros(given)
        elif v.shape != given:
            v = v.reshape(given)
        arguments[table["tangents"][p]] = v if v.ndim else float(v)
    arguments.update(_sg_at_x(table, linearize, inputs, sizes) if at_x is None else at_x)
    values = _sg_bundle(value_and_grad, table, arguments, sizes)
    out = {}
    for p in parameters:
        value = values[p]
        if value is None:
            value = _sg_zeros(inputs, np.shape(inputs[p]), scalar_model)
        out[p] = _sg_as_given(value, np.shape(inputs[p]), scalar_model)
    return out


def _sg_zeros(inputs, shape, scalar_model):
    """A result that is 0: of its own shape, or for a scalar model over arrays, per point
    (the inputs' broadcast shape), as its other results are."""
    if scalar_model:
        shape = np.broadcast_shapes(*[np.shape(v) for v in inputs.values()])
    return np.zeros(shape)


def _sg_hessian(inputs, parameters, table, value_and_grad, sizes, scalar_model, hvp):
    """{(p, q): block of shape p.shape + q.shape}.  ``table["outputs"]`` holds the blocks
    with p at or before q (``table["blocks"]`` lists them); ``table["symmetric"]`` maps a
    block to ``(A, c)``: add
    A^T diag(c) A (A an input name, c a key of ``outputs``, or None for c = 1);
    ``table["without"]`` lists the blocks without a matrix form, assembled from
    ``hvp(tangents, inputs)``, one product per entry of q."""
    shapes = {p: np.shape(inputs[p]) for p in parameters}
    values = _sg_bundle(value_and_grad, table, inputs, sizes)
    out = {}
    for p, q in list(table["blocks"]) + list(table["without"]):
        shape = shapes[p] + shapes[q]
        if (p, q) in table["without"]:
            n_q = int(np.prod(shapes[q]))
            columns = []
            for j in range(n_q):
                unit = np.zeros(n_q)
                unit[j] = 1.0
                columns.append(np.ravel(hvp({q: unit.reshape(shapes[q])}, **inputs)[p]))
            value = np.stack(columns, axis=-1).reshape(shape)
        else:
            value = values[(p, q)]
            symmetric = table["symmetric"].get((p, q))
            if symmetric is not None:
                a, c = symmetric
                product = _sg_symmetric_product(inputs[a], 1.0 if c is None else values[c],
                                                int(np.prod(shapes[p])))
                value = product if value is None else product + np.reshape(value,
                                                                           product.shape)
            elif value is None:
                value = _sg_zeros(inputs, shape, scalar_model)
            value = _sg_as_given(value, shape, scalar_model)
        out[(p, q)] = value
        if p != q:
            # the mirrored block is a copy, not a view of (p, q): results are fresh arrays,
            # so that updating one block in place leaves the other as it was
            if scalar_model:
                out[(q, p)] = value.copy() if isinstance(value, np.ndarray) else value
            else:
                n_p, n_q = int(np.prod(shapes[p])), int(np.prod(shapes[q]))
                out[(q, p)] = _sg_as_given(np.reshape(value, (n_p, n_q)).T.copy(),
                                           shapes[q] + shapes[p], False)
    return {(p, q): out[(p, q)] for p in parameters for q in parameters}


def _sg_jacobian(inputs, parameters, table, value_and_grad, sizes, forward, vjp, row_output):
    """{p: array of shape out.shape + p.shape}; ``table["without"]`` lists the parameters
    without a matrix form, assembled from ``vjp``, one product per output entry;
    ``row_output`` lists the vector parameters of a row output, whose block comes back with
    the outputs along its columns."""
    value = np.asarray(forward(**inputs))
    values = _sg_bundle(value_and_grad, table, inputs, sizes)
    out = {}
    for name in parameters:
        shape = value.shape + np.shape(inputs[name])
        if name in table["without"]:
            rows = []
            for i in range(value.size):
                unit = np.zeros(value.size)
                unit[i] = 1.0
                rows.append(np.ravel(vjp(unit.reshape(value.shape), **inputs)[name]))
            out[name] = np.stack(rows).reshape(shape)
        elif values[name] is None:
            out[name] = np.zeros(shape)
        else:
            block = np.asarray(values[name])
            if name in row_output:
                block = block.reshape(value.size, -1)     # a row output: rows are outputs
            out[name] = block.reshape(shape)
    return out
