"""Generate items from any model: one function shared by sample.py and the training run's printed samples."""

import torch

from makemore_lab.data import Vocabulary


@torch.inference_mode()
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
    """Sample `num_samples` items in parallel, each from an all-'.' context until it emits '.' (index 0)."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    context = torch.zeros(num_samples, block_size, dtype=torch.long, device=device)
    out = torch.zeros(num_samples, max_length, dtype=torch.long)
    finished = torch.zeros(num_samples, dtype=torch.bool)
    for t in range(max_length):
        logits = net(context).float() / temperature  # (N, V)
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1).cpu()
        ix = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (N,)
        out[:, t] = ix.masked_fill(finished, 0)
        finished |= ix == 0
        if finished.all():
            break
        context = torch.cat([context[:, 1:], ix.to(device)[:, None]], dim=1)
    net.train(was_training)
    rows = out.tolist()
    return [vocab.decode(row[: row.index(0) if 0 in row else max_length]) for row in rows]
