"""Vectorisable float64 transcendental functions for Numba-generated loops.

Numba from PyPI has no SVML: ``math.exp`` or ``np.tanh`` inside an ``@njit`` loop
is a scalar libm call and the loop does not vectorise. The functions here are
float64 -> float64 ``@njit`` functions built only from + - * /, compares
(selects) and integer bit manipulation, with no libm call. They are compiled
``forceinline`` so LLVM inlines them into the calling loop and vectorises it
(ymm/zmm on AVX2/AVX-512, checked by tests/test_fastmath.py)::

    @numba.njit(fastmath={"nsz", "arcp", "contract", "reassoc"}, cache=True)
    def kernel(x, out):
        for i in range(x.shape[0]):
            out[i] = sg_tanh(x[i]) * 2.0 + sg_exp(-x[i])

The caller's fastmath flags do not reach these bodies (see ``_sgjit``), so
inf/nan/-0.0 are handled as below unless the *caller* declares nnan/ninf. This
module imports only math, numba and llvmlite: its source may be copied verbatim
into a generated module or exec'd. ``FASTMATH_FUNCTIONS`` maps math names to
function names.

Accuracy: max error in ulps of the float64 result, measured on about 20 million
points per function (log-uniform |x| over the whole domain including
subnormals, both signs, plus dense uniform bands around 0, 1 and the
overflow/underflow thresholds) against x87 long double evaluations (glibc expl,
tanhl, sinl, ...; 11 bits more precise, cross-checked against mpmath)::

    function       max ulp  domain where it holds
    sg_exp          0.98    all x (inf above 709.78, subnormal results below
                            -708.4, 0 below -745.13)
    sg_expm1        1.42    all x
    sg_log          0.85    x >= 0, subnormals included
    sg_log1p        0.84    x >= -1
    sg_tanh         2.39    all x
    sg_sigmoid      2.36    all x (no overflow; subnormal results below -708)
    sg_softplus     1.57    all x (= x for large x, exp(x) for very negative x)
    sg_logsigmoid   1.57    all x (= -softplus(-x))
    sg_sin          2.13    |x| < 2**29 (5.4e8); nan from 2**51, see below
    sg_cos          2.31    |x| < 2**29

tests/test_fastmath.py asserts 1 / 1.5 / 1 / 1 / 2.5 / 2.5 / 2 / 2 / 2.5 / 2.5
ulp (same order) on a ~0.3M-point deterministic sample per function.

Special values match NumPy: exp(inf) = inf, exp(-inf) = 0, log(0) = -inf,
log(x < 0) = nan, log(inf) = inf, log1p(-1) = -inf, expm1(-inf) = -1,
tanh(+-inf) = +-1, sigmoid(-inf) = 0, sigmoid(inf) = 1, softplus(inf) = inf,
softplus(-inf) = 0, sin/cos(+-inf) = nan, nan -> nan everywhere, and -0.0 is
kept by expm1, log1p, tanh and sin. Nothing overflows internally (softplus(1000)
= 1000, sigmoid(-1000) = 0).

sin/cos beyond 2**29: the Cody-Waite reduction is exact for |x| < 2**29 on any
CPU (tested on the doubles nearest to k*pi/2). On FMA hardware (LLVM fuses the
reduction steps) it measured <= 2 ulp also for 2**29 <= |x| < 2**51, random and
near-multiple-of-pi/2 arguments, though that is not proven for the very closest
approaches. Without FMA the absolute error grows like |x| * 2**-53 there
(5e-7 at 2**32, 1e-4 at 2**40). For |x| >= 2**51 the quadrant cannot be
formed (one ulp of x is half a radian or more): sg_sin and sg_cos answer nan
there rather than a meaningless value (NumPy and JAX reduce such arguments
exactly, with a branch per argument that a vectorised loop cannot take).

Speed, ns per element (``python bench/fastmath_speed.py``; 2-core AVX-512 VM,
Numba 0.68.1, NumPy 2.4; ``sg`` = ``out[i] = sg_f(x[i])`` in an njit loop;
``numpy`` = the ufunc, or for sigmoid/softplus/logsigmoid a stable
``np.logaddexp`` expression; ``libm`` = ``np.f(x[i])`` (sigmoid etc.: the
naive ``math.exp``/``math.log1p`` formula) in the same njit loop; the ratios
are numpy/sg and libm/sg)::

    ns/element, float64, n=65536, median of 7 (2 CPUs, load average 2.66 at start)
    function     sg (njit)    numpy  libm (njit)  vs numpy  vs libm
    exp               1.35     1.17         5.31      0.9x     3.9x
    expm1             1.44     1.49        14.28      1.0x     9.9x
    log               1.39     1.10         4.90      0.8x     3.5x
    log1p             1.97     1.83        19.52      0.9x     9.9x
    tanh              2.20     1.68        21.74      0.8x     9.9x
    sigmoid           1.55    22.23         6.75     14.4x     4.4x
    softplus          4.70    23.35        19.46      5.0x     4.1x
    logsigmoid        4.00    19.52        14.40      4.9x     3.6x
    sin               2.19    18.79        19.97      8.6x     9.1x
    cos               1.70    17.88        18.42     10.5x    10.9x

(The VM was shared with other jobs during this run; the repeats are interleaved
across the three variants, and an idle-machine run gave the same picture, e.g.
exp 1.21 / 1.21 / 6.30 and sin 1.94 / 18.1 / 20.9.) Loops use 256-bit ymm
vectors (LLVM's default preference on AVX-512 CPUs); on AVX-only CPUs they
vectorise 2-wide.
"""

