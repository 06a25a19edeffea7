"""The Numba target: Python source with ``@numba.njit`` kernels, rendered from the
:class:`~symgrad.codegen.schedule.Schedule` of a :class:`~symgrad.codegen.ir.Program`.

The schedule has decided what runs in which loop, which array each Map writes, how each
product runs and which loops may be split between threads; this module only writes it down.
The operations of symgrad/operations/ write their own code with this module's helpers
(their ``emit`` hook); SymPy's operations have one emitter method each (``_emit_MatMul``,
``_emit_Map`` ...), dispatched by class name like SymPy's printers, so that a missing one
fails loudly.  Scalar expressions inside statements are printed by :class:`ScalarPrinter`.

Products that the schedule sends to BLAS go through ``np.dot`` (transposed operands are
passed as views, never copied); each Map is one loop nest without temporaries; reductions are
loops.
"""

from __future__ import annotations

import math
import re

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pycode import PythonCodePrinter

from symgrad import functions, operations, ops
from symgrad.codegen.ir import OrderedSum, Statement, forget_shapes, shape_of
from symgrad.codegen.schedule import FusedLoop, Schedule, stored
from symgrad.nodes import held, released, replaced

FASTMATH_FLAGS = '{"nsz", "arcp", "contract", "reassoc"}'  # never nnan/ninf: inf/nan stay right

# Printed statement shapes, by printer class: a shape is an expression up to the names of its
# symbols, with their order by name (SymPy orders a sum's terms and a product's factors by
# their symbols' names), and its text is a template with a slot where each symbol goes.
_SLOT = "\x00{}\x00"
_NUMBER_SLOT = "\x01{}\x01"
_SLOT_TEXT = re.compile("([\x00\x01])(\\d+)[\x00\x01]")
# a number's text in code: digits, a fraction, an exponent, not part of a name
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d*)?(?:e[+-]?\d+)?(?![\w.])")
_IDENTIFIER = re.compile(r"\b[A-Za-z_]\w*")
# words of printed code that a symbol's name must not be, to be told apart from it
_CODE_WORDS = re.compile(r"np|math|numba|sg_\w*|_py_\w*|if|else|and|or|not|in|is|True|False"
                         r"|None|int|float|abs|max|min|pow")
_PRINTED_SHAPES: dict = {}
_PRINTED_SHAPES_MAX = 50_000
# (printer class, statement) -> its text: a statement prints in up to four kernels (the point
# kernels of the forward pass and of value and gradient, and their Python twins)
_PRINTED: dict = {}
_PRINTED_MAX = 300_000
# the integers that float64 holds exactly (larger ones lose their last bits, parity first)
_EXACT_INTEGERS = 2**53


def forget_printed() -> None:
    """Drop the texts and shapes of a program's statements, once its module is written."""
    _PRINTED.clear()
    forget_shapes()


def _shared_pieces(bodies: list) -> tuple[list, list]:
    """``sympy.cse`` of scalar bodies, its pieces named ``_c0``, ``_c1``, ...; each
    Piecewise held meanwhile (see :func:`symgrad.nodes.held`): cse rebuilds what it walks,
    and a rebuilt Piecewise would rewrite its conditions (Eq(2 a + 1, m) as
    Eq(a, m/2 - 1/2), false in floats where it held)."""
    replacements, bodies = sp.cse([held(b) for b in bodies], symbols=sp.numbered_symbols("_c"),
                                  optimizations=None)
    return ([(symbol, released(value)) for symbol, value in replacements],
            [released(b) for b in bodies])


