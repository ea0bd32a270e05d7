"""Character data: one item per line -> (context window, next character) examples, split as in the lectures."""

import random
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from makemore_lab.errors import UserError

BOUNDARY = "."  # index 0: marks both the start and the end of an item, as in the lectures


def builtin_names_path() -> Path:
    """makemore's names.txt (32,033 names) shipped inside the package, so training needs no download."""
    return Path(str(resources.files("makemore_lab") / "datasets" / "names.txt"))


def read_items(path: str | Path | None) -> list[str]:
    """Read one item per line; blank lines and surrounding whitespace are ignored. None means names.txt."""
    path = builtin_names_path() if path is None else Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"data path is a directory, not a file: {path}") from None
    except OSError as err:
        raise UserError(f"cannot read data file {path}: {err.strerror}") from None
    if b"\x00" in raw:
        raise UserError(f"data file {path} looks binary (it contains NUL bytes); expected text, one item per line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"data file {path} is not UTF-8 text (bad byte at offset {err.start})") from None
    items = [line.strip() for line in text.splitlines()]
    items = [item for item in items if item]
    if not items:
        raise UserError(f"data file {path} has no items (it is empty or only blank lines)")
    bad = next((item for item in items if BOUNDARY in item), None)
    if bad is not None:
        raise UserError(f"data item {bad!r} contains {BOUNDARY!r}, which the vocabulary reserves for start/end")
    return items


@dataclass(frozen=True)
class Vocabulary:
    """'.' at index 0, then the sorted characters of the data."""

    chars: tuple[str, ...]

    @classmethod
    def from_items(cls, items: list[str]) -> "Vocabulary":
        return cls((BOUNDARY, *sorted(set("".join(items)))))

    def __len__(self) -> int:
        return len(self.chars)

    @cached_property
    def index(self) -> dict[str, int]:
        return {ch: i for i, ch in enumerate(self.chars)}

    def encode(self, item: str) -> list[int]:
        return [self.index[ch] for ch in item]

    def decode(self, indices) -> str:
        return "".join(self.chars[i] for i in indices)


def split_items(items: list[str], train_fraction: float, val_fraction: float, seed: int):
    """The lecture split: random.seed(42); random.shuffle(words); cut at 80% and 90%."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    n1 = int(train_fraction * len(shuffled))
    n2 = int((train_fraction + val_fraction) * len(shuffled))
    return shuffled[:n1], shuffled[n1:n2], shuffled[n2:]


def make_examples(items: list[str], vocab: Vocabulary, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every position of every item (and its end mark) becomes one example: the block_size previous indices -> next."""
    contexts, targets = [], []
    for item in items:
        context = [0] * block_size
        for ix in vocab.encode(item) + [0]:
            contexts.append(context)
            targets.append(ix)
            context = context[1:] + [ix]
    return torch.tensor(contexts, dtype=torch.long).view(-1, block_size), torch.tensor(targets, dtype=torch.long)


def make_item_examples(items: list[str], vocab: Vocabulary, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One example per item: the whole item, left-padded to block_size, -> its end mark.

    Its window holds every other window of the item (the item's prefixes), so a sequence model scoring every
    position (CharLM's all_positions) learns all of the item's characters from this one example.
    """
    longest = max(map(len, items))
    if longest >= block_size:
        raise UserError(
            f"data.train_on=items needs block_size > the longest item ({longest} characters); got {block_size}: "
            "use block_size=null (longest item + 1) or data.train_on=windows"
        )
    contexts = [[0] * (block_size - len(item)) + vocab.encode(item) for item in items]
    return torch.tensor(contexts, dtype=torch.long), torch.zeros(len(items), dtype=torch.long)


class TensorPairs(torch.utils.data.Dataset):
    """Indexed with a whole list of indices at once, so a batch is two tensor gathers, not a Python collate."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, indices):
        return self.x[indices], self.y[indices]


class IndexBatches(torch.utils.data.Sampler):
    """Index tensors of `batch_size` over `n` examples, in order: one pass for evaluation."""

    def __init__(self, n: int, batch_size: int):
        self.n, self.batch_size = n, batch_size

    def __iter__(self):
        yield from torch.arange(self.n).split(self.batch_size)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


class MinibatchStream(torch.utils.data.Sampler):
    """An endless stream of training index tensors, each `steps_per_call` minibatches of `batch_size`.

    Minibatches come from one random permutation of the split after another; each pass drops its short last
    minibatch (BatchNorm cannot train on a single example). Calls never straddle a pass, so every call holds
    exactly steps_per_call minibatches, and the minibatch sequence does not depend on steps_per_call.
    Training is as long as trainer.max_steps says: there are no epochs. The generator is seeded from torch's
    global generator (set by `seed`) plus the process rank, so DDP processes draw different minibatches.
    """

    def __init__(self, n: int, batch_size: int, steps_per_call: int, rank: int = 0):
        self.n, self.batch_size, self.steps_per_call, self.rank = n, batch_size, steps_per_call, rank

    def __iter__(self):
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())) + self.rank)
        call_size = self.batch_size * self.steps_per_call
        pending = torch.empty(0, dtype=torch.long)
        while True:
            order = torch.randperm(self.n, generator=generator)
            pending = torch.cat([pending, order[: self.n - self.n % self.batch_size]])
            while len(pending) >= call_size:
                yield pending[:call_size]
                pending = pending[call_size:]


class CharDataModule(pl.LightningDataModule):
    """Loads the items, builds the vocabulary and the three splits as tensors.

    `block_size=None` means "the longest item + 1", so a sequence model sees a whole item (makemore.py's choice).
    `vocab` fixes the vocabulary (a trained model's) instead of deriving it from the data.
    `steps_per_call`: a training batch holds this many minibatches, cut apart by the module (see CharLM).
    `train_on`: "windows" (every position of every item is one training example, the lectures' way) or "items"
    (one example per whole item, every position scored: makemore.py's way for sequence models). Validation and
    test always score every window, so the losses of both ways are the same per-character measure.
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
    ):
        super().__init__()
        if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
            raise UserError(f"block_size must be a positive integer (or null for longest item + 1), got {block_size!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"data.batch_size must be a positive integer, got {batch_size!r}")
        if not (0 < train_fraction < 1 and 0 < val_fraction < 1 and train_fraction + val_fraction < 1):
            raise UserError("data.train_fraction and data.val_fraction must be in (0, 1) and leave room for a test split")
        if train_on not in ("windows", "items"):
            raise UserError(f"data.train_on must be 'windows' or 'items', got {train_on!r}")
        self.path, self.batch_size, self.eval_batch_size = path, batch_size, eval_batch_size
        self.train_on = train_on
        self.steps_per_call = steps_per_call
        self.train_fraction, self.val_fraction, self.split_seed = train_fraction, val_fraction, split_seed
        self.items = read_items(path)
        self.source = None if path is None else str(Path(path).resolve())  # absolute: checkpoints work from any dir
        self.vocab = vocab or Vocabulary.from_items(self.items)
        unknown = set("".join(self.items)) - set(self.vocab.chars)
        if unknown:
            raise UserError(f"the data has characters outside the vocabulary: {''.join(sorted(unknown))!r}")
        self.block_size = block_size if block_size is not None else max(map(len, self.items)) + 1
        self.train_items, self.val_items, self.test_items = split_items(
            self.items, train_fraction, val_fraction, split_seed
        )
        if not (self.train_items and self.val_items and self.test_items):
            raise UserError(
                f"data file {self.path or 'names.txt'} has {len(self.items)} items: too few to make non-empty "
                "train/val/test splits"
            )
        self.splits = {
            name: TensorPairs(*make_examples(items, self.vocab, self.block_size))
            for name, items in (("train", self.train_items), ("val", self.val_items), ("test", self.test_items))
        }
        # What training draws minibatches from; `splits` stays the windows, so every split is scored the same way.
        self.train_set = self.splits["train"]
        if train_on == "items":
            self.train_set = TensorPairs(*make_item_examples(self.train_items, self.vocab, self.block_size))
        if len(self.train_set) < batch_size:
            raise UserError(
                f"data.batch_size ({batch_size}) is larger than the training split ({len(self.train_set)} "
                f"{train_on}): lower data.batch_size or use more data"
            )

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def num_examples(self, split: str) -> int:
        """Characters scored in `split` (each item's characters and its end mark): one window each."""
        return len(self.splits[split])

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        sampler = MinibatchStream(len(self.train_set), self.batch_size, self.steps_per_call, rank)
        # batch_size=None turns off per-item collation: the sampler hands the dataset a whole batch of indices.
        return DataLoader(self.train_set, sampler=sampler, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self.splits[split]
        return DataLoader(dataset, sampler=IndexBatches(len(dataset), self.eval_batch_size), batch_size=None)
