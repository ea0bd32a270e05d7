"""What callbacks measure, to every logger of the run (docs/loggers.md).

Scalars reach every logger through Lightning's logger API (`logger.log_metrics`), one call per measured step with
all of that step's values. Histograms, images and text reach the loggers that keep them, each in its own way:

- TensorBoard: the whole step as one event (tensorboard_events.SummaryBatch: the cheapest way to write it);
- Weights & Biases: wandb.Histogram and wandb.Image in one `experiment.log`, text as a table (`log_text`);
- MLflow: images and text as the run's artifacts (`experiment.log_image` / `log_text`); it has no histograms;
- CSV, and any other logger: scalars only.

What a logger cannot keep is named once per run (`log_what_is_skipped`), not dropped silently. Rank 0 only.
"""

import importlib.util
import logging

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from makemore_lab.errors import UserError
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


def check_logger_packages(logger_cfg) -> None:
    """A chosen logger whose package is not installed: one line naming the pip command, before anything runs."""
    for name, node in (logger_cfg or {}).items():
        target = str((node or {}).get("_target_", ""))
        module, install = PACKAGES.get(target.rsplit(".", 1)[-1], (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise UserError(f"logger {name} needs the {module} package: {install}")


def kept(logger: Logger) -> set[str]:
    return next((media for kind, media in KEEPS.items() if isinstance(logger, kind)), set())


def logger_name(logger: Logger) -> str:
    return type(logger).__name__.removesuffix("Logger").lower()


def log_what_is_skipped(loggers: list[Logger]) -> None:
    """The one line per run that says which logger skips which media."""
    skipped = [f"{logger_name(lg)}: no {', no '.join(m for m in MEDIA if m not in kept(lg))}"
               for lg in loggers if set(MEDIA) - kept(lg)]
    if skipped:
        log.info("loggers without some media get every scalar but skip them (%s); TensorBoard and W&B keep all",
                 "; ".join(skipped))


def finish(loggers: list[Logger]) -> None:
    """End the run's W&B run, so that its files are complete and the next run in this process gets its own run."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
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

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def keep(self, media: str) -> bool:
        """Whether any of the loggers keeps `media` (histograms, images, text): what only they need is not made."""
        return any(media in kept(logger) for logger in self.loggers)

    def write(self, record: StepLog, step: int) -> None:
        bins = {tag: histogram_bins(values) for tag, values in record.histograms.items()} if self.keep("histograms") else {}
        for logger in self.loggers:
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