import math

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

# Compilation options for every function here.
# * forceinline=True marks the compiled LLVM function "alwaysinline", so LLVM
#   inlines it into the calling loop, which the loop vectoriser needs (the
#   larger ones exceed LLVM's default inlining threshold otherwise).
#   Numba-IR inlining (inline="always") is deliberately NOT used: it would
#   re-lower these bodies with the *caller's* fastmath flags, and "reassoc"
#   folds the rounding trick (v + _ROUND) - _ROUND back to v and merges the
#   Cody-Waite pieces. LLVM-level inlining keeps each instruction's own flags.
# * "contract" only: lets LLVM fuse a*b+c into an FMA. Every product below
#   that must be exact already is, so fusing never changes a result for the
#   worse; no other fast-math freedom is taken (inf/nan/-0.0 stay IEEE).
# * error_model="numpy": no ZeroDivisionError check (a branch to an exception
#   exit stops the loop vectoriser); division by zero gives inf/nan instead.
_sgjit = numba.njit(fastmath={"contract"}, error_model="numpy", forceinline=True)


@_sgjit
def sg_max(a, b):
    """The larger of a and b, NaN if either is NaN (as np.maximum and JAX): Python's max
    and the hardware's maxsd answer by argument order."""
    return a if a > b or a != a else b


@_sgjit
def sg_min(a, b):
    """The smaller of a and b, NaN if either is NaN (as np.minimum and JAX)."""
    return a if a < b or a != a else b


@_sgjit
def sg_pow(x, y):
    """x ** y, for a large model's point kernel, whose Python twin runs the same code with
    math.pow in its place (raising where Python's ** gives a complex number: the kernel,
    which gives nan as NumPy does, then answers)."""
    return x ** y


@intrinsic
def _f64_bits(typingctx, x):
    """Reinterpret the bits of a float64 as an int64 (no numeric conversion)."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_f64(typingctx, i):
    """Reinterpret the bits of an int64 as a float64 (no numeric conversion)."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


# --- shared constants -------------------------------------------------------

# Round-to-integer without a float->int conversion: for |v| < 2**51,
# t = v + _ROUND is rounded (to nearest even) onto the integer grid of the
# binade [2**52, 2**53), so t - _ROUND == rint(v) and the low bits of t's
# bit pattern hold rint(v) as a two's-complement integer. Packed
# double->int64 conversion does not exist before AVX-512, this does.
_ROUND = 6755399441055744.0  # 1.5 * 2**52
_ROUND_BITS = 0x4338000000000000  # bit pattern of _ROUND; its low 51 bits are 0

