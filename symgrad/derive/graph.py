"""The expression DAG that reverse mode walks.

A user's SymPy expression is first brought to canonical form (:func:`canonicalize`):

* n-ary sums and products become binary (so that the adjoints of a 40-factor product share
  their partial products and stay linear in size), except sums of ``NARY_SUM_FROM`` terms
  or more, which stay one node (each term's adjoint is the sum's: halves share nothing);
* every elementwise matrix operation (MatAdd, HadamardProduct, HadamardPower, a scalar times a
  matrix, symgrad's elementwise functions, broadcasts) becomes a :class:`~symgrad.ops.Map`,
  and chains of them used once are fused into one Map;
* products with ``OneMatrix`` become :class:`~symgrad.ops.AxisSum` or broadcasts (no matrix of ones
  is ever built), products with ``Identity`` disappear, transposes move onto symbols, and
  matrix chains are ordered by their shapes;
* textbook forms that overflow are replaced by stable ones (``log(sigmoid(z))`` by
  ``logsigmoid(z)``, ``log(1 + exp(z))`` by ``softplus(z)``, ``log(det(X))`` by ``logdet(X)``).

Then :func:`build_graph` lists the distinct subexpressions in topological order, each once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

from symgrad import operations, ops
from symgrad.nodes import dag_rebuild, operands, rebuild, renamed, replaced, unevaluated

_CHAIN_PROBE = 1000  # size given to symbolic dimensions when comparing matrix-chain costs


def is_matrix(expr) -> bool:
    return isinstance(expr, MatrixExpr)


# ------------------------------------------------------------------------------------------
# Walks over a whole model as a DAG (SymPy's free_symbols, atoms and xreplace walk it as a
# tree, recursively: exponential in a nested model's depth, and too deep for Python's stack)
# ------------------------------------------------------------------------------------------
def dag_nodes(expr) -> list:
    """The distinct subexpressions of expr (each once), found without recursion."""
    return list(_last_walked(expr, "nodes", lambda: tuple(_walk(expr))))


def _last_walked(expr, what: str, walk):
    """``walk()``, remembered for the last expression walked: checking a model, finding its
    inputs, dimensions and free dimensions walks the same model several times (expressions
    are immutable; the caller gets a copy of what is kept)."""
    kept = _LAST_WALKED.get(what)
    if kept is not None and kept[0] is expr:
        return kept[1]
    found = walk()
    _LAST_WALKED[what] = (expr, found)
    return found


_LAST_WALKED: dict = {}     # what -> (the expression, what a walk of it found)


def _listed_nodes(expr):
    """expr's nodes where :func:`dag_nodes` listed them last (checking a model lists them
    first), else None: a later pass over the whole model goes through the list instead of
    walking it again."""
    kept = _LAST_WALKED.get("nodes")
    return kept[1] if kept is not None and kept[0] is expr else None


def _walk(expr):
    """The distinct subexpressions of expr, each once, a node before its children, without
    recursion (lazily: a caller may stop at the first it looks for)."""
    seen: set = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        yield node
        if isinstance(node, sp.Basic):
            stack.extend(a for a in node.args if a not in seen)


def _has_own_free_symbols(node) -> bool:
    """Whether SymPy's free_symbols of node is not simply the union over its arguments (a
    symbol, a lambda or integral that binds its variables ...)."""
    if isinstance(node, (sp.Symbol, sp.MatrixSymbol)) or not node.args:
        return True
    if isinstance(node, (sp.Function, sp.Piecewise)) and not isinstance(node, sp.Lambda):
        return False
    return type(node).free_symbols is not sp.Basic.free_symbols


def dag_free_symbols(expr) -> set:
    """``expr.free_symbols``, each shared subexpression visited once.

    >>> x, w = sp.symbols("x w")
    >>> f = x
    >>> for _ in range(60):    # a tree of 2^60 nodes: SymPy's own walk would not finish
    ...     f = f * sp.sin(f + w)
    >>> sorted(dag_free_symbols(f), key=str)
    [w, x]
    """
    expr = sp.sympify(expr)
    return set(_last_walked(expr, "free symbols", lambda: frozenset(_free_symbols(expr))))


def _free_symbols(expr) -> set:
    listed = _listed_nodes(expr)
    if listed is not None:
        # its free symbols are those of its nodes, where no node binds a variable (a Lambda's)
        out = set()
        plain: set = set()      # types whose nodes with arguments have none of their own
        for node in listed:
            kind = type(node)
            if kind in plain and node.args:     # (most nodes: asked once per type)
                continue
            if isinstance(node, sp.Symbol):
                out.add(node)
            elif not isinstance(node, sp.Basic):
                continue
            elif node.args and not _has_own_free_symbols(node):
                plain.add(kind)     # (it depends on the type alone)
            elif node.args or node.free_symbols:
                # a node with free symbols of its own making (a matrix symbol, which does
                # not count its dimensions; a Lambda, which binds its variables): the walk
                # below stops at it
                break
        else:
            return out
    out: set = set()
    seen: set = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(node, sp.MatrixBase):     # an explicit matrix: those of its entries
            stack.extend(a for a in node if a not in seen)
            continue
        if not isinstance(node, sp.Basic):
            continue
        if _has_own_free_symbols(node):
            out |= node.free_symbols
            continue
        stack.extend(a for a in node.args if a not in seen)
    return out


def dag_atoms(expr, kind) -> set:
    """``expr.atoms(kind)`` for a class of leaves (MatrixSymbol), each node visited once."""
    return {n for n in dag_nodes(sp.sympify(expr)) if isinstance(n, kind)}


def dag_xreplace(expr, table: dict, *, renaming: bool = False):
    """``expr.xreplace(table)``, each shared subexpression rebuilt once, without recursion.

    With ``renaming``, where the table only renames symbols (each to a symbol of its own
    with the same assumptions), nodes are rebuilt by :func:`~symgrad.nodes.renamed`: the
    same expression, without SymPy evaluating it again.

    >>> x, y, u, v = sp.symbols("x y u v")
    >>> dag_xreplace(sp.sin(x) + x * y, {x: 2 * y})
    2*y**2 + sin(2*y)
    >>> dag_xreplace(sp.sin(x - y), {x: v, y: u}), dag_xreplace(sp.sin(x - y), {x: v, y: u},
    ...                                                          renaming=True)
    (-sin(u - v), sin(-u + v))
    """
    if not renaming:
        return replaced(expr, table)

    def visit(node, new_operands):
        if not new_operands:    # a leaf, or a node of the table (the walk did not enter it)
            return table.get(node, node)
        return renamed(node, new_operands)

    return dag_rebuild(expr, visit, operands=lambda node: () if node in table else operands(node))


# ------------------------------------------------------------------------------------------
# Stable forms of scalar bodies
# ------------------------------------------------------------------------------------------
def stabilize(expr: sp.Expr) -> sp.Expr:
    """Replace overflow-prone textbook forms by stable ones.

    One walk over the expression's DAG, children before parents, each distinct
    subexpression rewritten once (a shared subexpression is not walked again through each
    of its parents), without recursion.

    >>> import sympy as sp
    >>> z = sp.Symbol("z")
    >>> stabilize(sp.log(1 / (1 + sp.exp(-z))))
    logsigmoid(z)
    """
    def stable(node, new_operands):
        if not new_operands:
            return node         # a leaf has no stable form to take
        return _stable_form(rebuild(node, new_operands))

    if not _has_unstable_form(expr):
        return expr             # what the walk below would give back
    return dag_rebuild(expr, stable)


def stabilize_model(expr):
    """:func:`stabilize`, and the same stable rewrites inside elementwise Maps, over the
    model's own forms (not symgrad's canonical ones): a Map of log over a Map of sigmoid
    becomes one Map of logsigmoid, a log of a softmax becomes log-softmax, as in the
    compiled model.  What :func:`symgrad.check` hands the frameworks, so that they evaluate
    the model symgrad computes rather than a textbook form that overflows where symgrad's
    does not.

    >>> import symgrad as sg
    >>> W, X = sp.MatrixSymbol("W", 3, 4), sp.MatrixSymbol("X", 4, 5)
    >>> stabilize_model(sg.sum(sg.log(sg.sigmoid(W * X))))
    sum(logsigmoid(W X))
    """
    if not is_matrix(expr):
        expr = stabilize(expr)
    # Only a Map whose body holds a form with a stable rewrite (a log, 1/(1 + exp(-x))) can
    # change; the fuser would otherwise only rewrite the model into symgrad's forms.
    if not _some_node(expr, lambda node: isinstance(node, ops.Map)
                      and _has_unstable_form(node.body)):
        return expr
    uses = _count_uses(expr)
    return expr if uses is None else dag_rebuild(expr, _Fuser(uses), operands=children)


def _has_unstable_form(expr) -> bool:
    """Whether a node of expr's DAG (the nodes dag_rebuild walks) is one _rewrite_top may
    rewrite: a log, a real or imaginary part, a conjugate, or 1/(1 + exp(-x)).  Where none
    is, stabilize's walk rebuilds nothing and gives expr back.

    >>> x = sp.Symbol("x")
    >>> _has_unstable_form(sp.sin(x) * x + 1), _has_unstable_form(sp.sin(sp.log(x)))
    (False, True)
    """
    return _some_node(expr, lambda node: isinstance(node, sp.Basic) and not node.is_Atom and (
        isinstance(node, (sp.log, sp.re, sp.im, sp.conjugate))
        or (node.is_Pow and _sigmoid_arg(node) is not None)))


def _some_node(expr, found) -> bool:
    """Whether ``found(node)`` holds for a node of expr's DAG (the walk stops at the first;
    the model's nodes listed already are gone through as listed)."""
    listed = _listed_nodes(expr)
    return any(found(node) for node in (_walk(expr) if listed is None else listed))


