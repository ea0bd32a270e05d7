"""The entry points' Hydra app: Hydra's own errors (an unknown option or key, a bad override) in one line.

Hydra reports a composition error over several lines (`model=mpl` lists every option, an unknown key adds its
full_key and object_type, and each ends with a hint about HYDRA_FULL_ERROR). `entry_point` asks Hydra to raise
instead (HYDRA_FULL_ERROR=1) and reports an error raised before the task started as `error: <one line>`, exit 2,
like every other bad input (errors.UserError). An error inside the task is the task's own business: a UserError
is already one line there (errors.exit_on_user_error), anything else is a bug and keeps its traceback.

`compose` gives the same config in-process, for the few things needed before the app runs (where a run will go:
api.py; the logs dir of `ckpt_path=latest`: cli.py), and leaves a composition error to the app to report.
"""

import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.errors import MissingConfigException
from omegaconf import DictConfig

CONFIG_PATH = "pkg://makemore_lab.configs"
CONFIG_MODULE = "makemore_lab.configs"


def one_line(err: Exception) -> str:
    """Hydra's message (and its OmegaConf cause's first line) joined into one line; a missing option's list of
    available options kept, comma-separated."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if isinstance(err, MissingConfigException) and err.options:
        lines = [lines[0], f"available: {', '.join(err.options)}"]
    cause = err.__cause__
    if lines and cause is not None and str(cause).strip():  # "Could not override 'foo': Key 'foo' is not in struct"
        lines[0] = f"{lines[0].rstrip('.')}: {str(cause).strip().splitlines()[0]}"
    message = "; ".join(lines) or type(err).__name__
    override = getattr(err, "override", None)  # a parse error names the override only here
    return f"bad override {override!r}: {message}" if override else message


def entry_point(config_name: str, task: Callable[[DictConfig], object]) -> Callable[[], object]:
    """`hydra.main` for `task` (train.run, sample.run, evaluate.run), for the root scripts and console scripts."""
    started = False

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)
    def app(cfg: DictConfig):
        nonlocal started
        started = True
        return task(cfg)

    def main():
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them over several lines
        try:
            return app()
        except Exception as err:
            if started:
                raise
            print(f"error: {one_line(err)}", file=sys.stderr)
            sys.exit(2)

    return main


def compose(config_name: str, overrides: list[str], config_dir: str | None = None) -> DictConfig | None:
    """The config (with its `hydra` node) that the app composes from these overrides and --config-dir; None where
    Hydra refuses them (the app itself then says why, in one line). Leaves Hydra's global state as it found it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []  # as --config-dir
    global_hydra = GlobalHydra.instance()
    saved = global_hydra.hydra
    global_hydra.clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3", job_name=config_name):
            return hydra_compose(config_name, overrides=[*overrides, *extra], return_hydra_config=True)
    except Exception:  # Hydra's and OmegaConf's errors, a custom resolver's anything: the app's to report
        return None
    finally:
        global_hydra.clear()
        global_hydra.hydra = saved
