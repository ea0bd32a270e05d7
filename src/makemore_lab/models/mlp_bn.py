"""Lecture 3's "torchified" deep network: n_layers x (Linear, BatchNorm1d, Tanh), then the output Linear.

Deep enough that a bad init or a missing BatchNorm shows in the activation and gradient statistics, which is
what the lecture builds it for.
"""

import torch
from torch import nn

from makemore_lab.models.init import TANH_GAIN, initialize


class DeepMLP(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_embd: int = 10,
        n_hidden: int = 100,
        n_layers: int = 5,
        init: str = "kaiming",
    ):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        layers = []
        fan_in = block_size * n_embd
        for _ in range(n_layers):
            # No Linear bias: the BatchNorm right after subtracts it again.
            layers += [nn.Linear(fan_in, n_hidden, bias=False), nn.BatchNorm1d(n_hidden), nn.Tanh()]
            fan_in = n_hidden
        self.layers = nn.Sequential(*layers)
        self.lm_head = nn.Linear(fan_in, vocab_size)
        initialize(self, init, gain=TANH_GAIN)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx).flatten(1)  # (B, block_size * n_embd)
        return self.lm_head(self.layers(x))  # (B, V)
