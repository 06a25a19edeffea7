"""Property: on random models, symgrad's gradients agree with JAX and with finite differences.

Hypothesis builds random scalar expressions and random matrix expressions from the supported
operations (tests/random_models.py), with functions of restricted domain applied only where
their arguments are in it (the log of softplus(.) + 1/10 or of a^2 + 1, the square root of
a^2 + 1, asin of tanh(.)/2 ...), and ``sg.check`` compares symgrad with JAX's autodiff and
with central differences on random inputs (two points, seeded by Hypothesis).

Most examples check the *symbolic* gradients (the formulas of ``sg.grad`` evaluated with
NumPy: ``reference="symbolic"``), since compiling each random model with Numba costs about a
second; a smaller share compiles the model and checks the Numba module.

300 examples run by default, the same ones each time (derandomized).  A campaign:
``SYMGRAD_HYPOTHESIS_EXAMPLES=10000 pytest tests/test_properties.py -s`` runs that many
examples in all (half scalar, 45% matrix, 5% compiled), random ones, and instead of stopping
at the first mismatch collects every one and reports them together at the end (also appended,
one JSON object a line, to ``$SYMGRAD_HYPOTHESIS_LOG`` when set).

Each gap of symgrad's core that the random models found has its minimal model and a
regression test at the end of this file.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import traceback

import pytest

pytest.importorskip("jax")

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402
from hypothesis import HealthCheck, given, reject, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sympy.matrices.expressions.matexpr import MatrixElement  # noqa: E402

import symgrad as sg  # noqa: E402
from symgrad import ops  # noqa: E402
from symgrad.checking import check  # noqa: E402

from .random_models import M, N, matrix_models, scalar_models  # noqa: E402

CAMPAIGN = int(os.environ.get("SYMGRAD_HYPOTHESIS_EXAMPLES", "0"))
TOTAL = CAMPAIGN or 300
SCALAR_EXAMPLES = TOTAL // 2
COMPILED_EXAMPLES = max(20, TOTAL // 20) if CAMPAIGN else 20
MATRIX_EXAMPLES = TOTAL - SCALAR_EXAMPLES - COMPILED_EXAMPLES
LOG = os.environ.get("SYMGRAD_HYPOTHESIS_LOG")


def _settings(examples: int):
    return settings(max_examples=examples, deadline=None, database=None,
                    derandomize=not CAMPAIGN, suppress_health_check=list(HealthCheck))


# The minimal models of gaps the random models found and the core has closed: regression
# tests at the end of this file.
_n, _m = sp.symbols("n m", integer=True, positive=True)
_x, _y, _c = sp.symbols("x y c")
_u, _v, _M, _A = sg.vector("u", _n), sg.vector("v", 2), sg.matrix("M", _n, _m), sg.matrix("A", 2, 2)
_SPD = _A + 3 * sp.Identity(2)

EQUAL_SIDES_MODEL = (sp.Piecewise((_y, sp.sin(_x) > sp.sin(_x)), (sp.sin(_x), True)), [_x, _y])
FREE_DIMENSION_MODEL = (MatrixElement(_u.T @ sp.OneMatrix(_n, _m), 0, 1), [_u])
HEAVISIDE_OF_REDUCTION_MODEL = (ops.relu(ops.relu(sg.mean(_M))), [_M])
INVERSE_SQUARED_MODEL = (sg.sum(sg.inv(_SPD) @ sg.inv(_SPD)), [_A])
ABS_OF_EXP_MODEL = (sg.sum(sg.abs(sg.exp(_A))), [_A])
SINGLETON_SOFTMAX_MODEL = (MatrixElement(_c * _v.T @ sg.softplus(sg.softmax(_v, 1)), 0, 0), [_v])


# ------------------------------------------------------------------------------------------
# The property
# ------------------------------------------------------------------------------------------
def mismatch(expr, wrt, seed: int, reference: str) -> str | None:
    """None when symgrad agrees with JAX and finite differences on expr, else what differs."""
    header = (f"{_text(expr)}\nsrepr: {sp.srepr(expr)}\n"
              f"wrt {wrt}, reference {reference}, seed {seed}")
    try:
        report = check(expr, wrt, against=("jax", "finite-differences"), points=2, seed=seed,
                       reference=reference)
    except Exception as error:  # noqa: BLE001 - any crash is a finding
        if "no inputs with a finite value" in str(error):
            reject()    # overflow wherever we looked: not a gradient question
        return f"{header}\n{traceback.format_exc(limit=-3)}"
    if report.ok:
        return None
    return f"{header}\n{report}"


def _text(expr) -> str:
    """str(expr), which can itself fail (see test_printing_a_map_with_max)."""
    try:
        return str(expr)
    except Exception as error:  # noqa: BLE001
        return f"<str() failed: {type(error).__name__}: {error}>"


class Findings:
    """Mismatches: raised at once normally (Hypothesis then shrinks to a minimal model);
    in a campaign collected, logged and reported together."""

    def __init__(self, name: str):
        self.name = name
        self.found: list[str] = []
        self.checked = 0

    def record(self, problem: str | None) -> None:
        self.checked += 1
        if problem is None:
            return
        if not CAMPAIGN:
            raise AssertionError(problem)
        self.found.append(problem)
        if LOG:
            with open(LOG, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"test": self.name, "mismatch": problem}) + "\n")

    def verify(self) -> None:
        print(f"{self.name}: {self.checked} models checked, {len(self.found)} mismatches")
        if LOG:
            with open(LOG, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"test": self.name, "checked": self.checked,
                                         "mismatches": len(self.found)}) + "\n")
        assert not self.found, (f"{len(self.found)} mismatches:\n\n"
                                + "\n\n".join(self.found))


SEEDS = st.integers(0, 2**31 - 1)


def test_symbolic_gradients_of_scalar_expressions_agree_with_jax_and_finite_differences():
    findings = Findings("scalar")

    @_settings(SCALAR_EXAMPLES)
    @given(scalar_models(), SEEDS)
    def run(model, seed):
        findings.record(mismatch(*model, seed, "symbolic"))

    run()
    findings.verify()


def test_symbolic_gradients_of_matrix_expressions_agree_with_jax_and_finite_differences():
    findings = Findings("matrix")

    @_settings(MATRIX_EXAMPLES)
    @given(matrix_models(), SEEDS)
    def run(model, seed):
        findings.record(mismatch(*model, seed, "symbolic"))

    run()
    findings.verify()


# Names a model may give its inputs that are symgrad's, Python's or the API's own words, and
# dimension names that would run code if they reached generated code.
NAMESAKES = ["value", "grad", "out", "float", "max", "INPUTS", "np", "math", "numba", "type",
             "upstream", "in_0", "in_1", "dim_0", "shape", "range", "sg_exp", "forward"]
HOSTILE_DIMENSIONS = ['np.__dict__[__import__("os").getpid() or "n"]', '{__import__("os")}',
                      'n"""', "n'\\", "_i", "n\nm", "in_0", "dim_1"]


