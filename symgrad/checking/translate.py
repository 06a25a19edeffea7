"""Translators: the same SymPy model as a function of NumPy, JAX, PyTorch or autograd arrays.

Each translator is a printer in the manner of SymPy's (``_print_MatMul``, ``_print_Map`` ...):
one method per node type, dispatched by class name through a shared base class, so that a new
node is one method in each translator and a missing one fails loudly with
``NotImplementedError`` naming the node and the framework.  Elementwise functions print their
rows of symgrad/functions.py and the matrix operations of symgrad/operations/ their
``translations``.

The printed text is a straight-line Python function, one temporary per distinct
subexpression (a DAG, like symgrad's own derivation), which the framework's autodiff then
differentiates (``jax.value_and_grad``, ``torch.autograd``, ``autograd.value_and_grad``).
The NumPy translator serves the finite differences and the evaluation of symgrad's symbolic
gradients.

Conventions are symgrad's: inputs by symbol name, matrices as 2-D arrays (a vector is
``(n, 1)``), scalars as floats or arrays (elementwise).  Symbolic dimensions need sizes,
given as ``dims`` (dimension symbol -> int).

>>> import sympy as sp
>>> x, y = sp.symbols("x y")
>>> f = translate(x * sp.exp(y), [x, y], framework="numpy")
>>> float(f(x=2.0, y=0.0))
2.0
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy.logic.boolalg import BooleanAtom
from sympy.matrices.expressions.matexpr import MatrixExpr
from sympy.printing.printer import Printer

from symgrad import functions, operations, ops
from symgrad.nodes import replaced

__all__ = ["Translator", "NumpyTranslator", "JaxTranslator", "TorchTranslator",
           "AutogradTranslator", "TRANSLATORS", "Translated", "translate", "require"]

# The Python package each framework needs, as ``import`` spells it.
PACKAGES = {"numpy": "numpy", "jax": "jax", "torch": "torch", "autograd": "autograd"}


def _templates(framework: str, xp: str, special: str) -> dict[str, str]:
    """A framework's code of each elementwise function (symgrad/functions.py), by node class
    name: the row's own, or its NumPy code with the framework's module aliases."""
    templates = {}
    for row in functions.ROWS.values():
        if row.node is None or row.value is not None:
            continue        # a power (Pow's method), or a user's function (its definition)
        own = getattr(row, framework)
        templates[row.key] = own if own is not None else (
            row.numpy.replace("np.", f"{xp}.").replace("special.", f"{special}."))
    return templates


def require(framework: str):
    """Import a framework's top-level package, or raise ImportError saying what is missing.

    The top-level package is imported first on purpose: a test that hides ``torch`` by
    setting ``sys.modules["torch"] = None`` must see it missing even when submodules are
    already loaded.

    >>> require("numpy").__name__
    'numpy'
    """
    package = PACKAGES[framework]
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ImportError(f"the {framework} backend of sg.check needs the '{package}' package, "
                          f"which is not installed here ({error}); install it or leave "
                          f"{framework!r} out of against=") from error


@dataclass
class Translated:
    """A translated model: ``f(**inputs)`` returns the outputs' values.

    ``source`` is the generated Python text (one statement per distinct subexpression).
    """

    function: Callable
    source: str
    inputs: tuple[str, ...]
    framework: str
    outputs: int = 1
    namespace: dict = field(default_factory=dict, repr=False)

    def __call__(self, **inputs):
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise TypeError(f"missing inputs {missing} (the model needs {list(self.inputs)})")
        return self.function(*[inputs[n] for n in self.inputs])


class Translator(Printer):
    """The dispatch shared by every framework: NumPy-style array code.

    Subclasses set ``framework`` (its name in messages), ``modules`` (alias -> module name,
    bound in the generated code) and ``functions`` (scalar function name -> a template with
    ``{}`` for the argument), and override the node methods whose spelling differs.
    """

    framework = "numpy"
    modules: dict[str, str] = {"np": "numpy", "special": "scipy.special"}
    xp = "np"               # alias of the array module
    special = "special"     # alias of the special-function module
    functions: dict[str, str] = _templates("numpy", "np", "special")
    printmethod = None       # nodes never print themselves: dispatch by class name only

    def __init__(self, dims: dict | None = None):
        super().__init__()
        self.dims = {sp.sympify(k): int(v) for k, v in (dims or {}).items()}
        self.lines: list[str] = []
        self.memo: dict = {}
        self.constants: dict[str, np.ndarray] = {}
        self.locals: dict = {}          # input symbol -> its name in the generated code
        self.bound: set[str] = set()    # every name a placeholder symbol may print as
        self.counter = 0

    # -- the whole function ------------------------------------------------------------
    def translate(self, outputs, inputs: Sequence) -> Translated:
        """A function of the inputs (SymPy symbols, matrix symbols) returning the outputs
        (one expression, or a list of them: then a tuple)."""
        single = not isinstance(outputs, (list, tuple))
        outputs = [outputs] if single else list(outputs)
        parameters = []
        for k, symbol in enumerate(inputs):
            # symgrad's own names, never the user's: an input named float, np or model would
            # shadow what the translation calls
            local = f"in_{k}"
            self.locals[symbol] = local
            self.bound.add(local)
            parameters.append(local)
        results = [self._print(sp.sympify(o)) for o in outputs]
        body = self.lines or []
        returned = results[0] if single else "(" + ", ".join(results) + ",)"
        source = "\n".join([f"def model({', '.join(parameters)}):"]
                           + [f"    {line}" for line in body]
                           + [f"    return {returned}", ""])
        namespace = self.namespace()
        exec(compile(source, f"<symgrad.check {self.framework} translation>", "exec"),
             namespace)
        return Translated(namespace["model"], source, tuple(s.name for s in inputs),
                          self.framework, len(outputs), namespace)

    def namespace(self) -> dict:
        """The names the generated code uses: module aliases and constant arrays (a missing
        framework is an ImportError that says what to install)."""
        require(self.framework)
        names = {alias: importlib.import_module(module) for alias, module in self.modules.items()}
        names.update({name: self.array_constant(value) for name, value in self.constants.items()})
        return names

    def array_constant(self, value: np.ndarray):
        """A NumPy constant as the framework's array."""
        return value

    # -- dispatch ----------------------------------------------------------------------
    def _print(self, expr, **kwargs) -> str:
        """The code of expr: a literal, an input's name, or the temporary that holds it.

        Every distinct compound subexpression becomes one temporary, so that shared pieces
        are computed once (the translation of a DAG stays linear in its size).
        """
        try:
            return self.memo[expr]
        except (KeyError, TypeError):
            pass
        literal = self._literal(expr)
        if literal is not None:
            return literal
        row = functions.row_of(expr)
        operation = operations.of(expr)
        if operation is not None:       # symgrad/operations/: its file has its translations
            code = operation.translate(expr, self)
        elif row is None:
            code = super()._print(expr, **kwargs)
        elif row.value is not None:     # a user's function: the expression that defines it
            code = self._print(row.value(expr.args[0]))
        else:
            code = self._call(row.key, expr)
        if isinstance(expr, (sp.Symbol, sp.MatrixSymbol, BooleanAtom)) or code in self.bound:
            result = code       # a name already: an identity Map, a Named piece
        else:
            result = self._assign(code)
        self.memo[expr] = result
        return result

    def emptyPrinter(self, expr):
        kind = type(expr).__name__
        raise NotImplementedError(
            f"the {self.framework} translator has no method for {kind} (in {expr}): add "
            f"_print_{kind} to symgrad.checking.translate.{type(self).__name__}")

    def _assign(self, code: str) -> str:
        name = f"_t{self.counter}"
        self.counter += 1
        self.lines.append(f"{name} = {code}")
        self.bound.add(name)
        return name

    def _literal(self, expr):
        """A number as a float literal (numeric subexpressions are evaluated here, so that
        no framework function is ever applied to a Python number)."""
        if not isinstance(expr, sp.Basic) or isinstance(expr, (MatrixExpr, BooleanAtom)):
            if isinstance(expr, (int, float)):
                return self._number(float(expr))
            return None
        if not expr.is_number:
            return None
        try:
            return self._number(float(expr))
        except TypeError:   # complex or undefined: let the node methods say what it is
            return None

    @staticmethod
    def _number(value: float) -> str:
        if value != value:
            return 'float("nan")'
        if value in (float("inf"), float("-inf")):
            return f'float("{value}")'
        text = repr(value)
        return f"({text})" if value < 0 else text

    def _constant(self, value: np.ndarray) -> str:
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        self.bound.add(name)
        return name

    def _dim(self, d) -> int:
        d = replaced(sp.sympify(d), self.dims)
        if not d.is_Integer:
            raise ValueError(f"the dimension {d} has no size: pass dims={{symbol: size}} for "
                             f"{', '.join(sorted(str(s) for s in d.free_symbols))}")
        return int(d)

    def _shape(self, shape) -> tuple[int, ...]:
        return tuple(self._dim(d) for d in shape)

    def _call(self, name: str, expr) -> str:
        """A scalar function of this framework, applied elementwise."""
        template = self.functions.get(name)
        if template is None:
            raise NotImplementedError(f"{self.framework} has no {name} in symgrad's "
                                      f"translation (in {expr}): add it to "
                                      f"{type(self).__name__}.functions")
        return template.format(self._print(expr.args[0]))

    # -- leaves ------------------------------------------------------------------------
    def _print_Symbol(self, expr):
        if expr in self.locals:
            return self.locals[expr]
        if expr in self.dims:           # a dimension in a formula: 1/m in a mean
            return self._number(float(self.dims[expr]))
        if expr.name in self.bound:     # a placeholder for a temporary or input (Map bodies)
            return expr.name
        raise ValueError(f"{expr} is neither an input nor a sized dimension of the "
                         f"{self.framework} translation: list it in inputs or dims")

    def _print_MatrixSymbol(self, expr):
        if expr in self.locals:
            return self.locals[expr]
        raise ValueError(f"matrix {expr} is not an input of the {self.framework} "
                         "translation: list it in inputs")

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"

    def _print_Identity(self, expr):
        return self._constant(np.eye(self._dim(expr.shape[0])))

    def _print_OneMatrix(self, expr):
        return self._constant(np.ones(self._shape(expr.shape)))

    def _print_ZeroMatrix(self, expr):
        return self._constant(np.zeros(self._shape(expr.shape)))

    # -- scalar arithmetic -------------------------------------------------------------
    def _print_Add(self, expr):
        return "(" + " + ".join(self._print(a) for a in expr.args) + ")"

    def _print_Mul(self, expr):
        return "(" + " * ".join(self._print(a) for a in expr.args) + ")"

    def _print_Pow(self, expr):
        base, exponent = expr.args
        b = self._print(base)
        if exponent == sp.S.Half:
            return f"{self.xp}.sqrt({b})"
        if exponent == -1:
            return f"(1.0 / {b})"
        if exponent == -sp.S.Half:
            return f"(1.0 / {self.xp}.sqrt({b}))"
        if exponent.is_Integer:     # an integer power stays exact for negative bases
            return f"({b} ** {int(exponent)})"
        return f"({b} ** {self._print(exponent)})"

    # -- scalar functions (elementwise functions: their rows, see _print) -------------
    def _print_re(self, expr):
        # models are real: SymPy writes re() where it cannot tell (|exp(z)| is exp(re(z)))
        return f"{self.xp}.real({self._print(expr.args[0])})"

    def _print_im(self, expr):
        return f"(0.0 * {self._print(expr.args[0])})"

    def _print_Heaviside(self, expr):
        # symgrad's convention: H(0) is the second argument, 1/2 when there is none; NaN at
        # NaN, as np.heaviside
        x = self._print(expr.args[0])
        at_zero = self._print(expr.args[1]) if len(expr.args) > 1 else "0.5"
        inner = self._where(f"({x} == 0.0)", at_zero, self._number(float("nan")))
        inner = self._where(f"({x} < 0.0)", "0.0", inner)
        return self._where(f"({x} > 0.0)", "1.0", inner)

    def _print_Max(self, expr):
        return self._fold(f"{self.xp}.maximum", expr.args)

    def _print_Min(self, expr):
        return self._fold(f"{self.xp}.minimum", expr.args)

    def _fold(self, function: str, args) -> str:
        printed = [self._print(a) for a in args]
        out = printed[0]
        for p in printed[1:]:
            out = self._assign(f"{function}({self._tensor(out)}, {self._tensor(p)})")
        return out

    def _print_Piecewise(self, expr):
        pieces = list(expr.args)
        value, condition = pieces[-1]
        if condition == sp.true:
            out = self._print(value)
            pieces = pieces[:-1]
        else:   # SymPy leaves the value undefined where no condition holds
            out = 'float("nan")'
        for value, condition in reversed(pieces):
            out = self._assign(self._where(self._print(condition), self._print(value), out))
        return out

    def _where(self, condition: str, if_true: str, if_false: str) -> str:
        return f"{self.xp}.where({condition}, {if_true}, {if_false})"

    def _tensor(self, code: str) -> str:
        """code as an array where the framework needs one (not a Python float)."""
        return code

    def _relational(self, expr, operator: str) -> str:
        return f"({self._print(expr.lhs)} {operator} {self._print(expr.rhs)})"

    def _print_StrictGreaterThan(self, expr):
        return self._relational(expr, ">")

    def _print_GreaterThan(self, expr):
        return self._relational(expr, ">=")

    def _print_StrictLessThan(self, expr):
        return self._relational(expr, "<")

    def _print_LessThan(self, expr):
        return self._relational(expr, "<=")

    def _print_Equality(self, expr):
        return self._relational(expr, "==")

    def _print_Unequality(self, expr):
        return self._relational(expr, "!=")

    def _print_And(self, expr):
        return self._fold(f"{self.xp}.logical_and", expr.args)

    def _print_Or(self, expr):
        return self._fold(f"{self.xp}.logical_or", expr.args)

    def _print_Not(self, expr):
        return f"{self.xp}.logical_not({self._print(expr.args[0])})"

    def _print_Xor(self, expr):
        return self._fold(f"{self.xp}.logical_xor", expr.args)

    def _print_ITE(self, expr):
        # SymPy writes some Piecewise conditions as if-then-else of booleans
        condition, if_true, if_false = (self._print(a) for a in expr.args)
        return self._where(condition, if_true, if_false)

    # -- symgrad's scalar nodes --------------------------------------------------------
    def _print_MatrixElement(self, expr):
        return f"{self._print(expr.parent)}[{int(expr.i)}, {int(expr.j)}]"

    # -- matrices ----------------------------------------------------------------------
    def _print_Transpose(self, expr):
        return f"{self._print(expr.arg)}.T"

    def _print_MatMul(self, expr):
        scalars = [a for a in expr.args if not isinstance(a, MatrixExpr)]
        matrices = [self._print(a) for a in expr.args if isinstance(a, MatrixExpr)]
        product = " @ ".join(matrices)
        if scalars:
            product = "(" + " * ".join([self._print(sp.Mul(*scalars)), f"({product})"]) + ")"
        return product

    def _print_MatAdd(self, expr):
        return "(" + " + ".join(self._print(a) for a in expr.args) + ")"

    def _print_HadamardProduct(self, expr):
        return "(" + " * ".join(self._print(a) for a in expr.args) + ")"

    def _print_HadamardPower(self, expr):
        return f"({self._print(expr.base)} ** {self._print(expr.exp)})"

    def _print_MatPow(self, expr):
        exponent = expr.exp
        if not (exponent.is_Integer and exponent != 0):
            raise NotImplementedError(f"matrix power {exponent} (in {expr}) for "
                                      f"{self.framework}: only nonzero integers")
        base = self._print(expr.base)
        if exponent < 0:
            base = f"{self.xp}.linalg.inv({base})"
        return "(" + " @ ".join([base] * abs(int(exponent))) + ")"

    def _print_Map(self, expr: ops.Map):
        """The body printed over the operands' arrays: the framework broadcasts (n, 1),
        (1, m) and scalar operands as symgrad does."""
        substitutions = {}
        shapes = []
        for variable, operand in zip(expr.function.variables, expr.operands, strict=True):
            if not isinstance(operand, MatrixExpr) and \
                    sp.sympify(operand).free_symbols <= set(self.dims):
                # a number, or a sized dimension (the m of a mean's 1/m): printed in place
                substitutions[variable] = operand
                continue
            # a placeholder named like the operand's code stands for it in the body
            substitutions[variable] = _Placeholder(self._print(operand))
            if isinstance(operand, MatrixExpr):
                shapes.append((variable, self._shape(operand.shape)))
        body = replaced(expr.body, substitutions)
        code = self._print(body)
        used = body.free_symbols
        broadcast = np.broadcast_shapes(*[s for v, s in shapes if substitutions[v] in used])
        shape = self._shape(expr.shape)
        if broadcast != shape:
            return f"{self.xp}.broadcast_to({self._tensor(code)}, {shape})"
        return code


