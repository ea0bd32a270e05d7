"""What callbacks measure, to every logger of the run (docs/loggers.md).

Scalars reach every logger through Lightning's logger API (`logger.log_metrics`), one call per measured step with
all of that step's values. Histograms, images and text reach the loggers that keep them, each in its own way:

- TensorBoard: the whole step as one event (tensorboard_events.SummaryBatch: the cheapest way to write it);
- Weights & Biases: wandb.Histogram and wandb.Image in one `experiment.log`, text as a table (`log_text`);
- MLflow: images and text as the run's artifacts (`experiment.log_image` / `log_text`); it has no histograms;
- CSV, and any other logger: scalars only.

What a logger cannot keep is named once per run (`log_what_is_skipped`), not dropped silently. Rank 0 only.

A logger's faults are not the run's (`check_loggers`, `guard`): before anything is built, a chosen logger's package
must be installed and its server (an MLflow tracking URI over HTTP, W&B online) must answer a bounded connection
attempt, else one line says so; once training runs, a logger that fails (its server went away, its service refused
a call) is one line naming the logger and what to do, and is left out from then on: training goes on, and the
checkpoints and summary.json are written as usual. A full disk is not a logger's fault: it stays the run's (one
line naming the file and the last good checkpoint, resume.py).
"""

import contextlib
import functools
import importlib.util
import logging
import os
import socket
import weakref
from urllib.parse import urlparse

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from makemore_lab.errors import DISK_ERRORS, UserError
from makemore_lab.tensorboard_events import SummaryBatch, histogram_bins

log = logging.getLogger(__name__)

MEDIA = ("histograms", "images", "text")
KEEPS = {TensorBoardLogger: set(MEDIA), WandbLogger: set(MEDIA), MLFlowLogger: {"images", "text"}}
# Lightning logger class: (the module it needs, how to install it); ours as this package's extras
PACKAGES = {
    "MLFlowLogger": ("mlflow", "pip install 'makemore-lab[mlflow]' (in a clone: pip install -e '.[mlflow]')"),
    "WandbLogger": ("wandb", "pip install 'makemore-lab[wandb]' (in a clone: pip install -e '.[wandb]')"),
    "CometLogger": ("comet_ml", "pip install comet-ml"),
    "NeptuneLogger": ("neptune", "pip install neptune"),
}


