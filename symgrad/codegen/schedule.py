"""The schedule of one kernel: how a :class:`~symgrad.codegen.ir.Program` runs, whatever the
language it is written in.

:func:`build_schedule` makes every decision that does not depend on the target: which Maps
share one loop nest and which row, column and total sums (and vector products) that loop
accumulates, which sums stay in a register, which matrices are not stored at all, which
array a Map writes over (buffer reuse), which statements move before a Map so that it can
reuse their operand, how each matrix product runs (a loop, or BLAS), and which loops may be
split between threads.  A target (``codegen/numba.py``) renders the :class:`Schedule` to
source text and decides nothing of this; a second target would be a second renderer.

A :class:`Schedule` is a list of steps in execution order, each a :class:`Step` (one
statement) or a :class:`FusedLoop` (several Maps and their sums in one loop nest).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import sympy as sp

from symgrad import operations, ops
from symgrad.codegen.ir import Program, Statement


@dataclass(frozen=True)
class Loop:
    """A loop nest over the entries of a matrix, opened at the top of the kernel."""

    elements: sp.Expr       # how many entries it runs over (the work it would split)
    parallel: bool          # each iteration of its outer loop writes entries of its own


@dataclass
class Step:
    """One statement, alone.

    loops: the loop nests over entries that its lowering opens at the top of the kernel, in
    order (a Map, a sum, an outer product: one; a softmax of all entries: a running
    maximum, a sum of exponentials and a normalisation, of which only the last may be
    split; a running maximum alone: one that may not).  Loops over a kept axis that carry
    a running maximum or a reduction from entry to entry are serial by nature and not listed.

    product: for a matrix product, how it runs: ``"outer"`` (inner dimension 1: a loop),
    ``"dot"`` (a 1 x 1 result: a loop), ``"matrix_vector"`` (``matrix @ vector`` as loops
    over the matrix in its storage order: a dot product per stored row, which may be split,
    or a scaled-row update per stored row, which may not), ``"blas"``.
    """

    statement: Statement
    loops: tuple = ()
    product: str | None = None
    matrix: sp.Basic | None = None     # the "matrix_vector" operands (matrix @ vector)
    vector: sp.Basic | None = None
    buffer: sp.MatrixSymbol | None = None  # a Map: the dead operand it writes over, or None
    hoisted: bool = False           # moved before a Map so that the Map reuses an operand


@dataclass
class Carried:
    """A sum that a fused loop accumulates: ``along`` is ``"total"`` (SumAll), ``"row"``
    (each row to one entry: a row sum, or the Map times a column vector) or ``"column"``
    (a column sum, or a row vector times the Map).  ``register``: its entry stays the same
    through the innermost loop, so it is kept in a local and stored once (LLVM then keeps
    it in a register and vectorises the loop); otherwise it adds into its array."""

    statement: Statement
    along: str
    register: bool = False


@dataclass
class Member:
    """A Map in a fused loop, with the sums it carries.  ``store``: its matrix is read
    after the loop (else only its sums and later members read it, in the loop itself);
    ``buffer``: the dead operand whose array it writes over, or None for a new array."""

    statement: Statement
    sums: list = field(default_factory=list)
    store: bool = True
    buffer: sp.MatrixSymbol | None = None


@dataclass
class FusedLoop:
    """Maps of one shape in one loop nest: their operands loaded once, their bodies
    sharing their common pieces, their sums accumulated in the loop."""

    members: list
    loop: Loop

    @property
    def shape(self) -> tuple:
        return tuple(self.members[0].statement.operation.shape)


@dataclass
class Schedule:
    """The steps of one kernel, in execution order."""

    steps: list

    @property
    def uses_blas(self) -> bool:
        """Whether a product goes to BLAS (which runs on threads of its own)."""
        return any(isinstance(s, Step) and s.product == "blas" for s in self.steps)

    @property
    def parallel_sizes(self) -> list:
        """The element counts of the loops that may be split between threads."""
        sizes = []
        for s in self.steps:
            loops = [s.loop] if isinstance(s, FusedLoop) else s.loops
            sizes += [loop.elements for loop in loops if loop.parallel]
        return sizes

    @property
    def reused(self) -> dict:
        """``{target: operand}``: each Map that writes over a dead operand's array."""
        out = {}
        for s in self.steps:
            for step in s.members if isinstance(s, FusedLoop) else [s]:
                if step.buffer is not None:
                    out[step.statement.target] = step.buffer
        return out


