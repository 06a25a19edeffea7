"""The node protocol (symgrad/nodes.py): the one walk that rewrites a model's DAG.

Properties of :func:`dag_rebuild` on random and on adversarial expressions: nothing changed
gives back the very same object; each distinct node is visited once however widely it is
shared; depth and width take no recursion; a replacement table agrees with SymPy's own
``xreplace``.  And the passes built on it (``dag_xreplace``, ``stabilize``, the forms'
rewrite, map fusion) keep those properties on deep models.
"""

from __future__ import annotations

import pickle
import random

import sympy as sp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement

import symgrad as sg
from symgrad import forms, ops
from symgrad.derive.graph import Canonicalizer, dag_nodes, dag_xreplace, stabilize
from symgrad.derive.rules import times
from symgrad.nodes import add, dag_rebuild, function_of, mul, operands, rebuild, shared, unevaluated

x, y, z, w = sp.symbols("x y z w", real=True)
a0 = sp.Symbol("a0", real=True)        # a Map's variable: no table replaces it
n = sp.Symbol("n", integer=True, positive=True)
X = sp.MatrixSymbol("X", n, 3)
LEAVES = [x, y, z, w, sp.Integer(2), sp.Rational(1, 3), sp.Float(0.5), X[0, 1], X[1, 2],
          sp.pi]
UNARY = [sp.sin, sp.exp, sp.tanh, ops.sigmoid, ops.softplus, sp.Abs, lambda a: -a,
         lambda a: sp.log(1 + sp.exp(a))]
BINARY = [lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a - b, lambda a, b: a / (b**2 + 1),
          lambda a, b: sp.Max(a, b), lambda a, b: sp.Piecewise((a, b > 0), (b, True))]


def _expressions():
    leaves = st.sampled_from(LEAVES)

    def extend(inner):
        return st.one_of(
            st.builds(lambda f, a: f(a), st.sampled_from(UNARY), inner),
            st.builds(lambda f, a, b: f(a, b), st.sampled_from(BINARY), inner, inner),
            st.builds(lambda a: ops.SumAll(ops.Map(sp.Lambda((a0,), a0 * a), (n, 3), X)),
                      inner))

    return st.recursive(leaves, extend, max_leaves=12)


EXPRESSIONS = _expressions()
SETTINGS = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def _distinct_nodes(expr) -> set:
    """The distinct nodes dag_rebuild walks (operands of each), found independently."""
    seen, stack = set(), [expr]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(operands(node))
    return seen


def _nested(depth: int):
    """f <- f * sin(f + w): a DAG of 3 nodes a level, a tree of about 2^depth."""
    f = x
    for _ in range(depth):
        f = f * sp.sin(f + w)
    return f


def _chain(bottom, depth: int):
    """bottom under depth alternating sums and products: a path, not a tree."""
    f = bottom
    for k in range(depth):
        f = f * z if k % 2 else f + w
    return f


def _bottom(expr):
    """The end of a chain, found without recursion."""
    while expr.args:
        expr = next((a for a in expr.args if a not in (w, z)), expr.args[0])
    return expr


def _chain_contains(expr, kind) -> bool:
    return any(isinstance(node, kind) for node in dag_nodes(expr))


# ------------------------------------------------------------------------------------------
# dag_rebuild on random expressions
# ------------------------------------------------------------------------------------------
@SETTINGS
@given(EXPRESSIONS)
def test_a_walk_that_changes_nothing_returns_the_very_same_object(expr):
    assert dag_rebuild(expr) is expr
    # As SymPy's xreplace, by identity: the memo takes equal nodes for one (Lambda((a,), a)
    # equals Lambda((b,), b)), so a node whose operand equals another's is rebuilt, equal.
    assert dag_rebuild(expr, lambda node, new: rebuild(node, new, xreplace=True)) == expr
    assert dag_xreplace(expr, {sp.Symbol("absent"): y}) == expr


@SETTINGS
@given(EXPRESSIONS)
def test_each_distinct_node_is_visited_once_children_first(expr):
    visited = []

    def visit(node, new):
        assert all(c in visited for c in operands(node))     # children before parents
        visited.append(node)
        return rebuild(node, new)

    dag_rebuild(expr, visit)
    assert len(visited) == len(set(visited)) == len(_distinct_nodes(expr))


