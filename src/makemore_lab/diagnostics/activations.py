"""Lecture 3's look inside the nonlinearities: their outputs and gradients on one training step.

Forward hooks on every activation module (nn.Tanh, nn.GELU, ...) keep the step's outputs, and a tensor hook on
each output keeps its gradient on the way back. A module called several times in one forward (a recurrent
cell's Tanh, once per time step) contributes all its calls, stacked as extra rows.
"""

import functools

import torch
from torch import nn

# Where a nonlinearity is flat, its local gradient (nearly) vanishes, and with it everything that flows back.
SQUASHING = (nn.Tanh, nn.Sigmoid)  # flat near their bounds: saturation
RECTIFYING = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish)  # flat (or nearly) below zero: off
NONLINEARITIES = SQUASHING + RECTIFYING


def is_flat(module: nn.Module, t: torch.Tensor, threshold: float) -> torch.Tensor:
    """Outputs in the flat part: |t| > threshold for tanh (the lecture's test); for sigmoid the same on
    2t - 1 = tanh(x / 2); t <= 0 for the rectifiers (exactly zero for ReLU)."""
    if isinstance(module, nn.Sigmoid):
        return (2 * t - 1).abs() > threshold
    if isinstance(module, nn.Tanh):
        return t.abs() > threshold
    return t <= 0


class ActivationStats:
    """Records a network's nonlinearity outputs and their gradients while attached; `measure()` summarises them.

    Args:
        net: the network; every module of a NONLINEARITIES type is a layer, named as in `net.named_modules()`.
        saturation_threshold: |t| beyond which a tanh output counts as saturated (lecture 3: 0.97).
        image_threshold: the same for the saturation map (lecture 3's white-columns picture: 0.99).
    """

    def __init__(self, net: nn.Module, saturation_threshold: float, image_threshold: float):
        self.layers = {name: m for name, m in net.named_modules() if isinstance(m, NONLINEARITIES)}
        self.saturation_threshold = saturation_threshold
        self.image_threshold = image_threshold
        self._outputs = {name: [] for name in self.layers}
        self._grads = {name: [] for name in self.layers}
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> None:
        if not self._handles:
            self._handles = [
                m.register_forward_hook(functools.partial(self._record, name)) for name, m in self.layers.items()
            ]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(self, name: str, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if not module.training or not torch.is_grad_enabled():  # validation and sampling forwards
            return
        self._outputs[name].append(output.detach())
        if output.requires_grad:
            output.register_hook(self._grads[name].append)  # returns None: the gradient flows on unchanged

    def measure(self) -> dict[str, dict]:
        """Per layer that ran: stats (floats) and the tensors behind them, as (rows, units); clears the records.

        rows are the examples of the batch (times positions, times calls); units the last dimension.
        """
        measured = {}
        for name, module in self.layers.items():
            outputs, grads = self._outputs[name], self._grads[name]
            if not outputs:
                continue
            t = rows(outputs)
            flat = is_flat(module, t, self.saturation_threshold)
            dead = flat.all(dim=0)  # flat on every example of the batch: no gradient reaches the unit's weights
            stats = [t.mean(), t.std(), flat.float().mean(), dead.float().mean(), dead.sum()]
            g = rows(grads) if grads else None
            if g is not None:
                stats.append(g.std())
            values = torch.stack([s.float() for s in stats]).tolist()  # one device sync per layer
            measured[name] = {
                "kind": type(module).__name__,
                "mean": values[0],
                "std": values[1],
                "saturation": values[2],
                "dead": values[3],
                "dead_units": int(values[4]),
                "units": t.shape[1],
                "calls": len(
                    outputs
                ),  # calls of the module in the step's forward (a recurrent cell: one per time step)
                "gradient_std": values[5] if g is not None else None,
                "activations": t,
                "gradients": g,
            }
            outputs.clear()
            grads.clear()
        return measured

    def saturation_map(self, name: str, activations: torch.Tensor) -> torch.Tensor:
        """(rows, units) uint8 image, white where the output is beyond image_threshold (the lecture's picture)."""
        flat = is_flat(self.layers[name], activations, self.image_threshold)
        return flat.to("cpu", torch.uint8) * 255


def rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack a layer's calls as (rows, units), units being the last dimension."""
    return torch.cat([t.reshape(-1, t.shape[-1]) for t in tensors]).float()
