"""How symgrad's passes walk and rebuild a model's SymPy nodes.

A model is a DAG: a subexpression used twice is one node, and a model nested n deep is a
tree of up to 2^n nodes.  A pass that rewrites a model therefore walks it with
:func:`dag_rebuild`: children before parents, each distinct node once (memoised by node),
without recursion (so a model 10,000 deep does not overflow Python's stack), and a node is
rebuilt only when one of its operands changed (so an untouched model comes back as the very
same object, and nothing SymPy built already is evaluated again).

* :func:`operands`: the children a pass walks (a SymPy node's args; none for a leaf);
* :func:`rebuild`: a node with new operands, or the node itself when they are its own;
* :func:`dag_rebuild`: the walk, calling ``visit(node, new_operands)`` once per node.

>>> import sympy as sp
>>> x, y = sp.symbols("x y")
>>> expr = sp.sin(x) * sp.sin(x) + x
>>> dag_rebuild(expr) is expr                       # nothing changed: the same object
True
>>> dag_rebuild(expr, lambda node, new: y if node == x else rebuild(node, new))
y + sin(y)**2
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import threading
from collections.abc import Callable

import sympy as sp
from sympy.core.cache import clear_cache
from sympy.core.mul import _keep_coeff
from sympy.functions.elementary.piecewise import ExprCondPair

__all__ = ["operands", "rebuild", "renamed", "add", "mul", "times", "function_of",
           "assumptions_key", "eval_keeps", "unevaluated", "real_symbol", "dag_rebuild",
           "shared", "one_pass", "one_call", "built", "replaced", "held", "released",
           "derivative"]


def operands(node) -> tuple:
    """The children of node that a rebuilding pass walks into: its SymPy args (all of them,
    as SymPy's ``xreplace`` walks them: a MatrixSymbol's name and dimensions, a
    MatrixElement's indices, a Lambda's variables and body), or none for a leaf (a symbol, a
    number, anything without args, anything that is not a SymPy object).

    >>> x = sp.Symbol("x")
    >>> operands(sp.sin(x) + 1)
    (1, sin(x))
    >>> operands(x)
    ()
    """
    if not isinstance(node, sp.Basic) or node.is_Atom:
        return ()
    return node.args


def rebuild(node, new_operands, *, xreplace: bool = False):
    """node with ``new_operands`` in place of its :func:`operands`, or node itself when they
    are its own.

    By default a node is kept when every new operand equals its old one, and a function
    (``sin``, ``exp``, ``sigmoid`` ...) none of whose new operands is a number is built
    without SymPy's evaluation: its search for signs and multiples of pi costs about a
    millisecond per call and finds nothing in a model that SymPy built already.  Sums,
    products, powers and functions of numbers are evaluated as SymPy builds them.

    With ``xreplace=True`` the node is rebuilt exactly as SymPy's ``xreplace`` rebuilds it:
    kept only when every new operand is the very same object, otherwise
    ``node.func(*new_operands)`` with SymPy's evaluation.

    >>> x, y = sp.symbols("x y")
    >>> e = sp.sin(x + y)
    >>> rebuild(e, [x + y]) is e
    True
    >>> rebuild(e, [-x])                # unevaluated: SymPy would write -sin(x)
    sin(-x)
    >>> rebuild(e, [-x], xreplace=True)
    -sin(x)
    """
    old_operands = node.args if isinstance(node, sp.Basic) else ()
    if xreplace:
        if all(new is old for new, old in zip(new_operands, old_operands)):
            return node
        return built(node.func, new_operands)
    # Unequal hashes prove two nodes different without comparing them: SymPy's == compares
    # whole subtrees, recursively, which on a 1,000-deep chain whose leaf was rewritten
    # costs a walk to that leaf per level and overflows Python's stack.  The hashes are
    # cached in the nodes, and a node's hash is known once its children's are.
    if all(new is old or (hash(new) == hash(old) and new == old)
           for new, old in zip(new_operands, old_operands)):
        return node
    if isinstance(node, sp.Function) and not any(
            a.is_number for a in new_operands if isinstance(a, sp.Basic)):
        return function_of(node.func, new_operands)
    return built(node.func, new_operands)


def built(func, args):
    """``func(*args)``, as SymPy builds it, except a Piecewise or one of its (value,
    condition) pairs: those keep their conditions as written (:func:`piecewise_unfolded`).
    SymPy's evaluation of a Piecewise solves an equality for a symbol, Eq(2 a + 1, m)
    becoming Eq(a, m/2 - 1/2), which is no identity in floats: Min's rule routes the
    gradient by such an equality, and rewritten it holds at no point.  Every rebuilding of
    symgrad (substitutions, renamings, passes) builds its nodes here.

    >>> a = sp.Symbol("a")
    >>> p = sp.Piecewise((1, sp.Eq(2 * a + 1, sp.Min(a, 3 * a))), (0, True), evaluate=False)
    >>> built(p.func, p.args)
    Piecewise((1, Eq(2*a + 1, Min(a, 3*a))), (0, True))
    >>> p.func(*p.args)
    Piecewise((1, Eq(a, Min(a, 3*a)/2 - 1/2)), (0, True))
    """
    if isinstance(func, type) and issubclass(func, (sp.Piecewise, ExprCondPair)):
        return piecewise_unfolded(func, args)
    return func(*args)


def replaced(expr, table: dict):
    """``expr.xreplace(table)``, each shared subexpression rebuilt once, without recursion,
    and a Piecewise rebuilt with its conditions as written (see :func:`built`).  The
    substitution of every pass: SymPy's ``xreplace`` walks a shared DAG as a tree and lets
    a Piecewise rewrite its conditions.

    >>> x, y = sp.symbols("x y")
    >>> replaced(sp.sin(x) + x * y, {x: 2 * y})
    2*y**2 + sin(2*y)
    >>> p = sp.Piecewise((1, sp.Eq(2 * x + 1, y)), (0, True), evaluate=False)
    >>> replaced(p, {y: sp.Min(x, 3 * x)})
    Piecewise((1, Eq(2*x + 1, Min(x, 3*x))), (0, True))
    >>> p.xreplace({y: sp.Min(x, 3 * x)})
    Piecewise((1, Eq(x, Min(x, 3*x)/2 - 1/2)), (0, True))
    """
    if not isinstance(expr, sp.Basic):
        return expr

    def visit(node, new_operands):
        if not new_operands:    # a leaf, or a node of the table (the walk did not enter it)
            new = table.get(node, node)
            return new if isinstance(new, sp.Basic) else sp.sympify(new)
        return rebuild(node, new_operands, xreplace=True)

    def walked(node):
        # (xreplace walks into every node but an Atom: an entry x[i] of an IndexedBase
        # calls itself an atom, and its index is replaced all the same)
        if node in table or not isinstance(node, sp.Basic) or isinstance(node, sp.Atom):
            return ()
        return node.args

    return dag_rebuild(expr, visit, operands=walked)


class _HeldPair(ExprCondPair):
    """A (value, condition) pair of a :class:`_HeldPiecewise`: built as it stands (SymPy's
    pair folds a Piecewise inside its condition out into an ITE)."""

    def __new__(cls, expr, cond):
        return sp.Tuple.__new__(cls, expr, cond)


class _HeldPiecewise(sp.Piecewise):
    """A Piecewise that SymPy's own rebuilding (``cse``, ``expand``, ``replace``) keeps as it
    stands: its construction evaluates nothing (see :func:`built`)."""

    def __new__(cls, *pairs, **_):
        return sp.Basic.__new__(cls, *[p if isinstance(p, _HeldPair) else _HeldPair(*p)
                                       for p in pairs])


def held(expr):
    """expr with each Piecewise held, for SymPy's functions that rebuild what they walk
    (``sympy.cse``, ``expand``, ``replace``): they cannot rewrite its conditions.  Printers
    print it as the Piecewise it is; :func:`released` gives the plain one back.

    >>> a = sp.Symbol("a")
    >>> p = sp.Piecewise((1, sp.Eq(2 * a + 1, sp.Min(a, 3 * a))), (0, True), evaluate=False)
    >>> released(held(p).replace(sp.Min, sp.Max))
    Piecewise((1, Eq(2*a + 1, Max(a, 3*a))), (0, True))
    >>> p.replace(sp.Min, sp.Max)
    Piecewise((1, Eq(a, Max(a, 3*a)/2 - 1/2)), (0, True))
    """
    return _recast(expr, _HOLD)


def released(expr):
    """expr with each held Piecewise (see :func:`held`) a plain one again."""
    return _recast(expr, _RELEASE)


def derivative(expr, variable):
    """d expr / d variable: SymPy's derivative (symgrad's functions define ``fdiff``) with
    each Piecewise's conditions as written, and the slope of a step zero, as almost
    everywhere: a DiracDelta, or the derivative of a sign or a Heaviside that SymPy leaves
    unevaluated where it cannot prove the argument real (symgrad's values are real).

    SymPy rebuilds a Piecewise that it differentiates, and would rewrite an equality it
    routes by: ``Eq(6a + 3, m)`` as ``Eq(a, m/6 - 1/2)``, which is not the same test in
    floating point.  Every derivative symgrad takes goes through here.

    >>> a = sp.Symbol("a", real=True)
    >>> p = built(sp.Piecewise, [(a**2, sp.Eq(6 * a + 3, sp.Max(a, 6 * a + 3))), (0, True)])
    >>> derivative(p, a)
    Piecewise((2*a, Eq(6*a + 3, Max(a, 6*a + 3))), (0, True))
    >>> sp.diff(p, a)
    Piecewise((2*a, Eq(a, Max(a, 6*a + 3)/6 - 1/2)), (0, True))
    >>> derivative(sp.Heaviside(a) * a, a)
    Heaviside(a)
    """
    return _recast(sp.diff(held(expr), variable), _RELEASE, vanishing=_is_slope_of_a_step)


def _is_slope_of_a_step(e) -> bool:
    return isinstance(e, sp.DiracDelta) or (isinstance(e, sp.Derivative)
                                            and isinstance(e.expr, (sp.sign, sp.Heaviside)))


# node type -> how held() / released() rebuild a node of it from its new operands
_HOLD = {ExprCondPair: lambda args: _HeldPair(*args),
         sp.Piecewise: lambda args: _HeldPiecewise(*args)}
_RELEASE = {_HeldPair: lambda args: piecewise_unfolded(ExprCondPair, args),
            _HeldPiecewise: lambda args: piecewise_unfolded(sp.Piecewise, args)}


def _recast(expr, kinds: dict, vanishing: Callable = lambda _: False):
    """expr with each node of a type in ``kinds`` rebuilt by it, and each node that
    ``vanishing`` picks zero."""
    def visit(node, new_operands):
        if vanishing(node):
            return sp.S.Zero
        make = kinds.get(type(node))
        if make is not None:
            return make(new_operands)
        return rebuild(node, new_operands, xreplace=True)

    return dag_rebuild(expr, visit) if isinstance(expr, sp.Basic) else expr


# SymPy's own order of the terms of a sum and the factors of a product
_SYMPY_ORDER = functools.cmp_to_key(sp.Basic.compare)


def renamed(node, new_operands):
    """node with ``new_operands`` in place of its :func:`operands`, where they are its own
    with symbols renamed, each to a symbol of its own with the same assumptions.

    SymPy's evaluation would find nothing to do: a power of a name or of a sum keeps its
    form, a sum or a product only gets its terms in SymPy's order again (no two terms or
    factors become alike under such a renaming), and a function of names is built without
    SymPy's search for signs and multiples of pi (which could write ``sin(v - u)`` as
    ``-sin(u - v)``, the order of names having changed).  The result equals what
    ``xreplace`` builds, without its flattening (a sum of n terms costs n log n
    comparisons, not SymPy's flattening of each term).

    >>> x, y, u, v = sp.symbols("x y u v")
    >>> e = 3 * x + y
    >>> renamed(e, [3 * v, u]) == e.xreplace({x: v, y: u})
    True
    """
    old_operands = node.args if isinstance(node, sp.Basic) else ()
    if all(new is old for new, old in zip(new_operands, old_operands)):
        return node
    if type(node) in (sp.Add, sp.Mul) and node.is_commutative:
        return node.func._from_args(sorted(new_operands, key=_SYMPY_ORDER), True)
    if type(node) is sp.Pow and node.exp.is_Number and type(node.base) in (sp.Symbol, sp.Add):
        # Pow's evaluation of a name or a sum to a number sees the base's form and
        # assumptions, never a name (and a sum's costs a deduction of its assumptions)
        return sp.Pow(*new_operands, evaluate=False)
    if isinstance(node, sp.Function) and not any(
            a.is_number for a in new_operands if isinstance(a, sp.Basic)):
        return function_of(node.func, new_operands)
    return built(node.func, new_operands)


def postprocessed(obj):
    """``obj`` after SymPy's constructor postprocessors (what a sum, product or power gets
    when SymPy builds it: a matrix expression among its args makes it a matrix sum ...),
    without SymPy's two cached look-ups per argument where no argument's class has any
    (every scalar expression): a tenth of building a statement of two names.

    >>> (x, y), A = sp.symbols("x y"), sp.MatrixSymbol("A", 2, 2)
    >>> postprocessed(sp.Add._from_args((x, y))) == x + y, postprocessed(sp.Add._from_args((A, A)))
    (True, 2*A)
    """
    for a in obj.args:
        kind = type(a)
        if kind not in _WITHOUT_POSTPROCESSORS:
            if any(c in sp.Basic._constructor_postprocessor_mapping for c in kind.__mro__):
                return type(obj)._exec_constructor_postprocessors(obj)
            _WITHOUT_POSTPROCESSORS.add(kind)
    return obj


_WITHOUT_POSTPROCESSORS: set = set()     # classes that bring no constructor postprocessor


# ------------------------------------------------------------------------------------------
# Sums and products as SymPy evaluates them, without its general machinery where provably
# nothing would combine
# ------------------------------------------------------------------------------------------
def add(*args):
    """``sp.Add(*args)``, the same expression, built directly where SymPy's flattening would
    only take sums apart, add rational coefficients of like terms (``x`` and ``3*x``) and
    rational numbers exactly, and sort the terms.  Anything else goes to SymPy.

    Each term is one that SymPy's Add.flatten gives back as it is: a symbol, a function, a
    power of a non-numeric base, or a product (whose coefficient SymPy takes apart and puts
    back; a rational coefficient of one symbol or function only, where Mul would find
    nothing to do).  tests/test_nodes.py compares it with SymPy on random sums.

    >>> x, y = sp.symbols("x y")
    >>> add(3 * sp.cos(x), sp.Integer(2), x * y + 1), add(x, 2 * x), add(x, -x)
    (x*y + 3*cos(x) + 3, 3*x, 0)
    """
    if not sp.core.parameters.global_parameters.evaluate:
        return sp.Add(*args)
    if len(args) == 2:
        a, b = args
        if (type(a) is sp.Symbol and type(b) is sp.Symbol and a.name != b.name
                and a._assumptions0 == b._assumptions0 and a.is_commutative):
            # two names of the same assumptions (most statements a program adds): SymPy
            # only sorts them, and Basic.compare of such symbols is that of their names
            if b.name < a.name:
                a, b = b, a
            return postprocessed(sp.Add._from_args((a, b), True))
    terms = [a for a in args if a is not sp.S.Zero]
    if len(terms) == 1 and isinstance(terms[0], sp.Expr):
        return terms[0]         # (SymPy drops the zeros and gives the other term back)
    if len(terms) < 2 or not all(isinstance(a, sp.Expr) for a in terms):
        return sp.Add(*args)
    coefficient = sp.S.Zero
    collected: dict = {}    # term without its coefficient -> [coefficient, the term or None]
    for t in terms:         # grows by the terms of the sums among them, as in Add.flatten
        if t.is_Number:
            if not t.is_Rational:
                return sp.Add(*args)
            coefficient += t
            continue
        kind = type(t)
        if kind is sp.Add:
            terms.extend(t.args)
            continue
        if kind is sp.Mul:
            c, term = t.as_coeff_Mul()
            if (c is sp.S.One and term is not t) or not _finite_nonzero(c):
                return sp.Add(*args)        # an unevaluated 1*x, 0*x, oo*x
        elif kind is sp.Pow:
            if t.base.is_Number:
                return sp.Add(*args)
            c, term = sp.S.One, t
        elif kind is sp.Symbol or isinstance(t, sp.Function):
            c, term = sp.S.One, t
        else:
            return sp.Add(*args)
        if not _commutative(t):
            return sp.Add(*args)
        entry = collected.get(term)
        if entry is None:
            collected[term] = [c, t]
        elif entry[0].is_Rational and c.is_Rational:    # like terms: added exactly
            entry[0] += c
            entry[1] = None
        else:
            return sp.Add(*args)
    rest = []
    for term, (c, t) in collected.items():
        if t is not None:
            # a term seen once: SymPy keeps it where c is 1, else puts c back in front of
            # the other factors, or multiplies c and the one other factor again
            if c is not sp.S.One and not (len(t.args) > 2 or _plain_mul(c, term)):
                return sp.Add(*args)
            rest.append(t)
        elif c is sp.S.Zero:                # like terms that cancel
            continue
        elif c is sp.S.One:
            rest.append(term)
        elif type(term) is sp.Mul:          # SymPy's rebuilding of like terms, as it is
            rest.append(term._new_rawargs(*((c,) + term.args)))
        elif type(term) is sp.Add:
            rest.append(sp.Mul(c, term, evaluate=False))
        else:
            rest.append(mul(c, term))
    rest.sort(key=_SYMPY_ORDER)
    if coefficient is not sp.S.Zero:
        rest.insert(0, coefficient)
    return postprocessed(sp.Add._from_args(rest, True))


def _commutative(e) -> bool:
    """Whether SymPy finds e commutative, True only where it does: a function whose args all
    are (SymPy's Function asks its args) is answered from them, without the deduction of
    every fact that SymPy makes of a new function asked its first one."""
    if isinstance(e, sp.Function) and 'commutative' not in e._assumptions \
            and type(e)._eval_is_commutative is sp.Function._eval_is_commutative:
        return all(a.is_commutative is True for a in e.args)
    return e.is_commutative is True


def _finite_nonzero(c) -> bool:
    """Whether the number c is finite and nonzero, without asking SymPy's assumptions (a new
    Integer deduces all its facts when first asked one)."""
    if c.is_Rational:
        return c is not sp.S.Zero
    return c.is_Float and bool(c) and math.isfinite(float(c))


def _plain_mul(c, factor) -> bool:
    """Whether ``sp.Mul(c, factor)`` is ``Mul(c, factor)`` as it stands, for a number c
    other than 1: c rational and nonzero, factor one that Mul.flatten gives back as it is
    (see _base), never a sum."""
    return (c.is_Rational and c is not sp.S.Zero and type(factor) is not sp.Add
            and _base(factor) is not None and _commutative(factor))


def _base(f):
    """The base under which Mul.flatten collects the factor f (not a number, a product or a
    sum), where it gives f back as it is: a symbol, a function that is its own base (not
    exp: SymPy writes exp(a) as a power of E), or a power of a non-numeric base to a
    nonzero numeric exponent that SymPy's rebuilding of it gives back; else None."""
    kind = type(f)
    if kind is sp.Symbol:
        return f
    if kind is sp.Pow:
        base, exponent = f.as_base_exp()
        if base.is_Number or not exponent.is_Number or exponent is sp.S.Zero:
            return None
        # SymPy rebuilds the power from its base and its exponent's coefficient times the
        # rest: it must give the factor back
        c, t = exponent.as_coeff_Mul()
        exponent = c * t
        if (base if exponent is sp.S.One else sp.Pow(base, exponent)) != f:
            return None
        return base
    if isinstance(f, sp.Function) and _own_base(f):
        return f
    return None


