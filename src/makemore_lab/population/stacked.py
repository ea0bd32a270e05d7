"""N copies of one architecture as one nn.Module: stacked weights, one forward that returns every member's logits,
each member still a plain nn.Module.

The members' own nets (built exactly as a solo run builds its net) keep their Parameter objects, but each
Parameter's storage becomes row i of a stacked (N, ...) tensor. So:

- `PopulationNet(x)` runs the unchanged model code once for all members and returns (N, B, ..., V) logits: folded
  into the batch dimension (population/folded.py: one batched kernel per layer, the fast path) where that gives
  each member exactly its own losses and gradients, checked on the first minibatch; otherwise `torch.func.vmap` of
  `functional_call` with the stacked tensors. `member_losses` (losses.py) turns them into each member's loss;
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
from makemore_lab.losses import member_losses
from makemore_lab.population.folded import MemberNumber, MembersInBatch, differing_numbers

log = logging.getLogger(__name__)


class PopulationNet(nn.Module):
    """The members' nets as one module whose forward returns every member's logits. Its parameters are the stacked
    tensors (through the folded copy, which holds them as its own); the members' nets and the vmap template are
    kept outside the module tree (their Parameters are rows of those, or copies)."""

    def __init__(self, nets: list[nn.Module]):
        super().__init__()
        self.nets = nets  # a list: not registered as submodules
        # The template whose code runs under vmap; functional_call swaps the stacked tensors in for its own.
        self.template = (copy.deepcopy(nets[0]),)  # a tuple: not registered either
        # The folded forward's copy holds the stacked tensors themselves as its parameters and buffers.
        self.folded: nn.Module | None = copy.deepcopy(nets[0])
        self.fold_checked = False
        self.stacked_params = {
            name: torch.stack([dict(n.named_parameters())[name].detach() for n in nets]).requires_grad_()
            for name, _ in nets[0].named_parameters()
        }
        self.stacked_buffers = {
            name: torch.stack([dict(n.named_buffers())[name] for n in nets]) for name, _ in nets[0].named_buffers()
        }
        for i, net in enumerate(nets):
            for name, param in net.named_parameters():
                param.data = self.stacked_params[name].detach()[i]  # same Parameter object, storage = row i
            for name, _ in net.named_buffers():
                owner, leaf = _split(net, name)
                owner._buffers[leaf] = self.stacked_buffers[name][i]
        for name in self.stacked_params:
            owner, leaf = _split(self.folded, name)
            owner._parameters[leaf] = self.stacked_params[name]
        for name in self.stacked_buffers:
            owner, leaf = _split(self.folded, name)
            owner._buffers[leaf] = self.stacked_buffers[name]
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
        if member_views and any(s.grad is None for s in self.stacked_params.values()):
            self.bind_member_grads()  # dropped since (the Trainer zeroes its module's gradients to None at start)
            return
        for stacked in self.stacked_params.values():
            if member_views:
                stacked.grad.zero_()
            else:
                stacked.grad = None

    def bind_member_grads(self) -> None:
        """Zeroed stacked gradients with each member's `.grad` its row: set up here at the start, and again before
        a member's own backward (a solo step, population/run.py), whichever way zero_grad left them."""
        for stacked in self.stacked_params.values():
            stacked.grad = torch.zeros_like(stacked)
        for i, net in enumerate(self.nets):
            for name, param in net.named_parameters():
                param.grad = self.stacked_params[name].grad[i]

    def forward(self, x: torch.Tensor, all_positions: bool = False, shared: bool = True) -> torch.Tensor:
        """Every member's logits, (N, B, V) (or (N, B, T, V) with all_positions); x is (B, ...) when the members
        share their minibatch (`shared`), else (N, B, ...) with member i's in row i."""
        if self.folded is not None:
            return self.folded_logits(x, all_positions, shared)
        return self.vmapped_logits(x, all_positions, shared)

    def losses(self, x: torch.Tensor, y: torch.Tensor, all_positions: bool, shared: bool) -> torch.Tensor:
        """(N,) training losses: each member's losses.training_loss on its minibatch (x, y as in forward)."""
        if not self.fold_checked:
            self.choose_forward(x, y, all_positions, shared)
        return member_losses(self(x, all_positions, shared), x, y, all_positions)

    def folded_logits(self, x, all_positions: bool, shared: bool) -> torch.Tensor:
        n = len(self)
        rows = x.expand(n, *x.shape) if shared else x
        kwargs = {"all_positions": True} if all_positions else {}
        with MembersInBatch(n):
            logits = self.folded(rows.reshape(-1, *rows.shape[2:]), **kwargs)
        return logits.view(n, -1, *logits.shape[1:])

    def vmapped_logits(self, x, all_positions: bool, shared: bool) -> torch.Tensor:
        template = self.template[0]
        kwargs = {"all_positions": True} if all_positions else {}

        def member_logits(params, buffers, x):
            return functional_call(template, (params, buffers), (x,), kwargs)

        data_dim = None if shared else 0
        # The math attention kernel: CPU flash attention has no vmap batching rule (a per-member loop otherwise).
        with sdpa_kernel(SDPBackend.MATH):
            return vmap(member_logits, in_dims=(0, 0, data_dim), randomness="different")(
                self.stacked_params, self.stacked_buffers, x
            )

    def choose_forward(self, x, y, all_positions: bool, shared: bool) -> None:
        """Keep the folded forward only if, on this minibatch, it gives every member the vmap path's losses and
        gradients (dropout off for the comparison; the members' weights and statistics are left as they were)."""
        self.fold_checked = True
        saved = {name: b.clone() for name, b in self.stacked_buffers.items()}
        weights = list(self.stacked_params.values())
        loss = lambda logits: member_losses(logits, x, y, all_positions)
        try:
            with dropout_off(self.template[0]), dropout_off(self.folded):
                expected = loss(self.vmapped_logits(x, all_positions, shared))
                expected_grads = torch.autograd.grad(expected.sum(), weights, allow_unused=True)
                self.restore(saved)
                got = loss(self.folded_logits(x, all_positions, shared))
                got_grads = torch.autograd.grad(got.sum(), weights, allow_unused=True)
            same = close(got.detach(), expected.detach()) and all(
                (a is None and b is None) or (a is not None and b is not None and close(a, b))
                for a, b in zip(got_grads, expected_grads)
            )
            reason = "" if same else "its losses or gradients differ from the vmap path's"
        except Exception as err:  # noqa: BLE001 - any failure of the folded forward means: not foldable
            same, reason = False, f"{type(err).__name__}: {err}"
        finally:
            self.restore(saved)
        if not same and self.member_numbers:
            (module, attr), values = next(iter(self.member_numbers.items()))
            raise UserError(
                f"members differ in {module}.{attr} ({', '.join(map(str, values))}), which only the folded "
                f"forward gives each member, and this model cannot be folded ({reason}): train members "
                "with one dropout rate together"
            )
        if not same:
            self.folded = None
            log.info("population forward: vmap (members cannot be folded into the batch: %s)", reason)
        else:
            log.info("population forward: the %d members folded into the batch dimension", len(self))

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        for name, value in saved.items():
            self.stacked_buffers[name].copy_(value)

    def grads(self) -> list[torch.Tensor]:
        """The stacked gradients of this step (a weight the loss does not use has none, as in torch)."""
        return [stacked.grad for stacked in self.stacked_params.values() if stacked.grad is not None]


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
        self.rates = [
            (m, attr, value)
            for m in net.modules()
            for attr, value in vars(m).items()
            if "dropout" in attr and isinstance(value, float)
        ]

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
