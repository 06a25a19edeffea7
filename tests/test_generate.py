"""sg.generate and model files: standalone modules that need numpy and numba only, the same
bytes in every process, written all at once or not at all, and generated/ kept in sync."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.demo import sample_inputs
from symgrad.generation import (
    ModelFileError,
    OutputError,
    generate,
    generate_file,
    load_models,
    module_text,
    plan_modules,
    write_modules,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
GENERATED = ROOT / "generated"
REGENERATE = "python -m symgrad generate examples/*.py -o generated"

# A model file with the shapes of trouble: a scalar model, a model with a (1, 1) bias
# broadcast over columns, a symbolic dimension, and a matrix output (vjp).
MODEL_FILE = '''
import sympy as sp
import symgrad as sg

w, x, y = sp.symbols("w x y")
linear = sg.Model("linear", (w * x - y) ** 2, wrt=[w])

n, m = sp.symbols("n m", integer=True, positive=True)
W, X, b = sg.matrix("W", 1, n), sg.matrix("X", n, m), sg.vector("b", 1)
Z = W @ X + sg.broadcast(b, (1, m))
net = sg.Model("net", sg.mean(sg.softplus(Z)), wrt=[W, b])

affine = sg.Model("affine", W @ X, wrt=[W])

if __name__ == "__main__":
    open(__file__ + ".ran", "w").write("the main block ran")
'''


@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(MODEL_FILE)
    return path


def imported_modules(text: str) -> set[str]:
    """The top-level names of every module the text imports."""
    names = set()
    for line in text.splitlines():
        found = re.match(r"\s*(?:from\s+([\w.]+)\s+import|import\s+([\w., ]+))", line)
        if found:
            modules = found.group(1) or found.group(2)
            names |= {m.strip().split()[0].split(".")[0] for m in modules.split(",")}
    return names


# ------------------------------------------------------------------------------------------
# Model files
# ------------------------------------------------------------------------------------------
def test_load_models_returns_the_models_in_definition_order(model_file):
    assert [m.name for m in load_models(model_file)] == ["linear", "net", "affine"]


def test_load_models_does_not_run_the_main_block(model_file):
    load_models(model_file)
    assert not Path(str(model_file) + ".ran").exists()


def test_loading_a_file_twice_gives_fresh_models(model_file):
    first, second = load_models(model_file), load_models(model_file)
    assert first[0] is not second[0]


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import symgrad as sg\n\nmodel = sg.Model('m', (\n")
    with pytest.raises(ModelFileError) as error:
        load_models(path)
    message = str(error.value)
    assert message.startswith(f"{path}:3: syntax error")
    assert "\n" not in message


def test_a_file_without_a_model_is_refused(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("import sympy as sp\nx = sp.Symbol('x')\n")
    with pytest.raises(ModelFileError, match=r"empty\.py: defines no sg\.Model"):
        load_models(path)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match=r"nothere\.py: no such file"):
        load_models(tmp_path / "nothere.py")


def test_an_error_while_the_file_runs_names_its_line(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text("import symgrad as sg\nmodel = sg.Modle('m', 1, wrt=[])\n")
    with pytest.raises(ModelFileError, match=r"typo\.py:2: AttributeError: .*Modle"):
        load_models(path)


def test_two_models_with_one_name_are_refused(tmp_path):
    path = tmp_path / "twice.py"
    path.write_text("import sympy as sp, symgrad as sg\nw = sp.Symbol('w')\n"
                    "a = sg.Model('m', w**2, wrt=[w])\nb = sg.Model('m', w**3, wrt=[w])\n")
    with pytest.raises(ModelFileError, match="two models are named 'm'"):
        load_models(path)


# ------------------------------------------------------------------------------------------
# Generating
# ------------------------------------------------------------------------------------------
def test_generate_writes_the_module_and_returns_its_path(model_file, tmp_path):
    linear = load_models(model_file)[0]
    path = generate(linear, tmp_path / "out" / "linear.py")
    assert path == tmp_path / "out" / "linear.py"
    assert path.read_text() == module_text(linear)


def test_generate_into_a_folder_names_the_file_after_the_model(model_file, tmp_path):
    linear = load_models(model_file)[0]
    assert generate(linear, tmp_path) == tmp_path / "linear.py"


def test_generate_takes_an_expression_with_wrt_and_names_it_after_the_file(tmp_path):
    w, x, y = sp.symbols("w x y")
    path = generate((w * x - y) ** 2, wrt=[w], path=tmp_path / "regression.py")
    assert path.read_text().startswith('"""regression: generated by symgrad.')
    named = generate((w * x - y) ** 2, wrt=[w], path=tmp_path / "other.py", name="lr")
    assert named.read_text().startswith('"""lr: generated by symgrad.')


