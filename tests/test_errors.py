"""Bad input gets a clear error naming what the user wrote, never a wrong answer."""

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
