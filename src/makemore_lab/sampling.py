"""Generate items from any model: one function shared by sample.py and the training run's printed samples.

Bounded memory whatever is asked: items are generated `SAMPLE_CHUNK` at a time (fewer for a huge vocabulary, so
a chunk's logits stay under `LOGIT_CELLS` floats) and each item's characters are kept only until it ends, so
`num_samples=10**8` streams instead of allocating (num_samples, max_length) at once. `temperature` 0 is greedy
decoding, and a tiny temperature tends to it without NaN (the logits are shifted by their maximum before the
division). A model whose logits are not finite (diverged weights) is one line, not torch's multinomial error.
"""

from collections.abc import Iterator

import torch

from makemore_lab.data import Vocabulary
from makemore_lab.errors import TrainingDiverged

SAMPLE_CHUNK = 4096  # items generated together: like data.eval_batch_size, a batch every model handles
LOGIT_CELLS = 2**22  # at most this many logits (16 MB of float32) per step, however large the vocabulary


def chunk_size(num_samples: int, vocab_size: int) -> int:
    return max(1, min(num_samples, SAMPLE_CHUNK, LOGIT_CELLS // vocab_size))


def next_characters(logits: torch.Tensor, generator, temperature: float, top_k: int | None) -> torch.Tensor:
    """One character per row of `logits` (N, V): drawn at `temperature` among the `top_k` likeliest, or the
    likeliest itself at temperature 0."""
    if not torch.isfinite(logits).all():
        raise TrainingDiverged(
            "the model's logits are not finite (inf or nan): its weights diverged, so it cannot "
            "be sampled (a lower optimizer.lr usually helps)"
        )
    if temperature == 0:
        return logits.argmax(dim=-1).cpu()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature  # <= 0: no overflow however small T
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.inference_mode()
def stream(
    net: torch.nn.Module,
    vocab: Vocabulary,
    num_samples: int,
    block_size: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    max_length: int = 100,
) -> Iterator[str]:
    """Yield `num_samples` items, each from an all-'.' context until it emits '.' (index 0) or reaches max_length."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    try:
        left = num_samples
        while left:
            n = chunk_size(left, len(vocab))
            yield from _chunk(net, vocab, n, block_size, device, generator, temperature, top_k, max_length)
            left -= n
    finally:
        net.train(was_training)


def _chunk(net, vocab, n, block_size, device, generator, temperature, top_k, max_length) -> list[str]:
    context = torch.zeros(n, block_size, dtype=torch.long, device=device)
    columns, finished = [], torch.zeros(n, dtype=torch.bool)
    for _ in range(max_length):
        ix = next_characters(net(context).float(), generator, temperature, top_k)  # (n,)
        columns.append(ix.masked_fill(finished, 0))
        finished |= ix == 0
        if finished.all():
            break
        context = torch.cat([context[:, 1:], ix.to(device)[:, None]], dim=1)
    rows = torch.stack(columns, dim=1).tolist()
    return [vocab.decode(row[: row.index(0) if 0 in row else len(row)]) for row in rows]


def generate(
    net: torch.nn.Module,
    vocab: Vocabulary,
    num_samples: int,
    block_size: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    max_length: int = 100,
) -> list[str]:
    """All of `stream`'s items as a list (for a few samples: the training run's, the TensorBoard callback's)."""
    return list(stream(net, vocab, num_samples, block_size, generator, temperature, top_k, max_length))