class ScalarPrinter(NumPyPrinter):
    """Prints scalar SymPy expressions as Numba-compilable Python (``np.`` functions,
    runtime helpers for the stable and fast functions, conditionals for Piecewise)."""

    _module = "np"
    language = "Python with Numba"

    def __init__(self, names: dict | None = None):
        super().__init__({"fully_qualified_modules": False, "inline": True,
                          "allow_unknown_functions": False})
        self.names = names or {}
        self._kf = {k: v.replace("numpy.", "np.") for k, v in self._kf.items()}
        self._kc = {k: v.replace("numpy.", "np.") for k, v in self._kc.items()}

    def expression(self, e) -> str:
        """e as one expression of code: ``doprint`` without the set-up it makes for whole
        programs (comments on what is not supported, declarations of constants, about 10 us
        per call and a statement each), refusing what it would have commented out.

        Statements of one shape (``_t7 - _t9``, ``100.0*_t4``) are printed once: SymPy's
        printer costs about 0.1 ms a statement (the order of a sum's terms alone is a
        polynomial decomposition), and a large program has few shapes (see ir.shape_of).

        >>> ScalarPrinter().expression(sp.Symbol("x") + 1)
        'x + 1.0'
        """
        if type(e) is OrderedSum:       # (a term at a time: no shape to share)
            return self._expression(e)
        if not self.names:
            text = _PRINTED.get((type(self), e))
            if text is not None:
                return text
        shape = shape_of(e)
        if shape is None:
            return self._expression(e)
        key, symbols, numbers, fixed = shape
        template = _PRINTED_SHAPES.get((type(self), key))
        if template is not None:
            text = self._filled(template, symbols, numbers)
            self._remember(e, text)
            return text
        text = self._expression(e)
        template = self._template(text, symbols, numbers, fixed)
        if template is not None and self._filled(template, symbols, numbers) == text:
            if len(_PRINTED_SHAPES) >= _PRINTED_SHAPES_MAX:
                _PRINTED_SHAPES.clear()
            _PRINTED_SHAPES[(type(self), key)] = template
        self._remember(e, text)
        return text

    def _remember(self, e, text: str) -> None:
        if not self.names:      # (names given to a printer change its texts)
            if len(_PRINTED) >= _PRINTED_MAX:
                _PRINTED.clear()
            _PRINTED[(type(self), e)] = text

    def _number_text(self, number) -> str:
        """A slotted number's text without its sign (which the printed operation places),
        by this printer's own method for it (not SymPy's dispatch: a call per slot)."""
        if type(number) is sp.Integer:
            return self._print_Integer(abs(number))
        return self._print_Float(abs(number))

    def _template(self, text: str, symbols: list, numbers: list, fixed: set):
        """text as a format string with a field for each symbol (by its name) and each
        slotted number (by its text), symbols first (see :meth:`_filled`); None where a
        slot's text could be told apart from the rest of the code no more (a name that is a
        word of code, two numbers of one text, a number slot whose text a number outside
        the slots prints too)."""
        names = {self._print_Symbol(s): k for k, s in enumerate(symbols)}
        if not all(_IDENTIFIER.fullmatch(name) and not _CODE_WORDS.fullmatch(name)
                   for name in names):
            return None
        texts = {self._number_text(n): k for k, n in enumerate(numbers)}
        if len(texts) != len(numbers) or any(self._number_text(n) in texts for n in fixed):
            return None
        template = _NUMBER.sub(lambda m: (_NUMBER_SLOT.format(texts[m.group()])
                                          if m.group() in texts else m.group()), text)
        if not all(_NUMBER_SLOT.format(k) in template for k in range(len(numbers))):
            return None     # a number printed otherwise than as its text: no template
        template = _IDENTIFIER.sub(
            lambda m: _SLOT.format(names[m.group()]) if m.group() in names else m.group(),
            template)
        # (str.format fills a template without a call back into Python for each slot)
        return _SLOT_TEXT.sub(
            lambda m: f"{{{int(m.group(2)) + (m.group(1) == _NUMBER_SLOT[0]) * len(symbols)}}}",
            template.replace("{", "{{").replace("}", "}}"))

    def _filled(self, template: str, symbols: list, numbers: list) -> str:
        return template.format(*[self._print_Symbol(s) for s in symbols],
                               *[self._number_text(n) for n in numbers])

    def _expression(self, e) -> str:
        self._not_supported = set()
        text = self._print(e)
        if self._not_supported:
            raise NotImplementedError(
                f"symgrad cannot write code for {sorted(map(str, self._not_supported))}")
        return text

    def _module_format(self, fqn, register=True):
        return fqn.replace("numpy.", "np.")

    def _print_Symbol(self, expr):
        return self.names.get(expr, expr.name)

    def _print_Add(self, expr, order=None):
        # most statements of a large program add two names: SymPy orders two symbols of
        # one kind by name (as_ordered_terms, the printer's default order), and finding
        # that order costs a polynomial decomposition per statement
        args = expr.args
        if (order is None and self.order is None and len(args) == 2
                and type(args[0]) is type(args[1]) is sp.Symbol
                and args[0].name != args[1].name):
            first, second = sorted(args, key=lambda s: s.name)
            return f"{self._print(first)} + {self._print(second)}"
        return super()._print_Add(expr, order=order)

    def _print_MatrixSymbol(self, expr):
        return self.names.get(expr, expr.name)

    def _print_OrderedSum(self, expr):
        """Left to right, as the chain of additions it stands for."""
        return expr.text(lambda atom: self._print_Symbol(atom) if type(atom) is sp.Symbol
                         else self._print(atom))

    # Elementwise functions print their row's code (symgrad/functions.py); a user's function
    # prints the expression that defines it, so that it fuses into the loop like the rest
    target = "numba"

    def _print(self, expr, **kwargs):
        row = functions.row_of(expr)
        if row is None:
            return super()._print(expr, **kwargs)
        if row.value is not None:
            return "(" + self._print(row.value(expr.args[0]), **kwargs) + ")"
        return row.code(self.target, self._print(expr.args[0]))

    def _print_Function(self, expr):
        name = type(expr).__name__
        raise NotImplementedError(
            f"symgrad cannot compile the function {name} (in {expr}): define it with "
            f"sg.elementwise({name!r}, value=lambda x: ..., derivative=lambda x, y: ...)")

    # NaN-propagating max and min (fastmath.py, runtime.py), as NumPy and JAX
    _MAX, _MIN = "sg_max", "sg_min"

    def _print_Heaviside(self, expr):
        """1 above 0, 0 below, the second argument (1/2 without one) at 0, and NaN at NaN,
        which is none of these (``np.heaviside``).

        >>> ScalarPrinter().expression(sp.Heaviside(sp.Symbol("x"), 0))
        '(1.0 if x > 0.0 else (0.0 if x < 0.0 else (0.0 if x == 0.0 else np.nan)))'
        """
        x = self._print(expr.args[0])
        at_zero = self._print(sp.Float(expr.args[1])) if len(expr.args) > 1 else "0.5"
        nan = self._module_format("numpy.nan")
        return (f"(1.0 if {x} > 0.0 else (0.0 if {x} < 0.0 else ({at_zero} if {x} == 0.0 "
                f"else {nan})))")

    def _print_Max(self, expr):
        return self._minmax(self._MAX, expr.args)

    def _print_Min(self, expr):
        return self._minmax(self._MIN, expr.args)

    def _minmax(self, f, args):
        printed = [self._print(a) for a in args]
        out = printed[0]
        for p in printed[1:]:
            out = f"{f}({out}, {p})"
        return out

    def _print_Piecewise(self, expr):
        """Python's conditional expressions; NaN where no condition holds (SymPy leaves the
        value undefined there, and NumPy, JAX and symgrad's translators give NaN): Python's
        printer would write ``None``, which Numba cannot type.

        >>> x = sp.Symbol("x")
        >>> ScalarPrinter().expression(sp.Piecewise((x, x > 0), (-x, x < -1)))
        '((x) if (x > 0.0) else (-x) if (x < -1.0) else (np.nan))'
        """
        if expr.args[-1].cond != sp.true:
            expr = sp.Piecewise(*expr.args, (sp.nan, True), evaluate=False)
        return PythonCodePrinter._print_Piecewise(self, expr)

    # a comparison of two floats as Python's operator (NaN compares false, as in NumPy):
    # NumPy's printer calls np.greater, which the Python twins would pay ~1 us a call for
    _print_Relational = PythonCodePrinter._print_Relational

    # Python's own boolean operators: Numba cannot compile np.logical_and.reduce
    def _print_And(self, expr):
        return "(" + " and ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr):
        return "(" + " or ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr):
        return f"(not {self._print(expr.args[0])})"

    def _print_ITE(self, expr):
        return PythonCodePrinter._print_ITE(self, expr)

    def _print_Pow(self, expr, rational=False):
        base, exponent = expr.args
        b = self.parenthesize(base, 100) if not base.is_Atom else self._print(base)
        if b.startswith("-"):
            # a negative number: Python's -2.0 ** y is -(2.0 ** y)
            b = f"({b})"
        if exponent == -1:
            return f"(1.0 / {b})"
        if exponent == sp.Rational(1, 2):
            return f"np.sqrt({self._print(base)})"
        if exponent == -sp.Rational(1, 2):
            return f"(1.0 / np.sqrt({self._print(base)}))"
        if exponent.is_Integer and 2 <= exponent <= 4:
            return "(" + " * ".join([b] * int(exponent)) + ")"
        if exponent.is_Integer and -4 <= exponent <= -2:
            return "(1.0 / (" + " * ".join([b] * int(-exponent)) + "))"
        if exponent.is_Integer and abs(exponent.p) > _EXACT_INTEGERS and exponent.p % 2:
            # a float this large is even: b ** float(n) loses the sign of an odd power, which
            # the exact n gives back (x ** (2**53 + 1) is -1 at -1)
            copysign = self._module_format("numpy.copysign")
            return f"{copysign}({b} ** {self._print(sp.Float(exponent))}, {b})"
        exponent = sp.Float(exponent) if exponent.is_Rational else exponent
        power = self._print(exponent) if exponent.is_Atom else f"({self._print(exponent)})"
        return f"({b} ** {power})"

    def _print_Rational(self, expr):
        return self._float_text(float(expr))

    def _print_Integer(self, expr):
        try:
            float(expr.p)
        except OverflowError:       # (Python's float of an int raises where NumPy's is inf)
            return self._float_text(math.inf if expr.p > 0 else -math.inf)
        return f"{int(expr)}.0"

    def _print_Half(self, expr):
        return "0.5"

    def _print_Float(self, expr):
        return self._float_text(float(expr))

    def _float_text(self, value: float) -> str:
        """A float64 constant's code: its repr, or NumPy's infinity where the exact number
        overflows float64 (``float`` gives ``inf``, which no module defines), as NumPy
        computes with it.

        >>> ScalarPrinter().expression(sp.Symbol("x") * sp.Integer(10) ** 400)
        'np.inf*x'
        """
        if math.isinf(value):
            inf = self._module_format("numpy.inf")
            return inf if value > 0 else f"(-{inf})"
        return repr(value)

    def _print_Pi(self, expr):
        return "np.pi"

    def _print_Exp1(self, expr):
        return "np.e"

    def _print_MatrixElement(self, expr):
        return f"{self._print(expr.parent)}[{int(expr.i)}, {int(expr.j)}]"