@SETTINGS
@given(EXPRESSIONS, st.sampled_from([{x: y}, {x: 2 * y, w: sp.Integer(0)}, {y: x + 1},
                                     {n: sp.Integer(4)}, {X: sp.MatrixSymbol("Y", n, 3)},
                                     {sp.sin(x): z}, {sp.Rational(1, 3): sp.Rational(1, 7)}]))
def test_a_replacement_table_gives_what_sympy_xreplace_gives(expr, table):
    expected = expr.xreplace(table)
    assert dag_xreplace(expr, table) == expected
    # the same table as a visit of dag_rebuild, entering every node (a leaf of the table is
    # replaced on the way up)
    assert dag_rebuild(expr, lambda node, new: table.get(node) if node in table
                       else rebuild(node, new, xreplace=True)) == expected


@SETTINGS
@given(EXPRESSIONS, st.sampled_from([
    {x: sp.Symbol("in_0", real=True), y: sp.Symbol("in_1", real=True)},
    {x: sp.Symbol("y2", real=True), y: sp.Symbol("a", real=True), z: sp.Symbol("zz", real=True),
     w: sp.Symbol("b", real=True)},
    {n: sp.Symbol("dim_0", integer=True, positive=True),
     X: sp.MatrixSymbol("in_2", sp.Symbol("dim_0", integer=True, positive=True), 3)}]))
def test_renaming_symbols_gives_sympys_sums_and_products_without_evaluating_again(expr, table):
    # renaming symbols (each to its own, same assumptions) is what sg.compile does to every
    # model: the sums and products it builds (sorted, not flattened again) must be SymPy's,
    # functions unevaluated as nodes.rebuild leaves them, and the value xreplace's
    fast = dag_xreplace(expr, table, renaming=True)
    assert fast == dag_rebuild(expr, lambda node, new: table.get(node, node) if not new
                               else rebuild(node, new),
                               operands=lambda node: () if node in table else operands(node))
    evaluated = expr.xreplace(table)
    if not evaluated.has(MatrixElement, ops.SumAll):     # a scalar of symbols: its value
        point = {s: sp.Rational(k + 2, 7) for k, s in enumerate(
            sorted(evaluated.free_symbols, key=str))}
        assert abs(sp.N(fast.xreplace(point) - evaluated.xreplace(point), 30)) < 1e-25


@SETTINGS
@given(EXPRESSIONS)
def test_rebuild_with_equal_operands_keeps_the_node(expr):
    # equal operands that are other objects: copies made with SymPy's cache emptied
    sp.core.cache.clear_cache()
    copies = [pickle.loads(pickle.dumps(a)) for a in operands(expr)]
    assume(all(c == a for c, a in zip(copies, operands(expr))))
    assert rebuild(expr, copies) is expr


def _objects(exprs) -> list:
    """Every object of the expressions' trees, each once, by identity (no == between
    nodes: on copies of a shared DAG that compares every path)."""
    seen: dict = {}
    stack = list(exprs)
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(operands(node))
    return list(seen.values())


def _one_object_per_value(exprs) -> bool:
    """Whether no two objects of the trees are equal: no two leaves (cheap to compare), and
    then, by induction from the leaves, no two nodes of one class over the same objects."""
    objects = _objects(exprs)
    leaves = [o for o in objects if not operands(o)]
    nodes = [(type(o), *map(id, operands(o))) for o in objects if operands(o)]
    return len(set(leaves)) == len(leaves) and len(set(nodes)) == len(nodes)


@SETTINGS
@given(EXPRESSIONS)
def test_shared_makes_one_object_of_equal_subexpressions_and_changes_no_value(expr):
    sp.core.cache.clear_cache()
    copy = pickle.loads(pickle.dumps(expr))     # equal, other objects (down to its leaves)
    assume(copy == expr)
    made = shared([expr, copy, expr * 2])
    assert made[0] == expr and made[2] == expr * 2
    assert made[0] is made[1]
    assert _one_object_per_value(made)
    # a node of the first expression's is kept as it is where its operands were already one
    assert shared([expr])[0] is expr or not _one_object_per_value([expr])


def test_shared_copies_an_unevaluated_node_as_it_is():
    # SymPy would evaluate x + x to 2 x if asked to build it again
    sp.core.cache.clear_cache()
    s1 = sp.sin(x)
    sp.core.cache.clear_cache()
    s2 = sp.sin(x)
    e = sp.Add(s1, s2, evaluate=False)
    (made,) = shared([e])
    assert type(made) is sp.Add and made.args[0] is made.args[1] and made == e


