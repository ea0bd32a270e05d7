"""Lecture 1's neural bigram: a (V, V) table of logits, row = the current character."""

import torch
from torch import nn

from makemore_lab.models.init import initialize


class Bigram(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, init: str = "kaiming"):
        super().__init__()
        self.block_size = block_size  # only the last character of the context is used
        self.lm_head = nn.Embedding(vocab_size, vocab_size)  # an embedding lookup is exactly "one-hot @ W"
        initialize(self, init)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(idx[:, -1])  # (B, V)
