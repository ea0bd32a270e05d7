"""Items as tokens: the vocabulary, and each split kept as ONE flat token tensor from which windows are gathered.

A split is stored as ".item1.item2.….itemN." (the boundary '.' is token 0): O(characters) memory. The example
whose target sits at flat position p (an item's character, or the '.' that ends the item) has as context the
block_size tokens before p, with every position left of the item's opening '.' read as 0. That is exactly the
lectures' window (zero padding, then the item's prefix): windows are gathered at batch time, never materialised.
Window w of a split is the target at position w + 1, so windows come in the lectures' order (item by item,
each item's characters and then its end mark).
"""

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from makemore_lab.data.reading import BOUNDARY
from makemore_lab.errors import UserError

NUMPY_DTYPES = {torch.uint8: np.uint8, torch.int16: np.int16, torch.int32: np.int32}


@dataclass(frozen=True)
class Vocabulary:
    """'.' at index 0, then the sorted characters of the data."""

    chars: tuple[str, ...]

    @classmethod
    def from_items(cls, items: list[str]) -> "Vocabulary":
        return cls((BOUNDARY, *sorted(set("".join(items)))))

    @classmethod
    def from_code_points(cls, present: np.ndarray) -> "Vocabulary":
        """From the code points that occur in the data (sorted code points == Python's sorted() of the chars)."""
        chars = [chr(c) for c in present.tolist() if chr(c) != BOUNDARY]
        return cls((BOUNDARY, *chars))

    def __len__(self) -> int:
        return len(self.chars)

    @cached_property
    def index(self) -> dict[str, int]:
        return {ch: i for i, ch in enumerate(self.chars)}

    def encode(self, item: str) -> list[int]:
        return [self.index[ch] for ch in item]

    def decode(self, indices) -> str:
        return "".join(self.chars[i] for i in indices)

    @cached_property
    def token_dtype(self) -> torch.dtype:
        """The smallest dtype holding every index: a byte per character for any vocabulary up to 256."""
        if len(self) <= 256:
            return torch.uint8
        return torch.int16 if len(self) <= 2**15 else torch.int32

    @cached_property
    def _lookup(self) -> np.ndarray:
        """Code point -> token index (-1: not in the vocabulary), so encoding is one vectorised gather."""
        code_points = np.array([ord(ch) for ch in self.chars])
        table = np.full(int(code_points.max()) + 1, -1, dtype=np.int32)
        table[code_points] = np.arange(len(self.chars))
        return table

    def encode_flat(self, text: str) -> torch.Tensor:
        """Encode a whole string at once (vectorised); a character outside the vocabulary is a UserError."""
        points = code_points(text)
        table = self._lookup
        tokens = table[np.minimum(points, len(table) - 1)]
        unknown = (tokens < 0) | (points >= len(table))
        if unknown.any():
            chars = "".join(sorted({chr(c) for c in np.unique(points[unknown]).tolist()}))
            raise UserError(f"the data has characters outside the vocabulary: {chars!r}")
        return torch.from_numpy(tokens.astype(NUMPY_DTYPES[self.token_dtype], copy=False))

    def decode_flat(self, tokens: torch.Tensor) -> str:
        """The inverse of encode_flat, vectorised."""
        points = np.array([ord(ch) for ch in self.chars], dtype="<u4")[tokens.numpy().astype(np.int64)]
        return points.tobytes().decode("utf-32-le")


