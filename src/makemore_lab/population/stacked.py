"""N copies of one architecture as one: stacked weights, one vmapped forward, each member still a plain nn.Module.

The members' own nets (built exactly as a solo run builds its net) keep their Parameter objects, but each
Parameter's storage becomes row i of a stacked (N, ...) tensor. So:

- the population's forward runs the unchanged model code once for all members: folded into the batch dimension
  (population/folded.py: one batched kernel per layer, the fast path) where that gives each member exactly its
  own losses and gradients, checked on the first minibatch; otherwise `torch.func.vmap` of `functional_call`
  with the stacked tensors;
- each member's net *is* the member at every moment (its state_dict, split_loss, sampling, a checkpoint: the
  solo code paths, unchanged), and its Parameters can go to any torch optimizer: an in-place step on a member's
  Parameter writes its row of the stacked tensor;
- each member's `.grad` is row i of the stacked gradient, allocated once: backward accumulates into it in place
  (the vectorised SGD step, which reads only the stacked gradients, lets backward hand over a fresh one instead).
Buffers (BatchNorm's running statistics) are stacked the same way, so each member keeps its own.
"""

import copy
import logging

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from makemore_lab.errors import UserError
from makemore_lab.population.folded import MemberNumber, MembersInBatch, differing_numbers

log = logging.getLogger(__name__)


class StackedNets:
    def __init__(self, nets: list[nn.Module]):
        self.nets = nets
        # The template whose code runs under vmap; functional_call swaps the stacked tensors in for its own.
        self.template = copy.deepcopy(nets[0])
        # The folded forward's copy holds the stacked tensors themselves as its parameters and buffers.
        self.folded: nn.Module | None = copy.deepcopy(nets[0])
        self.fold_checked = False
        self.params = {name: torch.stack([dict(n.named_parameters())[name].detach() for n in nets]).requires_grad_()
                       for name, _ in nets[0].named_parameters()}
        self.buffers = {name: torch.stack([dict(n.named_buffers())[name] for n in nets])
                        for name, _ in nets[0].named_buffers()}
        for i, net in enumerate(nets):
            for name, param in net.named_parameters():
                param.data = self.params[name].detach()[i]  # same Parameter object, storage = row i
            for name, _ in net.named_buffers():
                owner, leaf = _split(net, name)
                owner._buffers[leaf] = self.buffers[name][i]
        for name in self.params:
            owner, leaf = _split(self.folded, name)
            owner._parameters[leaf] = self.params[name]
        for name in self.buffers:
            owner, leaf = _split(self.folded, name)
            owner._buffers[leaf] = self.buffers[name]
        self.bind_member_grads()
        # Numbers the members' modules hold differently (dropout rates): only the folded forward gives each its own.
        self.member_numbers = differing_numbers(nets)
        for (module, attr), values in self.member_numbers.items():
            setattr(self.folded.get_submodule(module), attr, MemberNumber(values))

    def __len__(self) -> int:
        return len(self.nets)

    def zero_grad(self, member_views: bool = True) -> None:
        """Zero the stacked gradients in place, so each member's `.grad` stays its row; or, where nothing reads
        a member's own `.grad` (the vectorised SGD step), drop them: backward then hands its gradient over as the
        new `.grad` instead of adding it to zeros (one fill and one add per tensor less, every step). A population
        keeps one of the two for its whole life (Population.plain_sgd)."""
        for stacked in self.params.values():
            if member_views:
                stacked.grad.zero_()
            else:
                stacked.grad = None

    def bind_member_grads(self) -> None:
        """Zeroed stacked gradients with each member's `.grad` its row: set up here at the start, and again before
        a member's own backward (a solo step, population/run.py), whichever way zero_grad left them."""
        for stacked in self.params.values():
            stacked.grad = torch.zeros_like(stacked)
        for i, net in enumerate(self.nets):
            for name, param in net.named_parameters():
                param.grad = self.params[name].grad[i]

    def losses(self, loss_fn, x: torch.Tensor, y: torch.Tensor, shared_data: bool) -> torch.Tensor:
        """(N,) losses: `loss_fn(net, x, y)` of every member at once; x, y are (B, ...) when the members share
        their minibatch (shared_data), else (N, B, ...) with member i's in row i."""
        if not self.fold_checked:
            self.choose_forward(loss_fn, x, y, shared_data)
        if self.folded is not None:
            return self.folded_losses(loss_fn, x, y, shared_data)
        return self.vmapped_losses(loss_fn, x, y, shared_data)

    def folded_losses(self, loss_fn, x, y, shared_data: bool) -> torch.Tensor:
        n = len(self)
        if shared_data:
            x, y = x.expand(n, *x.shape), y.expand(n, *y.shape)
        with MembersInBatch(n):
            return loss_fn(self.folded, x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:]))

    def vmapped_losses(self, loss_fn, x, y, shared_data: bool) -> torch.Tensor:
        template = self.template

        def member_loss(params, buffers, x, y):
            net = lambda *args, **kwargs: functional_call(template, (params, buffers), args, kwargs)
            return loss_fn(net, x, y)

        data_dim = None if shared_data else 0
        # The math attention kernel: CPU flash attention has no vmap batching rule (a per-member loop otherwise).
        with sdpa_kernel(SDPBackend.MATH):
            return vmap(member_loss, in_dims=(0, 0, data_dim, data_dim), randomness="different")(
                self.params, self.buffers, x, y)

    def choose_forward(self, loss_fn, x, y, shared_data: bool) -> None:
        """Keep the folded forward only if, on this minibatch, it gives every member the vmap path's losses and
        gradients (dropout off for the comparison; the members' weights and statistics are left as they were)."""
        self.fold_checked = True
        saved = {name: b.clone() for name, b in self.buffers.items()}
        weights = list(self.params.values())
        try:
            with dropout_off(self.template), dropout_off(self.folded):
                expected = self.vmapped_losses(loss_fn, x, y, shared_data)
                expected_grads = torch.autograd.grad(expected.sum(), weights, allow_unused=True)
                self.restore(saved)
                got = self.folded_losses(loss_fn, x, y, shared_data)
                got_grads = torch.autograd.grad(got.sum(), weights, allow_unused=True)
            same = close(got.detach(), expected.detach()) and all(
                (a is None and b is None) or (a is not None and b is not None and close(a, b))
                for a, b in zip(got_grads, expected_grads))
            reason = "" if same else "its losses or gradients differ from the vmap path's"
        except Exception as err:  # noqa: BLE001 - any failure of the folded forward means: not foldable
            same, reason = False, f"{type(err).__name__}: {err}"
        finally:
            self.restore(saved)
        if not same and self.member_numbers:
            (module, attr), values = next(iter(self.member_numbers.items()))
            raise UserError(f"members differ in {module}.{attr} ({', '.join(map(str, values))}), which only the folded "
                            f"forward gives each member, and this model cannot be folded ({reason}): train members "
                            "with one dropout rate together")
        if not same:
            self.folded = None
            log.info("population forward: vmap (members cannot be folded into the batch: %s)", reason)
        else:
            log.info("population forward: the %d members folded into the batch dimension", len(self))

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        for name, value in saved.items():
            self.buffers[name].copy_(value)

    def grads(self) -> list[torch.Tensor]:
        """The stacked gradients of this step (a weight the loss does not use has none, as in torch)."""
        return [stacked.grad for stacked in self.params.values() if stacked.grad is not None]