class PythonScalarPrinter(ScalarPrinter):
    """Scalar code for plain Python floats (the ``math`` module): for small scalar models a
    pure-Python evaluation costs less than a call into Numba."""

    target = "python"

    def _module_format(self, fqn, register=True):
        return _math_name(fqn.replace("numpy.", "np."))

    _MAX, _MIN = "_py_max", "_py_min"

    def _print_Pow(self, expr, rational=False):
        # Python's ** gives a complex number for a negative base and a fractional exponent;
        # math.pow raises there, and the caller falls back to the kernel, which gives nan as
        # NumPy does
        printed = super()._print_Pow(expr, rational).replace("np.sqrt", "math.sqrt")
        return _python_pow(self, expr, printed, "math.pow")

    def _print_Pi(self, expr):
        return "math.pi"

    def _print_Exp1(self, expr):
        return "math.e"


class SharedScalarPrinter(ScalarPrinter):
    """The Numba kernel code of a large model's point kernels, whose pure-Python twin runs
    the same code (module.py, ``_python_twin``): the code that differs between the two is a
    name, which :func:`python_stand_ins` maps to Python's.  Powers to a fractional
    exponent call ``sg_pow`` (``x ** y`` in Numba): in Python, ``math.pow`` stands in for
    it and raises where ``**`` would give a complex number."""

    def _print_Pow(self, expr, rational=False):
        printed = super()._print_Pow(expr, rational)
        return _python_pow(self, expr, printed, "sg_pow")


