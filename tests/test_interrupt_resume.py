"""Interruption, kill and resume, divergence: nothing finished is lost, nothing unfinished looks finished."""

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, read_scalar_steps, read_scalars, run_script
from makemore_lab.commands import hydra_quote
from makemore_lab.errors import TrainingDiverged, UserError
from makemore_lab.train import train


def start_train_py(*args: str, saved=(), new_session: bool = False) -> subprocess.Popen:
    """`python train.py <args>` started in the background as a user starts it, returned once every run or job dir in
    `saved` holds a last.ckpt; `new_session`: its own process group (a terminal's Ctrl-C reaches all of it)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=new_session,
    )
    for run_dir in saved:
        wait_for(Path(run_dir) / "checkpoints" / "last.ckpt", proc, timeout=180)
    return proc


def start_training(run_dir: Path, data: Path, *overrides: str) -> subprocess.Popen:
    return start_train_py(
        f"hydra.run.dir={hydra_quote(str(run_dir))}",
        f"data.path={data}",
        "trainer.accelerator=cpu",
        "callbacks.last_checkpoint.every_seconds=1",
        *overrides,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path.name} appeared:\n{proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def saved_step(ckpt: Path) -> int:
    return torch.load(ckpt, weights_only=True)["global_step"]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_saves_a_checkpoint_and_the_printed_resume_command_runs(tmp_path, small_names, signum, code, name):
    """Ctrl-C and SIGTERM (kill, SLURM, Kubernetes) alike; the run dir has a space, parentheses and non-ASCII."""
    run_dir = tmp_path / "my runs (v2) é"
    proc = start_training(run_dir, small_names, "trainer.max_steps=1000000", "model=wavenet", "block_size=4")
    wait_for(run_dir / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith(f"error: {name}: stopped at step"))
    step = saved_step(run_dir / "checkpoints" / "last.ckpt")
    assert 0 < step < 1_000_000 and f"stopped at step {step} of 1000000" in line
    assert not (run_dir / "summary.json").exists()  # an unfinished run does not look finished

    command = line.split("Resume with: ", 1)[1]
    assert command.startswith("python train.py ") and "model=wavenet" in command
    # Run it as printed, with this interpreter and a nearer end (max_steps is one of the run's own overrides).
    command = command.replace("python", shlex.quote(sys.executable), 1).replace(
        "trainer.max_steps=1000000", f"trainer.max_steps={step + 40}"
    )
    resumed = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == step + 40 and summary["resumed_from_step"] == step
    assert saved_step(run_dir / "checkpoints" / "last.ckpt") == step + 40


@pytest.mark.slow
def test_resume_after_sigkill_finishes_at_max_steps(tmp_path, small_names):
    run_dir = tmp_path / "run"
    args = ("trainer.max_steps=8000", "trainer.val_check_interval=2000", "optimizer=adam")
    proc = start_training(run_dir, small_names, *args)
    last = run_dir / "checkpoints" / "last.ckpt"
    wait_for(last, proc)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    killed_at = saved_step(last)
    assert 0 < killed_at < 8000
    assert not (run_dir / "summary.json").exists()

    resumed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"hydra.run.dir={run_dir}",
            f"ckpt_path={last}",
            f"data.path={small_names}",
            "trainer.accelerator=cpu",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8000 and saved_step(last) == 8000
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["optimizer_states"][0]["state"][0]["step"] == 8000  # Adam's own counter went on from the kill
    logged = read_scalar_steps(run_dir / "tensorboard")["train/loss"]
    assert max(logged) == 8000 and any(s > killed_at for s in logged)


def test_resume_with_a_different_model_is_refused(tmp_path, small_names, compose_train):
    cfg = compose_train(f"data.path={small_names}")
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match="different model"):
        train(
            compose_train(
                f"data.path={small_names}",
                "model.n_hidden=50",
                f"ckpt_path={last}",
                f"paths.output_dir={tmp_path}/other",
            )
        )


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(compose_train, small_names):
    cfg = compose_train(
        f"data.path={small_names}",
        "model._target_=exploding_model.ExplodingMLP",
        "+model.explode_at_call=25",
        "trainer.max_steps=100",
        "trainer.val_check_interval=10",
    )
    with pytest.raises(TrainingDiverged) as caught:
        train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert "the loss became nan at step 25" in str(caught.value)
    assert f"the last good checkpoint is {last}" in str(caught.value)
    assert saved_step(last) == 20  # the validation before the blow-up; nothing after it was written
    state = torch.load(last, weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in state.values())
    assert not (Path(cfg.paths.output_dir) / "summary.json").exists()


@pytest.mark.slow
def test_a_second_run_in_the_same_run_dir_is_refused_while_the_first_runs(tmp_path, small_names):
    run_dir = tmp_path / "run"
    first = start_training(run_dir, small_names, "trainer.max_steps=1000000")
    try:
        wait_for(run_dir / "checkpoints" / "last.ckpt", first)
        second = run_script("train.py", f"hydra.run.dir={run_dir}", f"data.path={small_names}", "trainer.max_steps=5")
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"run dir {run_dir} is in use by a running train.py (pid {first.pid})" in second.stderr
    finally:
        first.kill()  # SIGKILL: the lock goes with the process
        first.wait()
    resumed = run_script(
        "train.py",
        f"hydra.run.dir={run_dir}",
        f"data.path={small_names}",
        "trainer.max_steps=1000000",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        "trainer.max_steps=1",
    )
    assert "in use" not in resumed.stderr  # not stuck: (this resume is refused for its own reason, or finishes)


def test_a_finished_run_dir_is_not_overwritten_by_a_new_run(compose_train, small_names):
    cfg = compose_train(f"data.path={small_names}")
    first = train(cfg)
    with pytest.raises(UserError, match="holds a finished run"):
        train(compose_train(f"data.path={small_names}", "seed=3"))
    assert json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text()) == first
    # continuing it is not overwriting it
    more = train(
        compose_train(
            f"data.path={small_names}",
            "trainer.max_steps=30",
            f"ckpt_path={Path(cfg.paths.output_dir) / 'checkpoints' / 'last.ckpt'}",
        )
    )
    assert more["steps"] == 30 and more["resumed_from_step"] == 20
    # the resumed segment's summary is honest: its own rate, and the health verdict is kept
    assert more["steps_per_second"] == pytest.approx(10 / more["train_seconds"])
    assert more["health"]["rules"]["initial_loss"]["ok"] is True and "ok" in more["health"]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["sample.py", "eval.py", "train.py"])
def test_a_truncated_checkpoint_is_one_line_everywhere(tmp_path, small_names, compose_train, script):
    cfg = compose_train(f"data.path={small_names}")
    train(cfg)
    whole = (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole[: len(whole) // 3])
    extra = [f"data.path={small_names}", f"hydra.run.dir={tmp_path / 'resumed'}"] if script == "train.py" else []
    result = run_script(script, f"ckpt_path={cut}", *extra)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: checkpoint {cut} is corrupt, truncated")


@pytest.mark.slow
def test_resuming_with_another_optimizer_is_refused_and_a_new_lr_is_applied(compose_train, small_names, tmp_path):
    cfg = compose_train(f"data.path={small_names}", "schedule=constant")
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match="different optimizer"):
        train(
            compose_train(
                f"data.path={small_names}", "optimizer=adam", f"ckpt_path={last}", f"paths.output_dir={tmp_path}/adam"
            )
        )
    resumed = compose_train(
        f"data.path={small_names}",
        "schedule=constant",
        "optimizer.lr=0.02",
        "trainer.max_steps=40",
        "trainer.log_every_n_steps=10",
        f"ckpt_path={last}",
        f"paths.output_dir={tmp_path}/lr",
    )
    train(resumed)
    lrs = read_scalars(Path(resumed.paths.output_dir) / "tensorboard")["lr"]
    assert lrs[-1] == pytest.approx(0.02)  # the new value, not the checkpoint's 0.1
    saved = torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(0.02)


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(compose_train, small_names, monkeypatch, capsys):
    import errno

    import pytorch_lightning as pl

    from makemore_lab.train import run

    cfg = compose_train(f"data.path={small_names}", "trainer.max_steps=40")
    real_save = pl.Trainer.save_checkpoint

    def save_until_step_20(trainer, path, *args, **kwargs):
        if trainer.global_step > 20:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(trainer, path, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", save_until_step_20)
    with pytest.raises(SystemExit) as exited:
        run(cfg)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert err[-1].startswith("error: cannot write the run's files (No space left on device: ")
    assert err[-1].endswith(f"the last good checkpoint is {last}")
    assert saved_step(last) == 20


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 0.6, 1.2])
def test_ctrl_c_while_starting_up_is_one_line(tmp_path, small_names, delay):
    proc = start_training(tmp_path / "run", small_names)
    # Hydra has composed the config and made the run dir (the Ctrl-C handler is installed before that); torch and
    # Lightning are imported after it, for seconds: the signal lands while the run is starting up, inside some
    # library's import. (A fixed sleep raced the interpreter's own start on a loaded machine, where pytest-xdist's
    # workers ignore SIGINT. Landing inside numpy's import, an exit raised by the handler once left a RecursionError
    # traceback, and once was swallowed and the run trained on: the handler now ends the process at once.)
    wait_for(tmp_path / "run" / ".hydra", proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "error: interrupted before training started; nothing was saved"


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_at_once_with_130(tmp_path, small_names):
    run_dir = tmp_path / "run"
    # batches of 1,000 WaveNet steps (a second or so): the second Ctrl-C lands inside the batch the first one ends
    proc = start_training(
        run_dir,
        small_names,
        "trainer.max_steps=1000000",
        "model=wavenet",
        "block_size=4",
        "steps_per_call=1000",
        "trainer.log_every_n_steps=1000",
    )
    wait_for(run_dir / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)  # two signals at once are one to Python
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: aborted by a second Ctrl-C")


@pytest.mark.parametrize("where", ["hydra.run.dir=/proc/no_such/run", "hydra.sweep.dir=/proc/no_such/sweep"])
def test_a_run_dir_that_cannot_be_made_is_one_line(where):
    args = ["-m", "debug=fast", where] if "sweep" in where else ["debug=fast", where]
    result = run_script("train.py", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: cannot create the ") and "/proc/no_such/" in result.stderr