def close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to float summation order (a batched matmul against a matmul)."""
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return got.shape == expected.shape and bool(((got - expected).abs() <= 1e-4 * scale + 1e-7).all())


DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class dropout_off:
    """Dropout off for a while (the folded and vmapped forwards draw different masks): dropout modules in eval
    mode, and a module's own rate for a functional dropout (a float attribute named `*dropout*`, as the
    transformer's attention passes `dropout_p=self.dropout`) set to 0. A model whose functional dropout rate has
    another name keeps the vmap path when its rate is not 0 (the comparison then sees different masks)."""

    def __init__(self, net: nn.Module):
        self.modules = [m for m in net.modules() if isinstance(m, DROPOUTS) and m.training]
        self.rates = [(m, attr, value) for m in net.modules() for attr, value in vars(m).items()
                      if "dropout" in attr and isinstance(value, float)]

    def __enter__(self):
        for module in self.modules:
            module.eval()
        for module, attr, _ in self.rates:
            setattr(module, attr, 0.0)

    def __exit__(self, *exc):
        for module in self.modules:
            module.train()
        for module, attr, value in self.rates:
            setattr(module, attr, value)


def _split(net: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    """(the submodule that owns `dotted`, the attribute name within it)."""
    path, _, leaf = dotted.rpartition(".")
    return net.get_submodule(path), leaf