def _stable_form(e):
    """e with the stable rewrites applied at its top (its arguments are stable already).

    A rewrite of a number can evaluate back to the form it came from (``sigmoid(2)`` is
    ``1/(1 + exp(-2))``), so the rewriting stops at the first form seen before.
    """
    seen = {e}
    while True:
        rewritten = _rewrite_top(e)
        if rewritten is None or rewritten in seen:
            return e
        seen.add(rewritten)
        e = rewritten


def _rewrite_top(e):
    """One stable rewrite at the top of e, or None: 1/(1 + exp(-x)) -> sigmoid(x),
    log(sigmoid(x)) -> logsigmoid(x), log(1 - sigmoid(x)) -> logsigmoid(-x),
    log(1 + exp(x)) -> softplus(x), log(exp(x)) -> x, log(1/x) -> -log(x),
    log(c exp(x)) -> x + log(c), log(sum(exp(Z))) -> logsumexp(Z).

    Also the real form of complex parts: symgrad's values are real, so re(x) -> x,
    im(x) -> 0 and conjugate(x) -> x (SymPy writes |exp(x)| as exp(re(x)) when x is not
    declared real, and composing elementwise bodies builds such forms).
    """
    if isinstance(e, (sp.re, sp.conjugate)):
        return e.args[0]
    if isinstance(e, sp.im):
        return sp.S.Zero
    argument = _sigmoid_arg(e)
    if argument is not None:
        return ops.sigmoid(argument)
    if not isinstance(e, sp.log):
        return None
    inner = e.args[0]
    if inner.is_Pow and inner.exp == -1:
        return -_stable_form(sp.log(inner.base))    # log(1/x) = -log(x), nan and inf alike
    if inner.is_Mul and any(isinstance(f, sp.exp) for f in inner.args):
        # log(c exp(g)) = g + log(c) for real g, nan and inf alike: the exp never overflows
        exponents = [f.args[0] for f in inner.args if isinstance(f, sp.exp)]
        rest = [f for f in inner.args if not isinstance(f, sp.exp)]
        return sp.Add(*exponents) + _stable_form(sp.log(sp.Mul(*rest)))
    stable = operations.stable_log(inner)    # log(sum(exp(Z))) -> logsumexp(Z) ...
    if stable is not None:
        return stable
    if isinstance(inner, ops.sigmoid):
        return ops.logsigmoid(inner.args[0])
    if isinstance(inner, sp.exp):
        return inner.args[0]
    if inner.is_Add and len(inner.args) == 2 and inner.args[0] == 1:
        other = inner.args[1]
        if isinstance(other, sp.exp):
            return ops.softplus(other.args[0])
        if (other.is_Mul and len(other.args) == 2 and other.args[0] == -1
                and isinstance(other.args[1], ops.sigmoid)):
            return ops.logsigmoid(-other.args[1].args[0])
    return None


