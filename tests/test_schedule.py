"""The schedule (symgrad/codegen/schedule.py): what it decides holds for every program, and
the Numba target writes down exactly what it decided.

Each property is checked on the programs of real models (value and gradient): the test_trust
reduction models, the seed models and the examples' softmax regression, which between them
fuse loops, carry row, column and total sums, reuse buffers, hoist readers, run products as
loops and as BLAS, and have loops that may and may not run in parallel.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import sympy as sp

from symgrad import ops
from symgrad.codegen.numba import KernelEmitter
from symgrad.codegen.schedule import FusedLoop, Step, build_schedule, names_read
from symgrad.compiled import build_spec
from symgrad.demo import builtin_models
from symgrad.generation import load_models
from tests.test_trust import racy_updates, reduction_models

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def programs() -> dict:
    models = {name: (expr, wrt) for name, (expr, wrt) in reduction_models().items()}
    for model in builtin_models() + load_models(EXAMPLES / "softmax_regression.py"):
        models[model.name] = (model.output, model.wrt)
    out = {}
    for name, (expr, wrt) in models.items():
        spec = build_spec(expr, wrt, "model")
        out[name] = spec.value_and_grad
    return out


@pytest.fixture(scope="module")
def schedules(programs) -> dict:
    return {name: build_schedule(program) for name, program in programs.items()}


def positions(schedule):
    """(position, statement, member of) for every statement, fused ones at their loop's
    position; member of: the Map whose loop carries a sum, the Map itself for a member."""
    for k, step in enumerate(schedule.steps):
        if isinstance(step, Step):
            yield k, step.statement, None
            continue
        for member in step.members:
            yield k, member.statement, member.statement.target
            for carried in member.sums:
                yield k, carried.statement, member.statement.target


def rendered(schedule, parallel: bool) -> str:
    emitter = KernelEmitter(parallel=parallel)
    emitter.render(schedule)
    return "def kernel():\n" + "\n".join(emitter.lines) + "\n    return None\n"


def test_every_statement_is_scheduled_once_after_what_it_reads(programs, schedules):
    for name, program in programs.items():
        scheduled = list(positions(schedules[name]))
        assert sorted(map(str, (s for _, s, _ in scheduled))) == \
            sorted(map(str, program.statements)), name
        at = {s.target: k for k, s, _ in scheduled}
        group = {s.target: owner for _, s, owner in scheduled}
        for k, s, owner in scheduled:
            for read in names_read(s.operation) & at.keys():
                # before, or in the same loop (a member's element, a sum of the loop's Map)
                assert at[read] < k or (at[read] == k and group[read] is not None
                                        and owner is not None), (name, s, read)


def test_a_reused_buffer_is_dead_when_a_map_writes_over_it(programs, schedules):
    reuses = 0
    for name, program in programs.items():
        schedule = schedules[name]
        scheduled = list(positions(schedule))
        at = {s.target: k for k, s, _ in scheduled}
        allocated = {s.target for _, s, _ in scheduled
                     if isinstance(s.operation, (sp.MatMul, ops.Map))}
        outputs = set()
        for atom in program.outputs.values():
            outputs |= names_read(atom) | ({atom} if isinstance(atom, sp.Basic) else set())
        buffers = list(schedule.reused.values())
        assert len(buffers) == len(set(buffers)), name        # each array taken over once
        for target, buffer in schedule.reused.items():
            reuses += 1
            k = at[target]
            assert buffer in allocated and at[buffer] < k, (name, target, buffer)
            assert buffer not in outputs, (name, buffer)
            assert tuple(buffer.shape) == tuple(target.shape)
            # nothing but the Map itself reads the buffer from the Map's step on, and the
            # Map reads it once, not transposed (entry (j, i) after (i, j) was written over)
            readers = [s for j, s, _ in scheduled if j >= k and buffer in names_read(s.operation)]
            assert [s.target for s in readers] == [target], (name, buffer, readers)
            operands = readers[0].operation.operands
            assert operands.count(buffer) == 1 and sp.Transpose(buffer) not in operands
    assert reuses >= 2      # the two-layer network's and softmax regression's gradients


def test_hoisted_readers_let_a_map_take_over_their_operand(schedules):
    hoisted = [(name, k, step) for name, schedule in schedules.items()
               for k, step in enumerate(schedule.steps)
               if isinstance(step, Step) and step.hoisted]
    assert hoisted
    for name, k, step in hoisted:
        schedule = schedules[name]
        # the next Map step writes over an array the hoisted statement reads
        after = next(s for s in schedule.steps[k + 1:] if not (isinstance(s, Step) and s.hoisted))
        maps = after.members if isinstance(after, FusedLoop) else [after]
        taken = {m.buffer for m in maps} - {None}
        assert taken & names_read(step.statement.operation), (name, step.statement)


def test_no_loop_marked_parallel_adds_into_an_entry_its_iterations_share(schedules):
    kinds = set()
    for name, schedule in schedules.items():
        source = rendered(schedule, parallel=True)
        assert racy_updates(source) == [], name
        for step in schedule.steps:
            if isinstance(step, FusedLoop):
                kinds.add(step.loop.parallel)
    assert kinds == {True, False}     # column sums of a matrix keep a fused loop serial


def test_the_target_splits_exactly_the_loops_the_schedule_marks_parallel(schedules):
    for name, schedule in schedules.items():
        marked = sum(loop.parallel for step in schedule.steps
                     for loop in ([step.loop] if isinstance(step, FusedLoop) else step.loops))
        assert rendered(schedule, parallel=True).count("numba.prange(") == marked, name
        assert "numba.prange" not in rendered(schedule, parallel=False), name
        assert len(schedule.parallel_sizes) == marked


def _top_level_writes(source: str) -> list[set]:
    """Per top-level statement of the kernel: the arrays whose entries it writes and the
    names it adds into."""
    body = ast.parse(source).body[0].body
    out = []
    for statement in body:
        written = set()
        for node in ast.walk(statement):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AugAssign) else []
            for t in targets:
                if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
                    written.add(t.value.id)
                elif isinstance(node, ast.AugAssign) and isinstance(t, ast.Name):
                    written.add(t.id)
        out.append((statement, written))
    return out


def test_a_fused_group_runs_in_one_loop_and_a_map_not_stored_is_never_named(schedules):
    groups = 0
    for name, schedule in schedules.items():
        source = rendered(schedule, parallel=True)
        writes = _top_level_writes(source)
        for step in schedule.steps:
            if not isinstance(step, FusedLoop):
                continue
            groups += 1
            # what each iteration writes: the stored members' entries, the sums that add
            # into their arrays or totals, and in a nest of two loops the per-row registers
            nested = 1 not in step.shape
            inside = {m.statement.target.name for m in step.members if m.store}
            inside |= {c.statement.target.name for m in step.members for c in m.sums
                       if nested or not c.register}
            holders = [(s, written) for s, written in writes if written & inside]
            assert len(holders) == 1, (name, inside)
            assert isinstance(holders[0][0], ast.For) and inside <= holders[0][1], name
            for m in step.members:
                if not m.store:
                    assert m.statement.target.name not in {
                        n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    assert groups >= 5