def _python_pow(printer, expr, printed: str, pow_name: str) -> str:
    """``printed`` (the printer's text of a power), or ``pow_name(base, exponent)`` where
    that text is Python's ``**`` to an exponent that is not a whole number (the Python twin's
    power, which must raise on a negative base)."""
    base, exponent = expr.args
    if " ** " in printed and not (exponent.is_Integer or exponent.is_Float and
                                  float(exponent).is_integer()):
        exponent = sp.Float(exponent) if exponent.is_Rational else exponent
        return f"{pow_name}({printer._print(base)}, {printer._print(exponent)})"
    return printed


# a name of a function or constant that kernel code uses (np.sqrt, np.pi, sg_sin), and the
# head of a call in the functions table's code (name, then the parenthesised arguments)
_CALLED = re.compile(r"(?<![\w.])(?:np\.\w+|sg_\w+)")
_HEAD = re.compile(r"([\w.]+)(\(.*\))")


def python_stand_ins(code: str) -> dict[str, str]:
    """What Python calls in place of each Numba function that ``code`` (a kernel printed by
    :class:`SharedScalarPrinter`) calls: name (``sg_sin``, ``np.arctan``) -> the Python
    twin's code for it (``math.sin``, ``math.atan``), as :class:`PythonScalarPrinter` prints
    them.  A NumPy name not listed stays NumPy's.

    >>> python_stand_ins("_t1 = sg_sin(in_0) + np.sqrt(sg_pow(in_1, 1.5)) * np.pi")
    {'np.pi': 'math.pi', 'np.sqrt': 'math.sqrt', 'sg_pow': 'math.pow', 'sg_sin': 'math.sin'}
    """
    table = _numba_to_python()
    out = {}
    for name in sorted(set(_CALLED.findall(code))):
        python = table.get(name) or _math_name(name)
        if python != name:
            out[name] = python
    return out


def _math_name(name: str) -> str:
    """``math.X`` for a NumPy name ``np.X`` that the math module has too, else ``name``:
    the Python twin's function or constant in place of NumPy's."""
    if name.startswith("np.") and hasattr(math, name[3:]):
        return "math." + name[3:]
    return name


