"""Random models (tests/random_models.py, as test_properties draws them): symgrad's
Hessian-vector products and Hessian blocks, evaluated from their formulas, against JAX (jvp
of grad, jax.hessian) and against central differences of symgrad's own gradient."""

from __future__ import annotations

import os

import numpy as np
import pytest
import sympy as sp

pytest.importorskip("hypothesis")
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)

from hypothesis import HealthCheck, given, reject, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import symgrad as sg  # noqa: E402
from symgrad import ops  # noqa: E402
from symgrad.checking.translate import translate  # noqa: E402
from tests.random_models import M, N, matrix_models, scalar_models  # noqa: E402

EXAMPLES = int(os.environ.get("SYMGRAD_SECOND_EXAMPLES", "20"))
# compiled models cost a Numba compile each (the model and its second-order bundles)
COMPILED_EXAMPLES = int(os.environ.get("SYMGRAD_SECOND_COMPILED_EXAMPLES", "3"))
# a campaign (this set to a file) logs each mismatch there and goes on, instead of stopping
# at the first one and shrinking it
LOG = os.environ.get("SYMGRAD_SECOND_LOG")
DIMS = {N: 3, M: 2}


def _shape(s) -> tuple:
    if isinstance(s, sp.MatrixSymbol):
        return tuple(int(sp.sympify(e).xreplace(DIMS)) for e in s.shape)
    return ()


def _tangent_symbols(wrt, taken) -> dict:
    out = {}
    for p in wrt:
        name = f"{p.name}_t"
        while name in taken:
            name += "_"
        taken.add(name)
        out[p] = (sp.MatrixSymbol(name, *p.shape) if isinstance(p, sp.MatrixSymbol)
                  else sp.Symbol(name, real=True))
    return out


def _agree(expr, wrt, seed):
    rng = np.random.default_rng(seed)
    inputs = sorted((s for s in expr.free_symbols if s not in DIMS), key=lambda s: s.name)
    taken = {s.name for s in inputs}
    tangents = _tangent_symbols(wrt, taken)
    values = {s.name: (rng.normal(size=_shape(s)) if _shape(s) else float(rng.normal()))
              for s in inputs}
    directions = {tangents[p].name: (rng.normal(size=_shape(p)) if _shape(p)
                                     else float(rng.normal())) for p in wrt}
    try:
        products = sg.hvp(expr, wrt, tangents)
    except NotImplementedError as error:
        pytest.fail(f"{expr}: {error}")
    everything = inputs + list(tangents.values())
    numeric = translate([sp.sympify(products[p]).xreplace(DIMS) for p in wrt],
                        [s.xreplace(DIMS) for s in everything], "numpy", {})
    got = numeric(**values, **directions)
    got = got if isinstance(got, (list, tuple)) else [got]
    model = translate(expr, inputs, "jax", DIMS)
    names = [p.name for p in wrt]

    def of_parameters(*params):
        return model(**{**values, **dict(zip(names, params))})

    primal = [jax.numpy.asarray(values[n]) for n in names]
    tangent = [jax.numpy.asarray(directions[tangents[p].name]) for p in wrt]
    reference_value = of_parameters(*primal)
    if not np.isfinite(np.asarray(reference_value)).all():
        reject()
    _, reference = jax.jvp(jax.grad(of_parameters, argnums=tuple(range(len(wrt)))),
                           tuple(primal), tuple(tangent))
    gradient = translate([sg.grad(expr, wrt)[p] for p in wrt], inputs, "numpy", DIMS)
    h = 1e-5

    def grad_at(sign):
        moved = dict(values)
        for p in wrt:
            moved[p.name] = values[p.name] + sign * h * directions[tangents[p].name]
        out = gradient(**moved)
        return out if isinstance(out, (list, tuple)) else [out]

    plus, minus = grad_at(1), grad_at(-1)
    for k, p in enumerate(wrt):
        mine, theirs = np.asarray(got[k], dtype=float), np.asarray(reference[k], dtype=float)
        if not np.isfinite(theirs).all():
            reject()
        scale = 1 + np.abs(theirs).max()
        assert np.allclose(mine.reshape(theirs.shape), theirs, rtol=1e-7, atol=1e-7 * scale), \
            f"{expr} wrt {wrt}: HVP {p}: symgrad {mine}, JAX {theirs}"
        fd = (np.asarray(plus[k], dtype=float) - np.asarray(minus[k], dtype=float)) / (2 * h)
        if np.isfinite(fd).all() and np.abs(fd - theirs).max() < 1e-4 * scale:
            # where the model is smooth enough for differences to see it, they agree too
            assert np.allclose(mine.reshape(fd.shape), fd, rtol=1e-4, atol=1e-4 * scale)
    return values


def _settings():
    return settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def test_hvp_of_random_scalar_models_agrees_with_jax():
    @_settings()
    @given(scalar_models(), st.integers(0, 2**31 - 1))
    def run(model, seed):
        _agree(*model, seed)

    run()


