"""A full disk inside a population (a real, small tmpfs as the sweep dir): each member ends with one line that names
the file that could not be written and its own last good checkpoint; the others are not blamed for it; the failure
records are whole; each member's checkpoint holds its own weights only (a few times smaller than the population's)."""

import json

from conftest import run_script
from test_disk_full import small_disk  # noqa: F401 - the fixture

POPULATION = [
    "hydra/launcher=population",
    "model=mlp",
    "optimizer.lr=0.1,0.2",
    "trainer.max_steps=400",
    "trainer.val_check_interval=200",
    "~callbacks.diagnostics",
    "~callbacks.progress_bar",
    "threads=1",
    "trainer.accelerator=cpu",
]


def test_a_population_on_a_full_disk_ends_each_member_with_its_own_line(small_disk, small_names):  # noqa: F811
    sweep_dir = small_disk(315) / "sweep"
    result = run_script("train.py", "-m", *POPULATION, f"data.path={small_names}", f"hydra.sweep.dir={sweep_dir}")
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "enforce fail" not in output, output[-3000:]
    errors = {job: json.loads((sweep_dir / job / "failure.json").read_text())["error"] for job in ("0", "1")}
    failed = [job for job, error in errors.items() if error.startswith("cannot write the run's files")]
    assert len(failed) == 1, errors  # the member whose file it was
    [other] = {"0", "1"} - set(failed)
    file = errors[failed[0]].split("No space left on device: ", 1)[1].split(")", 1)[0]
    assert file.startswith(str(sweep_dir / failed[0]))  # the user's file, never a /tmp/tmpXXXX
    assert (
        errors[other].startswith("stopped at step ")
        and f"another member's file (No space left on device: {file})" in errors[other]
    )
    for job in ("0", "1"):
        last = sweep_dir / job / "checkpoints" / "last.ckpt"
        assert errors[job].endswith(f"the last good checkpoint is {last}") and last.stat().st_size < 80_000
        assert not list((sweep_dir / job).rglob("*.tmp"))
