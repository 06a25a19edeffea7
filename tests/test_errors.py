"""Bad input gets a clear error naming what the user wrote, never a wrong answer."""

import functools
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import sympy as sp

import symgrad as sg

w, x, y = sp.symbols("w x y")


@pytest.fixture(scope="module")
def linear():
    return sg.compile((w * x - y) ** 2, [w])


@pytest.fixture(scope="module")
def window():
    X, W, b = sg.vector("x", 6), sg.matrix("W", 3, 6), sg.vector("b", 3)
    return sg.compile(sg.sum(sg.sigmoid(W @ X + b)), [W, b])


def test_missing_argument_names_it(linear):
    with pytest.raises(TypeError, match="'y'"):
        linear.value_and_grad(w=1.0, x=1.0)


def test_unknown_argument_names_it(linear):
    with pytest.raises(TypeError, match="'z'"):
        linear.value_and_grad(w=1.0, x=1.0, y=2.0, z=3.0)


def test_positional_arguments_are_refused(linear):
    with pytest.raises(TypeError):
        linear.value_and_grad(1.0, 1.0, 2.0)


def test_non_numeric_value_names_the_argument(linear):
    with pytest.raises(TypeError, match="'x'"):
        linear.value_and_grad(w=1.0, x="one", y=2.0)


def test_complex_value_is_refused(linear):
    with pytest.raises(TypeError, match="'w'.*complex"):
        linear.value_and_grad(w=np.array([1 + 2j]), x=1.0, y=2.0)


def test_incompatible_scalar_shapes_name_the_arguments(linear):
    with pytest.raises(ValueError, match="w: \\(3,\\).*x: \\(2,\\)"):
        linear.value_and_grad(w=np.ones(3), x=np.ones(2), y=1.0)


def test_integer_and_float32_inputs_are_converted_to_float64(linear):
    value, grads = linear.value_and_grad(w=np.array([1], dtype=np.int64),
                                         x=np.array([1.0], dtype=np.float32), y=2)
    assert value.dtype == np.float64 and value[0] == 1.0 and grads["w"][0] == -2.0


@pytest.mark.parametrize("number", [
    0.5, np.float32(0.5), Fraction(1, 2), Decimal("0.5"), sp.Rational(1, 2), sp.Float(0.5),
    sp.S.Half, np.array(Fraction(1, 2), dtype=object)])
def test_every_kind_of_real_number_is_an_input(linear, number):
    """A SymPy model's own numbers (Rational, Float), Fraction and Decimal are real numbers
    like a float: the same value and gradient, on every call path."""
    expected = linear.value_and_grad(w=0.5, x=3.0, y=1.0)
    assert linear.value_and_grad(w=number, x=3, y=1.0) == expected
    assert linear(w=number, x=3, y=1.0) == expected[0]


def test_a_matrix_of_sympy_numbers_is_a_matrix_input(window):
    """``np.array(sympy.Matrix(...))`` is an object array of SymPy numbers: entry by entry
    the float64 matrix they are."""
    rng = np.random.default_rng(4)
    W, b, x = rng.standard_normal((3, 6)), rng.standard_normal((3, 1)), rng.standard_normal(6)
    exact = sp.Matrix(3, 6, [sp.Rational(int(v * 1000), 1000) for v in W.ravel()])
    floats = np.array(exact.tolist(), dtype=np.float64)
    expected = window.value_and_grad(W=floats, b=b, x=x)
    for given in (exact, np.array(exact), exact.tolist()):
        value, grads = window.value_and_grad(W=given, b=b, x=x)
        assert value == expected[0]
        np.testing.assert_array_equal(grads["W"], expected[1]["W"])


@pytest.mark.parametrize("bad, said", [
    (sp.Symbol("z"), "holds z \\(Symbol\\)"), (sp.I, "holds I"),
    (np.array([1.0, "2"], dtype=object), "holds '2' \\(str\\) at \\(1,\\)"),
    (np.array([1.0, 2j], dtype=object), "holds 2j"),
    (np.array([1.0, None], dtype=object), "holds None"),
    (np.array([10**400], dtype=object), "too large for a float")])