def _own_base(f) -> bool:
    return type(f).as_base_exp is sp.Expr.as_base_exp


def mul(*args):
    """``sp.Mul(*args)``, the same expression, built directly where SymPy's flattening
    would only take products apart and sort the factors: no two factors of one base (``x``
    and ``x**2``), numbers only rational (multiplied exactly), no numeric base.  A rational
    times one sum is distributed over its terms as SymPy distributes it (2 (x + y) is
    2 x + 2 y).  Anything else goes to SymPy.

    tests/test_nodes.py compares it with SymPy on random products.

    >>> x, y = sp.symbols("x y")
    >>> mul(sp.Integer(3), sp.cos(x), y**2), mul(x, x**2)
    (3*y**2*cos(x), x**3)
    """
    if not sp.core.parameters.global_parameters.evaluate:
        return sp.Mul(*args)
    if len(args) == 1 and isinstance(args[0], sp.Expr):
        return args[0]          # (a rule's product of the other factors, when there is one)
    factors = [a for a in args if a is not sp.S.One]
    if len(factors) == 1 and isinstance(factors[0], sp.Expr):
        return factors[0]       # (SymPy drops the ones and gives the other factor back)
    if len(factors) < 2 or not all(isinstance(a, sp.Expr) for a in factors):
        return sp.Mul(*args)
    distribute = sp.core.parameters.global_parameters.distribute
    if len(factors) == 2:           # SymPy's rule for a rational times a sum, first
        a, b = factors
        if b.is_Rational:
            a, b = b, a
        if a.is_Rational and a is not sp.S.Zero:
            if type(b) is sp.Symbol and b.is_commutative:
                # (a rule's 3 g, a term's 2 x): the number, then the name
                return sp.Mul._from_args((a, b), True)
            if isinstance(b, sp.Function) and _plain_mul(a, b):
                # (a gradient's 3 cos(x)): the number, then the function, as SymPy has it
                return postprocessed(sp.Mul._from_args((a, b), True))
            r, b = b.as_coeff_Mul()
            if b.is_Add:
                if r is sp.S.One and distribute and b.is_commutative:
                    return postprocessed(
                        add(*[_keep_coeff(a, t) for t in b.args]))
                return sp.Mul(*args)
    coefficient = sp.S.One
    rest = []
    bases = set()
    has_sum = False
    for f in factors:       # grows by the factors of the products among them, as in flatten
        if f.is_Number:
            if not f.is_Rational or f is sp.S.Zero:
                return sp.Mul(*args)
            coefficient *= f
            continue
        kind = type(f)
        if kind is sp.Mul:
            if f.is_commutative is not True:
                return sp.Mul(*args)
            factors.extend(f.args)
            continue
        if kind is sp.Add:
            has_sum = True
            base = f
        else:
            base = _base(f)
            if base is None:
                return sp.Mul(*args)
        if base in bases or not _commutative(f):
            return sp.Mul(*args)
        bases.add(base)
        rest.append(f)
    if (has_sum and coefficient is not sp.S.One and len(rest) == 1 and type(rest[0]) is sp.Add
            and distribute):
        # a number times a sum: SymPy distributes it
        return postprocessed(
            add(*[times(coefficient, t) for t in rest[0].args]))
    rest.sort(key=_SYMPY_ORDER)
    if coefficient is not sp.S.One:
        rest.insert(0, coefficient)
    return postprocessed(sp.Mul._from_args(rest, True))


