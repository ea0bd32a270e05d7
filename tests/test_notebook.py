"""examples/lecture3_tutorial.ipynb is committed with its outputs (scripts/make_notebook.py writes them), and those
outputs are what the current code's run of it gives: the same cells, the same kinds of output in each, the figures
included. The run here is a short one (MAKEMORE_TUTORIAL_STEPS=200) in a kernel of this interpreter."""

import sys

import nbformat
import pytest

from conftest import ROOT

NOTEBOOK = ROOT / "examples" / "lecture3_tutorial.ipynb"
sys.path.insert(0, str(ROOT / "scripts"))
import make_notebook  # noqa: E402


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def text_of(cell) -> str:
    return "".join(
        o.get("text", "") if o.output_type == "stream" else str(o.get("data", {}).get("text/plain", ""))
        for o in cell.outputs
    )


def displays(cell) -> list[str]:
    """The rich outputs of a cell (figures, tables), by MIME type, in order: what must come back on every run."""
    return [
        kind
        for o in cell.outputs
        if o.output_type != "stream"
        for kind in sorted(o.get("data", {}))
        if kind != "text/plain"
    ]


def test_the_committed_notebook_shows_its_outputs_and_no_noise():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cells = code_cells(notebook)
    assert cells and all(cell.execution_count for cell in cells)  # executed, in order
    assert all(cell.outputs for cell in cells[1:])  # all but the set-up cell show something
    assert not [o for cell in cells for o in cell.outputs if o.output_type == "error"]
    text = "\n".join(text_of(cell) for cell in cells)
    assert "[FAIL] initial_loss" in text  # the naive init's health report, as the lecture diagnoses it
    assert "\x1b[" not in text and "\r" not in text  # no progress-bar redraws
    assert "Traceback" not in text and "Tip:" not in text and "steps_per_call" not in text
    assert "/tmp/" not in text and "/work/" not in text  # no paths of the machine that ran it
    histograms = next(cell for cell in cells if "histogram_at_init" in cell.source)
    assert displays(histograms) == ["image/png"]  # the lecture's histograms at step 0, side by side
    for cell in cells:  # a progress line per validation (5 in a 5,000-step run), not a bar's every redraw
        runs = 3 if "sweep(" in cell.source else 1
        assert text_of(cell).count("step_progress_bar") <= 5 * runs, cell.source


@pytest.mark.slow
def test_the_committed_outputs_are_the_current_codes(tmp_path):
    committed = nbformat.read(NOTEBOOK, as_version=4)
    fresh = make_notebook.execute(NOTEBOOK, steps=200, workdir=tmp_path)  # raises on a failing cell
    assert [c.source for c in fresh.cells] == [c.source for c in committed.cells]
    for new, old in zip(code_cells(fresh), code_cells(committed)):
        assert displays(new) == displays(old), new.source  # the same figures and tables, cell by cell
        assert bool(new.outputs) == bool(old.outputs), new.source
    assert len(list((tmp_path / "work" / "logs" / "train" / "multiruns").iterdir())) == 1
