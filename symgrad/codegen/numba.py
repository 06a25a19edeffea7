"""The Numba emitter: Python source with ``@numba.njit`` kernels from a
:class:`~symgrad.codegen.ir.Program`.

One emitter method per operation (``_emit_MatMul``, ``_emit_Map`` ...), dispatched by class
name like SymPy's printers, so that a new operation is one method here and a missing one fails
loudly.  Scalar expressions inside statements are printed by :class:`ScalarPrinter`.

Matrix products go to BLAS through ``np.dot`` (transposed operands are passed as views, never
copied); each Map is one loop nest without temporaries; reductions are loops.
"""

from __future__ import annotations

import math

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pycode import PythonCodePrinter

from symgrad import functions, ops
from symgrad.codegen.ir import Statement

FASTMATH_FLAGS = '{"nsz", "arcp", "contract", "reassoc"}'  # never nnan/ninf: inf/nan stay right

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

    def _module_format(self, fqn, register=True):
        return fqn.replace("numpy.", "np.")

    def _print_Symbol(self, expr):
        return self.names.get(expr, expr.name)

    def _print_MatrixSymbol(self, expr):
        return self.names.get(expr, expr.name)

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
        x = self._print(expr.args[0])
        at_zero = self._print(sp.Float(expr.args[1])) if len(expr.args) > 1 else "0.5"
        return f"(1.0 if {x} > 0.0 else ({at_zero} if {x} == 0.0 else 0.0))"

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

    _print_Piecewise = PythonCodePrinter._print_Piecewise

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
        exponent = sp.Float(exponent) if exponent.is_Rational else exponent
        power = self._print(exponent) if exponent.is_Atom else f"({self._print(exponent)})"
        return f"({b} ** {power})"

    def _print_Rational(self, expr):
        return repr(float(expr))

    def _print_Integer(self, expr):
        return f"{int(expr)}.0"

    def _print_Half(self, expr):
        return "0.5"

    def _print_Float(self, expr):
        return repr(float(expr))

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
        fqn = fqn.replace("numpy.", "np.")
        if fqn.startswith("np.") and hasattr(math, fqn[3:]):
            return "math." + fqn[3:]
        return fqn

    _MAX, _MIN = "_py_max", "_py_min"

    def _print_Pow(self, expr, rational=False):
        base, exponent = expr.args
        printed = super()._print_Pow(expr, rational).replace("np.sqrt", "math.sqrt")
        if " ** " in printed and not (exponent.is_Integer or exponent.is_Float and
                                      float(exponent).is_integer()):
            # Python's ** gives a complex number for a negative base and a fractional
            # exponent; math.pow raises there, and the caller falls back to the kernel,
            # which gives nan as NumPy does
            exponent = sp.Float(exponent) if exponent.is_Rational else exponent
            return f"math.pow({self._print(base)}, {self._print(exponent)})"
        return printed

    def _print_Pi(self, expr):
        return "math.pi"

    def _print_Exp1(self, expr):
        return "math.e"


def _names_read(operation) -> set:
    """The program names an operation reads (a transposed name counts as its name)."""
    if isinstance(operation, (sp.Symbol, sp.MatrixSymbol)):
        return set()
    if isinstance(operation, ops.Map):
        out = set()
        for o in operation.operands:
            out |= _names_read(o) | ({o} if isinstance(o, (sp.Symbol, sp.MatrixSymbol)) else set())
        return out
    out = set()
    for a in getattr(operation, "args", ()):
        if isinstance(a, (sp.Symbol, sp.MatrixSymbol)):
            out.add(a)
        elif isinstance(a, sp.Basic) and not isinstance(a, sp.Lambda):
            out |= _names_read(a)
    return out


def _summed_along(operation, target) -> str:
    """How a sum fused into target's loop runs: "row" (each row to one entry: a row sum,
    or target times a column vector) or "column" (a column sum, or a row vector times
    target)."""
    if isinstance(operation, sp.MatMul):
        return "column" if operation.args[1] == target else "row"
    return "column" if operation.axis == 0 else "row"