def times(a, b):
    """``a * b``: by :func:`symgrad.nodes.mul` where ``*`` would call ``sp.Mul(a, b)`` (a's
    ``__mul__`` is Expr's or a finite number's, b takes no precedence, and a and b are not
    both numbers, whose product is their own arithmetic).

    >>> x = sp.Symbol("x")
    >>> times(sp.Integer(3), sp.cos(x)), times(sp.Integer(3), sp.Integer(2))
    (3*cos(x), 6)
    """
    if (type(a).__mul__ in _MUL_IS_SYMPY_MUL and isinstance(b, sp.Expr)
            and b._op_priority == sp.Expr._op_priority
            and not (a.is_Number and b.is_Number)):
        return mul(a, b)
    return a * b


# the __mul__ methods that multiply by any expression other than a number with sp.Mul(a, b)
_MUL_IS_SYMPY_MUL = {sp.Expr.__mul__, sp.Integer.__mul__, sp.Rational.__mul__,
                     sp.Float.__mul__}


def function_of(func, args):
    """``func(*args, evaluate=False)``, built directly where SymPy's construction of it is
    its own (Function's or DefinedFunction's, which then only store the args and the
    function's argument counts): its two cache look-ups and the set of argument counts it
    builds again for every call cost more than the rest of a pass's visit of the node.

    The argument counts are taken, once per function and number of args, from one node
    SymPy built; a function with a constructor of its own (Heaviside, Piecewise, an
    undefined function) is always built by SymPy.

    >>> x = sp.Symbol("x")
    >>> function_of(sp.sin, (-x,)), function_of(sp.sin, (-x,)).nargs
    (sin(-x), {1})
    """
    if not all(isinstance(a, sp.Basic) for a in args):
        return func(*args, evaluate=False)
    key = (func, len(args))
    nargs = _NARGS.get(key)
    if nargs is None:
        made = func(*args, evaluate=False)
        plain = (getattr(func, "__new__", None) in _PLAIN_NEW and type(made) is func
                 and getattr(func, "_new_", None) is not None
                 and getattr(func._new_, "__func__", None) is _PLAIN_NEW_)
        _NARGS[key] = made.nargs if plain else False
        return made
    if nargs is False:
        return func(*args, evaluate=False)
    obj = sp.Basic.__new__(func, *args)
    obj.nargs = nargs
    return obj


