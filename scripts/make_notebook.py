"""Run examples/lecture3_tutorial.ipynb and commit-ready save it with its outputs (what GitHub shows).

    python scripts/make_notebook.py [--steps 5000] [--notebook examples/lecture3_tutorial.ipynb]

The notebook runs in a kernel of this interpreter, in a temporary directory (its runs' logs/ go there), with
MAKEMORE_TUTORIAL_STEPS=--steps; the executed notebook replaces the file, without execution timestamps, so that a
rerun changes only what the code's output changed. tests/test_notebook.py runs the same notebook on a few hundred
steps and checks that the committed outputs have the same cells and the same kinds of output (figures included).
About 2-3 minutes on a 2-core CPU.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "lecture3_tutorial.ipynb"
KERNEL = "makemore-notebook"


def execute(notebook_path: Path, steps: int, workdir: Path):
    """The notebook executed in `workdir` by a kernel of this interpreter (nbclient), as a NotebookNode."""
    import nbformat
    from nbclient import NotebookClient

    kernel_dir = workdir / "jupyter" / "kernels" / KERNEL
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "makemore-lab",
                "language": "python",
            }
        )
    )
    notebook = nbformat.read(notebook_path, as_version=4)
    run_dir = workdir / "work"
    run_dir.mkdir()
    saved = {name: os.environ.get(name) for name in ("JUPYTER_PATH", "MAKEMORE_TUTORIAL_STEPS")}
    os.environ.update(JUPYTER_PATH=str(workdir / "jupyter"), MAKEMORE_TUTORIAL_STEPS=str(steps))  # the kernel's
    try:
        NotebookClient(
            notebook,
            kernel_name=KERNEL,
            timeout=900,
            record_timing=False,
            resources={"metadata": {"path": str(run_dir)}},
        ).execute()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def main() -> None:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        notebook = execute(args.notebook, args.steps, Path(tmp))
    # paths as the reader's own run prints them: relative to the notebook's directory, not this machine's temp dir
    text = nbformat.writes(notebook).replace(f"{tmp}/work/", "").replace(tmp, "<tmp>")
    tmp_file = args.notebook.with_suffix(".ipynb.tmp")
    tmp_file.write_text(text if text.endswith("\n") else text + "\n")
    os.replace(tmp_file, args.notebook)
    print(f"wrote {args.notebook} ({len(text) // 1024} KB)")


if __name__ == "__main__":
    main()