def renamed(expr, wrt, data):
    """The model with its inputs renamed to namesakes of symgrad's words and its dimensions
    to hostile text (the same model otherwise)."""
    table = {}
    fixed = {d for s in expr.free_symbols if isinstance(s, sp.MatrixSymbol)
             for e in s.shape for d in sp.sympify(e).free_symbols}
    # a dimension that no input fixes is an argument (an identifier); the others may be any
    # text, and get the hostile kind
    dims = sorted((d for d in (N, M) if d in fixed), key=lambda d: d.name)
    for d in dims:
        text = data.draw(st.sampled_from(HOSTILE_DIMENSIONS))
        table[d] = sp.Symbol(text, integer=True, positive=True) if text not in \
            {t.name for t in table.values()} else d
    inputs = sorted((s for s in expr.free_symbols if s not in dims), key=str)
    names = data.draw(st.lists(st.sampled_from(NAMESAKES), min_size=len(inputs),
                               max_size=len(inputs), unique=True))
    for s, name in zip(inputs, names):
        if isinstance(s, sp.MatrixSymbol):
            table[s] = sp.MatrixSymbol(name, *[sp.sympify(e).xreplace(table) for e in s.shape])
        else:
            table[s] = sp.Symbol(name, **s.assumptions0)
    return expr.xreplace(table), [table[w] for w in wrt]


SPECIAL = [-2.0, -0.0, 0.0, 0.5, math.inf, -math.inf, math.nan]