def assumptions_key(symbol) -> tuple:
    """A symbol's assumptions as a hashable key (remembered per symbol: SymPy builds the
    dictionary again on every ``assumptions0``).

    >>> assumptions_key(sp.Symbol("x", positive=True)) == assumptions_key(
    ...     sp.Symbol("y", positive=True))
    True
    """
    key = getattr(symbol, "_assumptions0", None)
    if type(key) is tuple:      # SymPy 1.14 keeps them so: sorted (name, value) pairs
        return key
    key = _ASSUMPTIONS.get(symbol)
    if key is None:
        if len(_ASSUMPTIONS) >= _REMEMBERED_MAX:
            _ASSUMPTIONS.clear()
        key = _ASSUMPTIONS[symbol] = tuple(sorted(symbol.assumptions0.items()))
    return key


def eval_keeps(func, symbol) -> bool:
    """Whether SymPy's evaluation of ``func(symbol)`` gives it back as it is (cos(t) does;
    Abs(t) of a positive t does not).  SymPy's eval sees a symbol's assumptions, never its
    name, so this is asked once per function and assumptions, of a probe symbol: where it
    holds, :func:`function_of` builds the node without eval's search for signs and
    multiples of pi.

    >>> eval_keeps(sp.cos, sp.Symbol("t", real=True)), eval_keeps(sp.Abs, sp.Symbol(
    ...     "p", positive=True))
    (True, False)
    """
    if not (isinstance(func, type) and issubclass(func, sp.Function)):
        return False
    key = (func, assumptions_key(symbol))
    keeps = _EVAL_KEEPS.get(key)
    if keeps is None:
        probe = sp.Symbol("_symgrad_probe", **symbol.assumptions0)
        try:
            value = func(probe)
        except (TypeError, ValueError):
            value = None
        keeps = _EVAL_KEEPS[key] = (type(value) is func and value.args == (probe,)
                                    and value == func(probe, evaluate=False))
    return keeps


