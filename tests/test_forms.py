"""Model forms users bring: functions of time (sympy.physics.mechanics), applyfunc, 1 x 1
outputs, entries at symbolic positions, sympy.Sum, and log(softmax(Z))."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement
from sympy.physics.mechanics import dynamicsymbols

import symgrad as sg
from symgrad.derive.graph import Canonicalizer

t = dynamicsymbols._t


# ------------------------------------------------------------------------------------------
# Functions of time
# ------------------------------------------------------------------------------------------
def test_functions_of_time_are_inputs_named_dot_and_ddot():
    q = dynamicsymbols("q")
    qd, qdd = q.diff(t), q.diff(t, 2)
    expr = q**2 * sp.sin(qd) + 3 * qdd * q
    grads = sg.grad(expr, [q, qd, qdd])
    assert list(grads) == [q, qd, qdd]          # keyed by what was passed
    Q, QD, QDD = (sp.Symbol(n) for n in ["q", "q_dot", "q_ddot"])   # q(t) has no assumptions
    plain = Q**2 * sp.sin(QD) + 3 * QDD * Q
    for key, symbol in zip([q, qd, qdd], [Q, QD, QDD]):
        assert sp.simplify(grads[key] - sp.diff(plain, symbol)) == 0
    assert "df/dq_dot = q**2*cos(q_dot)" in sg.show(grads)

    f = sg.compile(expr, [q, qd])
    assert f.parameters == ("q", "q_dot")
    value, g = f.value_and_grad(q=0.5, q_dot=0.3, q_ddot=2.0)
    assert value == pytest.approx(0.25 * np.sin(0.3) + 3.0)
    assert g == pytest.approx({"q": 2 * 0.5 * np.sin(0.3) + 6.0, "q_dot": 0.25 * np.cos(0.3)})

    report = sg.check(expr, [q, qd], against=["finite-differences"], points=1)
    assert report.ok and {c.quantity for c in report.comparisons} == {"value", "q", "q_dot"}


def test_second_order_of_functions_of_time_is_their_symbols_second_order():
    # a double pendulum's Lagrangian as mechanics writes it: every block of the Hessian, the
    # HVP and the Jacobian equal SymPy's derivatives of the same model over plain symbols
    # (they had been 0: the gradient was differentiated by q(t), which it no longer held)
    q1, q2 = dynamicsymbols("q1 q2")
    u1, u2 = q1.diff(t), q2.diff(t)
    lagrangian = (u1**2 + u2**2 / 2 + u1 * u2 * sp.cos(q1 - q2)
                  + 3 * sp.cos(q1) + sp.cos(q2))
    wrt = [q1, q2, u1, u2]
    plain_symbols = sp.symbols("q1 q2 q1_dot q2_dot")
    plain = lagrangian.subs(dict(zip([u1, u2], plain_symbols[2:]))).subs(
        dict(zip([q1, q2], plain_symbols[:2])))
    by_key = dict(zip(wrt, plain_symbols))

    hessian = sg.hessian(lagrangian, wrt)
    assert list(hessian) == [(p, q) for p in wrt for q in wrt]      # keyed by what was passed
    for (p, q), block in hessian.items():
        assert sp.simplify(block - sp.diff(plain, by_key[p], by_key[q])) == 0, (p, q)
    assert "d²f/dq1_dot dq2_dot = cos(q1 - q2)" in sg.show(hessian)

    v = sp.Symbol("v")
    hvp = sg.hvp(lagrangian, wrt, {u1: v})
    for p, value in hvp.items():
        assert sp.simplify(value - v * sp.diff(plain, by_key[p], by_key[u1])) == 0, p
    jacobian = sg.jacobian(lagrangian, wrt)
    for p, value in jacobian.items():
        assert sp.simplify(value - sp.diff(plain, by_key[p])) == 0, p


def test_explicit_matrix_of_functions_of_time_is_the_matrix_of_their_symbols():
    # a mass matrix and forcing vector as LagrangesMethod gives them (explicit sympy
    # matrices of q(t) and q'(t)): sg.jacobian and sg.compile take q(t) and q'(t) in wrt, as
    # for a scalar model, and equal the same matrices over plain symbols (compile had refused
    # q(t) in wrt; sg.jacobian had refused it too, and by the symbol q1 had answered 0)
    from sympy.physics.mechanics import LagrangesMethod
    q1, q2 = dynamicsymbols("q1 q2")
    u1, u2 = q1.diff(t), q2.diff(t)
    lagrangian = (u1**2 + u2**2 / 2 + u1 * u2 * sp.cos(q1 - q2)
                  + 3 * sp.cos(q1) + sp.cos(q2))
    method = LagrangesMethod(lagrangian, [q1, q2])
    method.form_lagranges_equations()
    plain_symbols = sp.symbols("q1 q2 q1_dot q2_dot")
    wrt = [q1, q2, u1, u2]

    def plain(e):
        return e.subs(dict(zip([u1, u2], plain_symbols[2:]))).subs(
            dict(zip([q1, q2], plain_symbols[:2])))

    point = dict(zip(["q1", "q2", "q1_dot", "q2_dot"], [0.3, -0.7, 0.4, 1.1]))
    at = {s: point[s.name] for s in plain_symbols}
    for matrix in (method.mass_matrix, method.forcing):
        jacobian = sg.jacobian(matrix, wrt)
        assert list(jacobian) == wrt
        for key, symbol in zip(wrt, plain_symbols):
            assert sp.simplify(jacobian[key] - plain(matrix).diff(symbol)) == sp.zeros(
                *matrix.shape), key
        assert sg.jacobian(matrix, [plain_symbols[0]])[plain_symbols[0]] == jacobian[q1]
        f = sg.compile(matrix, wrt)
        assert f.parameters == ["q1", "q2", "q1_dot", "q2_dot"]
        np.testing.assert_allclose(f(**point), np.array(plain(matrix).subs(at), float),
                                   rtol=1e-13, atol=1e-15)
        compiled = f.jacobian(**point)
        for symbol in plain_symbols:
            expected = np.array(plain(matrix).diff(symbol).subs(at), float)
            np.testing.assert_allclose(compiled[symbol.name], expected, rtol=1e-13,
                                       atol=1e-15)


def test_time_read_explicitly_is_an_input_and_its_partial_derivative():
    # t in the model is the input t; in wrt beside q(t) or q'(t) it is differentiated
    # where it appears explicitly, q(t) and q'(t) held fixed (∂L/∂t), as for plain symbols
    # (wrt [q(t), t] had said that q did not appear in the model)
    q, p = dynamicsymbols("q p")
    qd = q.diff(t)
    lagrangian = qd**2 / 2 - q**2 * sp.cos(t) + p * t**2
    Q, QD, P, T = sp.symbols("q q_dot p t")
    plain = QD**2 / 2 - Q**2 * sp.cos(T) + P * T**2
    for wrt in ([q, t], [qd, t], [t, q, qd]):
        grads = sg.grad(lagrangian, wrt)
        by_key = {q: Q, qd: QD, t: T}
        for key in wrt:
            assert sp.simplify(grads[key] - plain.diff(by_key[key])) == 0, (wrt, key)
    f = sg.compile(lagrangian, [q, t])
    assert set(f.inputs) == {"q", "q_dot", "p", "t"}
    value, g = f.value_and_grad(q=0.5, q_dot=1.0, p=2.0, t=0.3)
    assert g["t"] == pytest.approx(0.25 * np.sin(0.3) + 2 * 2.0 * 0.3, rel=1e-14)
    assert g["q"] == pytest.approx(-2 * 0.5 * np.cos(0.3), rel=1e-14)
    assert sg.check(lagrangian, [q, qd, t], against=["finite-differences"], points=1).ok
    block = sg.hessian(lagrangian, [q, t])[(q, t)]
    assert sp.simplify(block - plain.diff(Q, T)) == 0
    # the compiled second order too (it differentiated the model as given again, by the
    # plain symbols, and found q(t) a function of t: 'q does not appear in the model')
    at = {"q": 0.5, "q_dot": 1.0, "p": 2.0, "t": 0.3}
    point = {s: at[s.name] for s in (Q, QD, P, T)}
    hessian = f.hessian(**at)
    for a, b in [(Q, T), (T, T), (Q, Q)]:
        assert hessian[(a.name, b.name)] == pytest.approx(
            float(plain.diff(a, b).subs(point)), rel=1e-14)
    assert f.hvp({"t": 1.0}, **at)["q"] == pytest.approx(
        float(plain.diff(Q, T).subs(point)), rel=1e-14)


def test_an_unevaluated_derivative_is_the_derivative_sympy_writes_out():
    # Derivative(q(t)**2, t) and Derivative(sin(x**2), x), left unevaluated by the user,
    # are the model SymPy's doit writes (they had been refused: no rule for Derivative)
    q = dynamicsymbols("q")
    Q, QD = sp.symbols("q q_dot")
    grads = sg.grad(sp.Derivative(q**2 * sp.sin(q), t), [q, q.diff(t)])
    plain = sp.diff(Q**2 * sp.sin(Q), Q) * QD
    assert sp.simplify(grads[q] - plain.diff(Q)) == 0
    assert sp.simplify(grads[q.diff(t)] - plain.diff(QD)) == 0
    x, y = sp.symbols("x y")
    model = y * sp.Derivative(sp.sin(x**2), x)
    value, g = sg.compile(model, [x, y]).value_and_grad(x=0.5, y=3.0)
    assert value == pytest.approx(3 * 2 * 0.5 * np.cos(0.25), rel=1e-14)
    assert g["x"] == pytest.approx(3 * (2 * np.cos(0.25) - np.sin(0.25)), rel=1e-14)
    # so are Subs and UnevaluatedExpr (refused as nodes without a rule)
    model = sp.Subs(x**2 * y, x, 2) * x + sp.UnevaluatedExpr(x * y) * x
    value, g = sg.compile(model, [x, y]).value_and_grad(x=0.5, y=3.0)
    assert (value, g["x"], g["y"]) == pytest.approx((6.75, 12 + 3.0, 2 + 0.25), rel=1e-14)


def test_explicit_matrix_where_a_matrix_expression_is_needed_names_what_takes_it():
    # sg.check and sg.Model of an explicit sympy.Matrix (a mass matrix) say that sg.compile
    # and sg.jacobian take it (check had failed on a missing vjp, generate on "no rule for
    # ImmutableDenseMatrix"); sg.grad names sg.jacobian, not a vjp the matrix has not
    x, y = sp.symbols("x y")
    M = sp.Matrix([[x * y, x**2]])
    for call in (lambda: sg.check(M, [x]), lambda: sg.check((M, [x])),
                 lambda: sg.Model("m", M, wrt=[x])):
        with pytest.raises(TypeError, match=r"explicit sympy.Matrix \(1 x 2\), which "
                           r"sg.compile .* and sg.jacobian take: pass one entry"):
            call()
    with pytest.raises(ValueError, match=r"explicit sympy.Matrix of shape \(1, 2\)\. Use "
                       r"sg.jacobian"):
        sg.grad(M, [x])
    assert sg.check(M[0, 1], [x], against=["finite-differences"], points=1).ok
    assert sg.check(sp.Matrix([[x * y]]), [x], against=["finite-differences"], points=1).ok


def test_function_of_time_name_clashes_are_refused_naming_both():
    q = dynamicsymbols("q1")
    with pytest.raises(ValueError, match=r"'q1_dot'.*Derivative\(q1\(t\), t\)"):
        sg.grad(q.diff(t) ** 2 + sp.Symbol("q1_dot"), [q])
    with pytest.raises(ValueError, match=r"symbol 'q1' and q1\(t\)"):
        sg.compile(q**2 + sp.Symbol("q1"), [q])


# ------------------------------------------------------------------------------------------
# applyfunc, 1 x 1 outputs
# ------------------------------------------------------------------------------------------
def test_applyfunc_is_an_elementwise_map():
    A = sg.matrix("A", 2, 3)
    expr = sg.sum(A.applyfunc(lambda a: a**3 + sp.sin(a)))
    assert sg.grad(expr, [A])[A] == sg.grad(sg.sum(sg.hadamard(A, sg.hadamard(A, A))
                                                    + sg.sin(A)), [A])[A]
    canonical = Canonicalizer()(sg.sum(A.applyfunc(sp.tanh)))
    assert any(isinstance(n, sg.ops.Map) for n in sp.preorder_traversal(canonical))
    A0 = np.arange(6.0).reshape(2, 3) / 5
    value, g = sg.compile(expr, [A]).value_and_grad(A=A0)
    assert value == pytest.approx(np.sum(A0**3 + np.sin(A0)))
    np.testing.assert_allclose(g["A"], 3 * A0**2 + np.cos(A0), rtol=1e-13)


def test_applyfunc_body_that_reads_the_model_is_differentiated_by_what_it_reads():
    # f's body may read parameters (a closure over w), entries of a model matrix and a
    # symbol named like symgrad's own Map variable a0; each is an input the gradient reaches
    # (they had been constants in the body: d/dw was 0), and a Sum in the body is written out
    X, w, a0 = sg.matrix("X", 2, 3), sp.Symbol("w"), sp.Symbol("a0", real=True)
    k = sp.Symbol("k", integer=True)
    X0 = np.array([[0.3, -0.8, 1.1], [-0.4, 0.6, 0.2]])
    at = {"X": X0, "w": 0.7, "a0": -1.3}
    models = {
        "closure": (lambda e: sp.sin(w * e), [X, w]),
        "piecewise": (lambda e: sp.Piecewise((e**2, e > 0), (w * e, True)), [X, w]),
        "condition": (lambda e: sp.Piecewise((w * e, w > 0), (e**2, True)), [X, w]),
        "constant in e": (lambda e: w**2, [X, w]),
        "entry": (lambda e: e * X[0, 1] ** 2, [X]),
        "named a0": (lambda e: sp.exp(a0 * e), [X, a0]),
        "sum": (lambda e: sp.Sum(w * k * e**k, (k, 0, 3)), [X, w]),
    }
    for label, (body, wrt) in models.items():
        model = sg.sum(X.applyfunc(body))
        report = sg.check(model, wrt, against=["finite-differences"], points=1)
        assert report.ok, (label, str(report))
        f = sg.compile(model, wrt)
        _, g = f.value_and_grad(**{n: v for n, v in at.items() if n in f.inputs})
        grads = sg.grad(model, wrt)
        for p in wrt:
            def value_at(v, p=p, body=body):
                point = {s: (v if s == p else at[s.name]) for s in [w, a0]}
                return float(sum(body(sp.Float(e)).subs({X: sp.ImmutableMatrix(X0)})
                                 .subs(point).doit() for e in np.ravel(X0)))
            if p != X:
                h = 1e-6
                expected = (value_at(at[p.name] + h) - value_at(at[p.name] - h)) / (2 * h)
                assert g[p.name] == pytest.approx(expected, rel=1e-6), (label, p)
                # the SymPy gradient, its sums of Maps written entry by entry
                explicit = grads[p].replace(
                    lambda n: isinstance(n, sg.ops.SumAll),
                    lambda n: sp.Add(*[n.args[0][i, j] for i in range(2) for j in range(3)]))
                symbolic = explicit.subs(X, sp.ImmutableMatrix(X0)).subs(
                    {w: at["w"], a0: at["a0"]}).doit()
                assert float(symbolic) == pytest.approx(expected, rel=1e-6), (label, p)
    # a matrix computed from the entry is no elementwise function: refused naming it
    # (it had failed inside SymPy: "Duplicate symbol a1")
    Y = sg.matrix("Y", 2, 3)
    with pytest.raises(ValueError, match=r"X.applyfunc\(f\): f computes the matrix "):
        sg.grad(sg.sum(X.applyfunc(lambda e: sg.sum(Y.applyfunc(lambda v: sp.exp(v * e))))),
                [X])
    # one Map operand per term the body reads, named apart from symgrad's variables
    m = sg.ops.map_of_applyfunc(X.applyfunc(lambda e: sp.exp(a0 * e) + w * e))
    assert m.operands == (X, a0, w) or m.operands == (X, w, a0)


def test_a_piecewise_of_matrices_is_refused_naming_it():
    # SymPy builds Piecewise((X, x > 0), (2*X, True)) but takes it for a scalar: it is
    # refused naming it and the applyfunc form (it had failed inside SymPy's MatAdd: "Mix
    # of Matrix and Scalar symbols"), which gives the same model entry by entry
    X, x = sg.matrix("X", 2, 2), sp.Symbol("x")
    model = sg.sum(sp.Piecewise((X, x > 0), (2 * X, True)))
    for call in (sg.grad, sg.compile, sg.check):
        with pytest.raises(ValueError, match=r"Piecewise\(\(X, x > 0\), \(2\*X, True\)\), a "
                           r"Piecewise of matrices.*applyfunc"):
            call(model, [X])
    entrywise = sg.sum(X.applyfunc(lambda e: sp.Piecewise((e, x > 0), (2 * e, True))))
    _, g = sg.compile(entrywise, [X]).value_and_grad(X=np.eye(2), x=-1.0)
    np.testing.assert_array_equal(g["X"], np.full((2, 2), 2.0))


def test_gradient_of_a_one_by_one_matrix_expression():
    a, b, X = sg.vector("a", 3), sg.vector("b", 3), sg.matrix("X", 3, 3)
    grads = sg.grad(a.T @ X @ b, [X, a])
    assert sp.simplify(sp.Matrix(grads[X]) - sp.Matrix(a @ b.T)) == sp.zeros(3, 3)
    assert sp.Matrix(grads[a]) == sp.Matrix(X @ b)
    rng = np.random.default_rng(0)
    a0, b0, X0 = rng.normal(size=3), rng.normal(size=3), rng.normal(size=(3, 3))
    value, g = sg.compile(a.T @ X @ b, [X]).value_and_grad(a=a0, b=b0, X=X0)
    assert value == pytest.approx(a0 @ X0 @ b0)
    np.testing.assert_allclose(g["X"], np.outer(a0, b0), rtol=1e-14)
    with pytest.raises(ValueError, match=r"shape \(3, 1\).*vjp"):
        sg.grad(X @ b, [X])


# ------------------------------------------------------------------------------------------
# Entries at symbolic positions, sympy.Sum
# ------------------------------------------------------------------------------------------
def test_entry_at_a_symbolic_position_is_refused_in_code():
    x, i = sg.vector("x", 3), sp.Symbol("i", integer=True)
    with pytest.raises(ValueError, match=r"entry x\[i, 0\] is at a symbolic position \(i\)"):
        sg.compile(x[i, 0] ** 2, [x])
    with pytest.raises(ValueError, match=r"symbolic position"):
        sg.check(x[i, 0] ** 2, [x])


def test_gradient_by_an_entry_at_a_negative_position_counts_from_the_end():
    # A[-1, -2] is read from the end in compiled code, as in NumPy; sg.grad's E[-1, -2]
    # puts its adjoint there too (written out, it had been a matrix of zeros)
    X = sg.matrix("X", 2, 3)
    model = X[-1, -2] ** 2 + X[0, -1] * X[-2, 0]
    X0 = np.array([[0.3, -0.8, 1.1], [-0.4, 0.6, 0.2]])
    _, g = sg.compile(model, [X]).value_and_grad(X=X0)
    expected = np.zeros((2, 3))
    expected[-1, -2] += 2 * X0[-1, -2]
    expected[0, -1] += X0[-2, 0]
    expected[-2, 0] += X0[0, -1]
    np.testing.assert_array_equal(g["X"], expected)
    written = sp.Matrix(sg.grad(model, [X])[X]).replace(        # X's entries, at X0
        lambda n: isinstance(n, (sg.ops.Entry, MatrixElement)),
        lambda n: sp.Float(X0[int(n.args[1]), int(n.args[2])]))
    np.testing.assert_array_equal(np.array(written, dtype=float), expected)


def test_an_indexed_base_entry_is_refused_in_code_naming_it(tmp_path):
    # a[k] of a sympy.IndexedBase has no shape to check an array against: compile, check
    # and generate refuse it naming the entry (compile had failed inside Numba: name 'a'
    # is not defined); sg.grad differentiates it symbolically
    a, k, y = sp.IndexedBase("a"), sp.Symbol("k", integer=True), sp.Symbol("y")
    model = sp.Sum(a[k] * y**2, (k, 0, 2))
    assert sp.simplify(sg.grad(model, [y])[y] - 2 * y * (a[0] + a[1] + a[2])) == 0
    for call in (lambda: sg.compile(model, [y]), lambda: sg.check(model, [y]),
                 lambda: sg.generate(sg.Model("indexed", model, wrt=[y]),
                                     tmp_path / "indexed.py")):
        with pytest.raises(ValueError, match=r"reads a\[\d\], an entry of the IndexedBase a.*"
                           r"sg\.vector\('a', n\)"):
            call()


def test_sum_with_integer_bounds_is_written_out():
    x, k = sg.vector("x", 4), sp.Symbol("k", integer=True)
    w = sp.Symbol("w")
    expr = sp.Sum((k + 1) * sp.exp(w * x[k, 0]), (k, 0, 3))
    x0 = np.array([0.1, -0.2, 0.3, 0.5])
    value, g = sg.compile(expr, [x, w]).value_and_grad(x=x0, w=0.7)
    weights = np.arange(1, 5)
    assert value == pytest.approx(np.sum(weights * np.exp(0.7 * x0)), rel=1e-14)
    np.testing.assert_allclose(g["x"], weights * 0.7 * np.exp(0.7 * x0), rtol=1e-14)
    assert g["w"] == pytest.approx(np.sum(weights * x0 * np.exp(0.7 * x0)), rel=1e-14)
    # a double sum over scalars
    j = sp.Symbol("j", integer=True)
    grads = sg.grad(sp.Sum(j * k * w**2, (j, 1, 2), (k, 1, 3)), [w])
    assert sp.simplify(grads[w] - 36 * w) == 0


@pytest.mark.parametrize("kind", [sp.Sum, sp.Product])
def test_sum_and_product_follow_sympy_for_every_order_of_bounds(kind):
    # SymPy's (Karr's) convention: (a, b) with b < a - 1 is minus the sum over
    # (b + 1, a - 1), a product its reciprocal; b = a - 1 is empty
    i, y = sp.Symbol("i", integer=True), sp.Symbol("y")
    at = {y: sp.Rational(3, 7)}
    for low in (-2, 0, 5):
        for high in range(low - 5, low + 3):
            model = kind(y**2 + i * y + 1, (i, low, high))
            expected = model.doit()
            grads = sg.grad(model + y, [y])
            assert grads[y].xreplace(at) == sp.diff(expected + y, y).xreplace(at), (low, high)


def test_nested_sums_expand_outer_first_as_sympy_does():
    # the last limit is the outermost: an inner bound that names the outer index (a
    # triangular sum) is an integer once the outer index is one
    i, j, y = sp.Symbol("i", integer=True), sp.Symbol("j", integer=True), sp.Symbol("y")
    at = {y: sp.Rational(3, 7)}
    for kind, limits in [(sp.Sum, [(j, 0, i), (i, 0, 3)]), (sp.Sum, [(j, i, 3), (i, 0, 3)]),
                         (sp.Sum, [(j, 0, i), (i, 3, -2)]), (sp.Product, [(j, 1, i), (i, 1, 3)]),
                         (sp.Sum, [(i, 0, i), (i, 0, 3)])]:
        model = kind(y ** (i + 1) + j, *limits)
        ours = sg.grad(model, [y])[y]
        assert ours.xreplace(at) == sp.diff(model.doit(), y).xreplace(at), limits
    x = sg.vector("x", 4)
    value = sg.compile(sp.Sum(x[j, 0] * x[i, 0], (j, 0, i), (i, 0, 3)), [x])(
        x=np.array([1.0, 2.0, 3.0, 4.0]))
    assert value == 1 + 2 * (1 + 2) + 3 * (1 + 2 + 3) + 4 * (1 + 2 + 3 + 4)
    with pytest.raises(ValueError, match=r"more than 10000 terms"):
        sg.grad(sp.Sum(j * y, (j, 0, i), (i, 0, 200)), [y])


def test_sum_past_a_matrix_names_the_entry_the_sum_and_the_shape():
    i, j = sp.Symbol("i", integer=True), sp.Symbol("j", integer=True)
    x = sg.vector("x", 10)
    for call in (sg.grad, sg.compile):
        with pytest.raises(ValueError, match=r"Sum\(x\[i, 0\]\*\*2, \(i, 0, 10\)\) takes the "
                           r"entry x\[10, 0\] \(at i = 10\), outside x, which is 10 x 1"):
            call(sp.Sum(x[i, 0] ** 2, (i, 0, 10)), [x])
    with pytest.raises(ValueError, match=r"entry x\[10, 0\] \(at i = 5, j = 5\)"):
        sg.grad(sp.Sum(x[i + j, 0], (j, 0, i), (i, 0, 9)), [x])


def test_sum_with_symbolic_bounds_is_refused():
    n = sp.Symbol("n", integer=True, positive=True)
    x, k = sg.vector("x", n), sp.Symbol("k", integer=True)
    with pytest.raises(ValueError, match=r"runs k from 0 to n - 1.*sg.sum"):
        sg.grad(sp.Sum(x[k, 0] ** 2, (k, 0, n - 1)), [x])


# ------------------------------------------------------------------------------------------
# log(softmax(Z)) is log-softmax
# ------------------------------------------------------------------------------------------
def _log_softmax(Z, axis):
    shifted = Z - Z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _softmax(Z, axis):
    return np.exp(_log_softmax(Z, axis))


Z, Y = sg.matrix("Z", 3, 4), sg.matrix("Y", 3, 4)
_HAND_COLUMN_SUMS = sg.broadcast(sg.sum(sg.exp(Z), axis=0), (3, 4)).applyfunc(lambda s: 1 / s)
_CROSS_ENTROPIES = {
    "softmax, axis 0": (-sg.sum(sg.hadamard(Y, sg.log(sg.softmax(Z, axis=0)))), 0),
    "softmax, axis 1": (-sg.sum(sg.hadamard(Y, sg.log(sg.softmax(Z, axis=1)))), 1),
    "softmax, all entries": (-sg.sum(sg.hadamard(Y, sg.log(sg.softmax(Z)))), None),
    "by hand, all entries": (-sg.sum(sg.hadamard(Y, sg.log(sg.exp(Z) / sg.sum(sg.exp(Z))))),
                             None),
    "by hand, axis 0": (-sg.sum(sg.hadamard(Y, sg.log(sg.hadamard(sg.exp(Z),
                                                                  _HAND_COLUMN_SUMS)))), 0),
}


@pytest.mark.parametrize("form", list(_CROSS_ENTROPIES))
def test_textbook_cross_entropy_is_finite_at_a_thousand(form):
    loss, axis = _CROSS_ENTROPIES[form]
    canonical = Canonicalizer()(loss)
    kinds = {type(n) for n in sp.preorder_traversal(canonical)}
    assert sg.ops.Softmax not in kinds and kinds & {sg.ops.LogSumExp, sg.ops.LogSumExpAll}
    f = sg.compile(loss, [Z])
    rng = np.random.default_rng(1)
    Y0 = np.eye(3)[:, rng.integers(0, 3, 4)]
    for scale in (1.0, 1000.0):
        Z0 = rng.normal(size=(3, 4)) * scale
        value, g = f.value_and_grad(Z=Z0, Y=Y0)
        log_p = _log_softmax(Z0, axis)
        assert value == pytest.approx(-np.sum(Y0 * log_p), rel=1e-12)
        # d/dZ of -sum(Y o log softmax(Z)) = softmax(Z) o (sum of Y along the axis) - Y
        expected = _softmax(Z0, axis) * np.sum(Y0, axis=axis, keepdims=True) - Y0
        np.testing.assert_allclose(g["Z"], expected, rtol=1e-10, atol=1e-12)
    symbolic = sg.grad(loss, [Z])[Z]
    assert not any(isinstance(n, sg.ops.Softmax) for n in sp.preorder_traversal(symbolic))


def test_log_softmax_transposed_and_softmax_used_elsewhere():
    w, A = sg.vector("w", 3), sg.matrix("A", 4, 3)
    log_weights = sg.log(sg.softmax(w, axis=0)).T          # a row: log(softmax(w))^T
    loss = (sg.sum(sg.logsumexp(A + sg.broadcast(log_weights, (4, 3)), axis=1))
            + sg.sum(sg.softmax(w, axis=0)))                 # softmax kept where not logged
    f = sg.compile(loss, [w])
    value, g = f.value_and_grad(w=np.array([1000.0, 0.0, -1000.0]), A=np.zeros((4, 3)))
    assert value == pytest.approx(1.0) and np.all(np.isfinite(g["w"]))
    np.testing.assert_allclose(g["w"], 0.0, atol=1e-12)
    report = sg.check(loss, [w], against=["finite-differences"], points=1)
    assert report.ok, str(report)