def float_path_mismatch(expr, wrt) -> str | None:
    """None when a scalar model's float path (the Python twin) and array path (the Numba
    loop) agree at points with negative numbers, zeros, inf and NaN."""
    f = sg.compile(expr, wrt)
    if not f.spec.is_scalar_model:      # matrices inside, or dimensions as arguments
        return None
    symbols = sorted(expr.free_symbols, key=lambda s: s.name)
    rows = [dict(zip((s.name for s in symbols), point)) for point in
            itertools.islice(itertools.product(SPECIAL, repeat=len(symbols)), 200)]
    arrays = {n: np.array([r[n] for r in rows]) for n in rows[0]}
    with np.errstate(all="ignore"):
        values, grads = f.value_and_grad(**arrays)
        for k, row in enumerate(rows):
            try:
                value, grad = f.value_and_grad(**row)
            except Exception as error:  # noqa: BLE001 - the array path gave numbers here
                return f"{_text(expr)} at {row}: the float path raised {error!r}"
            pairs = [("value", value, values[k])] + [(n, grad[n], grads[n][k]) for n in grad]
            for what, a, b in pairs:
                if not isinstance(a, float) or math.isnan(a) != math.isnan(b) or \
                        (math.isinf(a) or math.isinf(b)) and a != b or \
                        not math.isnan(a) and not math.isinf(a) and \
                        abs(a - b) > 1e-8 * max(abs(a), abs(b)) + 1e-12:
                    return f"{_text(expr)} at {row}: {what} {a!r} (floats) != {b!r} (arrays)"
    return None


def test_compiled_gradients_agree_with_jax_and_finite_differences():
    """Compiled models, half of them with inputs named like symgrad's own words and
    dimensions named with code; scalar models also compare their float and array paths."""
    findings = Findings("compiled")

    @_settings(COMPILED_EXAMPLES)
    @given(st.one_of(scalar_models(), matrix_models()), SEEDS, st.data())
    def run(model, seed, data):
        expr, wrt = model
        if data.draw(st.booleans()):
            expr, wrt = renamed(expr, wrt, data)
        findings.record(mismatch(expr, wrt, seed, "compiled"))
        if not any(isinstance(s, sp.MatrixSymbol) for s in expr.free_symbols):
            findings.record(float_path_mismatch(expr, wrt))

    run()
    findings.verify()


# ------------------------------------------------------------------------------------------
# Gaps the random models found, closed: regression tests
# ------------------------------------------------------------------------------------------
def test_an_inverse_has_a_gradient():
    """Was: Inverse(X) has args (X, -1), so its rule got one input too many."""
    A = sg.matrix("A", 2, 2)
    assert check(sg.sum(sg.inv(A + 3 * sp.Identity(2))), [A], against="jax",
                 reference="symbolic").ok


def test_the_trace_of_an_inverse_has_a_gradient():
    """Was: the inverse's rule -Y^T G Y^T with G = I made a MatPow, which had no rule."""
    A = sg.matrix("A", 2, 2)
    assert check(sg.trace(sg.inv(A + 3 * sp.Identity(2))), [A], against="jax",
                 reference="symbolic").ok


def test_a_matrix_power_has_a_gradient():
    """Was: SymPy writes A @ A as MatPow(A, 2), which the canonical form refused."""
    A = sg.matrix("A", 2, 2)
    assert check(sg.sum(A @ A), [A], against="jax", reference="symbolic").ok


def test_max_of_three_has_a_gradient():
    """Was: SymPy flattens nested Max, so the binary rule met three arguments."""
    x, y, z = sp.symbols("x y z")
    assert check(sp.Max(x, y, z), [x, y, z], against="jax", reference="symbolic").ok


def test_a_reduction_times_a_matrix_has_a_gradient():
    """Was: SumAll was not commutative, so SymPy refused sg.sum(A) * A."""
    A = sg.matrix("A", 2, 2)
    assert check(sg.sum(sg.sum(A) * A), [A], against="jax", reference="symbolic").ok


def test_a_scalar_used_in_two_shapes_has_a_gradient():
    """Was: the adjoint's reductions of a 2 x 2 and a 3 x 1 matrix were merged into one."""
    c, A, x = sp.Symbol("c"), sg.matrix("A", 2, 2), sg.vector("x", 3)
    assert check(sg.sum(c * A) + sg.sum(c * x), [c], against="jax", reference="symbolic").ok


