"""Model forms users bring, brought to symgrad's own at the entry points.

``sg.grad``, ``sg.compile``, ``sg.check``, ``sg.Model`` and the second-order functions pass
the user's expression and ``wrt`` through :func:`normalize` first:

* functions of time as ``sympy.physics.mechanics.dynamicsymbols`` makes them: ``q1(t)`` is
  the plain symbol ``q1``, ``Derivative(q1(t), t)`` is ``q1_dot``, the second derivative
  ``q1_ddot`` (the third ``q1_dddot``, and so on);
* ``A.applyfunc(f)`` on a matrix expression (SymPy's ``ElementwiseApplyFunction``) is an
  elementwise :class:`~symgrad.ops.Map`;
* ``Sum`` (and ``Product``) with integer bounds are written out term by term, as SymPy's
  ``doit`` reads them (bounds in reverse included); with symbolic bounds they are refused, as
  are entries ``x[i, 0]`` at a symbolic position in compiled code.

>>> import sympy as sp
>>> from sympy.physics.mechanics import dynamicsymbols
>>> q = dynamicsymbols("q")
>>> t = dynamicsymbols._t
>>> expr, wrt = normalize(q**2 + q.diff(t)**2, [q, q.diff(t)])
>>> expr, wrt
(q**2 + q_dot**2, [q, q_dot])
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp
from sympy.calculus.accumulationbounds import AccumBounds
from sympy.core.function import AppliedUndef
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

from symgrad.derive.graph import dag_free_symbols, dag_nodes, dag_xreplace
from symgrad.derive.rules import RULES
from symgrad.nodes import dag_rebuild, operands, rebuild, replaced
from symgrad.ops import map_of_applyfunc

__all__ = ["normalize", "normalize_explicit", "time_function_name", "map_of_applyfunc"]

# A sum or product written out term by term has at most this many terms: beyond, the user
# meant a reduction over a matrix (sg.sum), which symgrad computes as one loop.
MAX_EXPANDED_TERMS = 10_000


def time_function_name(node) -> str | None:
    """The input name of ``q1(t)`` (``q1``) or of its k-th derivative in t (``q1_dot``,
    ``q1_ddot``, ...); None for anything else.

    >>> from sympy.physics.mechanics import dynamicsymbols
    >>> q = dynamicsymbols("q1")
    >>> time_function_name(q.diff(dynamicsymbols._t, 2))
    'q1_ddot'
    """
    if _is_function_of_time(node):
        return node.func.__name__
    if isinstance(node, sp.Derivative) and _is_function_of_time(node.expr):
        (time,) = node.expr.args
        if all(v == time for v, _ in node.variable_count):
            order = int(sum(count for _, count in node.variable_count))
            return f"{node.expr.func.__name__}_{'d' * order}ot"
    return None


def _is_function_of_time(node) -> bool:
    """q1(t): an undefined function of one symbol, unless the user gave it a rule with
    sg.register_rule (then it is a function the model applies, not an input)."""
    return (isinstance(node, AppliedUndef) and len(node.args) == 1
            and isinstance(node.args[0], sp.Symbol) and type(node) not in RULES)


def _time_function_table(nodes: list) -> dict:
    """``{q1(t): q1, Derivative(q1(t), t): q1_dot, ...}`` for the functions of time among
    nodes, each a real symbol when SymPy knows the function is real."""
    table: dict = {}
    for node in nodes:
        name = time_function_name(node)
        if name is None or node in table:
            continue
        function = node if _is_function_of_time(node) else node.expr
        table[node] = sp.Symbol(name, real=True) if function.is_real else sp.Symbol(name)
    return table


def _refuse_clashes(table: dict, symbols: set) -> None:
    """Two things that would become inputs of one name: an error naming both."""
    by_name: dict = {}
    for original, symbol in table.items():
        other = by_name.setdefault(symbol.name, original)
        if other != original:
            raise ValueError(f"{other} and {original} would both be the input "
                             f"{symbol.name!r}: rename one of the functions of time")
    for s in symbols:
        name = getattr(s, "name", None)
        if name in by_name:
            raise ValueError(f"the model has a symbol {name!r} and {by_name[name]}, which "
                             f"symgrad names {name!r} too: rename the symbol {name!r}")


def _expanded(node, what: str):
    """A Sum or Product with integer bounds, written out; else an error naming it.

    The last limit is the outermost, as in SymPy: each of its values is put into the limits
    inside it before they are read, so a triangular sum (``(j, 0, i), (i, 0, 3)``) has
    integer bounds once ``i`` has one.  Bounds in reverse follow SymPy's (Karr's)
    convention: over ``(a, b)`` with ``b < a - 1`` a sum is minus the sum over
    ``(b + 1, a - 1)`` and a product its reciprocal; ``b = a - 1`` is empty.

    >>> i, y = sp.Symbol("i", integer=True), sp.Symbol("y")
    >>> _expanded(sp.Sum(i * y, (i, 5, 3)), "sum")
    -4*y
    >>> _expanded(sp.Product(y + i, (i, 5, 3)), "product")
    1/(y + 4)
    """
    combine = sp.Add if isinstance(node, sp.Sum) else sp.Mul
    written = [0]       # terms written so far, against MAX_EXPANDED_TERMS

    def write(term, limits, at: dict):
        if not limits:
            written[0] += 1
            if written[0] > MAX_EXPANDED_TERMS:
                raise ValueError(f"{what} {node} has more than {MAX_EXPANDED_TERMS} terms, "
                                 "the most symgrad writes out: put the terms in a matrix and "
                                 "use sg.sum")
            return term
        (variable, low, high), inner = limits[-1], limits[:-1]
        if not (low.is_Integer and high.is_Integer):
            raise ValueError(
                f"{what} {node} runs {variable} from {low} to {high}: symgrad writes out "
                f"{what}s with integer bounds only; over a matrix of symbolic size use "
                "sg.sum (or sg.mean, sg.dot) instead")
        low, high = int(low), int(high)
        reverse = high < low - 1
        first, last = (high + 1, low - 1) if reverse else (low, high)
        count = last - first + 1
        if count > MAX_EXPANDED_TERMS:
            raise ValueError(f"{what} {node} has {count} terms, more than symgrad writes out "
                             f"({MAX_EXPANDED_TERMS}): put the terms in a matrix and use "
                             "sg.sum")
        terms = []
        for k in range(first, last + 1):
            value = {variable: sp.Integer(k)}
            # the inner limits' bounds see this value; a limit that binds the same variable
            # again hides it from everything inside that limit
            limits_k, hidden = [], False
            for v, lo, hi in reversed(inner):
                if not hidden:
                    lo, hi = replaced(lo, value), replaced(hi, value)
                    hidden = v == variable
                limits_k.append((v, lo, hi))
            at_k = {**at, **value}
            term_k = term if hidden else _substituted(term, value, node, what, at_k)
            terms.append(write(term_k, limits_k[::-1], at_k))
        result = combine(*terms)
        if reverse:
            result = -result if combine is sp.Add else 1 / result
        return result

    return write(node.function, [(v, sp.sympify(lo), sp.sympify(hi))
                                 for v, lo, hi in node.limits], {})


def _substituted(term, value: dict, node, what: str, at: dict):
    """term with value ({index: integer}) put in; an entry it then takes outside its matrix
    is an error naming the entry, the sum, the indices' values ``at`` and the matrix's shape
    (SymPy raises a bare IndexError)."""
    try:
        return replaced(term, value)
    except IndexError:
        pass
    where = ", ".join(f"{v} = {k}" for v, k in at.items())
    for entry in dag_nodes(term):
        if isinstance(entry, MatrixElement):
            i, j = (replaced(sp.sympify(e), value) for e in (entry.i, entry.j))
            matrix = entry.parent
            if not matrix.valid_index(i, j):
                rows, cols = matrix.shape
                name = str(matrix) if isinstance(matrix, sp.MatrixSymbol) else f"({matrix})"
                raise ValueError(
                    f"{what} {node} takes the entry {name}[{i}, {j}] (at {where}), "
                    f"outside {name}, which is {rows} x {cols}: check the {what}'s bounds")
    raise ValueError(f"{what} {node} takes an entry outside its matrix at {where}")


def _refuse_symbolic_entries(nodes: list) -> None:
    for node in nodes:
        if isinstance(node, MatrixElement) and not (node.i.is_Integer and node.j.is_Integer):
            free = sorted({str(s) for s in (sp.sympify(node.i).free_symbols
                                            | sp.sympify(node.j).free_symbols)})
            raise ValueError(
                f"the entry {node} is at a symbolic position ({', '.join(free)}): compiled "
                "code takes entries at integer positions only; write the entry with numbers "
                "(x[2, 0]), or select it with a one-hot data vector: sg.dot(e, x)")


def _refuse_indexed(nodes: list) -> None:
    """An entry of a ``sympy.IndexedBase`` (``a[0]``): an error naming it and the matrix form
    compiled code takes (an IndexedBase has no shape to check an array against)."""
    for node in nodes:
        if isinstance(node, sp.Indexed):
            base = node.base.label
            raise ValueError(
                f"the model reads {node}, an entry of the IndexedBase {base}: compiled code "
                f"takes matrices, not IndexedBase; make {base} a vector "
                f"({base} = sg.vector({str(base)!r}, n)) and read {base}[k, 0]")


def _refuse_matrix_piecewise(nodes: list) -> None:
    """A Piecewise whose branches are matrices (SymPy builds it, but takes it for a scalar):
    an error naming it and the elementwise form that symgrad differentiates."""
    for node in nodes:
        if isinstance(node, sp.Piecewise) and any(isinstance(e, MatrixExpr)
                                                   for e, _ in node.args):
            raise ValueError(
                f"the model has {node}, a Piecewise of matrices, which SymPy takes for a "
                "scalar: choose entry by entry instead, with applyfunc on a matrix "
                "(A.applyfunc(lambda e: Piecewise((e, x > 0), (2*e, True))))")


def _refuse_non_real_constants(nodes: list) -> None:
    """A constant that is not a real number (``I``, ``sqrt(-1)``, ``(-1)**(1/3)``, SymPy's
    complex infinity ``zoo`` that ``x/0`` and ``log(0)`` make, an interval ``AccumBounds``):
    an error naming it and the subexpression of the model that holds it.  symgrad computes
    with real numbers; ``nan``, ``oo`` and ``-oo`` are real values and stay.

    >>> x = sp.Symbol("x")
    >>> _refuse_non_real_constants(dag_nodes(sp.sqrt(-4) * x))
    Traceback (most recent call last):
    ...
    ValueError: the model holds the imaginary unit I, in 2*I*x: symgrad computes with ...
    """
    bad = [n for n in nodes if type(n) not in _REAL_LEAVES
           and (isinstance(n, AccumBounds) or _not_real(n))]
    if not bad:
        return
    # the smallest: every constant that holds a bad one is bad too (2*I holds I)
    marked = set(bad)
    constant = next(n for n in bad if not any(a in marked for a in n.args))
    parents: dict = {}
    for n in nodes:
        for a in getattr(n, "args", ()):
            parents.setdefault(a, n)
    holder = constant
    while holder in parents and holder in marked:
        holder = parents[holder]
    if constant is sp.I:
        what = "the imaginary unit I"
    elif constant is sp.zoo:
        what = ("zoo, SymPy's complex infinity (its value of x/0 and of log(0); a real "
                "infinity is oo or -oo)")
    elif isinstance(constant, AccumBounds):
        what = f"{constant}, an interval (a set of values, not a number)"
    else:
        what = f"{constant}, a complex number to SymPy"
    where = "" if holder is constant else f", in {holder}"
    raise ValueError(f"the model holds {what}{where}: symgrad computes with real numbers "
                     "only; write the real number you mean")


# kinds of node that are real numbers or symbols, never a non-real constant (a third of the
# nodes of a long sum: its coefficients)
_REAL_LEAVES = frozenset({sp.Symbol, sp.MatrixSymbol, sp.Integer, sp.Rational, sp.Float,
                          type(sp.S.Zero), type(sp.S.One), type(sp.S.NegativeOne),
                          type(sp.S.Half)})


def _not_real(node) -> bool:
    """Whether node is a number SymPy knows is not real (a function, a Lambda such as
    SymPy's IdentityFunction, is no number, though SymPy says is_number of it)."""
    if not isinstance(node, sp.Expr) or isinstance(node, (MatrixExpr, sp.Lambda)):
        return False
    if any(type(a) is sp.Symbol for a in node.args):
        # (most nodes) no number, unless the symbol is bound (the x of an integral over x);
        # a non-real one then holds I or another non-real constant, a node of its own
        return False
    try:
        return bool(node.is_number) and node.is_extended_real is False
    except Exception:   # noqa: BLE001 - a node SymPy cannot ask is not known to be complex
        return False


def normalize(expr, wrt=None, *, compiled: bool = False):
    """The model and ``wrt`` in symgrad's own forms (see the module docstring).

    Returns ``(expr, wrt)``: ``wrt`` is a list in the order given, its functions of time
    replaced by their symbols (or None when ``wrt`` is None).  With ``compiled=True`` an
    entry at a symbolic position is refused (``sg.grad`` differentiates it symbolically).
    """
    expr = sp.sympify(expr)
    nodes = dag_nodes(expr)
    kinds = set(map(type, nodes))   # (the checks below ask of a kind before its nodes)

    def has(*classes) -> bool:
        return any(issubclass(kind, classes) for kind in kinds)

    written = {n: n.doit() for n in nodes
               if isinstance(n, (sp.Subs, sp.UnevaluatedExpr))
               or isinstance(n, sp.Derivative) and time_function_name(n) is None
               } if has(sp.Subs, sp.UnevaluatedExpr, sp.Derivative) else {}
    if written:
        # a derivative SymPy left unevaluated (Derivative(q(t)**2, t), Derivative(sin(x),
        # x)), a substitution Subs(f, x, 2) and an UnevaluatedExpr are the expressions
        # SymPy's doit gives, as the model written out
        expr = dag_xreplace(expr, written)
        nodes = dag_nodes(expr)
        kinds = set(map(type, nodes))
    _refuse_non_real_constants(nodes)
    if has(sp.Piecewise):
        _refuse_matrix_piecewise(nodes)
    # f(w) differentiated in w is a function the model applies (an error if it has no
    # rule), not a function of time: only an argument that is not differentiated is time
    # (unless wrt also holds a function of that argument, q(t) or its derivative: then the
    # user takes the functions of t as inputs, and t is time read explicitly, ∂L/∂t)
    given = wrt if isinstance(wrt, Sequence) and not isinstance(wrt, str) else [wrt]
    times = {_argument_of(w) for w in given
             if isinstance(w, sp.Basic) and time_function_name(w) is not None}
    table = {node: symbol for node, symbol in _time_function_table(nodes).items()
             if _argument_of(node) not in given or _argument_of(node) in times
             } if has(AppliedUndef, sp.Derivative) else {}
    if table:
        _refuse_clashes(table, _namesakes(expr, table))
        expr = dag_xreplace(expr, table)
    if has(ElementwiseApplyFunction, sp.Sum, sp.Product):
        expr = _rewrite(expr)
    if compiled:
        _refuse_symbolic_entries(dag_nodes(expr))
        _refuse_indexed(dag_nodes(expr))
    if wrt is None:
        return expr, None
    single = isinstance(wrt, (sp.Basic,)) and not isinstance(wrt, sp.Tuple)
    entries = [wrt] if single else wrt
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        return expr, wrt        # _check_wrt names what is wrong with it
    wrt_table = _time_function_table(list(entries))
    return expr, [wrt_table.get(w, w) for w in entries]


def normalize_explicit(matrix, wrt):
    """An explicit ``sympy.Matrix`` of scalar expressions (a mass matrix or forcing vector
    of ``sympy.physics.mechanics``) and ``wrt`` in symgrad's forms, entry by entry as
    :func:`normalize` brings a scalar model: ``q1(t)`` is the symbol ``q1``, sums are written
    out.  Returns ``(ImmutableMatrix, wrt list)``.

    >>> from sympy.physics.mechanics import dynamicsymbols
    >>> q = dynamicsymbols("q")
    >>> normalize_explicit(sp.Matrix([q**2, q.diff(dynamicsymbols._t)]), [q])
    (Matrix([
    [ q**2],
    [q_dot]]), [q])
    """
    matrix = sp.ImmutableMatrix(matrix)
    entries = list(wrt) if isinstance(wrt, (list, tuple)) else [wrt]
    normal, entries = normalize(sp.Tuple(*matrix), entries)
    return sp.ImmutableMatrix(matrix.rows, matrix.cols, list(normal)), entries


def refuse_explicit_matrix(expr, what: str) -> None:
    """An explicit ``sympy.Matrix`` larger than 1 x 1 where ``what`` (``sg.check``,
    ``sg.Model``) takes a scalar or a matrix expression: an error naming the forms that
    take it, instead of a failure inside (a missing vjp, no rule for the matrix class)."""
    if isinstance(expr, sp.MatrixBase) and tuple(expr.shape) != (1, 1):
        rows, cols = expr.shape
        raise TypeError(
            f"{what} takes a scalar or a matrix expression (sg.matrix, sg.vector); this is an "
            f"explicit sympy.Matrix ({rows} x {cols}), which sg.compile (its entries and "
            "f.jacobian) and sg.jacobian take: pass one entry at a time (M[0, 1])")


def _argument_of(node):
    """t of q1(t) or of a derivative of q1(t)."""
    function = node if isinstance(node, AppliedUndef) else node.expr
    return function.args[0]


def _namesakes(expr, table: dict) -> set:
    """The model's own symbols that share a name with a function of time's symbol (so that
    ``q1`` and ``q1(t)`` together are refused, though the symbol ``q1`` equals ours)."""
    names = {s.name for s in table.values()}
    return {s for s in dag_free_symbols(expr)
            if isinstance(s, (sp.Symbol, sp.MatrixSymbol)) and s.name in names}


def _rewrite(expr):
    """expr with applyfunc nodes as Maps and sums and products with integer bounds written
    out, children before parents, each shared node once.

    >>> i = sp.Symbol("i", integer=True)
    >>> x = sp.IndexedBase("x")
    >>> _rewrite(sp.Sum(x[i] ** 2, (i, 1, 3)))
    x[1]**2 + x[2]**2 + x[3]**2
    """
    def rewritten(node, new_operands):
        if isinstance(node, (sp.Sum, sp.Product)):
            written = _expanded(node, "sum" if isinstance(node, sp.Sum) else "product")
            return _rewrite(written) if written != node else written
        if isinstance(node, ElementwiseApplyFunction):
            return map_of_applyfunc(node, new_operands[1], new_operands[0])
        return rebuild(node, new_operands, xreplace=True)

    # a sum or product is written out from its own terms: the walk does not enter it
    return dag_rebuild(expr, rewritten, operands=lambda node: (
        () if isinstance(node, (sp.Sum, sp.Product)) else operands(node)))
