"""What the loaders hand the model: training minibatches (a pure function of the step) and evaluation batches.

A batch is a named tuple saying what it holds, so `losses.batch_loss` knows how to score it:
- `Windows(x, context, y, item)`: x (U, block_size) distinct contexts, each once; per scored window (B of them):
  `context` its row of x, `y` its next character. A model's output for a window depends on its context alone
  (eval mode), so each distinct context is run once however many windows share it.
- `WholeItems(x, y, item)`: x (B, W) whole items left-padded to W (longer than each item), y (B,) their end marks
  (0): every position is scored (by a model that scores every position), the padding ignored.
`item` is each scored window's (or row's) item index within its split (for per-item losses); the model never
sees it.
"""

import hashlib
from typing import NamedTuple

import torch

from makemore_lab.data.encoding import TokenSplit


class Windows(NamedTuple):
    x: torch.Tensor
    context: torch.Tensor
    y: torch.Tensor
    item: torch.Tensor


class WholeItems(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor
    item: torch.Tensor


class TrainExamples(torch.utils.data.Dataset):
    """The training examples of a split, gathered from its tokens when a whole call's indices arrive at once.

    `train_on="windows"`: example i is window i; `"items"`: example i is item i, left-padded to block_size.
    """

    def __init__(self, split: TokenSplit, block_size: int, train_on: str):
        self.split, self.block_size, self.train_on = split, block_size, train_on

    def __len__(self) -> int:
        return self.split.num_items if self.train_on == "items" else len(self.split)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train_on == "items":
            return self.split.whole_items(index, self.block_size)
        return self.split.windows(index, self.block_size)


def pass_seed(seed: int, rank: int, pass_index: int) -> int:
    """A generator seed for one pass over the training split: a pure function of (seed, rank, pass)."""
    digest = hashlib.sha256(f"makemore_lab.data {seed} {rank} {pass_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class MinibatchStream(torch.utils.data.Sampler):
    """An endless stream of training index tensors, each `steps_per_call` minibatches of `batch_size`.

    Minibatch m is a pure function of (seed, rank, m): pass k = m // (n // batch_size) over the split is the
    permutation drawn from pass_seed(seed, rank, k), and minibatch m is its (m mod per_pass)-th slice. Each pass
    drops its short last minibatch (BatchNorm cannot train on a single example) and no minibatch straddles two
    passes, so the sequence does not depend on steps_per_call, and a stream started at minibatch m (the
    trainer's global_step on resume: one minibatch per optimizer step) continues a run exactly where it stopped.
    DDP ranks draw different permutations. `first_minibatch` may be a callable, read when iteration starts.
    """

    def __init__(self, n: int, batch_size: int, steps_per_call: int, rank: int = 0, seed: int = 0, first_minibatch=0):
        self.n, self.batch_size, self.steps_per_call = n, batch_size, steps_per_call
        self.rank, self.seed, self.first_minibatch = rank, seed, first_minibatch
        self.per_pass = n // batch_size
        self._cached: tuple[int, torch.Tensor] | None = None

    def permutation(self, pass_index: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != pass_index:
            generator = torch.Generator().manual_seed(pass_seed(self.seed, self.rank, pass_index))
            self._cached = pass_index, torch.randperm(self.n, generator=generator)
        return self._cached[1]

    def minibatches(self, first: int, count: int) -> torch.Tensor:
        """Minibatches first .. first + count - 1, concatenated: (count * batch_size,)."""
        parts, m, end = [], first, first + count
        while m < end:
            pass_index, offset = divmod(m, self.per_pass)
            take = min(end - m, self.per_pass - offset)
            parts.append(self.permutation(pass_index)[offset * self.batch_size : (offset + take) * self.batch_size])
            m += take
        return torch.cat(parts)

    def __iter__(self):
        m = self.first_minibatch() if callable(self.first_minibatch) else self.first_minibatch
        while True:
            yield self.minibatches(m, self.steps_per_call)
            m += self.steps_per_call


# Windows whose contexts are made distinct together, at most: one span's index tensors (~80 bytes a window while
# they are built, 24 kept) are all an evaluation pass holds at once, whatever the size of the split (~80 MB at most);
# a split of names (228,000 windows) is one span.
DISTINCT_SPAN = 2**20


class EvalBatches(torch.utils.data.Dataset):
    """One pass over a split for evaluation; element i is batch i (a DataLoader with batch_size=None walks it).

    Windows: the split's windows, each distinct context once (per span of DISTINCT_SPAN windows), `batch_size`
    distinct contexts a batch with every window that has one of them; every window is scored exactly once, in
    order of its context. Names at block_size 3 have 5% as many distinct contexts as windows, at 8 31%: scoring
    costs that much of running every window. Whole items (`whole_items=True`, for a model that scores every
    position): items grouped by length, so a batch needs no padding, each batch at most batch_size x block_size
    token cells (the memory of a window batch); O(characters) work instead of O(characters x block_size). An item
    as long as block_size or longer does not fit a whole-item window (the model could not see its whole prefix),
    so its windows are scored as windows: the loss is the same number.
    """

    def __init__(self, split: TokenSplit, block_size: int, batch_size: int, whole_items: bool):
        self.split, self.block_size, self.batch_size = split, block_size, batch_size
        # ("windows", (span, first context, stop)) | ("items", item index tensor)
        self.plans: list[tuple[str, object]] = []
        self.spans: list[tuple[int, int] | torch.Tensor] = []  # window ranges (first, stop) or window index tensors
        self._distinct: tuple[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None  # the last span's
        if not whole_items:
            n = len(split)
            self._plan_windows([(lo, min(lo + DISTINCT_SPAN, n)) for lo in range(0, n, DISTINCT_SPAN)])
            return
        lengths = split.lengths
        fits = (lengths < block_size).nonzero()[:, 0]
        by_length = fits[torch.sort(lengths[fits], stable=True).indices]
        sizes, counts = torch.unique_consecutive(lengths[by_length], return_counts=True)
        for length, group in zip(sizes.tolist(), by_length.split(counts.tolist())):
            per_batch = max(1, batch_size * block_size // (length + 1))
            self.plans += [("items", chunk) for chunk in group.split(per_batch)]
        if len(fits) < split.num_items:  # windows of the items too long for a whole-item window
            long_window = torch.repeat_interleave(lengths >= block_size, lengths + 1)
            self._plan_windows(list(long_window.nonzero()[:, 0].split(DISTINCT_SPAN)))

    def _plan_windows(self, spans: list) -> None:
        for span in spans:
            self.spans.append(span)
            contexts = len(self._distinct_of(len(self.spans) - 1)[2]) - 1
            self.plans += [
                ("windows", (len(self.spans) - 1, lo, min(lo + self.batch_size, contexts)))
                for lo in range(0, contexts, self.batch_size)
            ]

    def _distinct_of(self, span: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(windows, items, bounds) of span `span`: its windows in order of their context, their items, and where
        each distinct context's windows begin and end in that order (TokenSplit.distinct_contexts). The last
        span's is kept."""
        if self._distinct is None or self._distinct[0] != span:
            windows = self.spans[span]
            windows = torch.arange(*windows) if isinstance(windows, tuple) else windows
            items = self.split.item_of(windows + 1)
            order, bounds = self.split.distinct_contexts(windows, self.block_size, owners=self.split.starts[items])
            self._distinct = (span, (windows[order], items[order], bounds))
        return self._distinct[1]

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, i: int) -> Windows | WholeItems:
        kind, plan = self.plans[i]
        if kind == "items":
            width = int(self.split.lengths[plan].max()) + 1
            return WholeItems(*self.split.whole_items(plan, width), plan)
        span, lo, hi = plan
        windows, items, bounds = self._distinct_of(span)
        starts, start, stop = bounds[lo:hi], int(bounds[lo]), int(bounds[hi])
        context = torch.repeat_interleave(torch.arange(hi - lo), bounds[lo + 1 : hi + 1] - starts)
        x, _ = self.split.windows(windows[starts], self.block_size)  # each distinct context from its first window
        scored = windows[start:stop]
        return Windows(x, context, self.split.tokens[scored + 1].long(), items[start:stop])
