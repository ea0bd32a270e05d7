"""Refusals and true messages: a checkpoint is data, any file as ckpt_path is one line, a run dir or sweep
dir belongs to one run, resume means what it says, and the messages are true. Through the real entry points where
the behaviour is what a user runs; the fuzzed set of files in-process, where each case costs a millisecond."""

import copy
import csv
import fcntl
import io
import json
import pickle
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, TINY, run_script
from makemore_lab import resume
from makemore_lab.checkpoint import checkpoint_datamodule, load_trained_net
from makemore_lab.errors import TrainingInterrupted, UserError
from makemore_lab.population import processes
from makemore_lab.population.processes import StopFlag
from makemore_lab.train import train
from test_interrupt_resume import start_train_py, start_training, wait_for


@pytest.fixture
def trained(trained_run) -> Path:
    """The finished run dir (conftest's trained_run): its checkpoint is the one the crafted files start from."""
    return trained_run[0]


def assert_one_line(result: subprocess.CompletedProcess, starts: str = "error: ") -> str:
    """A refusal as the README promises: a non-zero exit, no traceback, and the last line of stderr saying why."""
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(starts), line
    return line


def saved(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


# ---------------------------------------------------------------------------------- 1. a checkpoint runs no code


def crafted_model_configs(model: dict, target: Path) -> dict[str, dict]:
    """Saved model configs that Hydra's instantiate would turn into a call writing `target`, or into something that
    is not one of this package's models."""
    payload = {"_target_": "pathlib.Path.write_text", "self": str(target), "data": "written by a checkpoint"}
    return {
        "nested_target": {**model, "n_hidden": payload},
        "nested_target_depth_3": {**model, "n_hidden": {"a": {"b": payload}}},
        "target_in_a_list": {**model, "n_hidden": [1, payload]},
        "foreign_target": payload,
        "builtin_target": {"_target_": "builtins.eval", "_args_": ["print('ran')"]},
        "package_function_target": {"_target_": "makemore_lab.checkpoint.read_checkpoint", "ckpt_path": str(target)},
        "partial": {**model, "_partial_": True},
        "args": {**model, "_args_": [payload]},
        "recursive_flag": {**model, "_recursive_": False, "_convert_": "all"},
    }


def write_crafted(trained: Path, directory: Path, target: Path) -> dict[str, Path]:
    checkpoint = saved(trained)
    files = {}
    for name, model in crafted_model_configs(checkpoint["makemore_lab"]["model"], target).items():
        crafted = copy.deepcopy(checkpoint)
        crafted["makemore_lab"]["model"] = model
        files[name] = directory / f"{name}.ckpt"
        torch.save(crafted, files[name])
    return files


def test_a_crafted_model_config_builds_nothing_and_is_one_line(trained, tmp_path):
    target = tmp_path / "written_by_checkpoint.txt"
    for name, path in write_crafted(trained, tmp_path, target).items():
        with pytest.raises(UserError) as refused:
            load_trained_net(path)
        assert "\n" not in str(refused.value), name
        assert not target.exists(), f"{name}: the checkpoint ran code"


@pytest.mark.parametrize("script", ["sample.py", "eval.py", "train.py"])
def test_a_checkpoint_with_a_nested_target_is_refused_by_every_entry_point(trained, small_names, tmp_path, script):
    target = tmp_path / "written_by_checkpoint.txt"
    ckpt = write_crafted(trained, tmp_path, target)["nested_target_depth_3"]
    extra = [*TINY, f"data.path={small_names}", f"hydra.run.dir={tmp_path / 'resumed'}"] if script == "train.py" else []
    line = assert_one_line(run_script(script, f"ckpt_path={ckpt}", *extra))
    assert str(ckpt) in line
    assert not target.exists()


# ------------------------------------------------------------------------- 2. any file as ckpt_path is one line


class WritesAFile:
    """A pickle that runs code when loaded without weights_only."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "written by a pickle"))


def not_checkpoints(trained: Path, directory: Path, target: Path) -> dict[str, Path]:
    """A generated set of files that are not usable makemore-lab checkpoints, each named by what it is."""
    whole = (trained / "checkpoints" / "last.ckpt").read_bytes()
    checkpoint = saved(trained)
    files: dict[str, Path] = {"directory": directory, "dot": Path(".")}

    def write(name: str, data: bytes) -> None:
        files[name] = directory / name
        files[name].write_bytes(data)

    def save(name: str, obj) -> None:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        write(name, buffer.getvalue())

    def altered(name: str, change) -> None:
        bad = copy.deepcopy(checkpoint)
        change(bad)
        save(name, bad)

    write("text", b"hello\n")
    write("empty", b"")
    write("json", json.dumps({"state_dict": {}, "makemore_lab": {}}).encode())
    rng = random.Random(0)
    for size in (1, 7, 100, 5_000, 70_000):
        write(f"random_{size}_bytes", rng.randbytes(size))
    for fraction in (0.01, 0.1, 0.5, 0.9, 0.999):
        write(f"truncated_at_{fraction}", whole[: int(len(whole) * fraction)])
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("data.txt", "a zip, not a torch file")
    write("zip_not_torch", zipped.getvalue())
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    write("safetensors_like", len(header).to_bytes(8, "little") + header + bytes(8))
    write("pickle_of_a_dict", pickle.dumps({"state_dict": {}, "makemore_lab": {}}))
    write("pickle_that_runs_code", pickle.dumps(WritesAFile(target)))
    save("torch_pickle_that_runs_code", {**checkpoint, "extra": WritesAFile(target)})
    save("tensor", torch.zeros(3))
    save("list", [1, 2, 3])
    save("plain_state_dict", checkpoint["state_dict"])
    save("lightning_checkpoint_not_ours", {k: v for k, v in checkpoint.items() if k != "makemore_lab"})
    altered("vocab_not_a_list", lambda c: c["makemore_lab"].update(vocab="abc"))
    altered("vocab_without_the_end_mark", lambda c: c["makemore_lab"].update(vocab=list("abc")))
    altered("block_size_a_string", lambda c: c["makemore_lab"].update(block_size="3"))
    altered("block_size_zero", lambda c: c["makemore_lab"].update(block_size=0))
    altered("state_dict_not_tensors", lambda c: c.update(state_dict={"net.wte.weight": [1.0]}))
    altered("model_config_missing", lambda c: c["makemore_lab"].pop("model"))
    altered("model_argument_unknown", lambda c: c["makemore_lab"]["model"].update(n_hiden=5))
    altered("model_argument_bad_value", lambda c: c["makemore_lab"]["model"].update(init="bogus"))
    altered("weights_of_another_size", lambda c: c["makemore_lab"]["model"].update(n_hidden=50))
    altered("a_weight_missing", lambda c: c["state_dict"].pop(next(iter(c["state_dict"]))))
    altered("an_extra_weight", lambda c: c["state_dict"].update({"net.extra.weight": torch.zeros(2)}))
    return files


def test_every_file_that_is_not_a_checkpoint_is_one_line(trained, tmp_path):
    target = tmp_path / "written_by_pickle.txt"
    files = not_checkpoints(trained, tmp_path, target)
    assert len(files) > 30
    for name, path in files.items():
        with pytest.raises(UserError) as refused:
            load_trained_net(path)
        assert "\n" not in str(refused.value) and str(path) in str(refused.value), name
    assert not target.exists()
    load_trained_net(trained / "checkpoints" / "last.ckpt")  # and the real one still loads


def test_data_settings_a_checkpoint_cannot_have_are_one_line(trained):
    _, vocab, meta = load_trained_net(trained / "checkpoints" / "last.ckpt")
    with pytest.raises(UserError, match="data settings do not fit"):
        checkpoint_datamodule({**meta, "data": {**meta["data"], "no_such_setting": 1}}, vocab)


@pytest.mark.parametrize(
    "script, name",
    [
        ("sample.py", "text"),
        ("eval.py", "directory"),
        ("train.py", "random_5000_bytes"),
        ("sample.py", "weights_of_another_size"),
        ("train.py", "weights_of_another_size"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_one_line_in_each_entry_point(trained, small_names, tmp_path, script, name):
    path = not_checkpoints(trained, tmp_path, tmp_path / "unused")[name]
    extra = [*TINY, f"data.path={small_names}", f"hydra.run.dir={tmp_path / 'resumed'}"] if script == "train.py" else []
    if script == "train.py" and name == "weights_of_another_size":
        extra.append("model.n_hidden=50")  # the config matches the saved config; the weights do not
    line = assert_one_line(run_script(script, f"ckpt_path={path}", *extra))
    assert str(path) in line


@pytest.mark.parametrize("script", ["sample.py", "eval.py"])
def test_sample_and_eval_without_ckpt_path_are_one_line(script):
    line = assert_one_line(run_script(script, "ckpt_path=null"))  # sample.py without it: the newest run (test_cli)
    assert line == (
        f"error: ckpt_path is required: python {script} ckpt_path=<run dir>/checkpoints/last.ckpt (or "
        "ckpt_path=latest: the newest run under logs/)"
    )


# ------------------------------------------------------------------------- 3. a run dir belongs to one run


def hydra_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / ".hydra").iterdir())}


def test_a_refused_run_leaves_the_run_dir_as_it_was(trained, small_names):
    before = hydra_files(trained)
    finished = run_script("train.py", f"hydra.run.dir={trained}", f"data.path={small_names}", "seed=3")
    assert "holds a finished run" in assert_one_line(finished)
    with open(trained / ".lock", "a+") as lock:  # another process holds the run dir
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = run_script("train.py", f"hydra.run.dir={trained}", f"data.path={small_names}", "seed=4")
    assert "is in use by a running train.py" in assert_one_line(busy)
    assert hydra_files(trained) == before


def test_rerunning_into_an_interrupted_run_dir_refuses_with_the_resume_command(trained, small_names, tmp_path):
    run_dir = tmp_path / "interrupted"
    shutil.copytree(trained, run_dir)
    (run_dir / "summary.json").unlink()  # last.ckpt, no summary.json: what a kill leaves
    ckpt_before = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    line = assert_one_line(run_script("train.py", f"hydra.run.dir={run_dir}", f"data.path={small_names}"))
    assert "holds an interrupted run" in line
    assert f"continue it with: python train.py data.path={small_names} hydra.run.dir={run_dir} ckpt_path=" in line
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == ckpt_before


def start_sweep(sweep_dir: Path, data: Path, *overrides: str) -> subprocess.Popen:
    return start_train_py(
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        f"data.path={data}",
        "trainer.accelerator=cpu",
        "threads=1",
        "num_samples=1",
        "callbacks.last_checkpoint.every_seconds=1",
        *overrides,
    )


@pytest.mark.slow
def test_a_sweep_dir_belongs_to_one_sweep(tmp_path, small_names):
    """Ctrl-C keeps the table of the jobs done; the same sweep run again continues (a finished job is kept, not
    marked failed; the interrupted one resumes); another sweep into the dir is refused."""
    sweep_dir = tmp_path / "sweep"
    # job 0 is over in a moment; job 1 (one step per batch) runs long enough to be interrupted
    grid = ("trainer.max_steps=20,1500", "steps_per_call=1", "trainer.val_check_interval=20")
    sweep = start_sweep(sweep_dir, small_names, *grid)
    wait_for(sweep_dir / "1" / "checkpoints" / "last.ckpt", sweep)
    sweep.send_signal(signal.SIGINT)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130 and "Traceback" not in err
    with (sweep_dir / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(row["job"], row["trainer.max_steps"]) for row in table] == [("0", "20")] and table[0]["val_loss"]
    job_0 = (sweep_dir / "0" / "summary.json").read_bytes()
    interrupted_at = saved(sweep_dir / "1")["global_step"]

    again = start_sweep(sweep_dir, small_names, *grid)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert "job 0 finished in an earlier run of this sweep: kept" in out + err
    assert (sweep_dir / "0" / "summary.json").read_bytes() == job_0 and not (sweep_dir / "0" / "failure.json").exists()
    job_1 = json.loads((sweep_dir / "1" / "summary.json").read_text())
    assert job_1["steps"] == 1500 and job_1["resumed_from_step"] == interrupted_at
    rows = (sweep_dir / "summary.csv").read_text()

    other = start_sweep(sweep_dir, small_names, "trainer.max_steps=30,40")
    _, err = other.communicate(timeout=120)
    assert other.returncode == 2 and err.strip().splitlines()[-1].startswith(
        f"error: sweep dir {sweep_dir} holds another sweep"
    )
    assert (sweep_dir / "summary.csv").read_text() == rows


# ------------------------------------------------------------------------------- 4. resume means what it says


def test_resuming_at_max_steps_is_refused_and_leaves_summary_json(trained, small_names):
    summary = (trained / "summary.json").read_bytes()
    resumed = run_script(
        "train.py",
        *TINY,
        f"data.path={small_names}",
        f"hydra.run.dir={trained}",
        f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
    )
    line = assert_one_line(resumed)
    assert "is at step 20, and trainer.max_steps=20: nothing to train" in line and "trainer.max_steps=40" in line
    assert (trained / "summary.json").read_bytes() == summary


def test_resuming_on_another_data_file_is_refused(compose_train, small_names, tmp_path):
    cfg = compose_train(f"data.path={small_names}")
    train(cfg)
    other = tmp_path / "other_names.txt"
    other.write_text("\n".join(reversed(small_names.read_text().split())) + "\n")  # same characters, other split
    with pytest.raises(UserError, match="was trained on other data"):
        train(
            compose_train(
                f"data.path={other}",
                "trainer.max_steps=30",
                f"paths.output_dir={tmp_path}/other",
                f"ckpt_path={Path(cfg.paths.output_dir) / 'checkpoints' / 'last.ckpt'}",
            )
        )


@pytest.mark.slow
def test_a_killed_and_resumed_run_gets_the_uninterrupted_runs_health_verdict(compose_train, small_names, tmp_path):
    args = (
        f"data.path={small_names}",
        "trainer.max_steps=1500",
        "trainer.val_check_interval=500",
        "callbacks.diagnostics.every_n_steps=100",
    )
    uninterrupted = train(compose_train(*args, f"paths.output_dir={tmp_path}/whole"))
    run_dir = tmp_path / "killed"
    proc = start_training(run_dir, small_names, *args[1:], "threads=1", "steps_per_call=1", "num_samples=3")
    wait_for(run_dir / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    killed_at = saved(run_dir)["global_step"]
    assert 0 < killed_at < 1500
    resumed = train(compose_train(*args, f"paths.output_dir={run_dir}", f"ckpt_path={run_dir}/checkpoints/last.ckpt"))
    assert resumed["resumed_from_step"] == killed_at
    assert resumed["val_loss"] == uninterrupted["val_loss"]  # the same weights ...
    assert resumed["health"] == uninterrupted["health"]  # ... judged on the same evidence


# ---------------------------------------------------------------------------------- 9. messages that are true


def test_ctrl_c_during_the_final_report_says_training_had_finished(tmp_path, small_names):
    run_dir = tmp_path / "run"
    # many samples (~240 MB of indices): the final report takes seconds, long enough to be interrupted in
    proc = start_training(run_dir, small_names, "trainer.max_steps=20", "threads=1", "num_samples=300000")
    log = run_dir / "train.log"
    deadline = time.monotonic() + 120
    while not (log.is_file() and "final loss (nats)" in log.read_text()):  # the exact losses: then the samples
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert err.strip().splitlines()[-1] == (
        f"error: Ctrl-C after training had finished (step 20): summary.json was not written; the last saved "
        f"weights are in {last}. Their losses: python eval.py ckpt_path={last} data.path={small_names}"
    )
    assert saved(run_dir)["global_step"] == 20 and not (run_dir / "summary.json").exists()


def after_the_fit(tmp_path):
    """resume.py's handler once fit has ended: Ctrl-C means the final report is cut short."""
    with resume.stop_cleanly_on_sigint(SimpleNamespace(global_step=20, should_stop=False), tmp_path / "last.ckpt"):
        pass
    return "Ctrl-C after training had finished (step 20)"


def second_ctrl_c_in_a_fit(tmp_path):
    with resume.stop_cleanly_on_sigint(SimpleNamespace(global_step=20, should_stop=False), tmp_path / "last.ckpt"):
        signal.raise_signal(signal.SIGINT)  # the first asks for a stop; from then on a Ctrl-C aborts
    return "aborted by a second Ctrl-C"


def second_signal_in_a_population(tmp_path):
    stop = StopFlag()
    with processes.stopping_on_signals(stop):
        signal.raise_signal(signal.SIGINT)  # the first sets the flag; the second aborts
        handler = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)  # stopping_on_signals put the earlier one back: the test wants its own
    return "aborted by a second signal"


