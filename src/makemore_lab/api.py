"""Train and sweep from Python or a notebook, with the command line's overrides (docs/package.md).

    import makemore_lab
    run = makemore_lab.train("model=mlp", "trainer.max_steps=5000")
    run.val_loss, run.history["train/loss"], run.sample(5), run.health, run.figures, run.run_dir
    table = makemore_lab.sweep("optimizer.lr=0.03,0.1,0.3", "trainer.max_steps=1000")

Each call composes the packaged configs as `makemore-train <overrides>` would (a `config_dir=` is the command
line's `--config-dir`), runs the real `train(cfg)` in a fresh run dir under ./logs, and reads the results back
from the run's own files (summary.json, the TensorBoard events, the checkpoint, the figures), so a Run can also be
opened later from any run dir: `makemore_lab.Run("logs/train/runs/<run>")`. A bad override is a UserError (one
line); nothing is killed with sys.exit, so a notebook kernel survives it.

Torch, Lightning and Hydra are imported inside the functions: `import makemore_lab` stays cheap.
"""

import base64
import copy
import itertools
import json
import logging
from functools import cached_property
from pathlib import Path

from makemore_lab.errors import UserError

CONFIG_MODULE = "makemore_lab.configs"


def train(*overrides: str, config_dir: str | Path | None = None) -> "Run":
    """Train one model, as `makemore-train <overrides>` does; the finished Run."""
    from makemore_lab.train import train as train_config

    cfg = compose("train", overrides, config_dir)
    run_dir = Path(cfg.hydra.run.dir)  # resolved once: its ${now:...} would change on every access
    with HydraJob(cfg, run_dir, overrides) as task_cfg:
        train_config(task_cfg)
    return Run(run_dir)


def sweep(*overrides: str, config_dir: str | Path | None = None) -> "SweepTable":
    """Train every combination of the comma-separated values, one after the other, as `makemore-train -m
    <overrides>` does: one job dir each under one sweep dir, a failing job a failed row (sweep_policy.py). The
    sweep's table, best val loss first."""
    from hydra.types import RunMode

    from makemore_lab import sweep_policy
    from makemore_lab.sweep_summary import write_summary
    from makemore_lab.train import train as train_config

    grid = expand_grid(overrides)
    sweep_dir = Path(compose("train", grid[0], config_dir).hydra.sweep.dir)
    for num, job_overrides in enumerate(grid):
        cfg = compose("train", [*job_overrides, f"hydra.sweep.dir={sweep_dir}"], config_dir)
        cfg.hydra.job.num = num  # the sweep subdir is ${hydra.job.num}
        with HydraJob(cfg, sweep_dir / str(cfg.hydra.sweep.subdir), job_overrides, RunMode.MULTIRUN) as task_cfg:
            sweep_policy.run_job(train_config, task_cfg)
    write_summary(sweep_dir)
    return SweepTable(sweep_dir)


# ---------------------------------------------------------------------------------------------- composing


def hydra_message(err: Exception) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line (without OmegaConf's full_key/object_type lines)."""
    text = str(err).split("Config search path:")[0]  # a missing option's message ends in the search path
    lines = [line.strip() for line in text.splitlines()]
    message = " ".join(line for line in lines if line and not line.startswith(("full_key:", "object_type=")))
    override = getattr(err, "override", None)  # a parse error names the override only here
    return f"bad override {override!r}: {message}" if override else message


def compose(config_name: str, overrides, config_dir: str | Path | None = None):
    """The config (with its `hydra` node) that the command line composes from the same overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    extra = []
    if config_dir is not None:
        if not Path(config_dir).is_dir():
            raise UserError(f"config dir not found: {config_dir}")
        extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"]  # where --config-dir puts it
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3", job_name=config_name):
            return hydra_compose(config_name, overrides=[*overrides, *extra], return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(hydra_message(err)) from None
    finally:
        GlobalHydra.instance().clear()


def expand_grid(overrides) -> list[list[str]]:
    """Hydra's basic sweep: every combination of the comma-separated (or range(...)) values, in order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise UserError(hydra_message(err)) from None
    axes = [[f"{o.get_key_element()}={value}" for value in o.sweep_string_iterator()] if o.is_sweep_override()
            else [o.input_line] for o in parsed]
    return [list(combination) for combination in itertools.product(*axes)] or [[]]


class HydraJob:
    """What Hydra does around one job of a CLI run, for a config composed in-process: the job's HydraConfig (the
    resume command and sweep_policy read it), .hydra/{config,hydra,overrides}.yaml, and the CLI's logging
    (console and <run dir>/train.log) for the job's duration, the caller's logging handlers restored after it."""

    def __init__(self, cfg, out_dir: Path, overrides, mode=None):
        self.cfg, self.out_dir, self.overrides, self.mode = cfg, out_dir.resolve(), list(overrides), mode

    def __enter__(self):
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import configure_log
        from hydra.types import RunMode
        from omegaconf import OmegaConf, open_dict

        cfg = self.cfg
        with open_dict(cfg):
            cfg.hydra.mode = self.mode or RunMode.RUN
            cfg.hydra.runtime.output_dir = str(self.out_dir)
        HydraConfig.instance().set_config(cfg)
        task_cfg = copy.deepcopy(cfg)
        with open_dict(task_cfg):
            del task_cfg["hydra"]
        hydra_dir = self.out_dir / ".hydra"
        hydra_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(task_cfg, hydra_dir / "config.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": cfg.hydra}), hydra_dir / "hydra.yaml")
        OmegaConf.save(OmegaConf.create(self.overrides), hydra_dir / "overrides.yaml")
        root = logging.getLogger()
        self.saved_logging = root.handlers[:], root.level
        configure_log(cfg.hydra.job_logging, cfg.hydra.verbose)
        return task_cfg

    def __exit__(self, *exc) -> None:
        root = logging.getLogger()
        handlers, level = self.saved_logging
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


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

        events_dir = self.run_dir / "tensorboard"
        if not events_dir.is_dir():
            return {}
        # scalars: 0 keeps every one (the default keeps a random sample of 10,000); the rest is not read
        accumulator = EventAccumulator(str(events_dir), size_guidance={"scalars": 0, "histograms": 1, "images": 1,
                                                                       "tensors": 1, "audio": 1})
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

    def sample(self, n: int = 10, temperature: float = 1.0, top_k: int | None = None, seed: int = 42,
               max_length: int = 100) -> list[str]:
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
        return (f"Run({str(self.run_dir)!r}: {s['model']}, {s['params']:,} params, {s['steps']:,} steps, "
                f"train {s['train_loss']:.4f} val {s['val_loss']:.4f} test {s['test_loss']:.4f}{verdict})")

    def _repr_html_(self) -> str:
        import html

        images = "".join(f'<img src="data:image/png;base64,{base64.b64encode(f._repr_png_()).decode()}" '
                         f'title="{f.name}" style="max-width:48%">' for f in self.figures.values())
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
