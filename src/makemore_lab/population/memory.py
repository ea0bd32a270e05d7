"""How much memory a member needs, the budget a population must fit, and how a group is cut to fit it.

A member costs its parameters, their gradients, its optimizer's state (as many tensors of the parameters' size
as the optimizer keeps: 0 for plain SGD, 1 with momentum, 2 for Adam/AdamW, 3 with amsgrad), the activations
autograd keeps for one minibatch's backward (measured: the tensors saved during one forward of the member's
own net), and its data module's token tensors. The budget is `population_max_memory_gb` when the config sets
it, else half the memory available now (the GPU's free memory on a GPU): the rest is left to evaluation,
sampling, and whatever else runs on the machine.
"""

import copy
import os

import torch

from makemore_lab.losses import training_loss

GB = 1024**3


def optimizer_state_tensors(cfg) -> int:
    """Tensors of the parameters' size that the optimizer keeps per parameter."""
    name = cfg.optimizer._target_.rsplit(".", 1)[-1]
    if name == "SGD":
        return 1 if cfg.optimizer.get("momentum") else 0
    if name in ("Adam", "AdamW"):
        return 3 if cfg.optimizer.get("amsgrad") else 2
    return 2  # other torch optimizers: most keep one or two; count two


def activation_bytes(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, all_positions: bool) -> int:
    """Bytes autograd saves for the backward of one minibatch, measured on a copy (the member's running
    statistics and the random state stay untouched)."""
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        training_loss(copy.deepcopy(net), x, y, all_positions)
    return saved


def member_bytes(cfg, net, datamodule, x, y, all_positions: bool) -> int:
    param_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in net.buffers())
    data_bytes = sum(split.tokens.numel() * split.tokens.element_size() for split in datamodule.splits.values())
    return (
        param_bytes * (2 + optimizer_state_tensors(cfg))
        + buffer_bytes
        + data_bytes
        + activation_bytes(net, x, y, all_positions)
    )


def budget_bytes(cfg, device: torch.device) -> int:
    if cfg.get("population_max_memory_gb") is not None:
        return int(float(cfg.population_max_memory_gb) * GB)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def cut(members: list, per_member: int, budget: int) -> list[list]:
    """The members in populations of at most budget // per_member each (as few and as equal as possible)."""
    most = max(1, budget // max(1, per_member))
    count = -(-len(members) // most)  # ceil
    size = -(-len(members) // count)
    return [members[i : i + size] for i in range(0, len(members), size)]
