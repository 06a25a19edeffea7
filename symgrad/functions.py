"""Elementwise functions: one row of one table each, and ``sg.elementwise`` for the user's own.

A row says everything symgrad needs to know about a function of one real argument:

* ``build``: the scalar SymPy expression it makes of its argument (``sp.exp``,
  ``ops.sigmoid``; ``sqrt`` and ``square`` are powers), and ``node``, the SymPy class of that
  expression when the function is a node of its own (``None`` for the powers, which the
  rules of ``Pow`` cover);
* ``derivative(x, y)``: dy/dx, in terms of the argument ``x`` and of the output ``y`` where
  that is cheaper (exp: ``y``, tanh: ``1 - y**2``), so the backward pass reuses forward values;
* ``numba`` and ``python``: the code of the compiled kernels and of the pure-Python twin,
  ``{}`` standing for the argument (``sg_exp({})`` is the vectorisable exp of
  codegen/fastmath.py, ``_py_sigmoid({})`` a function of codegen/runtime.py);
* ``numpy``, ``jax``, ``torch``, ``autograd``: its code in each framework of ``sg.check``
  (``None``: the NumPy code with the framework's module names);
* ``latex``: the LaTeX name of symgrad's own functions (SymPy's classes print as SymPy
  prints them).

The machinery reads the table: the rule table (derive/rules.py), the code printers
(codegen/numba.py), the translators (check/translate.py) and the builders ``sg.sigmoid`` ...
(this module, exported by ``symgrad/__init__.py``) name no elementwise function.

A user's function is a row too, made by :func:`elementwise` from the expression that defines
it: its code in every target is that expression's code, so it compiles, fuses into loops and
translates to every framework with nothing else to write.

>>> import sympy as sp
>>> ROWS["tanh"].derivative(sp.Symbol("x"), sp.Symbol("y"))
1 - y**2
"""

from __future__ import annotations

import keyword
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp
from sympy.codegen.cfunctions import log1p
from sympy.matrices.expressions.matexpr import MatrixExpr

from symgrad import nodes, ops
from symgrad.nodes import held, released, replaced

__all__ = ["Elementwise", "ROWS", "FUNCTIONS", "row_of", "elementwise", "builder"]


@dataclass(frozen=True)
class Elementwise:
    """One elementwise function (see the module docstring for the fields)."""

    name: str
    build: Callable
    node: type | None
    derivative: Callable | None = None
    numba: str | None = None
    python: str | None = None
    numpy: str | None = None
    jax: str | None = None
    torch: str | None = None
    autograd: str | None = None
    latex: str | None = None
    value: Callable | None = None       # a user's function: the expression that defines it
    public: bool = True                 # sg.<name> exists

    @property
    def key(self) -> str:
        """The name the translators' ``functions`` tables use: the node's class name."""
        return self.node.__name__ if self.node is not None else self.name

    def code(self, target: str, argument: str) -> str | None:
        """The row's code for one target with the argument's code filled in, or None."""
        template = getattr(self, target)
        return None if template is None else template.format(argument)


def _zero(x, y):
    return sp.S.Zero


