"""Train and sweep from Python or a notebook, with the command line's overrides (docs/package.md).

    import makemore_lab
    run = makemore_lab.train("model=mlp", "trainer.max_steps=5000")
    run.val_loss, run.history["train/loss"], run.sample(5), run.health, run.figures, run.run_dir
    table = makemore_lab.sweep("optimizer.lr=0.03,0.1,0.3", "trainer.max_steps=1000")

Each call runs the command line: `makemore-train <overrides>` (a sweep: `makemore-train -m <overrides>`; a
`config_dir=` is its `--config-dir`), the console entry point itself (cli.train), in a child process in this
working directory, its output streamed into the caller's stdout and stderr as it comes. The results are read back
from the run's own files (summary.json, the TensorBoard events, the checkpoint, the figures; a sweep's summary
files), so a Run can also be opened later from any run dir: `makemore_lab.Run("logs/train/runs/<run>")`.

Why a child process rather than Hydra's main in this one: then there is one path. Every launcher and sweeper
(`hydra/launcher=population`, joblib, submitit, the Optuna sweeper), every check (the run dir's and sweep dir's,
before Hydra writes anything), every message and exit is the command line's, with nothing re-implemented here;
and nothing a run does to its process reaches the caller's (a notebook kernel's): malloc thresholds, warning
filters, logging handlers, signal handlers, torch's thread count, sys.argv, the working directory. Hydra's main
in-process would have to undo each of those (some, like mallopt, cannot be undone), and its launchers' pools and
`sys.exit`s would run in the kernel. The price is the child's start-up (a Python, torch and Lightning imported
for every call, as the command does), small next to a run; scripts/benchmark_api.py measures it.

The child's error (a bad override, a refused dir: its one `error: ...` line) is raised here as a UserError with
that line, never `sys.exit`; a KeyboardInterrupt (a notebook's stop button) is forwarded to the child as its
Ctrl-C (SIGINT: it saves its checkpoint and stops; twice: it aborts), and its one line is raised as
TrainingInterrupted, naming the call that resumes the run. The child runs in its own session, so a signal sent
to the caller's process group reaches it once, through here. The command lines the child prints back (resume,
continue) are written as calls of this API (commands.py, told through MAKEMORE_LAB_API_CALL).

Torch, Lightning and Hydra are imported inside the functions: `import makemore_lab` stays cheap.
"""

import base64
import codecs
import json
import os
import signal
import subprocess
import sys
import threading
from functools import cached_property
from pathlib import Path

from makemore_lab.errors import TrainingInterrupted, UserError

ENTRY_POINT = "from makemore_lab.cli import train; train()"  # what the console script makemore-train runs


def train(*overrides: str, config_dir: str | Path | None = None) -> "Run":
    """Train one model, as `makemore-train <overrides>` does (it runs it); the finished Run."""
    overrides = list(overrides)
    run_dir = where("train", overrides, config_dir, "hydra.run.dir", "run")
    run_entry_point(overrides, config_dir, multirun=False)
    return Run(run_dir)


def sweep(*overrides: str, config_dir: str | Path | None = None) -> "SweepTable":
    """Train every job of a sweep, as `makemore-train -m <overrides>` does (it runs it): Hydra's sweep syntax
    (`a=1,2`, `a=range(1,4)`), any launcher (`hydra/launcher=population`) or sweeper (`hparams_search=...`); a
    failing job is a failed row (sweep_policy.py). The sweep's table, best val loss first."""
    overrides = list(overrides)
    sweep_dir = where("train", overrides, config_dir, "hydra.sweep.dir", "sweep")
    run_entry_point(overrides, config_dir, multirun=True)
    return SweepTable(sweep_dir)


