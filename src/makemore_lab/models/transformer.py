"""A GPT decoder (Radford et al. 2018; Vaswani et al. 2017, https://arxiv.org/abs/1706.03762), makemore.py's sizes.

Pre-norm blocks of causal self-attention and a GELU MLP. By default only the last position's logits are
returned (the example's target is the character after the window); `all_positions=True` returns every position's,
for training on whole items (data.train_on=items), one prediction per character as makemore.py does.

A window is left-padded with '.': the item starts at its last leading '.', the start token. Positions count from
that token and attention never looks left of it, so a prefix gives the same prediction whether it ends the window
or sits inside a longer one: the padding is invisible (makemore.py always puts the start token at position 0).
"""

import torch
from torch import nn
from torch.nn import functional as F

from makemore_lab.errors import UserError
from makemore_lab.models.init import initialize


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        if n_embd % n_head:
            raise UserError(f"transformer n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)  # queries, keys and values in one matmul
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        # allowed: (B, 1, T, T), True = may attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), allowed)  # residual paths keep gradients flowing through depth
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    scores_every_position = True  # forward(idx, all_positions=True) -> (B, T, V): see models/__init__.py

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 64,
        dropout: float = 0.0,
        init: str = "torch",
    ):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)  # nanoGPT's regularizer; makemore.py has none (dropout 0)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        initialize(self, init)

    def forward(self, idx: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        B, T = idx.shape
        t = torch.arange(T, device=idx.device)
        start = (idx == 0).cumprod(dim=1).sum(dim=1, keepdim=True).sub(1).clamp(min=0)  # (B, 1): the start token
        pos = (t - start).clamp(min=0)  # (B, T); padding left of the start token is masked out below anyway
        # Causal, and nothing left of the start token; a padding position attends to itself only (no empty rows).
        allowed = (t <= t[:, None]) & ((t >= start[:, :, None]) | (t == t[:, None]))  # (B, T, T)
        allowed = allowed.unsqueeze(1)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x, allowed)
        x = self.ln_f(x if all_positions else x[:, -1])
        return self.lm_head(x)  # (B, V), or (B, T, V) with all_positions
