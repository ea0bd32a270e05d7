"""examples/lecture3_tutorial.ipynb executes end to end (on a few hundred steps) in a kernel of this interpreter,
and is committed without outputs."""

import json
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOK = ROOT / "examples" / "lecture3_tutorial.ipynb"


def test_the_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def outputs_of(cell) -> list[str]:
    """Each output as text: a stream's text, or the MIME types of a display / result."""
    return [o.text if o.output_type == "stream" else " ".join(sorted(o.get("data", {}))) for o in cell.outputs]


@pytest.mark.slow
def test_the_tutorial_executes_end_to_end(tmp_path, monkeypatch):
    kernel_dir = tmp_path / "jupyter" / "kernels" / "makemore-test"
    kernel_dir.mkdir(parents=True)
    # a kernel of the test's own interpreter, whatever kernels the machine has installed
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "makemore-lab tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MAKEMORE_TUTORIAL_STEPS", "200")
    workdir = tmp_path / "work"
    workdir.mkdir()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, kernel_name="makemore-test", timeout=300,
                   resources={"metadata": {"path": str(workdir)}}).execute()  # raises on a failing cell

    cells = {cell.source: outputs_of(cell) for cell in notebook.cells if cell.cell_type == "code"}
    text = "\n".join(out for outs in cells.values() for out in outs)
    assert "[FAIL] initial_loss" in text  # the naive init's health report, as the lecture diagnoses it
    figures = next(outs for source, outs in cells.items() if source.startswith("from IPython.display"))
    assert figures.count("image/png text/plain") == 2  # shown inline
    table = next(outs for source, outs in cells.items() if source.startswith("table = "))
    assert table[-1] == "text/markdown text/plain"
    assert len(list((workdir / "logs" / "train" / "multiruns").iterdir())) == 1
    assert "\x1b[" not in text  # no cursor movement from nested progress bars in the cell outputs
    assert "Tip:" not in text and "Traceback" not in text