def _sigmoid_arg(e):
    """x if e is 1/(1 + exp(-x)), else None."""
    if not (e.is_Pow and e.exp == -1 and e.base.is_Add and len(e.base.args) == 2):
        return None
    one, other = e.base.args
    if one != 1 or not isinstance(other, sp.exp):
        return None
    return -other.args[0]


def _log_softmax(variables, body, operands):
    """A Map's body with the log of a softmax operand rewritten to log-softmax, so that
    log(softmax(Z)) is finite at |z| = 1000 in both passes:

    * log(v) for v = softmax(Z, axis) becomes z - l, with Z and logsumexp(Z, axis) (over all
      entries for axis None) as new operands;
    * log(v) for v = sum(exp(Z), axis), the denominator of a softmax written by hand,
      becomes l, with logsumexp(Z, axis) as the new operand;
    * log(v) for a scalar operand v whose log has a stable form (log(1/sum(exp(Z))) is
      -logsumexp(Z)) becomes a new scalar operand, that stable form.

    An operand stays only where its variable still appears outside a log.  The matrix
    operations say which logs of theirs have such forms (their ``stable_log_operand``)."""
    variables, operands = list(variables), list(operands)
    rewritten = []
    for k in range(len(operands)):
        operand, v = operands[k], variables[k]
        if not body.has(sp.log(v)):
            continue
        stable = _stable_log_operand(operand, v) if is_matrix(operand) else None
        if stable is not None:
            expression, new_variables, new_operands = stable
            body = replaced(body, {sp.log(v): expression})
            variables += new_variables
            operands += new_operands
        elif not is_matrix(operand):
            logarithm = stabilize(sp.log(operand))
            if isinstance(logarithm, sp.log) and logarithm.args[0] == operand:
                continue        # no stable form: the log stays in the body
            (lv,) = ops.map_variables(1, [f"{v.name}_log"])
            body = replaced(body, {sp.log(v): lv})
            variables.append(lv)
            operands.append(logarithm)
        else:
            continue
        rewritten.append(k)
    used = body.free_symbols
    keep = [k for k in range(len(variables)) if k not in rewritten or variables[k] in used]
    return tuple(variables[k] for k in keep), body, [operands[k] for k in keep]


def _stable_log_operand(operand, v):
    """The first operation's stable form of log(v) for the matrix operand v stands for."""
    for operation in operations.OPERATIONS.values():
        if operation.stable_log_operand is not None:
            found = operation.stable_log_operand(operand, v, Canonicalizer()._transpose)
            if found is not None:
                return found
    return None