_INF = math.inf
_NAN = math.nan

# ln(2) split for Cody-Waite reduction: _LN2_HI has 40 significant bits, so
# n * _LN2_HI is exact for |n| < 2**13; _LN2_LO = ln2 - _LN2_HI (to double).
_LN2_HI = 0.6931471805601177
_LN2_LO = -1.7239444525614835e-13
_INV_LN2 = 1.4426950408889634  # 1/ln(2)

# expm1(r) = r + r*r*Q(r) on |r| <= ln(2)/2 (with 1e-4 margin). Q is a degree-10
# polynomial: Chebyshev interpolant of (expm1(r) - r)/r**2 computed with
# mpmath.chebyfit at 50 digits (near-minimax), coefficients rounded to double.
# Relative error of Q after rounding: 4.9e-18.
_Q0 = 0.5
_Q1 = 0.1666666666666667
_Q2 = 0.04166666666666667
_Q3 = 0.008333333333326136
_Q4 = 0.0013888888888883748
_Q5 = 0.00019841269874820627
_Q6 = 2.4801587325547743e-05
_Q7 = 2.7557255400206422e-06
_Q8 = 2.75572736431103e-07
_Q9 = 2.5105217004720745e-08
_Q10 = 2.0914686968086876e-09


@_sgjit
def _expm1_tail(r):
    """expm1(r) - r = r*r*Q(r) for |r| <= ln(2)/2."""
    q = _Q10
    q = q * r + _Q9
    q = q * r + _Q8
    q = q * r + _Q7
    q = q * r + _Q6
    q = q * r + _Q5
    q = q * r + _Q4
    q = q * r + _Q3
    q = q * r + _Q2
    q = q * r + _Q1
    q = q * r + _Q0
    return (r * r) * q


# --- exp / expm1 ------------------------------------------------------------

# exp(x) overflows for x > 709.78 and is below half the smallest subnormal for
# x < -745.13. Clamping to slightly wider bounds keeps n = rint(x/ln2) within
# [-1077, 1024] so the scale factors below stay normal numbers, while the final
# multiply still produces inf / 0 exactly where it should.
_EXP_HI = 710.0
_EXP_LO = -746.0


@_sgjit
def sg_exp(x):
    """exp(x); max error 1 ulp (see module docstring)."""
    x = float(x)
    # Comparisons are False for nan, so nan passes through both clamps.
    xc = _EXP_HI if x > _EXP_HI else x
    xc = _EXP_LO if xc < _EXP_LO else xc
    # x = n*ln2 + r with |r| <= ln2/2 (Cody-Waite: n*_LN2_HI is exact and
    # xc - n*_LN2_HI is exact by Sterbenz' lemma).
    t = xc * _INV_LN2 + _ROUND
    nf = t - _ROUND
    n = _f64_bits(t) - _ROUND_BITS
    r = (xc - nf * _LN2_HI) - nf * _LN2_LO
    p = 1.0 + (r + _expm1_tail(r))
    # 2**n as two normal powers of two, so that n = 1024 (overflow) and
    # n < -1022 work: p*s1 is exact, and for a subnormal result the last
    # multiply is the only added rounding.
    n1 = n >> 1
    s1 = _bits_f64((n1 + 1023) << 52)
    s2 = _bits_f64((n - n1 + 1023) << 52)
    return (p * s1) * s2


# expm1(x) rounds to -1 for x < -38; clamping there keeps 2**n away from
# the subnormal range.
_EXPM1_LO = -40.0
# Below this, expm1(x) = x + x*x/2 rounds to x (and this keeps -0.0).
_EXPM1_TINY = 2.0**-54


