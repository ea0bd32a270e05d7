"""The Trainer's checkpoint writer: every checkpoint a run saves (last.ckpt, the best, the final one) is written
by checkpoint.save_atomically. Here, not in checkpoint.py, which sample.py and eval.py import without Lightning."""

from pytorch_lightning.plugins import TorchCheckpointIO

from makemore_lab.checkpoint import save_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with save_atomically (Trainer(plugins=[AtomicCheckpointIO()])): Lightning's own
    stages a checkpoint in the system's temp dir (fsspec's transaction), so on a full disk its error names
    /tmp/tmpXXXX, and its move into the run dir is a copy that can be cut short."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        save_atomically(checkpoint, path)