def test_the_hessian_of_a_nested_model_holds_one_object_per_value():
    # forward mode built a product's partials anew at each use: the Hessian of this model
    # held 10,083 objects of 3,118 values, and a set of its nodes did not finish in minutes
    f = _nested(12)
    hessian = sg.hessian(f, [x, w])
    # (a bool first: pytest would print the blocks, walking them as trees, to explain)
    one_object_each = _one_object_per_value(list(hessian.values()))
    assert one_object_each, "the Hessian holds two objects of one value"
    gradient = sg.grad(f, [x, w])

    def at(e, x0, w0):      # (SymPy's own xreplace and diff walk the DAG as a tree)
        return float(dag_xreplace(e, {x: sp.Float(x0), w: sp.Float(w0)}))

    h = 1e-6
    for (p, q), block in hessian.items():
        step = (h, 0) if q == x else (0, h)
        difference = (at(gradient[p], 0.7 + step[0], 0.3 + step[1])
                      - at(gradient[p], 0.7 - step[0], 0.3 - step[1])) / (2 * h)
        assert abs(at(block, 0.7, 0.3) - difference) <= 1e-6 * (1 + abs(difference))


def test_rebuild_of_a_function_of_values_skips_sympy_evaluation():
    e = sp.sin(x + y)
    assert rebuild(e, [-x]) == sp.sin(-x, evaluate=False)     # SymPy would give -sin(x)
    assert rebuild(e, [-x], xreplace=True) == -sp.sin(x)
    assert rebuild(e, [sp.pi]) == 0                           # a number: evaluated
    assert rebuild(x + y, [y, y]) == 2 * y                   # sums evaluate


# ------------------------------------------------------------------------------------------
# add, mul and times: SymPy's sums and products, built directly where nothing combines
# ------------------------------------------------------------------------------------------
# (no integer symbol: SymPy's deductions of parity can contradict themselves on some
# products of integers, depending on the order its facts are asked in)
_OPERAND_SYMBOLS = [x, y, sp.Symbol("u"), sp.Symbol("p", positive=True), sp.Dummy("d"),
                    sp.Symbol("A", commutative=False)]
_OPERAND_NUMBERS = [sp.Integer(2), sp.Integer(-1), sp.Rational(-3, 2), sp.Float(0.5),
                    sp.Integer(0), sp.Integer(1), sp.oo, sp.nan, sp.zoo, sp.I, sp.pi, sp.E]


def _operand(rng: random.Random, depth: int):
    """A random operand: mostly what reverse mode multiplies and adds (names, functions of
    them, products with a coefficient, powers), sometimes what SymPy must combine or treats
    specially (a repeated base, infinities, unevaluated products and powers)."""
    if depth == 0 or rng.random() < 0.35:
        return rng.choice(_OPERAND_SYMBOLS if rng.random() < 0.75 else _OPERAND_NUMBERS)
    a, b = _operand(rng, depth - 1), _operand(rng, depth - 1)
    c = rng.choice(_OPERAND_NUMBERS[:6])
    build = rng.choice([
        lambda: sp.cos(a), lambda: sp.exp(a), lambda: sp.Abs(a), lambda: sp.Heaviside(a, 0),
        lambda: a**2, lambda: 1 / a, lambda: sp.sqrt(a), lambda: a**b, lambda: c * a,
        lambda: a * b, lambda: a + b, lambda: a * b * rng.choice(_OPERAND_SYMBOLS),
        lambda: sp.Mul(c, a, evaluate=False), lambda: sp.Pow(a, 1, evaluate=False),
        lambda: sp.Pow(a * b, 2, evaluate=False), lambda: sp.Add(a, b, evaluate=False)])
    try:
        return build()
    except (TypeError, ValueError, ZeroDivisionError):
        return a


def _same(got, want) -> bool:
    return (type(got) is type(want) and got == want
            and getattr(got, "args", None) == getattr(want, "args", None)
            and getattr(got, "is_commutative", None) == getattr(want, "is_commutative", None))