@_sgjit
def sg_expm1(x):
    """expm1(x) = exp(x) - 1, accurate near 0; max error 1.5 ulp."""
    x = float(x)
    xc = _EXP_HI if x > _EXP_HI else x
    xc = _EXPM1_LO if xc < _EXPM1_LO else xc
    t = xc * _INV_LN2 + _ROUND
    nf = t - _ROUND
    n = _f64_bits(t) - _ROUND_BITS
    r = (xc - nf * _LN2_HI) - nf * _LN2_LO
    # e = expm1(r) as an unevaluated sum e_hi + e_lo (Fast2Sum, |r| >= |tail|):
    # for n = 1 the sum below cancels by up to 2 bits, so e's own rounding
    # error would be magnified there.
    tail = _expm1_tail(r)
    e_hi = r + tail
    e_lo = (r - e_hi) + tail
    # expm1(x) = 2**n * (e + 1) - 1 = 2 * (h*e + (h - 1/2)) with h = 2**(n-1).
    # h*e is exact (power-of-two scaling) and h - 1/2 is exact for |n| <= 53;
    # the doubling is exact (or overflows to inf exactly when the result
    # does). h stays finite for n = 1024, unlike 2**n.
    h = _bits_f64((n + 1022) << 52)
    y = 2.0 * ((h * e_hi + (h - 0.5)) + h * e_lo)
    return x if abs(x) < _EXPM1_TINY else y


# --- tanh / sigmoid ---------------------------------------------------------

# tanh(x) rounds to +-1 for |x| > 19.1.
_TANH_CLAMP = 20.0


@_sgjit
def sg_tanh(x):
    """tanh(x) = expm1(2|x|) / (expm1(2|x|) + 2) with the sign of x."""
    x = float(x)
    a = abs(x)
    a = _TANH_CLAMP if a > _TANH_CLAMP else a  # nan passes
    em = sg_expm1(2.0 * a)
    # em >= 0: no cancellation; for tiny a, em = 2a and the quotient is a.
    return math.copysign(em / (em + 2.0), x)


@_sgjit
def sg_sigmoid(x):
    """1 / (1 + exp(-x)), evaluated as z/(1+z) or 1/(1+z) with z = exp(-|x|) <= 1."""
    x = float(x)
    z = sg_exp(-abs(x))
    num = 1.0 if x >= 0.0 else z  # nan: z is nan
    return num / (1.0 + z)


# --- log / log1p ------------------------------------------------------------

# Bit pattern of sqrt(1/2): subtracting it before extracting the exponent puts
# the mantissa m in [sqrt(1/2), sqrt(2)), where |log(m)| is smallest.
_SQRT_HALF_BITS = 0x3FE6A09E667F3BCD

# log(1+f) = 2*atanh(s), s = f/(2+f), |s| <= 0.1716 for m in [sqrt(1/2), sqrt(2)).
# 2*atanh(s) = 2s + s*R(z), z = s*s, R(z) = z * R1(z); R1 is a degree-6
# Chebyshev interpolant (mpmath.chebyfit, 50 digits, near-minimax) of
# 2*(atanh(sqrt(z))/sqrt(z) - 1)/z on z in [0, 0.02944]; relative error of R1
# after rounding to double 4.7e-16 (R is only ~1% of the result).
_L1 = 0.666666666666667
_L2 = 0.39999999999899444
_L3 = 0.2857142862600327
_L4 = 0.22222211130259878
_L5 = 0.18182889455674947
_L6 = 0.15331710618210773
_L7 = 0.14616585424888623