def test_an_entry_that_is_no_real_number_is_named(linear, bad, said):
    with pytest.raises((TypeError, ValueError), match=f"input 'x'.*{said}"):
        linear.value_and_grad(w=1.0, x=bad, y=2.0)


@pytest.mark.parametrize("masked", [
    np.ma.masked_array([1.0, 2.0], mask=[False, True]), np.ma.masked_array(1.0, mask=True),
    np.ma.masked_array([1.0, 2.0])])
def test_a_masked_array_is_refused_not_read_without_its_mask(linear, window, masked):
    """No computation here reads a mask: a masked entry would count with the value under it
    (JAX refuses masked arrays too)."""
    calls = [linear, linear.value_and_grad, functools.partial(linear.hvp, {"w": 1.0})]
    for call in calls:
        with pytest.raises(TypeError, match="input 'x' is a NumPy masked array.*filled"):
            call(w=1.0, x=masked, y=2.0)
    with pytest.raises(TypeError, match="tangent of 'w' is a NumPy masked array"):
        linear.hvp({"w": masked}, w=1.0, x=1.0, y=2.0)
    with pytest.raises(TypeError, match="input 'b' is a NumPy masked array"):
        window.value_and_grad(W=np.ones((3, 6)), b=np.ma.masked_array(np.ones(3)), x=np.ones(6))


def test_matrix_with_wrong_shape_names_parameter_and_dimension(window):
    with pytest.raises(ValueError, match="'W' has 5 columns .* expected 6"):
        window.value_and_grad(W=np.ones((3, 5)), b=np.ones(3), x=np.ones(6))


def test_vector_with_wrong_length_names_it(window):
    with pytest.raises(ValueError, match="'b' has 4 rows"):
        window.value_and_grad(W=np.ones((3, 6)), b=np.ones(4), x=np.ones(6))


def test_scalar_where_a_matrix_is_expected(window):
    with pytest.raises(ValueError, match="'W' must be a matrix"):
        window.value_and_grad(W=1.0, b=np.ones(3), x=np.ones(6))


def test_symbolic_dimension_mismatch_names_the_dimension():
    n = sp.Symbol("n", integer=True, positive=True)
    A, v = sg.matrix("A", n, n), sg.vector("v", n)
    f = sg.compile(sg.dot(v, A @ v), [v])
    with pytest.raises(ValueError, match="'A' has 3 rows.*expected n \\(n = 4 from 'v'\\)"):
        f.value_and_grad(A=np.eye(3), v=np.ones(4))


@pytest.mark.parametrize("call", ["forward", "value_and_grad", "grad", "hessian", "vjp"])
def test_an_entry_past_a_symbolic_extent_is_refused_naming_it(call):
    """A model that reads A[5, 0] of an n x 1 input needs n >= 6; no shape check says so
    (a 5 x 1 array has the shape the model names), so every entry point checks it instead
    of reading and writing past the array's end, and the least size computes."""
    n, m = (sp.Symbol(s, integer=True, positive=True) for s in "nm")
    A, B = sg.matrix("A", n, 1), sg.matrix("B", 2, m)
    read = 2 * A[5, 0] + A[0, 0] ** 2 + B.T[7, 1] * A[2, 0]
    f = sg.compile(read * A if call == "vjp" else read, [A, B])
    method = getattr(f, call)
    if call == "vjp":
        method = functools.partial(method, np.ones((6, 1)))
    too_small = [({"A": np.ones(5), "B": np.ones((2, 8))}, r"'A' has 5 rows.*A\[5, 0\].* 6$"),
                 ({"A": np.ones((6, 1)), "B": np.ones((2, 7), dtype=int)},
                  r"'B' has 7 columns.*B\[1, 7\].* 8$")]
    for given, message in too_small:
        with pytest.raises(ValueError, match=message):
            method(**given)
    A0, B0 = np.arange(6.0), np.full((2, 8), 3.0)
    result = method(A=A0, B=B0)
    if call == "forward":
        assert result == 2 * 5 + 0 + 3 * 2
    elif call == "hessian":
        assert result[("A", "B")][2, 1, 7] == 1
    elif call == "vjp":                 # d/dB of sum(read * A) = A[2] sum(A)
        assert result["B"][1, 7] == A0[2] * A0.sum()
    else:
        gradient = result[1] if call == "value_and_grad" else result
        expected = np.zeros(6)
        expected[[0, 2, 5]] = [2 * A0[0], B0[1, 7], 2]
        np.testing.assert_array_equal(gradient["A"], expected)
        assert gradient["B"][1, 7] == A0[2] and np.count_nonzero(gradient["B"]) == 1