@pytest.mark.parametrize("handler", [after_the_fit, second_ctrl_c_in_a_fit, second_signal_in_a_population])
def test_a_signal_that_lands_inside_a_librarys_broad_except_passes_through_it(tmp_path, monkeypatch, handler):
    """The signal handlers raise TrainingInterrupted wherever the main thread is. CI caught one inside TensorBoard's
    add_scalar, under the `except Exception` with which Lightning's logger rewraps any error as "ValueError: you tried
    to log 2.86 which is currently not supported": a traceback and exit 1 instead of the one line and exit 130. No
    library's broad except may catch it (it is no Exception): each handler's, raised inside Lightning's logger."""
    from pytorch_lightning.loggers import TensorBoardLogger
    from torch.utils.tensorboard import SummaryWriter

    def add_scalar_interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # its handler runs here, inside Lightning's try

    logger = TensorBoardLogger(tmp_path)
    with resume.sigint_restored():
        expected = handler(tmp_path)
        monkeypatch.setattr(SummaryWriter, "add_scalar", add_scalar_interrupted)
        with pytest.raises(TrainingInterrupted, match=re.escape(expected)):
            logger.log_metrics({"test/loss": 2.86}, step=20)
    assert not issubclass(TrainingInterrupted, Exception)


def limit_file_size(size: int):
    """For a subprocess: files may not grow past `size` bytes (the kernel's RLIMIT_FSIZE), as on a full quota;
    a write past it fails with EFBIG instead of killing the process (SIGXFSZ ignored)."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_naming_the_run_dir(tmp_path, small_names):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"hydra.run.dir={run_dir}",
            f"data.path={small_names}",
            "threads=1",
            "trainer.max_steps=2000",
            "num_samples=1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        preexec_fn=limit_file_size(60_000),
    )
    line = assert_one_line(result)
    assert "Exception in thread" not in result.stderr  # TensorBoard's writer thread hands its error over quietly
    assert line.startswith(f"error: cannot write the run's files (File too large: {run_dir}")


def test_an_existing_run_dir_that_cannot_be_written_is_one_line():
    # /sys exists and refuses new files even to root (sysfs): what a read-only mount does to a run dir
    line = assert_one_line(run_script("train.py", "hydra.run.dir=/sys", "debug=fast"))
    assert line.startswith("error: cannot write into the run dir (hydra.run.dir) /sys: ")