# ------------------------------------------------------------------------------------------
# Canonical form
# ------------------------------------------------------------------------------------------
class Canonicalizer:
    """Brings SymPy expressions to symgrad's canonical form (see the module docstring).

    Memoised on the expression, so a subexpression that appears twice becomes one node.
    """

    def __init__(self):
        self._memo: dict = {}
        self.labels: dict = {}  # canonical expression -> the name the user gave it
        # expressions that _canonical_already found so: a sum of them (a gradient of 2,000
        # contributions) is proven canonical without walking each one again
        self._proven: set = set()

    def __call__(self, expr):
        expr = sp.sympify(expr)
        if expr.is_Atom and not is_matrix(expr):
            # a name or a number (most adjoint contributions): nothing to stabilize or fuse
            return self._canon(expr)
        if _canonical_already(expr, self._proven):
            # most other contributions (g cos(t), 3 g): every pass below gives them back
            self._proven.add(expr)
            return expr
        plain = not is_matrix(expr)
        if plain:
            expr = stabilize(expr)
        for node in _scalar_postorder(expr):
            # children before parents: each call below finds its operands memoised, so the
            # recursion of _canon stays shallow however deep the model is
            self._canon(node)
            plain = plain and _plain_scalar(node)
        unfused = self._canon(expr)
        if plain:       # (the walk reached every node) no node the fuser rewrites
            return unfused
        uses = _count_uses(unfused)
        if uses is None:    # no node the fuser rewrites: it would return unfused itself
            return unfused
        return dag_rebuild(unfused, _Fuser(uses), operands=children)

    # -- dispatch ----------------------------------------------------------------------
    def _canon(self, expr):
        try:
            return self._memo[expr]
        except KeyError:
            pass
        result = self._dispatch(expr)
        self._memo[expr] = result
        return result

    def _dispatch(self, expr):
        label = operations.label_of(expr)
        if label is not None:
            inner = self._canon(expr.arg)
            if not is_matrix(expr):     # a scalar's name serves the user's formulas only
                return inner
            result = operations.of(expr).rebuild(expr, [inner])
            self.labels[result] = label
            return result
        if is_matrix(expr):
            return self._canon_matrix(expr)
        return self._canon_scalar(expr)

    def _canon_scalar(self, expr):
        if expr.is_Atom:
            return expr
        if isinstance(expr, MatrixElement):
            parent = self._canon(expr.parent)
            return ops.Entry(parent, expr.i, expr.j)
        if isinstance(expr, ops.SumAll):
            return self._sum_all(self._canon(expr.arg))
        operation = operations.of(expr)
        if operation is not None:
            return operation.rebuild(expr, [self._canon(o) for o in operation.operands(expr)])
        if isinstance(expr, (sp.re, sp.conjugate)):     # values are real: see _rewrite_top
            return self._canon(expr.args[0])
        if isinstance(expr, sp.im):
            return sp.S.Zero
        stable = operations.stable_log(expr.args[0]) if isinstance(expr, sp.log) else None
        if stable is not None:          # log(det(A)) -> logdet(A) ...
            return self._canon(stable)
        args = [self._canon(a) for a in expr.args]
        if (isinstance(expr, (sp.Add, sp.Mul)) and len(args) > 2
                and not (type(expr) is sp.Add and len(args) >= NARY_SUM_FROM)):
            # binary, in SymPy's canonical argument order: partial results get shared (not
            # Max and Min, whose rule splits a tie of n inputs n ways, as JAX does: nested,
            # one of three would get half)
            return _binary(type(expr), args)
        if isinstance(expr, sp.Piecewise):
            return sp.Piecewise(*[(self._canon(e), self._canon_condition(c))
                                  for e, c in expr.args], evaluate=False)
        return _rebuild_canonical(expr, args)

    def _canon_condition(self, cond):
        if isinstance(cond, sp.logic.boolalg.BooleanAtom):
            return cond
        return cond.func(*[self._canon(a) for a in cond.args], evaluate=False)

    def _canon_matrix(self, expr):
        if isinstance(expr, (sp.MatrixSymbol, sp.Identity, sp.ZeroMatrix, sp.OneMatrix)):
            return expr
        if isinstance(expr, sp.Transpose):
            return self._transpose(self._canon(expr.arg))
        if isinstance(expr, sp.MatAdd):
            return self._map(lambda *v: sp.Add(*v), expr.shape, expr.args)
        if isinstance(expr, sp.HadamardProduct):
            return self._map(lambda *v: sp.Mul(*v), expr.shape, expr.args)
        if isinstance(expr, sp.HadamardPower):
            return self._map(lambda b, e: b**e, expr.shape, [expr.base, expr.exp])
        if isinstance(expr, sp.MatMul):
            return self._matmul(expr)
        if isinstance(expr, ops.Map):
            operands = [self._canon(o) for o in expr.operands]
            variables, body = expr.function.variables, stabilize(expr.body)
            variables, body, operands = _log_softmax(variables, body, operands)
            return ops.Map(sp.Lambda(variables, body), expr.shape, *operands)
        if isinstance(expr, ElementwiseApplyFunction):      # A.applyfunc(f)
            return self._canon(ops.map_of_applyfunc(expr))
        if isinstance(expr, ops.AxisSum):
            return self._sum(self._canon(expr.arg), expr.axis)
        operation = operations.of(expr)
        if operation is not None:
            return operation.rebuild(expr, [self._canon(o) for o in operation.operands(expr)])
        if isinstance(expr, sp.MatPow) and expr.exp == -1:
            return ops.inv(self._canon(expr.base))
        if isinstance(expr, sp.MatPow) and expr.exp.is_Integer and expr.exp > 0:
            # SymPy writes A @ A as A**2: a product again
            return self._chain([self._canon(expr.base)] * int(expr.exp))
        if isinstance(expr, sp.MatPow) and expr.exp.is_Integer and expr.exp < 0:
            # and inv(A) @ inv(A) as A**-2: the product of the inverse with itself
            inverse = ops.inv(self._canon(expr.base))
            return self._chain([inverse] * int(-expr.exp))
        raise NotImplementedError(_unsupported_message(expr))

    # -- pieces ------------------------------------------------------------------------
    def _map(self, combine, shape, operands):
        """A Map that combines the operands (matrices or scalars) elementwise."""
        canon = [self._canon(o) for o in operands]
        variables = ops.map_variables(len(canon))
        body = combine(*variables)
        return ops.Map(sp.Lambda(variables, body), shape, *canon)

    def _transpose(self, arg):
        if isinstance(arg, sp.Transpose):
            return arg.arg
        if isinstance(arg, (sp.Identity, sp.ZeroMatrix, sp.OneMatrix)):
            return type(arg)(*arg.shape[::-1]) if not isinstance(arg, sp.Identity) else arg
        if isinstance(arg, sp.MatMul):
            return sp.MatMul(self._transpose(arg.args[1]), self._transpose(arg.args[0]))
        if isinstance(arg, ops.Map):
            operands = [self._transpose(o) if is_matrix(o) else o for o in arg.operands]
            variables, body, operands = _log_softmax(arg.function.variables, arg.body,
                                                     operands)
            return ops.Map(sp.Lambda(variables, body), arg.shape[::-1], *operands)
        if isinstance(arg, ops.AxisSum):
            return self._transpose_sum(arg)
        if operations.label_of(arg) is not None:
            return self._transpose(arg.arg)
        if arg.shape[0] == 1 and arg.shape[1] == 1:
            return arg
        return sp.Transpose(arg)

    def _transpose_sum(self, s):
        return ops.AxisSum(self._transpose(s.arg), 1 - s.axis)

    def _sum(self, arg, axis):
        rows, cols = arg.shape
        if (axis == 0 and rows == 1) or (axis == 1 and cols == 1):
            return arg
        if _constant_along(arg, axis):
            # the same entry repeated along the axis: its extent times one copy, in closed
            # form (a free dimension m is then a factor, never a loop of m steps)
            reduced = (sp.S.One, cols) if axis == 0 else (rows, sp.S.One)
            return self._map(lambda c, a: c * a, reduced, [arg.shape[axis], _collapse(arg, axis)])
        return ops.AxisSum(arg, axis)

    def _sum_all(self, arg):
        """The sum of all entries, with every axis along which the entries repeat taken out
        as a factor (closed form, as in _sum)."""
        factor = sp.S.One
        for axis in (0, 1):
            if arg.shape[axis] != 1 and _constant_along(arg, axis):
                factor = factor * arg.shape[axis]
                arg = _collapse(arg, axis)
        if factor == 1:
            return ops.SumAll(arg)
        return sp.Mul(factor, ops.SumAll(arg), evaluate=False)

    def _matmul(self, expr):
        scalars = [a for a in expr.args if not is_matrix(a)]
        factors = []
        for a in expr.args:
            if not is_matrix(a):
                continue
            a = self._canon(a)
            scalar = _as_scalar_factor(a)
            if scalar is not None and len(expr.args) > 1:
                scalars.append(scalar)      # a 1 x 1 matrix in a product acts as a scalar
            elif not isinstance(a, sp.Identity):
                factors.append(a)
        if any(isinstance(f, sp.ZeroMatrix) for f in factors):
            return sp.ZeroMatrix(*expr.shape)
        product = self._chain(factors) if factors else sp.Identity(expr.shape[0])
        coefficient = sp.Mul(*scalars)
        if coefficient == 1:
            return product
        return self._map(lambda c, a: c * a, expr.shape, [coefficient, product])

    def _chain(self, factors):
        """The product of matrix factors, ordered for the fewest multiplications."""
        factors = self._absorb_ones(factors)
        if len(factors) == 1:
            return factors[0]
        return self._ordered_product(factors)

    def _absorb_ones(self, factors):
        """Replace products with OneMatrix by row or column sums and broadcasts."""
        factors = list(factors)
        changed = True
        while changed and len(factors) > 1:
            changed = False
            for k, f in enumerate(factors):
                if not isinstance(f, sp.OneMatrix):
                    continue
                if k > 0:        # X (n x p) @ 1 (p x m) = broadcast(rowsum(X)) (n x m)
                    left = factors[k - 1]
                    summed = self._sum(left, 1)
                    replacement = self._broadcast(summed, (left.shape[0], f.shape[1]))
                    factors[k - 1:k + 1] = [replacement]
                else:            # 1 (n x p) @ X (p x m) = broadcast(colsum(X)) (n x m)
                    right = factors[1]
                    summed = self._sum(right, 0)
                    replacement = self._broadcast(summed, (f.shape[0], right.shape[1]))
                    factors[0:2] = [replacement]
                changed = True
                break
        return factors

    def _broadcast(self, arg, shape):
        if tuple(arg.shape) == tuple(shape):
            return arg
        (a,) = ops.map_variables(1)
        return ops.Map(sp.Lambda((a,), a), shape, arg)

    def _ordered_product(self, factors):
        """Dynamic programming over the chain (the textbook matrix-chain order)."""
        dims = [factors[0].shape[0]] + [f.shape[1] for f in factors]
        sizes = [_probe(d) for d in dims]
        n = len(factors)
        cost = {(i, i): 0 for i in range(n)}
        split = {}
        for length in range(2, n + 1):
            for i in range(n - length + 1):
                j = i + length - 1
                best = None
                for k in range(i, j):
                    c = cost[i, k] + cost[k + 1, j] + sizes[i] * sizes[k + 1] * sizes[j + 1]
                    if best is None or c < best:
                        best, split[i, j] = c, k
                cost[i, j] = best

        def build(i, j):
            if i == j:
                return factors[i]
            k = split[i, j]
            return sp.MatMul(build(i, k), build(k + 1, j))

        return build(0, n - 1)


