"""The VJP rule table: how each node type sends its upstream gradient to its inputs.

A rule is called as ``rule(g, y, *x, node=node)``: ``g`` is the upstream gradient (the adjoint
of the node's output, with the output's shape), ``y`` the node's output and ``x`` its inputs,
all as SymPy symbols of the program; ``node`` is the canonical node itself, for the few rules
that need its parameters (an axis, an index).  It returns one adjoint contribution per input
(``None`` for an input that gets none).  Rules build SymPy expressions, so each rule is also
its own documentation: ``symgrad show`` prints what it built.

Matrix operations (softmax, logsumexp, logdet ...) take their rules from their files in
symgrad/operations/.  Elementwise functions (exp, sigmoid, a user's own ...) take their rules
from their rows in symgrad/functions.py, whose derivatives use the output where that is
cheaper (exp: y, tanh: 1 - y^2, sigmoid: y (1 - y)), so the backward pass reuses forward
values.

Rule for Max and Min: the upstream gradient goes to the inputs equal to the output; where
two or more are equal, each receives its share (the convention of JAX and PyTorch; a sum of
the two halves is the true one-sided average), and where the output is NaN none gets any
(as JAX).

The Map rule runs reverse mode on the Map's scalar body, so it lives with reverse mode
(symgrad/derive/reverse.py adds it to this table).

Add a rule with :func:`register_rule`.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement

from symgrad import functions, operations, ops
from symgrad.nodes import assumptions_key, function_of, mul, times

Rule = Callable[..., tuple]

_half = sp.Rational(1, 2)


def _map(body_of, shape, *operands):
    """Map(Lambda(v, body_of(*v)), shape, *operands), variables named after nothing else."""
    variables = ops.map_variables(len(operands), [f"_r{k}" for k in range(len(operands))])
    return ops.Map(sp.Lambda(variables, body_of(*variables)), shape, *operands)


def _broadcast(g, shape):
    """The scalar or vector g repeated over a matrix of the given shape."""
    return _map(lambda a: a, shape, g)


def _reduce_to(adjoint, operand_shape, shape):
    """Sum a Map-shaped adjoint back to the shape of a broadcast operand."""
    if not operand_shape:
        return ops.SumAll(adjoint)
    rows, cols = operand_shape
    if rows == shape[0] and cols == shape[1]:
        return adjoint
    if rows == 1 and cols == 1:
        return _map(lambda a: a, (1, 1), ops.SumAll(adjoint))
    if rows == 1:
        return ops.AxisSum(adjoint, 0)
    return ops.AxisSum(adjoint, 1)


def _piecewise_rule(g, y, *x, node):
    """Each branch's value gets the gradient where its condition selects it; the operands of
    the conditions get none (the derivative of a comparison is zero almost everywhere).
    Children are, per branch, the value then the condition's operands."""
    contributions = []
    for k, (_, condition) in enumerate(node.args):
        contributions.append(sp.Piecewise(*[(g if i == k else sp.S.Zero, c)
                                            for i, (_, c) in enumerate(node.args)]))
        if not isinstance(condition, sp.logic.boolalg.BooleanAtom):
            contributions.extend([None] * len(condition.args))
    return tuple(contributions)


def _route(g, y, inputs, sign):
    """Max (sign 1) and Min (sign -1): the gradient goes to the inputs equal to the output,
    split evenly between them (a tie), as JAX routes it, whatever the order of the inputs.
    Where the output is NaN no input equals it and none gets any (JAX gives max(1, nan) the
    gradient (0, 0)); two infinities of one sign are a tie.

    >>> a, b, g = sp.symbols("a b g")
    >>> _route(g, sp.Max(a, b), (a, b), 1)[0]
    g*Piecewise((1, a > b), (1/2, Eq(a, b)), (0, True))
    """
    if len(inputs) == 2:
        a, b = inputs

        def share(x, other):
            beats = x > other if sign > 0 else x < other
            return times(g, sp.Piecewise((1, beats), (_half, ops.Equal(a, b)), (0, True)))
        return (share(a, b), share(b, a))
    count = sp.Add(*[sp.Piecewise((1, ops.Equal(x, y)), (0, True)) for x in inputs])
    # (the division stands in the branch where x is the output, so count >= 1 there)
    return tuple(times(g, sp.Piecewise((1 / count, ops.Equal(x, y)), (0, True)))
                 for x in inputs)