def test_add_mul_and_times_give_exactly_what_sympy_gives():
    # the fast constructors must give SymPy's own result on every input, taking their fast
    # path only where nothing combines (counted: hundreds of these take it), SymPy's
    # otherwise
    fast = 0
    for seed in range(3000):
        rng = random.Random(seed)
        pool = [_operand(rng, rng.randrange(3)) for _ in range(8)]
        if seed % 2:        # distinct operands: mostly the fast path
            operands_ = rng.sample(pool, rng.randrange(0, 6))
        else:
            operands_ = [rng.choice(pool) for _ in range(rng.randrange(0, 6))]
        for ours, theirs in ((add, sp.Add), (mul, sp.Mul)):
            try:
                want = theirs(*operands_)
            except (TypeError, ValueError):
                continue
            got = ours(*operands_)
            assert _same(got, want), (ours.__name__, operands_, got, want)
            fast += got is not want     # SymPy's cache gives its own result the same object
        if len(operands_) >= 2:
            a, b = operands_[:2]
            try:
                want = a * b
            except (TypeError, ValueError):
                continue
            assert _same(times(a, b), want), (a, b)
    assert fast > 300


def test_function_of_gives_what_sympy_builds_unevaluated():
    # the same node (class, args, argument counts) as SymPy's construction, for functions
    # SymPy builds its own way and for those with constructors of their own
    f = sp.Function("f")
    u = sp.Symbol("u")
    cases = [(sp.sin, (x,)), (sp.cos, (-x,)), (sp.exp, (x + y,)), (sp.log, (x,)),
             (sp.log, (x, sp.Integer(2))), (sp.tanh, (sp.pi,)), (sp.Abs, (x * u,)),
             (sp.sign, (x,)), (sp.Heaviside, (x,)), (sp.Heaviside, (x, sp.S.Half)),
             (ops.sigmoid, (x,)), (ops.softplus, (-u,)), (sp.atan2, (x, y)), (f, (x,)),
             (f, (x, y)), (sp.erf, (sp.Float(0.5),)), (sp.sin, (sp.Integer(0),))]
    for _ in range(2):      # the first call learns the argument counts, the second uses them
        for func, args in cases:
            got, want = function_of(func, args), func(*args, evaluate=False)
            assert _same(got, want) and got.nargs == want.nargs, (func, args)


def test_unevaluated_gives_what_sympy_builds_unevaluated():
    for seed in range(300):
        rng = random.Random(seed)
        operands_ = [_operand(rng, rng.randrange(3)) for _ in range(rng.randrange(2, 5))]
        for kind in (sp.Add, sp.Mul, sp.Pow, sp.Max):
            chosen = operands_[:2] if kind is sp.Pow else operands_
            try:
                want = kind(*chosen, evaluate=False)
            except (TypeError, ValueError):
                continue
            assert _same(unevaluated(kind, chosen), want), (kind, chosen)


def test_add_and_mul_leave_what_combines_to_sympy():
    u = sp.Symbol("u")
    assert mul(x, x**2) == x**3 and add(x, 2 * x) == 3 * x
    assert mul(sp.Integer(2), x + y) == 2 * x + 2 * y          # SymPy distributes
    for operands_ in [(200, x - y**2), (-1, 2, 1 - x), (2, x, 1 - x), (sp.Rational(1, 2), u + 1),
                      (2, sp.Mul(3, x + y, evaluate=False)), (sp.Rational(1, 2),
                                                             sp.Mul(2, x + y, evaluate=False)),
                      (2, sp.Rational(1, 2), x + y), (-1, x + 2 * u - 3)]:
        operands_ = [sp.sympify(o) for o in operands_]
        assert _same(mul(*operands_), sp.Mul(*operands_)), operands_
    assert add(sp.Integer(1), sp.Rational(1, 2), x) == x + sp.Rational(3, 2)
    for operands_ in [(x, 2 * x, x * y, 3 * x * y, 1, -1), (x**2, -x**2, y), (200 * x, 2 * x - 2),
                      (sp.cos(x), sp.cos(x)), (x + y, -x - y), (sp.Float(0.5) * x, x),
                      (sp.Mul(2, x + y, evaluate=False), sp.Mul(3, x + y, evaluate=False))]:
        operands_ = [sp.sympify(o) for o in operands_]
        assert _same(add(*operands_), sp.Add(*operands_)), operands_
    assert mul(sp.exp(x), sp.exp(x)) == sp.exp(2 * x)
    assert mul(sp.Pow(x, 1, evaluate=False), y) == x * y
    assert add(sp.Mul(2, x * u, evaluate=False), x) == sp.Add(sp.Mul(2, x * u,
                                                                     evaluate=False), x)


