"""Shared fixtures: configs composed the way ./train.py composes them, shrunk to seconds, writing under tmp_path."""

import atexit
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from makemore_lab.configs import CONFIG_DIR as PACKAGED_CONFIGS

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(PACKAGED_CONFIGS)
NAMES = ROOT / "src" / "makemore_lab" / "datasets" / "names.txt"

# A run of a few steps that still validates twice, checkpoints, and writes TensorBoard events.
# threads=1: in-process runs compare results bit for bit, which a thread count changed mid-run (threads=auto) would
# not allow; test_threads.py tests auto.
TINY = [
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "trainer.accelerator=cpu",
    "num_samples=3",
    "threads=1",
]


@pytest.fixture(scope="session")
def small_names(tmp_path_factory) -> Path:
    """The first 600 names: enough for three splits, small enough that nine models train in seconds."""
    path = tmp_path_factory.mktemp("data") / "small_names.txt"
    path.write_text("\n".join(NAMES.read_text().split()[:600]) + "\n")
    return path


def compose_config(*overrides: str, with_hydra: bool = False):
    """The train config that `python train.py <overrides>` composes (with its `hydra` node where `with_hydra`): the
    one place the tests compose configs, each composition from a fresh Hydra."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            return compose("train", overrides=list(overrides), return_hydra_config=with_hydra)
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def compose_train(tmp_path):
    """compose_train(*overrides) -> the train config, as `python train.py <overrides>` would see it, shrunk to
    seconds (TINY) and writing under tmp_path."""
    return lambda *overrides: compose_config(*TINY, f"paths.output_dir={tmp_path}", *overrides)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_names):
    """(run dir, its train.py process): a tiny MLP run of the real train.py, finished, for the tests that read a
    run's files or start from its checkpoint (each test worker trains it once). Tests leave it as it is."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = run_script("train.py", *TINY, f"data.path={small_names}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def run_script(
    script: str, *args: str, cwd: Path | None = None, timeout: int = 300, python_flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run one of the root entry points as a user would, capturing stdout and stderr separately.

    The process is forked from a Python whose imports are done (tests/preimported_python.py: the same process,
    minus ~5-7 s of importing torch and Lightning), with this process's environment as it is now; a fresh
    interpreter where that could differ: Python flags given (-X importtime), or a variable read at start-up
    (READ_AT_START) changed since this session started, e.g. another TMPDIR or OMP_NUM_THREADS."""
    argv = [str(ROOT / script), *args]
    env = dict(os.environ)
    if python_flags or environment_differs(env):
        return subprocess.run(
            [sys.executable, *python_flags, *argv], capture_output=True, text=True, cwd=cwd or ROOT, timeout=timeout
        )
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        request = {
            "argv": argv,
            "cwd": str(cwd or ROOT),
            "env": env,
            "stdout": str(out),
            "stderr": str(err),
            "timeout": timeout,
        }
        reply = run_preimported(request)
        stdout, stderr = out.read_text(), err.read_text()
    if reply.get("timeout"):
        raise subprocess.TimeoutExpired([sys.executable, *argv], timeout, stdout, stderr)
    return subprocess.CompletedProcess([sys.executable, *argv], reply["returncode"], stdout, stderr)


STARTUP_ENV = dict(os.environ)
# What a process reads of its environment when it starts or loads a library (glibc's malloc, OpenMP, MKL, Python
# itself, tempfile's directory, which threads.py reads at import): where one differs from this session's start-up
# value, a forked child would not see it, so the run takes a fresh interpreter. PYTHONPATH the child follows.
READ_AT_START = ("OMP_", "GOMP_", "KMP_", "MKL_", "MALLOC_", "GLIBC_", "LD_", "PYTHON", "TMPDIR", "TEMP", "TMP")


def environment_differs(env: dict) -> bool:
    keys = {key for key in set(env) | set(STARTUP_ENV) if key.startswith(READ_AT_START) and key != "PYTHONPATH"}
    return any(env.get(key) != STARTUP_ENV.get(key) for key in keys)


PREIMPORTED: subprocess.Popen | None = None  # this test worker's tests/preimported_python.py, started at first use


def run_preimported(request: dict) -> dict:
    """One run forked by this worker's tests/preimported_python.py: its reply ({"pid", "returncode"} or a timeout)."""
    global PREIMPORTED
    if PREIMPORTED is None or PREIMPORTED.poll() is not None:
        PREIMPORTED = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "preimported_python.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=STARTUP_ENV,
        )
        atexit.register(PREIMPORTED.kill)
    PREIMPORTED.stdin.write(json.dumps(request) + "\n")
    PREIMPORTED.stdin.flush()
    line = PREIMPORTED.stdout.readline()
    if not line:
        raise RuntimeError(f"tests/preimported_python.py exited ({PREIMPORTED.wait()}); see its stderr above")
    return json.loads(line)


def read_scalar_events(event_dir: Path) -> dict:
    """Every scalar event under event_dir by tag, read back with TensorBoard's own reader (all event files)."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(event_dir))
    mux.Reload()
    events: dict[str, list] = {}
    for run, tags in mux.Runs().items():
        for tag in tags.get("scalars", []):
            events.setdefault(tag, []).extend(mux.Scalars(run, tag))
    return events


def read_scalars(event_dir: Path) -> dict[str, list[float]]:
    """The values of each scalar tag, in the order logged."""
    return {tag: [e.value for e in events] for tag, events in read_scalar_events(event_dir).items()}


def read_scalar_steps(event_dir: Path) -> dict[str, list[int]]:
    """The global steps at which each scalar tag was logged, in order."""
    return {tag: [e.step for e in events] for tag, events in read_scalar_events(event_dir).items()}


def read_events(event_dir: Path) -> dict:
    """Everything a run wrote to TensorBoard: {"scalars"|"histograms"|"images"|"text": {tag: [(step, value)]}}."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer(size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    mux.AddRunsFromDirectory(str(event_dir))
    mux.Reload()
    events = {"scalars": {}, "histograms": {}, "images": {}, "text": {}}
    for run, tags in mux.Runs().items():
        for tag in tags["scalars"]:
            events["scalars"].setdefault(tag, []).extend((e.step, e.value) for e in mux.Scalars(run, tag))
        for tag in tags["histograms"]:
            events["histograms"].setdefault(tag, []).extend(
                (e.step, e.histogram_value) for e in mux.Histograms(run, tag)
            )
        for tag in tags["images"]:
            events["images"].setdefault(tag, []).extend((e.step, e) for e in mux.Images(run, tag))
        for tag in tags["tensors"]:
            if tag.endswith("/text_summary"):
                text = [(e.step, e.tensor_proto.string_val[0].decode()) for e in mux.Tensors(run, tag)]
                events["text"].setdefault(tag.removesuffix("/text_summary"), []).extend(text)
    return events