def _pow_rule(g, y, base, exponent, **_):
    if exponent.is_number:
        if exponent == _half:
            return (g / (2 * y), None)
        if exponent == -1:
            return (times(-g, y**2), None)
        return (times(times(g, exponent), base ** (exponent - 1)), None)
    return (times(times(g, exponent), base ** (exponent - 1)),
            times(times(g, y), _log_of_base(base)))


def _log_of_base(base):
    """log(base) in d(base**e)/de = base**e log(base), with 0 where the base is 0, as JAX
    takes it: 0**e is 0 for every e > 0, so its slope in e is 0 there (log(0) would make
    it 0 * -inf, NaN); at e = 0 it is 0 too, and NaN where e < 0 (inf * 0).  A base that is
    not zero (a positive symbol, a number) keeps its plain log.  A negative number's log is
    NaN, as NumPy's and JAX's (SymPy's is complex, log(-1) = i pi, no real number):
    (-1)**e is NaN for every e but the integers, where it has no slope in e.

    >>> _log_of_base(sp.Symbol("x")), _log_of_base(sp.Symbol("p", positive=True))
    (Piecewise((log(x), Ne(x, 0)), (0, True)), log(p))
    >>> _log_of_base(sp.Integer(-1)), _log_of_base(sp.Integer(2))
    (nan, log(2))
    """
    if base.is_number and base.is_extended_negative:
        return sp.nan
    return sp.Piecewise((sp.log(base), sp.Ne(base, 0)), (0, True))


def _mul_rule(g, y, *x, wanted=None, **_):
    """Each factor gets g times the product of the others.  ``wanted`` (from reverse mode),
    when given, says which factors need an adjoint: the others (a constant such as the 100
    of 100 (x - y)^2) get None, and their products are never built.

    >>> a, b, g = sp.symbols("a b g")
    >>> _mul_rule(g, a * b, a, b), _mul_rule(g, 2 * b, sp.Integer(2), b, wanted=(False, True))
    ((b*g, a*g), (None, 2*g))
    """
    return tuple(times(g, mul(*x[:i], *x[i + 1:])) if wanted is None or wanted[i] else None
                 for i in range(len(x)))


_mul_rule.takes_wanted = True    # reverse mode passes ``wanted`` to the rules that say so


def _matrix_element_rule(g, y, parent, **kw):
    node = kw["node"]
    shape = node.parent.shape
    if shape[0] == 1 and shape[1] == 1:
        return (_broadcast(g, (1, 1)),)
    return (operations.scatter.adjoint_of_entry(g, node.i, node.j, shape),)


# One line per node type: rule(g, y, *inputs) -> adjoint of each input.
RULES: dict[type, Rule] = {
    # scalar arithmetic
    sp.Add:   lambda g, y, *x, **_: (g,) * len(x),
    sp.Mul:   _mul_rule,
    sp.Pow:   _pow_rule,
    sp.Heaviside: lambda g, y, *x, **_: (None,) * len(x),
    sp.Max:   lambda g, y, *x, **_: _route(g, y, x, sign=1),
    sp.Min:   lambda g, y, *x, **_: _route(g, y, x, sign=-1),
    sp.Piecewise: _piecewise_rule,
    # matrices
    sp.MatMul:       lambda g, y, a, b, **_: (g @ b.T, a.T @ g),
    sp.Transpose:    lambda g, y, a, **_: (g.T,),
    MatrixElement:   _matrix_element_rule,
}


# the matrix operations of symgrad/operations/ bring their own
RULES.update({operation.node: operation.vjp for operation in operations.OPERATIONS.values()})


# (derivative, x's and y's assumptions) -> (function, where x goes in its args) or None
_PROBED: dict = {}