# ------------------------------------------------------------------------------------------
# Shortcuts of the canonicalizer and of the elementwise rule
# ------------------------------------------------------------------------------------------
def test_what_the_canonicalizer_takes_as_canonical_already_it_gives_back(monkeypatch):
    # _canonical_already lets the canonicalizer skip its passes: wherever it says so, the
    # passes must give the expression back (compared with them run, on every subexpression
    # of random models and on the contributions reverse mode sends)
    from symgrad import functions
    from symgrad.derive import graph
    from tests.random_models import SCALARS, SeededDrawer, scalar_model

    t, g = sp.symbols("_t1 _d2", real=True)
    expressions = [g * sp.cos(t), 3 * g, -g, g * t**2, g * (1 - t**2), g / (1 + t**2),
                   1 / (1 + sp.exp(-t)), sp.log(t) * g, sp.re(t) + g]
    expressions += [row.derivative(t, g) for row in functions.ROWS.values()
                    if row.derivative is not None]
    for seed in range(150):
        expressions += dag_nodes(SeededDrawer(seed).first(scalar_model, SCALARS))
    taken = [e for e in expressions if graph._canonical_already(e)]
    # sums and products of what was proven canonical, proven so without walking it again
    proven = set(taken)
    combined = [sp.Add(*taken[k:k + size]) for size in (2, 3, 70) for k in range(0, 140, 7)]
    combined += [sp.Mul(*taken[k:k + 2]) for k in range(0, 140, 5)]
    by_proven = [e for e in combined if graph._canonical_already(e, proven)]
    assert by_proven == [e for e in combined if graph._canonical_already(e)]
    monkeypatch.setattr(graph, "_canonical_already", lambda e, proven=(): False)
    for e in taken + by_proven:
        assert Canonicalizer()(e) == e, e
    assert len(taken) > 100 and len(by_proven) > 20


def test_the_fuser_is_skipped_only_where_it_has_nothing_to_rewrite():
    # a scalar model whose nodes are all plain (_plain_scalar) canonicalizes to one with no
    # node the fuser rewrites: the fuser's walk, skipped there, would change nothing
    from symgrad.derive import graph
    from tests.random_models import SCALARS, SeededDrawer, matrix_model, scalar_model

    plain = 0
    for seed in range(200):
        drawer = SeededDrawer(seed)
        expr = drawer.first(scalar_model if seed % 2 else matrix_model,
                            *([SCALARS] if seed % 2 else []))
        for node in dag_nodes(expr):
            if not isinstance(node, sp.Expr) or graph.is_matrix(node):
                continue
            stable = stabilize(node)
            if all(graph._plain_scalar(n) for n in graph._scalar_postorder(stable)):
                plain += 1
                assert graph._count_uses(Canonicalizer()(node)) is None, node
    assert plain > 500


def test_stabilize_skips_its_walk_only_where_it_would_rewrite_nothing(monkeypatch):
    from symgrad.derive import graph
    from tests.random_models import SCALARS, SeededDrawer, scalar_model

    expressions = []
    for seed in range(150):
        expressions += dag_nodes(SeededDrawer(seed).first(scalar_model, SCALARS))
    skipped = [e for e in expressions if not graph._has_unstable_form(e)]
    monkeypatch.setattr(graph, "_has_unstable_form", lambda e: True)
    for e in skipped:
        assert stabilize(e) is e, e
    assert len(skipped) > 500


def test_a_slope_built_without_evaluation_is_the_slope_evaluated():
    # the elementwise rule builds cos(t) of a name without SymPy's eval only where eval at
    # a probe of the same assumptions changed nothing; a name SymPy would simplify a
    # function of (|p| of a positive p, sign(0)) keeps its evaluation
    from symgrad import functions
    from symgrad.derive.rules import _slope

    names = [sp.Symbol("_t1", real=True), sp.Symbol("p", positive=True), sp.Symbol("u"),
             sp.Symbol("k", integer=True), sp.Symbol("n", negative=True),
             sp.Symbol("z", zero=True), sp.Symbol("m", real=True, nonzero=True)]
    out = sp.Symbol("_t9", real=True)
    for row in functions.ROWS.values():
        if row.derivative is None:
            continue
        for name in names:
            assert _same(_slope(row.derivative, name, out), row.derivative(name, out)), (
                row.name, name)
            assert _same(_slope(row.derivative, name, name), row.derivative(name, name))