# The table.  Keep a row on one logical line of fields; a function with a fast kernel or a
# Python twin has it in codegen/fastmath.py or codegen/runtime.py (the generated modules copy
# the functions their code calls).
_TABLE = [
    Elementwise("sigmoid", ops.sigmoid, ops.sigmoid, lambda x, y: y * (1 - y),
                numba="sg_sigmoid({})", python="_py_sigmoid({})", numpy="special.expit({})",
                jax="jax.nn.sigmoid({})", torch="torch.sigmoid({})",
                latex=r"\operatorname{sigmoid}"),
    Elementwise("softplus", ops.softplus, ops.softplus, lambda x, y: ops.sigmoid(x),
                numba="sg_softplus({})", python="_py_softplus({})",
                numpy="np.logaddexp(0.0, {})", jax="jax.nn.softplus({})",
                torch="F.softplus({})", latex=r"\operatorname{softplus}"),
    Elementwise("logsigmoid", ops.logsigmoid, ops.logsigmoid, lambda x, y: ops.sigmoid(-x),
                numba="sg_logsigmoid({})", python="_py_logsigmoid({})",
                numpy="(-np.logaddexp(0.0, -{}))", jax="jax.nn.log_sigmoid({})",
                torch="F.logsigmoid({})", latex=r"\operatorname{logsigmoid}"),
    # relu takes 0 at 0 (so does its derivative); NaN stays NaN, as np.maximum, and its
    # derivative there is 0, as JAX's and as Max(x, 0)'s (ops.relu.fdiff)
    Elementwise("relu", ops.relu, ops.relu, lambda x, y: ops.relu_slope(x),
                numba="sg_max({}, 0.0)", python="_py_max({}, 0.0)",
                numpy="np.maximum({}, 0.0)", jax="jax.nn.relu({})", torch="torch.relu({})",
                # np.maximum(x, 0) would give autograd half the gradient at 0
                autograd="anp.where({0} > 0.0, {0}, 0.0)", latex=r"\operatorname{relu}"),
    Elementwise("exp", sp.exp, sp.exp, lambda x, y: y,
                numba="sg_exp({})", python="math.exp({})", numpy="np.exp({})"),
    Elementwise("log", sp.log, sp.log, lambda x, y: 1 / x,
                numba="sg_log({})", python="math.log({})", numpy="np.log({})"),
    Elementwise("log1p", log1p, log1p, lambda x, y: 1 / (1 + x),
                numba="sg_log1p({})", python="math.log1p({})", numpy="np.log1p({})"),
    Elementwise("tanh", sp.tanh, sp.tanh, lambda x, y: 1 - y**2,
                numba="sg_tanh({})", python="math.tanh({})", numpy="np.tanh({})"),
    Elementwise("sin", sp.sin, sp.sin, lambda x, y: sp.cos(x),
                numba="sg_sin({})", python="math.sin({})", numpy="np.sin({})"),
    Elementwise("cos", sp.cos, sp.cos, lambda x, y: -sp.sin(x),
                numba="sg_cos({})", python="math.cos({})", numpy="np.cos({})"),
    Elementwise("tan", sp.tan, sp.tan, lambda x, y: 1 + y**2,
                numba="np.tan({})", python="math.tan({})", numpy="np.tan({})"),
    Elementwise("sinh", sp.sinh, sp.sinh, lambda x, y: sp.cosh(x),
                numba="np.sinh({})", python="math.sinh({})", numpy="np.sinh({})"),
    Elementwise("cosh", sp.cosh, sp.cosh, lambda x, y: sp.sinh(x),
                numba="np.cosh({})", python="math.cosh({})", numpy="np.cosh({})"),
    Elementwise("atan", sp.atan, sp.atan, lambda x, y: 1 / (1 + x**2),
                numba="np.arctan({})", python="math.atan({})", numpy="np.arctan({})"),
    Elementwise("asin", sp.asin, sp.asin, lambda x, y: 1 / sp.sqrt(1 - x**2),
                numba="np.arcsin({})", python="math.asin({})", numpy="np.arcsin({})"),
    Elementwise("acos", sp.acos, sp.acos, lambda x, y: -1 / sp.sqrt(1 - x**2),
                numba="np.arccos({})", python="math.acos({})", numpy="np.arccos({})"),
    Elementwise("erf", sp.erf, sp.erf, lambda x, y: 2 / sp.sqrt(sp.pi) * sp.exp(-x**2),
                numba="math.erf({})", python="math.erf({})", numpy="special.erf({})"),
    Elementwise("abs", sp.Abs, sp.Abs, lambda x, y: sp.sign(x),
                numba="abs({})", python="abs({})", numpy="np.abs({})"),
    # the derivative of abs; its own derivative is zero wherever it exists
    Elementwise("sign", sp.sign, sp.sign, _zero, numba="np.sign({})", python="_py_sign({})",
                numpy="np.sign({})", public=False),
    # powers: Pow's rule and printing cover them
    Elementwise("sqrt", sp.sqrt, None),
    Elementwise("square", lambda x: x**2, None),
]

