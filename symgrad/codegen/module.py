"""Whole Python modules from a model: kernels, input checks, docstring, content hash.

The same text serves :func:`symgrad.compile` (written to a cache folder and imported, so that
Numba's ``cache=True`` works) and :func:`symgrad.generate` (a standalone module that imports
numpy and numba only).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import keyword
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from symgrad.codegen.ir import Program
from symgrad.codegen.numba import (
    FASTMATH_FLAGS,
    KernelEmitter,
    PythonScalarPrinter,
    ScalarPrinter,
    SharedScalarPrinter,
    forget_printed,
    python_stand_ins,
)
from symgrad.codegen.schedule import Schedule, build_schedule
from symgrad.nodes import one_pass, replaced

# symgrad's runtime: each file's text from its marker line on (fastmath.py has no marker: all
# of it after its docstring) is what generated modules take their runtime from, statement by
# statement (see runtime_source).
_RUNTIME_FILES = (
    ("fastmath.py", None),
    ("runtime.py", "# --- symgrad runtime: copied verbatim into generated modules"),
    ("linalg_runtime.py", "# --- symgrad linear algebra: copied into generated modules"),
    ("second_runtime.py", "# --- symgrad second order: copied verbatim into generated modules"),
)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class ModuleSpec:
    """What a module is made of (see :func:`symgrad.compile`)."""

    name: str
    inputs: list                         # parameters first, then data inputs
    parameters: list
    output_shape: tuple                  # () for a scalar output
    forward: Program
    value_and_grad: Program | None = None   # scalar output
    vjp: Program | None = None              # matrix output
    upstream: sp.MatrixSymbol | None = None
    docstring: str = ""
    op_counts: dict = field(default_factory=dict)
    free_dimensions: set = field(default_factory=set)   # integer inputs: see _prepare
    # symgrad's own symbol -> the name the user gave it.  Everything above uses symgrad's
    # symbols (in_0, dim_0, ...): the user's names appear only in the public signatures, as
    # string keys and in messages (string literals), and in the escaped docstring.
    public: dict = field(default_factory=dict)
    internal: dict = field(default_factory=dict)    # the user's symbol -> symgrad's
    # (matrix input, axis) -> (least extent, an entry read there): see compiled.least_extents
    least_extents: dict = field(default_factory=dict)
    # the model in symgrad's forms, over the user's symbols (q1(t) already the symbol q1):
    # what second-order code differentiates by the user's symbols again
    user_expression: object = None

    def public_name(self, symbol) -> str:
        return self.public.get(symbol, symbol.name)

    def _theirs(self, symbol):
        """The user's symbol for one of symgrad's (the inverse of ``internal``)."""
        if not hasattr(self, "_users"):
            self._users = {ours: user for user, ours in self.internal.items()}
        return self._users.get(symbol, symbol)

    @property
    def user_inputs(self) -> list:
        """The inputs as the user's own symbols, in the order of ``inputs``."""
        return [self._theirs(s) for s in self.inputs]

    @property
    def user_parameters(self) -> list:
        return [self._theirs(s) for s in self.parameters]

    @property
    def user_free_dimensions(self) -> set:
        return {self._theirs(d) for d in self.free_dimensions}

    @property
    def user_output_shape(self) -> tuple:
        return tuple(replaced(sp.sympify(e), {d: self._theirs(d) for d in
                                             sp.sympify(e).free_symbols})
                     for e in self.output_shape)

    def display(self, expr) -> str:
        """An expression of symgrad's symbols, written with the user's names (for messages)."""
        expr = sp.sympify(expr)
        return str(replaced(expr, {s: sp.Symbol(self.public_name(s))
                                  for s in expr.free_symbols if s in self.public}))

    @property
    def is_scalar_model(self) -> bool:
        return not any(isinstance(s, MatrixExpr) for s in self.inputs) \
            and not self.output_shape and not self.free_dimensions


def check_names(symbols, role: str = "input") -> None:
    """Names that become keyword arguments of generated functions: Python identifiers, not
    keywords, not starting with an underscore (symgrad's own names do), in NFKC normal form
    (Python reads the identifier ``ｘ`` as ``x``), and one symbol per name.

    >>> check_names([sp.Symbol("value"), sp.Symbol("float")])
    >>> check_names([sp.Symbol("x"), sp.Symbol("ｘ")])
    Traceback (most recent call last):
    ...
    ValueError: input name 'ｘ' is not in NFKC normal form: Python reads it as 'x'; rename it
    """
    seen: dict = {}
    for s in symbols:
        name = s.name
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise ValueError(f"{role} name {name!r} cannot be a Python argument name: rename "
                             "it (letters, digits and underscores, not starting with an "
                             "underscore or a digit, not a Python keyword)")
        normal = unicodedata.normalize("NFKC", name)
        if normal != name:
            raise ValueError(f"{role} name {name!r} is not in NFKC normal form: Python reads "
                             f"it as {normal!r}; rename it")
        if name in seen and seen[name] != s:
            raise ValueError(f"two different symbols are both named {name!r}: {seen[name]!r} "
                             f"(assumptions {seen[name].assumptions0}) and {s!r} (assumptions "
                             f"{s.assumptions0}); give them distinct names")
        seen[name] = s


