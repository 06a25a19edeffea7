"""The package's shape: imports go one way (no cycles, presentation downstream of the
pipeline), and no submodule hides behind a public function of the same name.

Imports are read from the source (module level and inside functions alike; those under
``if TYPE_CHECKING:`` never run and are left out), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import pkgutil
import types
from pathlib import Path

import symgrad as sg

PACKAGE = Path(sg.__file__).parent

# The pipeline, from a SymPy expression to a compiled module.
PIPELINE = ("symgrad.derive", "symgrad.optimize", "symgrad.codegen", "symgrad.compiled",
            "symgrad.generation", "symgrad.files", "symgrad.forms", "symgrad.functions",
            "symgrad.ops", "symgrad.operations")
# What people read: formulas, LaTeX, pictures and walks.
PRESENTATION = ("symgrad.present",)

# The one way back up: a CompiledFunction method imports, when it is called, the module it
# hands over to (f.hessian, f.hvp, f.jacobian, f.scipy -> second; f.to_torch, f.to_jax;
# a call on Dask arrays -> interop.dask).  Those modules compile through symgrad.compiled.
HANDOVERS = {
    ("symgrad.compiled", "symgrad.second"),
    ("symgrad.compiled", "symgrad.interop.torch"),
    ("symgrad.compiled", "symgrad.interop.jax"),
    ("symgrad.compiled", "symgrad.interop.dask"),
}


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module):
    """(node, lazy) for every import that can run: lazy when inside a function or class."""
    def walk(node, lazy):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    yield from walk(other, lazy)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, lazy
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                               ast.ClassDef, ast.Lambda))
            yield from walk(child, inner)
    yield from walk(tree, False)


def import_graph() -> dict[str, dict[str, bool]]:
    """``{module: {imported symgrad module: lazy only}}`` for every module of symgrad."""
    modules = _module_names()

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, bool]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, {})
        for node, lazy in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                # ``from symgrad.derive import rules`` imports the module symgrad.derive.rules
                targets = [known(f"{base}.{a.name}") if f"{base}.{a.name}" in modules
                           else known(base) for a in node.names]
            for target in targets:
                if target and target != name:
                    edges[target] = edges.get(target, True) and lazy
    return graph


def _cycles(graph: dict[str, dict[str, bool]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_reader_sees_lazy_imports_and_skips_type_checking_ones():
    graph = import_graph()
    # symgrad.compiled imports symgrad.second only inside CompiledFunction.hessian & co.
    assert graph["symgrad.compiled"]["symgrad.second"] is True
    assert graph["symgrad.compiled"]["symgrad.derive.reverse"] is False
    # interop/torch.py names CompiledFunction under TYPE_CHECKING only
    assert "symgrad.compiled" not in graph["symgrad.interop.torch"]
    # a cycle is found where there is one
    assert _cycles({"a": {"b": True}, "b": {"c": False}, "c": {"a": True}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    for source, target in HANDOVERS:
        assert graph[source].get(target) is True, (
            f"{source} -> {target} is listed as a lazy handover but is not one")
        del graph[source][target]
    assert _cycles(graph) == []


def test_no_import_cycles_at_module_level_even_with_the_handovers():
    graph = import_graph()
    eager = {v: {w: lazy for w, lazy in edges.items() if not lazy} for v, edges in graph.items()}
    assert _cycles(eager) == []


def test_the_pipeline_never_imports_presentation():
    graph = import_graph()
    assert any(_within(m, PRESENTATION) for m in graph)     # the names are still right
    wrong = sorted(f"{source} -> {target}" for source, edges in graph.items()
                   if _within(source, PIPELINE) for target in edges
                   if _within(target, PRESENTATION))
    assert wrong == []


def test_no_public_name_is_also_a_submodule():
    # The package's own folder is listed rather than importing symgrad.<name>: an import
    # would set the attribute symgrad.<name> to the module, the very shadowing checked here.
    submodules = {m.name for m in pkgutil.iter_modules(sg.__path__)}
    assert {"present", "checking", "generation", "compiled"} <= submodules
    clashes = sorted(name for name in sg.__all__
                     if name in submodules and not isinstance(getattr(sg, name), types.ModuleType))
    assert clashes == []


def test_the_renamed_modules_are_where_the_functions_come_from():
    assert isinstance(sg.show, types.FunctionType) and isinstance(sg.check, types.FunctionType)
    assert sg.show.__module__ == "symgrad.present.formulas"
    assert sg.check.__module__.startswith("symgrad.checking")
    assert sg.generate.__module__ == "symgrad.generation"


def _sympy_calls(source: str, methods: tuple) -> list[str]:
    """The calls of SymPy's ``methods`` (as ``e.method(...)`` or ``sp.method(...)``) in a
    module's source."""
    return [f"{node.lineno}: .{node.func.attr}(...)" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in methods]


def test_every_substitution_goes_through_nodes_replaced():
    """SymPy's xreplace and subs rebuild a Piecewise with its conditions rewritten (Eq(2 a +
    1, m) becomes Eq(a, m/2 - 1/2), false in floats where Min's rule routes by it), and walk
    a shared DAG as a tree: the package substitutes with symgrad.nodes.replaced only."""
    substitutions = ("xreplace", "subs")
    assert _sympy_calls("e.xreplace({x: y})\nf(e).subs(x, 1)\ns.replace('a', 'b')",
                        substitutions) == ["1: .xreplace(...)", "2: .subs(...)"]
    found = {name: calls for name, path in _module_names().items()
             if (calls := _sympy_calls(path.read_text(encoding="utf-8"), substitutions))}
    assert found == {}


def test_every_derivative_goes_through_nodes_derivative():
    """SymPy's diff rebuilds each Piecewise it differentiates, rewriting the equality that
    Max's rule routes by (the Hessian-vector product of Max of three arguments in an
    elementwise body came out half the true one): the package differentiates a scalar
    expression with symgrad.nodes.derivative only, which holds them."""
    assert _sympy_calls("sp.diff(e, x)\ne.diff(x)\nd.different(x)", ("diff",)) \
        == ["1: .diff(...)", "2: .diff(...)"]
    found = {name: calls for name, path in _module_names().items() if name != "symgrad.nodes"
             and (calls := _sympy_calls(path.read_text(encoding="utf-8"), ("diff",)))}
    assert found == {}
