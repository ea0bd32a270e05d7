"""Lecture 3's last two plots: how big each weight's gradient and each weight's update are, relative to the weight.

- grad:data = grad.std() / weight.std(), the gradient the step starts from;
- update:data = log10(update.std() / weight.std()), where update is the real change of the weight across
  optimizer.step() (a copy before, the difference after). That is lr * grad for plain SGD only: momentum, Adam's
  normalisation, weight decay and the schedule all change it, and all are measured alike. The lecture aims at ~ -3.
Both divide by the weight as it was before the step. Weights are the parameters with 2 or more dimensions.
"""

import math

import torch
from torch import nn


class WeightUpdateRatios:
    """Call `before_step(optimizer)` just before a step and `after_step()` just after it."""

    def __init__(self, net: nn.Module):
        self.weights = {name: p for name, p in net.named_parameters() if p.dim() >= 2 and p.requires_grad}
        self._before: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (weight, grad) before the step

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for name, p in self.weights.items():
            if id(p) in stepped and p.grad is not None:
                self._before[name] = (p.detach().clone(), p.grad.detach().clone())

    def after_step(self) -> dict[str, dict]:
        """Per weight: grad_data, update_data (floats) and the gradient tensor. A weight whose std is 0 (an
        all-zero start state) or that did not change has no ratio and is left out."""
        if not self._before:
            return {}
        stds = []
        for name, (before, grad) in self._before.items():
            update = self.weights[name].detach().float() - before.float()
            stds.append(torch.stack([before.float().std(), grad.float().std(), update.std()]))
        stds = torch.stack(stds).tolist()  # one device sync for all weights
        measured = {}
        for (name, (_, grad)), (data_std, grad_std, update_std) in zip(self._before.items(), stds):
            if data_std > 0 and update_std > 0 and math.isfinite(grad_std):
                grad_data, update_data = grad_std / data_std, math.log10(update_std / data_std)
                measured[name] = {"grad_data": grad_data, "update_data": update_data, "gradient": grad}
        self._before = {}
        return measured