def docstring_literal(text: str) -> str:
    """A triple-quoted literal whose value is ``text``: backslashes, double quotes and
    control characters are escaped, so no text (a model's name, a symbol's, a label) can end
    the docstring early or reach the code.

    >>> print(docstring_literal('say "hi"'))
    \"\"\"say \\"hi\\"\"\"\"
    """
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n" or (ch.isprintable() and ch not in "\u2028\u2029"):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return '"""' + "".join(out) + '"""'


def statements(text: str) -> tuple:
    """The top-level statements of ``text`` as (text, names it defines, names it reads, names
    it registers with), in order.  A statement's text starts with the blank lines and comments
    above it; an import's text is the import alone.

    >>> [sorted(defined) for _, defined, _, _ in statements("import math\\nx = math.pi\\n")]
    [['math'], ['x']]
    """
    lines = text.splitlines()
    pieces = []
    previous_end = 0
    for statement in ast.parse(text).body:
        chunk = lines[previous_end:statement.end_lineno]
        previous_end = statement.end_lineno
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            chunk = lines[statement.lineno - 1:statement.end_lineno]   # imports go first
            defined = {(a.asname or a.name).split(".")[0] for a in statement.names}
        elif isinstance(statement, (ast.FunctionDef, ast.ClassDef)):
            defined = {statement.name}
        else:       # an assignment: the names it assigns (not a comprehension's variables)
            targets = getattr(statement, "targets", None) or [
                t for t in [getattr(statement, "target", None)] if t is not None]
            defined = {n.id for t in targets for n in ast.walk(t)
                       if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        read = {n.id for n in ast.walk(statement)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - defined
        # @overload(_at, ...) registers an implementation of _at: it goes where _at goes
        registers = {d.args[0].id for d in getattr(statement, "decorator_list", ())
                     if isinstance(d, ast.Call) and d.args and isinstance(d.args[0], ast.Name)
                     and d.args[0].id != "numba"}
        pieces.append(("\n".join(chunk), frozenset(defined), frozenset(read),
                       frozenset(registers)))
    return tuple(pieces)


def _reached(pieces: tuple, words: set) -> list:
    """The indices of the statements in ``pieces`` that code of these ``words`` reaches:
    those defining one of its words, and, transitively, what they read.  Words, not parsed
    names: a word of a string literal costs at most one statement too many, never one too
    few."""
    wanted = set(words)
    kept: set = set()
    changed = True
    while changed:
        changed = False
        for k, (_, defined, read, registers) in enumerate(pieces):
            if k not in kept and (defined & wanted or registers & wanted):
                kept.add(k)
                wanted |= read | registers
                changed = True
    return sorted(kept)


def used_part(text: str, code: str) -> str:
    """The statements of ``text`` that ``code`` calls, directly or through each other, in
    their order in ``text``.

    >>> text = "def a():\\n    return b()\\n\\n\\ndef b():\\n    return 1\\n\\n\\n"
    >>> text += "def c():\\n    return 2\\n"
    >>> part = used_part(text, "y = a()")
    >>> "def b(" in part, "def c(" in part
    (True, False)
    """
    pieces = statements(text)
    return "\n".join(pieces[k][0] for k in _reached(pieces, set(_WORD.findall(code)))
                     ).strip("\n") + "\n"


_TOP_LEVEL_NAME = re.compile(r"^(?:def|class)\s+(\w+)|^(\w+)\s*[:=]", re.MULTILINE)


@functools.cache
def _runtime_file(index: int) -> tuple[str, frozenset, frozenset]:
    """The runtime file's text (from its marker on), the names it defines at top level and
    every word in it (a cheap over-approximation of what it reads: see _runtime_pieces)."""
    name, marker = _RUNTIME_FILES[index]
    text = (Path(__file__).parent / name).read_text()
    if marker is None:
        text = text[text.index('"""', 3) + 3:].lstrip()      # drop the module docstring
    else:
        text = text[text.index(marker):].split("\n", 1)[1]
    defined = frozenset(a or b for a, b in _TOP_LEVEL_NAME.findall(text))
    return text.rstrip(), defined, frozenset(_WORD.findall(text))


@functools.cache
def _runtime_pieces(files: tuple[int, ...]) -> tuple:
    """The statements of those runtime files (indices into ``_RUNTIME_FILES``), in order.
    Parsing is the costly part, so a module parses only the files its code can reach."""
    return statements("\n\n\n".join(_runtime_file(k)[0] for k in files) + "\n")


def _runtime_files_reached(words: set) -> tuple[int, ...]:
    """The runtime files that code of these ``words`` can reach: those defining one of its
    words, and the files that their words reach in turn (words over-approximate what a file
    calls, so this never leaves out a file that the statement-level walk of runtime_source
    needs)."""
    words = set(words)
    files: set = set()
    changed = True
    while changed:
        changed = False
        for k in range(len(_RUNTIME_FILES)):
            _, defined, file_words = _runtime_file(k)
            if k not in files and defined & words:
                files.add(k)
                words |= file_words
                changed = True
    return tuple(sorted(files))


def runtime_source(code: str) -> str:
    """The part of symgrad's runtime (codegen/fastmath.py, runtime.py, linalg_runtime.py,
    second_runtime.py) that ``code`` calls, directly or through other runtime functions, in
    the runtime's own order: a module carries only what it uses, and the same code gives the
    same text.

    >>> "def sg_exp(" in runtime_source("y = sg_tanh(x)")      # tanh calls expm1, not exp
    False
    >>> "def sg_expm1(" in runtime_source("y = sg_tanh(x)")
    True
    """
    words = set(_WORD.findall(code))     # (once: the code of a large model is long)
    pieces = _runtime_pieces(_runtime_files_reached(words))
    imports, out = [], []
    for k in _reached(pieces, words):
        text = pieces[k][0]
        if text.startswith(("import ", "from ")):
            if text not in imports:     # several runtime files import numpy and math
                imports.append(text)
        else:
            out.append(text)
    return ("# --- symgrad runtime: what this module calls of symgrad/codegen/fastmath.py, "
            "runtime.py,\n# linalg_runtime.py and second_runtime.py\n" + "\n".join(imports)
            + "\n\n\n" + "\n".join(out).strip("\n") + "\n")


@one_pass
def module_source(spec: ModuleSpec, version: str, *, appended: str = "",
                  appended_note: str = "") -> str:
    """The full, deterministic text of the module: its docstring, the runtime it calls, the
    model's code, then ``appended`` (more code, such as second-order functions, said in the
    docstring by ``appended_note``)."""
    try:
        code = "\n".join(model_code(spec)) + "\n" + appended
    finally:
        forget_printed()    # (the statements' texts served the kernels that print them)
    # the runtime this code calls, and nothing else (the user's names are in string literals
    # only, and a word of them that names a runtime function costs that function's text)
    body = "\n" + runtime_source(code).rstrip() + "\n\n" + code
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    header = spec.docstring.rstrip() + "\n\n" if spec.docstring else ""
    header += (f"Operation counts after CSE: forward {spec.op_counts.get('forward', '-')}, "
               f"value and gradient {spec.op_counts.get('value_and_grad', '-')}.\n"
               + appended_note +
               f"Generated by symgrad {version}; content hash {digest}.  Do not edit: "
               "regenerate.\n")
    return docstring_literal(header) + "\n" + body.rstrip("\n") + "\n"


def model_code(spec: ModuleSpec) -> list[str]:
    """The lines of the model's own code: its tables, kernels and public functions (the
    runtime they call is added by :func:`module_source`)."""
    lines = [f"INPUTS = {tuple(spec.public_name(s) for s in spec.inputs)!r}",
             f"PARAMETERS = {tuple(spec.public_name(s) for s in spec.parameters)!r}",
             f"OUTPUT_SHAPE = {tuple(str(d) for d in spec.output_shape)!r}", ""]
    if len(spec.inputs) >= KEYWORDS_BY_DICT_FROM:
        lines += _keyword_error_function()
    if spec.is_scalar_model:
        lines += _scalar_model(spec)
    else:
        lines += _matrix_model(spec)
    return lines


# ------------------------------------------------------------------------------------------
# Scalar models: point kernels, a loop over broadcast arrays
# ------------------------------------------------------------------------------------------
# Loops are split between threads from this many elements (matrix kernels), or this many
# element-operations (scalar models): below it, waking threads costs more than it saves, and
# on a busy machine a parallel region waits for its slowest thread (measured: a 100,000-point
# 6-operation model took 7.9 ms on 2 threads of a loaded 2-core machine, 0.22 ms on one).
PARALLEL_MIN_ELEMENTS = 1 << 20
PARALLEL_MIN_WORK = 1 << 22