def build_schedule(program: Program) -> Schedule:
    """The schedule of a program's statements (its outputs are read after the kernel).

    >>> import sympy as sp, symgrad as sg
    >>> from symgrad.codegen.ir import Program, Statement
    >>> A, T, s = sg.matrix("A", 3, 4), sp.MatrixSymbol("T", 3, 4), sp.Symbol("s")
    >>> x = sp.Symbol("x", real=True)
    >>> tanh = ops.Map(sp.Lambda((x,), sp.tanh(x)), (3, 4), A)
    >>> program = Program([A], [Statement(T, tanh), Statement(s, ops.SumAll(T))], {"v": s})
    >>> [type(step).__name__ for step in build_schedule(program).steps]
    ['FusedLoop']
    """
    if not any(s.is_matrix for s in program.statements):
        # no matrix, so no loop to fuse and no array to reuse: each statement alone, in order
        return Schedule([_alone(s) for s in program.statements])
    return _Scheduler(program.statements, list(program.outputs.values())).run()


def names_read(operation) -> set:
    """The program names an operation reads (a transposed name counts as its name)."""
    if isinstance(operation, (sp.Symbol, sp.MatrixSymbol)):
        return set()
    if isinstance(operation, ops.Map):
        out = set()
        for o in operation.operands:
            out |= names_read(o) | ({o} if isinstance(o, (sp.Symbol, sp.MatrixSymbol)) else set())
        return out
    out = set()
    for a in getattr(operation, "args", ()):
        if isinstance(a, (sp.Symbol, sp.MatrixSymbol)):
            out.add(a)
        elif isinstance(a, sp.Basic) and not isinstance(a, sp.Lambda):
            out |= names_read(a)
    return out


def stored(matrix):
    """The array behind a matrix operand: the operand itself, or what it transposes."""
    return matrix.arg if isinstance(matrix, sp.Transpose) else matrix


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


def _is_array(matrix) -> bool:
    """Whether a matrix operand is an array of the kernel, or the transpose of one."""
    return isinstance(stored(matrix), sp.MatrixSymbol)


def _loops_suit(matrix) -> bool:
    """Whether matrix @ vector should run as loops rather than go to BLAS: the matrix is an
    array of the kernel (or its transpose), and its stored rows are not short and of a
    known length.  Over rows of 4 to 16 known entries LLVM unrolls the inner loop completely
    and vectorises the outer one with gathers, 5-10x slower than BLAS (measured for
    1024 x 16, 4096 x 4, 1024 x 12); from 32 entries (dot products along rows) or 16 (row
    updates) the loops tie or beat BLAS.  Measured against OpenBLAS gemv on one thread from
    64 x 64 to 128 x 16384, both loop forms tie or win; and a kernel without BLAS calls
    needs no scipy at load time and may get a parallel twin."""
    if not _is_array(matrix):
        return False
    row_length = sp.sympify(stored(matrix).shape[1])
    shortest = 16 if isinstance(matrix, sp.Transpose) else 32
    return not (row_length.is_Integer and int(row_length) < shortest)


def _elements(shape) -> sp.Expr:
    return sp.sympify(shape[0]) * sp.sympify(shape[1])