_ASSUMPTIONS: dict = {}     # symbol -> assumptions_key(symbol)
_EVAL_KEEPS: dict = {}      # (function, assumptions key) -> eval_keeps
_REMEMBERED_MAX = 50_000


def unevaluated(kind, args):
    """``kind(*args, evaluate=False)`` for a sum, a product or a power (exactly those classes)
    of expressions, built as SymPy's construction without evaluation builds it, without its
    cache look-up; anything else by SymPy.

    >>> x, y = sp.symbols("x y")
    >>> unevaluated(sp.Add, [x, x]), unevaluated(sp.Pow, [x * y, sp.Integer(2)])
    (x + x, (x*y)**2)
    """
    if not all(isinstance(a, sp.Expr) for a in args):
        return kind(*args, evaluate=False)
    if kind is sp.Add or kind is sp.Mul:
        return postprocessed(kind._from_args(list(args)))
    if kind is sp.Pow and len(args) == 2:
        base, exponent = args
        obj = postprocessed(sp.Basic.__new__(sp.Pow, base, exponent))
        if isinstance(obj, sp.Pow):
            obj.is_commutative = (base.is_commutative and exponent.is_commutative)
        return obj
    return kind(*args, evaluate=False)


def power_of_piecewise(base, exponent):
    """``base**exponent`` of a Piecewise base: SymPy's evaluation takes the power of each
    value, and folds a constant value into SymPy's number, which for a real model can be
    no real number: 1/0 = zoo (the 1/u of d log(u) in a branch where u is 0, a branch the
    gradient then never takes), (-2)**(1/2) = sqrt(2) I.  Such a value is NumPy's
    instead, as the power computed at run time gives it: 0.0 to a negative power is inf,
    a negative number to a fractional power NaN.  (Left a power of the Piecewise, the
    zoo would come back: SymPy's product evaluates the powers it holds again.)

    >>> z = sp.Symbol("z")
    >>> power_of_piecewise(sp.Piecewise((0, z < -1), (-2, z > 1), (z, True)), sp.Rational(-1, 2))
    Piecewise((oo, z < -1), (nan, z > 1), (1/sqrt(z), True))
    """
    folded = sp.Pow(base, exponent)
    if not (isinstance(folded, sp.Piecewise) and folded.has(sp.zoo, sp.nan, sp.I)):
        return folded
    pieces = []
    for (value, condition), (power, _) in zip(base.args, folded.args):
        if power.is_number and not value.has(sp.zoo, sp.nan, sp.I):
            if power is sp.zoo:
                power = sp.oo if value.is_zero else sp.nan
            elif power is sp.nan or power.is_extended_real is False:
                power = sp.nan
        pieces.append((power, condition))
    return sp.Piecewise(*pieces, evaluate=False)


