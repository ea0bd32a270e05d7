"""How every model is scored: next-character cross-entropy in nats, for training batches and whole splits.

The seam between the data module and the training engine: the engine asks `training_loss` for a minibatch's loss,
validation asks `batch_loss` for one evaluation batch, and the final report asks `split_loss` for a whole split.
What a batch holds (data.Windows: one scored character per row; data.WholeItems: every position of whole items)
is the data module's business; these functions are the only code that turns a batch into a number.
"""

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from makemore_lab.data import WholeItems
from makemore_lab.models import scores_every_position

IGNORE = -100  # cross_entropy's ignore_index
# At most this many logits (64 MB of float32) per evaluation forward pass: data.eval_batch_size rows times the
# vocabulary would need 3.9 GB for a 100,000-character one, so bigger batches are scored in row chunks.
EVAL_LOGIT_CELLS = 2**24


class ScoringTanh(TorchFunctionMode):
    """While active, `torch.tanh(x)` (nn.Tanh's forward) and `x.tanh()` of a CPU float tensor outside autograd are
    computed as 2 * sigmoid(2x) - 1: torch 2.13's CPU tanh kernel is not vectorised (4.2 ns an element on this
    project's machine, its sigmoid 1.1 ns), and tanh is ~45% of scoring a split with the lecture MLP.

    The contract: only scoring (evaluation batches, whole splits) runs under it, never a training step (a call that
    autograd records, a member's solo step, the diagnostics' hooks: they see torch's tanh) and never a GPU tensor.
    Its values are in [-1, 1] and within 2e-7 of torch.tanh's (tests/test_losses.py), so a split's loss moves by
    less than its float32 sums do; `scripts/benchmark_scoring.py` times it.
    """

    TANH = (torch.tanh, torch.Tensor.tanh)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.TANH and not kwargs and len(args) == 1:
            x = args[0]
            if x.is_cpu and x.is_floating_point() and not (torch.is_grad_enabled() and x.requires_grad):
                return torch.sigmoid(x * 2).mul_(2).sub_(1)
        return func(*args, **kwargs)


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


def position_losses(net: torch.nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss of every scored character, its item index) for one evaluation batch (data.Windows or WholeItems),
    in chunks of rows whose logits stay under EVAL_LOGIT_CELLS; the net's tanh is ScoringTanh's."""
    with ScoringTanh():
        return _position_losses(net, batch)


def _position_losses(net: torch.nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    vocab_size = net.lm_head.weight.shape[0]  # Linear (V, in) or Embedding (V, V): see models/__init__.py
    logits_per_row = vocab_size * (batch.x.shape[1] if isinstance(batch, WholeItems) else 1)
    rows = max(1, EVAL_LOGIT_CELLS // logits_per_row)
    if len(batch.x) > rows:
        parts = [_position_losses(net, type(batch)(*(t[i : i + rows] for t in batch))) for i in range(0, len(batch.x), rows)]
        return torch.cat([losses for losses, _ in parts]), torch.cat([items for _, items in parts])
    if isinstance(batch, WholeItems):
        targets = item_targets(batch.x, batch.y)
        logits = net(batch.x, all_positions=True)
        scored = targets != IGNORE
        losses = F.cross_entropy(logits[scored], targets[scored], reduction="none")
        return losses, batch.item[:, None].expand_as(targets)[scored]
    x, y, item = batch
    return F.cross_entropy(net(x), y, reduction="none"), item


def batch_loss(net: torch.nn.Module, batch) -> tuple[torch.Tensor, int]:
    """(mean loss, characters scored) of one evaluation batch from the data module's val/test loaders."""
    losses, _ = position_losses(net, batch)
    return losses.mean(), len(losses)


@torch.inference_mode()
def item_losses(net: torch.nn.Module, datamodule, split: str, whole_items: bool | None = None) -> torch.Tensor:
    """Each item's summed loss over its characters and end mark, (items,) float64, in split order, in eval mode.

    A model that scores every position (models.scores_every_position) is run on whole items: O(characters),
    the same numbers as scoring each window (the window of each position holds exactly the item's prefix).
    `whole_items=False` forces window-by-window scoring (for comparisons and benchmarks).
    """
    was_training = net.training
    net.eval()  # BatchNorm uses its running statistics, dropout is off
    device = next(net.parameters()).device
    whole_items = scores_every_position(net) if whole_items is None else whole_items
    batches = datamodule.eval_batches(split, whole_items=whole_items)
    sums = torch.zeros(datamodule.splits[split].num_items, dtype=torch.float64)
    for batch in batches:
        losses, items = position_losses(net, type(batch)(*(t.to(device) for t in batch)))
        sums.index_add_(0, items.cpu(), losses.double().cpu())
    net.train(was_training)
    return sums


def split_loss(net: torch.nn.Module, datamodule, split: str, whole_items: bool | None = None) -> float:
    """Mean cross-entropy over every character (and end mark) of a whole split, in eval mode."""
    return float(item_losses(net, datamodule, split, whole_items).sum()) / datamodule.num_examples(split)
