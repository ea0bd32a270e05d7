import hashlib
import logging
import os
import random

import pytest
import torch
from omegaconf import OmegaConf

from makemore_lab.checkpoint import checkpoint_datamodule
from makemore_lab.data import (
    CharDataModule,
    MinibatchStream,
    Vocabulary,
    WholeItems,
    Windows,
    builtin_names_path,
    make_examples,
    read_items,
)
from makemore_lab.errors import UserError
from makemore_lab.losses import batch_loss, position_losses, split_loss
from makemore_lab.models.mlp import MLP
from makemore_lab.models.rnn import RecurrentLM
from makemore_lab.models.transformer import Transformer
from makemore_lab.train import train

NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"
ITEMS = ["ab", "abcdefg", "c", "de", "fgh", "ee", "ba", "cab", "dd", "xy"]


# The examples as they were built before the token tensors (every window materialised as Python lists), kept
# verbatim as the reference the gathered windows must equal bit for bit.
def reference_split(items, train_fraction=0.8, val_fraction=0.1, seed=42):
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    n1, n2 = int(train_fraction * len(shuffled)), int((train_fraction + val_fraction) * len(shuffled))
    return shuffled[:n1], shuffled[n1:n2], shuffled[n2:]


def reference_examples(items, vocab, block_size):
    contexts, targets = [], []
    for item in items:
        context = [0] * block_size
        for ix in vocab.encode(item) + [0]:
            contexts.append(context)
            targets.append(ix)
            context = context[1:] + [ix]
    return torch.tensor(contexts, dtype=torch.long).view(-1, block_size), torch.tensor(targets, dtype=torch.long)


def reference_item_examples(items, vocab, block_size):
    contexts = [[0] * (block_size - len(item)) + vocab.encode(item) for item in items]
    return torch.tensor(contexts, dtype=torch.long), torch.zeros(len(items), dtype=torch.long)


def write(tmp_path, items, name="items.txt"):
    path = tmp_path / name
    path.write_text("\n".join(items) + "\n", encoding="utf-8")
    return str(path)


def random_items(n, alphabet="abcdefghijklmnopqrstuvwxyz", max_len=12, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, max_len))) for _ in range(n)]


def all_windows(dm, split):
    windows = dm.splits[split]
    return windows.windows(torch.arange(len(windows)), dm.block_size)


def test_shipped_names_file_is_makemores():
    assert hashlib.sha256(builtin_names_path().read_bytes()).hexdigest() == NAMES_SHA256
    assert len(read_items(None)) == 32033


def test_lecture_split_sizes_with_block_size_3():
    dm = CharDataModule(path=None, block_size=3)
    sizes = [dm.num_examples(s) for s in ("train", "val", "test")]
    assert sizes == [182625, 22655, 22866]  # the lecture's Xtr / Xdev / Xte
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == sizes
    assert dm.vocab_size == 27 and dm.vocab.chars[0] == "." and dm.vocab.chars[1:4] == ("a", "b", "c")
    assert dm.fingerprint == {"items": 32033, "sha256": NAMES_SHA256}


@pytest.mark.parametrize("block_size", [1, 3, 8, 20])
def test_gathered_windows_equal_the_materialised_lecture_windows(tmp_path, block_size):
    items = random_items(300, max_len=15)
    dm = CharDataModule(path=write(tmp_path, items), block_size=block_size, batch_size=4)
    for split, expected_items in zip(("train", "val", "test"), reference_split(items)):
        assert dm.items_of(split) == expected_items  # the lecture split, item for item
        x, y = all_windows(dm, split)
        ref_x, ref_y = reference_examples(expected_items, dm.vocab, block_size)
        assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
        # the evaluation loader scores the same windows, each once (tests/test_losses.py: from distinct contexts)
        batches = list(dm.val_dataloader() if split == "val" else dm.eval_batches(split))
        assert all(isinstance(b, Windows) for b in batches)
        scored = torch.cat([torch.cat([b.x[b.context], b.y[:, None]], dim=1) for b in batches])
        assert torch.equal(
            torch.unique(scored, dim=0, return_counts=True)[1],
            torch.unique(torch.cat([ref_x, ref_y[:, None]], dim=1), dim=0, return_counts=True)[1],
        )
        assert torch.equal(torch.unique(scored, dim=0), torch.unique(torch.cat([ref_x, ref_y[:, None]], dim=1), dim=0))
    assert dm.vocab == Vocabulary.from_items(items)