@_sgjit
def _log_kernel(u, kbias, corr):
    """log(u * 2**kbias) + corr for finite normal u > 0.

    kbias undoes a pre-scaling of subnormal inputs; corr is a tiny correction
    term (|corr| <= 2**-53, a rounding error of the caller) added in with the
    low-order parts."""
    iu = _f64_bits(u)
    tmp = iu - _SQRT_HALF_BITS
    k = tmp >> 52  # arithmetic shift: exponent such that u = 2**k * m
    m = _bits_f64(iu - (k << 52))
    k = k + kbias
    # float(k) through the rounding constant: exact for |k| < 2**51, and a
    # packed int64 add vectorises where int64->double conversion does not.
    dk = _bits_f64(k + _ROUND_BITS) - _ROUND
    f = m - 1.0  # exact (Sterbenz)
    s = f / (2.0 + f)
    z = s * s
    rz = _L7
    rz = rz * z + _L6
    rz = rz * z + _L5
    rz = rz * z + _L4
    rz = rz * z + _L3
    rz = rz * z + _L2
    rz = rz * z + _L1
    rz = rz * z
    # 2s = f - s*f, which rearranges to log(1+f) = f - hfsq + s*(hfsq + R) with
    # hfsq = f*f/2: the large terms f - hfsq come first, the small ones are
    # added as a correction (the classic fdlibm arrangement).
    hfsq = 0.5 * f * f
    return dk * _LN2_HI - ((hfsq - (s * (hfsq + rz) + (dk * _LN2_LO + corr))) - f)


_MIN_NORMAL = 2.2250738585072014e-308
_TWO52 = 4503599627370496.0  # 2**52


@_sgjit
def sg_log(x):
    """Natural logarithm; max error 1 ulp."""
    x = float(x)
    # Subnormals: scale into the normal range and correct the exponent.
    sub = x < _MIN_NORMAL
    u = x * _TWO52 if sub else x
    kbias = -52 if sub else 0
    y = _log_kernel(u, kbias, 0.0)
    y = -_INF if x == 0.0 else y
    y = _NAN if x < 0.0 else y
    y = x if not (x < _INF) else y  # +inf -> inf, nan -> nan
    return y


# log1p(x) = x - x*x/2 + ... rounds to x below this (and this keeps -0.0).
_LOG1P_TINY = 2.0**-54


@_sgjit
def _log1p_core(x):
    """log1p(x) for x > -1 finite (no special-value handling)."""
    u = 1.0 + x
    # c = (1 + x) - u exactly (Fast2Sum, larger operand first), then
    # log1p(x) = log(u) + log(1 + c/u) = log(u) + c/u: |c/u| <= 2**-53, so the
    # neglected -(c/u)**2/2 is far below the result's ulp.
    c = (x - (u - 1.0)) if x < 1.0 else (1.0 - (u - x))
    return _log_kernel(u, 0, c / u)


@_sgjit
def sg_log1p(x):
    """log(1 + x), accurate near 0; max error 1 ulp."""
    x = float(x)
    y = _log1p_core(x)
    y = x if abs(x) < _LOG1P_TINY else y
    y = -_INF if x == -1.0 else y
    y = _NAN if x < -1.0 else y
    y = x if not (x < _INF) else y  # +inf -> inf, nan -> nan
    return y


