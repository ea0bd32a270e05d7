import hashlib

import pytest
import torch

from makemore_lab.data import CharDataModule, Vocabulary, builtin_names_path, make_examples, read_items
from makemore_lab.errors import UserError

NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"


def test_shipped_names_file_is_makemores():
    assert hashlib.sha256(builtin_names_path().read_bytes()).hexdigest() == NAMES_SHA256
    assert len(read_items(None)) == 32033


def test_lecture_split_sizes_with_block_size_3():
    dm = CharDataModule(path=None, block_size=3)
    sizes = [len(dm.splits[s]) for s in ("train", "val", "test")]
    assert sizes == [182625, 22655, 22866]  # the lecture's Xtr / Xdev / Xte
    assert dm.vocab_size == 27 and dm.vocab.chars[0] == "." and dm.vocab.chars[1:4] == ("a", "b", "c")


def test_block_size_none_means_longest_item_plus_one(tmp_path):
    path = tmp_path / "items.txt"
    path.write_text("\n".join(["ab", "abcdefg", "c", "de", "fgh", "ee", "ba", "cab", "dd", "xy"]))
    assert CharDataModule(path=str(path), block_size=None, batch_size=4).block_size == 8


def test_blank_lines_and_trailing_whitespace_are_ignored(tmp_path):
    path = tmp_path / "items.txt"
    path.write_text("emma  \n\n   \nolivia\t\r\nava\n\n")
    assert read_items(path) == ["emma", "olivia", "ava"]


def test_examples_are_context_windows_with_start_padding():
    vocab = Vocabulary.from_items(["emma"])
    x, y = make_examples(["emma"], vocab, block_size=3)
    e, m, a = vocab.encode("ema")
    assert x.tolist() == [[0, 0, 0], [0, 0, e], [0, e, m], [e, m, m], [m, m, a]]
    assert y.tolist() == [e, m, m, a, 0]  # the last target is the end mark


def test_a_batch_is_gathered_by_tensor_indexing(small_names):
    dm = CharDataModule(path=str(small_names), block_size=3, batch_size=32)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 3) and y.shape == (32,) and x.dtype == torch.long


def test_split_fraction_and_seed_are_respected(small_names):
    a = CharDataModule(path=str(small_names), train_fraction=0.5, val_fraction=0.25)
    assert (len(a.train_items), len(a.val_items), len(a.test_items)) == (300, 150, 150)
    b = CharDataModule(path=str(small_names), split_seed=7)
    assert b.train_items != CharDataModule(path=str(small_names)).train_items


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no items"),
        (b"\n  \n\t\n", "no items"),
        (b"anna\nbob\n", "too few"),
        (b"\x00\x01\x02binary", "binary"),
        (b"caf\xe9\nbob\nanna\n", "not UTF-8"),
    ],
)
def test_bad_data_files_raise_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        CharDataModule(path=str(path))


def test_missing_file_and_bad_block_size(tmp_path):
    with pytest.raises(UserError, match="not found"):
        CharDataModule(path=str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="block_size"):
        CharDataModule(path=None, block_size=0)


def test_minibatch_stream_is_the_same_for_any_steps_per_call():
    from makemore_lab.data import MinibatchStream

    def first_indices(steps_per_call, count):
        torch.manual_seed(0)
        stream = iter(MinibatchStream(n=100, batch_size=8, steps_per_call=steps_per_call))
        out = torch.cat([next(stream) for _ in range(count // (8 * steps_per_call))])
        return out

    one, five = first_indices(1, 480), first_indices(5, 480)
    assert torch.equal(one, five)
    # each pass over the 100 examples yields 12 full minibatches (96 indices), all distinct; the 4 left are dropped
    assert len(set(one[:96].tolist())) == 96 and len(set(one[96:192].tolist())) == 96


def test_train_on_items_trains_on_whole_items_and_scores_windows(tmp_path):
    path = tmp_path / "items.txt"
    path.write_text("\n".join(["ab", "abcdefg", "c", "de", "fgh", "ee", "ba", "cab", "dd", "xy"]))
    windows = CharDataModule(path=str(path), block_size=None, batch_size=2)
    items = CharDataModule(path=str(path), block_size=None, batch_size=2, train_on="items")
    assert len(items.train_set) == len(items.train_items) == 8
    first = items.train_items[0]
    assert items.train_set.x[0].tolist() == [0] * (8 - len(first)) + items.vocab.encode(first)
    assert items.train_set.y.tolist() == [0] * 8  # the target after a whole item is its end mark
    for split in ("train", "val", "test"):  # evaluation is the same in both ways
        assert torch.equal(items.splits[split].x, windows.splits[split].x)
    batch_x, _ = next(iter(items.train_dataloader()))
    assert batch_x.shape == (2, 8)


def test_train_on_items_needs_the_whole_item_in_view(tmp_path):
    path = tmp_path / "items.txt"
    path.write_text("\n".join(["abcdef"] * 10))
    with pytest.raises(UserError, match="needs block_size > the longest item"):
        CharDataModule(path=str(path), block_size=6, batch_size=2, train_on="items")
    with pytest.raises(UserError, match="train_on must be"):
        CharDataModule(path=str(path), block_size=7, batch_size=2, train_on="names")