# A sum of this many terms or more stays one n-ary node: every term's adjoint is the sum's,
# so binary halves would share nothing and only add nodes (9,999 for 10,000 terms) to each
# pass.  Below it, sums are binary like products, and small models read as the lecture draws
# them.
NARY_SUM_FROM = 64

# Sums and products of at most this many operands become a chain ((a + b) + c) + d, whose
# partial results other sums of the same leading terms share; longer ones a balanced tree,
# whose depth (log2 of the count) no walk over it can find too deep.
_CHAIN_MAX = 8


def _rebuild_canonical(node, args):
    """node with new args: node itself where they are its own (rebuilding it would give an
    equal node, at the cost of a SymPy construction), a sum, product or power as it is (a
    binary sum stays binary, see _binary), anything else as :func:`~symgrad.nodes.rebuild`
    makes it."""
    if len(args) == len(node.args) and all(a is b for a, b in zip(args, node.args)):
        return node
    if isinstance(node, (sp.Add, sp.Mul, sp.Pow)):
        return unevaluated(node.func, args)
    return rebuild(node, args)


def _binary(kind, args: list):
    """The n-ary operation as nested binary ones (see _CHAIN_MAX)."""
    if len(args) <= _CHAIN_MAX:
        result = args[0]
        for a in args[1:]:
            result = unevaluated(kind, (result, a))
        return result
    middle = (len(args) + 1) // 2
    return unevaluated(kind, (_binary(kind, args[:middle]), _binary(kind, args[middle:])))