@_sgjit
def sg_softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)); never overflows."""
    x = float(x)
    z = sg_exp(-abs(x))  # in [0, 1]; nan for nan
    # log1p(z) for z in [0, 1] needs no special cases; for tiny z it is z
    # (relative accuracy kept even for subnormal z).
    lp = _log1p_core(z)
    m = x if x > 0.0 else 0.0
    return m + lp


@_sgjit
def sg_logsigmoid(x):
    """log(sigmoid(x)) = -softplus(-x)."""
    return -sg_softplus(-float(x))


# --- sin / cos --------------------------------------------------------------

_TWO_OVER_PI = 0.6366197723675814

# pi/2 split into four 24-bit pieces plus a full-precision tail (149 bits in
# all). For |k| < 2**29 each k*_PIO2_i (i <= 4) is exact and every partial
# difference x - k*(_PIO2_1 + ... + _PIO2_i) is exact whenever it is small, so
# x - k*pi/2 keeps full relative precision even for the x closest to a
# multiple of pi/2 (|r| down to ~2**-60) -- Cody-Waite with enough pieces.
_PIO2_1 = 1.5707963705062866
_PIO2_2 = -4.371138828673793e-08
_PIO2_3 = -1.7151245100058819e-15
_PIO2_4 = 1.056299898220315e-23
_PIO2_5 = 8.4784276603689e-32

# sin(r) = r + r*z*S(z), z = r*r, |r| <= pi/4: S is a degree-6 Chebyshev
# interpolant (mpmath.chebyfit, 50 digits) of (sin(r) - r)/r**3 in z;
# relative error after rounding 5.7e-17.
_S0 = -0.16666666666666666
_S1 = 0.008333333333333331
_S2 = -0.00019841269841265063
_S3 = 2.7557319219337312e-06
_S4 = -2.5052106231802837e-08
_S5 = 1.6058531516797758e-10
_S6 = -7.586691094197958e-13

# cos(r) = 1 - z/2 + z*z*C(z): C is a degree-5 Chebyshev interpolant of
# (cos(r) - 1 + z/2)/z**2 in z on [0, (pi/4)**2]; relative error 5.8e-17.
_C0 = 0.041666666666666664
_C1 = -0.0013888888888887398
_C2 = 2.480158729876456e-05
_C3 = -2.7557317271145144e-07
_C4 = 2.087614614655861e-09
_C5 = -1.1382623647474604e-11

# sin and cos answer nan from here on (see the module docstring)
_SIN_COS_LIMIT = 2.0**51
_NAN = float("nan")

# sin(x) = x for |x| below this (x**3/6 < ulp(x)/2); also keeps sin(-0.0) = -0.0.
_SIN_TINY = 2.0**-26


@_sgjit
def _sin_cos_kernel(x, shift):
    """sin(x + shift*pi/2) for shift in {0, 1}."""
    # x = k*pi/2 + r, |r| <= pi/4; k mod 4 selects the quadrant.
    t = x * _TWO_OVER_PI + _ROUND
    kf = t - _ROUND
    q = _f64_bits(t) + shift  # low two bits: (k + shift) mod 4
    r = x - kf * _PIO2_1
    r = r - kf * _PIO2_2
    r = r - kf * _PIO2_3
    r = r - kf * _PIO2_4
    r = r - kf * _PIO2_5
    # From 2**51 on k cannot be formed (one ulp of x is half a radian or more): no
    # value rather than a meaningless one (nan passes through, inf gives nan).
    r = r if abs(x) < _SIN_COS_LIMIT else _NAN
    z = r * r
    ps = _S6
    ps = ps * z + _S5
    ps = ps * z + _S4
    ps = ps * z + _S3
    ps = ps * z + _S2
    ps = ps * z + _S1
    ps = ps * z + _S0
    sin_r = r + r * (z * ps)
    pc = _C5
    pc = pc * z + _C4
    pc = pc * z + _C3
    pc = pc * z + _C2
    pc = pc * z + _C1
    pc = pc * z + _C0
    # 1 - z/2 rounds once in w; ((1 - w) - hz) recovers that rounding error
    # exactly so it is added back with the small z*z*C term.
    hz = 0.5 * z
    w = 1.0 - hz
    cos_r = w + (((1.0 - w) - hz) + (z * z) * pc)
    y = cos_r if (q & 1) != 0 else sin_r
    return -y if (q & 2) != 0 else y


@_sgjit
def sg_sin(x):
    """sin(x); accurate for |x| < 2**29, see module docstring beyond."""
    x = float(x)
    y = _sin_cos_kernel(x, 0)
    return x if abs(x) < _SIN_TINY else y


@_sgjit
def sg_cos(x):
    """cos(x); accurate for |x| < 2**29, see module docstring beyond."""
    return _sin_cos_kernel(float(x), 1)


# Maps the math function name to the function that implements it in this module: every sg_
# function but the NaN-propagating max and min and the plain power (a new kernel is listed by
# being defined).
FASTMATH_FUNCTIONS = {name[3:]: name for name in list(globals()) if name.startswith("sg_")
                      and name not in ("sg_max", "sg_min", "sg_pow")}
