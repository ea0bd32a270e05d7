"""makemore.py's bag of words: every position averages the positions before it, then a small tanh MLP.

It is the transformer with attention weights fixed to uniform: a baseline that shows what learned attention buys.
"""

import torch
from torch import nn

from makemore_lab.models.init import TANH_GAIN, initialize


class BagOfWords(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_embd: int = 64, n_hidden: int = 64, init: str = "torch"):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, n_hidden), nn.Tanh(), nn.Linear(n_hidden, n_embd))
        self.lm_head = nn.Linear(n_embd, vocab_size)
        initialize(self, init, gain=TANH_GAIN)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, n_embd)
        # Only the last position is scored, and its causal average covers the whole window: a plain mean.
        x = x[:, -1] + x.mean(dim=1)  # (B, n_embd), residual as in makemore.py's BoWBlock
        x = x + self.mlp(x)
        return self.lm_head(x)  # (B, V)
