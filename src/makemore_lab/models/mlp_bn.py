"""Lecture 3's "torchified" deep network: n_layers x (Linear, [BatchNorm1d,] Tanh), then the output Linear.

Deep enough that a bad init or a missing BatchNorm shows in the activation and gradient statistics, which is
what the lecture builds it for. Its experiments are options:

- `batchnorm`: BatchNorm1d after each hidden Linear (whose bias it replaces); false is the lecture's plain stack,
  where only the gain keeps the activations in range;
- `gain`: the tanh gain of the hidden Linear weights (std gain / sqrt(fan_in)); the lecture's 5/3, and its
  experiments with 0.5, 1 and 3;
- `output_batchnorm`: the lecture's output layer, BatchNorm1d(vocab_size) after the output Linear with its gamma
  scaled by 0.1 (so the network starts unsure); the output Linear then gets the gain like the others. Without it
  the output Linear's weights are scaled by 0.1, as the lecture does without BatchNorm.
"""

import math

import torch
from torch import nn

from makemore_lab.errors import UserError
from makemore_lab.models.init import TANH_GAIN, initialize


class DeepMLP(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_embd: int = 10,
        n_hidden: int = 100,
        n_layers: int = 5,
        batchnorm: bool = True,
        gain: float = TANH_GAIN,
        output_batchnorm: bool = False,
        init: str = "kaiming",
    ):
        super().__init__()
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not gain > 0:
            raise UserError(f"model.gain must be a positive number, got {gain!r}")
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        layers = []
        fan_in = block_size * n_embd
        for _ in range(n_layers):
            if batchnorm:  # no Linear bias: the BatchNorm right after subtracts it again
                layers += [nn.Linear(fan_in, n_hidden, bias=False), nn.BatchNorm1d(n_hidden), nn.Tanh()]
            else:
                layers += [nn.Linear(fan_in, n_hidden), nn.Tanh()]
            fan_in = n_hidden
        self.layers = nn.Sequential(*layers)
        self.lm_head = nn.Linear(fan_in, vocab_size, bias=not output_batchnorm)
        self.output_norm = nn.BatchNorm1d(vocab_size) if output_batchnorm else nn.Identity()
        initialize(self, init, gain=float(gain))
        if output_batchnorm and init == "kaiming":
            with torch.no_grad():  # the lecture: the last Linear gets the gain too, the BatchNorm's gamma x 0.1
                nn.init.normal_(self.lm_head.weight, std=gain / math.sqrt(fan_in))
                self.output_norm.weight.mul_(0.1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx).flatten(1)  # (B, block_size * n_embd)
        return self.output_norm(self.lm_head(self.layers(x)))  # (B, V)