# Every row by name, the user's functions included (elementwise() adds them).
ROWS: dict[str, Elementwise] = {row.name: row for row in _TABLE}
_BY_NODE: dict[type, Elementwise] = {row.node: row for row in _TABLE if row.node is not None}
BUILTIN = frozenset(ROWS)


def _latex(expr, printer) -> str:
    """LaTeX of an applied function of a row with a LaTeX name: ``\\operatorname{relu}(x)``."""
    row = row_of(expr)
    return rf"{row.latex}{{\left({printer._print(expr.args[0])} \right)}}"


for _row in _TABLE:
    if _row.latex is not None:
        _row.node._latex = _latex


def row_of(expr) -> Elementwise | None:
    """The row of an applied elementwise function (``exp(x)``), or None for anything else.

    >>> row_of(sp.exp(sp.Symbol("x"))).name
    'exp'
    """
    return _BY_NODE.get(type(expr))


def inline_definitions(expr):
    """expr with each of the user's functions replaced by the expression that defines it, so
    that a common subexpression elimination sees inside them (code does not name them).

    >>> cube = elementwise("cube", lambda x: x**3)
    >>> inline_definitions(cube(sp.Symbol("a") + 1) + 2)
    (a + 1)**3 + 2
    """
    if not any(row.value is not None for row in _BY_NODE.values()):
        return expr
    # (held: replace rebuilds every node above a replaced one, a Piecewise included)
    return released(held(expr).replace(lambda e: getattr(row_of(e), "value", None) is not None,
                                       lambda e: row_of(e).value(e.args[0])))


def builder(row: Elementwise) -> Callable:
    """``sg.<name>``: the function of a scalar, or of each entry of a matrix (a Map)."""
    scalar = row.build

    def apply(x):
        if isinstance(x, sp.MatrixBase):
            raise TypeError(f"{row.name}: pass a matrix expression (sg.matrix, sg.vector), not "
                            f"an explicit SymPy Matrix {x!r}")
        if isinstance(x, MatrixExpr):
            (a,) = ops.map_variables(1, ["a"])
            return ops.Map(sp.Lambda((a,), scalar(a)), x.shape, x)
        return scalar(sp.sympify(x))

    apply.__name__ = apply.__qualname__ = row.name
    apply.__doc__ = (f"{row.name} of a scalar, or of each entry of a matrix.\n\n"
                     f">>> import sympy as sp\n>>> {row.name}(sp.Symbol('x')) is not None\n"
                     "True\n")
    apply.row = row
    return apply


# The public functions (sg.sigmoid, sg.exp, ...): scalars and matrices alike.
FUNCTIONS: dict[str, Callable] = {row.name: builder(row) for row in _TABLE if row.public}


# --------------------------------------------------------------------------------------
# The user's own functions
# --------------------------------------------------------------------------------------
class UserFunction(ops._ScalarFunction):
    """The SymPy class of a function made by :func:`elementwise` (one subclass each)."""

    row: Elementwise

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return cls.row.value(x)

    def _eval_evalf(self, prec):
        return self.row.value(self.args[0])._eval_evalf(prec)

    def _eval_rewrite_as_value(self, x, **kwargs):
        return self.row.value(x)

    def fdiff(self, argindex=1):
        # what sympy.diff (and second order's forward mode) use
        return self.row.derivative(self.args[0], self)

    def _latex(self, printer):
        return _latex(self, printer)


def _check_name(name) -> None:
    if not isinstance(name, str):
        raise TypeError(f"sg.elementwise: name must be a string, got {name!r}")
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise ValueError(f"sg.elementwise: name {name!r} must be a Python identifier (letters, "
                         "digits and underscores, not starting with an underscore or a digit, "
                         "not a Python keyword)")
    normal = unicodedata.normalize("NFKC", name)
    if normal != name:
        raise ValueError(f"sg.elementwise: name {name!r} is not in NFKC normal form: Python "
                         f"reads it as {normal!r}")
    if name in BUILTIN:
        raise ValueError(f"sg.elementwise: {name!r} is symgrad's own function sg.{name}; "
                         "choose another name")
    # SymPy's printers pick a method by class name (_print_Pow, _print_exp ...): a function
    # named like one of SymPy's own would be printed as that
    if hasattr(sp, name) or hasattr(ops, name):
        raise ValueError(f"sg.elementwise: {name!r} is already a SymPy or symgrad name; "
                         "choose another name")


