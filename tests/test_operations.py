"""Every matrix operation is one file of symgrad/operations/, and the machinery names none.

The machinery (reverse and forward mode, the rule table, the Dask split, value numbering,
the schedule, the Numba emitter, the formula printers and the translators) looks a node's
operation up in the registry; a new operation is a file there and its node class in ops.py.
"""

from __future__ import annotations

import ast

import pytest
import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

import symgrad as sg
from symgrad import operations, ops
from symgrad.codegen.docstring import FormulaPrinter
from symgrad.operations import HOOKS, OPERATIONS, OPTIONAL_HOOKS
from tests.test_architecture import PACKAGE

# The modules that work on every node and so must name no operation of the registry.
MACHINERY = ("derive/graph.py", "derive/reverse.py", "derive/rules.py", "derive/second.py",
             "derive/split.py", "optimize.py", "codegen/schedule.py", "codegen/numba.py",
             "codegen/factor.py", "codegen/docstring.py", "present/formulas.py",
             "checking/translate.py")

# The reductions are, with Map, the elementwise algebra the passes are built on: reverse
# mode builds them (a broadcast operand's adjoint is summed back), the canonical form makes
# them, and the schedule fuses them into loops, so the machinery may name them, but it may
# not define them a second time: no method of its own prints or emits one.
CORE = {"AxisSum", "SumAll"}


def _names_in(source: str, names: set[str]) -> list[str]:
    """Where a module's source names one of ``names``: an identifier (``ops.Softmax``,
    ``Softmax``, an import of it) or a method dispatched by class name (``_emit_Softmax``,
    ``_print_Softmax``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id in names:
            found.append(f"line {node.lineno}: {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in names:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            found.extend(f"line {node.lineno}: import {a.name}" for a in node.names
                         if a.name in names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            kind = node.name.rpartition("_")[2]
            if node.name.startswith(("_emit_", "_print_")) and kind in names:
                found.append(f"line {node.lineno}: def {node.name}")
    return found


def test_the_scanner_finds_each_way_of_naming_an_operation():
    source = ("from symgrad.ops import Softmax\nisinstance(e, ops.Softmax)\n"
              "class P:\n    def _emit_Softmax(self):\n        pass\n")
    assert len(_names_in(source, {"Softmax"})) == 3
    assert _names_in("ops.Map(f, s, a)\n", {"Softmax"}) == []


def test_no_machinery_module_names_a_registered_operation():
    names = {cls.__name__ for cls in OPERATIONS}
    assert {"Softmax", "LogSumExp", "LogSumExpAll", "LogDet", "Determinant", "Trace",
            "Inverse", "Scatter", "Named", "NamedScalar"} | CORE <= names
    offenders = {}
    for module in MACHINERY:
        source = (PACKAGE / module).read_text(encoding="utf-8")
        found = _names_in(source, names - CORE)
        found += [where for where in _names_in(source, CORE)
                  if where.partition(": ")[2].startswith("def ")]
        if found:
            offenders[module] = found
    assert offenders == {}


@pytest.mark.parametrize("operation", list(OPERATIONS.values()), ids=lambda o: o.name)
def test_every_operation_provides_every_hook(operation):
    for hook in HOOKS:
        assert callable(getattr(operation, hook)), f"{operation.name}: {hook} is missing"
    for hook in OPTIONAL_HOOKS:
        assert getattr(operation, hook) is None or callable(getattr(operation, hook))
    frameworks = set(sg.checking.translate.TRANSLATORS)
    assert "numpy" in operation.translations
    assert set(operation.translations) <= frameworks
    assert all(callable(f) for f in operation.translations.values())
    assert all(isinstance(name, str) and name for name in operation.parameters)
    # the example uses the operation, and its nodes survive the node protocol
    nodes = [n for n in sp.preorder_traversal(operation.example()) if type(n) is operation.node]
    assert nodes, f"{operation.name}: its example does not use {operation.node.__name__}"
    for node in nodes:
        assert operations.of(node) is operation
        assert operation.rebuild(node, list(operation.operands(node))) == node
        for parameter in operation.parameters:
            assert hasattr(node, parameter)
        text = operation.text(node, FormulaPrinter())
        assert FormulaPrinter().doprint(node) == text
        if operation.node.__module__.startswith("symgrad."):    # SymPy's print as SymPy's
            assert str(node) == text
        assert operation.is_matrix == isinstance(node, MatrixExpr)


@pytest.mark.parametrize("operation", list(OPERATIONS.values()), ids=lambda o: o.name)
def test_every_operation_compiles_and_differentiates_right(operation):
    # value and gradient (emit, loops, vjp) against every framework's translation and finite
    # differences; the Hessian-vector product (jvp) against differences of the gradient
    f = operation.example()
    wrt = sorted((s for s in f.free_symbols if isinstance(s, sp.MatrixSymbol)), key=str)
    report = sg.check(f, wrt, against="all", points=2, order=2)
    assert report.ok, str(report)
    assert {"value", "hvp"} <= {word for line in str(report).splitlines()
                                for word in line.split()[1:2]}


def test_an_operation_without_a_numpy_translation_is_refused():
    existing = OPERATIONS[ops.LogDet]
    with pytest.raises(ValueError, match="NumPy translation"):
        operations.register(operations.Operation(
            name="broken", node=type("Broken", (ops._Reduction,), {}),
            example=existing.example, vjp=existing.vjp, jvp=existing.jvp,
            emit=existing.emit, text=existing.text, translations={}))
    assert not any(cls.__name__ == "Broken" for cls in OPERATIONS)


def test_a_named_piece_prints_as_its_name_in_latex_matrix_or_scalar():
    x, w = sg.vector("x", 3), sp.Symbol("w")
    W = sg.matrix("W", 2, 3)
    scalar, matrix = sg.name("s", sg.sum(x)), sg.name("Z", W @ x)
    assert sp.latex(w * scalar**2) == "w s^{2}"
    assert sg.latex(w * scalar**2, [w]).count("NamedScalar") == 0
    assert sp.latex(matrix) == "Z"
