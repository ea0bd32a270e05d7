"""The run-dir and sweep-dir guards hold on every path (issue 36, items 1 and 2): a guard that cannot decide
refuses, and every refusal leaves every file of a run dir or sweep dir byte for byte. Through the real train.py:
the exit code and the files left are the point."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, run_script

# Interpolations a user types in overrides (or that a printed resume command contains): each was resolved by the
# sweep-dir check, which then died, and Hydra's callback runner only warned.
INTERPOLATIONS = [
    "+note=${paths.output_dir}",
    "+x=${hydra:job.num}",
    "+y=${hydra:runtime.output_dir}/x",
    "ckpt_path=${paths.output_dir}/checkpoints/last.ckpt",
    "+z=${now:%H-%M}",
    "+home=${oc.env:HOME}",
    "+missing=${no_such_key}",
    "+nested=${oc.env:${no_such_key}}",
    "+broken=${oops",
    "+name=${model_name}_${seed}",
]


def files_of(directory: Path) -> dict[str, str]:
    """Every file under `directory` (hidden ones too: .hydra/, .lock), by relative path: its bytes' sha256."""
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def assert_refused(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "UserWarning" not in result.stderr, result.stderr[-3000:]  # Hydra's callback runner swallowed nothing
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), line
    return line


@pytest.fixture
def finished_run(trained_run) -> Path:
    return trained_run[0]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, small_names) -> Path:
    sweep_dir = tmp_path_factory.mktemp("guards") / "sweep"
    result = run_script(
        "train.py", "-m", *TINY, f"data.path={small_names}", f"hydra.sweep.dir={sweep_dir}", "optimizer.lr=0.1,0.2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "population"])
@pytest.mark.parametrize("override", INTERPOLATIONS)
def test_a_sweep_with_an_interpolation_is_refused_in_another_sweeps_dir(
    finished_sweep, small_names, override, launcher
):
    before = files_of(finished_sweep)
    result = run_script(
        "train.py",
        "-m",
        *TINY,
        f"data.path={small_names}",
        f"hydra.sweep.dir={finished_sweep}",
        "optimizer.lr=0.1,0.3",
        override,
        f"hydra/launcher={launcher}",
    )
    line = assert_refused(result)
    assert any(why in line for why in ("holds another sweep", "cannot check the sweep dir", "override_grammar")), line
    assert files_of(finished_sweep) == before


@pytest.mark.slow
def test_the_same_sweep_with_an_interpolation_is_recognised_as_itself(tmp_path, small_names):
    """The override is compared as typed on both sides: a rerun of the same sweep continues it (nothing retrained)."""
    sweep_dir = tmp_path / "sweep"
    args = [
        "-m",
        *TINY,
        f"data.path={small_names}",
        f"hydra.sweep.dir={sweep_dir}",
        "optimizer.lr=0.1,0.2",
        "+note=${paths.output_dir}",
    ]
    first = run_script("train.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_script("train.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("finished in an earlier run of this sweep: kept") == 2, again.stdout[
        -3000:
    ]


@pytest.mark.slow
@pytest.mark.parametrize("override", [o for o in INTERPOLATIONS if not o.startswith("ckpt_path=")])
def test_a_run_with_an_interpolation_is_refused_in_a_finished_run_dir(finished_run, small_names, override):
    before = files_of(finished_run)
    result = run_script("train.py", *TINY, f"data.path={small_names}", f"hydra.run.dir={finished_run}", override)
    line = assert_refused(result)
    assert any(why in line for why in ("holds a finished run", "cannot check the run dir", "override_grammar")), line
    assert files_of(finished_run) == before


def weights_only_copy(run_dir: Path, target: Path) -> Path:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    torch.save({k: v for k, v in checkpoint.items() if k not in ("optimizer_states", "loops")}, target)
    return target


RESUME_REFUSALS = {  # each resume the checkpoint and the config refuse; the finished run's .hydra/ must stay its own
    "other model": (["model=wavenet"], "different model"),
    "other optimizer": (["optimizer=adamw", "trainer.max_steps=40"], "different optimizer"),
    "nothing to train": ([], "nothing to train"),
    "past max_steps": (["trainer.max_steps=10"], "nothing to train"),
    "interpolated path, nothing to train": (
        ["ckpt_path=${paths.output_dir}/checkpoints/last.ckpt"],
        "nothing to train",
    ),
    "a bad setting": (["trainer.max_steps=0"], "trainer.max_steps must be"),
    "no such checkpoint": (["ckpt_path=__run__/checkpoints/nope.ckpt"], "checkpoint not found"),
    "weights only": (["ckpt_path=__weights__", "trainer.max_steps=40"], "holds weights only"),
    "not a checkpoint": (["ckpt_path=__run__/summary.json", "trainer.max_steps=40"], "corrupt"),
    "other data": (["data.path=__names__", "trainer.max_steps=40"], "other data"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(RESUME_REFUSALS))
def test_a_refused_resume_leaves_the_finished_run_byte_for_byte(finished_run, small_names, tmp_path, case):
    overrides, expected = RESUME_REFUSALS[case]
    weights = weights_only_copy(finished_run, tmp_path / "weights.ckpt")
    other_names = Path(__file__).resolve().parents[1] / "src" / "makemore_lab" / "datasets" / "names.txt"
    args = [
        o.replace("__run__", str(finished_run))
        .replace("__weights__", str(weights))
        .replace("__names__", str(other_names))
        for o in overrides
    ]
    data = [] if any(a.startswith("data.path=") for a in args) else [f"data.path={small_names}"]
    ckpt = [] if any(a.startswith("ckpt_path=") for a in args) else [f"ckpt_path={finished_run}/checkpoints/last.ckpt"]
    before = files_of(finished_run)
    result = run_script("train.py", *TINY, *data, f"hydra.run.dir={finished_run}", *ckpt, *args)
    line = assert_refused(result)
    assert expected in line, line
    assert files_of(finished_run) == before


def test_the_run_dir_guard_imports_without_posix_only_modules():
    """Windows has no fcntl (issue 37, item 6): the run-dir lock is filelock's, which picks the platform's lock."""
    code = (
        "import sys, warnings; sys.modules['fcntl'] = None; warnings.simplefilter('ignore'); "
        "import makemore_lab.run_dir, makemore_lab.sweep_policy, makemore_lab.sweep_summary; print('imported')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "imported", result.stderr[-3000:]