def test_hvp_of_random_matrix_models_agrees_with_jax():
    @_settings()
    @given(matrix_models(), st.integers(0, 2**31 - 1))
    def run(model, seed):
        _agree(*model, seed)

    run()


def test_hessian_blocks_of_random_matrix_models_agree_with_jax():
    """Where a block has a matrix form, it equals jax.hessian's (unit axes dropped)."""
    @_settings()
    @given(matrix_models(), st.integers(0, 2**31 - 1))
    def run(model, seed):
        expr, wrt = model
        wrt = [p for p in wrt if not isinstance(p, sp.MatrixSymbol) or p.shape[1] == 1]
        if not wrt:
            reject()
        try:
            H = sg.hessian(expr, wrt)
        except sg.NoMatrixForm:
            reject()
        rng = np.random.default_rng(seed)
        inputs = sorted((s for s in expr.free_symbols if s not in DIMS), key=lambda s: s.name)
        values = {s.name: (rng.normal(size=_shape(s)) if _shape(s) else float(rng.normal()))
                  for s in inputs}
        pairs = [(p, q) for p in wrt for q in wrt]
        # sizes substituted first: a dimension may stand in a block as a number (2 n I)
        sized = [sp.sympify(H[pair]).xreplace(DIMS) for pair in pairs]
        numeric = translate(sized, [s.xreplace(DIMS) for s in inputs], "numpy", {})
        got = numeric(**values)
        got = got if isinstance(got, (list, tuple)) else [got]
        model_fn = translate(expr, inputs, "jax", DIMS)
        names = [p.name for p in wrt]

        def of_parameters(*params):
            return model_fn(**{**values, **dict(zip(names, params))})

        primal = tuple(jax.numpy.asarray(values[n]) for n in names)
        if not np.isfinite(np.asarray(of_parameters(*primal))).all():
            reject()
        reference = jax.hessian(of_parameters, argnums=tuple(range(len(wrt))))(*primal)
        for k, (p, q) in enumerate(pairs):
            theirs = np.asarray(reference[wrt.index(p)][wrt.index(q)], dtype=float)
            if not np.isfinite(theirs).all():
                reject()
            n_p, n_q = int(np.prod(_shape(p))), int(np.prod(_shape(q)))
            mine = np.asarray(got[k], dtype=float).reshape(n_p, n_q)
            scale = 1 + np.abs(theirs).max()
            assert np.allclose(mine, theirs.reshape(n_p, n_q), rtol=1e-7, atol=1e-7 * scale), \
                f"{expr}: block ({p}, {q}): symgrad {mine}, JAX {theirs}"

    run()


def test_compiled_second_order_of_random_models_agrees_with_jax():
    """The compiled path, which the formulas above do not take: the HVP split into its
    pieces at x and its tangent part (the _Linearizer), the bundles, their kernels.
    ``sg.check(order=2)``: f.hvp and f.hessian (f.jacobian for a matrix output) against JAX
    and central differences of symgrad's gradient."""
    from symgrad.checking import check

    @settings(max_examples=COMPILED_EXAMPLES, deadline=None, database=None,
              derandomize=not LOG, suppress_health_check=list(HealthCheck))
    @given(st.one_of(scalar_models(), matrix_models()), st.integers(0, 2**31 - 1))
    def run(model, seed):
        expr, wrt = model
        try:
            report = check(expr, wrt, against=("jax", "finite-differences"), points=1,
                           seed=seed, order=2)
        except Exception as error:  # noqa: BLE001 - any crash is a finding
            if "no inputs with a finite value" in str(error):
                reject()
            problem = f"{expr}\nsrepr: {sp.srepr(expr)}\nwrt {wrt}: {error!r}"
        else:
            problem = None if report.ok else f"{expr}\nsrepr: {sp.srepr(expr)}\n{report}"
        if problem is not None and LOG:
            with open(LOG, "a", encoding="utf-8") as log:
                log.write(problem + "\n\n")
        elif problem is not None:
            raise AssertionError(problem)

    run()


# ------------------------------------------------------------------------------------------
# Gaps the second-order campaigns found, closed (SYMGRAD_SECOND_EXAMPLES=1500)
# ------------------------------------------------------------------------------------------
def test_the_slope_of_a_sign_sympy_leaves_unevaluated_is_zero():
    """Was: the Hessian of |acos(tanh(a)/2)| entrywise held Derivative(sign(...), a), which
    SymPy leaves unevaluated where it cannot prove the argument real, and which no
    translation or kernel can compute; a sign's slope is zero almost everywhere."""
    A = sg.matrix("A", N, M)
    a = sp.Symbol("a", real=True)
    expr = sg.sum(ops.Map(sp.Lambda((a,), sp.Abs(sp.acos(sp.tanh(a) / 2))), A.shape, A))
    _agree(expr, [A], 0)


