"""One TensorBoard event per step: the values SummaryWriter.add_scalar & co. would write, batched.

Callbacks that work per optimizer step (see step_hooks.py) write against their own step count, through the run's
loggers (logging_media.py), which hands a TensorBoard logger's share to `SummaryBatch`.
"""

import threading

import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import summary

from makemore_lab.errors import DISK_ERRORS


def quiet_writer_thread_disk_errors() -> None:
    """A full or read-only disk fails TensorBoard's writer thread, which hands the error to the next write or flush
    in the training thread: that one reports it in one line (resume.fit). The thread's own traceback, which
    threading.excepthook would print before that line, is left out; any other thread error is printed as before."""
    previous = threading.excepthook
    if getattr(previous, "quiet_disk_errors", False):
        return

    def hook(args):
        relayed = type(args.thread).__module__.startswith("tensorboard.") and isinstance(args.exc_value, OSError)
        if not (relayed and args.exc_value.errno in DISK_ERRORS):
            previous(args)

    hook.quiet_disk_errors = True
    threading.excepthook = hook


def histogram_bins(values: torch.Tensor, bins: int = 30) -> tuple:
    """(low, high, count, sum, sum of squares, right edges, counts) of a tensor's values, binned by torch on the
    values' device: numpy's binning costs ~5x more, and bincount (unlike histc) is fast on the CPU and allowed under
    deterministic CUDA."""
    values = values.detach().float().flatten()
    low, high, total, squares = torch.stack([values.min(), values.max(), values.sum(), values.square().sum()]).tolist()
    if not high > low:  # all equal: one bucket
        edges, counts = [high], [values.numel()]
    else:
        index = ((values - low) * (bins / (high - low))).long().clamp_(0, bins - 1)
        counts = torch.bincount(index, minlength=bins).tolist()
        edges = [low + (high - low) * (i + 1) / bins for i in range(bins)]  # right edges, as TensorBoard wants
    return low, high, values.numel(), total, squares, edges, counts


class SummaryBatch:
    """One step's scalars, histograms, images and text, written to TensorBoard as a single event.

    SummaryWriter.add_scalar & co. write an event each, and an event's fixed cost (a hand-off to the writer
    thread, a CRC computed in pure Python) outweighs a small value's: one event for a measured step's ~20 values
    costs a third of ~20 events. The values are those add_scalar, add_histogram, add_image and add_text would write.
    """

    def __init__(self):
        self.values = []

    def scalar(self, tag: str, value: float) -> None:
        self.values.extend(summary.scalar(tag, value).value)

    def histogram(self, tag: str, bins: tuple) -> None:
        """`bins` as histogram_bins returns them."""
        self.values.extend(summary.histogram_raw(tag, *bins).value)

    def image(self, tag: str, image, dataformats: str = "HW", png: bytes | None = None) -> None:
        """An image: uint8 in [0, 255] or float in [0, 1], laid out as `dataformats` says (HW, HWC); `png`, if
        given, is the same image encoded, kept as add_image would encode it (its height, width and channels)."""
        if png is None:
            self.values.extend(summary.image(tag, image, dataformats=dataformats).value)
            return
        height, width, *channels = image.shape if dataformats == "HWC" else (*image.shape, 1)
        encoded = Summary.Image(height=height, width=width, colorspace=channels[0], encoded_image_string=png)
        self.values.append(Summary.Value(tag=tag, image=encoded))

    def text(self, tag: str, text: str) -> None:
        self.values.extend(summary.text(tag, text).value)

    def write(self, writer, step: int) -> None:
        if self.values:
            writer.file_writer.add_summary(Summary(value=self.values), step)


def write_hparams(writer, hparams: dict, metric_tags: tuple[str, ...], step: int = 0) -> None:
    """This run's row in the HParams tab: its hparams, and the scalar tags whose last value the tab shows (the run's
    own `val/loss` and `test/loss`, so the val loss is one tag, not copies under `hparams/...`). Lightning's
    `log_hyperparams(params, metrics)` would log the metrics' values again, at step 0, to do this."""
    for part in summary.hparams(hparams, dict.fromkeys(metric_tags, 0.0)):
        writer.file_writer.add_summary(part, step)


def write_text(writer, tag: str, text: str, step: int) -> None:
    writer.file_writer.add_summary(summary.text(tag, text), step)