def piecewise_unfolded(kind, args):
    """A Piecewise (``kind`` Piecewise, ``args`` its (value, condition) pairs) or one such
    pair (``kind`` ExprCondPair, ``args`` value and condition), without SymPy's evaluation
    of its conditions, which is no identity in floats: it rewrites Eq(y/2 + 1, m) as
    Eq(y, 2 m - 2), false at y = -0.4, m = 0.8 (2 * 0.8 - 2 is -0.3999999999999999), where
    Max's rule routes the gradient by that equality; and it folds a Piecewise inside a
    condition (the Eq(a, Min(...)) of Min's rule, a Min of a Piecewise) out into an ITE,
    evaluating relations of its values, which can fail (an invalid comparison of a zoo it
    made) or multiply the condition's size.  Kept: what needs no evaluation (a false
    condition's piece dropped, the pieces after a true one, one value for all).

    >>> x, y = sp.symbols("x y")
    >>> p = sp.Piecewise((x, x > 0), (y, True))
    >>> piecewise_unfolded(sp.Piecewise, [(x, sp.Eq(p, y)), (y, sp.true)])
    Piecewise((x, Eq(Piecewise((x, x > 0), (y, True)), y)), (y, True))
    >>> piecewise_unfolded(sp.Piecewise, [(1, sp.Eq(y / 2 + 1, x)), (0, sp.true)])
    Piecewise((1, Eq(y/2 + 1, x)), (0, True))
    """
    if kind is ExprCondPair:
        value, condition = args
        if condition == sp.true or condition == sp.false:
            return ExprCondPair(value, condition)
        return sp.Tuple.__new__(ExprCondPair, sp.sympify(value), condition)
    pairs = [a if isinstance(a, ExprCondPair) else piecewise_unfolded(ExprCondPair, a)
             for a in args]
    kept = []
    for pair in pairs:
        if pair.cond is sp.false:
            continue
        kept.append(pair)
        if pair.cond is sp.true:
            break
    if kept and kept[-1].cond is sp.true and all(p.expr == kept[0].expr for p in kept):
        return kept[0].expr
    if not kept:
        return sp.Piecewise(*pairs)     # (SymPy's answer: no piece can be taken)
    return sp.Basic.__new__(kind, *kept)


def not_a_real_number(e) -> bool:
    """Whether ``e`` is a number SymPy holds for no real one (i pi, zoo, nan)."""
    return isinstance(e, sp.Expr) and bool(e.is_number) and (
        e.has(sp.I, sp.zoo, sp.nan) or e.is_extended_real is False)