def test_a_map_reading_a_dimension_has_a_hessian_vector_product():
    """Was: a gradient that hands an elementwise body the dimension m (a mean's 1/m) could
    not be translated for the comparison ('2.0 is neither an input nor a sized
    dimension')."""
    A, u = sg.matrix("A", N, M), sg.vector("u", N)
    a0, a1 = sp.symbols("a0 a1", real=True)
    body = ops.Map(sp.Lambda((a0, a1), sp.Max(a1, ops.sigmoid(a1))), A.shape, A, u)
    column = ops.AxisSum(body, 1)
    _agree(ops.LogDet(column @ column.T + sp.Identity(N)), [A, u], 600906)


@pytest.mark.parametrize("body", [
    lambda a: sp.Max(0, a, 6 * a + 3),
    lambda a: sp.Max(a / 3, 1 - a, 2 * a - 5),
    lambda a: sp.Min(2 * a + 1, 3 - a, 7 * a),
    lambda a: sp.Max(sp.Min(a, 4 * a - 1, 2), -a - 3),
], ids=["max-with-zero", "max-of-three", "min-of-three", "min-inside-max"])
def test_max_and_min_inside_a_map_have_jaxs_hessian_vector_product(body):
    """Was: the compiled HVP of sum(Max(0, a, 6a + 3) a) was half JAX's wherever 6a + 3 was
    the maximum: SymPy's doit (called by ``A @ B`` on the HVP's pieces) rebuilt the body's
    Piecewise and rewrote the equality Max's rule routes by as Eq(a, max/6 - 1/2), false
    in floats (found by the second-order campaign)."""
    a = sp.Symbol("a", real=True)
    v = sg.vector("v", 5)
    model = sg.sum(ops.Map(sp.Lambda((a,), body(a) * a), v.shape, v))
    reference = translate(model, [v], "jax", {})
    compiled = sg.compile(model, [v])
    rng = np.random.default_rng(7)
    for _ in range(3):
        point, direction = 3 * rng.normal(size=(5, 1)), rng.normal(size=(5, 1))
        _, expected = jax.jvp(jax.grad(lambda w: reference(v=w)), (point,), (direction,))
        got = compiled.hvp({"v": direction}, v=point)["v"]
        np.testing.assert_allclose(got.reshape(-1), np.asarray(expected).reshape(-1),
                                   rtol=1e-10, atol=1e-12)


def test_a_function_of_a_piecewise_has_a_compiled_hessian_vector_product():
    """Was (found by the compiled second-order campaign): the HVP of sin(Piecewise(...))
    crashed while it was split into its pieces at x and its tangent part: a branch that
    the tangents do not reach was hoisted as a value, and a Piecewise cannot hold a value
    where its (value, condition) pair stands."""
    from symgrad.checking import check

    x, z = sp.symbols("x z", real=True)
    branches = sp.Piecewise((x, z > -1), (sp.S(1) / 2, z < -4), (z / 2 + 1, True))
    for model in (sp.sin(branches), sg.sigmoid(sp.Max(z / 2, 3 - x, branches))):
        report = check(model, [x, z], against=("jax", "finite-differences"), points=3,
                       order=2)
        assert report.ok, str(report)


@pytest.mark.parametrize("extreme", [
    lambda a: sp.Max(0, a, 6 * a + 3),
    lambda a: sp.Min(2 * a + 1, 3 - a, 7 * a),
], ids=["max-of-three", "min-of-three"])
def test_a_scalar_max_scaling_a_matrix_has_jaxs_hessian(extreme):
    """Was: the mixed block d2/da dv of v^T (Max(0, a, 6a + 3) a v) lacked a Max'(a) term
    wherever 6a + 3 was the maximum, in sg.hessian and in f.hessian: the scalar routing
    weight stood in a matrix product, whose doit rebuilt its Piecewise and solved the
    equality Eq(6a + 3, max) for a, false in floats.  Max's rule now tests an equality
    that SymPy keeps as written (ops.Equal)."""
    from symgrad.checking import check

    a = sp.Symbol("a", real=True)
    v = sg.vector("v", 3)
    model = sg.dot(v, extreme(a) * a * v)
    for point in (-0.13, 0.126, 0.3, 1.7):
        report = check(model, [a, v], against=("jax", "finite-differences"), points=1,
                       inputs={"a": point}, order=2)
        assert report.ok, str(report)
    _agree(model, [a, v], 5)       # the formulas of sg.hvp too
    H = sg.hessian(model, [a, v])
    mixed = translate(H[(a, v)], [a, v], "numpy", {})
    values = {"a": 0.3, "v": np.array([[0.5], [-1.0], [2.0]])}

    def reference(t, w):
        return jax.numpy.sum(translate(model, [a, v], "jax", {})(a=t, v=w))

    expected = jax.jacfwd(jax.grad(reference, argnums=0), argnums=1)(0.3, values["v"])
    np.testing.assert_allclose(np.ravel(mixed(**values)), np.ravel(expected), rtol=1e-12)