def code_points(text: str) -> np.ndarray:
    """The string's code points as a uint32 array (4 bytes per character, transient)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def present_code_points(points: np.ndarray) -> np.ndarray:
    """Which code points occur, sorted: a counting pass, O(characters) (np.unique would sort them all)."""
    return np.flatnonzero(np.bincount(points))


def flat_text(items: list[str]) -> str:
    """'.item1.item2.….' : every item opened and closed by the boundary."""
    return BOUNDARY + BOUNDARY.join(items) + BOUNDARY if items else BOUNDARY


class TokenSplit:
    """One split: `tokens` ('.item.item….item.', token 0 = '.') and `starts`, each item's opening '.'.

    Example (window) w predicts the token at position w + 1; `len(split)` is the number of windows, i.e. the
    split's characters plus one end mark per item: every scored character of the split.
    """

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens
        self.starts = (tokens == 0).nonzero()[:-1, 0]  # (items,), int64: the last '.' only closes the last item

    def __len__(self) -> int:
        return len(self.tokens) - 1

    @property
    def num_items(self) -> int:
        return len(self.starts)

    @cached_property
    def lengths(self) -> torch.Tensor:
        """Each item's number of characters (its windows are one more: the end mark)."""
        ends = torch.cat([self.starts[1:], torch.tensor([len(self.tokens) - 1])])
        return ends - self.starts - 1

    def item_of(self, targets: torch.Tensor) -> torch.Tensor:
        """The item each target position belongs to (an end mark belongs to the item it ends)."""
        return torch.searchsorted(self.starts, targets) - 1

    def owners(self, targets: torch.Tensor) -> torch.Tensor:
        """The opening '.' of the item of each target position."""
        return self.starts[self.item_of(targets)]

    def contexts(self, targets: torch.Tensor, width: int, owners: torch.Tensor | None = None) -> torch.Tensor:
        """(B, width) int64: the `width` tokens before each target position, 0 left of the target's item.

        One index computation, one gather, one mask: no Python loop per example or character.
        """
        owners = self.owners(targets) if owners is None else owners
        positions = targets[:, None] - width + torch.arange(width)
        x = self.tokens[positions.clamp(min=0)].long()
        return x.masked_fill_(positions < owners[:, None], 0)

    @cached_property
    def token_base(self) -> int:
        """One more than the largest token: the base in which distinct_contexts writes a context as a number."""
        return int(self.tokens.max()) + 1 if len(self.tokens) else 1

    def distinct_contexts(
        self, index: torch.Tensor, width: int, owners: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(order, bounds) for windows `index` (1-D int64): `order` sorts the windows by context (stably), and in
        that order the windows of the k-th of their distinct contexts are bounds[k]:bounds[k + 1] (bounds: U + 1
        values from 0 to len(index)); index[order[bounds[:-1]]] is the first window of each distinct context.

        Each context is written as one int64, its `width` tokens as digits in base token_base (renumbered by
        torch.unique whenever another digit could overflow), built one column at a time: O(len(index)) memory, not
        len(index) x width; one sort finds the distinct ones. Names at block_size 8 have 70,000 distinct contexts
        among 228,000 windows; at 3, 11,000.
        """
        targets = index + 1
        owners = self.owners(targets) if owners is None else owners
        codes, bound = torch.zeros(len(index), dtype=torch.long), 1
        for column in range(width):
            if bound * self.token_base >= 2**62:
                uniques, codes = torch.unique(codes, return_inverse=True)
                bound = len(uniques)
            positions = targets - width + column
            token = self.tokens[positions.clamp(min=0)].long().masked_fill_(positions < owners, 0)
            codes = codes.mul_(self.token_base).add_(token)
            bound *= self.token_base
        codes, order = torch.sort(codes, stable=True)
        if not len(codes):
            return order, torch.zeros(1, dtype=torch.long)
        changes = (codes[1:] != codes[:-1]).nonzero()[:, 0] + 1
        return order, torch.cat([torch.tensor([0]), changes, torch.tensor([len(codes)])])

    def windows(self, index: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows `index` (1-D int64): (contexts (B, block_size), next characters (B,))."""
        targets = index + 1
        return self.contexts(targets, block_size), self.tokens[targets].long()

    def whole_items(self, items: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Items `items`, each left-padded to `width` > its length: (B, width), and the end mark (B,) of zeros.

        The format of data.train_on=items (and of whole-item evaluation): the window of the item's end mark, which
        holds every other window of the item. Needs width > every item's length.
        """
        starts = self.starts[items]
        ends = starts + self.lengths[items] + 1
        return self.contexts(ends, width, owners=starts), torch.zeros(len(items), dtype=torch.long)

    def items(self, vocab: Vocabulary) -> list[str]:
        """The split's items as strings, in split order."""
        return vocab.decode_flat(self.tokens).split(BOUNDARY)[1:-1]


def encode_split(items: list[str], vocab: Vocabulary) -> TokenSplit:
    return TokenSplit(vocab.encode_flat(flat_text(items)))


def make_examples(items: list[str], vocab: Vocabulary, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window of `items`, materialised: O(characters x block_size) memory, for small data and tests only."""
    split = encode_split(items, vocab)
    return split.windows(torch.arange(len(split)), block_size)


def make_item_examples(items: list[str], vocab: Vocabulary, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One example per item: the whole item, left-padded to block_size, -> its end mark (for small data and tests).

    Its window holds every other window of the item (the item's prefixes), so a sequence model scoring every
    position (all_positions) learns all of the item's characters from this one example.
    """
    longest = max(map(len, items))
    if longest >= block_size:
        raise UserError(
            f"data.train_on=items needs block_size > the longest item ({longest} characters); got {block_size}: "
            "use block_size=null (longest item + 1) or data.train_on=windows"
        )
    split = encode_split(items, vocab)
    return split.whole_items(torch.arange(split.num_items), block_size)