def numpy_number(e) -> sp.Expr:
    """The constant ``e`` as NumPy computes it in float64 (log(-2) NaN, log(0) -inf), as
    SymPy's real number: where SymPy's own value is no real number.

    >>> numpy_number(sp.log(-2, evaluate=False)), numpy_number(sp.log(0, evaluate=False))
    (nan, -oo)
    """
    import numpy as np
    with np.errstate(all="ignore"):
        value = complex(sp.lambdify((), e, modules="numpy")())
    if value.imag or math.isnan(value.real):
        return sp.nan
    if math.isinf(value.real):
        return sp.oo if value.real > 0 else -sp.oo
    return sp.Float(value.real)


_NARGS: dict = {}   # (function, number of args) -> their nargs, or False: SymPy builds them
_PLAIN_NEW = (sp.Function.__new__, sp.core.function.DefinedFunction.__new__)
_PLAIN_NEW_ = sp.core.function.DefinedFunction._new_.__func__


def real_symbol(name: str) -> sp.Symbol:
    """``sp.Symbol(name, real=True)``: an equal symbol (same name, assumptions and hash),
    built without SymPy's cache of symbols.  The passes name every statement of a program
    (130,000 names for a sum of 10,000 terms), each name once; the cache look-up, its miss
    and its insertion cost more than the symbol.

    >>> t = real_symbol("_t7")
    >>> t == sp.Symbol("_t7", real=True), t.is_real, hash(t) == hash(sp.Symbol("_t7", real=True))
    (True, True, True)
    """
    if _REAL_PROTOTYPE is None:
        return sp.Symbol(name, real=True)
    symbol = sp.Expr.__new__(sp.Symbol)
    symbol.name = name
    # the facts of every real symbol: SymPy itself shares these between such symbols
    symbol._assumptions = _REAL_PROTOTYPE._assumptions
    symbol._assumptions_orig = _REAL_PROTOTYPE._assumptions_orig
    symbol._assumptions0 = _REAL_PROTOTYPE._assumptions0
    return symbol


def _real_prototype():
    """A real symbol whose facts real_symbol copies, if SymPy's symbols are still built as
    this version's are (checked on one symbol); else None, and real_symbol asks SymPy."""
    prototype = sp.Symbol("_symgrad_real", real=True)
    try:
        symbol = sp.Expr.__new__(sp.Symbol)
        symbol.name = "_symgrad_probe"
        for fact in ("_assumptions", "_assumptions_orig", "_assumptions0"):
            setattr(symbol, fact, getattr(prototype, fact))
        expected = sp.Symbol("_symgrad_probe", real=True)
        same = (symbol == expected and hash(symbol) == hash(expected)
                and symbol.assumptions0 == expected.assumptions0
                and symbol._hashable_content() == expected._hashable_content())
    except AttributeError:
        same = False
    return prototype if same else None


_REAL_PROTOTYPE = _real_prototype()


def dag_rebuild(expr, visit: Callable = rebuild, *, operands: Callable = operands):
    """expr rebuilt from the leaves up: ``visit(node, new_operands)`` for each distinct
    node, children before parents, where ``new_operands`` lists what visit returned for each
    of ``operands(node)``; returns what visit returned for expr.

    Each distinct node is visited once however many parents share it (the results are
    memoised by node, so a model nested n deep costs n visits, not 2^n), and the walk keeps
    its own stack (no recursion, whatever the depth).  The default visit, :func:`rebuild`,
    returns expr itself; a pass passes its own visit, which usually ends in
    ``rebuild(node, new_operands)``.  A node for which ``operands`` gives nothing is a leaf
    (a pass can make any node a leaf that way: its visit then sees ``new_operands == []``).

    >>> x, w = sp.symbols("x w")
    >>> f = x
    >>> for _ in range(100):        # a tree of 2^100 nodes, a DAG of 302
    ...     f = f * sp.sin(f + w)
    >>> dag_rebuild(f) is f
    True
    >>> visits = []
    >>> _ = dag_rebuild(f, lambda node, new: visits.append(node) or rebuild(node, new))
    >>> len(visits)
    302
    """
    done: dict = {}
    # (node, None): not yet expanded; (node, children): its children are done
    stack: list = [(expr, None)]
    while stack:
        node, children = stack.pop()
        if children is not None:
            done[node] = visit(node, [done[c] for c in children])
            continue
        if node in done:
            continue
        children = operands(node)
        if not children:
            done[node] = visit(node, [])
            continue
        stack.append((node, children))
        stack.extend((c, None) for c in children if c not in done)
    return done[expr]


