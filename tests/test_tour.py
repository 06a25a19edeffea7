"""examples/tour.ipynb runs from top to bottom (so it cannot go stale) in a kernel of this
interpreter."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "examples" / "tour.ipynb"


@pytest.fixture
def kernel_name(tmp_path, monkeypatch) -> str:
    """A kernelspec for ``sys.executable`` in a scratch folder, so that the notebook runs
    with this interpreter's symgrad, whatever kernels the machine has installed."""
    pytest.importorskip("ipykernel")
    spec = tmp_path / "kernels" / "symgrad-tour"
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "symgrad tour", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    # the kernel imports this checkout's symgrad even where it is not installed
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    return "symgrad-tour"


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_the_tour_runs(kernel_name):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for framework in ("jax", "torch", "autograd"):      # its sg.check tables name them
        pytest.importorskip(framework)
    notebook = nbformat.read(TOUR, as_version=4)
    committed = [cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"]
    # committed with its outputs: every code cell after the imports shows something
    assert all(committed[1:]), "run the notebook and save it with its outputs"
    client = nbclient.NotebookClient(notebook, kernel_name=kernel_name, timeout=240,
                                     resources={"metadata": {"path": str(TOUR.parent)}})
    client.execute()      # raises CellExecutionError, naming the cell, if one fails
    outputs = "\n".join(output.get("text", "") for cell in notebook.cells
                        if cell.cell_type == "code" for output in cell.outputs)
    assert "df/dy = 3 + 2 = 5" in outputs
    assert "dwindow_classifier/dW = delta x^T" in outputs
    assert outputs.count("\nOK") >= 2                    # both sg.check tables agree
    svgs = [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if "image/svg+xml" in output.get("data", {})]
    assert len(svgs) == 4                                 # the four graphs drew
