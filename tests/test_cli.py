"""The symgrad command: show, generate, check, demo; one-line errors and exit codes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from symgrad import cli, demo
from symgrad.cli import main

ROOT = Path(__file__).resolve().parent.parent
LINEAR_REGRESSION = ROOT / "examples" / "linear_regression.py"
needs_examples = pytest.mark.skipif(not LINEAR_REGRESSION.exists(), reason="no examples yet")

MODEL_FILE = '''
import sympy as sp
import symgrad as sg

w, x, y = sp.symbols("w x y")
square_loss = sg.Model("square_loss", (w * x - y) ** 2, wrt=[w])

if __name__ == "__main__":
    raise SystemExit("the main block ran")
'''


@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(MODEL_FILE)
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    """``python -m symgrad ARGS`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "symgrad", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def one_line_error(stderr: str) -> str:
    assert stderr.startswith("symgrad: error: "), stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    return stderr


# ------------------------------------------------------------------------------------------
# Help and arguments
# ------------------------------------------------------------------------------------------
def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("show", "generate", "check", "demo"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["show", "generate", "check", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: symgrad {command}" in capsys.readouterr().out


@pytest.mark.parametrize("arguments", [
    [],                                             # no command
    ["frobnicate"],                                 # unknown command
    ["show"],                                       # no file
    ["generate", "examples/linear_regression.py"],  # no -o
    ["check", "m.py", "--against", "maple"],        # unknown method
    ["check", "m.py", "--points", "0"],
    ["check", "m.py", "--order", "3"],              # no third order
])
def test_bad_arguments_exit_2_with_usage_on_stderr(arguments, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(arguments)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("usage: symgrad") and captured.out == ""


def test_bad_arguments_exit_2_from_the_command_line():
    result = run("generate", "nothing.py")
    assert result.returncode == 2
    assert "usage: symgrad generate" in result.stderr
    assert "the following arguments are required: -o/--out" in result.stderr


def test_the_console_script_is_cli_main():
    # (tomllib would need Python 3.11; symgrad supports 3.10)
    scripts = (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1]
    assert scripts.split("[")[0].strip() == 'symgrad = "symgrad.cli:main"'


# ------------------------------------------------------------------------------------------
# show
# ------------------------------------------------------------------------------------------
def test_show_prints_each_model_and_its_gradients(model_file, capsys):
    assert main(["show", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# square_loss  ({model_file})\n")
    assert "dsquare_loss/dw = x*(2*w*x - 2*y)" in out


@needs_examples
def test_show_an_example_from_the_command_line():
    result = run("show", "examples/linear_regression.py")
    assert result.returncode == 0, result.stderr
    assert "# linear_regression  (examples/linear_regression.py)" in result.stdout
    assert "dlinear_regression/dw = x*(2*w*x - 2*y)" in result.stdout


# ------------------------------------------------------------------------------------------
# generate
# ------------------------------------------------------------------------------------------
def test_generate_writes_modules_and_prints_their_paths(model_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", str(model_file), "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"{out / 'square_loss.py'}\n"
    assert (out / "square_loss.py").read_text().startswith('"""square_loss: generated')


def test_generate_check_reports_stale_modules(model_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", str(model_file), "-o", str(out), "--check"]) == 1
    assert "stale: " in capsys.readouterr().out
    assert not out.exists()
    main(["generate", str(model_file), "-o", str(out)])
    assert main(["generate", str(model_file), "-o", str(out), "--check"]) == 0


def test_two_files_with_models_of_one_name_are_refused(model_file, tmp_path, capsys):
    copy = tmp_path / "copy.py"
    copy.write_text(MODEL_FILE)
    assert main(["generate", str(model_file), str(copy), "-o", str(tmp_path / "out")]) == 1
    assert "two models are named 'square_loss'" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------
# One-line errors
# ------------------------------------------------------------------------------------------
def test_a_syntax_error_is_one_line_with_file_and_line(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import symgrad as sg\nmodel = sg.Model(\n")
    result = run("show", str(broken))
    assert result.returncode == 1
    assert f"{broken}:2: syntax error" in one_line_error(result.stderr)


def test_a_file_without_a_model_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    assert main(["generate", str(empty), "-o", str(tmp_path / "out")]) == 1
    assert "defines no sg.Model" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_missing_file_is_one_line(capsys):
    assert main(["show", "no/such/file.py"]) == 1
    assert one_line_error(capsys.readouterr().err) == \
        "symgrad: error: no/such/file.py: no such file\n"


def test_an_unwritable_output_folder_is_one_line_and_leaves_nothing(model_file, tmp_path,
                                                                    capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["generate", str(model_file), "-o", str(blocker / "out")]) == 1
    assert "cannot write" in one_line_error(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "models.py"]


def test_a_model_that_cannot_be_derived_is_named(tmp_path, capsys):
    path = tmp_path / "bad.py"
    path.write_text("import sympy as sp, symgrad as sg\nw = sp.Symbol('w')\n"
                    "bad = sg.Model('bad', sp.Function('f')(w), wrt=[w])\n")
    assert main(["generate", str(path), "-o", str(tmp_path / "out")]) == 1
    error = one_line_error(capsys.readouterr().err)
    assert error.startswith(f"symgrad: error: {path}: model bad: NotImplementedError: "
                            "symgrad has no differentiation rule for f")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------
# check
# ------------------------------------------------------------------------------------------
class FakeReport:
    def __init__(self, ok: bool, text: str):
        self.ok, self.text = ok, text

    def __str__(self) -> str:
        return self.text


def test_check_prints_each_report_and_fails_if_one_disagrees(model_file, monkeypatch, capsys):
    calls = []

    def check(model, against, points, seed, time, order):
        calls.append((model.name, against, points, seed, time, order))
        return FakeReport(ok=False, text=f"table for {model.name}")

    monkeypatch.setitem(sys.modules, "symgrad.checking",
                        types.SimpleNamespace(check=check))
    code = main(["check", str(model_file), "--against", "finite-differences,jax",
                 "--points", "5", "--seed", "7", "--time", "--order", "2"])
    assert code == 1
    assert capsys.readouterr().out == "table for square_loss\n"
    assert calls == [("square_loss", ["finite-differences", "jax"], 5, 7, True, 2)]


def test_check_takes_the_method_names_and_aliases_of_sg_check(model_file, monkeypatch):
    """--against reads a name as sg.check does: its alias fd was 'unknown method'."""
    from symgrad.checking.backends import BACKENDS
    from symgrad.checking.runner import _ALIASES

    calls = []

    def check(model, against, points, seed, time, order):
        calls.append(against)
        return FakeReport(ok=True, text="")

    monkeypatch.setitem(sys.modules, "symgrad.checking", types.SimpleNamespace(check=check))
    for alias, name in _ALIASES.items():
        assert main(["check", str(model_file), "--against", f"{alias},jax"]) == 0
        assert calls.pop() == [name, "jax"]
    # all: every framework installed, as sg.check(against="all") skips the missing ones
    assert main(["check", str(model_file), "--against", "all"]) == 0
    assert calls.pop() == ["all"]
    # the command's own lists (it imports nothing of symgrad.checking to parse) are sg.check's
    from symgrad.cli import CHECK_ALIASES, CHECK_BACKENDS

    assert CHECK_ALIASES == _ALIASES
    assert set(CHECK_BACKENDS) == set(BACKENDS)


def test_check_without_symgrad_check_is_a_clean_error(model_file, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "symgrad.checking", None)
    assert main(["check", str(model_file)]) == 1
    assert "symgrad.checking is not available" in one_line_error(capsys.readouterr().err)


def test_check_against_finite_differences(model_file, capsys):
    assert main(["check", str(model_file)]) == 0
    assert capsys.readouterr().out.strip()


def test_check_of_second_order_compares_the_hessian(model_file, capsys):
    first = main(["check", str(model_file)])
    first_out = capsys.readouterr().out
    assert main(["check", str(model_file), "--order", "2"]) == first == 0
    second_out = capsys.readouterr().out
    assert "hessian" in second_out.lower() and "hessian" not in first_out.lower()


# ------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------
@needs_examples
def test_demo_shows_checks_and_times_a_model_file(capsys):
    assert main(["demo", str(LINEAR_REGRESSION)]) == 0
    out = capsys.readouterr().out
    assert "== linear_regression  (" in out
    assert "dlinear_regression/dw = x*(2*w*x - 2*y)" in out
    assert "finite differences" in out and "ok" in out
    assert "value and gradient: symgrad " in out and ", NumPy " in out
    assert "Summary" in out


def test_demo_fails_when_its_check_raises_and_names_the_error(model_file, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("backend exploded")

    monkeypatch.setattr(demo, "check", broken)
    out, err = io.StringIO(), io.StringIO()
    assert demo.run_demo([model_file], out=out, err=err) != 0
    assert "raised RuntimeError: backend exploded" in out.getvalue()
    assert "(no NumPy baseline)" in out.getvalue()
    assert err.getvalue() == ""      # no progress line: err is not a terminal


def test_demo_uses_built_in_models_without_examples(monkeypatch):
    monkeypatch.setattr(demo, "examples_folder", lambda: None)
    assert [(m.name, where) for m, where in demo.demo_models()] == [
        ("linear_regression", "built in"), ("branching_graph", "built in"),
        ("window_classifier", "built in"), ("two_layer_net", "built in")]


def test_demo_prefers_the_examples_folder():
    if demo.examples_folder() is None:
        pytest.skip("no examples yet")
    sources = {where for _, where in demo.demo_models()}
    assert all(where.startswith("examples") for where in sources), sources


def test_the_numpy_baselines_agree_with_the_built_in_models():
    for model in demo.builtin_models():
        baseline = demo.NUMPY_BASELINES[model.name]
        inputs = demo.sample_inputs(model, {"m": 7, "n_x": 3, "n_h": 5}, seed=1)
        value, grads = model.compiled.value_and_grad(**inputs)
        ref_value, ref_grads = baseline(**inputs)
        np.testing.assert_allclose(value, ref_value, rtol=1e-9, err_msg=model.name)
        for name in grads:
            np.testing.assert_allclose(np.reshape(ref_grads[name], np.shape(grads[name])),
                                       grads[name], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{model.name}: d/d{name}")


def test_the_progress_line_is_quiet_when_stderr_is_not_a_terminal():
    stream = io.StringIO()
    with demo.Progress("compiling", stream) as progress:
        pass
    assert stream.getvalue() == "" and progress.elapsed >= 0


def test_the_progress_line_counts_seconds_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    with demo.Progress("compiling m", stream):
        import time
        time.sleep(0.25)
    assert "compiling m ... " in stream.getvalue() and stream.getvalue().endswith("\r\033[K")


def test_python_dash_m_symgrad_is_the_command(capsys):
    """``python -m symgrad`` prints and exits as the command's own main does."""
    result = run("show", "--help")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["show", "--help"])
    assert result.returncode == exit_.value.code == 0
    assert result.stdout == capsys.readouterr().out
    failed = run("show", "no/such/model.py")
    assert failed.returncode == cli.main(["show", "no/such/model.py"]) != 0
