"""The README's short example runs as written (in a scratch folder: it writes a module)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_short_example_runs(tmp_path, monkeypatch, capsys):
    for framework in ("jax", "torch", "autograd"):     # its sg.check names all of them
        pytest.importorskip(framework)
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## A short example"):text.index("## The three ways")]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "ds/dW = delta x^T" in printed and printed.rstrip().endswith("OK")
    assert namespace["g"]["W"].shape == (100, 250)
    assert namespace["f"].op_counts == {"forward": 5, "value_and_grad": 10}
    assert (tmp_path / "window_classifier.py").exists()
