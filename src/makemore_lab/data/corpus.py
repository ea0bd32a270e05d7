"""CharData: a file -> vocabulary, the lecture split, each split as one flat token tensor.

The data module without Lightning: what sample.py and eval.py build from a checkpoint, so that they start without
Lightning's ~3 s import. module.py's CharDataModule is CharData as a LightningDataModule, with the loaders that
training reads.
"""

import logging
import random
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from makemore_lab import config_schema
from makemore_lab.data.batches import EvalBatches, TrainExamples
from makemore_lab.data.encoding import TokenSplit, Vocabulary, code_points, flat_text, present_code_points
from makemore_lab.data.reading import DEFAULT_MAX_BYTES, line_number, read_data_file
from makemore_lab.errors import UserError

log = logging.getLogger("makemore_lab.data")

SPLITS = ("train", "val", "test")
DEFAULT_MAX_BLOCK_SIZE = 256  # block_size=null beyond this is refused: one outlier line must not size every batch


def split_items(items: list[str], train_fraction: float, val_fraction: float, seed: int):
    """The lecture split: random.seed(42); random.shuffle(words); cut at 80% and 90%."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    n1 = int(train_fraction * len(shuffled))
    n2 = int((train_fraction + val_fraction) * len(shuffled))
    return shuffled[:n1], shuffled[n1:n2], shuffled[n2:]


def check_values(
    block_size,
    batch_size,
    eval_batch_size,
    train_fraction,
    val_fraction,
    split_seed,
    steps_per_call,
    train_on,
    seed,
    max_block_size,
    max_bytes,
    splits,
) -> None:
    """The arguments against config_schema's declared rules (one line naming the key), and what no single key
    can say: the two fractions must leave room for a test split."""
    data = {
        "batch_size": batch_size,
        "eval_batch_size": eval_batch_size,
        "train_fraction": train_fraction,
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "train_on": train_on,
        "seed": seed,
        "max_block_size": max_block_size,
        "max_bytes": max_bytes,
    }
    values = OmegaConf.create({"block_size": block_size, "steps_per_call": steps_per_call, "data": data})
    config_schema.validate(values, config_schema.DATA_RULES)
    if train_fraction + val_fraction >= 1:
        raise UserError(
            f"data.train_fraction ({train_fraction}) + data.val_fraction ({val_fraction}) must be below 1, "
            "to leave room for a test split"
        )
    if not splits or any(s not in SPLITS for s in splits):
        raise UserError(f"splits must name some of {', '.join(SPLITS)}, got {splits!r}")


class CharData:
    """Loads the items, builds the vocabulary and the three splits as flat token tensors (O(characters) memory).

    `block_size=None` means "the longest item + 1", so a sequence model sees a whole item (makemore.py's choice),
    up to `max_block_size`: beyond it one line says which item is that long and how to choose block_size.
    `vocab` fixes the vocabulary (a trained model's) instead of deriving it from the data.
    `steps_per_call`: a training batch holds this many minibatches, cut apart by the module (see CharLM).
    `train_on`: "windows" (every position of every item is one training example, the lectures' way) or "items"
    (one example per whole item, every position scored: makemore.py's way for sequence models; every item must
    fit the window, block_size > its length, or one line says so).
    `seed`: the training minibatch sequence is a pure function of (seed, rank, step): a resumed run continues it.
    `whole_item_eval`: the val/test loaders hand out whole items (set it when the model scores every position,
    models.scores_every_position(net)); otherwise windows. Both give the same per-character loss.
    `splits`: which splits to encode (eval needs val/test only; sampling's novelty check the train items only).
    """

    def __init__(
        self,
        path: str | None = None,
        block_size: int | None = 3,
        batch_size: int = 32,
        eval_batch_size: int = 4096,
        train_fraction: float = 0.8,
        val_fraction: float = 0.1,
        split_seed: int = 42,
        vocab: Vocabulary | None = None,
        steps_per_call: int = 1,
        train_on: str = "windows",
        seed: int = 0,
        whole_item_eval: bool = False,
        max_block_size: int = DEFAULT_MAX_BLOCK_SIZE,
        max_bytes: int = DEFAULT_MAX_BYTES,
        splits: tuple[str, ...] = SPLITS,
    ):
        super().__init__()  # CharDataModule's LightningDataModule.__init__, next in its method order
        splits = tuple(splits)
        check_values(
            block_size,
            batch_size,
            eval_batch_size,
            train_fraction,
            val_fraction,
            split_seed,
            steps_per_call,
            train_on,
            seed,
            max_block_size,
            max_bytes,
            splits,
        )
        started = time.perf_counter()
        self.path, self.batch_size, self.eval_batch_size = path, batch_size, eval_batch_size
        self.train_on, self.steps_per_call, self.seed = train_on, steps_per_call, seed
        self.whole_item_eval = whole_item_eval
        self.train_fraction, self.val_fraction, self.split_seed = train_fraction, val_fraction, split_seed
        data = read_data_file(path, max_bytes)
        self.source = None if path is None else str(Path(path).resolve())  # absolute: checkpoints work from any dir
        self.fingerprint = {"items": len(data.items), "sha256": data.sha256}
        longest = max(data.items, key=len)
        self.block_size = self._choose_block_size(block_size, longest, data.path, max_block_size)
        by_split = dict(zip(SPLITS, split_items(data.items, train_fraction, val_fraction, split_seed)))
        empty = [name for name, items in by_split.items() if not items]
        if empty:  # the fractions or the file: say both, the user knows which one to change
            raise UserError(
                f"data.train_fraction={train_fraction} and data.val_fraction={val_fraction} leave the "
                f"{' and '.join(empty)} split empty: data file {self.path or 'names.txt'} has {len(data.items)} items "
                "(too few for these fractions); change the fractions or use more data"
            )
        file = data.path
        del data  # the file's item list: the split's lists hold the items now, until they are encoded
        self.vocab, self.splits = self._encode(by_split, vocab, splits)
        self._check_training_set(longest, file)
        log.info(
            "data: %s items, %s characters, vocabulary %d, block_size %d, prepared in %.1f s",
            f"{self.fingerprint['items']:,}",
            f"{sum(len(s) - s.num_items for s in self.splits.values()):,}",
            self.vocab_size,
            self.block_size,
            time.perf_counter() - started,
        )

    @classmethod
    def _encode(cls, by_split: dict, vocab: Vocabulary | None, wanted) -> tuple[Vocabulary, dict[str, TokenSplit]]:
        """The wanted splits as token tensors, and the vocabulary (if not given) of every split's characters."""
        texts = {name: flat_text(by_split.pop(name)) for name in SPLITS}  # each item list goes once joined
        vocab = vocab or cls._vocabulary_of(texts.values())
        return vocab, {name: TokenSplit(vocab.encode_flat(texts.pop(name))) for name in SPLITS if name in wanted}

    @staticmethod
    def _vocabulary_of(texts) -> Vocabulary:
        """Every character that occurs in any split (a counting pass over code points: no per-character Python)."""
        present = np.unique(np.concatenate([present_code_points(code_points(text)) for text in texts]))
        return Vocabulary.from_code_points(present)

    @staticmethod
    def _choose_block_size(block_size: int | None, longest: str, path: Path, max_block_size: int) -> int:
        if block_size is not None:
            if block_size > max_block_size:  # every training call gathers steps_per_call x batch_size windows of it
                raise UserError(
                    f"block_size={block_size:,} is above data.max_block_size={max_block_size}: each "
                    "minibatch holds data.batch_size windows of block_size characters; raise "
                    "data.max_block_size to allow it"
                )
            return block_size
        if len(longest) + 1 > max_block_size:
            raise UserError(
                f"block_size=null (longest item + 1) would be {len(longest) + 1:,}: "
                f"line {line_number(path, longest):,} of {path} has {len(longest):,} characters, "
                f"above data.max_block_size={max_block_size}. Set block_size=<context length> (e.g. a little above "
                "your typical item's length) with data.train_on=windows, or raise data.max_block_size"
            )
        return len(longest) + 1

    def _check_training_set(self, longest: str, path: Path) -> None:
        if "train" not in self.splits:
            return
        if self.train_on == "items" and len(longest) >= self.block_size:
            raise UserError(
                f"data.train_on=items needs block_size > the longest item ({len(longest)} characters, line "
                f"{line_number(path, longest):,} of {path}); got {self.block_size}: use block_size=null (longest "
                "item + 1) or data.train_on=windows"
            )
        if self.num_train_examples < self.batch_size:
            raise UserError(
                f"data.batch_size ({self.batch_size}) is larger than the training split ({self.num_train_examples} "
                f"{self.train_on}): lower data.batch_size or use more data"
            )

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def num_examples(self, split: str) -> int:
        """The split's scored characters: its characters plus one end mark per item (= its number of windows)."""
        return len(self._split(split))

    @property
    def num_train_examples(self) -> int:
        """What a training minibatch draws from: windows, or whole items with train_on=items."""
        return len(self.train_examples)

    @property
    def train_examples(self) -> TrainExamples:
        return TrainExamples(self._split("train"), self.block_size, self.train_on)

    def items_of(self, split: str) -> list[str]:
        """A split's items in split order (decoded from its tokens: the strings are not kept)."""
        return self._split(split).items(self.vocab)

    train_items = property(lambda self: self.items_of("train"))
    val_items = property(lambda self: self.items_of("val"))
    test_items = property(lambda self: self.items_of("test"))

    def _split(self, name: str) -> TokenSplit:
        if name not in self.splits:
            raise KeyError(f"split {name!r} was not prepared (this {type(self).__name__} has {', '.join(self.splits)})")
        return self.splits[name]

    def eval_batches(self, split: str, whole_items: bool | None = None) -> EvalBatches:
        """One evaluation pass over `split` (see EvalBatches); whole items if asked, else as whole_item_eval says."""
        whole = self.whole_item_eval if whole_items is None else whole_items
        return EvalBatches(self._split(split), self.block_size, self.eval_batch_size, whole)