class _Placeholder(sp.Symbol):
    """A name of the translation's code standing for a Map's operand in its body.  A class
    of its own: a plain symbol of that name would be the model's own symbol if it has one
    of that name (an input called ``in_1`` or ``_t3``), and would print as that input."""


class NumpyTranslator(Translator):
    """NumPy and SciPy: the finite differences and the evaluation of symbolic gradients."""


class JaxTranslator(Translator):
    """jax.numpy in float64 (the translation turns on ``jax_enable_x64``, for the process)."""

    framework = "jax"
    modules = {"jnp": "jax.numpy", "jax": "jax", "jspecial": "jax.scipy.special"}
    xp = "jnp"
    special = "jspecial"
    functions = _templates("jax", "jnp", "jspecial")

    def namespace(self) -> dict:
        # before the constants become jax arrays: symgrad computes in float64
        require("jax").config.update("jax_enable_x64", True)
        return super().namespace()

    def array_constant(self, value):
        import jax.numpy as jnp
        return jnp.asarray(value)


class AutogradTranslator(Translator):
    """HIPS autograd's wrapped NumPy and SciPy."""

    framework = "autograd"
    modules = {"anp": "autograd.numpy", "aspecial": "autograd.scipy.special"}
    xp = "anp"
    special = "aspecial"
    functions = _templates("autograd", "anp", "aspecial")