def elementwise(name: str, value: Callable, derivative: Callable | None = None) -> Callable:
    """A new elementwise function, used like ``sg.sigmoid`` on scalars and matrices.

    ``value(x)`` builds the SymPy expression that defines the function of the real symbol
    ``x``, from SymPy and symgrad functions; compiled code, generated modules and every
    framework of ``sg.check`` evaluate that expression.  ``derivative(x, y)`` (optional)
    gives dy/dx in terms of ``x`` and of the output ``y`` when that is cheaper or more stable
    than differentiating ``value``; ``sg.check`` compares it with finite differences of
    ``value``.  Formulas print the function by ``name``; generated code never contains it
    (the definition is inlined).  Defining a name again replaces the function for new models.

    >>> import sympy as sp
    >>> swish = elementwise("swish", lambda x: x * ops.sigmoid(x))
    >>> w = sp.Symbol("w")
    >>> swish(2 * w)
    swish(2*w)
    >>> swish(sp.Integer(0))
    0
    """
    _check_name(name)
    if not callable(value):
        raise TypeError(f"sg.elementwise({name!r}): value must be a function of x giving a "
                        f"SymPy expression, got {value!r}")
    if derivative is not None and not callable(derivative):
        raise TypeError(f"sg.elementwise({name!r}): derivative must be a function of (x, y) "
                        f"or None, got {derivative!r}")
    x, y = sp.Symbol("x", real=True), sp.Symbol("y", real=True)
    try:
        defined = sp.sympify(value(x))
    except Exception as error:  # noqa: BLE001 - the user's code: say whose it is
        raise ValueError(f"sg.elementwise({name!r}): value(x) failed on a SymPy symbol x: "
                         f"{error!r}") from None
    if not isinstance(defined, sp.Expr) or isinstance(defined, MatrixExpr):
        raise TypeError(f"sg.elementwise({name!r}): value(x) must be a scalar SymPy "
                        f"expression of x, got {defined!r}")
    if defined.free_symbols - {x}:
        raise ValueError(f"sg.elementwise({name!r}): value(x) = {defined} depends on "
                         f"{sorted(map(str, defined.free_symbols - {x}))} besides x")
    if derivative is not None:
        try:
            slope = sp.sympify(derivative(x, y))
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"sg.elementwise({name!r}): derivative(x, y) failed on SymPy "
                             f"symbols: {error!r}") from None
        if not isinstance(slope, sp.Expr) or slope.free_symbols - {x, y}:
            raise ValueError(f"sg.elementwise({name!r}): derivative(x, y) must be a scalar "
                             f"SymPy expression of x and y, got {slope!r}")

        def slope_of(a, b):
            return replaced(slope, {x: a, y: b})
    else:
        slope = nodes.derivative(defined, x)

        def slope_of(a, b):
            return replaced(slope, {x: a})

    def value_of(a):
        return replaced(defined, {x: a})

    node = type(name, (UserFunction,), {"__module__": __name__,
                                        "__doc__": f"{name}(x) = {defined}"})
    row = Elementwise(name, node, node, slope_of,
                      latex=r"\operatorname{" + name.replace("_", r"\_") + "}",
                      value=value_of)
    node.row = row
    _register(row)
    return builder(row)


# Called with each row added after import (the rule table adds the row's rule): the table
# knows nothing of its users, which import it.
_ON_REGISTER: list[Callable[[Elementwise], None]] = []


def on_register(callback: Callable[[Elementwise], None]) -> None:
    """Call ``callback(row)`` for each row added from now on (see :func:`elementwise`)."""
    _ON_REGISTER.append(callback)


def _register(row: Elementwise) -> None:
    """Add a row to the table and tell the tables built from it."""
    ROWS[row.name] = row
    _BY_NODE[row.node] = row
    for callback in _ON_REGISTER:
        callback(row)