def _alone(s: Statement, hoisted: bool = False) -> Step:
    """The step of a statement that is not a Map: how a product runs, and which of the
    loops of its lowering may be split between threads."""
    e = s.operation
    if isinstance(e, sp.MatMul):
        a, b = e.args
        rows, inner = a.shape
        cols = b.shape[1]
        if inner == 1:
            return Step(s, (Loop(_elements(e.shape), True),), "outer", hoisted=hoisted)
        if rows == 1 and cols == 1:
            return Step(s, (), "dot", hoisted=hoisted)
        if cols == 1 and _loops_suit(a):
            matrix, vector = a, b
        elif rows == 1 and _loops_suit(b.T):
            matrix, vector = b.T, a.T       # (a b)^T = b^T a^T
        else:
            return Step(s, (), "blas", hoisted=hoisted)
        # a dot product per stored row writes an entry of its own per row; an update by
        # stored row adds into every entry
        loops = () if isinstance(matrix, sp.Transpose) else (Loop(_elements(matrix.shape),
                                                                  True),)
        return Step(s, loops, "matrix_vector", matrix, vector, hoisted=hoisted)
    operation = operations.of(e)
    if operation is not None:       # the loop nests its emitter opens (symgrad/operations/)
        return Step(s, tuple(Loop(size, parallel) for size, parallel in operation.loops(e)),
                    hoisted=hoisted)
    return Step(s, hoisted=hoisted)