def test_a_dot_product_times_a_matrix_has_a_gradient():
    """Was: SymPy's doit expanded the dot product into an explicit Sum over an index."""
    v, W = sg.vector("v", _n), sg.matrix("W", _n, _n)
    assert check(sg.sum(sg.dot(_u, v) * W), [_u], against="jax", reference="symbolic").ok


def test_compiled_erf():
    """Was: the kernels called math.erf without importing math."""
    x = sp.Symbol("x")
    assert check(sp.erf(x), [x], against="finite-differences").ok


def test_compiled_piecewise_with_a_compound_condition():
    """Was: And / Or printed as numpy.logical_and.reduce, which Numba does not type."""
    x, y = sp.symbols("x y")
    model = sp.Piecewise((x, (x > 0) & (y < 1)), (y, True))
    assert check(model, [x, y], against="finite-differences").ok


def test_compiled_piecewise_without_a_default_branch_is_nan_where_no_condition_holds():
    """Was (found by the compiled campaign): a Piecewise with no ``True`` branch printed
    ``else None``, which Numba could not type: every call failed with a TypingError."""
    x, y = sp.symbols("x y", real=True)
    model = sp.tanh(sp.Piecewise((x * y, x > 0), (y**2, x < -1))) + x
    f = sg.compile(model, [x, y], name="piecewise_without_default")
    value, grads = f.value_and_grad(x=0.5, y=2.0)
    assert value == pytest.approx(np.tanh(1.0) + 0.5)
    assert grads["x"] == pytest.approx(2.0 * (1 - np.tanh(1.0) ** 2) + 1)
    values, batch = f.value_and_grad(x=np.array([0.5, -2.0, -0.5]), y=np.array([2.0, 3.0, 1.0]))
    np.testing.assert_allclose(values[:2], [np.tanh(1.0) + 0.5, np.tanh(9.0) - 2.0])
    assert np.isnan(values[2]) and np.isnan(batch["y"][2])  # no branch holds: undefined
    assert np.isnan(f.value_and_grad(x=-0.5, y=1.0)[0])     # the floats path too
    assert check(model, [x, y], against="jax", points=4).ok


def test_compiled_power_with_a_variable_exponent():
    """Was (a wrong gradient): b**(e - 1) printed without parentheses, as b**e - 1."""
    a, B = sp.Symbol("a"), sp.MatrixSymbol("B", 2, 2)
    model = sg.sum(ops.Map(sp.Lambda((a,), (a**2 + 1) ** a), (2, 2), B))
    assert check(model, [B], against="finite-differences").ok


def test_a_map_with_max_prints_and_compiles():
    """Was: printing substituted the operands into Max, which SymPy then refused."""
    a0, a1, A = *sp.symbols("a0 a1"), sg.matrix("A", 2, 2)
    model = sg.sum(ops.Map(sp.Lambda((a0, a1), sp.Max(a0, sp.acos(sp.tanh(a1) / 2))),
                           (2, 2), A, sg.sum(A)))
    assert str(model)
    assert check(model, [A], against="finite-differences").ok


def test_a_condition_with_equal_sides_keeps_its_gradient():
    """Was (a wrong gradient): over real temporaries SymPy decided sin(x) > sin(x) and
    dropped that piece, so the branch gradients went to the wrong children."""
    assert check(*EQUAL_SIDES_MODEL, against="jax", reference="symbolic").ok


def test_compiled_dimension_that_no_input_fixes():
    """Was: m in u^T OneMatrix(n, m) became a float input, and Numba failed on np.empty."""
    assert check(*FREE_DIMENSION_MODEL, against="finite-differences").ok
    f = sg.compile(*FREE_DIMENSION_MODEL)
    with pytest.raises(TypeError, match="'m' is a matrix dimension"):
        f.value_and_grad(u=[1.0, 2.0], m=3.0)


def test_relu_of_a_relu_of_a_mean_has_a_gradient():
    """Was: SymPy could not tell that a sum of entries is real and refused Heaviside of it."""
    assert check(*HEAVISIDE_OF_REDUCTION_MODEL, against="jax", reference="symbolic").ok


def test_an_inverse_squared_has_a_gradient():
    """Was: SymPy writes inv(X) @ inv(X) as X**-2, which the canonical form refused."""
    assert check(*INVERSE_SQUARED_MODEL, against="jax", reference="symbolic").ok