# Scalar nodes whose operands the canonicalizer handles one by one (their args), and which
# _scalar_postorder may therefore walk into.
_SPECIAL_SCALARS = (MatrixElement, sp.Piecewise,
                    *(cls for cls, o in operations.OPERATIONS.items() if not o.is_matrix))


# Functions that a pass of the canonicalizer rewrites (see _canonical_already).
_REWRITTEN_FUNCTIONS = (sp.log, sp.re, sp.im, sp.conjugate, *_SPECIAL_SCALARS)


def _scalar_postorder(expr) -> list:
    """The distinct scalar subexpressions of expr that the canonicalizer reaches through
    plain arguments, children before parents (an iterative walk)."""
    order: list = []
    seen: set = set()
    stack = [(expr, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        if not isinstance(node, sp.Basic) or is_matrix(node) or node.is_Atom:
            continue
        stack.append((node, True))
        if isinstance(node, _SPECIAL_SCALARS) or (isinstance(node, sp.log) and (
                operations.stable_log(node.args[0]) is not None)) \
                or not isinstance(node, sp.Expr):
            continue
        stack.extend((a, False) for a in node.args if a not in seen)
    return order


def _canonical_already(expr, proven=frozenset()) -> bool:
    """Whether canonicalizing expr gives an expression equal to expr, proven cheaply: a
    scalar expression made of numbers and symbols by sums and products of at most two
    operands (or sums of NARY_SUM_FROM terms or more), powers, and functions that no pass
    rewrites (not a log, re, im or conjugate, a Piecewise, an entry or an operation), with
    no sigmoid written as 1/(1 + exp(-x)).

    Then stabilize finds no form to rewrite, _canon_scalar keeps every node (its args are
    its own, so _rebuild_canonical returns it), and the fuser has no node to rewrite: the
    three walks of :meth:`Canonicalizer.__call__` return expr.  One iterative walk, which
    stops at the first node that needs them; none where each operand is a leaf or one of
    ``proven``, expressions found canonical already.

    >>> x, y = sp.symbols("x y")
    >>> _canonical_already(3 * sp.cos(x)), _canonical_already(x + y + 1)
    (True, False)
    >>> _canonical_already(sp.log(x)), _canonical_already(1 / (1 + sp.exp(-x)))
    (False, False)
    """
    if all(not a.args or a in proven for a in expr.args):
        # one operation over names, numbers and expressions proven canonical before (most
        # adjoint contributions, and the sums of them): no walk
        return not (_canonicalized(expr) or any(_canonicalized(a) for a in expr.args
                                                if a not in proven))
    return not _some_node(expr, _canonicalized)


def _canonicalized(node) -> bool:
    """Whether a pass of the canonicalizer may rewrite node (see _canonical_already)."""
    if not isinstance(node, sp.Expr) or is_matrix(node):
        return True
    if node.is_Atom:
        return False
    kind = type(node)
    if kind is sp.Add:
        return 2 < len(node.args) < NARY_SUM_FROM
    if kind is sp.Mul:
        return len(node.args) > 2
    if kind is sp.Pow:
        return _sigmoid_arg(node) is not None
    return (not isinstance(node, sp.Function) or isinstance(node, _REWRITTEN_FUNCTIONS)
            or operations.of(node) is not None)


def _plain_scalar(node) -> bool:
    """Whether node is a sum, product, power, max, min or function (not an operation, an
    entry or a Piecewise, and no log with a stable form to take) of scalars: what
    _canon_scalar makes of it is a node of the same kinds over what it makes of the args,
    none of which the fuser rewrites, and _scalar_postorder walks into its args."""
    kind = type(node)
    if not (kind is sp.Add or kind is sp.Mul or kind is sp.Pow
            or isinstance(node, (sp.Max, sp.Min))
            or (isinstance(node, sp.Function) and not isinstance(node, _SPECIAL_SCALARS)
                and operations.of(node) is None
                and not (isinstance(node, sp.log)
                         and operations.stable_log(node.args[0]) is not None))):
        return False
    return not any(isinstance(a, MatrixExpr) or not isinstance(a, sp.Expr) for a in node.args)


def _as_scalar_factor(m):
    """The scalar a 1 x 1 Map of scalars holds, else None."""
    if not (isinstance(m, ops.Map) and m.shape[0] == 1 and m.shape[1] == 1):
        return None
    if any(is_matrix(o) for o in m.operands):
        return None
    return m.function(*m.operands)


def _probe(dim) -> int:
    dim = sp.sympify(dim)
    if dim.is_number:
        return int(dim)
    return int(replaced(dim, {s: _CHAIN_PROBE for s in dim.free_symbols}))


def _constant_along(arg, axis: int) -> bool:
    """Whether a Map's entries repeat along the axis: every matrix operand broadcasts there
    or is itself such a Map (a broadcast inside an elementwise function)."""
    return isinstance(arg, ops.Map) and all(
        not is_matrix(o) or o.shape[axis] == 1 or _constant_along(o, axis)
        for o in arg.operands)


def _collapse(arg, axis: int):
    """One copy of a matrix whose entries repeat along the axis (see _constant_along)."""
    if arg.shape[axis] == 1:
        return arg
    shape = (sp.S.One, arg.shape[1]) if axis == 0 else (arg.shape[0], sp.S.One)
    return ops.Map(arg.function, shape, *[_collapse(o, axis) if is_matrix(o) else o
                                          for o in arg.operands])


def _unsupported_message(expr) -> str:
    kind = type(expr).__name__
    return (f"symgrad has no rule for {kind} (in {expr}). Supported nodes are listed in "
            "symgrad.RULES; add one with symgrad.register_rule("
            f"{kind}, lambda g, y, *inputs, **_: (...)) returning one adjoint per input, or "
            "rewrite the model with supported operations.")


# ------------------------------------------------------------------------------------------
# Map fusion
# ------------------------------------------------------------------------------------------
def _count_uses(expr) -> dict | None:
    """How many distinct parents each subexpression has in the DAG of expr, or None when no
    node of it is one that :class:`_Fuser` rewrites (then the fuser's walk would give expr
    back unchanged, and is skipped).

    >>> x = sp.Symbol("x")
    >>> _count_uses(sp.sin(x) * x) is None
    True
    """
    uses: dict = {}
    seen = set()
    stack = [expr]
    fusable = False
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        fusable = fusable or _fuser_rewrites(node)
        for child in children(node):
            uses[child] = uses.get(child, 0) + 1
            stack.append(child)
    return uses if fusable else None


def _fuser_rewrites(node) -> bool:
    """Whether :meth:`_Fuser.__call__` may return node other than itself when its children
    come back unchanged (every node it does not list here it keeps as it is)."""
    return isinstance(node, (ops.Map, MatrixElement, sp.Piecewise)) \
        or operations.of(node) is not None


def children(node) -> tuple:
    """The operands of a canonical node: what reverse mode sends adjoints to and what every
    pass over the canonical DAG walks (the node protocol, with :func:`with_children`).

    A Map's operands (not its body), an entry's matrix, a Piecewise's values and the
    operands of its conditions, a registered operation's ``operands``, a SymPy node's args;
    nothing for a leaf (a symbol, a matrix symbol, a number, a Lambda).

    >>> A = ops.matrix("A", 2, 2)
    >>> children(ops.Entry(A, 0, 1)), children(ops.det(A)), children(sp.Symbol("x"))
    ((A,), (A,), ())
    """
    kind = type(node)
    if kind is sp.Add or kind is sp.Mul or kind is sp.Pow:     # (most nodes: their args)
        return node.args
    if isinstance(node, ops.Map):
        return node.operands
    if isinstance(node, (sp.MatrixSymbol, sp.Identity, sp.ZeroMatrix, sp.OneMatrix)):
        return ()
    if isinstance(node, MatrixElement):
        return (node.parent,)
    if isinstance(node, sp.Piecewise):
        out = []
        for e, c in node.args:
            out.append(e)
            out.extend(_condition_operands(c))
        return tuple(out)
    operation = operations.of(node)
    if operation is not None:
        return operation.operands(node)
    if isinstance(node, sp.Lambda):
        return ()
    if not isinstance(node, sp.Basic) or node.is_Atom:
        return ()
    return tuple(a for a in node.args if isinstance(a, sp.Basic))


def _condition_operands(condition) -> tuple:
    """What a Piecewise condition reads: nothing for true or false, a relation's (or And's,
    Or's ...) operands, or the condition itself where it is a name of the program (SymPy
    reduces And(true, c) and ITE(false, a, c) to c when their operands are renamed)."""
    if isinstance(condition, sp.logic.boolalg.BooleanAtom):
        return ()
    return condition.args or (condition,)


def with_children(node, new: Sequence, plain: Callable | None = None):
    """node with ``new`` in place of its :func:`children` (same operation, new operands).

    ``plain(node, args)`` builds a plain SymPy node (a sum, a product, a function) from its
    new args, as the pass wants it evaluated (default: :func:`_rebuild_canonical`, a sum or
    product unevaluated); a Piecewise is rebuilt unevaluated (over real temporaries SymPy
    would decide ``t > t`` and drop a piece, and its pieces would no longer line up with
    its children); a leaf is itself.

    >>> x, y = sp.symbols("x y")
    >>> with_children(sp.sin(x) + x, [sp.sin(y), y])
    y + sin(y)
    """
    kind = type(node)
    if (kind is sp.Add or kind is sp.Mul or kind is sp.Pow) and new:    # (most nodes)
        return (plain or _rebuild_canonical)(node, list(new))
    if isinstance(node, ops.Map):
        return ops.Map(node.function, node.shape, *new)
    if isinstance(node, MatrixElement):
        return ops.Entry(new[0], node.i, node.j)
    operation = operations.of(node)
    if operation is not None:
        return operation.rebuild(node, list(new))
    if isinstance(node, sp.Piecewise):
        it = iter(new)
        pieces = []
        for _, cond in node.args:
            value = next(it)
            operands = _condition_operands(cond)
            if operands == (cond,):             # a name: its new value is the condition
                cond = next(it)
            elif operands:
                cond = cond.func(*[next(it) for _ in operands], evaluate=False)
            pieces.append((value, cond))
        return sp.Piecewise(*pieces, evaluate=False)
    if not new:     # a leaf: a matrix symbol, Identity, a number, a Lambda ...
        return node
    it = iter(new)
    args = [next(it) if isinstance(a, sp.Basic) else a for a in node.args]
    return (plain or _rebuild_canonical)(node, args)


class _Fuser:
    """Inlines single-use Maps (and all pure broadcasts) into the Maps that consume them.

    The visit of a :func:`~symgrad.nodes.dag_rebuild` over the canonical DAG with the
    children ``children`` gives: each node is called with what its children became.
    """

    def __init__(self, uses: dict):
        self.uses = uses

    def __call__(self, expr, new):
        if isinstance(expr, ops.Map):
            return self._fuse_map(expr, new)
        return with_children(expr, new)

    def _fuse_map(self, expr: ops.Map, new_operands):
        variables, operands = [], []
        substitutions = {}
        counter = [0]

        def fresh():
            counter[0] += 1
            return ops.map_variables(1, [f"a{counter[0] - 1}"])[0]

        def add_operand(operand):
            # the same operand twice becomes one variable
            for v, o in zip(variables, operands):
                if o == operand:
                    return v
            v = fresh()
            variables.append(v)
            operands.append(operand)
            return v

        for v, operand in zip(expr.function.variables, new_operands):
            if self._inlinable(operand, expr):
                substitutions[v] = self._inline(operand, add_operand)
            elif isinstance(operand, sp.OneMatrix):
                substitutions[v] = sp.S.One
            elif isinstance(operand, sp.ZeroMatrix):
                substitutions[v] = sp.S.Zero
            elif not is_matrix(operand) and operand.is_number:
                substitutions[v] = operand
            else:
                substitutions[v] = add_operand(operand)
        body = stabilize(replaced(expr.body, substitutions))
        variables, body, operands = _log_softmax(variables, body, operands)
        variables, operands = list(variables), list(operands)
        # A Map used elsewhere too is inlined only where that lets the stable rewrites
        # remove it (log(sigmoid(z)) becomes logsigmoid(z)): accuracy is worth recomputing.
        for variable, operand in list(zip(variables, operands)):
            inner = operand.arg if operations.label_of(operand) is not None else operand
            if isinstance(inner, ops.Map) and _broadcast_compatible(inner.shape, expr.shape):
                trial = stabilize(replaced(body, {variable: self._inline(inner, add_operand)}))
                if _removes(inner, trial):
                    body = trial
        used = body.free_symbols
        kept = [(v, o) for v, o in zip(variables, operands) if v in used]
        variables, operands = [v for v, _ in kept], [o for _, o in kept]
        if not variables:   # a constant: keep one operand so the Map has a shape source
            return _constant_map(body, expr.shape)
        if body in variables and tuple(operands[variables.index(body)].shape
                                       if is_matrix(operands[variables.index(body)]) else ()) \
                == tuple(expr.shape):
            return operands[variables.index(body)]  # the identity Map
        return ops.Map(sp.Lambda(tuple(variables), body), expr.shape, *operands)

    @staticmethod
    def _inline(operand, add_operand):
        inner = {iv: add_operand(io) for iv, io in zip(operand.function.variables,
                                                       operand.operands)}
        return replaced(operand.body, inner)

    def _inlinable(self, operand, consumer) -> bool:
        if not isinstance(operand, ops.Map):
            return False
        if not _broadcast_compatible(operand.shape, consumer.shape):
            return False
        is_broadcast = operand.body in operand.function.variables
        return is_broadcast or self.uses.get(operand, 0) <= 1 or _cheap(operand)


def _removes(operand: ops.Map, body) -> bool:
    """Whether inlining operand into a body let the stable rewrites remove its functions
    (log(sigmoid(z)) became logsigmoid(z)): only then is recomputing it worth it."""
    functions = {type(f) for f in operand.body.atoms(sp.Function)}
    if not functions:
        return False
    return not any(isinstance(f, tuple(functions)) for f in body.atoms(sp.Function))


def _constant_map(value, shape):
    (a,) = ops.map_variables(1)
    return ops.Map(sp.Lambda((a,), a), shape, value)


def _cheap(m: ops.Map) -> bool:
    """A Map without function calls costs less to recompute than to store and load."""
    return not m.body.atoms(sp.Function) and sp.count_ops(m.body) <= 2


def _broadcast_compatible(inner, outer) -> bool:
    return all(a == b for a, b in zip(inner, outer))


# ------------------------------------------------------------------------------------------
# The DAG
# ------------------------------------------------------------------------------------------
@dataclass
class Graph:
    """The canonical expression's distinct subexpressions, children before parents.

    ``operands`` holds, for each node, the positions in ``nodes`` of its :func:`children`
    (reverse mode keys its tables by position: a list look-up, not a hash of the node).
    """

    output: object
    nodes: list = field(default_factory=list)   # topological order, leaves first
    labels: dict = field(default_factory=dict)  # node -> name the user gave it
    operands: list = field(default_factory=list)


def build_graph(expr, canonicalizer: Canonicalizer | None = None) -> Graph:
    """Canonicalize ``expr`` and list its nodes in topological order.

    >>> x = sp.Symbol("x")
    >>> g = build_graph(sp.sin(x) * x)
    >>> g.nodes, g.operands
    ([x, sin(x), x*sin(x)], [[], [0], [0, 1]])
    """
    canonicalizer = canonicalizer or Canonicalizer()
    output = canonicalizer(expr)
    order: list = []
    operands: list = []
    position: dict = {}     # node -> its place in order (also: the nodes seen)
    stack: list = [(output, None)]
    while stack:
        node, kids = stack.pop()
        if kids is not None:
            # (a DAG: every child was listed before the node's second visit)
            operands.append([position[c] for c in kids])
            position[node] = len(order)
            order.append(node)
            continue
        if node in position:
            continue
        kids = children(node)
        stack.append((node, kids))
        for child in reversed(kids):
            if child not in position:
                stack.append((child, None))
    # (in the nodes' order; looked up from the labels, few, not from every node)
    labelled = sorted((position[n], n) for n in canonicalizer.labels if n in position)
    labels = {n: canonicalizer.labels[n] for _, n in labelled}
    return Graph(output=output, nodes=order, labels=labels, operands=operands)