class _Scheduler:
    """Walks the statements once, in the order their code will run, keeping per name the
    readers not yet scheduled and the arrays the kernel allocated itself (not inputs, not
    views of them): a Map may write over an operand that nothing after it reads."""

    def __init__(self, statements: list, outputs: list):
        uses: dict = {}
        for s in statements:
            for name in names_read(s.operation):
                uses[name] = uses.get(name, 0) + 1
        for atom in outputs:        # an output is read after the kernel: always stored
            for name in names_read(atom) | ({atom} if isinstance(atom, sp.Basic) else set()):
                uses[name] = float("inf")
        self.statements = statements
        self.uses = uses
        self.remaining = dict(uses)
        self.fresh = {s.target for s in statements if isinstance(s.operation, (sp.MatMul,
                                                                               ops.Map))}
        self.steps: list = []

    def run(self) -> Schedule:
        """A row, column or total sum of a Map is accumulated in the Map's own loop, and
        the Map's matrix is not stored when only its sums read it; Maps of one shape that
        do not wait on each other's sums share one loop (statements between them that they
        do not read move after it)."""
        statements = self.statements
        maps = {s.target for s in statements if isinstance(s.operation, ops.Map)}
        sums: dict = {}
        position = {s.target: k for k, s in reversed(list(enumerate(statements)))}
        for s in statements:
            if isinstance(s.operation, (ops.AxisSum, ops.SumAll)) and s.operation.arg in maps:
                sums.setdefault(s.operation.arg, []).append(s)
            elif (pair := _vector_times_map(s.operation, maps)) is not None:
                vector, matrix = pair
                array = stored(vector)
                # the vector must be ready when the loop starts (and not filled by a loop)
                if array not in maps and (array not in position
                                          or position[array] < position[matrix]):
                    sums.setdefault(matrix, []).append(s)
        self.sums = sums
        summed = {r.target for rs in sums.values() for r in rs}
        # (a deque: taking the first of 60,000 statements from a list moves all the others)
        pending = deque(s for s in statements if s.target not in summed)
        while pending:
            s = pending.popleft()
            if not isinstance(s.operation, ops.Map):
                self._schedule_alone(s)
                continue
            self._hoist_last_readers(s, pending)
            group = [s] + self._loop_partners(s, pending)
            # a member whose only readers are its sums and later members (which take its
            # element in the loop itself) is not stored
            readers = {m.target: sum(m.target in names_read(later.operation)
                                     for later in group[k + 1:])
                       for k, m in enumerate(group)}
            units = [(m, sums.get(m.target, []),
                      self.uses.get(m.target, 0) > len(sums.get(m.target, [])) + readers[m.target])
                     for m in group]
            if len(units) == 1 and not units[0][1]:
                self.steps.append(Step(s, (Loop(_elements(s.operation.shape), True),),
                                       buffer=self._buffer_for(s.operation)))
            else:
                self.steps.append(self._fused(units))
            for m in group:
                self._count_read(m)
                for r in sums.get(m.target, []):
                    self._count_read(r)
        return Schedule(self.steps)

    def _schedule_alone(self, s: Statement, hoisted: bool = False) -> None:
        self.steps.append(_alone(s, hoisted))
        self._count_read(s)

    def _count_read(self, s: Statement) -> None:
        for name in names_read(s.operation):
            self.remaining[name] = self.remaining.get(name, 1) - 1

    def _buffer_for(self, e: ops.Map, exclude: set = frozenset()):
        """The operand a Map's matrix goes over: one of its own shape that this kernel
        allocated and that nothing else reads (each entry is loaded before the same entry is
        stored); None for a new array.  Fewer large arrays per call: a 16 MB temporary freed
        and allocated again each call costs more in page faults than the loop that fills
        it."""
        for operand in e.operands:
            # not when the Map also reads it transposed: entry (j, i) would be read after
            # entry (i, j) was written over
            reads = sum(operand in names_read(o) | {o} for o in e.operands)
            if operand in self.fresh and self.remaining.get(operand, 0) == 1 and reads == 1 \
                    and operand not in exclude and tuple(operand.shape) == tuple(e.shape):
                self.fresh = self.fresh - {operand}
                return operand
        return None

    def _hoist_last_readers(self, s: Statement, pending: deque) -> None:
        """Before the Map s, schedule the other readers of an operand that s could write
        over, when they can run now (a product reading A1 before dZ1 = ... A1 ... overwrites
        it): then the Map needs no new array."""
        sums = self.sums
        waiting = {q.target for q in pending} | {s.target}
        waiting |= {r.target for q in [s, *pending] for r in sums.get(q.target, [])}
        for operand in s.operation.operands:
            if operand not in self.fresh or tuple(operand.shape) != tuple(s.operation.shape) \
                    or self.remaining.get(operand, 0) <= 1:
                continue
            readers = [q for q in pending if operand in names_read(q.operation)]
            if len(readers) != self.remaining[operand] - 1 or any(
                    isinstance(q.operation, ops.Map) or names_read(q.operation) & waiting
                    for q in readers):
                continue
            for q in readers:
                pending.remove(q)
                self._schedule_alone(q, hoisted=True)

    def _loop_partners(self, first: Statement, pending: deque) -> list:
        """The later Maps of first's shape that can share its loop, taken out of pending:
        each reads nothing that the loop would not have ready (a statement it passes over,
        a sum the loop is still accumulating, a transposed member)."""
        sums = self.sums
        shape = tuple(first.operation.shape)
        members = {first.target}
        waiting = {r.target for r in sums.get(first.target, [])}
        partners = []
        for s in list(pending):
            read = names_read(s.operation)
            for r in sums.get(s.target, []):   # a weighted sum reads its vector in the loop
                read |= names_read(r.operation) - {s.target}
            if isinstance(s.operation, ops.Map) and tuple(s.operation.shape) == shape \
                    and not read & waiting \
                    and not any(isinstance(o, sp.Transpose) and o.arg in members
                                for o in s.operation.operands):
                partners.append(s)
                members.add(s.target)
                waiting |= {r.target for r in sums.get(s.target, [])}
                pending.remove(s)
            else:       # scheduled after the loop, with the sums that come with it
                waiting |= {s.target} | {r.target for r in sums.get(s.target, [])}
        return partners

    def _fused(self, units: list) -> FusedLoop:
        """One loop nest for Maps of one shape, each with its sums, stored or not.  A sum
        whose entry stays the same through the innermost loop (a row sum over a row of
        several entries, a total) is kept in a register; the outer loop may be split
        unless some sum adds into an entry that every outer iteration revisits (column
        sums of a nest of two loops)."""
        shape = units[0][0].operation.shape
        rows, cols = shape
        nested = rows != 1 and cols != 1
        in_memory = False
        exclude = {m.target for m, _, _ in units}
        members = []
        for m, reductions, store in units:
            carried = []
            for r in reductions:
                if isinstance(r.operation, ops.SumAll):
                    carried.append(Carried(r, "total"))
                    continue
                along = _summed_along(r.operation, m.target)
                register = (along == "row" and cols != 1) or (along == "column" and cols == 1)
                in_memory |= not register and nested and along == "column"
                carried.append(Carried(r, along, register))
            # not over a member of this loop: that one is written in the loop too
            buffer = self._buffer_for(m.operation, exclude) if store else None
            members.append(Member(m, carried, store, buffer))
        return FusedLoop(members, Loop(_elements(shape), not in_memory))
