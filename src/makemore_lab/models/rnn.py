"""Recurrent models over the context window, makemore.py style: a cell does one time step, RecurrentLM loops.

- rnn: Elman / Mikolov et al. 2010 (https://www.fit.vutbr.cz/research/groups/speech/publi/2010/mikolov_interspeech2010_IS100722.pdf)
- gru: Cho et al. 2014 (https://arxiv.org/abs/1409.1259)
- lstm: Hochreiter & Schmidhuber 1997
A cell's state is the hidden vector (rnn, gru) or a (hidden, memory) pair (lstm); `hidden(state)` reads it out.
A window is left-padded with '.': each leading '.' restarts reading from the learned start state, so the state
after the start token (the last leading '.') is the same however much padding precedes it, as in makemore.py,
where every item starts at step 0. `all_positions=True` returns every step's logits (data.train_on=items).
The nonlinearities are nn.Module instances (not torch.tanh) so the diagnostics callbacks can hook them.
"""

import torch
from torch import nn

from makemore_lab.errors import UserError
from makemore_lab.models.init import initialize


class RNNCell(nn.Module):
    def __init__(self, n_embd: int, n_hidden: int):
        super().__init__()
        self.xh_to_h = nn.Linear(n_embd + n_hidden, n_hidden)
        self.act = nn.Tanh()

    def initial_state(self, start: torch.Tensor):
        return start

    def hidden(self, state) -> torch.Tensor:
        return state

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.xh_to_h(torch.cat([x, h], dim=1)))


class GRUCell(RNNCell):
    """Gates decide how much of the old state to keep, so gradients survive longer contexts than in a plain RNN."""

    def __init__(self, n_embd: int, n_hidden: int):
        super().__init__(n_embd, n_hidden)  # xh_to_h proposes the candidate state
        self.xh_to_z = nn.Linear(n_embd + n_hidden, n_hidden)
        self.xh_to_r = nn.Linear(n_embd + n_hidden, n_hidden)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        xh = torch.cat([x, h], dim=1)
        r = self.gate(self.xh_to_r(xh))  # reset: how much of h the candidate may see
        h_candidate = self.act(self.xh_to_h(torch.cat([x, r * h], dim=1)))
        z = self.gate(self.xh_to_z(xh))  # update: blend old state and candidate
        return (1 - z) * h + z * h_candidate


class LSTMCell(RNNCell):
    """A separate memory cell, written and read through input/forget/output gates."""

    def __init__(self, n_embd: int, n_hidden: int):
        super().__init__(n_embd, n_hidden)
        self.xh_to_h = nn.Linear(n_embd + n_hidden, 4 * n_hidden)  # all four gates in one matmul
        self.gate = nn.Sigmoid()
        self.memory_act = nn.Tanh()

    def initial_state(self, start: torch.Tensor):
        return start, torch.zeros_like(start)

    def hidden(self, state) -> torch.Tensor:
        return state[0]

    def forward(self, x: torch.Tensor, state):
        h, c = state
        i, f, o, g = self.xh_to_h(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = self.gate(f) * c + self.gate(i) * self.act(g)
        return self.gate(o) * self.memory_act(c), c


CELLS = {"rnn": RNNCell, "gru": GRUCell, "lstm": LSTMCell}


class RecurrentLM(nn.Module):
    scores_every_position = True  # forward(idx, all_positions=True) -> (B, T, V): see models/__init__.py

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        cell: str = "rnn",
        n_embd: int = 64,
        n_hidden: int = 64,
        init: str = "torch",
    ):
        super().__init__()
        if cell not in CELLS:
            raise UserError(f"model.cell must be one of {', '.join(CELLS)}; got {cell!r}")
        self.block_size = block_size
        self.start = nn.Parameter(torch.zeros(1, n_hidden))  # the learned state before the first character
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.cell = CELLS[cell](n_embd, n_hidden)
        self.lm_head = nn.Linear(n_hidden, vocab_size)
        initialize(self, init)

    def forward(self, idx: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        B, T = idx.shape
        emb = self.wte(idx)  # (B, T, n_embd)
        padding = (idx == 0).cumprod(dim=1).bool().unsqueeze(-1)  # (B, T, 1): the leading '.'s
        initial = self.cell.initial_state(self.start.expand(B, -1))
        state, hiddens = initial, []
        for t in range(T):
            if t > 0:  # a leading '.' starts the item afresh: padding before it leaves no trace
                state = _where(padding[:, t], initial, state)
            state = self.cell(emb[:, t], state)
            hiddens.append(self.cell.hidden(state))
        h = torch.stack(hiddens, dim=1) if all_positions else hiddens[-1]
        return self.lm_head(h)  # (B, V), or (B, T, V) with all_positions


def _where(condition: torch.Tensor, a, b):
    """torch.where over a cell state: a tensor or a tuple of tensors."""
    if isinstance(a, tuple):
        return tuple(torch.where(condition, x, y) for x, y in zip(a, b))
    return torch.where(condition, a, b)