# numpy and numba, plus what installing numba always brings: the standard library's math
# and numba's own code generator, llvmlite (the fast math functions build on both)
RUNTIME_IMPORTS = {"numpy", "numba", "llvmlite", "math"}


def test_generated_modules_import_numpy_and_numba_only(model_file):
    for model in load_models(model_file):
        text = module_text(model)
        assert imported_modules(text) <= RUNTIME_IMPORTS, model.name
        assert not re.search(r"^\s*(import|from)\s+(sympy|symgrad)\b", text, re.MULTILINE)


def test_generated_modules_carry_formulas_op_counts_version_and_hash(model_file):
    text = module_text(load_models(model_file)[1])
    docstring = text.split('"""')[1]
    assert "Gradients (shared pieces named once):" in docstring
    assert "Operation counts after CSE:" in docstring
    assert f"symgrad {sg.__version__}" in docstring
    assert re.search(r"content hash [0-9a-f]{16}", docstring)


def test_a_matrix_output_module_has_vjp(model_file):
    text = module_text(load_models(model_file)[2])
    assert "\ndef vjp(upstream: np.ndarray, /, *," in text
    assert "\ndef value_and_grad(" not in text


def test_generate_file_writes_one_module_per_model(model_file, tmp_path):
    paths = generate_file(model_file, tmp_path / "out")
    assert [p.name for p in paths] == ["linear.py", "net.py", "affine.py"]
    assert all(p.is_file() for p in paths)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_modules_get_ordinary_file_permissions(model_file, tmp_path):
    umask = os.umask(0o022)
    try:
        (path, *_) = generate_file(model_file, tmp_path)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_model_that_cannot_be_derived_writes_nothing(tmp_path):
    w = sp.Symbol("w")
    bad = sg.Model("bad", sp.Function("f")(w) ** 2, wrt=[w])
    with pytest.raises(NotImplementedError, match="no differentiation rule for f"):
        generate(bad, tmp_path / "bad.py")
    path = tmp_path / "two.py"
    path.write_text("import sympy as sp, symgrad as sg\nw = sp.Symbol('w')\n"
                    "good = sg.Model('good', w**2, wrt=[w])\n"
                    "bad = sg.Model('bad', sp.Function('f')(w), wrt=[w])\n")
    with pytest.raises(NotImplementedError):
        generate_file(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.py"]


def test_an_unwritable_output_folder_gives_one_line_and_leaves_nothing(model_file, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError) as error:
        generate_file(model_file, blocker / "out")
    message = str(error.value)
    assert message.startswith(f"cannot write {blocker / 'out' / 'linear.py'}: ")
    assert "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "models.py"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permissions do not stop root")
