"""Lecture 5: a WaveNet-style hierarchy (van den Oord et al. 2016, https://arxiv.org/abs/1609.03499).

Instead of crushing the whole context into one layer, fuse two neighbours at a time: block 8 -> 4 -> 2 -> 1,
each level a (Linear, BatchNorm, Tanh). This needs block_size to be a power of two. `dropout` (after each level's
Tanh; 0, as in the lecture, unless set) is for presets that trade the lecture's overfitting for a lower val loss.
"""

import torch
from torch import nn

from makemore_lab.errors import UserError
from makemore_lab.models.init import TANH_GAIN, initialize


class FlattenConsecutive(nn.Module):
    """(B, T, C) -> (B, T / n, C * n): concatenate n neighbouring positions."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.reshape(B, T // self.n, C * self.n)  # reshape: the BatchNorm transposes leave x non-contiguous


class SequenceBatchNorm(nn.BatchNorm1d):
    """BatchNorm over (B, T, C) that normalises each channel across batch *and* time.

    The lecture's first version normalised over the batch only and kept a running mean per position (the "bug"
    it then fixes). Its fix, nn.BatchNorm1d on (B, C, T), computes what nn.BatchNorm1d on the (B * T, C) rows does;
    the rows need no transposes, so the output stays contiguous and the Tanh and the next fusion's reshape run
    on plain memory (transposed, they cost a third of a step).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view(x.shape)


class WaveNet(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_embd: int = 24,
        n_hidden: int = 128,
        dropout: float = 0.0,
        init: str = "kaiming",
    ):
        super().__init__()
        if block_size < 1 or block_size & (block_size - 1):
            raise UserError(f"wavenet needs block_size to be a power of two (1, 2, 4, 8, ...); got {block_size}")
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        layers, width = [], n_embd
        for _ in range(block_size.bit_length() - 1):  # log2(block_size) levels of pairwise fusion
            layers += [
                FlattenConsecutive(2),
                nn.Linear(2 * width, n_hidden, bias=False),  # the BatchNorm's shift replaces the bias
                SequenceBatchNorm(n_hidden),
                nn.Tanh(),
                nn.Dropout(dropout),  # not in the lecture (0 there); the model overfits names.txt without it
            ]
            width = n_hidden
        self.layers = nn.Sequential(*layers)
        self.lm_head = nn.Linear(width, vocab_size)
        initialize(self, init, gain=TANH_GAIN)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.wte(idx))  # (B, 1, width) after the last fusion
        return self.lm_head(x.squeeze(1))  # (B, V)