def shared(exprs: list) -> list:
    """The expressions with each set of equal subexpressions made one object (hash-consing):
    every node is kept as it is, with its operands replaced by the one object of their
    value.

    SymPy compares two nodes with ``==`` by their trees: equal nodes that are different
    objects are compared operand by operand, and where their operands are different objects
    again, down every path through them (exponential in the depth of a shared DAG).  A
    result with such copies (forward mode builds a product's partials anew at each use)
    makes every set, dict or cache that holds its nodes compare them so: a walk over a
    Hessian of a model nested 12 deep, with 10,083 objects of 3,118 values, did not end in
    two minutes.  With one object per value, ``==`` between two nodes stops at their
    operands.

    One walk by object identity, children first, without recursion: a node is known by its
    class and the objects of its operands (those of a class that compares more than its
    operands, and the leaves, by their own value, which is cheap to compare).

    >>> x = sp.Symbol("x")
    >>> a = sp.sin(x) + 1
    >>> clear_cache()                   # (else SymPy's cache gives a again)
    >>> b = sp.sin(x) + 1               # equal, built twice
    >>> a is b, a == b
    (False, True)
    >>> s, t = shared([sp.cos(a), sp.exp(b)])
    >>> s.args[0] is t.args[0], s == sp.cos(a)
    (True, True)
    """
    one_of: dict = {}       # (class, operand objects) or a leaf -> the one object
    done: dict = {}         # id(node) -> its one object (keep holds the nodes: ids stay theirs)
    keep: list = []
    stack = [(e, False) for e in reversed(exprs)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in done:
            continue
        args = node.args if isinstance(node, sp.Basic) else ()
        if not args or type(node)._hashable_content not in _ARGS_ONLY:
            done[id(node)] = one_of.setdefault(node, node)
            keep.append(node)
            continue
        if not expanded:
            stack.append((node, True))
            stack.extend((a, False) for a in reversed(args) if id(a) not in done)
            continue
        new = tuple(done[id(a)] for a in args)
        key = (type(node), *map(id, new))
        one = one_of.get(key)
        if one is None:
            one = one_of[key] = node if all(n is a for n, a in zip(new, args)) \
                else _with_operands(node, new)
        done[id(node)] = one
        keep.append(node)
    return [done[id(e)] for e in exprs]


# classes whose value is their class and operands (SymPy's ``==`` compares only those)
_ARGS_ONLY = {sp.Basic._hashable_content, sp.Expr._hashable_content}


def _with_operands(node, new: tuple):
    """A copy of node whose operands are ``new``, objects equal to its own: the same class,
    facts and hash, built without SymPy's evaluation (which could give another form of a
    node that was built unevaluated)."""
    copy = object.__new__(type(node))
    for cls in type(node).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(node, slot):
                setattr(copy, slot, getattr(node, slot))
    if hasattr(node, "__dict__"):
        copy.__dict__.update(node.__dict__)
    copy._args = new
    return copy


# how many one_call calls this thread is running (its outermost clears SymPy's cache; a
# clearing while another thread runs a pass only costs that pass some cached entries)
_CALLS = threading.local()


@contextlib.contextmanager
def _fresh_sympy_cache(even_nested: bool = False):
    depth = getattr(_CALLS, "depth", 0)
    if depth == 0 or even_nested:
        clear_cache()
    _CALLS.depth = depth + 1
    try:
        yield
    finally:
        _CALLS.depth = depth
        if depth == 0:
            clear_cache()


def one_call(function: Callable) -> Callable:
    """function, a public entry of symgrad, with SymPy's cache cleared when the outermost
    such call (or :func:`one_pass`) begins and when it ends; nested ones share the cache.

    symgrad builds most nodes directly, not through SymPy's cached constructors
    (:func:`add`, :func:`mul`, :func:`function_of`), so a node it builds again is equal to,
    not the same object as, one that an earlier call left in SymPy's cache.  SymPy finds a
    cached entry by comparing the arguments with ``==``, node by node, which on an
    expression whose pieces are shared (a model nested 20 deep) walks every path through it:
    a second ``sg.grad`` of that model took 2.0 s against 0.04 s for the first.  Without
    entries from earlier calls, each call costs what the first does.  (The cache is a memo
    only: clearing it changes no result.)

    >>> @one_call
    ... def cached():
    ...     sp.Mul(sp.Symbol("a"), sp.Symbol("b"))
    ...     return sp.Mul.__new__.cache_info().currsize > 0
    >>> cached(), sp.Mul.__new__.cache_info().currsize
    (True, 0)
    """
    @functools.wraps(function)
    def call(*args, **kwargs):
        with _fresh_sympy_cache():
            return function(*args, **kwargs)

    return call


def new_pass(function: Callable) -> Callable:
    """function, a pass that derives again from the user's model inside a larger call (the
    plans of the compiled Hessian, HVP and Jacobian in a generated module): as
    :func:`one_pass`, and SymPy's cache cleared when it begins even where it is nested.

    What the earlier passes of the same call left in the cache are copies of the pieces it
    builds again, and SymPy finds a cached entry by comparing node by node (see
    :func:`one_call`): generating the second-order functions of a model nested 24 deep took
    188 s, of which the Hessian's own derivation takes 1 s alone.

    >>> @one_call
    ... def outer():
    ...     sp.Mul(sp.Symbol("a"), sp.Symbol("b"))
    ...     return inner()
    >>> @new_pass
    ... def inner():
    ...     return sp.Mul.__new__.cache_info().currsize
    >>> outer()
    0
    """
    return _pass(function, even_nested=True)


def one_pass(function: Callable) -> Callable:
    """function, one of symgrad's passes over SymPy expressions: as :func:`one_call`, and
    with Python's cycle collector paused (and resumed after it, unless it was paused
    already).

    A pass that builds tens of thousands of SymPy nodes which all stay alive makes the
    collector walk the growing heap again and again, finding nothing: a quarter of the time
    ``sg.grad`` takes on a sum of 10,000 terms.  The nodes form no reference cycles (they are
    freed by their counts), and what the pass leaves behind is collected as usual after it.

    >>> @one_pass
    ... def enabled():
    ...     return gc.isenabled()
    >>> enabled(), gc.isenabled()
    (False, True)
    """
    return _pass(function, even_nested=False)


def _pass(function: Callable, even_nested: bool) -> Callable:
    @functools.wraps(function)
    def paused(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            with _fresh_sympy_cache(even_nested):
                return function(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return paused
