"""Random models for the tests: scalar expressions and matrix expressions built from the
operations symgrad supports, with every choice drawn through a *drawer*.

A drawer has two methods: ``choose(options)`` returns one of a sequence of options, and
``reject()`` drops the model being drawn (SymPy folded it into an unusable number, or could
not build it).  Two drawers exist, so one generator serves both kinds of test:

- ``HypothesisDrawer(draw)``, inside a ``@st.composite`` strategy: Hypothesis shrinks a
  failing model to a minimal one (options are listed simplest first, since Hypothesis
  shrinks ``sampled_from`` towards the first);
- ``SeededDrawer(seed)``, over ``random.Random``: a fixed list of models for seeded tests,
  without Hypothesis; ``drawer.first(build, ...)`` draws again until a model is accepted.

``guarded=True`` (the default) applies functions of restricted domain only where their
arguments are in it (the log of softplus(.) + 1/10, of a^2 + 1 or of exp(./4) + 1/2; asin
of tanh(.)/2 ...), for comparisons of gradients at random points.  ``guarded=False`` applies
the same functions to their raw arguments (logs and square roots of negative numbers,
divisions by zero, negative bases): for tests of what symgrad computes outside the domains.

>>> import sympy as sp
>>> x, y = sp.symbols("x y")
>>> expr = SeededDrawer(3).first(scalar_model, [x, y])
>>> expr.free_symbols <= {x, y} and bool(expr.free_symbols)
True
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import NoReturn, Protocol, TypeVar

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement

import symgrad as sg
from symgrad import ops

T = TypeVar("T")


# ------------------------------------------------------------------------------------------
# Drawers
# ------------------------------------------------------------------------------------------
class Drawer(Protocol):
    def choose(self, options: Sequence[T]) -> T: ...

    def reject(self) -> NoReturn: ...


class HypothesisDrawer:
    """Choices drawn by Hypothesis, inside a composite strategy: ``HypothesisDrawer(draw)``."""

    def __init__(self, draw):
        self.draw = draw

    def choose(self, options):
        from hypothesis import strategies as st

        return self.draw(st.sampled_from(options))

    def reject(self):
        from hypothesis import reject

        reject()


class Rejected(Exception):
    """A seeded draw gave an unusable model: draw another."""


class SeededDrawer:
    """Choices drawn by ``random.Random(seed)``: the same models on every run.

    >>> SeededDrawer(0).choose(["a", "b", "c"]) == SeededDrawer(0).choose(["a", "b", "c"])
    True
    """

    def __init__(self, seed):
        self.rng = random.Random(seed)

    def choose(self, options):
        return self.rng.choice(options)

    def reject(self):
        raise Rejected

    def first(self, build: Callable[..., T], *args, **kwargs) -> T:
        """``build(self, *args, **kwargs)``, drawn again (further along the same seeded
        stream) until no draw is rejected."""
        for _ in range(1000):
            try:
                return build(self, *args, **kwargs)
            except Rejected:
                continue
        raise RuntimeError(f"{build.__name__} rejected 1000 draws in a row")


# ------------------------------------------------------------------------------------------
# Scalar expressions
# ------------------------------------------------------------------------------------------
TENTH = sp.Rational(1, 10)
HALF = sp.Rational(1, 2)

# Leaves: a variable, a constant, or an affine function of a variable.
CONSTANTS = [sp.Integer(2), sp.Integer(3), HALF, sp.Integer(-1), sp.Rational(3, 2),
             sp.Float(0.7), -HALF]
COEFFICIENTS = [sp.Integer(2), sp.Integer(-1), HALF]
OFFSETS = [sp.Integer(0), sp.Integer(1), sp.Float(-0.5)]

# Functions of one argument; b is the builder, whose positive() and bounded() guard a domain
# when the builder is guarded and pass the argument through when it is not.
UNARY: dict[str, Callable] = {
    "sin": lambda b, a: sp.sin(a), "cos": lambda b, a: sp.cos(a),
    "tanh": lambda b, a: sp.tanh(a), "atan": lambda b, a: sp.atan(a),
    "erf": lambda b, a: sp.erf(a), "exp": lambda b, a: sp.exp(a),
    "sinh": lambda b, a: sp.sinh(a), "cosh": lambda b, a: sp.cosh(a),
    "sigmoid": lambda b, a: ops.sigmoid(a), "softplus": lambda b, a: ops.softplus(a),
    "logsigmoid": lambda b, a: ops.logsigmoid(a), "relu": lambda b, a: ops.relu(a),
    "abs": lambda b, a: sp.Abs(a), "square": lambda b, a: a**2, "cube": lambda b, a: a**3,
    "neg": lambda b, a: -a, "half": lambda b, a: a / 2,
    # restricted domains
    "log": lambda b, a: sp.log(b.positive(a)),
    "log1p": lambda b, a: ops.log1p(b.positive(a)),
    "sqrt": lambda b, a: sp.sqrt(b.positive(a)),
    "reciprocal": lambda b, a: 1 / b.positive(a),
    "power": lambda b, a: b.positive(a) ** b.choose([sp.Rational(3, 2), sp.Integer(-2),
                                                     sp.Rational(-1, 2)]),
    "asin": lambda b, a: sp.asin(b.bounded(a)),
    "acos": lambda b, a: sp.acos(b.bounded(a)),
    "tan": lambda b, a: sp.tan(b.bounded(a)),
    # forms that symgrad stabilizes: log(exp(a)) to a, log(1 + exp(a)) to softplus(a) ...
    "log_exp": lambda b, a: sp.log(sp.exp(a)),
    "log_one_plus_exp": lambda b, a: sp.log(1 + sp.exp(a)),
    "log_sigmoid_textbook": lambda b, a: sp.log(1 / (1 + sp.exp(-a))),
    "log_one_minus_sigmoid": lambda b, a: sp.log(1 - ops.sigmoid(a)),
}

# Functions of two arguments.
BINARY: dict[str, Callable] = {
    "add": lambda b, x, y: x + y, "sub": lambda b, x, y: x - y, "mul": lambda b, x, y: x * y,
    "div": lambda b, x, y: x / b.positive(y),
    "max": lambda b, x, y: sp.Max(x, y), "min": lambda b, x, y: sp.Min(x, y),
    "heaviside": lambda b, x, y: sp.Heaviside(x) * y,
    "heaviside0": lambda b, x, y: sp.Heaviside(x, 0) * y,
    "sign": lambda b, x, y: sp.sign(x) * y,
    "piecewise": lambda b, x, y: sp.Piecewise((x, y > 0), (y, True)),
    # a condition SymPy keeps as written, even where it could decide it
    "piecewise_unevaluated": lambda b, x, y: sp.Piecewise(
        (x * y, sp.StrictGreaterThan(x, y + 1, evaluate=False)), (x + y, True),
        evaluate=False),
    "power": lambda b, x, y: b.positive(x) ** (sp.tanh(y) if b.guarded else y),
}

# Functions of three arguments.
TERNARY: dict[str, Callable] = {
    "max3": lambda b, x, y, z: sp.Max(x, y, z), "min3": lambda b, x, y, z: sp.Min(x, y, z),
    "piecewise3": lambda b, x, y, z: sp.Piecewise((x, y > z), (z, y < -1), (y, True)),
    "piecewise_and": lambda b, x, y, z: sp.Piecewise((x * y, sp.And(y > 0, z < 1)),
                                                     (z, True)),
}
FUNCTIONS = {1: UNARY, 2: BINARY, 3: TERNARY}


class ScalarBuilder:
    """Random scalar expressions of ``variables``, every choice drawn by ``drawer``.

    >>> x = sp.Symbol("x")
    >>> ScalarBuilder(SeededDrawer(1), [x]).expression(depth=0) != 0
    True
    """

    def __init__(self, drawer: Drawer, variables: Sequence[sp.Symbol], guarded: bool = True):
        self.drawer = drawer
        self.choose = drawer.choose
        self.variables = list(variables)
        self.guarded = guarded

    def expression(self, depth: int = 3):
        """An expression at most ``depth`` functions deep."""
        if depth == 0 or self.choose([True, False, False, False]):
            return self.leaf()
        arity = self.choose([1, 1, 2, 2, 3])
        return self.apply(arity, [self.expression(depth - 1) for _ in range(arity)])

    def leaf(self):
        kind = self.choose(["variable", "variable", "variable", "constant", "affine"])
        if kind == "constant":
            return self.choose(CONSTANTS)
        variable = self.choose(self.variables)
        if kind == "affine":
            return variable * self.choose(COEFFICIENTS) + self.choose(OFFSETS)
        return variable

    def apply(self, arity: int, args: list):
        """A random function of ``arity`` arguments applied to ``args``."""
        table = FUNCTIONS[arity]
        expr = table[self.choose(sorted(table))](self, *args)
        if expr.is_number:
            try:
                value = complex(expr)
            except (TypeError, ValueError):     # zoo, or a Piecewise SymPy cannot decide
                self.drawer.reject()
            # functions of constants fold into numbers like sinh(sinh(3)) = 1.6e4, and a
            # model made of those can be too ill-conditioned for any float64 evaluation to
            # agree; unguarded ones fold into log(-1) = i pi or 1/0 = zoo, not real models
            if not abs(value) <= 100 or value.imag:
                self.drawer.reject()
        return expr

    def positive(self, a):
        """a made positive when guarded (the argument of a log, a square root, a divisor)."""
        if not self.guarded:
            return a
        kind = self.choose(["softplus", "square", "exp"])
        if kind == "softplus":
            return ops.softplus(a) + TENTH
        if kind == "square":
            return a**2 + 1
        return sp.exp(a / 4) + HALF

    def bounded(self, a):
        """a brought into (-1, 1) when guarded (the argument of asin, acos, tan)."""
        if not self.guarded:
            return a
        return sp.tanh(a) * self.choose([HALF, sp.Rational(9, 10)])


def complex_parts(expr) -> bool:
    """Whether the model holds a complex number, or re() or im() that SymPy's own rewriting
    (of tanh of a power, say) put in: symbols are complex to SymPy, but symgrad's models
    are real and have no rule for them."""
    return bool(expr.atoms(sp.re, sp.im)) or expr.has(sp.I, sp.zoo, sp.nan)


def scalar_model(drawer: Drawer, variables: Sequence[sp.Symbol], depth: int = 3,
                 guarded: bool = True):
    """A random scalar model of some of ``variables``, never a constant.

    >>> x, y = sp.symbols("x y")
    >>> bool(SeededDrawer(5).first(scalar_model, [x, y], guarded=False).free_symbols)
    True
    """
    try:
        expr = ScalarBuilder(drawer, variables, guarded).expression(depth)
    except (RecursionError, TypeError, ValueError):
        drawer.reject()     # SymPy's own simplification of some nested Max/Min gives up
    if not expr.free_symbols or complex_parts(expr):
        drawer.reject()
    return expr


def some_of(drawer: Drawer, inputs: Sequence) -> list:
    """Some of ``inputs`` (all of them where the draw picks none), to differentiate."""
    return [s for s in inputs if drawer.choose([False, True])] or list(inputs)


# ------------------------------------------------------------------------------------------
# Matrix expressions
# ------------------------------------------------------------------------------------------
N, M = sp.symbols("n m", integer=True, positive=True)
ELEMENTWISE = ["sigmoid", "tanh", "sin", "cos", "softplus", "logsigmoid", "relu", "abs",
               "square", "exp"]


class MatrixBuilder:
    """Random matrix expressions over a pool of matrix symbols of the dimensions (r, c),
    and scalars made of them.

    >>> A = MatrixBuilder(SeededDrawer(0), 2, 3).matrix((2, 3), depth=0)
    >>> A.shape
    (2, 3)
    """

    def __init__(self, drawer: Drawer, rows, cols):
        self.drawer = drawer
        self.choose = drawer.choose
        self.dims = (rows, cols)
        self.symbols = {
            (rows, cols): sp.MatrixSymbol("A", rows, cols),
            (cols, rows): sp.MatrixSymbol("B", cols, rows),
            (rows, rows): sp.MatrixSymbol("C", rows, rows),
            (cols, cols): sp.MatrixSymbol("D", cols, cols),
            (rows, 1): sp.MatrixSymbol("u", rows, 1),
            (cols, 1): sp.MatrixSymbol("v", cols, 1),
            (1, cols): sp.MatrixSymbol("r", 1, cols),
        }
        self.scale = sp.Symbol("s")
        self.names = 0
        self.arguments = sp.symbols("a0 a1")        # of the bodies of Maps
        self.scalars = ScalarBuilder(drawer, self.arguments)

    def leaf(self, shape):
        if shape in self.symbols:
            return self.symbols[shape]
        if (shape[1], shape[0]) in self.symbols:
            return self.symbols[(shape[1], shape[0])].T
        return sg.broadcast(self.scale, shape)

    def inner(self, shape):
        """The inner dimension of a product or reduction giving shape: never one where that
        would make a 1 x 1 factor (SymPy turns products of those into explicit sums)."""
        return self.choose([self.dims[0], self.dims[1]] + ([] if 1 in shape else [1]))

    def matrix(self, shape, depth):
        rows, cols = shape
        kinds = ["leaf"]
        if depth > 0:
            kinds += ["function", "map", "add", "sub", "hadamard", "scale", "matmul",
                      "transpose", "named", "softmax", "ones"]
            if cols == 1:
                kinds += ["row_sums", "row_logsumexp", "row_means"]
            if rows == 1:
                kinds += ["column_sums", "column_logsumexp"]
            if shape != (1, 1):
                kinds += ["broadcast"]
            if rows == cols:
                kinds += ["inverse"]
        kind = self.choose(kinds)
        sub = depth - 1
        if kind == "leaf":
            return self.leaf(shape)
        if kind == "function":
            return getattr(sg, self.choose(ELEMENTWISE))(self.matrix(shape, sub))
        if kind == "map":
            body = self.scalars.expression(depth=2)
            other = self.choose(["column", "row", "scalar", "full"])
            second = {"column": lambda: self.matrix((rows, 1), sub),
                      "row": lambda: self.matrix((1, cols), sub),
                      "scalar": lambda: self.scalar(sub),
                      "full": lambda: self.matrix(shape, sub)}[other]()
            return ops.Map(sp.Lambda(self.arguments, body), shape, self.matrix(shape, sub),
                           second)
        if kind == "add":
            return self.matrix(shape, sub) + self.matrix(shape, sub)
        if kind == "sub":
            return self.matrix(shape, sub) - self.matrix(shape, sub)
        if kind == "hadamard":
            return sg.hadamard(self.matrix(shape, sub), self.matrix(shape, sub))
        if kind == "scale":
            factor = self.scale if self.choose([False, True]) else self.scalar(sub)
            if factor.is_commutative and self.choose([False, True]):
                return factor * self.matrix(shape, sub)
            a0, a1 = self.arguments    # the same product, as a Map
            return ops.Map(sp.Lambda((a0, a1), a0 * a1), shape, factor, self.matrix(shape, sub))
        if kind == "matmul":
            k = self.inner(shape)
            return self.matrix((rows, k), sub) @ self.matrix((k, cols), sub)
        if kind == "transpose":
            return self.matrix((cols, rows), sub).T
        if kind == "named":
            self.names += 1
            return sg.name(f"Z{self.names}", self.matrix(shape, sub))
        if kind == "softmax":
            return sg.softmax(self.matrix(shape, sub), axis=self.choose([0, 1, None]))
        if kind == "ones":
            k = self.inner(shape)
            return self.matrix((rows, k), sub) @ sp.OneMatrix(k, cols)
        if kind == "row_sums":
            return sg.sum(self.matrix((rows, self.inner(shape)), sub), axis=1)
        if kind == "row_means":
            return sg.mean(self.matrix((rows, self.inner(shape)), sub), axis=1)
        if kind == "row_logsumexp":
            return sg.logsumexp(self.matrix((rows, self.inner(shape)), sub), axis=1)
        if kind == "column_sums":
            return sg.sum(self.matrix((self.inner(shape), cols), sub), axis=0)
        if kind == "column_logsumexp":
            return sg.logsumexp(self.matrix((self.inner(shape), cols), sub), axis=0)
        if kind == "broadcast":
            source = self.choose(["column", "row", "scalar"])
            operand = {"column": lambda: self.matrix((rows, 1), sub),
                       "row": lambda: self.matrix((1, cols), sub),
                       "scalar": lambda: self.scale}[source]()
            return sg.broadcast(operand, shape)
        if kind == "inverse":
            X = self.matrix((rows, self.inner(shape)), sub)
            return sg.inv(X @ X.T + sp.Identity(rows))    # well conditioned
        raise AssertionError(kind)

    def scalar(self, depth):
        """A scalar made of matrices: a reduction, maybe inside a scalar function."""
        kind = self.choose(["sum", "mean", "dot", "logsumexp", "trace", "logdet", "det",
                            "element", "function", "combine"] if depth > 0 else
                           ["sum", "dot", "element"])
        sub = max(depth - 1, 0)
        rows, cols = self.dims
        if kind == "sum":
            return sg.sum(self.matrix(self.choose(list(self.symbols)), sub))
        if kind == "mean":
            return sg.mean(self.matrix(self.choose(list(self.symbols)), sub))
        if kind == "dot":
            k = self.choose([rows, cols])
            return sg.dot(self.matrix((k, 1), sub), self.matrix((k, 1), sub))
        if kind == "logsumexp":
            return sg.logsumexp(self.matrix(self.choose(list(self.symbols)), sub))
        if kind == "trace":
            k = self.choose([rows, cols])
            return sg.trace(self.matrix((k, k), sub))
        if kind in ("logdet", "det"):
            k = self.choose([rows, cols])
            X = self.matrix((k, self.inner((k, k))), sub)
            spd = X @ X.T + sp.Identity(k)     # positive determinant, well conditioned
            return sg.logdet(spd) if kind == "logdet" else sg.det(spd)
        if kind == "element":
            shape = self.choose(list(self.symbols))
            i = self.choose([0, 1]) if shape[0] != 1 else 0
            j = self.choose([0, 1]) if shape[1] != 1 else 0
            return MatrixElement(self.matrix(shape, sub), i, j)
        if kind == "function":
            return self.scalars.apply(1, [self.scalar(sub)])
        return self.scalars.apply(2, [self.scalar(sub), self.scalar(sub)])


def matrix_model(drawer: Drawer):
    """A random scalar model of matrices of the dimensions 2 x 3, 3 x 2 or n x m."""
    rows, cols = drawer.choose([(2, 3), (3, 2), (N, M)])
    try:
        expr = MatrixBuilder(drawer, rows, cols).scalar(depth=3)
    except (TypeError, ValueError, NotImplementedError, AttributeError, RecursionError):
        # SymPy itself cannot build some combinations (Max of two reductions of matrices
        # fails in Max's simplification): not a model symgrad is given
        drawer.reject()
    if not parameters(expr) or complex_parts(expr):
        drawer.reject()
    return expr


def parameters(expr) -> list:
    """The inputs of a model: its symbols and matrix symbols, not its dimensions."""
    return sorted((s for s in expr.free_symbols
                   if isinstance(s, (sp.MatrixSymbol, sp.Symbol)) and s not in (N, M)),
                  key=lambda s: s.name)


# ------------------------------------------------------------------------------------------
# Hypothesis strategies: (model, the inputs to differentiate)
# ------------------------------------------------------------------------------------------
SCALARS = sp.symbols("x y z")


def scalar_models():
    """Hypothesis strategy: guarded random scalar models of x, y, z with some of their
    variables to differentiate."""
    from hypothesis import strategies as st

    @st.composite
    def models(draw):
        drawer = HypothesisDrawer(draw)
        expr = scalar_model(drawer, SCALARS)
        return expr, some_of(drawer, sorted(expr.free_symbols, key=lambda s: s.name))

    return models()


def matrix_models():
    """Hypothesis strategy: random matrix models with some of their inputs to differentiate."""
    from hypothesis import strategies as st

    @st.composite
    def models(draw):
        drawer = HypothesisDrawer(draw)
        expr = matrix_model(drawer)
        return expr, some_of(drawer, parameters(expr))

    return models()