def test_abs_of_exp_has_a_gradient():
    """Was: over a plain symbol SymPy fused |exp(a)| into exp(re(a)), which has no rule."""
    assert check(*ABS_OF_EXP_MODEL, against="jax", reference="symbolic").ok


def test_complex_parts_sympy_writes_are_real_parts():
    """Was: SymPy writes |exp(asin(tanh(v)/2))| over a plain symbol as exp(re(...)), and re
    had no rule; im and conjugate come the same way. symgrad's values are real."""
    a, b = sp.symbols("a b")
    for expr in (sp.Abs(sp.exp(sp.asin(sp.tanh(a) / 2))),
                 sp.re(a * b) + sp.im(a) * b + sp.conjugate(sp.sin(a)) * b,
                 sg.sum(sg.abs(sg.exp(sg.tanh(_v) / 2))) * sp.Abs(sp.exp(a))):
        wrt = sorted(expr.free_symbols, key=str)
        assert check(expr, wrt, against=("jax", "finite-differences"), reference="symbolic").ok


def test_a_softmax_over_one_entry_compiles():
    """Was: a Map inlined into another kept a use of a temporary inlined into it before."""
    assert check(*SINGLETON_SOFTMAX_MODEL, against="finite-differences").ok


def test_a_map_never_writes_over_a_partner_in_its_loop():
    """Was: exp(Z - logsumexp(Z)) shared a loop with the gradient that reads it and was not
    stored, yet the gradient chose its array to write over (NameError when Numba compiled)."""
    B = sg.matrix("B", 3, 2)
    model = ops.LogSumExpAll(sp.HadamardProduct(2 * B, ops.Named("Z1", B)))
    assert check(model, [B], against="finite-differences", seed=124).ok


def test_a_map_read_also_transposed_is_not_inlined():
    """logsumexp(C + C^T): the adjoint exp(S - lse) is read as itself and transposed by one
    statement, so it must be stored, not inlined (found by the compiled property test)."""
    C = sg.matrix("C", 2, 2)
    report = check(sg.logsumexp(C + C.T), [C], against=("jax", "finite-differences"))
    assert report.ok, str(report)


def test_min_of_three_inside_a_map_routes_by_the_equality_it_computes():
    """Was: the Map rule substituted Min's routing condition Eq(2 a + 1, min) with SymPy's
    xreplace, whose Piecewise rewrote it as Eq(a, min/2 - 1/2), false in floats wherever
    2 a + 1 was the minimum: the gradient lost that branch (campaign of 20,000 models)."""
    a, b = sp.symbols("a b", real=True)
    v = sg.vector("v", 3)
    elementwise = ops.Map(sp.Lambda((a, b), sp.Min(a, 3 * a, 2 * a + 1)), v.shape, v, v)
    model = MatrixElement(ops.Named("Z1", elementwise).T @ sg.sigmoid(v), 0, 0)
    for reference in ("symbolic", "compiled"):
        report = check(model, [v], against=("jax", "finite-differences"), points=3, seed=3,
                       reference=reference)
        assert report.ok, str(report)


@pytest.mark.parametrize("body", [
    lambda a: sp.Max(a / 3, 1 - a, 2 * a - 5),
    lambda a: sp.Min(2 * a + 1, 3 - a, 7 * a),
    lambda a: sp.Max(sp.Min(a, 4 * a - 1, 2), -a - 3),
], ids=["max-of-three", "min-of-three", "min-inside-max"])
def test_max_and_min_route_their_gradient_however_the_extreme_is_rebuilt(body):
    """Max and Min of three affine terms route the gradient by the equality of the extreme
    and the term: whichever pass rebuilds the body (the Map rule's substitution, lowering,
    the kernels' CSE), the condition stays the float equality the model computes."""
    a = sp.Symbol("a", real=True)
    v = sg.vector("v", 4)
    x = sp.Symbol("x", real=True)
    models = [(sg.sum(ops.Map(sp.Lambda((a,), body(a)), v.shape, v)), [v]),
              (body(x) * sp.sin(x), [x])]
    for model, wrt in models:
        for reference in ("symbolic", "compiled"):
            report = check(model, wrt, against=("jax", "finite-differences"), points=3,
                           seed=11, reference=reference)
            assert report.ok, str(report)