def where(config_name: str, overrides: list[str], config_dir, key: str, kind: str) -> Path:
    """The run dir (or sweep dir) the command will use: the one given, else the one the configs compose now,
    appended to `overrides` (its name holds a timestamp: the child must use the same). Overrides that do not
    compose are the command's to refuse, in its own words (raised here as its one line)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from makemore_lab.commands import hydra_quote
    from makemore_lab.hydra_app import compose

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        parsed = None
    # A sweep's axes are not one config; where it goes does not depend on them.
    cfg = (
        None
        if parsed is None
        else compose(
            config_name,
            [o.input_line for o in parsed if not o.is_sweep_override()],
            str(config_dir) if config_dir else None,
        )
    )
    if cfg is None:
        run_entry_point(overrides, config_dir, multirun=kind == "sweep")  # raises the command's one line
        raise UserError(f"the {kind}'s overrides do not compose")  # (the command took them after all)
    chosen = str(OmegaConf.select(cfg, key))  # the one given (resolved), else the configs' default
    if not any(o.key_or_group == key for o in parsed):
        overrides.append(f"{key}={hydra_quote(chosen)}")
    return Path(chosen)


def run_entry_point(overrides: list[str], config_dir, multirun: bool) -> None:
    """`makemore-train [-m] <overrides>` in a child process (the console script's own function), its output
    streamed to sys.stdout / sys.stderr; its `error:` line raised (UserError, or TrainingInterrupted for a
    stopped run). A KeyboardInterrupt here is the child's Ctrl-C."""
    import makemore_lab
    from makemore_lab.commands import API_ENV

    args = [
        *(["--config-dir", str(Path(config_dir).absolute())] if config_dir else []),
        *(["-m"] if multirun else []),
        *overrides,
    ]
    env = dict(os.environ)
    env[API_ENV] = json.dumps(
        {
            "function": "sweep" if multirun else "train",
            "args": list(overrides),
            "config_dir": str(config_dir) if config_dir else None,
        }
    )
    env["PYTHONUNBUFFERED"] = "1"  # lines as they come
    package_root = str(Path(makemore_lab.__file__).resolve().parents[1])  # this makemore_lab and hydra_plugins
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    posix = os.name == "posix"
    child = subprocess.Popen(
        [sys.executable, "-c", ENTRY_POINT, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=posix,
    )
    errors: list[str] = []
    relays = [
        threading.Thread(target=relay, args=(child.stdout, "stdout", None), daemon=True),
        threading.Thread(target=relay, args=(child.stderr, "stderr", errors), daemon=True),
    ]
    for thread in relays:
        thread.start()
    try:
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:
                if posix:  # its own session: this is its only Ctrl-C (elsewhere the console sent it one)
                    child.send_signal(signal.SIGINT)
    finally:
        if child.poll() is None:  # anything else ended the wait: the child does not outlive the call
            child.kill()
            child.wait()
        for thread in relays:  # the output still in the pipes; bounded, should a grandchild keep a pipe open
            thread.join(timeout=30)
    if code == 0:
        for line in errors:
            print(line, file=sys.stderr)
        return
    message = errors[-1].removeprefix("error: ") if errors else None
    if message is None:  # a crash (its traceback is above) or a kill
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise RuntimeError(f"makemore-train {how} (its output is above)")
    if code > 128:  # 128 + the signal that stopped it (Ctrl-C, SIGTERM, SIGUSR2): its checkpoint is saved
        raise TrainingInterrupted(message, exit_code=code)
    raise UserError(message, exit_code=code)


def relay(pipe, stream: str, errors: list[str] | None) -> None:
    """Copy the child's output to this process's sys.stdout / sys.stderr as it comes (a progress bar's
    carriage-return updates too). On stderr, the `error: ...` lines are kept for the caller to raise, not
    printed."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = ""
    while chunk := pipe.read1(65536) if hasattr(pipe, "read1") else pipe.read(65536):
        text = decoder.decode(chunk)
        if errors is None:
            write(stream, text)
            continue
        pending += text
        *lines, pending = pending.split("\n")
        for line in lines:
            if line.startswith("error: "):
                errors.append(line.rstrip("\r"))
            else:
                write(stream, line + "\n")
    rest = pending + decoder.decode(b"", final=True)
    if errors is not None and rest.startswith("error: "):
        errors.append(rest)
    elif rest:
        write(stream, rest)
    pipe.close()


def write(stream: str, text: str) -> None:
    out = getattr(sys, stream)  # looked up each time: a notebook's cell output, pytest's capture
    out.write(text)
    out.flush()


# ------------------------------------------------------------------------------------------------- results


class Figure:
    """A PNG file the diagnostics wrote (<run dir>/figures/<name>.png), shown inline in Jupyter."""

    def __init__(self, path: Path):
        self.path, self.name = path, path.stem

    def _repr_png_(self) -> bytes:
        return self.path.read_bytes()

    def __repr__(self) -> str:
        return f"Figure({str(self.path)!r})"


class Health(dict):
    """summary.json's `health` (the diagnostics' verdict: `ok`, `rules`), printed as train.py prints it."""

    @property
    def ok(self) -> bool:
        return self["ok"]

    def __str__(self) -> str:
        from makemore_lab.diagnostics.health import HealthRules

        return HealthRules().text(self)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))


class Run:
    """A finished run, read back from its run dir."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).resolve()  # absolute: a notebook may change its directory later
        if not (self.run_dir / "summary.json").is_file():
            raise UserError(f"{self.run_dir} holds no finished run (no summary.json)")

    @cached_property
    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())

    @property
    def train_loss(self) -> float:
        return self.summary["train_loss"]

    @property
    def val_loss(self) -> float:
        return self.summary["val_loss"]

    @property
    def test_loss(self) -> float:
        return self.summary["test_loss"]

    @cached_property
    def config(self):
        """The run's resolved config, as the CLI saved it (.hydra/config.yaml)."""
        from omegaconf import OmegaConf

        return OmegaConf.load(self.run_dir / ".hydra" / "config.yaml")

    @property
    def health(self) -> Health | None:
        """The health report, or None when the diagnostics were off (callbacks=none, debug=fast)."""
        return Health(self.summary["health"]) if "health" in self.summary else None

    @cached_property
    def history(self) -> dict[str, list[tuple[int, float]]]:
        """Every scalar the run logged (train/loss, val/loss, lr, the diagnostics' ...) as (step, value) pairs,
        read from its TensorBoard events; empty with logger=none."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        event_files = sorted((self.run_dir / "tensorboard").rglob("events.out.tfevents.*"))  # tensorboard/<model>/
        if not event_files:
            return {}
        events_dir = event_files[0].parent
        # scalars: 0 keeps every one (the default keeps a random sample of 10,000); the rest is not read
        accumulator = EventAccumulator(
            str(events_dir), size_guidance={"scalars": 0, "histograms": 1, "images": 1, "tensors": 1, "audio": 1}
        )
        accumulator.Reload()
        return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}

    @cached_property
    def checkpoint_path(self) -> Path:
        """The checkpoint holding the weights summary.json reports (last.ckpt, or the best one: final_weights=best)."""
        from makemore_lab.checkpoint import read_checkpoint

        step = self.summary["final_weights_step"]
        candidates = sorted((self.run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.name != "last.ckpt")
        for path in candidates:
            if read_checkpoint(path).get("global_step") == step:
                return path
        raise UserError(f"{self.run_dir}/checkpoints holds no checkpoint of step {step} (the reported weights)")

    @cached_property
    def _trained(self):
        from makemore_lab.checkpoint import load_trained_net

        return load_trained_net(self.checkpoint_path)

    @property
    def net(self):
        """The trained network (torch.nn.Module, eval mode, CPU), loaded from the run's checkpoint."""
        return self._trained[0]

    def sample(
        self, n: int = 10, temperature: float = 1.0, top_k: int | None = None, seed: int = 42, max_length: int = 100
    ) -> list[str]:
        """n generated items, as `makemore-sample ckpt_path=<this run's checkpoint>` prints them."""
        import torch

        from makemore_lab.sampling import generate

        net, vocab, meta = self._trained
        generator = torch.Generator().manual_seed(seed)
        return generate(net, vocab, n, meta["block_size"], generator, temperature, top_k, max_length)

    @property
    def figures(self) -> dict[str, Figure]:
        """The diagnostics' figures by name (activation_distribution, gradient_distribution, ...), shown inline."""
        return {path.stem: Figure(path) for path in sorted((self.run_dir / "figures").glob("*.png"))}

    def __repr__(self) -> str:
        s = self.summary
        verdict = "" if self.health is None else f", health {'ok' if self.health.ok else 'flagged'}"
        return (
            f"Run({str(self.run_dir)!r}: {s['model']}, {s['params']:,} params, {s['steps']:,} steps, "
            f"train {s['train_loss']:.4f} val {s['val_loss']:.4f} test {s['test_loss']:.4f}{verdict})"
        )

    def _repr_html_(self) -> str:
        import html

        images = "".join(
            f'<img src="data:image/png;base64,{base64.b64encode(f._repr_png_()).decode()}" '
            f'title="{f.name}" style="max-width:48%">'
            for f in self.figures.values()
        )
        health = "" if self.health is None else f"<pre>{html.escape(str(self.health))}</pre>"
        return f"<p><code>{html.escape(repr(self))}</code></p>{health}{images}"


class SweepTable:
    """A sweep's rows (one dict per job, best val loss first: makemore_lab.sweep_summary), shown as its table."""

    def __init__(self, sweep_dir: str | Path):
        from makemore_lab.sweep_summary import read_jobs, summary_rows

        self.sweep_dir = Path(sweep_dir).resolve()
        self.rows = summary_rows(read_jobs(self.sweep_dir))[1]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]

    def run(self, index: int = 0) -> Run:
        """The Run of a row (0: the best)."""
        return Run(self.sweep_dir / self.rows[index]["job"])

    def __str__(self) -> str:
        return (self.sweep_dir / "summary.md").read_text()

    __repr__ = __str__

    def _repr_markdown_(self) -> str:
        return str(self)
