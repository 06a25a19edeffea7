"""Reverse-mode differentiation over the expression DAG (backpropagation, symbolically).

The algorithm of the lecture, on symbols:

1. canonicalize the expression and sort its nodes topologically (``graph.build_graph``);
2. forward: give every node a name (``_t3``) and write it in terms of its children's names;
3. seed the output's adjoint with 1;
4. walk the nodes in reverse order; each node adds up the contributions it received (a node
   used in several places receives the SUM of the gradients coming back along each branch),
   names that sum once (``_d3``, the "delta" every parameter below it shares), and hands each
   child its contribution through the node type's rule (``rules.RULES``);
5. a parameter's gradient is its adjoint.

Nothing here knows any operation by name: the rules do.  The result is a
:class:`Derivation`: ordered assignments (a small program) that the optimizer and the code
generator consume, and that :func:`inline` turns back into plain SymPy expressions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import sympy as sp
from sympy.functions.elementary.piecewise import ExprCondPair

from symgrad import operations, ops
from symgrad.derive import rules
from symgrad.derive.graph import (
    Canonicalizer,
    build_graph,
    is_matrix,
    with_children,
)
from symgrad.derive.rules import rule_for
from symgrad.nodes import (
    add,
    built,
    function_of,
    held,
    mul,
    not_a_real_number,
    numpy_number,
    one_pass,
    piecewise_unfolded,
    power_of_piecewise,
    real_symbol,
    released,
    replaced,
    unevaluated,
)

LEAVES = (sp.MatrixSymbol, sp.Identity, sp.ZeroMatrix, sp.OneMatrix)


class Walk:
    """The backward walk as the lecture draws it, for pictures and explanations
    (``sg.graph``, ``sg.explain``); the program itself never reads it.

    ``nodes`` are the canonical nodes, children before parents; ``values`` maps a node to its
    name in the program (a leaf to itself), ``operations`` a compound node to the node over
    its children's names (what its rule saw), ``adjoints`` a node to its summed adjoint, and
    ``sent`` lists ``(node, child, contribution)`` in the order the walk sent them (a child
    used twice appears twice: its adjoint is the sum).

    Reverse mode keeps them as lists in the order of ``nodes`` (a node's position is its
    key); the maps are made from them when first read, so that a gradient, which never reads
    them, does not hash every node of the model three more times.

    >>> x = sp.Symbol("x")
    >>> walk = derive(sp.sin(x), [x]).walk
    >>> walk.values[sp.sin(x)], walk.operations[sp.sin(x)], walk.adjoints[x], walk.sent
    (_t1, sin(x), _d0, [(sin(x), x, cos(x))])
    """

    def __init__(self, nodes: list, names: list, rebuilt: list, adjoints: list, sent: list):
        # the lists are kept, not copied: reverse mode fills ``adjoints`` and ``sent`` after
        # making the walk
        self.nodes = nodes
        self.names = names            # per node: its name in the program
        self.rebuilt = rebuilt        # per node: what its rule saw (None: a leaf)
        self.adjoint_list = adjoints  # per node: its summed adjoint (None: none)
        self.sent = sent

    @functools.cached_property
    def values(self) -> dict:
        return dict(zip(self.nodes, self.names))

    @functools.cached_property
    def operations(self) -> dict:
        return {node: r for node, r in zip(self.nodes, self.rebuilt) if r is not None}

    @functools.cached_property
    def adjoints(self) -> dict:
        return {node: a for node, a in zip(self.nodes, self.adjoint_list) if a is not None}


@dataclass
class Derivation:
    """The forward and backward program of one expression and its gradients.

    ``assignments`` are ``(name, expression)`` pairs in execution order, each expression in
    terms of inputs and earlier names; ``value`` and ``gradients`` are names (or constants)
    of the program.  ``labels`` maps a name to the user's name for it (``Z2``, ``dZ2``), and
    ``adjoints`` is the set of names that hold an adjoint.
    """

    wrt: list
    assignments: list = field(default_factory=list)
    value: object = None
    gradients: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    adjoints: set = field(default_factory=set)
    named: dict = field(default_factory=dict)   # label -> the canonical expression it names
    walk: Walk | None = None                    # set by derive


def is_leaf(node) -> bool:
    if isinstance(node, LEAVES):
        return True
    return not is_matrix(node) and isinstance(node, sp.Basic) and node.is_Atom


def _temporary(prefix: str, k: int, like):
    if is_matrix(like):
        return sp.MatrixSymbol(f"{prefix}{k}", *like.shape)
    return real_symbol(f"{prefix}{k}")


def _unevaluated(node, args):
    """A plain node of reverse mode's names: sums, products and powers as they are (SymPy
    would flatten a product of names again), a function of names without SymPy's search for
    signs and multiples of pi (about a millisecond per node, finding nothing)."""
    if isinstance(node, (sp.Add, sp.Mul, sp.Pow)):
        return unevaluated(node.func, args)
    if isinstance(node, sp.Function) and args and all(isinstance(k, sp.Symbol) for k in args):
        return function_of(node.func, args)
    return built(node.func, args)


def rebuild(node, kids_new: list):
    """The node with its children replaced (same operation, new operands), by the node
    protocol of symgrad/derive/graph.py."""
    return with_children(node, kids_new, _unevaluated)


@one_pass
def derive(expr, wrt: list, seed=None) -> Derivation:
    """Backpropagate through ``expr`` once and return the program with every gradient.

    ``seed`` is the adjoint of the output: 1 for a scalar output (the gradient), or a matrix
    symbol of the output's shape (a vector-Jacobian product).

    >>> import sympy as sp
    >>> w, x, y = sp.symbols("w x y")
    >>> d = derive((w * x - y) ** 2, [w])
    >>> sp.simplify(inline(d, d.gradients[w]) - 2 * x * (w * x - y))
    0
    """
    canonicalize = Canonicalizer()
    graph = build_graph(expr, canonicalize)
    derivation = Derivation(wrt=list(wrt))
    nodes = graph.nodes
    operands = graph.operands   # a node's children, by position (its tables are lists)
    leaf = [is_leaf(node) for node in nodes]

    # forward: one name per node, children before parents
    names: list = []
    rebuilt_of: list = []
    for k, node in enumerate(nodes):
        if leaf[k]:
            names.append(node)
            rebuilt_of.append(None)
            continue
        kids = operands[k]
        operand_names = [names[c] for c in kids]
        kind = type(node)
        if ((kind is sp.Add or kind is sp.Mul or kind is sp.Pow)
                and all(n is nodes[c] for n, c in zip(operand_names, kids))):
            # a sum, product or power of leaves (3*x, x**2) is its own rebuilding: the same
            # operands, unevaluated (a third of the nodes of a sum of terms a*x + y)
            rebuilt = node
        else:
            rebuilt = rebuild(node, operand_names)
        rebuilt_of.append(rebuilt)
        if _is_transposed_symbol(rebuilt):     # X^T is a view, not a value to compute
            names.append(rebuilt)
            continue
        label = operations.label_of(node)
        if label is not None:                  # a name changes nothing: alias the child
            names.append(names[kids[0]])
            derivation.labels.setdefault(names[-1], label)
            continue
        name = _temporary("_t", k, node)
        names.append(name)
        derivation.assignments.append((name, rebuilt))
    derivation.value = names[-1]
    derivation.named = {label: named.arg for named, label in canonicalize.labels.items()}
    adjoints: list = [None] * len(nodes)
    sent: list = []
    derivation.walk = Walk(nodes, names, rebuilt_of, adjoints, sent)

    # which nodes depend on a parameter (the others need no adjoint)
    wrt_set = set(wrt)
    depends = [False] * len(nodes)
    for k, kids in enumerate(operands):
        if leaf[k]:
            depends[k] = nodes[k] in wrt_set
            continue
        for c in kids:
            if depends[c]:
                depends[k] = True
                break

    # backward: seed with 1, then each node hands its adjoint to its children
    output = len(nodes) - 1
    contributions: list = [None] * len(nodes)
    if depends[output]:
        if seed is None:
            if is_matrix(graph.output):
                raise ValueError("the gradient needs a scalar output; this one has shape "
                                 f"{graph.output.shape}: use the vector-Jacobian product "
                                 "sg.compile(expr, wrt).vjp")
            seed = sp.S.One
        contributions[output] = [seed]
    for k in range(output, -1, -1):
        parts = contributions[k]
        if not parts:
            continue
        contributions[k] = None
        node = nodes[k]
        upstream = _sum(parts, node, canonicalize)
        if not (is_leaf(upstream) or _is_transposed_symbol(upstream) or _is_broadcast(upstream)):
            adjoint = _temporary("_d", k, node)
            derivation.assignments.append((adjoint, upstream))
            derivation.adjoints.add(adjoint)
            upstream = adjoint
        if not leaf[k]:
            label = operations.label_of(node)
            if label is not None:
                derivation.labels.setdefault(upstream, "d" + label)
        adjoints[k] = upstream
        if leaf[k]:
            if node in wrt_set:
                derivation.gradients[node] = upstream
            continue
        kids = operands[k]
        rule = rule_for(node)
        # a rule that can skip the inputs no parameter depends on is told which those are
        wanted = ({"wanted": tuple(depends[c] for c in kids)}
                  if getattr(rule, "takes_wanted", False) else {})
        local = rule(upstream, names[k], *[names[c] for c in kids], node=rebuilt_of[k],
                     **wanted)
        for c, contribution in zip(kids, local):
            if contribution is None or not depends[c]:
                continue
            if type(contribution) is not sp.Symbol:     # (a name is canonical)
                contribution = canonicalize(contribution)
            sent.append((node, nodes[c], contribution))
            if _is_zero(contribution):
                continue
            if contributions[c] is None:
                contributions[c] = [contribution]
            else:
                contributions[c].append(contribution)

    for symbol in wrt:
        derivation.gradients.setdefault(
            symbol, sp.ZeroMatrix(*symbol.shape) if is_matrix(symbol) else sp.S.Zero)
    return derivation


def _is_broadcast(e) -> bool:
    """A Map that only repeats its operand: cheaper to fuse into its users than to store."""
    return isinstance(e, ops.Map) and e.body in e.function.variables


def _is_transposed_symbol(e) -> bool:
    return isinstance(e, sp.Transpose) and isinstance(e.arg, sp.MatrixSymbol)


def _is_zero(e) -> bool:
    # (asked of every contribution, canonical expressions: only a number can equal 0)
    return isinstance(e, sp.ZeroMatrix) or (e.is_Number and e == 0)


def _sum(parts: list, node, canonicalize):
    """The adjoint of a node: the sum of what its consumers sent back."""
    if len(parts) == 1:
        return parts[0]
    # A sum of reductions is the reduction of a sum: the summed operand then is the same
    # expression as another node's adjoint, and CSE shares it.
    reductions = [_reduction(p) for p in parts]
    if (all(r is not None for r in reductions) and len({r[0] for r in reductions}) == 1
            and len({tuple(r[1].shape) for r in reductions}) == 1):
        kind = reductions[0][0]
        total = canonicalize(sp.MatAdd(*[r[1] for r in reductions]))
        return canonicalize(_REDUCE[kind](total))
    if is_matrix(node):
        return canonicalize(sp.MatAdd(*parts))
    return canonicalize(add(*parts))


def _reduction(e):
    """(kind, operand) if e sums a matrix (all entries, or along an axis), else None."""
    if isinstance(e, ops.SumAll):
        return ("all", e.arg)
    if isinstance(e, ops.AxisSum):
        return (f"axis{e.axis}", e.arg)
    if _is_broadcast(e) and e.shape == (1, 1) and isinstance(e.operands[0], ops.SumAll):
        return ("all1x1", e.operands[0].arg)
    return None


_REDUCE = {
    "all": ops.SumAll,
    "axis0": lambda m: ops.AxisSum(m, 0),
    "axis1": lambda m: ops.AxisSum(m, 1),
    "all1x1": lambda m: ops.broadcast(ops.SumAll(m), (1, 1)),
}


def inline(derivation: Derivation, expr):
    """Replace the program's names in ``expr`` by what they stand for (a plain expression).

    One walk over the DAG, children first, without recursion; a chain of sums (or of
    products) whose inner links are used nowhere else is rebuilt as one n-ary sum, so that a
    sum of n terms costs O(n), not the O(n^2) of n nested two-term sums each flattened again.
    """
    return inline_all(derivation, [expr])[0]


@one_pass
def inline_all(derivation: Derivation, exprs: list, known: dict | None = None) -> list:
    """:func:`inline` of several expressions of one program in one walk: the pieces they
    share are rebuilt once, and the cost is that of the program, not of the program times
    the number of expressions (one gradient per input of a model with 1,000 inputs).

    ``known`` maps names of the program to what they stand for, already inlined (a value
    of the model as the user wrote it): they are not rebuilt."""
    definitions = dict(derivation.assignments)

    def plain_children(e) -> list:
        if e in definitions:
            return [definitions[e]]
        if isinstance(e, ops.Map):
            return list(e.operands)
        if isinstance(e, sp.Basic) and e.args and not isinstance(e, (sp.MatrixSymbol,
                                                                     sp.Lambda)):
            return [a for a in e.args if isinstance(a, sp.Basic)]
        return []

    memo: dict = dict(known or {})
    uses: dict = {}
    seen: set = set()
    stack = list(exprs)
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.add(e)
        if e in memo:
            # a known value is not rebuilt: what it is made of needs no count (a link used
            # here and under it counts once, and is then merged into the sum or product
            # that uses it, which SymPy's flattening gives the same expression)
            continue
        for child in plain_children(e):
            uses[child] = uses.get(child, 0) + 1
            stack.append(child)

    def terms(e) -> list:
        """The operands of an n-ary sum or product, through inner links used only here."""
        out, pending = [], list(reversed(e.args))
        while pending:
            a = pending.pop()
            link = a
            while link in definitions and uses.get(link, 0) == 1:
                link = definitions[link]
            if type(link) is type(e) and uses.get(link, 0) == 1 and (link is a or
                                                                   uses.get(a, 0) == 1):
                pending.extend(reversed(link.args))
            else:
                out.append(a)
        return out

    def children(e) -> list:
        if isinstance(e, (sp.Add, sp.Mul)) and e not in definitions:
            return terms(e)
        return plain_children(e)

    stack = [(expr, None) for expr in reversed(exprs)]
    while stack:
        e, kids = stack.pop()
        if e in memo:
            continue
        if kids is None:
            kids = children(e)
            stack.append((e, kids))
            stack.extend((k, None) for k in kids if k not in memo)
            continue
        values = [memo[k] for k in kids]
        if e in definitions:
            result = values[0]
        elif isinstance(e, ops.Map):
            result = ops.Map(e.function, e.shape, *values)
        elif type(e) is sp.Add:
            result = add(*values)
        elif type(e) is sp.Mul:
            result = mul(*values)
        elif isinstance(e, (sp.Add, sp.Mul)):
            result = e.func(*values)
        elif type(e) is sp.Pow and isinstance(values[0], sp.Piecewise):
            result = power_of_piecewise(*values)
        elif isinstance(e, (sp.Piecewise, ExprCondPair)):
            result = piecewise_unfolded(type(e), values)
        elif (isinstance(e, sp.Function) and values
              and not any(v.is_number for v in values if isinstance(v, sp.Basic))):
            # the function of an inlined argument: SymPy's automatic simplification of it
            # (signs, multiples of pi) costs about a millisecond per call, and the argument
            # was a value of the model, already in SymPy's form
            result = function_of(e.func, values)
        elif values:
            it = iter(values)
            args = [next(it) if isinstance(a, sp.Basic) else a for a in e.args]
            result = built(e.func, args)
            if isinstance(e, sp.Function) and not_a_real_number(result) \
                    and not any(not_a_real_number(a) for a in values):
                # a function of a real number that SymPy folded into no real number
                # (the log(base) of d(base**e)/de at a negative base: i pi + ...)
                result = numpy_number(e.func(*args, evaluate=False))
        else:
            result = e
        memo[e] = result
    return [memo[expr] for expr in exprs]


# ------------------------------------------------------------------------------------------
# Partial derivatives of a scalar body (used by the Map rule)
# ------------------------------------------------------------------------------------------
_PARTIALS_CACHE: dict = {}


def scalar_partials(body: sp.Expr, variables) -> list:
    """The partial derivatives of a scalar body with respect to each variable, by the same
    rules, as expressions in the variables and in ``_y`` (the body's own value, so that a
    sigmoid's derivative reads y (1 - y) and reuses the forward value).
    """
    key = (body, tuple(variables))
    if key in _PARTIALS_CACHE:
        return _PARTIALS_CACHE[key]
    derivation = derive(body, list(variables))
    y = MAP_OUTPUT
    partials = []
    for v in variables:
        partial = inline(derivation, derivation.gradients[v])
        if body.atoms(sp.Function) and not body.is_Symbol:
            partial = replaced(partial, {body: y})
        partials.append(_smallest(partial))
    _PARTIALS_CACHE[key] = partials
    return partials


MAP_OUTPUT = sp.Symbol("_y", real=True)


def _smallest(e: sp.Expr) -> sp.Expr:
    """The shortest of a few equivalent forms (cancellations such as the cross-entropy's
    y (1 - s) - (1 - y) s = y - s appear only after expanding); a formula too large to
    expand cheaply is kept as it is."""
    if not small_enough_to_expand(e):
        return e
    candidates = [e]
    kept = held(e)     # (expand and replace would let a Piecewise rewrite its conditions)
    try:
        candidates.append(released(sp.expand(kept)))
        flipped = kept.replace(lambda t: isinstance(t, ops.sigmoid) and _is_negated(t.args[0]),
                               lambda t: 1 - ops.sigmoid(-t.args[0]))
        if flipped != kept:
            candidates.append(released(sp.expand(flipped)))
    except (TypeError, ValueError, AttributeError, RecursionError):
        pass
    return min(candidates, key=lambda c: (sp.count_ops(c), candidates.index(c)))


# Expanding a formula to find a shorter form is worth it on small formulas only: the product
# of n sums expands to 2^n terms.  Larger formulas are printed as they are.
EXPAND_MAX_NODES = 120
EXPAND_MAX_TERMS = 64


def small_enough_to_expand(e) -> bool:
    """Whether ``sympy.expand(e)`` is cheap: e has at most EXPAND_MAX_NODES nodes (counted
    without walking further) and expands to at most EXPAND_MAX_TERMS terms.

    >>> a, b, c = sp.symbols("a b c")
    >>> small_enough_to_expand((a + b) * (b + c)), small_enough_to_expand(sp.Mul(*[
    ...     sp.sin(sp.Symbol(f"x{i}")) + 2 for i in range(8)]))
    (True, False)
    """
    if not isinstance(e, sp.Basic):
        return True
    count, stack = 0, [e]
    while stack:
        node = stack.pop()
        count += 1
        if count > EXPAND_MAX_NODES:
            return False
        stack.extend(a for a in node.args if isinstance(a, sp.Basic))
    return _expanded_terms(e) <= EXPAND_MAX_TERMS


def _expanded_terms(e) -> int:
    """An upper estimate of the number of terms of sympy.expand(e) (e is small)."""
    if isinstance(e, sp.Add):
        return sum(_expanded_terms(a) for a in e.args)
    if isinstance(e, sp.Mul):
        out = 1
        for a in e.args:
            out *= _expanded_terms(a)
        return out
    if isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp > 1:
        return _expanded_terms(e.base) ** min(int(e.exp), 16)
    return 1


def _is_negated(e) -> bool:
    return e.could_extract_minus_sign()


__all__ = ["Derivation", "Walk", "derive", "inline", "inline_all", "scalar_partials", "rebuild",
           "is_leaf", "MAP_OUTPUT", "small_enough_to_expand"]


# ------------------------------------------------------------------------------------------
# The Map rule: reverse mode on the Map's scalar body
# ------------------------------------------------------------------------------------------
def map_rule(g, y, *operands, node):
    """d operand_k = g o (d body / d a_k), reduced to the operand's shape if it broadcast;
    the partials come from the same rules, run on the scalar body (scalar_partials)."""
    variables = node.function.variables
    partials = scalar_partials(node.body, variables)
    shape = node.shape
    result = []
    for operand, partial in zip(operands, partials):
        if partial == 0:
            result.append(None)
            continue

        def body_of(gv, *rest, partial=partial):
            *v, yv = rest
            return gv * replaced(partial, {**dict(zip(variables, v)), MAP_OUTPUT: yv})

        adjoint = rules._map(body_of, shape, g, *operands, y)
        operand_shape = tuple(operand.shape) if hasattr(operand, "shape") else ()
        result.append(rules._reduce_to(adjoint, operand_shape, shape))
    return tuple(result)


rules.RULES[ops.Map] = map_rule