# error_model="numpy": x / 0.0 is inf (as in NumPy), not ZeroDivisionError, and the
# division check that would stop loops from vectorising is gone.
SERIAL = f'@numba.njit(cache=True, fastmath={FASTMATH_FLAGS}, error_model="numpy")'
PARALLEL = (f'@numba.njit(cache=True, fastmath={FASTMATH_FLAGS}, error_model="numpy", '
            'parallel=True)')
INLINED = (f'@numba.njit(cache=True, fastmath={FASTMATH_FLAGS}, error_model="numpy", '
           'inline="always")')

# Scalar models' loops carry no sum across points, so they vectorise without fast-math: the
# kernel then rounds each operation as written, as the Python twin does, and the two agree
# bit for bit.  A fused multiply-add ("contract") would leave a product's rounding error where
# the written difference is exactly 0 (x y - |x| |y|), which sign or Heaviside then turns
# into an error of 1; a reciprocal ("arcp") rounds a division twice.
POINT_FLAGS = "False"
POINT_SERIAL = SERIAL.replace(FASTMATH_FLAGS, POINT_FLAGS)
POINT_PARALLEL = PARALLEL.replace(FASTMATH_FLAGS, POINT_FLAGS)
POINT_INLINED = INLINED.replace(FASTMATH_FLAGS, POINT_FLAGS)


# CPython compiles a call with more positional arguments than this as f(*args) (its
# STACK_USE_GUIDELINE), and Numba refuses to inline such a call.
CALL_STACK_ARGUMENTS = 30

# The batched loops of a scalar model with more operations than this call its point kernel,
# compiled once for the floats path, instead of inlining (or copying) its statements: LLVM's
# time to compile a loop grows faster than its body (Rosenbrock with 1,000 variables, 22,000
# operations: six minutes for the copied loop), and at this size the vectorised loop saves
# less than the call and the loads cost.
LOOP_INLINE_MAX_OPS = 2000
# ... and so do loops that read and write more arrays than this: LLVM vectorises none of them
# (see ALIAS_CHECKS_FROM), and with its limits raised it crashed compiling a copied loop of
# 200 inputs and 201 outputs (a segmentation fault: the product of 200 factors on arrays)
LOOP_INLINE_MAX_ARRAYS = 180

# Scalar models of at most this many operations also get a pure-Python twin of their point
# kernel: for a handful of operations on floats, Python arithmetic beats a call into Numba.
PYTHON_MAX_OPS = 48

# From this many operations the twin comes back, for the first calls on floats: Numba takes
# about 2 ms per operation to compile a point kernel on this project's machines (Rosenbrock
# with 1,000 variables: 35 s for 15,000 operations), while the twin answers a call in about
# 0.03 us per operation (0.42 ms; the compiled kernel 28 us).  The runtime's _PythonFirst
# lets the twin answer until it has cost about what compiling would, then compiles.
PYTHON_FIRST_FROM_OPS = 2000
NUMBA_SECONDS_PER_OP = 2e-3


def _kernel(name: str, arguments: list[str], program: Program, returns: list[str],
            parallel: bool = False, python: bool = False, inline: bool = False,
            prologue: list[str] = (), schedule: Schedule | None = None,
            shared: bool = False, point: bool = False) -> tuple[list[str], list]:
    """The source of one kernel, and the sizes of its loops that can run in parallel (none
    when it calls BLAS, see _entry_kernels); ``schedule``: the program's, where the caller
    has it already; ``python``: a pure-Python twin's; ``shared``: a Numba kernel whose code
    its Python twin runs too (see _python_twin); ``point``: a scalar model's point kernel,
    compiled with POINT_FLAGS."""
    printer = (PythonScalarPrinter() if python else SharedScalarPrinter() if shared
               else None)
    schedule = schedule or build_schedule(program)
    emitter = KernelEmitter(parallel=parallel, printer=printer)
    emitter.render(schedule)
    decorator = ([] if python else [POINT_INLINED if inline else POINT_SERIAL] if point
                 else [PARALLEL if parallel else SERIAL])
    out = decorator + [f"def {name}({', '.join(arguments)}):"]
    out += list(prologue)
    out += emitter.lines or []
    out.append(f"    return {_tuple_text(returns) if len(returns) != 1 else returns[0]}")
    out.append("")
    return out, [] if schedule.uses_blas else schedule.parallel_sizes


def _output_expressions(program: Program, emitter_names: list[str]) -> list[str]:
    """The returned expressions.  Every array returned is a fresh one: an output that is an
    input (the gradient of dot(x, y) by x is y) or that another output already returns is
    copied, so that updating one result in place changes nothing else."""
    printer = ScalarPrinter()
    out = []
    returned: set = set()
    computed = {s.target for s in program.statements}
    for name in emitter_names:
        atom = program.outputs[name]
        if isinstance(atom, sp.Transpose):
            out.append(f"{atom.arg.name}.T.copy()")
        elif isinstance(atom, sp.MatrixSymbol):
            fresh = atom in computed and atom not in returned
            out.append(atom.name if fresh else f"{atom.name}.copy()")
        elif isinstance(atom, (sp.ZeroMatrix, sp.OneMatrix, sp.Identity)):
            out.append(KernelEmitter()._constant_matrix(atom))
        elif isinstance(atom, MatrixExpr):
            raise NotImplementedError(f"output {name} is {atom}")
        else:
            out.append(printer.doprint(sp.Float(atom) if atom.is_number else atom)
                       if atom.is_number else printer.doprint(atom))
        returned.add(atom)
    return out


