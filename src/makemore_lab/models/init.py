"""Weight initialisation schemes shared by every model (`model.init=`), after lecture 3.

- kaiming: hidden Linear weights ~ N(0, 1) * gain / sqrt(fan_in), biases 0, with the gain of the nonlinearity that
  follows (5/3 for tanh); the output layer is shrunk by 0.1 with bias 0, so the network starts unsure (loss ~ ln V)
  instead of confidently wrong. Embeddings stay N(0, 1), as the lecture's `C = torch.randn(...)`.
- naive: every weight and bias ~ N(0, 1): the lecture's broken starting point (huge initial loss, saturated tanh).
- torch: PyTorch's own defaults, untouched.
Normalisation layers (BatchNorm, LayerNorm) keep their identity start under every scheme.
"""

import math

from torch import nn

from makemore_lab.errors import UserError

SCHEMES = ("kaiming", "naive", "torch")
TANH_GAIN = 5 / 3


def initialize(net: nn.Module, scheme: str, gain: float = 1.0) -> None:
    if scheme not in SCHEMES:
        raise UserError(f"model.init must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    if scheme == "torch":
        return
    for module in net.modules():
        is_head = module is net.lm_head
        if isinstance(module, nn.Linear):
            if scheme == "naive":
                nn.init.normal_(module.weight)
            else:
                std = (1.0 if is_head else gain) / math.sqrt(module.in_features)
                nn.init.normal_(module.weight, std=std * (0.1 if is_head else 1.0))
            if module.bias is not None:
                nn.init.normal_(module.bias) if scheme == "naive" else nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.1 if (is_head and scheme == "kaiming") else 1.0)
    if scheme == "naive":
        for param in net.parameters(recurse=False):  # free-standing parameters, e.g. an RNN's start state
            nn.init.normal_(param)