def test_a_read_only_folder_is_refused(model_file, tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="Permission denied"):
            generate_file(model_file, folder)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_write_modules_is_all_or_nothing(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    planned = {tmp_path / "out" / "first.py": "first\n", blocker / "second.py": "second\n"}
    with pytest.raises(OutputError, match="second.py"):
        write_modules(planned)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_an_unchanged_module_is_not_rewritten(model_file, tmp_path):
    # rewriting would change the file's modification time and so void Numba's cache of it
    (path,) = plan_modules(load_models(model_file)[:1], tmp_path)
    write_modules({path: "old text\n"})
    os.utime(path, (1_000_000, 1_000_000))
    write_modules({path: "old text\n"})
    assert path.stat().st_mtime == 1_000_000
    write_modules({path: "new text\n"})
    assert path.read_text() == "new text\n"


def test_generation_is_byte_identical_whatever_the_hash_seed(model_file, tmp_path):
    # Different hash seeds change set and dict orders; SymPy's Dummy symbols are numbered
    # from a random base in each process: neither may reach the text.
    files = [str(model_file), *map(str, EXAMPLES)]
    runs = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        runs.append((out, subprocess.Popen(
            [sys.executable, "-m", "symgrad", "generate", *files, "-o", str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for _, process in runs:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    (first, _), (second, _) = runs
    names = sorted(p.name for p in first.glob("*.py"))
    assert names == sorted(p.name for p in second.glob("*.py"))
    differing = {}
    for name in names:
        a, b = (first / name).read_text(), (second / name).read_text()
        if a != b:
            lines = [(x, y) for x, y in zip(a.splitlines(), b.splitlines(), strict=False) if x != y]
            differing[name] = lines[:3]
    assert not differing, f"generated text depends on the process: {differing}"


# ------------------------------------------------------------------------------------------
# generated/: in sync with examples/, and importable without SymPy
# ------------------------------------------------------------------------------------------
def example_models() -> dict:
    return {m.name: m for file in EXAMPLES for m in load_models(file)}


@pytest.mark.skipif(not EXAMPLES, reason="no examples yet")
def test_generated_folder_is_up_to_date(tmp_path):
    planned = plan_modules(example_models().values(), GENERATED)
    missing = [p.name for p in planned if not p.is_file()]
    stale = [p.name for p, text in planned.items()
             if p.is_file() and p.read_text(encoding="utf-8") != text]
    extra = sorted({p.name for p in GENERATED.glob("*.py")} - {p.name for p in planned})
    assert not (missing or stale or extra), (
        f"generated/ is out of date (missing {missing}, stale {stale}, no longer generated "
        f"{extra}): run `{REGENERATE}`" + (" and delete the extra files" if extra else ""))


def test_generated_folder_explains_itself():
    readme = (GENERATED / "README.md").read_text()
    assert REGENERATE in readme


_BLOCKED_RUN = textwrap.dedent('''
    import importlib.abc, importlib.util, pickle, sys

    class Blocked(importlib.abc.MetaPathFinder):
        """Generated modules must work where SymPy and symgrad are not installed."""
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("sympy", "symgrad"):
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, Blocked())
    import numpy as np

    cases = pickle.load(open(sys.argv[1], "rb"))
    results = {}
    for name, (path, inputs) in cases.items():
        spec = importlib.util.spec_from_file_location(f"generated_{name}", path)
        module = importlib.util.module_from_spec(spec)
        # registered as `import` does: Numba's cache records the module of each kernel and
        # imports it by that name when a later run loads the cached kernel
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        if hasattr(module, "value_and_grad"):
            results[name] = module.value_and_grad(**inputs)
        else:
            value = module.forward(**inputs)
            upstream = np.cos(np.arange(value.size)).reshape(value.shape)
            results[name] = (value, module.vjp(upstream, **inputs))
    assert not any(m.split(".")[0] in ("sympy", "symgrad") for m in sys.modules)
    pickle.dump(results, open(sys.argv[2], "wb"))
''')


@pytest.mark.skipif(not list(GENERATED.glob("*.py")), reason="generated/ is empty")
def test_generated_modules_run_without_sympy_and_match_compile(tmp_path, cache_dir):
    models = example_models()
    cases = {}
    for k, path in enumerate(sorted(GENERATED.glob("*.py"))):
        model = models.get(path.stem)
        assert model is not None, f"{path.name} has no model in examples/: run `{REGENERATE}`"
        scalar_model = not any(isinstance(s, sp.MatrixSymbol) for s in model.inputs)
        cases[model.name] = (str(path), sample_inputs(model, seed=k,
                                                      points=4 if scalar_model else None))
    (tmp_path / "cases.pkl").write_bytes(pickle.dumps(cases))
    # the subprocess compiles the generated modules while this one compiles the same models
    # with sg.compile: two cores, half the wait.  Numba's cache goes beside the session's.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NUMBA_CACHE_DIR"] = str(Path(cache_dir) / "numba-generated")
    process = subprocess.Popen(
        [sys.executable, "-c", _BLOCKED_RUN, str(tmp_path / "cases.pkl"),
         str(tmp_path / "results.pkl")], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    expected = {}
    for name, (_, inputs) in cases.items():
        compiled = models[name].compiled
        if hasattr(compiled, "value_and_grad"):
            expected[name] = compiled.value_and_grad(**inputs)
        else:
            value = compiled(**inputs)
            upstream = np.cos(np.arange(value.size)).reshape(value.shape)
            expected[name] = (value, compiled.vjp(upstream, **inputs))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    results = pickle.loads((tmp_path / "results.pkl").read_bytes())
    for name, (value, grads) in expected.items():
        got_value, got_grads = results[name]
        np.testing.assert_allclose(got_value, value, rtol=1e-12, err_msg=name)
        assert set(got_grads) == set(grads), name
        for parameter in grads:
            np.testing.assert_allclose(got_grads[parameter], grads[parameter], rtol=1e-12,
                                       atol=0, err_msg=f"{name}: d/d{parameter}")