def _vector_times_map(operation, maps: set):
    """(vector, Map target) when operation is a row vector times a Map or a Map times a
    column vector: a sum of the Map's entries weighted by the vector, which the Map's own
    loop can accumulate (then the Map's matrix is not read a second time)."""
    if not isinstance(operation, sp.MatMul) or len(operation.args) != 2:
        return None
    a, b = operation.args
    if b in maps and a.shape[0] == 1 and _is_array(a):
        return a, b
    if a in maps and b.shape[1] == 1 and _is_array(b):
        return b, a
    return None


def _stored(matrix):
    """The array behind a matrix operand: the operand itself, or what it transposes."""
    return matrix.arg if isinstance(matrix, sp.Transpose) else matrix


def _is_array(matrix) -> bool:
    """Whether a matrix operand is an array of the kernel, or the transpose of one."""
    return isinstance(_stored(matrix), sp.MatrixSymbol)


def _loops_suit(matrix) -> bool:
    """Whether matrix @ vector should be emitted as loops (KernelEmitter._matrix_vector)
    rather than sent to BLAS: the matrix is an array of the kernel (or its transpose), and
    its stored rows are not short and of a known length.  Over rows of 4 to 16 known
    entries LLVM unrolls the inner loop completely and vectorises the outer one with
    gathers, 5-10x slower than BLAS (measured for 1024 x 16, 4096 x 4, 1024 x 12); from 32
    entries (dot products along rows) or 16 (row updates) the loops tie or beat BLAS."""
    if not _is_array(matrix):
        return False
    row_length = sp.sympify(_stored(matrix).shape[1])
    shortest = 16 if isinstance(matrix, sp.Transpose) else 32
    return not (row_length.is_Integer and int(row_length) < shortest)


def unsupported(kind: str) -> NotImplementedError:
    return NotImplementedError(
        f"the Numba emitter has no method for {kind}: add _emit_{kind} to "
        "symgrad.codegen.numba.KernelEmitter")


