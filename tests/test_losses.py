"""losses.ScoringTanh: scoring's tanh (2 * sigmoid(2x) - 1 on the CPU), and only scoring's."""

import pytest
import torch
from torch import nn

from makemore_lab.data import CharDataModule
from makemore_lab.losses import ScoringTanh, position_losses, split_loss, training_loss
from makemore_lab.models.mlp import MLP
from makemore_lab.models.wavenet import WaveNet
from test_data import window_loss


def fast_formula(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x * 2) * 2 - 1


def test_scoring_tanh_is_within_2e_7_of_torch_and_bounded():
    x = torch.cat([torch.linspace(-20, 20, 400_001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0])])
    with torch.no_grad(), ScoringTanh():
        got, method = torch.tanh(x), x.tanh()
    assert torch.equal(got, method)
    assert torch.equal(got, fast_formula(x))  # the formula itself, not torch's kernel
    assert not torch.equal(got, torch.tanh(x))  # (so the comparison above can tell them apart)
    assert (got - torch.tanh(x.double())).abs().max().item() < 2e-7
    assert got.abs().max().item() <= 1.0
    wide = torch.linspace(-3, 3, 1001, dtype=torch.float64)
    with torch.no_grad(), ScoringTanh():
        got = torch.tanh(wide)
    assert got.dtype == torch.float64 and (got - torch.tanh(wide)).abs().max() < 1e-15  # float64 stays accurate


def test_a_call_that_autograd_records_keeps_torchs_tanh_and_its_gradient():
    x = torch.linspace(-4, 4, 10_001, requires_grad=True)
    with ScoringTanh():
        y = torch.tanh(x)
        out = torch.tanh(x.detach(), out=torch.empty(10_001))  # an `out=` call: torch's own, as given
    assert torch.equal(y, torch.tanh(x))
    assert torch.equal(out, torch.tanh(x.detach()))
    y.sum().backward()
    assert torch.allclose(x.grad, 1 - torch.tanh(x.detach()) ** 2, atol=1e-6)


class Recorder:
    """The inputs and outputs of a net's tanh layers, as its forward hooks see them."""

    def __init__(self, net):
        self.calls = []
        for module in net.modules():
            if isinstance(module, nn.Tanh):
                module.register_forward_hook(lambda m, args, out: self.calls.append((args[0].detach(), out.detach())))


@pytest.mark.parametrize("build", [lambda V: MLP(V, 8, n_embd=4, n_hidden=300),
                                   lambda V: WaveNet(V, 8, n_embd=4, n_hidden=64)])
def test_scoring_uses_it_and_a_training_step_does_not(tmp_path, build):
    path = tmp_path / "items.txt"
    path.write_text("\n".join(["anna", "bob", "carla", "dmitri", "eve", "fatima", "gus"] * 40) + "\n")
    dm = CharDataModule(path=str(path), block_size=8, eval_batch_size=512)
    torch.manual_seed(0)
    net = build(dm.vocab_size)
    recorder = Recorder(net)
    with torch.inference_mode():
        position_losses(net.eval(), next(iter(dm.eval_batches("train"))))
    assert recorder.calls and all(torch.equal(out, fast_formula(x)) for x, out in recorder.calls)
    assert any(not torch.equal(out, torch.tanh(x)) for x, out in recorder.calls)

    recorder.calls.clear()
    x, y = dm.train_examples[torch.arange(64)]
    training_loss(net.train(), x, y, all_positions=False).backward()
    assert recorder.calls and all(torch.equal(out, torch.tanh(x)) for x, out in recorder.calls)

    # a whole split's loss: the same number as scoring it window by window with torch's tanh, to float32 sums
    assert split_loss(net, dm, "val") == pytest.approx(window_loss(net, dm, "val"), rel=1e-6)
