"""Scoring windows by their distinct contexts: each context runs through the model once, every window is scored
exactly once, and a split's loss is the window-by-window number."""

import pytest
import torch
from torch.nn import functional as F

from makemore_lab import losses
from makemore_lab.data import CharDataModule, Windows, batches
from makemore_lab.losses import position_losses, split_loss
from makemore_lab.models.bigram import Bigram
from makemore_lab.models.mlp import MLP
from makemore_lab.models.wavenet import WaveNet
from test_data import all_windows, random_items, window_loss, write

# Names-like items: many share their first characters, so windows share contexts.
PREFIXED = [p + s for p in ("an", "ma", "jo", "el") for s in random_items(60, alphabet="aeilnorst", max_len=6)]


def rows_of(x: torch.Tensor, y: torch.Tensor, item: torch.Tensor) -> list[tuple]:
    """Each window as a (context..., target, item) tuple, sorted: the multiset of scored windows."""
    return sorted(map(tuple, torch.cat([x, y[:, None], item[:, None]], dim=1).tolist()))


@pytest.mark.parametrize("block_size", [1, 3, 8, 20])  # 20: 27^20 overflows int64, the codes are renumbered
def test_distinct_contexts_group_the_windows_by_context(tmp_path, block_size):
    dm = CharDataModule(path=write(tmp_path, PREFIXED), block_size=block_size)
    split = dm.splits["train"]
    for index in (torch.arange(len(split)), torch.arange(1, len(split), 3)):  # a whole split, any set of windows
        order, bounds = split.distinct_contexts(index, block_size)
        x, _ = split.windows(index[order], block_size)
        assert torch.equal(torch.sort(order).values, torch.arange(len(index)))  # every window once
        assert bounds[0] == 0 and bounds[-1] == len(index) and bool((bounds.diff() > 0).all())
        firsts = x[bounds[:-1]]
        assert len(torch.unique(firsts, dim=0)) == len(firsts) == len(torch.unique(x, dim=0)) < len(x)
        group = torch.repeat_interleave(torch.arange(len(firsts)), bounds.diff())
        assert torch.equal(firsts[group], x)  # each group's windows have its context
        assert bool((order[1:] > order[:-1])[group[1:] == group[:-1]].all())  # stable: in window order
    empty = split.distinct_contexts(torch.arange(0), block_size)
    assert len(empty[0]) == 0 and empty[1].tolist() == [0]


@pytest.mark.parametrize("span", [None, 97])  # 97: the split's windows made distinct in several spans
def test_window_batches_score_every_window_once_from_distinct_contexts(tmp_path, monkeypatch, span):
    if span:
        monkeypatch.setattr(batches, "DISTINCT_SPAN", span)
    dm = CharDataModule(path=write(tmp_path, PREFIXED), block_size=5, eval_batch_size=40)
    for split in ("train", "val"):
        loader = list(dm.val_dataloader() if split == "val" else dm.eval_batches(split))
        assert all(isinstance(b, Windows) for b in loader)
        assert all(len(b.x) <= 40 and len(torch.unique(b.x, dim=0)) == len(b.x) for b in loader)
        assert all(len(b.context) == len(b.y) == len(b.item) and int(b.context.max()) < len(b.x) for b in loader)
        scored = rows_of(
            torch.cat([b.x[b.context] for b in loader]),
            torch.cat([b.y for b in loader]),
            torch.cat([b.item for b in loader]),
        )
        x, y = all_windows(dm, split)
        assert scored == rows_of(x, y, dm.splits[split].item_of(torch.arange(len(x)) + 1))
        contexts = sum(len(b.x) for b in loader)
        assert contexts < len(x)
        if span is None:
            assert contexts == len(torch.unique(x, dim=0))


@pytest.mark.parametrize(
    "block_size, build",
    [
        (1, lambda V: Bigram(V, 1)),
        (8, lambda V: MLP(V, 8, n_embd=4, n_hidden=64)),
        (8, lambda V: WaveNet(V, 8, n_embd=4, n_hidden=32)),
    ],
)
@pytest.mark.parametrize("small", [False, True])  # True: several spans, and logits in chunks of 7 rows
def test_a_splits_loss_is_the_window_by_window_loss_with_each_context_run_once(
    tmp_path, monkeypatch, block_size, build, small
):
    if small:
        monkeypatch.setattr(batches, "DISTINCT_SPAN", 150)
    dm = CharDataModule(path=write(tmp_path, PREFIXED), block_size=block_size, eval_batch_size=64)
    torch.manual_seed(0)
    net = build(dm.vocab_size)
    if small:
        monkeypatch.setattr(losses, "EVAL_LOGIT_CELLS", 7 * dm.vocab_size)
    rows = []
    net.lm_head.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    for split in ("train", "val", "test"):
        rows.clear()
        loss, scored_rows = split_loss(net, dm, split), list(rows)
        assert loss == pytest.approx(window_loss(net, dm, split), rel=1e-6)
        assert sum(scored_rows) < dm.num_examples(split)  # fewer rows through the model than windows
        assert max(scored_rows) <= (7 if small else 64)
        if not small:
            assert sum(scored_rows) == len(torch.unique(all_windows(dm, split)[0], dim=0))


def test_per_item_losses_are_each_items_windows(tmp_path):
    dm = CharDataModule(path=write(tmp_path, PREFIXED), block_size=4, eval_batch_size=32)
    torch.manual_seed(0)
    net = MLP(dm.vocab_size, 4).eval()
    sums = losses.item_losses(net, dm, "train")
    x, y = all_windows(dm, "train")
    with torch.no_grad():
        each = F.cross_entropy(net(x), y, reduction="none").double()
    expected = torch.zeros(dm.splits["train"].num_items, dtype=torch.float64)
    expected.index_add_(0, dm.splits["train"].item_of(torch.arange(len(x)) + 1), each)
    assert torch.allclose(sums, expected, rtol=1e-6)
    scored, items = position_losses(net, next(iter(dm.eval_batches("train"))))
    assert len(scored) == len(items) and len(scored) > len(next(iter(dm.eval_batches("train"))).x)
