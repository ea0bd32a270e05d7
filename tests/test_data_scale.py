"""Data at scale, on small generated files: memory O(characters), long items bounded, nothing materialised.

The numbers (seconds, peak RSS at 32k..4M lines) live in scripts/benchmark_data.py and docs/data.md; these tests
check the properties that make them so and fail if one breaks.
"""

import random

import pytest
import torch

from makemore_lab.data import CharDataModule
from makemore_lab.errors import UserError
from makemore_lab.train import train


def corpus(tmp_path, n, outlier: int = 0, seed: int = 0):
    rng = random.Random(seed)
    items = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 12))) for _ in range(n)]
    if outlier:
        items.insert(n // 2, "x" * outlier)
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(items) + "\n")
    return path, items


def held_bytes(dm: CharDataModule) -> int:
    """Bytes held by the data module's split tensors."""
    return sum(t.numel() * t.element_size() for s in dm.splits.values() for t in (s.tokens, s.starts))


@pytest.mark.parametrize("block_size", [4, 128])
def test_memory_is_a_few_bytes_per_character_whatever_the_context(tmp_path, block_size):
    path, items = corpus(tmp_path, 5000)
    dm = CharDataModule(path=str(path), block_size=block_size)
    characters = sum(map(len, items))
    # one byte per character and end mark, eight per item (its start): not block_size windows per character
    assert held_bytes(dm) == (characters + len(items) + 3) + 8 * len(items)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, block_size)  # windows exist only per batch


def test_a_3000_character_line_is_refused_for_a_sequence_model_in_one_line(compose_train, tmp_path):
    path, _ = corpus(tmp_path, 3000, outlier=3000)
    cfg = compose_train(f"data.path={path}", "model=transformer")
    with pytest.raises(UserError, match=r"block_size=null .* would be 3,001: line 1,501 of .* has 3,000 characters"):
        train(cfg)


def test_an_outlier_line_trains_with_a_chosen_block_size_in_bounded_memory(compose_train, tmp_path):
    """The way out the message gives: block_size=<n> and data.train_on=windows; evaluation stays exact."""
    path, _ = corpus(tmp_path, 3000, outlier=3000)
    summary = train(
        compose_train(
            f"data.path={path}",
            "model=transformer",
            "block_size=16",
            "data.train_on=windows",
            "model.n_layer=1",
            "model.n_embd=16",
            "callbacks=none",
            "logger=none",
        )
    )
    assert summary["block_size"] == 16 and summary["steps"] == 20


def test_whole_item_evaluation_work_grows_with_characters_not_context(tmp_path):
    path, items = corpus(tmp_path, 2000)
    dm = CharDataModule(path=str(path), block_size=None, max_block_size=64)
    assert sum(b.x.numel() for b in dm.eval_batches("val", whole_items=True)) == dm.num_examples("val")
    # windows: block_size cells for each distinct context (at most one per character)
    val = dm.splits["val"]
    contexts = len(torch.unique(val.windows(torch.arange(len(val)), dm.block_size)[0], dim=0))
    assert sum(b.x.numel() for b in dm.eval_batches("val", whole_items=False)) == dm.block_size * contexts
    assert torch.equal(dm.splits["val"].lengths + 1, torch.tensor([len(i) + 1 for i in dm.val_items]))
