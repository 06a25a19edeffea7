"""Accuracy, special values and vectorisation of symgrad.codegen.fastmath.

The ulp errors are measured against x87 80-bit long double evaluations of the same
functions (glibc's expl, sinl, ..., 11 bits more precise than float64), cross-checked
against mpmath on a subsample; where long double is not extended precision the
mpmath path is used on its own (on a smaller sample).
"""

import ast
import importlib.util
import math
import platform
import re
import sys

import mpmath
import numba
import numpy as np
import pytest

from symgrad.codegen import fastmath as fm
from symgrad.codegen.numba import FASTMATH_FLAGS

# The flags symgrad's generated kernels use (never nnan / ninf), read from the code generator
# so that these tests follow it.
LOOP_FLAGS = ast.literal_eval(FASTMATH_FLAGS)
assert LOOP_FLAGS and not LOOP_FLAGS & {"nnan", "ninf", "fast"}

# Max ulp error each function is documented to meet over its domain.
ULP_BOUND = {
    "exp": 1.0,
    "expm1": 1.5,
    "log": 1.0,
    "log1p": 1.0,
    "tanh": 2.5,
    "sigmoid": 2.5,
    "softplus": 2.0,
    "logsigmoid": 2.0,
    "sin": 2.5,
    "cos": 2.5,
}
assert set(ULP_BOUND) == set(fm.FASTMATH_FUNCTIONS)

EXTENDED = np.finfo(np.longdouble).nmant >= 63
N = 200_000 if EXTENDED else 5_000

_KERNELS = {}


def kernel(name):
    """njit loop out[i] = sg_<name>(x[i]) with the generated-code fastmath flags."""
    if name not in _KERNELS:
        f = getattr(fm, fm.FASTMATH_FUNCTIONS[name])

        @numba.njit(fastmath=LOOP_FLAGS)
        def loop(x, out):
            for i in range(x.shape[0]):
                out[i] = f(x[i])

        _KERNELS[name] = loop
    return _KERNELS[name]


def apply(name, x):
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(x)
    kernel(name)(x, out)
    return out


# --- samples ------------------------------------------------------------------


def _logu(rng, lo, hi, n, signed=True):
    """|x| log-uniform over [2**lo, 2**hi), random signs."""
    x = 2.0 ** rng.uniform(lo, hi, n)
    return x * rng.choice([-1.0, 1.0], n) if signed else x


def _near_half_pi_multiples(rng, kmax, n):
    """The doubles nearest to k*pi/2 (and neighbours): hardest for range reduction."""
    mpmath.mp.dps = 60
    ks = np.unique(np.concatenate([np.arange(1, 200), rng.integers(1, kmax, n)]))
    xs = []
    for k in ks:
        v = float(mpmath.mpf(int(k)) * mpmath.pi / 2)
        xs += [v, np.nextafter(v, np.inf), np.nextafter(v, -np.inf)]
    xs = np.array(xs)
    return np.concatenate([xs, -xs])