class TorchTranslator(Translator):
    """PyTorch in float64: ``dim=`` for ``axis=``, tensors where torch refuses floats."""

    framework = "torch"
    modules = {"torch": "torch", "F": "torch.nn.functional"}
    xp = "torch"
    special = "torch.special"
    functions = _templates("torch", "torch", "torch.special")

    def array_constant(self, value):
        import torch
        return torch.as_tensor(value, dtype=torch.float64)

    def _tensor(self, code: str) -> str:
        return f"torch.as_tensor({code}, dtype=torch.float64)"

    def _where(self, condition: str, if_true: str, if_false: str) -> str:
        # torch.where of two Python floats would be float32
        return f"torch.where({condition}, {self._tensor(if_true)}, {self._tensor(if_false)})"


TRANSLATORS: dict[str, type[Translator]] = {
    "numpy": NumpyTranslator, "jax": JaxTranslator, "torch": TorchTranslator,
    "autograd": AutogradTranslator,
}


def translate(outputs, inputs: Sequence, framework: str = "numpy",
              dims: dict | None = None) -> Translated:
    """Translate a model (or a list of expressions) to a function of the framework's arrays.

    ``inputs`` are the SymPy symbols and matrix symbols, in the order the function's
    positional parameters take them (call it with keywords: ``f(W=..., x=...)``).

    >>> import symgrad as sg
    >>> x = sg.vector("x", 2)
    >>> f = translate(sg.sum(sg.exp(x)), [x], "numpy")
    >>> float(f(x=np.zeros((2, 1))))
    2.0
    """
    if framework not in TRANSLATORS:
        raise ValueError(f"unknown framework {framework!r}; choose from {sorted(TRANSLATORS)}")
    return TRANSLATORS[framework](dims).translate(outputs, list(inputs))
