"""How every model is scored: next-character cross-entropy in nats, for training batches and whole splits.

The seam between the data module and the training engine: the engine asks `training_loss` for a minibatch's loss,
validation asks `batch_loss` for one evaluation batch, and the final report asks `split_loss` for a whole split.
What a batch holds (data.Windows: distinct contexts and the windows scored from them; data.WholeItems: every
position of whole items) is the data module's business; these functions are the only code that turns a batch into
a number.
"""

import torch
from torch.nn import functional as F

from makemore_lab.data import WholeItems
from makemore_lab.models import scores_every_position

IGNORE = -100  # cross_entropy's ignore_index
# At most this many logits (64 MB of float32) per evaluation forward pass: data.eval_batch_size rows times the
# vocabulary would need 3.9 GB for a 100,000-character one, so bigger batches are scored in row chunks.
EVAL_LOGIT_CELLS = 2**24


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


def member_losses(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, all_positions: bool) -> torch.Tensor:
    """training_loss of each member of a population, (N,), from its logits (N, B, V) or (N, B, T, V)
    (population/stacked.py's PopulationNet); x, y are the members' minibatch (B, ...), or one each (N, B, ...)."""
    n, batch = logits.shape[:2]
    targets = item_targets(x.reshape(-1, x.shape[-1]), y.reshape(-1)) if all_positions else y.reshape(-1)
    # (B, ...) shared by every member, or (N * B, ...) one set each: (N, B, ...) either way
    targets = targets.reshape(-1, batch, *targets.shape[1:]).expand(n, batch, *targets.shape[1:])
    losses = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=IGNORE, reduction="none")
    return losses.view(n, -1).sum(1) / (targets != IGNORE).reshape(n, -1).sum(1)  # each member's mean


def position_losses(net: torch.nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss of every scored character, its item index) for one evaluation batch (data.Windows or WholeItems),
    in chunks of rows whose logits stay under EVAL_LOGIT_CELLS."""
    vocab_size = net.lm_head.weight.shape[0]  # Linear (V, in) or Embedding (V, V): see models/__init__.py
    if isinstance(batch, WholeItems):
        rows = max(1, EVAL_LOGIT_CELLS // (vocab_size * batch.x.shape[1]))
        parts = [
            item_position_losses(net, WholeItems(*(t[i : i + rows] for t in batch)))
            for i in range(0, len(batch.x), rows)
        ]
    else:
        rows = max(1, EVAL_LOGIT_CELLS // vocab_size)
        parts = [window_losses(net, batch, lo, lo + rows) for lo in range(0, len(batch.x), rows)]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([losses for losses, _ in parts]), torch.cat([items for _, items in parts])


def item_position_losses(net: torch.nn.Module, batch: WholeItems) -> tuple[torch.Tensor, torch.Tensor]:
    targets = item_targets(batch.x, batch.y)
    logits = net(batch.x, all_positions=True)
    scored = targets != IGNORE
    losses = F.cross_entropy(logits[scored], targets[scored], reduction="none")
    return losses, batch.item[:, None].expand_as(targets)[scored]


def window_losses(net: torch.nn.Module, batch, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The losses of the windows whose context is one of rows lo:hi of batch.x: each context is run once, and
    each window's loss read from its context's log-probabilities (cross_entropy's own arithmetic: -log_softmax
    at the target)."""
    log_probs = F.log_softmax(net(batch.x[lo:hi]), dim=-1)
    if lo == 0 and hi >= len(batch.x):
        return -log_probs[batch.context, batch.y], batch.item
    mine = ((batch.context >= lo) & (batch.context < hi)).nonzero()[:, 0]
    return -log_probs[batch.context[mine] - lo, batch.y[mine]], batch.item[mine]


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