def test_an_extent_read_from_a_later_input_or_not_at_all():
    """A dimension is read off any input's extent of the form a*p + b, whichever input comes
    first; an extent (p**2) no input gives p for is refused at compile time, naming it."""
    p = sp.Symbol("p", integer=True, positive=True)
    G, v = sg.matrix("G", p**2, 1), sg.vector("v", p)
    f = sg.compile(sg.sum(G) * sg.sum(v), [G, v])
    value, g = f.value_and_grad(G=np.ones(4), v=np.full(2, 3.0))
    assert value == 24 and np.array_equal(g["G"], np.full(4, 6.0))
    with pytest.raises(ValueError, match=r"'G' has 5 rows.*expected p\*\*2 \(p = 2 from 'v'\)"):
        f(G=np.ones(5), v=np.ones(2))
    with pytest.raises(ValueError, match=r"dimension p .*'G' has the extent p\*\*2"):
        sg.compile(sg.sum(G), [G])


@pytest.mark.parametrize("dtype", [np.float64, np.int64])
def test_a_vector_with_more_axes_is_refused_on_every_path(dtype):
    """(2, 1, 1) holds two numbers, as a 2-vector does, but is not one: the fast path (a
    float64 array goes straight to the kernel) refuses it as the checked path does."""
    b = sg.vector("b", 2)
    f = sg.compile(sg.sum(sg.tanh(b)), [b])
    for shape in [(2, 1, 1), (2, 1, 1, 1), (1, 2, 1)]:
        with pytest.raises(ValueError, match=rf"'b' must be a matrix of shape \(2, 1\).*{shape}"):
            f.value_and_grad(b=np.zeros(shape, dtype=dtype))


@pytest.mark.parametrize("make", [lambda a, b: sp.atan2(a, b), lambda a, b: sp.floor(b) * a,
                                  lambda a, b: sp.Function("g")(b)])
def test_compile_errors_name_the_users_symbols(make):
    """sg.compile derives in symgrad's own names (in_0, in_1): its errors say the user's,
    word for word as sg.grad's."""
    speed, angle = sp.symbols("speed angle")
    messages = []
    for api in (sg.grad, sg.compile):
        with pytest.raises(NotImplementedError) as raised:
            api(make(angle, speed), [speed])
        messages.append(str(raised.value))
    assert messages[0] == messages[1] and "speed" in messages[1] and "in_0" not in messages[1]


class Unsupported(sp.Function):
    """A function symgrad has no rule for."""


def test_unsupported_node_names_its_type_and_how_to_add_a_rule():
    with pytest.raises(NotImplementedError, match="Unsupported.*register_rule"):
        sg.grad(Unsupported(x) * w, [w, x])


def test_registered_rule_makes_a_node_supported():
    sg.register_rule(Unsupported, lambda g, y, a, **_: (g * 3,))
    try:
        assert sg.grad(Unsupported(x), [x])[x] == 3
    finally:
        del sg.RULES[Unsupported]


def test_gradient_of_a_matrix_output_is_refused_with_advice():
    A = sg.matrix("A", 2, 2)
    with pytest.raises(ValueError, match="scalar.*vjp"):
        sg.grad(A * 2, [A])


def test_wrt_must_hold_symbols():
    with pytest.raises(TypeError, match="wrt entry"):
        sg.grad(w * x, [w * x])