def _numba_to_python() -> dict[str, str]:
    """The functions table's Numba function -> Python function, with the printers' own
    (max, min, fractional powers).  The rows' code is a call of one function with the
    same arguments in both (``sg_max({}, 0.0)`` and ``_py_max({}, 0.0)``)."""
    table = {ScalarPrinter._MAX: PythonScalarPrinter._MAX,
             ScalarPrinter._MIN: PythonScalarPrinter._MIN, "sg_pow": "math.pow"}
    for row in functions.ROWS.values():
        if row.numba is None or row.python is None:
            continue
        numba_call, python_call = _HEAD.fullmatch(row.numba), _HEAD.fullmatch(row.python)
        if numba_call and python_call and numba_call.group(2) == python_call.group(2):
            table.setdefault(numba_call.group(1), python_call.group(1))
    return table


# (emitter class, class of an operation) -> the name of its emitter method ('' none)
_EMITTER_OF: dict = {}


def unsupported(kind: str) -> NotImplementedError:
    return NotImplementedError(
        f"the Numba emitter has no method for {kind}: add _emit_{kind} to "
        "symgrad.codegen.numba.KernelEmitter")


class KernelEmitter:
    """Emits the body of one kernel: one method per operation."""

    def __init__(self, parallel: bool = False, printer: ScalarPrinter | None = None):
        self.lines: list[str] = []
        self.printer = printer or ScalarPrinter()
        self.parallel = parallel          # the schedule's parallel loops as numba.prange
        self._step = None                 # the step being rendered
        self._loops: list = []            # its loops (schedule.Loop) not yet opened

    # -- helpers -----------------------------------------------------------------------
    def emit(self, line: str, depth: int = 1):
        self.lines.append("    " * depth + line)

    def scalar(self, e) -> str:
        return self.printer.expression(e)

    def dim(self, d) -> str:
        d = sp.sympify(d)
        if d.is_Integer:
            return str(int(d))
        return self.printer.doprint(d).replace(".0", "") if d.is_Symbol else \
            f"int({self.printer.doprint(d)})"

    def shape(self, shape) -> str:
        return "(" + ", ".join(self.dim(d) for d in shape) + ")"

    def name(self, atom) -> str:
        """The expression for an atom (matrix symbols and views, scalars)."""
        if isinstance(atom, sp.Transpose):
            return f"{atom.arg.name}.T"
        if isinstance(atom, sp.MatrixSymbol):
            return atom.name
        if isinstance(atom, (sp.Identity, sp.OneMatrix, sp.ZeroMatrix)):
            return self._constant_matrix(atom)
        return self.scalar(atom)

    def _constant_matrix(self, atom) -> str:
        shape = self.shape(atom.shape)
        if isinstance(atom, sp.Identity):
            return f"np.eye({self.dim(atom.shape[0])})"
        if isinstance(atom, sp.OneMatrix):
            return f"np.ones({shape})"
        return f"np.zeros({shape})"

    def load(self, operand, i: str, j: str, shape) -> str:
        """The scalar expression of operand at position (i, j) of a loop over shape."""
        if not isinstance(operand, MatrixExpr):
            return self.scalar(operand)
        if isinstance(operand, sp.Identity):
            return f"(1.0 if {i} == {j} else 0.0)"
        if isinstance(operand, sp.OneMatrix):
            return "1.0"
        if isinstance(operand, sp.ZeroMatrix):
            return "0.0"
        rows, cols = operand.shape
        ii = "0" if rows == 1 and shape[0] != 1 else i
        jj = "0" if cols == 1 and shape[1] != 1 else j
        if rows == 1 and shape[0] == 1:
            ii = "0"
        if cols == 1 and shape[1] == 1:
            jj = "0"
        if isinstance(operand, sp.Transpose):
            return f"{operand.arg.name}[{jj}, {ii}]"
        return f"{operand.name}[{ii}, {jj}]"

    def outer_range(self) -> str:
        """The outer loop of the step's next top-level loop nest: a prange in a parallel
        kernel where the schedule lets its iterations be split."""
        if not self._loops:
            raise AssertionError(f"{self._step} opens a loop that its schedule does not have")
        loop = self._loops.pop(0)
        return "numba.prange" if self.parallel and loop.parallel else "range"

    def loops(self, shape, depth: int = 1, before_inner: list[str] = ()):
        """Open a loop nest over shape; returns (i, j, inner depth).  At the top of the
        kernel (depth 1) it is the step's next loop of the schedule.  before_inner: lines
        for the body of the outer loop, before the inner one (nests of two loops only)."""
        rows, cols = shape
        outer = self.outer_range() if depth == 1 else "range"
        if cols == 1:
            self.emit(f"for _i in {outer}({self.dim(rows)}):", depth)
            return "_i", "0", depth + 1
        if rows == 1:
            self.emit(f"for _j in {outer}({self.dim(cols)}):", depth)
            return "0", "_j", depth + 1
        self.emit(f"for _i in {outer}({self.dim(rows)}):", depth)
        for line in before_inner:
            self.emit(line, depth + 1)
        self.emit(f"for _j in range({self.dim(cols)}):", depth + 1)
        return "_i", "_j", depth + 2

    # -- statements --------------------------------------------------------------------
    def render(self, schedule: Schedule) -> None:
        """Emit every step of the schedule, in order."""
        for step in schedule.steps:
            self._step = step
            if isinstance(step, FusedLoop):
                self._loops = [step.loop]
                self._fused_loop(step)
            else:
                self._loops = list(step.loops)
                self.statement(step.statement)
            if self._loops:
                raise AssertionError(f"the schedule has loops that {step} does not open")

    def _fused_loop(self, group: FusedLoop) -> None:
        """One loop nest for the Maps of a fused group, each with its sums, stored or not:
        their operands are loaded once, their bodies go through one CSE.  A sum the
        schedule keeps in a register is accumulated in a local variable (per row in a nest
        of two loops) and stored once; the other sums add into their arrays."""
        shape = group.shape
        rows, cols = shape
        nested = rows != 1 and cols != 1
        registers = []      # (accumulator, reduction target, entry, whether per row)
        for member in group.members:
            for carried in member.sums:
                r = carried.statement
                if carried.along == "total":
                    self.emit(f"{r.target.name} = 0.0")
                elif carried.register:
                    registers.append((f"_acc{len(registers)}", r.target,
                                      "_i, 0" if nested else "0, 0", nested))
                    self.emit(f"{r.target.name} = np.empty({self.shape(r.operation.shape)})")
                else:
                    self.emit(f"{r.target.name} = np.zeros({self.shape(r.operation.shape)})")
            if member.store:
                self.emit(f"{member.statement.target.name} = "
                          f"{self._array_for(member.statement.operation, member.buffer)}")
        accumulator = {target: acc for acc, target, _, _ in registers}
        for acc, _, _, per_row in registers:
            if not per_row:
                self.emit(f"{acc} = 0.0")
        i, j, depth = self.loops(shape, before_inner=[f"{acc} = 0.0" for acc, _, _, per_row
                                                      in registers if per_row])
        units = [(m.statement.target, m.statement.operation, m.sums, m.store)
                 for m in group.members]
        loads: dict = {}            # load expression -> variable
        values: dict = {}           # member target -> its element, as a SymPy expression
        bodies = []
        for target, e, _, _ in units:
            variables = {}
            for v, operand in zip(e.function.variables, e.operands):
                if operand in values:               # a member's element of this iteration
                    variables[v] = values[operand]
                    continue
                text = self.load(operand, i, j, e.shape)
                if text not in loads:
                    loads[text] = sp.Symbol(f"_v{len(loads)}", real=True)
                variables[v] = loads[text]
            body = functions.inline_definitions(replaced(e.body, variables))
            values[target] = body
            bodies.append(body)
        for text, v in loads.items():
            self.emit(f"{v.name} = {text}", depth)
        replacements, bodies = _shared_pieces(bodies)
        for symbol, value in replacements:
            self.emit(f"{symbol.name} = {self.scalar(value)}", depth)
        for k, ((target, _, reductions, store), body) in enumerate(zip(units, bodies)):
            self.emit(f"_e{k} = {self.scalar(body)}", depth)
            if store:
                self.emit(f"{target.name}[{i}, {j}] = _e{k}", depth)
            for carried in reductions:
                r = carried.statement
                term = f"_e{k}"
                if isinstance(r.operation, sp.MatMul):       # a vector times this Map
                    a, b = r.operation.args
                    # (a M)[0, j] = sum_i a[0, i] M[i, j];  (M b)[i, 0] = sum_j M[i, j] b[j, 0]
                    weight = (self.load(a, "0", i, a.shape) if b == target
                              else self.load(b, j, "0", b.shape))
                    term += " * " + (loads[weight].name if weight in loads else weight)
                if carried.along == "total":
                    self.emit(f"{r.target.name} += {term}", depth)
                elif r.target in accumulator:
                    self.emit(f"{accumulator[r.target]} += {term}", depth)
                elif carried.along == "column":
                    self.emit(f"{r.target.name}[0, {j}] += {term}", depth)
                else:
                    self.emit(f"{r.target.name}[{i}, 0] += {term}", depth)
        for acc, reduced, entry, per_row in registers:
            self.emit(f"{reduced.name}[{entry}] = {acc}", depth - 1 if per_row else 1)

    def statement(self, s: Statement):
        operation = operations.of(s.operation)
        if operation is not None:       # symgrad/operations/: its file writes its code
            operation.emit(self, s.target, s.operation)
            return
        kind = type(s.operation)
        name = _EMITTER_OF.get((type(self), kind))
        if name is None:
            name = _EMITTER_OF[(type(self), kind)] = next(
                (f"_emit_{c.__name__}" for c in kind.__mro__
                 if hasattr(self, f"_emit_{c.__name__}")), "")
        if not name:
            if s.is_matrix:
                raise unsupported(kind.__name__)
            name = "_emit_scalar"
        getattr(self, name)(s.target, s.operation)

    def _emit_scalar(self, target, e):
        self.emit(f"{target.name} = {self.scalar(e)}")

    def _emit_MatMul(self, target, e):
        """The product as the schedule runs it: a loop for an outer product or a dot
        product, loops over the matrix for a matrix times a vector, else BLAS (gemv for a
        matrix times a vector)."""
        a, b = e.args
        rows, inner = a.shape
        cols = b.shape[1]
        step = self._step
        if step.product == "outer":
            self.emit(f"{target.name} = np.empty({self.shape(e.shape)})")
            i, j, depth = self.loops(e.shape)
            self.emit(f"{target.name}[{i}, {j}] = {self.load(a, i, '0', (rows, 1))} * "
                      f"{self.load(b, '0', j, (1, cols))}", depth)
        elif step.product == "dot":
            self.emit("_total = 0.0")
            self.emit(f"for _r in range({self.dim(inner)}):")
            self.emit(f"_total += {self.load(a, '0', '_r', (1, inner))} * "
                      f"{self.load(b, '_r', '0', (inner, 1))}", 2)
            self.emit(f"{target.name} = np.full((1, 1), _total)")
        elif step.product == "matrix_vector":
            self._matrix_vector(target, e, step.matrix, step.vector)
        elif cols == 1:
            self.emit(f"{target.name} = np.dot({self.name(a)}, {self.flat(b)})"
                      f".reshape({self.shape(e.shape)})")
        elif rows == 1:
            self.emit(f"{target.name} = np.dot({self.flat(a)}, {self.name(b)})"
                      f".reshape({self.shape(e.shape)})")
        else:
            self.emit(f"{target.name} = np.dot({self.name(a)}, {self.name(b)})")

    def _matrix_vector(self, target, e, matrix, vector) -> None:
        """out[p] = sum_r matrix[p, r] vector[r] as loops over the matrix in its storage
        order, four rows at a time (each load then serves four multiply-adds): a dot
        product per row where r runs along the stored rows, else a scaled-row update per
        stored row."""
        n, k = (self.dim(d) for d in matrix.shape)
        n_blocked, k_blocked = (self._multiple_of_4(d) for d in matrix.shape)
        v = self.flat(vector)
        self.emit(f"_vec = {v}")
        if isinstance(matrix, sp.Transpose):      # stored as k x n: update with row r
            store = matrix.arg.name
            self.emit(f"_out = np.zeros({n})")
            self.emit(f"for _r in range(0, {k_blocked}, 4):")
            self.emit("_s0, _s1, _s2, _s3 = _vec[_r], _vec[_r + 1], _vec[_r + 2], _vec[_r + 3]",
                      2)
            self.emit(f"for _p in range({n}):", 2)
            self.emit(f"_out[_p] += ({store}[_r, _p] * _s0 + {store}[_r + 1, _p] * _s1"
                      f" + {store}[_r + 2, _p] * _s2 + {store}[_r + 3, _p] * _s3)", 3)
            if str(k_blocked) != k:      # the last k % 4 rows
                self.emit(f"for _r in range({k_blocked}, {k}):")
                self.emit("_s0 = _vec[_r]", 2)
                self.emit(f"for _p in range({n}):", 2)
                self.emit(f"_out[_p] += {store}[_r, _p] * _s0", 3)
        else:                                      # stored as n x k: a dot product per row
            store = matrix.name
            outer = self.outer_range()
            self.emit(f"_out = np.empty({n})")
            blocks = n_blocked // 4 if isinstance(n_blocked, int) else f"{n} // 4"
            self.emit(f"for _q in {outer}({blocks}):")
            self.emit("_p4 = 4 * _q", 2)
            self.emit("_a0 = _a1 = _a2 = _a3 = 0.0", 2)
            self.emit(f"for _r in range({k}):", 2)
            self.emit("_x = _vec[_r]", 3)
            for row in range(4):
                at = "_p4" if row == 0 else f"_p4 + {row}"
                self.emit(f"_a{row} += {store}[{at}, _r] * _x", 3)
            self.emit("_out[_p4], _out[_p4 + 1], _out[_p4 + 2], _out[_p4 + 3] = _a0, _a1, _a2, _a3",
                      2)
            if str(n_blocked) != n:      # the last n % 4 rows
                self.emit(f"for _p in range({n_blocked}, {n}):")
                self.emit("_a0 = 0.0", 2)
                self.emit(f"for _r in range({k}):", 2)
                self.emit(f"_a0 += {store}[_p, _r] * _vec[_r]", 3)
                self.emit("_out[_p] = _a0", 2)
        self.emit(f"{target.name} = _out.reshape({self.shape(e.shape)})")

    def _multiple_of_4(self, d):
        """The largest multiple of 4 not above the extent d (an int when d is a number)."""
        d = sp.sympify(d)
        return 4 * (int(d) // 4) if d.is_Integer else f"{self.dim(d)} - {self.dim(d)} % 4"

    def flat(self, vector) -> str:
        """A row or column vector as a 1-D view (its memory is the same either way)."""
        length = max(vector.shape, key=lambda d: d != 1)
        return f"{stored(vector).name}.reshape({self.dim(length)})"

    def _emit_Transpose(self, target, e):
        self.emit(f"{target.name} = {self.name(e.arg)}.T")

    def _array_for(self, e: ops.Map, buffer) -> str:
        """The array a Map's matrix goes to: the dead operand the schedule gives it, or a
        new one."""
        return buffer.name if buffer is not None else f"np.empty({self.shape(e.shape)})"

    def _emit_Map(self, target, e: ops.Map):
        self.emit(f"{target.name} = {self._array_for(e, self._step.buffer)}")
        i, j, depth = self.loops(e.shape)
        self.emit(f"{target.name}[{i}, {j}] = {self.map_body(e, i, j, depth)}", depth)

    def map_body(self, e: ops.Map, i: str, j: str, depth: int) -> str:
        """Emit the loads and shared pieces of a Map's body; return its final expression."""
        # SymPy turns Lambda((a,), a) into IdentityFunction, whose variable is a Dummy
        # numbered from a random base per process: rename, so the text is deterministic
        variables = [sp.Symbol(f"_v{k}", real=True) for k in range(len(e.operands))]
        body = functions.inline_definitions(
            replaced(e.body, dict(zip(e.function.variables, variables))))
        for v, operand in zip(variables, e.operands):
            self.emit(f"{v.name} = {self.load(operand, i, j, e.shape)}", depth)
        replacements, (body,) = _shared_pieces([body])
        for symbol, value in replacements:
            self.emit(f"{symbol.name} = {self.scalar(value)}", depth)
        return self.scalar(body)

    def _emit_MatrixElement(self, target, e: MatrixElement):
        parent = e.parent
        if isinstance(parent, sp.Transpose):
            self.emit(f"{target.name} = {parent.arg.name}[{int(e.j)}, {int(e.i)}]")
        else:
            self.emit(f"{target.name} = {self.name(parent)}[{int(e.i)}, {int(e.j)}]")

    # one factorisation per matrix (codegen/factor.py; helpers in codegen/linalg_runtime.py)
    def _factor_arguments(self, factor) -> str:
        return f"{factor.name}, {factor.name}_piv, {factor.name}_chol"

    def _emit_Factorisation(self, target, e):
        self.emit(f"{self._factor_arguments(target)} = sg_factor({self.name(e.arg)}, "
                  f"{e.symmetric})")

    def _emit_FactorInverse(self, target, e):
        self.emit(f"{target.name} = sg_factor_inverse({self._factor_arguments(e.arg)})")

    def _emit_FactorSolve(self, target, e):
        factor = self._factor_arguments(e.factor)
        if not e.right:
            self.emit(f"{target.name} = sg_factor_solve({factor}, {self.name(e.rhs)}, "
                      f"{e.transposed})")
        else:       # B K^-1 = (K^-T B^T)^T
            self.emit(f"{target.name} = np.ascontiguousarray(sg_factor_solve({factor}, "
                      f"{self.name(e.rhs)}.T, {not e.transposed}).T)")

    def _emit_FactorLogDet(self, target, e):
        self.emit(f"{target.name} = sg_factor_logdet({self._factor_arguments(e.arg)})")

    def _emit_FactorDet(self, target, e):
        self.emit(f"{target.name} = sg_factor_det({self._factor_arguments(e.arg)})")

    def axis_loops(self, shape, axis):
        """Outer loop over the kept axis (k), inner over the reduced one (r)."""
        rows, cols = shape
        if axis == 0:     # reduce rows: for each column j
            return self.dim(cols), self.dim(rows), lambda k, r: (r, k)
        return self.dim(rows), self.dim(cols), lambda k, r: (k, r)

