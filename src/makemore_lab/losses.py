"""How every model is scored: next-character cross-entropy in nats, for training batches and whole splits.

The seam between the data module and the training engine: the engine asks `training_loss` for a minibatch's loss,
validation asks `batch_loss` for one evaluation batch, and the final report asks `split_loss` for a whole split.
What a batch holds (windows, whole items) is the data module's business; these functions are the only code that
turns a batch into a number.
"""

import torch
from torch.nn import functional as F

IGNORE = -100  # cross_entropy's ignore_index


def item_targets(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The target of every position of whole-item windows (B, T): position t predicts token t + 1, the last one y.

    A '.' inside the window is left padding (items never contain it): predicting it is no part of the item, so it
    becomes IGNORE; the target after the window is the item's end mark and is kept.
    """
    targets = torch.cat([x[:, 1:], y[:, None]], dim=1)
    targets = targets.masked_fill(targets == 0, IGNORE)
    targets[:, -1] = y
    return targets


def training_loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, all_positions: bool) -> torch.Tensor:
    """Mean loss of one training minibatch: the window's next character, or every position of whole items."""
    if not all_positions:
        return F.cross_entropy(net(x), y)
    logits = net(x, all_positions=True)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), item_targets(x, y).flatten(), ignore_index=IGNORE)


def batch_loss(net: torch.nn.Module, batch) -> tuple[torch.Tensor, int]:
    """(mean loss, characters scored) of one evaluation batch from the data module's val/test loaders."""
    x, y = batch
    return F.cross_entropy(net(x), y), len(y)


@torch.inference_mode()
def split_loss(net: torch.nn.Module, datamodule, split: str, batch_size: int = 4096) -> float:
    """Mean cross-entropy over every character of a whole split, in eval mode (BatchNorm uses running statistics)."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    x, y = datamodule.splits[split].x, datamodule.splits[split].y
    total = 0.0
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        total += F.cross_entropy(net(xb), yb, reduction="sum").item()
    net.train(was_training)
    return total / len(y)
