"""A test-only model whose output becomes NaN from a chosen step on, to test how training handles divergence."""

import torch

from makemore_lab.models.mlp import MLP


class ExplodingMLP(MLP):
    def __init__(self, *args, explode_at_call: int = 25, **kwargs):
        super().__init__(*args, **kwargs)
        self.explode_at_call = explode_at_call
        self.calls = 0

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = super().forward(idx)
        if self.training:
            self.calls += 1
            if self.calls > self.explode_at_call:
                return logits * float("nan")
        return logits


class CrashingMLP(MLP):
    """A test-only model whose forward raises an unexpected error: a crash, not a bad value."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("simulated crash inside the model")


class DivergedInEvalMLP(MLP):
    """A test-only model that trains normally but whose weights have blown up where training does not look:
    its logits are infinite in eval mode (final losses, sampling), as after a huge lr."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = super().forward(idx)
        return logits if self.training else logits * float("inf")