def _scalar_model(spec: ModuleSpec) -> list[str]:
    names = [s.name for s in spec.inputs]
    args = ", ".join(names)
    lines: list[str] = []
    programs = [("forward", spec.forward, ["value"])]
    if spec.value_and_grad is not None:
        programs.append(("value_and_grad", spec.value_and_grad,
                         ["value"] + [p.name for p in spec.parameters]))
    if len(names) + 2 * len(spec.parameters) > ALIAS_CHECKS_FROM:
        lines += _more_alias_checks()
    parallel_from = {}
    python = {}
    python_first = {}
    python_body = {}    # kind -> the Python twin's statements, for the positional call
    for kind, program, outputs in programs:
        returns = _output_expressions(program, outputs)
        if kind == "value_and_grad" and len(returns) == 1:      # no parameters: (value,)
            returns = [returns[0] + ","]
        # inlined into the loops below, so that LLVM vectorises them across points; with
        # more inputs than CPython passes on its stack, a call is compiled as f(*args), which
        # Numba cannot inline: the loops then call the kernel (still compiled, not inlined)
        op_count = spec.op_counts.get(kind)         # (counted once, by build_spec)
        if op_count is None:
            op_count = program.op_count()
        small = (op_count <= LOOP_INLINE_MAX_OPS
                 and len(names) + len(outputs) <= LOOP_INLINE_MAX_ARRAYS)
        inline = small and len(names) <= CALL_STACK_ARGUMENTS
        schedule = build_schedule(program)      # the point kernel's and its twin's
        python[kind] = op_count <= PYTHON_MAX_OPS
        python_first[kind] = op_count >= PYTHON_FIRST_FROM_OPS
        point = _kernel(f"_{kind}_point", names, program, returns, inline=inline,
                        schedule=schedule, shared=python_first[kind], point=True)[0]
        lines += point
        if python[kind]:
            twin = _kernel(f"_{kind}_python", names, program, returns, python=True,
                           schedule=schedule)[0]
            lines += twin
            python_body[kind] = [line for line in twin[1:] if line]
        if python_first[kind]:
            # a large kernel's twin runs the kernel's own code: Python compiles (and this
            # module prints) each statement once, not twice
            stand_ins = ", ".join(f"{k!r}: {v}" for k, v in
                                  python_stand_ins("\n".join(point)).items())
            seconds = round(NUMBA_SECONDS_PER_OP * op_count, 1)
            lines += [f"_{kind}_python = _python_twin(_{kind}_point, '_{kind}_python', "
                      f"{{{stand_ins}}})",
                      f"_{kind}_on_floats = _PythonFirst(_{kind}_python, _{kind}_point, "
                      f"{seconds}, globals().get('__file__'))", ""]
        # the loop over broadcast inputs: scalars stay scalars (_at), arrays are flat; the
        # parallel twin splits the elements between threads
        parallel_from[kind] = max(1, PARALLEL_MIN_WORK // max(1, op_count))
        loads = ", ".join(f"_at({n}, _n)" for n in names)
        for suffix, decorator, loop in (("", POINT_SERIAL, "range"),
                                        ("_parallel", POINT_PARALLEL, "numba.prange")):
            if small and not inline:
                lines += _loop_with_body(kind, suffix, decorator, loop, names, point, outputs)
                continue
            lines += [decorator, f"def _{kind}_loop{suffix}({', '.join(names + ['out'])}):",
                      f"    for _n in {loop}(out.shape[1]):"]
            if kind == "forward":
                lines.append(f"        out[0, _n] = _{kind}_point({loads})")
            else:
                results = ", ".join(f"_o{k}" for k in range(len(outputs))) + \
                    ("," if len(outputs) == 1 else "")
                lines.append(f"        {results} = _{kind}_point({loads})")
                for k in range(len(outputs)):
                    lines.append(f"        out[{k}, _n] = _o{k}")
            lines.append("")
        lines += [f"def _{kind}_loop_for(size):",
                  f"    if size >= {parallel_from[kind]} and numba.get_num_threads() > 1:",
                  f"        return _{kind}_loop_parallel",
                  f"    return _{kind}_loop",
                  ""]
    float_check = " and ".join(f"type({n}) is float" for n in names) or "True"
    as_tuple = _tuple_text(names)
    typed_args = ", ".join(f"{n}: float | np.ndarray" for n in names)

    def on_floats(kind: str, indent: str) -> list[str]:
        """The call for all-float inputs: the Python twin if there is one, with the Numba
        kernel where math raises (math.log(-1.0) raises, np.log gives nan)."""
        if python_first[kind]:
            return [f"{indent}_g = _{kind}_on_floats({args})"]
        if not python[kind]:
            return [f"{indent}_g = _{kind}_point({args})"]
        return [f"{indent}try:",
                f"{indent}    _g = _{kind}_python({args})",
                f"{indent}except (ArithmeticError, ValueError):",
                f"{indent}    _g = _{kind}_point({args})"]

    def positional_on_floats() -> list[str]:
        """The Python twin's statements themselves: a second call costs as much as the
        arithmetic of the smallest models."""
        if python_first["value_and_grad"]:
            return [f"        return _value_and_grad_on_floats({args})"]
        if not python["value_and_grad"]:
            return [f"        return _value_and_grad_point({args})"]
        return (["        try:"] + ["        " + line for line in python_body["value_and_grad"]]
                + ["        except (ArithmeticError, ValueError):",
                   f"            return _value_and_grad_point({args})"])

    def straight(kind: str, result: str) -> tuple[str, str] | None:
        """(point kernel, result) where the by-keyword call of ``kind`` may go straight to
        the Numba kernel (see _public_function_by_dict), else None."""
        if len(names) < KEYWORDS_BY_DICT_FROM or python[kind] or python_first[kind]:
            return None
        return f"_{kind}_point", result

    lines += [f"_{kind}_point_floats_only = None     # the kernel, once compiled for floats"
              for kind, _, _ in programs if straight(kind, "") is not None]
    lines += [""] if lines[-1] != "" else []
    lines += [
        f"def _forward({args}):",
        f"    if {float_check}:",
        *on_floats("forward", "        "),
        "        return _g",
        f"    _arguments, _shape = _broadcast_scalars(INPUTS, {as_tuple})",
        "    if not _shape:",
        f"        return _forward_{'on_floats' if python_first['forward'] else 'point'}"
        "(*_arguments)",
        "    _out = np.empty((1, int(np.prod(_shape))))",
        ("    _forward_on_floats.on_arrays(_arguments, _out, _forward_loop_for)"
         if python_first["forward"] else "    _forward_loop_for(_out.shape[1])(*_arguments, _out)"),
        "    return _out[0].reshape(_shape)",
        "",
        *_public_function(spec, "forward", "_forward",
                          "The value (a float, or an array of the inputs' broadcast shape).",
                          floats=straight("forward", "_g")),
    ]
    if spec.value_and_grad is None:
        return lines
    public = [spec.public_name(p) for p in spec.parameters]
    grads = ", ".join(f"{p!r}: _g[{k + 1}]" for k, p in enumerate(public))
    grads_array = ", ".join(f"{p!r}: _out[{k + 1}].reshape(_shape)"
                            for k, p in enumerate(public))
    lines += [
        f"def _value_and_grad({args}):",
        f"    if {float_check}:",
        *on_floats("value_and_grad", "        "),
        f"        return _g[0], {{{grads}}}",
        f"    _arguments, _shape = _broadcast_scalars(INPUTS, {as_tuple})",
        "    if not _shape:",
        f"        _g = _value_and_grad_{'on_floats' if python_first['value_and_grad'] else 'point'}"
        "(*_arguments)",
        f"        return _g[0], {{{grads}}}",
        f"    _out = np.empty(({len(spec.parameters) + 1}, int(np.prod(_shape))))",
        ("    _value_and_grad_on_floats.on_arrays(_arguments, _out, _value_and_grad_loop_for)"
         if python_first["value_and_grad"]
         else "    _value_and_grad_loop_for(_out.shape[1])(*_arguments, _out)"),
        f"    return _out[0].reshape(_shape), {{{grads_array}}}",
        "",
        *_public_function(spec, "value_and_grad", "_value_and_grad",
                          "(value, {parameter name: gradient}), elementwise over broadcast "
                          "inputs.", floats=straight("value_and_grad", f"_g[0], {{{grads}}}")),
        *_public_function(spec, "grad", "_value_and_grad", "{parameter name: gradient}.",
                          item="[1]", floats=straight("value_and_grad", f"{{{grads}}}")),
        f"def value_and_grad_positional({typed_args}) -> tuple:",
        '    """(value, gradient of each parameter in PARAMETERS order), the inputs in INPUTS',
        '    order: value_and_grad without keywords or a dict, for the smallest models where',
        '    those cost more than the math.',
        '',
        f'    {spec.op_counts.get("value_and_grad", "-")} operations after common '
        'subexpressions are shared."""',
        f"    if {float_check}:",
        *positional_on_floats(),
        f"    _value, _grads = _value_and_grad({args})",
        "    return (_value, *[_grads[_p] for _p in PARAMETERS])",
        "",
    ]
    return lines


def _loop_with_body(kind: str, suffix: str, decorator: str, loop: str, names: list,
                    point: list, outputs: list) -> list[str]:
    """The loop over points of a model with more inputs than Numba inlines a call with (see
    CALL_STACK_ARGUMENTS): the point kernel's statements written into the loop itself, so
    that it vectorises as the inlined call does.  The arrays are ``_array_0, ...``; each
    point binds the kernel's own input names, and its return becomes the stores."""
    arrays = [f"_array_{k}" for k in range(len(names))]
    body = point[2:-2]                          # between the def line and the return
    returned = point[-2].strip()[len("return "):]
    lines = [decorator, f"def _{kind}_loop{suffix}({', '.join(arrays + ['out'])}):",
             f"    for _n in {loop}(out.shape[1]):"]
    lines += [f"        {n} = _at({a}, _n)" for n, a in zip(names, arrays)]
    lines += ["    " + line if line else line for line in body]
    if len(outputs) == 1 and kind == "forward":
        lines.append(f"        out[0, _n] = {returned}")
    else:
        results = ", ".join(f"_o{k}" for k in range(len(outputs))) + \
            ("," if len(outputs) == 1 else "")
        lines.append(f"        {results} = {returned}")
        lines += [f"        out[{k}, _n] = _o{k}" for k in range(len(outputs))]
    return lines + [""]


# The batched loop reads every array input and writes one row of ``out`` per output; LLVM's
# loop vectoriser needs a run-time check that each row written overlaps nothing else, and by
# default gives up beyond 128 checks ("too many memory checks needed"): the loop then runs
# one point at a time (measured: 6.0 -> 60.5 ns per point at 9 parameters).  Up to this many
# inputs plus twice the parameters it never came near the limit (measured on loops of 10 to
# 40 inputs); above it the module raises the limit, which only lets LLVM emit the checks (a
# few nanoseconds per call, once before the loop).  From about 60 arrays a second limit
# stops it: LLVM's loop-invariant code motion leaves alone a loop with more than 250 memory
# accesses (`-licm-mssa-max-acc-promotion`), so each array's data pointer is loaded again at
# every point and the loop cannot vectorise; the module raises that limit to 400 accesses
# (about 90 arrays: measured vectorised at 64 and 80 inputs).  Not further: at 200 inputs
# with the limit raised LLVM crashes while compiling the loop (a segmentation fault,
# measured), while at the default it compiles the loop unvectorised.
ALIAS_CHECKS_FROM = 20
LOOP_MEMORY_ACCESSES = 400


def _more_alias_checks() -> list[str]:
    """Module lines that raise LLVM's limits on run-time alias checks and on memory accesses
    in loops it optimises (see ALIAS_CHECKS_FROM); LLVM options are process-wide, and larger
    limits only let other loops vectorise too."""
    return [
        "def _allow_many_alias_checks():",
        "    from llvmlite import binding",
        "    binding.set_option('symgrad', '-vectorize-memory-check-threshold=1000000')",
        "    binding.set_option('symgrad', "
        f"'-licm-mssa-max-acc-promotion={LOOP_MEMORY_ACCESSES}')",
        "",
        "",
        "_allow_many_alias_checks()",
        "",
    ]


def _tuple_text(names: list[str]) -> str:
    """A tuple display of these names, also when there are none or one."""
    return "(" + ", ".join(names) + ("," if len(names) == 1 else "") + ")"


# From this many inputs the public functions take ``**inputs`` and look each name up once:
# CPython binds keyword-only arguments by scanning the parameter names for each keyword
# given, O(n^2) in the number of inputs (measured: 200 inputs, 620 us by keyword against
# 8 us positionally).  Below it, a plain keyword-only signature reads better in help().
KEYWORDS_BY_DICT_FROM = 17


def _public_function(spec: ModuleSpec, name: str, target: str, doc: str,
                     positional: tuple = (), item: str = "",
                     floats: tuple[str, str] | None = None) -> list[str]:
    """A function of the public API: the user's names as keyword-only arguments, handed on
    in order to symgrad's function of the same work, which names them in_0, in_1, ... .  The
    body mentions only the arguments and ``target`` (user names never start with an
    underscore), so no user name can shadow anything the work needs.  The signature is
    typed (a model with many inputs takes ``**_inputs``), and the docstring ends with the
    work's operation count.  ``floats``: (point kernel, result of its ``_g``) where a
    scalar model's call on floats goes straight to that kernel (see _public_function_by_dict)."""
    count = spec.op_counts.get("value_and_grad" if name == "grad" else name)
    if count is not None:
        doc += f"\n\n    {count} operations after common subexpressions are shared."
    if len(spec.inputs) >= KEYWORDS_BY_DICT_FROM:
        return _public_function_by_dict(name, target, doc, len(spec.inputs), positional,
                                        item, floats)
    public = [f"{spec.public_name(s)}: {_input_type(spec, s)}" for s in spec.inputs]
    typed = [f"{p}: np.ndarray" for p in positional]
    signature = typed + (["/"] if positional else []) + (["*"] if public else []) + public
    arguments = list(positional) + [spec.public_name(s) for s in spec.inputs]
    return [f"def {name}({', '.join(signature)}) -> {_result_type(spec, name)}:",
            f"    {docstring_literal(doc)}",
            f"    return {target}({', '.join(arguments)}){item}",
            ""]


def _input_type(spec: ModuleSpec, symbol) -> str:
    """The annotation of an input: an array for a matrix, an int for a free dimension, a
    float (or, in a scalar model, an array to broadcast) for a scalar."""
    if symbol in spec.free_dimensions:
        return "int"
    if isinstance(symbol, MatrixExpr):
        return "np.ndarray"
    return "float | np.ndarray" if spec.is_scalar_model else "float"


def _result_type(spec: ModuleSpec, name: str) -> str:
    """The annotation of what a public function returns."""
    if spec.is_scalar_model:
        value = gradient = "float | np.ndarray"
    else:
        value = "float" if not spec.output_shape else "np.ndarray"
        gradient = " | ".join(sorted({_input_type(spec, p) for p in spec.parameters})) \
            or "np.ndarray"
    return {"forward": value, "value_and_grad": f"tuple[{value}, dict[str, {gradient}]]",
            "grad": f"dict[str, {gradient}]", "vjp": f"dict[str, {gradient}]"}[name]


def _public_function_by_dict(name: str, target: str, doc: str, count: int,
                             positional: tuple, item: str,
                             floats: tuple[str, str] | None) -> list[str]:
    """The public function of a model with many inputs: ``**_inputs``, read in INPUTS
    order by one C call (``_in_order``, O(n)); a missing or unknown name raises the
    TypeError Python's own binding would (``_keyword_error``, in the module).

    With ``floats`` (a scalar model's point kernel and what to return of its result ``_g``),
    a call whose inputs are all numbers goes straight to the kernel once Numba has compiled
    it for floats and compiles it for nothing else (``_floats_only``): no check of each
    input in Python, which costs more than the kernel itself at 200 inputs.  Any input the
    kernel cannot take (an array, a string) makes Numba raise TypeError before it runs, and
    the checked call below takes the inputs as they are."""
    head = list(positional) + (["/"] if positional else []) + ["**_inputs"]
    call = f"{target}({''.join(p + ', ' for p in positional)}*_arguments){item}"
    lines = [f"def {name}({', '.join(head)}):", f"    {docstring_literal(doc)}"]
    if floats is not None:
        kernel, result = floats
        ready = f"{kernel}_floats_only"
        lines.append(f"    global {ready}")
    lines += ["    try:",
              "        _arguments = _in_order(_inputs)",
              "    except KeyError:",
              "        _arguments = None",
              f"    if _arguments is None or len(_inputs) != {count}:",
              f"        raise _keyword_error({name!r}, _inputs)"]
    if floats is None:
        return lines + [f"    return {call}", ""]
    return lines + [f"    if {ready} is not None:",
                    "        try:",
                    f"            _g = {ready}(*_arguments)",
                    "        except TypeError:",
                    "            pass     # an input that is no number: the checked call",
                    "        else:",
                    f"            return {result}",
                    f"    _result = {call}",
                    f"    if {ready} is None and {kernel}.signatures:   # compiled for floats",
                    f"        {ready} = _floats_only({kernel})",
                    "    return _result",
                    ""]


def _keyword_error_function() -> list[str]:
    """``_in_order(inputs)``, the values of a call's keywords in INPUTS order, and
    ``_keyword_error(function, given)``: the TypeError for a call by keywords that misses
    an input or names one the model does not have (INPUTS holds the public names)."""
    return [
        "_in_order = _reader(INPUTS)",
        "",
        "",
        "def _keyword_error(function, given):",
        "    missing = [name for name in INPUTS if name not in given]",
        "    if missing:",
        "        return TypeError(f'{function}() missing {len(missing)} required keyword-only '",
        "                         f'argument{\"s\" if len(missing) > 1 else \"\"}: '",
        "                         + ', '.join(repr(name) for name in missing))",
        "    unknown = [name for name in given if name not in INPUTS]",
        "    return TypeError(f'{function}() got an unexpected keyword argument {unknown[0]!r}')",
        "",
    ]


# ------------------------------------------------------------------------------------------
# Matrix models: one kernel per program, which opens by checking its inputs' shapes and
# binding the dimensions (so a call with float64 arrays costs one dispatch into Numba); any
# input the kernel cannot take goes through the checked Python path (_prepare), which
# converts it or says what is wrong with it.
# ------------------------------------------------------------------------------------------
def _matrix_model(spec: ModuleSpec) -> list[str]:
    dims = sorted({d for s in spec.inputs if isinstance(s, MatrixExpr)
                   for e in s.shape for d in sp.sympify(e).free_symbols}, key=lambda d: d.name)
    lines: list[str] = []
    entries = [("forward", spec.forward, ["value"], [])]
    if spec.value_and_grad is not None:
        entries.append(("value_and_grad", spec.value_and_grad,
                        ["value"] + [p.name for p in spec.parameters], []))
    if spec.vjp is not None:
        entries.append(("vjp", spec.vjp, [p.name for p in spec.parameters], ["upstream"]))
    threaded = set()    # kinds with a parallel twin, called through _{kind}_call
    for kind, program, outputs, extra in entries:
        lines += _entry_kernels(spec, kind, program, outputs, extra, threaded)
    lines += _prepare_function(spec, dims)
    lines += _wrappers(spec, dims, threaded)
    return lines


def _entry_kernels(spec: ModuleSpec, kind: str, program: Program, outputs: list[str],
                   extra: list[str], threaded: set) -> list[str]:
    """A kernel that takes the inputs as the caller gives them, and its parallel twin where
    its loops can be large.

    A kernel that calls BLAS gets no twin: BLAS runs its products on all threads, and its
    threads keep spinning between calls, so loops on Numba's threads beside them run slower
    than on one (measured: the two-layer net at m = 16384, 2 cores, 21 ms serial, 40 ms with
    prange loops).

    The kernel reads vectors 1-D or 2-D, checks every shape and binds the dimensions, then
    computes; a shape it cannot take raises, and the caller's checked path says what is
    wrong.  A serial kernel with a twin raises _Threads when the twin should run (the
    thread count comes from the caller: numba.get_num_threads() in compiled code would keep
    Numba from caching the kernel), and ``_{kind}_call`` then calls the twin; so the
    slow-to-compile twin compiles only when a call needs it."""
    names = [s.name for s in spec.inputs]
    parameters = [f"_in_{n}" for n in extra + names]
    prologue = _entry_prologue(spec, extra)
    inputs = {s.name: s for s in spec.inputs}
    returns = _output_expressions(program, outputs)
    if kind != "forward":
        # a gradient in its input's own shape (1-D for a 1-D vector)
        returns = [f"{r}.reshape(_in_{o}.shape)" if isinstance(inputs.get(o), MatrixExpr)
                   else r for r, o in zip(returns, outputs)]
        if len(returns) == 1:
            returns = [returns[0] + ","]
    name = f"_{kind}_kernel"
    lines, sizes = _kernel(name, parameters, program, returns, prologue=prologue)
    work = sp.Max(*sizes) if sizes else None
    if work is None or (work.is_number and work < PARALLEL_MIN_ELEMENTS):
        return lines
    threaded.add(kind)
    condition = f"{sp.pycode(work)} >= {PARALLEL_MIN_ELEMENTS}" if not work.is_number else "True"
    signal = [f"    if {condition} and _threads > 1:", "        raise _Threads"]
    lines, _ = _kernel(name, parameters + ["_threads"], program, returns,
                       prologue=prologue + signal)
    parallel, _ = _kernel(f"{name}_parallel", parameters, program, returns, parallel=True,
                          prologue=prologue)
    arguments = ", ".join(extra + names)
    return lines + parallel + [
        f"def _{kind}_call({arguments}):",
        "    try:",
        f"        return {name}({arguments}, numba.get_num_threads())",
        "    except _Threads:",
        f"        return {name}_parallel({arguments})",
        ""]


def _entry_prologue(spec: ModuleSpec, extra: list[str]) -> list[str]:
    """The kernel's first lines: its inputs as 2-D arrays, their shapes checked, the
    dimensions bound."""
    lines = []
    for s in spec.inputs:
        source = f"_in_{s.name}"
        if isinstance(s, MatrixExpr):
            lines.append(f"    {s.name} = {_as_2d(source, *s.shape)}")
        else:
            lines.append(f"    {s.name} = {source}")
    for s in spec.inputs:
        if s in spec.free_dimensions:
            lines += [f"    if {s.name} < 0:", f"        raise ValueError({s.name!r})"]
    # the axis that _as_2d makes 1 needs no check
    fixed = {(s, 1 if s.shape[1] == 1 else 0) for s in spec.inputs
             if isinstance(s, MatrixExpr) and 1 in (s.shape[0], s.shape[1])}
    for s, axis, actual, binding, expected, _ in _shape_steps(
            spec, {s.name: s.name for s in spec.inputs}):
        if binding is not None:
            lines.append(f"    {binding}")
        if expected is not None and (s, axis) not in fixed:
            lines += [f"    if {actual} != {expected}:", f"        raise ValueError({s.name!r})"]
    for (s, axis), (least, _) in spec.least_extents.items():
        lines += [f"    if {s.name}.shape[{axis}] < {least}:",
                  f"        raise ValueError({s.name!r})"]
    if extra:       # the upstream adjoint of a matrix output
        rows, cols = (sp.pycode(sp.sympify(d)) for d in spec.output_shape)
        lines += [f"    upstream = {_as_2d('_in_upstream', *spec.output_shape)}",
                  f"    if upstream.shape[0] != {rows} or upstream.shape[1] != {cols}:",
                  "        raise ValueError('upstream')"]
    return lines


def _as_2d(name: str, rows, cols) -> str:
    """How a kernel reads an input of this shape: a vector may arrive 1-D or 2-D, and the
    same reshape reads both (a 2-D array of another shape fails it, and the checked path
    then says what is wrong)."""
    if cols == 1:
        return f"{name}.reshape(({name}.shape[0], 1))"
    if rows == 1:
        return f"{name}.reshape((1, {name}.shape[-1]))"
    return name


def _shape_steps(spec: ModuleSpec, array_of: dict):
    """For each axis of each matrix input: (input, axis, the extent read, the line that binds
    a dimension from it or None, the expected extent to check or None, and the message's
    explanation of that extent as a %-template and the dimensions that fill it).

    Every binding comes before every check: an extent such as ``2 n`` is checked against
    an n that a later input may be the one to give."""
    bound: dict = {}       # dimension symbol -> the input it is read from
    checks = []
    for s in spec.inputs:
        if not isinstance(s, MatrixExpr):
            continue
        for axis, extent in enumerate(s.shape):
            extent = sp.sympify(extent)
            actual = f"{array_of[s.name]}.shape[{axis}]"
            unbound = [d for d in extent.free_symbols if d not in bound]
            if len(unbound) == 1 and sp.Poly(extent, unbound[0]).degree() == 1:
                d = unbound[0]
                coefficient = sp.Poly(extent, d).coeff_monomial(d)
                offset = extent - coefficient * d
                solved = f"({actual} - {sp.pycode(offset)}) // {sp.pycode(coefficient)}" \
                    if (coefficient != 1 or offset != 0) else actual
                bound[d] = s
                yield s, axis, actual, f"{d.name} = {solved}", None, None
                if extent == d:         # read as it is: nothing to check
                    continue
            checks.append((s, axis, actual, extent))
    for s, axis, actual, extent in checks:
        unread = sorted((d for d in extent.free_symbols if d not in bound), key=str)
        if unread:
            raise ValueError(
                f"symgrad cannot read the dimension {spec.display(unread[0])} off the inputs' "
                f"shapes: input {spec.public_name(s)!r} has the extent "
                f"{spec.display(extent)}, and no input has an extent of the form a*"
                f"{spec.display(unread[0])} + b to read it from")
        # the message is a %-template with symgrad's dimension names as its values, so that
        # no user text is ever formatted as code (an f-string would run a name's braces)
        shown = sorted(extent.free_symbols, key=lambda d: d.name)
        origin = ", ".join(f"{spec.display(d)} = %d from {spec.public_name(bound[d])!r}"
                           for d in shown)
        template = (f"expected {spec.display(extent)}".replace("%", "%%")
                    + (f" ({origin})" if origin else ""))
        yield s, axis, actual, None, sp.pycode(extent), (template, [d.name for d in shown])


def entry_reason(name: str, entry, least: int) -> str:
    """Why an input needs ``least`` rows or columns (for messages): the entry read there.

    >>> entry_reason("A", sp.MatrixSymbol("A", 9, 1)[5, 0], 6)
    'the model reads its entry A[5, 0], so it needs at least 6'
    """
    return f"the model reads its entry {name}[{entry.i}, {entry.j}], so it needs at least {least}"


def _prepare_function(spec: ModuleSpec, dims: list) -> list[str]:
    """_prepare(inputs) -> (inputs as float64 2-D arrays and floats..., dimensions..., shapes
    to give the gradients back in): the checked path, whose errors name the input."""
    names = [s.name for s in spec.inputs]
    lines = [f"def _prepare({', '.join(names)}):"]
    for s in spec.inputs:
        public = spec.public_name(s)
        if s in spec.free_dimensions:
            lines.append(f"    {s.name} = _dimension_input({public!r}, {s.name})")
        elif not isinstance(s, MatrixExpr):
            lines.append(f"    {s.name} = _real_scalar({public!r}, {s.name})")
        else:
            rows, cols = (_hint(spec, e) for e in s.shape)
            lines.append(f"    {s.name}, _{s.name}_1d = _matrix_input({public!r}, {s.name}, "
                         f"{rows!r}, {cols!r})")
    for s, axis, actual, binding, expected, message in _shape_steps(
            spec, {n: n for n in names}):
        if binding is not None:
            lines.append(f"    {binding}")
        if expected is not None:
            template, values = message
            text = f"{template!r} % {_tuple_text(values)}" if values else repr(template)
            lines += [f"    if {actual} != {expected}:",
                      f"        raise _dimension_error({spec.public_name(s)!r}, {axis}, "
                      f"{s.name}.shape, {text})"]
    for (s, axis), (least, entry) in spec.least_extents.items():
        lines += [f"    if {s.name}.shape[{axis}] < {least}:",
                  f"        raise _dimension_error({spec.public_name(s)!r}, {axis}, "
                  f"{s.name}.shape, {entry_reason(spec.public_name(s), entry, least)!r})"]
    shapes = []
    for s in spec.inputs:
        # only a vector can arrive 1-D: its gradient then goes back 1-D
        if isinstance(s, MatrixExpr) and 1 in (s.shape[0], s.shape[1]):
            shapes.append(f"({s.name}.shape[0] * {s.name}.shape[1],) if _{s.name}_1d else None")
        else:
            shapes.append("None")
    returned = names + [d.name for d in dims] + [_tuple_text(shapes)]
    lines.append(f"    return {', '.join(returned)}")
    lines.append("")
    return lines


def _fast_gate(spec: ModuleSpec, extra: list[str]) -> str:
    """The Python test that sends a call straight to the kernel: C-contiguous float64 arrays,
    floats and ints as such (the kernel then compiles once, for these types)."""
    # (a vector's kernel reshapes it, which a (2, 1, 1) array would pass as well)
    dimensions = dict.fromkeys(extra, "<= 2" if 1 in spec.output_shape else "== 2")
    dimensions.update((s.name, "<= 2" if 1 in s.shape else "== 2") for s in spec.inputs
                      if isinstance(s, MatrixExpr))
    tests = [f"type({n}) is _ndarray and {n}.dtype is _float64 and {n}.ndim {d} and "
             f"{n}.flags.c_contiguous" for n, d in dimensions.items()]
    for s in spec.inputs:
        if s in spec.free_dimensions:
            tests.append(f"type({s.name}) is int")
        elif not isinstance(s, MatrixExpr):
            tests.append(f"type({s.name}) is float")
    return " and ".join(tests) or "True"


def _wrappers(spec: ModuleSpec, dims: list, threaded: set) -> list[str]:
    names = [s.name for s in spec.inputs]
    args = ", ".join(names)

    def entry_call(kind: str, arguments: str) -> str:
        return f"_{kind}_call({arguments})" if kind in threaded else \
            f"_{kind}_kernel({arguments})"

    value = "float(_value)" if not spec.output_shape else "_value"
    direct = {}         # parameter -> its gradient from the kernel as it is
    reshaped = {}       # parameter -> its gradient on the checked path (1-D inputs come back 1-D)
    offset = 0 if spec.value_and_grad is None else 1
    for k, p in enumerate(spec.parameters):
        r = f"_result[{k + offset}]"
        key = spec.public_name(p)
        if isinstance(p, MatrixExpr):
            i = names.index(p.name)
            direct[key] = r
            reshaped[key] = f"{r}.reshape(_shapes[{i}]) if _shapes[{i}] is not None else {r}"
        else:
            direct[key] = reshaped[key] = f"float({r})"

    def as_dict(table):
        return "{" + ", ".join(f"{n!r}: {e}" for n, e in table.items()) + "}"

    def fast_then_checked(call, returns, extra=()):
        """Lines that try the kernel on the inputs as they are, then on checked ones."""
        return [
            f"    if {_fast_gate(spec, list(extra))}:",
            "        try:",
            f"            _result = {call}",
            "        except Exception:  # noqa: BLE001 - the checked path below says what is wrong",
            "            pass",
            "        else:",
            f"            return {returns}",
        ]

    unpack = ", ".join(names + [d.name for d in dims] + ["_shapes"])
    value_call = entry_call("forward", args)
    lines = [
        f"def _forward({args}):",
        *fast_then_checked(value_call, value.replace("_value", "_result")),
        f"    {unpack} = _prepare({args})",
        f"    _value = {value_call}",
        f"    return {value}",
        "",
        *_public_function(spec, "forward", "_forward", "The value of the model."),
    ]
    if spec.value_and_grad is not None:
        call = entry_call("value_and_grad", args)
        lines += [
            f"def _value_and_grad({args}):",
            *fast_then_checked(call, f"float(_result[0]), {as_dict(direct)}"),
            f"    {unpack} = _prepare({args})",
            f"    _result = {call}",
            f"    return float(_result[0]), {as_dict(reshaped)}",
            "",
            *_public_function(spec, "value_and_grad", "_value_and_grad",
                              "(value, {parameter name: gradient in the parameter's own "
                              "shape})."),
            *_public_function(spec, "grad", "_value_and_grad",
                              "{parameter name: gradient in the parameter's own shape}.",
                              item="[1]"),
        ]
    if spec.vjp is not None:
        rows_text, cols_text = (_dim_text(d) for d in spec.output_shape)
        with_upstream = ", ".join(["upstream"] + names)
        call = entry_call("vjp", with_upstream)
        lines += [
            f"def _vjp({with_upstream}):",
            *fast_then_checked(call, as_dict(direct), extra=["upstream"]),
            f"    {unpack} = _prepare({args})",
            f"    upstream, _ = _matrix_input('upstream', upstream, {rows_text}, {cols_text})",
            f"    if upstream.shape != ({rows_text}, {cols_text}):",
            "        raise ValueError(f'upstream has shape {upstream.shape}, the output has "
            f"shape {{({rows_text}, {cols_text})}}')",
            f"    _result = {call}",
            f"    return {as_dict(reshaped)}",
            "",
            *_public_function(spec, "vjp", "_vjp",
                              "{parameter name: upstream-weighted gradient}: the adjoint of "
                              "each parameter\n    when the output's adjoint is ``upstream`` "
                              "(an array of the output's shape).",
                              positional=(_upstream_argument(spec),)),
        ]
    return lines


def _upstream_argument(spec: ModuleSpec) -> str:
    """vjp's positional-only argument: ``upstream``, or ``_upstream`` in a model that has an
    input of that name (a user's name never starts with an underscore)."""
    public = {spec.public_name(s) for s in spec.inputs}
    return "_upstream" if "upstream" in public else "upstream"


def _dim_text(d) -> str:
    d = sp.sympify(d)
    return str(int(d)) if d.is_Integer else f"int({sp.pycode(d)})"


def _hint(spec: ModuleSpec, extent):
    extent = sp.sympify(extent)
    return int(extent) if extent.is_Integer else spec.display(extent)


def module_name_for(source: str) -> str:
    """A valid, content-addressed module name."""
    digest = re.search(r"content hash ([0-9a-f]+)", source).group(1)
    return f"symgrad_model_{digest}"
