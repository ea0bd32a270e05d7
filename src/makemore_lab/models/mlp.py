"""Lectures 2-3: the MLP of Bengio et al. 2003 (https://www.jmlr.org/papers/volume3/bengio03a/bengio03a.pdf).

Embed each of the block_size previous characters, concatenate, one tanh hidden layer, then the logits.
`batchnorm=True` is lecture 3's version: BatchNorm after the hidden Linear, whose bias it makes redundant.
"""

import torch
from torch import nn

from makemore_lab.models.init import TANH_GAIN, initialize


class MLP(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_embd: int = 10,
        n_hidden: int = 200,
        batchnorm: bool = False,
        bn_momentum: float = 0.1,
        init: str = "kaiming",
        gain: float = TANH_GAIN,
    ):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.hidden = nn.Linear(block_size * n_embd, n_hidden, bias=not batchnorm)
        # Lecture 3 keeps its running statistics with momentum 0.001; torch's default is 0.1.
        self.norm = nn.BatchNorm1d(n_hidden, momentum=bn_momentum) if batchnorm else nn.Identity()
        self.act = nn.Tanh()
        self.lm_head = nn.Linear(n_hidden, vocab_size)
        initialize(self, init, gain=float(gain))  # the hidden Linear's std gain / sqrt(fan_in)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx).flatten(1)  # (B, block_size * n_embd): the concatenated embeddings
        x = self.act(self.norm(self.hidden(x)))  # (B, n_hidden)
        return self.lm_head(x)  # (B, V)