def sample(name, n=N, seed=0):
    rng = np.random.default_rng(seed)
    m = n // 4
    if name == "log":
        parts = [
            _logu(rng, -1074, 1024, n, signed=False),  # incl. subnormals
            rng.uniform(0.7, 1.5, m),  # around 1, where log is smallest
            rng.uniform(0.0, 16.0, m),
        ]
    elif name == "log1p":
        parts = [
            _logu(rng, -1075, 1024, n, signed=False),
            -_logu(rng, -1075, 0, m, signed=False),  # (-1, 0)
            -1.0 + _logu(rng, -53, -1, m, signed=False),  # near -1
            rng.uniform(-1.0, 2.0, m),
        ]
    elif name in ("exp", "expm1"):
        parts = [
            _logu(rng, -1075, math.log2(746.0), n),
            rng.uniform(-40.0, 40.0, m),
            rng.uniform(700.0, 709.79, m // 4),  # near overflow
            rng.uniform(-745.2, -700.0, m // 4),  # subnormal results
        ]
    elif name in ("sin", "cos"):
        parts = [
            _logu(rng, -1075, 29, n),
            rng.uniform(-8.0, 8.0, m),
            _near_half_pi_multiples(rng, 2**28, max(n // 500, 10)),
        ]
    else:  # tanh, sigmoid, softplus, logsigmoid
        parts = [
            _logu(rng, -1075, 10, n),
            rng.uniform(-40.0, 40.0, m),
            rng.uniform(-745.2, -700.0, m // 8),  # subnormal sigmoid / softplus
        ]
    return np.concatenate(parts)


# --- references -----------------------------------------------------------------


def reference_longdouble(name, x):
    xl = x.astype(np.longdouble)
    with np.errstate(all="ignore"):
        if name == "sigmoid":
            return np.where(xl >= 0, 1 / (1 + np.exp(-xl)), np.exp(xl) / (1 + np.exp(xl)))
        if name in ("softplus", "logsigmoid"):
            v = xl if name == "softplus" else -xl
            sp = np.maximum(v, 0) + np.log1p(np.exp(-np.abs(v)))
            return sp if name == "softplus" else -sp
        return getattr(np, name)(xl)


def _mp_ref(name, v):
    v = mpmath.mpf(v)
    if name == "sigmoid":
        return 1 / (1 + mpmath.exp(-v))
    if name == "softplus":
        return mpmath.log1p(mpmath.exp(v))
    if name == "logsigmoid":
        return -mpmath.log1p(mpmath.exp(-v))
    if name == "log" and v < 0 or name == "log1p" and v < -1:
        return mpmath.nan
    return getattr(mpmath, name)(v)


def _ulp_of(y):
    """ulp of the float64 grid in the binade of the exact value y (an mpf)."""
    e = int(mpmath.frexp(y)[1]) - 1 if y != 0 else -1074
    return mpmath.ldexp(1, max(e, -1022) - 52)


def ulp_errors_mpmath(name, x, got):
    mpmath.mp.dps = 50
    errs = np.empty(len(x))
    for i, (v, g) in enumerate(zip(x.tolist(), got.tolist(), strict=True)):
        r = _mp_ref(name, v)
        if mpmath.isnan(r):
            errs[i] = 0.0 if math.isnan(g) else np.inf
            continue
        if abs(r) > np.finfo(np.float64).max * (1 + 2.0**-54) or mpmath.isinf(r):
            errs[i] = 0.0 if g == math.copysign(math.inf, r) else np.inf
            continue
        errs[i] = float(abs(mpmath.mpf(g) - r) / _ulp_of(r))
    return errs


def ulp_errors_longdouble(got, ref):
    with np.errstate(all="ignore"):
        refd = ref.astype(np.float64)
        e = np.frexp(ref)[1].astype(np.int64) - 1
        ulp = np.ldexp(np.longdouble(1), np.maximum(e, -1022) - 52)
        err = (np.abs(got.astype(np.longdouble) - ref) / ulp).astype(np.float64)
    ok_special = (np.isnan(got) & np.isnan(refd)) | (np.isinf(refd) & (got == refd))
    err[ok_special] = 0.0
    err[np.isnan(err)] = np.inf
    return err


# --- accuracy -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(fm.FASTMATH_FUNCTIONS))
def test_ulp_error(name):
    x = sample(name)
    got = apply(name, x)
    if EXTENDED:
        err = ulp_errors_longdouble(got, reference_longdouble(name, x))
    else:
        err = ulp_errors_mpmath(name, x, got)
    worst = int(np.argmax(err))
    assert err[worst] <= ULP_BOUND[name], (
        f"{name}: {err[worst]:.3f} ulp at x={x[worst]!r} (got {got[worst]!r})"
    )
    assert ULP_BOUND[name] <= 4.0


@pytest.mark.skipif(not EXTENDED, reason="long double is not extended precision here")
@pytest.mark.parametrize("name", sorted(fm.FASTMATH_FUNCTIONS))
def test_longdouble_reference_agrees_with_mpmath(name):
    # The long double reference must itself be far more accurate than the bounds,
    # and the results must meet the bound against mpmath directly as well.
    x = sample(name, n=1200, seed=1)
    got = apply(name, x)
    err_mp = ulp_errors_mpmath(name, x, got)
    err_ld = ulp_errors_longdouble(got, reference_longdouble(name, x))
    finite = np.isfinite(err_mp) & np.isfinite(err_ld)
    assert finite.all()
    assert np.max(np.abs(err_mp - err_ld)) < 0.05
    assert np.max(err_mp) <= ULP_BOUND[name]


# --- special values ---------------------------------------------------------------

INF, NAN = math.inf, math.nan
TINY = 5e-324  # smallest subnormal

SPECIAL = {
    "exp": [(INF, INF), (-INF, 0.0), (NAN, NAN), (0.0, 1.0), (-0.0, 1.0), (710.0, INF),
            (1000.0, INF), (-746.0, 0.0), (-1000.0, 0.0), (TINY, 1.0), (-745.13, TINY)],
    "expm1": [(INF, INF), (-INF, -1.0), (NAN, NAN), (0.0, 0.0), (-0.0, -0.0), (TINY, TINY),
              (-TINY, -TINY), (710.0, INF), (-40.0, -1.0), (-1000.0, -1.0)],
    "log": [(0.0, -INF), (-0.0, -INF), (-1.0, NAN), (-TINY, NAN), (-INF, NAN), (INF, INF),
            (NAN, NAN), (1.0, 0.0), (TINY, -744.4400719213812)],
    "log1p": [(-1.0, -INF), (-2.0, NAN), (-INF, NAN), (INF, INF), (NAN, NAN), (0.0, 0.0),
              (-0.0, -0.0), (TINY, TINY), (-TINY, -TINY), (1.0, math.log(2.0))],
    "tanh": [(INF, 1.0), (-INF, -1.0), (NAN, NAN), (0.0, 0.0), (-0.0, -0.0), (TINY, TINY),
             (-TINY, -TINY), (20.0, 1.0), (-1000.0, -1.0)],
    "sigmoid": [(INF, 1.0), (-INF, 0.0), (NAN, NAN), (0.0, 0.5), (-0.0, 0.5), (1000.0, 1.0),
                (-1000.0, 0.0), (-745.13, TINY)],
    "softplus": [(INF, INF), (-INF, 0.0), (NAN, NAN), (0.0, math.log(2.0)), (1000.0, 1000.0),
                 (-1000.0, 0.0), (1e300, 1e300), (-745.13, TINY)],
    # logsigmoid(x) = -softplus(-x) < 0 rounds to -0.0 for large x, as NumPy's
    # -logaddexp(0, -x) does.
    "logsigmoid": [(INF, -0.0), (-INF, -INF), (NAN, NAN), (0.0, -math.log(2.0)),
                   (-1000.0, -1000.0), (1000.0, -0.0), (-1e300, -1e300)],
    "sin": [(INF, NAN), (-INF, NAN), (NAN, NAN), (0.0, 0.0), (-0.0, -0.0), (TINY, TINY),
            (-TINY, -TINY), (-1e-20, -1e-20)],
    "cos": [(INF, NAN), (-INF, NAN), (NAN, NAN), (0.0, 1.0), (-0.0, 1.0), (TINY, 1.0)],
}
assert set(SPECIAL) == set(fm.FASTMATH_FUNCTIONS)


def _same(a, b):
    if math.isnan(b):
        return math.isnan(a)
    if b == 0.0:  # signed zeros must match
        return a == 0.0 and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


@pytest.mark.parametrize("name", sorted(SPECIAL))
def test_special_values(name):
    xs, expected = zip(*SPECIAL[name], strict=True)
    got = apply(name, np.array(xs))
    bad = [(x, g, e) for x, g, e in zip(xs, got.tolist(), expected, strict=True)
           if not _same(g, e)]
    assert not bad, f"{name}: (x, got, expected) {bad}"
    # Called as a plain scalar function from another njit function as well.
    f = getattr(fm, fm.FASTMATH_FUNCTIONS[name])
    assert all(_same(f(x), e) for x, e in SPECIAL[name])


@pytest.mark.parametrize("name", ["sin", "cos"])
def test_sin_cos_beyond_the_exact_range(name):
    """Accurate (FMA hardware) or within |x| 2**-52 (without) up to 2**45, bounded up to
    2**51, and nan from 2**51, where no quadrant can be formed: never a meaningless value."""
    x = _logu(np.random.default_rng(3), 29, 1024, 20_000)
    got = apply(name, x)
    inside = np.abs(x) < 2.0**51
    assert np.all(np.abs(got[inside]) <= 1.0) and np.all(np.isnan(got[~inside]))
    assert np.isnan(apply(name, np.array([2.0**51, -(2.0**51), 1e16, 1e308]))).all()
    mid = np.abs(x) < 2.0**45
    ref = reference_longdouble(name, x[mid]).astype(np.float64)
    assert np.all(np.abs(got[mid] - ref) <= np.maximum(1e-15, np.abs(x[mid]) * 2.0**-52))


def test_large_arguments_do_not_overflow():
    x = np.array([-1000.0, -800.0, 800.0, 1000.0])
    assert apply("softplus", x).tolist() == [0.0, 0.0, 800.0, 1000.0]
    assert apply("logsigmoid", -x).tolist() == [-0.0, -0.0, -800.0, -1000.0]
    assert apply("sigmoid", x).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert apply("tanh", x).tolist() == [-1.0, -1.0, 1.0, 1.0]


# --- vectorisation ------------------------------------------------------------------


def _host_has_avx2():
    try:
        from llvmlite import binding as llvm

        return bool(llvm.get_host_cpu_features().get("avx2", False))
    except Exception:  # pragma: no cover - non-x86 or old llvmlite
        return False


needs_avx2 = pytest.mark.skipif(
    not (_host_has_avx2() and re.match(r"x86_64|AMD64", platform.machine())),
    reason="checks x86 AVX2/AVX-512 packed instructions; host CPU lacks AVX2",
)

_PACKED = re.compile(r"\bv(?:mul|add|sub|div|fn?m(?:add|sub)\d{3})pd\s+[^\n]*%[yz]mm")
# libm entry points appear as "movabsq $exp, %reg" + "callq *%reg" (or a direct call).
_LIBM_CALL = re.compile(r"(?:\$|call\w*\s+)(?:exp|expm1|log|log1p|tanh|sin|cos)\b")


def _assert_vectorised(asm, what):
    packed = _PACKED.findall(asm)
    assert len(packed) >= 10, f"{what}: no packed ymm/zmm double arithmetic in the loop"
    assert not _LIBM_CALL.search(asm), f"{what}: libm call left in the loop"


@needs_avx2
@pytest.mark.parametrize("name", sorted(fm.FASTMATH_FUNCTIONS))
def test_each_function_vectorises(name):
    apply(name, np.linspace(-2.0, 2.0, 64) + 2.5)
    k = kernel(name)
    _assert_vectorised(k.inspect_asm(k.signatures[0]), name)


@needs_avx2
def test_fused_loop_vectorises():
    sg_tanh, sg_exp, sg_sigmoid = fm.sg_tanh, fm.sg_exp, fm.sg_sigmoid

    @numba.njit(fastmath=LOOP_FLAGS)
    def fused(x, out):
        for i in range(x.shape[0]):
            out[i] = sg_tanh(x[i]) * 2.0 + sg_exp(-x[i]) - sg_sigmoid(x[i])

    x = np.linspace(-3.0, 3.0, 101)
    out = np.empty_like(x)
    fused(x, out)
    np.testing.assert_allclose(
        out, np.tanh(x) * 2.0 + np.exp(-x) - 1 / (1 + np.exp(-x)), rtol=1e-14, atol=1e-15
    )
    vecs = [l for l in fused.inspect_asm(fused.signatures[0]).splitlines() if "vfmadd" in l]
    assert any(re.search(r"%[yz]mm", l) for l in vecs), "fused loop not vectorised"
    _assert_vectorised(fused.inspect_asm(fused.signatures[0]), "fused loop")


# --- standalone use of the source text ---------------------------------------------


def _source():
    with open(fm.__file__, encoding="utf-8") as fh:
        return fh.read()


def test_source_imports_only_math_numpy_numba():
    allowed = {"math", "numpy", "numba", "llvmlite"}
    for node in ast.walk(ast.parse(_source())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module]
        else:
            continue
        assert all(n.split(".")[0] in allowed for n in names), names


def test_fastmath_functions_table():
    for math_name, fn_name in fm.FASTMATH_FUNCTIONS.items():
        assert fn_name == f"sg_{math_name}"
        assert isinstance(getattr(fm, fn_name), numba.core.registry.CPUDispatcher)


def test_source_works_when_exec_d():
    ns = {"__name__": "sg_exec_copy"}
    exec(compile(_source(), "<sg_exec_copy>", "exec"), ns)
    sg_softplus, sg_sin = ns["sg_softplus"], ns["sg_sin"]

    @numba.njit(fastmath=LOOP_FLAGS)
    def loop(x, out):
        for i in range(x.shape[0]):
            out[i] = sg_softplus(x[i]) + sg_sin(x[i])

    x = np.linspace(-30.0, 30.0, 257)
    out = np.empty_like(x)
    loop(x, out)
    assert np.array_equal(out, apply("softplus", x) + apply("sin", x))


def test_source_works_copied_into_cached_module(tmp_path):
    # A generated module: the verbatim source followed by a cache=True kernel.
    kernel_src = (
        "\n\n@numba.njit(fastmath={'nsz', 'arcp', 'contract', 'reassoc'}, cache=True)\n"
        "def kernel(x, out):\n"
        "    for i in range(x.shape[0]):\n"
        "        out[i] = sg_tanh(x[i]) * 2.0 + sg_exp(-x[i]) + sg_log1p(abs(x[i]))\n"
    )
    path = tmp_path / "sg_generated_copy.py"
    path.write_text(_source() + kernel_src, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("sg_generated_copy", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sg_generated_copy"] = mod
    try:
        spec.loader.exec_module(mod)
        x = np.linspace(-5.0, 5.0, 33)
        out = np.empty_like(x)
        mod.kernel(x, out)
    finally:
        del sys.modules["sg_generated_copy"]
    expected = apply("tanh", x) * 2.0 + apply("exp", -x) + apply("log1p", np.abs(x))
    np.testing.assert_allclose(out, expected, rtol=1e-15, atol=0)


@needs_avx2
def test_a_compiled_scalar_model_vectorises_across_points():
    """The point kernel is inlined into the loop over points, so the loop runs wide."""
    import sympy as sp

    import symgrad as sg

    q, w = sp.symbols("q w")
    f = sg.compile(sp.sin(q) * sp.cos(w) + sp.exp(-q * q) * w, [q, w])
    q_values, w_values = np.linspace(-2.0, 2.0, 1000), np.linspace(0.5, 1.5, 1000)
    value, grads = f.value_and_grad(q=q_values, w=w_values)
    np.testing.assert_allclose(value, np.sin(q_values) * np.cos(w_values)
                               + np.exp(-q_values**2) * w_values, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(grads["w"], -np.sin(q_values) * np.sin(w_values)
                               + np.exp(-q_values**2), rtol=1e-13, atol=1e-15)
    loop = f.module._value_and_grad_loop
    _assert_vectorised(loop.inspect_asm(loop.signatures[0]), "value-and-gradient loop")