CONNECT_SECONDS = 5.0  # the bounded attempt to reach a logger's server before training
# MLflow's HTTP client retries a failed call 7 times with exponential backoff (minutes); a run bounds it, unless the
# user set these themselves: a server that goes away mid-run costs seconds, then the logger is left out (guard).
MLFLOW_CLIENT_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def check_loggers(logger_cfg) -> None:
    """Before anything runs: a chosen logger whose package is not installed is one line naming the pip command; one
    whose server does not answer a connection within CONNECT_SECONDS is one line naming it and what to do (instead of
    MLflow's minutes of retries and a traceback from Lightning's setup)."""
    for name, node in (logger_cfg or {}).items():
        target = str((node or {}).get("_target_", ""))
        kind = target.rsplit(".", 1)[-1]
        module, install = PACKAGES.get(kind, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise UserError(f"logger {name} needs the {module} package: {install}")
        if kind == "MLFlowLogger":
            uri = str(node.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or "")
            if urlparse(uri).scheme in ("http", "https"):
                for key, value in MLFLOW_CLIENT_BOUNDS.items():
                    os.environ.setdefault(key, value)
                check_reachable(
                    name,
                    uri,
                    f"start the tracking server, or set logger.{name}.tracking_uri to one "
                    "that runs (the default, sqlite:///logs/mlflow.db, needs none)",
                )
        elif kind == "WandbLogger" and node.get("offline") is False:
            check_reachable(
                name,
                os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"),
                f"check the network, or log offline with logger.{name}.offline=true and `wandb sync` later",
            )


check_logger_packages = check_loggers  # the name train.build_run calls


def check_reachable(name: str, url: str, what_to_do: str) -> None:
    """One TCP connection to `url`'s host and port, within CONNECT_SECONDS; a UserError naming the logger if none."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=CONNECT_SECONDS):
            pass
    except OSError as err:
        why = err.strerror or type(err).__name__  # a timeout has no strerror
        raise UserError(f"logger {name}: its server {url} cannot be reached ({why}): {what_to_do}") from None


def start(logger: Logger) -> None:
    """The logger's run (its `experiment`: Lightning starts it in its setup hook, where an error is a traceback), or
    one line naming the logger and what to do. A disk error stays the run's."""
    try:
        _ = logger.experiment  # the property starts the run
    except OSError as err:
        if err.errno in DISK_ERRORS:
            raise
        raise UserError(fault_line(logger, err, "cannot start its run")) from None
    except Exception as err:  # noqa: BLE001 - whatever the logger's library raises
        raise UserError(fault_line(logger, err, "cannot start its run")) from None


def fault_line(logger: Logger, err: Exception, what: str) -> str:
    name = logger_name(logger)
    detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
    fix = WHAT_TO_DO.get(name, f"check the {name} logger's service, or train with another logger=")
    return f"logger {name} {what} ({type(err).__name__}{': ' + detail if detail else ''}): {fix}"


# Loggers that failed once in this process: left out from then on (their methods return at once).
_failed: "weakref.WeakSet[Logger]" = weakref.WeakSet()
GUARDED_METHODS = ("log_metrics", "log_hyperparams", "log_graph", "save", "finalize", "after_save_checkpoint")
WHAT_TO_DO = {
    "mlflow": "check the tracking server (logger.mlflow.tracking_uri), or train with another logger",
    "wandb": "check `wandb login` and the network, or log offline (logger.wandb.offline=true) and `wandb sync` later",
}


def guard(loggers: list[Logger]) -> list[Logger]:
    """Make each logger's failure one line and its own: every call Lightning and this package make to it
    (GUARDED_METHODS, and RunLoggers' media) goes through `fault_guard`. The loggers keep their classes."""
    for logger in loggers:
        for name in GUARDED_METHODS:
            method = getattr(logger, name, None)
            if method is not None and not getattr(method, "guarded", False):
                setattr(logger, name, guarded(logger, method))
    return loggers


def guarded(logger: Logger, method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        if logger in _failed:
            return None
        with fault_guard(logger):
            return method(*args, **kwargs)

    call.guarded = True
    return call


@contextlib.contextmanager
def fault_guard(logger: Logger):
    """A logger's exception becomes one error line naming it and what to do, and the logger is left out from then
    on. A disk error is the run's, not the logger's: it goes on up (one line with the last good checkpoint)."""
    try:
        yield
    except OSError as err:
        if err.errno in DISK_ERRORS:
            raise
        report_fault(logger, err)
    except Exception as err:  # noqa: BLE001 - any library's error: the logger's, not the run's
        report_fault(logger, err)


def report_fault(logger: Logger, err: Exception) -> None:
    _failed.add(logger)
    log.error(
        "%s; it is left out for the rest of this run: training goes on, and the checkpoints and summary.json "
        "are written as usual",
        fault_line(logger, err, "failed"),
    )


def kept(logger: Logger) -> set[str]:
    return next((media for kind, media in KEEPS.items() if isinstance(logger, kind)), set())


def logger_name(logger: Logger) -> str:
    return type(logger).__name__.removesuffix("Logger").lower()


def prepare(loggers: list[Logger]) -> None:
    """The run's loggers, once built (rank 0), before training: each starts its run now (a server that answers but
    refuses is one line, as one that cannot be reached is: check_loggers), each is guarded from then on (a later
    failure is the logger's own), and one line says which skips which media."""
    for logger in loggers:
        start(logger)
    guard(loggers)
    skipped = [
        f"{logger_name(lg)}: no {', no '.join(m for m in MEDIA if m not in kept(lg))}"
        for lg in loggers
        if set(MEDIA) - kept(lg)
    ]
    if skipped:
        log.info(
            "loggers without some media get every scalar but skip them (%s); TensorBoard and W&B keep all",
            "; ".join(skipped),
        )


log_what_is_skipped = prepare  # the name train.train_in_run_dir calls


def finish(loggers: list[Logger]) -> None:
    """End the run's W&B run, so that its files are complete and the next run in this process gets its own run."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger not in _failed:
            with fault_guard(logger):
                logger.experiment.finish()


class StepLog:
    """One step's values, collected by a callback, then written to the run's loggers with `RunLoggers.write`."""

    def __init__(self):
        self.scalars: dict[str, float] = {}
        self.histograms: dict[str, torch.Tensor] = {}
        self.images: dict[str, tuple] = {}  # tag: (image, dataformats, png or None)
        self.texts: dict[str, str] = {}

    def scalar(self, tag: str, value: float) -> None:
        self.scalars[tag] = value

    def histogram(self, tag: str, values: torch.Tensor) -> None:
        self.histograms[tag] = values

    def image(self, tag: str, image, dataformats: str = "HW", png: bytes | None = None) -> None:
        """uint8 in [0, 255] or float in [0, 1]; `dataformats` HW (grey) or HWC (RGB). `png`: the same pixels
        already encoded as PNG (a figure saved to a file), which TensorBoard then keeps as they are instead of
        encoding the image again (the encoding is a sixth of drawing the diagnostics' figures)."""
        self.images[tag] = (image, dataformats, png)

    def text(self, tag: str, text: str) -> None:
        self.texts[tag] = text


class RunLoggers:
    """The run's loggers as callbacks see them: empty (false) on ranks other than 0, or without loggers."""

    def __init__(self, trainer: pl.Trainer):
        self.loggers = list(trainer.loggers) if trainer.is_global_zero else []

    @property
    def working(self) -> list[Logger]:
        return [logger for logger in self.loggers if logger not in _failed]

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def keep(self, media: str) -> bool:
        """Whether any of the loggers keeps `media` (histograms, images, text): what only they need is not made."""
        return any(media in kept(logger) for logger in self.working)

    def write(self, record: StepLog, step: int) -> None:
        bins = (
            {tag: histogram_bins(values) for tag, values in record.histograms.items()}
            if self.keep("histograms")
            else {}
        )
        for logger in self.working:
            with fault_guard(logger):
                if isinstance(logger, TensorBoardLogger):
                    write_tensorboard(logger, record, bins, step)
                    continue
                if record.scalars:
                    logger.log_metrics(record.scalars, step=step)
                if isinstance(logger, WandbLogger):
                    write_wandb(logger, record, bins, step)
                elif isinstance(logger, MLFlowLogger):
                    write_mlflow(logger, record, step)


def write_tensorboard(logger: TensorBoardLogger, record: StepLog, bins: dict, step: int) -> None:
    batch = SummaryBatch()
    for tag, value in record.scalars.items():
        batch.scalar(tag, value)
    for tag, histogram in bins.items():
        batch.histogram(tag, histogram)
    for tag, (image, dataformats, png) in record.images.items():
        batch.image(tag, image, dataformats, png)
    for tag, text in record.texts.items():
        batch.text(tag, text)
    batch.write(logger.experiment, step)


def as_array(image, dataformats: str) -> np.ndarray:
    """uint8 HxW or HxWx3, as W&B and MLflow take images."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype != np.uint8:
        array = (array.clip(0, 1) * 255).astype(np.uint8)
    return array if dataformats in ("HW", "HWC") else np.moveaxis(array, 0, -1)  # CHW


def write_wandb(logger: WandbLogger, record: StepLog, bins: dict, step: int) -> None:
    import wandb

    media = {}
    for tag, (low, _, _, _, _, edges, counts) in bins.items():
        media[tag] = wandb.Histogram(np_histogram=(counts, [low, *edges] if len(edges) == len(counts) else edges))
    for tag, (image, dataformats, _) in record.images.items():
        media[tag] = wandb.Image(as_array(image, dataformats))
    if media:  # at the step's own trainer/global_step, as WandbLogger.log_metrics logs scalars
        logger.experiment.log({**media, "trainer/global_step": step})
    for tag, text in record.texts.items():
        logger.log_text(tag, columns=["step", tag], data=[[step, text]], step=step)


def write_mlflow(logger: MLFlowLogger, record: StepLog, step: int) -> None:
    client, run_id = logger.experiment, logger.run_id
    for tag, (image, dataformats, _) in record.images.items():
        client.log_image(run_id, as_array(image, dataformats), artifact_file=f"{tag}/step_{step:07d}.png")
    for tag, text in record.texts.items():
        client.log_text(run_id, text, artifact_file=f"{tag}/step_{step:07d}.md")