def test_windows_never_see_the_previous_item(tmp_path):
    dm = CharDataModule(path=write(tmp_path, ["zzzzzzzz"] * 10 + ["a"] * 10), block_size=6, batch_size=2)
    z = dm.vocab.index["z"]
    for split in ("train", "val", "test"):
        x, y = all_windows(dm, split)
        a_rows = x[(x == dm.vocab.index["a"]).any(1) | (y == dm.vocab.index["a"])]
        assert not (a_rows == z).any()  # an 'a' item's windows hold only padding and 'a'


def test_a_large_vocabulary_uses_wider_tokens_and_the_same_windows(tmp_path):
    alphabet = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 400))  # 400 CJK characters: no longer a byte each
    items = random_items(200, alphabet=alphabet, max_len=6)
    dm = CharDataModule(path=write(tmp_path, items), block_size=4, batch_size=4)
    assert dm.vocab_size > 256 and dm.splits["train"].tokens.dtype == torch.int16
    train_items = reference_split(items)[0]
    assert torch.equal(all_windows(dm, "train")[0], reference_examples(train_items, dm.vocab, 4)[0])


def test_examples_are_context_windows_with_start_padding():
    vocab = Vocabulary.from_items(["emma"])
    x, y = make_examples(["emma"], vocab, block_size=3)
    e, m, a = vocab.encode("ema")
    assert x.tolist() == [[0, 0, 0], [0, 0, e], [0, e, m], [e, m, m], [m, m, a]]
    assert y.tolist() == [e, m, m, a, 0]  # the last target is the end mark


def test_block_size_none_means_longest_item_plus_one(tmp_path):
    assert CharDataModule(path=write(tmp_path, ITEMS), block_size=None, batch_size=4).block_size == 8


def test_blank_lines_and_trailing_whitespace_are_ignored(tmp_path):
    path = tmp_path / "items.txt"
    path.write_text("emma  \n\n   \nolivia\t\r\nava\n\n")
    assert read_items(path) == ["emma", "olivia", "ava"]


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
        (b"ann.a\nbob\nanna\n", "reserves"),
        ("anna\nbob\n".encode("utf-16"), "UTF-16 text"),
        ("anna\nbob\n".encode("utf-16-be").join([b"\xfe\xff", b""]), "UTF-16 text"),
        ("anna\nbob\n".encode("utf-32"), "UTF-32 text"),
    ],
)
def test_bad_data_files_raise_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        CharDataModule(path=str(path))
    assert "\n" not in str(err.value)


def test_utf8_bom_is_dropped_and_only_newlines_split_items(tmp_path):
    path = tmp_path / "items.txt"
    path.write_bytes("\ufeffemma\r\nli\u2028ly\nx\x0cy\nz\x1cw\nava\n".encode("utf-8"))
    assert read_items(path) == ["emma", "li\u2028ly", "x\x0cy", "z\x1cw", "ava"]
    dm = CharDataModule(path=write(tmp_path, ["\ufeff" + "ab"] + ["ab", "cd"] * 10, "bom.txt"), batch_size=2)
    assert "\ufeff" not in dm.vocab.chars


def test_non_regular_files_and_oversized_files_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(UserError, match="not a regular file"):
        CharDataModule(path=str(fifo))
    if os.path.exists("/dev/zero"):  # reading it would never end
        with pytest.raises(UserError, match="not a regular file"):
            read_items("/dev/zero")
    with pytest.raises(UserError, match="directory"):
        read_items(tmp_path)
    path = write(tmp_path, ITEMS)
    with pytest.raises(UserError, match="larger than data.max_bytes=10 bytes"):
        CharDataModule(path=path, max_bytes=10)


