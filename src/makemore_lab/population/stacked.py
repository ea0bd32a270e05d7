"""N copies of one architecture as one: stacked weights, one vmapped forward, each member still a plain nn.Module.

The members' own nets (built exactly as a solo run builds its net) keep their Parameter objects, but each
Parameter's storage becomes row i of a stacked (N, ...) tensor. So:

- the population's forward is `torch.func.vmap` of `functional_call` over the unchanged model code, with the
  stacked tensors: one batched kernel per layer instead of N (the speed);
- each member's net *is* the member at every moment (its state_dict, split_loss, sampling, a checkpoint: the
  solo code paths, unchanged), and its Parameters can go to any torch optimizer: an in-place step on a member's
  Parameter writes its row of the stacked tensor;
- each member's `.grad` is row i of the stacked gradient, allocated once: backward accumulates into it in place.
Buffers (BatchNorm's running statistics) are stacked the same way, so each member keeps its own.
"""

import copy

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel


class StackedNets:
    def __init__(self, nets: list[nn.Module]):
        self.nets = nets
        # The template whose code runs under vmap; functional_call swaps the stacked tensors in for its own.
        self.template = copy.deepcopy(nets[0])
        self.params = {name: torch.stack([dict(n.named_parameters())[name].detach() for n in nets]).requires_grad_()
                       for name, _ in nets[0].named_parameters()}
        self.buffers = {name: torch.stack([dict(n.named_buffers())[name] for n in nets])
                        for name, _ in nets[0].named_buffers()}
        for name, stacked in self.params.items():
            stacked.grad = torch.zeros_like(stacked)
        for i, net in enumerate(nets):
            for name, param in net.named_parameters():
                param.data = self.params[name].detach()[i]  # same Parameter object, storage = row i
                param.grad = self.params[name].grad[i]
            for name, _ in net.named_buffers():
                owner, leaf = _split(net, name)
                owner._buffers[leaf] = self.buffers[name][i]

    def __len__(self) -> int:
        return len(self.nets)

    def zero_grad(self) -> None:
        for stacked in self.params.values():
            stacked.grad.zero_()

    def losses(self, loss_fn, x: torch.Tensor, y: torch.Tensor, shared_data: bool) -> torch.Tensor:
        """(N,) losses: `loss_fn(net, x, y)` of every member at once; x, y are (B, ...) when the members share
        their minibatch (shared_data), else (N, B, ...) with member i's in row i."""
        template = self.template

        def member_loss(params, buffers, x, y):
            net = lambda *args, **kwargs: functional_call(template, (params, buffers), args, kwargs)
            return loss_fn(net, x, y)

        data_dim = None if shared_data else 0
        # The math attention kernel: CPU flash attention has no vmap batching rule (a per-member loop otherwise).
        with sdpa_kernel(SDPBackend.MATH):
            return vmap(member_loss, in_dims=(0, 0, data_dim, data_dim), randomness="different")(
                self.params, self.buffers, x, y)

    def grads(self) -> list[torch.Tensor]:
        return [stacked.grad for stacked in self.params.values()]


def _split(net: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    """(the submodule that owns `dotted`, the attribute name within it)."""
    path, _, leaf = dotted.rpartition(".")
    return net.get_submodule(path), leaf