@pytest.mark.parametrize("name", ["class", "import", "2fast", "a-b"])
def test_a_model_name_must_be_importable(name):
    """A model's name names its generated module: ``import class`` is a syntax error."""
    with pytest.raises(ValueError, match=f"model name '{name}' must be a Python identifier"):
        sg.Model(name, w * x, [w])


@pytest.mark.parametrize("name", ["numpy", "numba", "math", "llvmlite", "scipy"])
def test_a_model_name_must_not_shadow_what_generated_modules_import(name):
    """symgrad generate wrote numpy.py beside the other modules, which then imported it for
    numpy (and numba.py could not import itself: a circular import)."""
    with pytest.raises(ValueError, match=f"model name '{name}' is the name of a module that "
                                         "generated modules import"):
        sg.Model(name, w * x, [w])


@pytest.mark.parametrize("name", ["numpy", "numba", "math", "llvmlite", "scipy"])
def test_a_generated_file_must_not_shadow_what_generated_modules_import(name, tmp_path):
    """As a model's name: sg.generate(model, path='numpy.py') wrote numpy.py beside the other
    modules (an expression's model was named 'model', its file numpy.py all the same)."""
    for model, wrt in [(sg.Model("loss", w * x, [w]), None), (w * x, [w])]:
        with pytest.raises(ValueError, match=f"the file name '{name}.py' is the name of a "
                                             "module that generated modules import"):
            sg.generate(model, path=tmp_path / f"{name}.py", wrt=wrt)
    assert list(tmp_path.iterdir()) == []


def test_symbol_names_that_cannot_be_arguments_are_refused():
    bad = sp.Symbol("lambda")
    with pytest.raises(ValueError, match="'lambda'"):
        sg.compile(bad * w, [w])


def test_value_and_grad_of_a_matrix_output_says_use_vjp():
    A = sg.matrix("A", 2, 2)
    f = sg.compile(sg.tanh(A), [A])
    with pytest.raises(AttributeError, match="vjp"):
        f.value_and_grad(A=np.eye(2))


@pytest.mark.parametrize("constant, named", [
    (sp.I, r"the imaginary unit I, in I\*x"),
    (sp.sqrt(-4), r"the imaginary unit I, in 2\*I\*x"),
    (sp.Integer(-1) ** sp.Rational(1, 3), r"\(-1\)\*\*\(1/3\), a complex number to SymPy, in "),
    (sp.zoo, r"zoo, SymPy's complex infinity .*, in zoo\*x"),
    (sp.AccumBounds(0, 1), r"AccumBounds\(0, 1\), an interval .*, in x\*AccumBounds\(0, 1\)"),
])
def test_constant_that_is_not_real_is_refused_naming_it_and_its_term(constant, named):
    # the check is where every entry point brings the model to symgrad's forms
    model = constant * x + sp.sin(w)
    calls = [lambda: sg.grad(model, [w]), lambda: sg.compile(model, [w]),
             lambda: sg.check(model, [w]), lambda: sg.Model("m", model, [w]),
             lambda: sg.hessian(model, [w])]
    for call in calls:
        with pytest.raises(ValueError, match="the model holds " + named + ".*real numbers"):
            call()


def test_nan_and_real_infinities_are_values_a_model_may_hold():
    model = sp.Piecewise((w**2, w > 0), (sp.nan, True)) + sp.oo * x - sp.oo * y
    grads = sg.grad(model, [w, x, y])
    assert grads[x] == sp.oo and grads[y] == -sp.oo


def test_wrt_entry_that_is_a_matrix_dimension_says_so():
    # n only in a shape, n also as a value, and m that no input's shape fixes
    n, m = sp.symbols("n m", integer=True, positive=True)
    A = sg.matrix("A", n, 2)
    for model, dimension in [(sg.sum(A), n), (n * sg.sum(A), n),
                             (sg.sum(A @ sp.OneMatrix(2, m)), m)]:
        for call in (sg.grad, sg.compile):
            with pytest.raises(ValueError, match=f"^{dimension} is a matrix dimension"):
                call(model, [A, dimension])