def test_missing_file_and_bad_block_size(tmp_path):
    with pytest.raises(UserError, match="not found"):
        CharDataModule(path=str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="block_size"):
        CharDataModule(path=None, block_size=0)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"eval_batch_size": 0}, "data.eval_batch_size"),
        ({"eval_batch_size": -5}, "data.eval_batch_size"),
        ({"batch_size": True}, "data.batch_size"),
        ({"batch_size": 2.5}, "data.batch_size"),
        ({"block_size": False}, "block_size"),
        ({"max_block_size": 0}, "data.max_block_size"),
        ({"max_bytes": -1}, "data.max_bytes"),
        ({"seed": "abc"}, "data.seed"),
        ({"split_seed": None}, "data.split_seed"),
        ({"steps_per_call": 0}, "steps_per_call"),
        ({"train_fraction": float("nan")}, "data.train_fraction"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(kwargs, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as err:
        CharDataModule(path=None, **kwargs)
    assert "\n" not in str(err.value)


def test_block_size_null_is_capped_with_the_longest_line_named(tmp_path):
    items = random_items(60) + ["q" * 300] + random_items(10, seed=1)
    path = write(tmp_path, [""] + items)  # a blank first line: line numbers count the file's lines
    too_long = r"line 62 of .* has 300 characters, above data.max_block_size=256.*block_size="
    with pytest.raises(UserError, match=too_long):
        CharDataModule(path=path, block_size=None)
    assert CharDataModule(path=path, block_size=None, max_block_size=400).block_size == 301
    assert CharDataModule(path=path, block_size=8).block_size == 8  # windows: long items are fine
    with pytest.raises(UserError, match=r"train_on=items needs block_size > the longest item \(300 .*line 62"):
        CharDataModule(path=path, block_size=64, train_on="items")


def test_preparation_logs_one_line(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="makemore_lab.data"):
        CharDataModule(path=write(tmp_path, ITEMS), block_size=3, batch_size=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "makemore_lab.data"]
    assert len(lines) == 1
    assert "10 items" in lines[0] and "26 characters" in lines[0] and "vocabulary 11" in lines[0]
    assert "prepared in" in lines[0]


def test_only_the_requested_splits_are_encoded(tmp_path):
    dm = CharDataModule(path=write(tmp_path, ITEMS * 3), splits=("val", "test"), batch_size=1000)
    assert set(dm.splits) == {"val", "test"}  # no train tokens, and batch_size is not checked against them
    with pytest.raises(KeyError, match="not prepared"):
        _ = dm.train_items


def test_minibatch_stream_is_the_same_for_any_steps_per_call():
    def first_indices(steps_per_call, count, **kwargs):
        stream = iter(MinibatchStream(n=100, batch_size=8, steps_per_call=steps_per_call, **kwargs))
        return torch.cat([next(stream) for _ in range(count // (8 * steps_per_call))])

    one, five = first_indices(1, 480), first_indices(5, 480)
    assert torch.equal(one, five)
    # each pass over the 100 examples yields 12 full minibatches (96 indices), all distinct; the 4 left are dropped
    assert len(set(one[:96].tolist())) == 96 and len(set(one[96:192].tolist())) == 96
    assert not torch.equal(one[:96], one[96:192])  # each pass a fresh permutation
    # a pure function of (seed, rank, minibatch index): started at minibatch 7, it continues the same sequence
    assert torch.equal(first_indices(1, 480 - 7 * 8, first_minibatch=7), one[7 * 8 :])
    assert torch.equal(first_indices(1, 480, first_minibatch=lambda: 0), one)
    assert not torch.equal(first_indices(1, 96, rank=1), one[:96])  # DDP ranks draw different minibatches
    assert not torch.equal(first_indices(1, 96, seed=1), one[:96])


def test_train_on_items_trains_on_whole_items_and_scores_windows(tmp_path):
    path = write(tmp_path, ITEMS)
    windows = CharDataModule(path=path, block_size=None, batch_size=2)
    items = CharDataModule(path=path, block_size=None, batch_size=2, train_on="items")
    assert items.num_train_examples == len(items.train_items) == 8
    ref_x, ref_y = reference_item_examples(items.train_items, items.vocab, 8)
    x, y = items.train_examples[torch.arange(8)]
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)  # the whole item, left-padded; target: its end mark
    for split in ("train", "val", "test"):  # evaluation is the same in both ways
        assert torch.equal(all_windows(items, split)[0], all_windows(windows, split)[0])
    batch_x, _ = next(iter(items.train_dataloader()))
    assert batch_x.shape == (2, 8)


def test_train_on_items_needs_the_whole_item_in_view(tmp_path):
    path = write(tmp_path, ["abcdef"] * 10)
    with pytest.raises(UserError, match="needs block_size > the longest item"):
        CharDataModule(path=path, block_size=6, batch_size=2, train_on="items")
    with pytest.raises(UserError, match="train_on must be"):
        CharDataModule(path=path, block_size=7, batch_size=2, train_on="names")


def window_loss(net, dm, split):
    """The loss scored window by window (the definition whole-item evaluation must reproduce)."""
    with torch.no_grad():
        x, y = all_windows(dm, split)
        return torch.nn.functional.cross_entropy(net.eval()(x), y).item()


@pytest.mark.parametrize(
    "build",
    [
        lambda V, T: Transformer(V, T, n_layer=2, n_head=2, n_embd=16, init="kaiming"),
        lambda V, T: RecurrentLM(V, T, cell="gru", n_embd=8, n_hidden=16, init="kaiming"),
    ],
)
@pytest.mark.slow
@pytest.mark.parametrize("block_size", [None, 6])  # 6: some items are too long for a whole-item window
def test_whole_item_evaluation_equals_the_window_loss(tmp_path, build, block_size):
    dm = CharDataModule(
        path=write(tmp_path, random_items(400, max_len=10)),
        block_size=block_size,
        eval_batch_size=64,
        whole_item_eval=True,
    )
    torch.manual_seed(0)
    net = build(dm.vocab_size, dm.block_size)
    batches = list(dm.val_dataloader())
    assert any(isinstance(b, WholeItems) for b in batches)
    assert any(isinstance(b, Windows) for b in batches) == (block_size == 6)
    assert sum(batch_loss(net, b)[1] for b in batches) == dm.num_examples("val")  # every character, once
    for split in ("train", "val", "test"):
        assert split_loss(net, dm, split) == pytest.approx(window_loss(net, dm, split), abs=1e-5)
    # the validation mean, weighted by each batch's count as Lightning weights it, is the same number
    with torch.no_grad():
        weighted = sum(loss.item() * n for loss, n in (batch_loss(net, b) for b in batches)) / dm.num_examples("val")
    assert weighted == pytest.approx(window_loss(net, dm, "val"), abs=1e-5)


def test_whole_item_batches_hold_no_padding(tmp_path):
    """O(characters): grouped by length, whole-item batches score each cell once (windows: block_size cells each)."""
    dm = CharDataModule(path=write(tmp_path, random_items(500, max_len=30)), block_size=None, eval_batch_size=50)
    batches = list(dm.eval_batches("train", whole_items=True))
    assert all(isinstance(b, WholeItems) for b in batches)
    assert sum(b.x.numel() for b in batches) == dm.num_examples("train")
    assert max(b.x.numel() for b in batches) <= 50 * dm.block_size  # a window batch's memory, at most


def test_per_item_losses_cover_each_item(tmp_path):
    dm = CharDataModule(path=write(tmp_path, random_items(100)), block_size=4)
    torch.manual_seed(0)
    net = MLP(dm.vocab_size, 4)
    losses, items = position_losses(net, next(iter(dm.eval_batches("test"))))
    assert len(losses) == len(items) == dm.num_examples("test")
    assert torch.equal(items.bincount(), dm.splits["test"].lengths + 1)


def fake_checkpoint_meta(path, dm):
    return {"data": {"path": path, "batch_size": 2}, "block_size": dm.block_size, "data_fingerprint": dm.fingerprint}


def test_a_checkpoints_data_file_changed_since_training_is_refused(tmp_path):
    path = write(tmp_path, ITEMS * 2)
    dm = CharDataModule(path=path, batch_size=2)
    meta = fake_checkpoint_meta(path, dm)
    assert checkpoint_datamodule(meta, dm.vocab, path=path, exact=True).fingerprint == dm.fingerprint
    write(tmp_path, ITEMS * 2 + ["abc"])
    with pytest.raises(
        UserError, match=r"not the file this checkpoint was trained on \(20 items.*21 items.*changed since"
    ):
        checkpoint_datamodule(meta, dm.vocab, path=path, exact=True)
    # on purpose, through data.path=: evaluated on that file
    other = write(tmp_path, ITEMS * 3, "other.txt")
    assert checkpoint_datamodule(meta, dm.vocab, path=other).fingerprint["items"] == 30
    del meta["data_fingerprint"]  # a checkpoint from before fingerprints: no check
    assert checkpoint_datamodule(meta, dm.vocab, path=path, exact=True).fingerprint["items"] == 21


def test_eval_builds_only_val_and_test_and_scores_whole_items(tmp_path, monkeypatch, capsys):
    from makemore_lab import evaluate

    path = write(tmp_path, random_items(200))
    dm = CharDataModule(path=path, block_size=None)
    net = RecurrentLM(dm.vocab_size, dm.block_size, n_embd=8, n_hidden=8)
    meta = fake_checkpoint_meta(path, dm)
    monkeypatch.setattr(evaluate, "load_trained_net", lambda ckpt: (net.eval(), dm.vocab, meta))
    built = []

    def spy(*args, **kwargs):
        built.append(checkpoint_datamodule(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(evaluate, "checkpoint_datamodule", spy)
    losses = evaluate.run(OmegaConf.create({"ckpt_path": "x.ckpt", "data": {"path": str(path)}}))
    assert set(built[0].splits) == {"val", "test"} and built[0].whole_item_eval
    assert losses["val"] == pytest.approx(window_loss(net, dm, "val"), abs=1e-5)
    assert "val_loss" in capsys.readouterr().out


@pytest.mark.parametrize(
    "model, extra",
    [
        ("mlp", []),
        ("rnn", ["model.n_embd=8", "model.n_hidden=16"]),  # whole items (data.train_on=items), every position scored
    ],
)
def test_resume_continues_the_minibatch_sequence(compose_train, small_names, tmp_path, monkeypatch, model, extra):
    """Stopped at step 20 and resumed from its checkpoint == the same run uninterrupted to step 40 (weights, 1e-6)."""
    seen_steps = []  # trainer.global_step when Lightning asks for the training loader: restored by then?
    original = CharDataModule.train_dataloader
    monkeypatch.setattr(
        CharDataModule, "train_dataloader", lambda self: seen_steps.append(self.trainer.global_step) or original(self)
    )
    common = [
        f"data.path={small_names}",
        f"model={model}",
        *extra,
        "schedule=constant",
        "callbacks=none",
        "logger=none",
        "num_samples=1",
        "trainer.val_check_interval=10",
    ]
    whole = train(compose_train(*common, "trainer.max_steps=40", f"paths.output_dir={tmp_path}/whole"))
    train(compose_train(*common, "trainer.max_steps=20", f"paths.output_dir={tmp_path}/part"))
    resumed = train(
        compose_train(
            *common,
            "trainer.max_steps=40",
            f"paths.output_dir={tmp_path}/resumed",
            f"ckpt_path={tmp_path}/part/checkpoints/last.ckpt",
        )
    )
    assert resumed["steps"] == whole["steps"] == 40
    assert seen_steps == [0, 0, 20]  # the resumed run's loader starts at the checkpoint's step

    def weights(run):
        return torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]

    a, b = weights("whole"), weights("resumed")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert not torch.equal(weights("part")["net.lm_head.weight"], a["net.lm_head.weight"])  # it did train on


def test_lightning_validation_on_whole_items_reports_the_exact_split_loss(tmp_path):
    """The val loader's WholeItems batches reach validation_step intact; the logged mean is the split's loss."""
    import pytorch_lightning as pl

    from makemore_lab.module import CharLM

    dm = CharDataModule(
        path=write(tmp_path, random_items(300)), block_size=None, eval_batch_size=16, whole_item_eval=True
    )
    torch.manual_seed(0)
    net = Transformer(dm.vocab_size, dm.block_size, n_layer=1, n_head=2, n_embd=8)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    (metrics,) = trainer.validate(CharLM(net, optimizer=None), datamodule=dm, verbose=False)
    assert metrics["val/loss"] == pytest.approx(window_loss(net, dm, "val"), abs=1e-5)