class KernelEmitter:
    """Emits the body of one kernel: one method per operation."""

    def __init__(self, parallel: bool = False, printer: ScalarPrinter | None = None):
        self.lines: list[str] = []
        self.printer = printer or ScalarPrinter()
        self.parallel = parallel          # outer loops as numba.prange
        self.loop_sizes: list = []        # element counts of the loops that may run in parallel
        self.uses_blas = False            # whether a product goes to BLAS (np.dot)
        # per name, the readers not yet emitted, and the arrays this kernel allocated itself:
        # set by emit_program, they let a Map write over a dead operand (_buffer_for)
        self._remaining: dict = {}
        self._fresh: set = set()

    # -- helpers -----------------------------------------------------------------------
    def emit(self, line: str, depth: int = 1):
        self.lines.append("    " * depth + line)

    def scalar(self, e) -> str:
        return self.printer.doprint(e)

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

    def loops(self, shape, depth: int = 1, independent: bool = True,
              before_inner: list[str] = ()):
        """Open a loop nest over shape; returns (i, j, inner depth).  The outer loop is a
        prange in a parallel kernel when its iterations are independent (or a reduction
        into one scalar, which Numba handles).  before_inner: lines for the body of the
        outer loop, before the inner one (nests of two loops only)."""
        rows, cols = shape
        if independent and depth == 1:
            self.loop_sizes.append(sp.sympify(rows) * sp.sympify(cols))
        outer = "numba.prange" if self.parallel and independent and depth == 1 else "range"
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
    def emit_program(self, statements: list, outputs) -> None:
        """Emit every statement.  A row, column or total sum of a Map is accumulated in the
        Map's own loop, and the Map's matrix is not stored when only its sums read it; Maps
        of one shape that do not wait on each other's sums share one loop (statements
        between them that they do not read move after it), and the pieces their bodies
        share are computed once."""
        uses: dict = {}
        for s in statements:
            for name in _names_read(s.operation):
                uses[name] = uses.get(name, 0) + 1
        for atom in outputs:        # an output is read after the kernel: always stored
            for name in _names_read(atom) | ({atom} if isinstance(atom, sp.Basic) else set()):
                uses[name] = float("inf")
        # readers not yet emitted, per name; with the arrays this kernel allocated itself
        # (not inputs, not views of them), it lets a Map write over an operand that nothing
        # after it reads (see _buffer_for)
        self._remaining = dict(uses)
        self._fresh = {s.target for s in statements if isinstance(s.operation, (sp.MatMul,
                                                                                ops.Map))}
        maps = {s.target for s in statements if isinstance(s.operation, ops.Map)}
        sums: dict = {}
        position = {s.target: k for k, s in reversed(list(enumerate(statements)))}
        for s in statements:
            if isinstance(s.operation, (ops.AxisSum, ops.SumAll)) and s.operation.arg in maps:
                sums.setdefault(s.operation.arg, []).append(s)
            elif (pair := _vector_times_map(s.operation, maps)) is not None:
                vector, matrix = pair
                stored = _stored(vector)
                # the vector must be ready when the loop starts (and not filled by a loop)
                if stored not in maps and (stored not in position
                                           or position[stored] < position[matrix]):
                    sums.setdefault(matrix, []).append(s)
        summed = {r.target for rs in sums.values() for r in rs}
        pending = [s for s in statements if s.target not in summed]
        while pending:
            s = pending.pop(0)
            if not isinstance(s.operation, ops.Map):
                self._emit_and_count(s)
                continue
            self._hoist_last_readers(s, pending, sums)
            group = [s] + self._loop_partners(s, pending, sums)
            # a member whose only readers are its sums and later members (which take its
            # element in the loop itself) is not stored
            readers = {m.target: sum(m.target in _names_read(later.operation)
                                     for later in group[k + 1:])
                       for k, m in enumerate(group)}
            units = [(m.target, m.operation, sums.get(m.target, []),
                      uses.get(m.target, 0) > len(sums.get(m.target, [])) + readers[m.target])
                     for m in group]
            if len(units) == 1 and not units[0][2]:
                self.statement(s)
            else:
                self._maps_in_one_loop(units)
            for m in group:
                self._count_read(m)
                for r in sums.get(m.target, []):
                    self._count_read(r)

    def _emit_and_count(self, s) -> None:
        self.statement(s)
        self._count_read(s)

    def _count_read(self, s) -> None:
        for name in _names_read(s.operation):
            self._remaining[name] = self._remaining.get(name, 1) - 1

    def _hoist_last_readers(self, s, pending: list, sums: dict) -> None:
        """Before the Map s, emit the other readers of an operand that s could write over,
        when they can run now (a product reading A1 before dZ1 = ... A1 ... overwrites it):
        then the Map needs no new array."""
        waiting = {q.target for q in pending} | {s.target}
        waiting |= {r.target for q in [s, *pending] for r in sums.get(q.target, [])}
        for operand in s.operation.operands:
            if operand not in self._fresh or tuple(operand.shape) != tuple(s.operation.shape) \
                    or self._remaining.get(operand, 0) <= 1:
                continue
            readers = [q for q in pending if operand in _names_read(q.operation)]
            if len(readers) != self._remaining[operand] - 1 or any(
                    isinstance(q.operation, ops.Map) or _names_read(q.operation) & waiting
                    for q in readers):
                continue
            for q in readers:
                pending.remove(q)
                self._emit_and_count(q)

    def _loop_partners(self, first, pending: list, sums: dict) -> list:
        """The later Maps of first's shape that can share its loop, taken out of pending:
        each reads nothing that the loop would not have ready (a statement it passes over,
        a sum the loop is still accumulating, a transposed member)."""
        shape = tuple(first.operation.shape)
        members = {first.target}
        waiting = {r.target for r in sums.get(first.target, [])}
        partners = []
        for s in list(pending):
            read = _names_read(s.operation)
            for r in sums.get(s.target, []):   # a weighted sum reads its vector in the loop
                read |= _names_read(r.operation) - {s.target}
            if isinstance(s.operation, ops.Map) and tuple(s.operation.shape) == shape \
                    and not read & waiting \
                    and not any(isinstance(o, sp.Transpose) and o.arg in members
                                for o in s.operation.operands):
                partners.append(s)
                members.add(s.target)
                waiting |= {r.target for r in sums.get(s.target, [])}
                pending.remove(s)
            else:       # emitted after the loop, with the sums that come with it
                waiting |= {s.target} | {r.target for r in sums.get(s.target, [])}
        return partners

    def _maps_in_one_loop(self, units: list) -> None:
        """One loop nest for Maps of one shape, each with its sums, stored or not (only its
        sums read it): their operands are loaded once, their bodies go through one CSE.
        A sum whose entry stays the same through the innermost loop (a row sum, a total)
        is accumulated in a local variable and stored once: LLVM then keeps it in a
        register and vectorises the loop; the other sums add into their arrays."""
        shape = units[0][1].shape
        rows, cols = shape
        nested = rows != 1 and cols != 1
        registers = []      # (accumulator, reduction target, entry, whether per row)
        in_memory = False   # some sum adds into an array entry that the outer loop revisits
        for target, e, reductions, store in units:
            for r in reductions:
                if isinstance(r.operation, ops.SumAll):
                    self.emit(f"{r.target.name} = 0.0")
                    continue
                along = _summed_along(r.operation, target)
                if (along == "row" and cols != 1) or (along == "column" and cols == 1):
                    registers.append((f"_acc{len(registers)}", r.target,
                                      "_i, 0" if nested else "0, 0", nested))
                    self.emit(f"{r.target.name} = np.empty({self.shape(r.operation.shape)})")
                else:
                    in_memory |= nested and along == "column"
                    self.emit(f"{r.target.name} = np.zeros({self.shape(r.operation.shape)})")
            if store:
                # not over a member of this loop: that one is written in the loop too
                self.emit(f"{target.name} = {self._buffer_for(e, {u[0] for u in units})}")
        accumulator = {target: acc for acc, target, _, _ in registers}
        for acc, _, _, per_row in registers:
            if not per_row:
                self.emit(f"{acc} = 0.0")
        i, j, depth = self.loops(shape, independent=not in_memory,
                                 before_inner=[f"{acc} = 0.0" for acc, _, _, per_row
                                               in registers if per_row])
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
            body = functions.inline_definitions(e.body.xreplace(variables))
            values[target] = body
            bodies.append(body)
        for text, v in loads.items():
            self.emit(f"{v.name} = {text}", depth)
        replacements, bodies = sp.cse(bodies, symbols=sp.numbered_symbols("_c"),
                                      optimizations=None)
        for symbol, value in replacements:
            self.emit(f"{symbol.name} = {self.scalar(value)}", depth)
        for k, ((target, _, reductions, store), body) in enumerate(zip(units, bodies)):
            self.emit(f"_e{k} = {self.scalar(body)}", depth)
            if store:
                self.emit(f"{target.name}[{i}, {j}] = _e{k}", depth)
            for r in reductions:
                term = f"_e{k}"
                if isinstance(r.operation, sp.MatMul):       # a vector times this Map
                    a, b = r.operation.args
                    # (a M)[0, j] = sum_i a[0, i] M[i, j];  (M b)[i, 0] = sum_j M[i, j] b[j, 0]
                    weight = (self.load(a, "0", i, a.shape) if b == target
                              else self.load(b, j, "0", b.shape))
                    term += " * " + (loads[weight].name if weight in loads else weight)
                if isinstance(r.operation, ops.SumAll):
                    self.emit(f"{r.target.name} += {term}", depth)
                elif r.target in accumulator:
                    self.emit(f"{accumulator[r.target]} += {term}", depth)
                elif _summed_along(r.operation, target) == "column":
                    self.emit(f"{r.target.name}[0, {j}] += {term}", depth)
                else:
                    self.emit(f"{r.target.name}[{i}, 0] += {term}", depth)
        for acc, reduced, entry, per_row in registers:
            self.emit(f"{reduced.name}[{entry}] = {acc}", depth - 1 if per_row else 1)

    def statement(self, s: Statement):
        kind = type(s.operation).__name__
        method = next((getattr(self, f"_emit_{c.__name__}") for c in type(s.operation).__mro__
                       if hasattr(self, f"_emit_{c.__name__}")), None)
        if method is None:
            if s.is_matrix:
                raise unsupported(kind)
            method = self._emit_scalar
        method(s.target, s.operation)

    def _emit_scalar(self, target, e):
        self.emit(f"{target.name} = {self.scalar(e)}")

    def _emit_MatMul(self, target, e):
        """BLAS for real products; the degenerate shapes get what suits them: gemv for a
        matrix times a vector, a loop for an outer product (inner dimension 1) or a dot
        product (a 1 x 1 result)."""
        a, b = e.args
        rows, inner = a.shape
        cols = b.shape[1]
        if inner == 1:
            self.emit(f"{target.name} = np.empty({self.shape(e.shape)})")
            i, j, depth = self.loops(e.shape)
            self.emit(f"{target.name}[{i}, {j}] = {self.load(a, i, '0', (rows, 1))} * "
                      f"{self.load(b, '0', j, (1, cols))}", depth)
        elif rows == 1 and cols == 1:
            self.emit("_total = 0.0")
            self.emit(f"for _r in range({self.dim(inner)}):")
            self.emit(f"_total += {self.load(a, '0', '_r', (1, inner))} * "
                      f"{self.load(b, '_r', '0', (inner, 1))}", 2)
            self.emit(f"{target.name} = np.full((1, 1), _total)")
        elif cols == 1 and _loops_suit(a):
            self._matrix_vector(target, e, a, b)
        elif rows == 1 and _loops_suit(b.T):
            # (a b)^T = b^T a^T: the matrix is b^T, the vector a^T
            self._matrix_vector(target, e, b.T, a.T)
        elif cols == 1:
            self.uses_blas = True
            self.emit(f"{target.name} = np.dot({self.name(a)}, {self.flat(b)})"
                      f".reshape({self.shape(e.shape)})")
        elif rows == 1:
            self.uses_blas = True
            self.emit(f"{target.name} = np.dot({self.flat(a)}, {self.name(b)})"
                      f".reshape({self.shape(e.shape)})")
        else:
            self.uses_blas = True
            self.emit(f"{target.name} = np.dot({self.name(a)}, {self.name(b)})")

    def _matrix_vector(self, target, e, matrix, vector) -> None:
        """out[p] = sum_r matrix[p, r] vector[r] as loops over the matrix in its storage
        order, four rows at a time (each load then serves four multiply-adds): a dot
        product per row where r runs along the stored rows, else a scaled-row update per
        stored row.  Measured against OpenBLAS gemv on one thread from 64 x 64 to
        128 x 16384, both forms tie or win; and a kernel without BLAS calls needs no
        scipy at load time and may get a parallel twin."""
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
            self.loop_sizes.append(sp.sympify(matrix.shape[0]) * sp.sympify(matrix.shape[1]))
            outer = "numba.prange" if self.parallel else "range"
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
        return f"{_stored(vector).name}.reshape({self.dim(length)})"

    def _emit_Transpose(self, target, e):
        self.emit(f"{target.name} = {self.name(e.arg)}.T")

    def _buffer_for(self, e: ops.Map, exclude: set = frozenset()) -> str:
        """Where a Map's matrix goes: over an operand of its own shape that this kernel
        allocated and that nothing else reads (each entry is loaded before the same entry is
        stored), else a new array.  Fewer large arrays per call: a 16 MB temporary freed and
        allocated again each call costs more in page faults than the loop that fills it."""
        for operand in e.operands:
            # not when the Map also reads it transposed: entry (j, i) would be read after
            # entry (i, j) was written over
            reads = sum(operand in _names_read(o) | {o} for o in e.operands)
            if operand in self._fresh and self._remaining.get(operand, 0) == 1 and reads == 1 \
                    and operand not in exclude and tuple(operand.shape) == tuple(e.shape):
                self._fresh = self._fresh - {operand}
                return operand.name
        return f"np.empty({self.shape(e.shape)})"

    def _emit_Map(self, target, e: ops.Map):
        self.emit(f"{target.name} = {self._buffer_for(e)}")
        i, j, depth = self.loops(e.shape)
        self.emit(f"{target.name}[{i}, {j}] = {self.map_body(e, i, j, depth)}", depth)

    def map_body(self, e: ops.Map, i: str, j: str, depth: int) -> str:
        """Emit the loads and shared pieces of a Map's body; return its final expression."""
        # SymPy turns Lambda((a,), a) into IdentityFunction, whose variable is a Dummy
        # numbered from a random base per process: rename, so the text is deterministic
        variables = [sp.Symbol(f"_v{k}", real=True) for k in range(len(e.operands))]
        body = functions.inline_definitions(
            e.body.xreplace(dict(zip(e.function.variables, variables))))
        for v, operand in zip(variables, e.operands):
            self.emit(f"{v.name} = {self.load(operand, i, j, e.shape)}", depth)
        replacements, (body,) = sp.cse([body], symbols=sp.numbered_symbols("_c"),
                                       optimizations=None)
        for symbol, value in replacements:
            self.emit(f"{symbol.name} = {self.scalar(value)}", depth)
        return self.scalar(body)

    def _emit_AxisSum(self, target, e: ops.AxisSum):
        if tuple(e.shape) == (1, 1):
            # a vector summed whole: a scalar reduction, which a parallel loop splits into
            # per-thread partials (an array entry there would be written by every thread)
            self.emit("_total = 0.0")
            i, j, depth = self.loops(e.arg.shape)
            self.emit(f"_total += {self.load(e.arg, i, j, e.arg.shape)}", depth)
            self.emit(f"{target.name} = np.full((1, 1), _total)")
            return
        self.emit(f"{target.name} = np.zeros({self.shape(e.shape)})")
        # the outer loop may be split between threads when each of its iterations writes
        # entries of its own: row sums (one per row), column sums of a single row; column
        # sums of a matrix accumulate across the outer loop and stay on one thread
        i, j, depth = self.loops(e.arg.shape, independent=e.axis == 1 or e.arg.shape[0] == 1)
        where = f"0, {j}" if e.axis == 0 else f"{i}, 0"
        self.emit(f"{target.name}[{where}] += {self.load(e.arg, i, j, e.arg.shape)}", depth)

    def _emit_SumAll(self, target, e: ops.SumAll):
        self.emit(f"{target.name} = 0.0")
        i, j, depth = self.loops(e.arg.shape)
        self.emit(f"{target.name} += {self.load(e.arg, i, j, e.arg.shape)}", depth)

    def _emit_MatrixElement(self, target, e: MatrixElement):
        parent = e.parent
        if isinstance(parent, sp.Transpose):
            self.emit(f"{target.name} = {parent.arg.name}[{int(e.j)}, {int(e.i)}]")
        else:
            self.emit(f"{target.name} = {self.name(parent)}[{int(e.i)}, {int(e.j)}]")

    def _emit_Trace(self, target, e):
        self.emit(f"{target.name} = np.trace({self.name(e.arg)})")

    def _emit_Determinant(self, target, e):
        self.emit(f"{target.name} = np.linalg.det(np.ascontiguousarray({self.name(e.arg)}))")

    def _emit_LogDet(self, target, e):
        self.emit(f"_sign, {target.name} = np.linalg.slogdet("
                  f"np.ascontiguousarray({self.name(e.arg)}))")
        self.emit("if _sign <= 0.0:")
        self.emit(f"{target.name} = np.nan", 2)

    def _emit_Inverse(self, target, e):
        self.emit(f"{target.name} = np.linalg.inv(np.ascontiguousarray({self.name(e.arg)}))")

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

    def _emit_Scatter(self, target, e: ops.Scatter):
        i, j = e.index
        self.emit(f"{target.name} = np.zeros({self.shape(e.shape)})")
        self.emit(f"{target.name}[{int(i)}, {int(j)}] = {self.scalar(e.value)}")

    def _emit_LogSumExpAll(self, target, e):
        a = e.arg
        self.emit("_peak = -np.inf")
        i, j, depth = self.loops(a.shape, independent=False)
        self.emit(f"_peak = sg_max(_peak, {self.load(a, i, j, a.shape)})", depth)
        self.emit("_total = 0.0")
        self.emit("if np.isfinite(_peak):")
        i, j, depth = self.loops(a.shape, 2)
        self.emit(f"_total += np.exp({self.load(a, i, j, a.shape)} - _peak)", depth)
        self.emit(f"{target.name} = _peak + np.log(_total)", 2)
        self.emit("else:")
        self.emit(f"{target.name} = _peak", 2)

    def _axis_loops(self, shape, axis):
        """Outer loop over the kept axis (k), inner over the reduced one (r)."""
        rows, cols = shape
        if axis == 0:     # reduce rows: for each column j
            return self.dim(cols), self.dim(rows), lambda k, r: (r, k)
        return self.dim(rows), self.dim(cols), lambda k, r: (k, r)

    def _emit_LogSumExp(self, target, e: ops.LogSumExp):
        a = e.arg
        outer, inner, index = self._axis_loops(a.shape, e.axis)
        out = (lambda k: f"0, {k}") if e.axis == 0 else (lambda k: f"{k}, 0")
        self.emit(f"{target.name} = np.empty({self.shape(e.shape)})")
        self.emit(f"for _k in range({outer}):")
        self.emit("_peak = -np.inf", 2)
        self.emit(f"for _r in range({inner}):", 2)
        i, j = index("_k", "_r")
        self.emit(f"_peak = sg_max(_peak, {self.load(a, i, j, a.shape)})", 3)
        self.emit("if not np.isfinite(_peak):", 2)
        self.emit(f"{target.name}[{out('_k')}] = _peak", 3)
        self.emit("continue", 3)
        self.emit("_total = 0.0", 2)
        self.emit(f"for _r in range({inner}):", 2)
        self.emit(f"_total += np.exp({self.load(a, i, j, a.shape)} - _peak)", 3)
        self.emit(f"{target.name}[{out('_k')}] = _peak + np.log(_total)", 2)

    def _emit_Softmax(self, target, e: ops.Softmax):
        a = e.arg
        self.emit(f"{target.name} = np.empty({self.shape(a.shape)})")
        if e.axis is None:
            self.emit("_peak = -np.inf")
            i, j, depth = self.loops(a.shape, independent=False)
            self.emit(f"_peak = sg_max(_peak, {self.load(a, i, j, a.shape)})", depth)
            self.emit("_total = 0.0")
            i, j, depth = self.loops(a.shape, independent=False)
            self.emit(f"{target.name}[{i}, {j}] = np.exp({self.load(a, i, j, a.shape)} - _peak)",
                      depth)
            self.emit(f"_total += {target.name}[{i}, {j}]", depth)
            i, j, depth = self.loops(a.shape)
            self.emit(f"{target.name}[{i}, {j}] /= _total", depth)
            return
        outer, inner, index = self._axis_loops(a.shape, e.axis)
        i, j = index("_k", "_r")
        self.emit(f"for _k in range({outer}):")
        self.emit("_peak = -np.inf", 2)
        self.emit(f"for _r in range({inner}):", 2)
        self.emit(f"_peak = sg_max(_peak, {self.load(a, i, j, a.shape)})", 3)
        self.emit("_total = 0.0", 2)
        self.emit(f"for _r in range({inner}):", 2)
        self.emit(f"{target.name}[{i}, {j}] = np.exp({self.load(a, i, j, a.shape)} - _peak)", 3)
        self.emit(f"_total += {target.name}[{i}, {j}]", 3)
        self.emit(f"for _r in range({inner}):", 2)
        self.emit(f"{target.name}[{i}, {j}] /= _total", 3)