def _slope(derivative, x, y):
    """``derivative(x, y)``; where that is a function of the name x alone (the cos(x) of sin,
    the Heaviside(x, 0) of relu), built without SymPy's eval, whose search for signs and
    multiples of pi costs more than the rest of the rule and finds nothing.

    That it finds nothing is not assumed: the derivative is first taken at probe symbols of
    x's and y's assumptions, once per derivative and assumptions.  A function's eval sees
    of a symbol only its assumptions (never its name), so where it left the function of
    the probe as it was, it leaves the function of x as it is too.

    >>> x, y = sp.symbols("_t1 _t2", real=True)
    >>> _slope(lambda x, y: sp.cos(x), x, y), _slope(lambda x, y: sp.Abs(x), sp.Symbol("p",
    ...                                                                    positive=True), y)
    (cos(_t1), p)
    """
    if type(x) is not sp.Symbol or type(y) is not sp.Symbol or x == y:
        return derivative(x, y)
    key = (derivative, assumptions_key(x), assumptions_key(y))
    try:
        probed = _PROBED[key]
    except KeyError:
        probed = _PROBED[key] = _probe(derivative, x, y)
    if probed is None:
        return derivative(x, y)
    func, args = probed
    return function_of(func, [x if a is None else a for a in args])


def _probe(derivative, x, y):
    """(function, args with None where x goes) if the derivative at probe symbols of x's and
    y's assumptions is a function of the x probe and of numbers, else None."""
    px = sp.Symbol("_symgrad_probe_x", **x.assumptions0)
    py = sp.Symbol("_symgrad_probe_y", **y.assumptions0)
    slope = derivative(px, py)
    if not isinstance(slope, sp.Function) or list(slope.args).count(px) != 1:
        return None
    if not all(a == px or (isinstance(a, sp.Number) and a.is_Atom) for a in slope.args):
        return None
    return type(slope), tuple(None if a == px else a for a in slope.args)


def elementwise_rule(row: functions.Elementwise) -> Rule:
    """The rule of an elementwise function: g times its row's derivative (None where that is
    zero, as for sign)."""
    def rule(g, y, x, **_):
        slope = _slope(row.derivative, x, y)
        return (None,) if slope == 0 else (times(g, slope),)

    rule.__qualname__ = f"elementwise_rule[{row.name}]"
    return rule


RULES.update({row.node: elementwise_rule(row) for row in functions.ROWS.values()
              if row.node is not None})
# a row added later (sg.elementwise) brings its rule too
functions.on_register(lambda row: RULES.__setitem__(row.node, elementwise_rule(row)))


def register_rule(node_type: type, rule: Rule) -> None:
    """Add (or replace) the VJP rule of a node type.

    ``rule(g, y, *inputs, node=node)`` returns the adjoint of each input as a SymPy
    expression in ``g`` (upstream gradient), ``y`` (the node's output) and the inputs.

    >>> import sympy as sp
    >>> class twice(sp.Function):        # (a class of its own: SymPy's keep their rules)
    ...     pass
    >>> register_rule(twice, lambda g, y, x, **_: (2 * g,))
    >>> rule_for(twice(sp.Symbol("x")))(sp.Symbol("g"), None, sp.Symbol("x"))
    (2*g,)
    """
    if not isinstance(node_type, type):
        raise TypeError(f"register_rule needs a SymPy node class, got {node_type!r}")
    RULES[node_type] = rule


def rule_for(node) -> Rule:
    """The rule of a node, looked up by its class (then its bases)."""
    for cls in type(node).__mro__:
        if cls in RULES:
            return RULES[cls]
    kind = type(node).__name__
    raise NotImplementedError(
        f"symgrad has no differentiation rule for {kind} (in {node}). Add one with "
        f"symgrad.register_rule({kind}, lambda g, y, *inputs, **_: (...)) returning one "
        "adjoint per input, or rewrite the model with supported operations "
        f"(supported: {', '.join(sorted(c.__name__ for c in RULES))}).")