# ------------------------------------------------------------------------------------------
# Shared subexpressions: linear cost
# ------------------------------------------------------------------------------------------
def test_a_model_with_exponential_tree_size_is_walked_once_per_distinct_node():
    f = _nested(200)                # a tree of more than 2^200 nodes
    distinct = _distinct_nodes(f)
    assert len(distinct) < 4 * 200 + 10
    calls = []
    assert dag_rebuild(f, lambda node, new: calls.append(node) or rebuild(node, new)) is f
    assert len(calls) == len(distinct)
    # a change at the bottom reaches the top, each level rebuilt once
    calls.clear()
    replaced = dag_rebuild(f, lambda node, new: calls.append(node) or (
        z if node == x else rebuild(node, new, xreplace=True)))
    assert len(calls) == len(distinct)
    assert x not in _distinct_nodes(replaced) and z in _distinct_nodes(replaced)


def test_the_passes_visit_a_shared_subexpression_once():
    f = _nested(200)
    replaced = dag_xreplace(f, {x: y})
    expected = y
    for _ in range(200):
        expected = expected * sp.sin(expected + w)
    # (compared by hash: SymPy's == would walk the tree)
    assert hash(replaced) == hash(expected)
    assert len(_distinct_nodes(replaced)) == len(_distinct_nodes(f))
    assert stabilize(f) is f                    # nothing to rewrite: the same object
    g = x
    for _ in range(60):             # each level uses the last twice, through a log(1 + exp)
        g = sp.log(1 + sp.exp(g + w, evaluate=False), evaluate=False) * g + x
    stable = stabilize(g)
    assert _chain_contains(stable, ops.softplus) and not _chain_contains(stable, sp.log)


# ------------------------------------------------------------------------------------------
# Depth and width: no recursion
# ------------------------------------------------------------------------------------------
DEPTH = 5000


def test_a_deep_chain_is_walked_without_recursion():
    f = _chain(x, DEPTH)
    assert dag_rebuild(f) is f
    replaced = dag_xreplace(f, {x: y})
    assert _bottom(replaced) == y and len(_distinct_nodes(replaced)) == len(_distinct_nodes(f))


def test_a_rewrite_at_the_bottom_of_a_deep_chain_reaches_the_top_without_recursion():
    # every level compares its rebuilt operand with the old one: SymPy's == on the two
    # chains would recurse down to the rewritten leaf
    f = _chain(sp.log(1 + sp.exp(x)), DEPTH)
    stable = stabilize(f)
    assert _bottom(stable) == x
    assert _chain_contains(stable, ops.softplus) and not _chain_contains(stable, sp.log)


def test_a_deep_sum_is_written_out_without_recursion():
    i = sp.Symbol("i", integer=True)
    v = sp.IndexedBase("v")
    f = _chain(sp.Sum(v[i] ** 2, (i, 0, 2)), DEPTH)
    written = forms._rewrite(f)
    assert not _chain_contains(written, sp.Sum) and _chain_contains(written, sp.Indexed)


def test_a_chain_of_maps_is_fused_into_one():
    A = sp.MatrixSymbol("A", 3, 3)
    m = A
    # (not deeper: SymPy hashes a matrix expression it was not asked to hash before, as a
    # model built by symgrad's functions is, recursively)
    for k in range(150):        # a chain of elementwise functions: one Map after fusion
        m = sg.tanh(m) if k % 2 else sg.hadamard(m, A)
    fused = Canonicalizer()(sg.sum(m))
    maps = [node for node in dag_nodes(fused) if isinstance(node, ops.Map)]
    assert len(maps) == 1 and maps[0].operands == (A,)


def test_a_wide_model_is_walked_without_recursion():
    terms = sp.symbols("t0:10000", real=True)
    f = sp.Add(*[sp.sin(t) * t for t in terms])
    assert dag_rebuild(f) is f
    assert stabilize(f) is f
    replaced = dag_xreplace(f, {terms[0]: y})
    assert replaced == f.xreplace({terms[0]: y})


def test_applyfunc_becomes_a_map_with_the_rewritten_operand():
    A = sp.MatrixSymbol("A", 2, 2)
    i = sp.Symbol("i", integer=True)
    v = sp.IndexedBase("v")
    inside = ElementwiseApplyFunction(sp.Lambda(w, sp.sin(w)),
                                      A * sp.Sum(v[i], (i, 0, 1)))
    written = forms._rewrite(inside)
    assert isinstance(written, ops.Map) and written.body == sp.sin(written.function.variables[0])
    assert written.operands == ((v[0] + v[1]) * A,)
