"""The population's fast forward: members folded into the batch dimension, one batched kernel per layer.

Under `torch.func.vmap` every op of a model pays vmap's dispatch, and some ops have slow batching rules (BatchNorm's
is ~40% of a WaveNet population step; CPU flash attention has none at all and runs a per-member loop). Most of a
model's code, though, treats the rows of a minibatch independently: an activation, a reshape that keeps dim 0, a
transpose of the other dims, attention within a sequence. So the population can run the *unchanged model code*
on one minibatch of N * B rows (member i's rows are rows i*B .. i*B+B-1), and only the few functions that read
weights, or mix rows, need to know about members. `MembersInBatch` (a torch function mode) gives exactly those a
per-member meaning while the forward runs:

- `F.linear`: one `torch.baddbmm` over the members' stacked weights (N, out, in) (`MembersLinear`);
- `F.embedding`: member i's indices offset into its own rows of the stacked table (`MembersEmbedding`);
- `F.batch_norm`: each member's channels normalised over its own rows (the members become N * C channels of one
  fused batch_norm, with each member's own running statistics as views of the stacked buffers);
- `F.layer_norm`: normalised per row, then each member's own scale and shift;
- `F.dropout` and `F.scaled_dot_product_attention`'s `dropout_p`, where the members' rates differ: each member's
  rows dropped at its own rate. A module's number that differs between members (`nn.Dropout.p`, the attention's
  `dropout`) is set on the folded copy as a `MemberNumber`: a float holding every member's value, which these
  two rules read, and which refuses any other use (arithmetic, comparisons) rather than give all members one.

Everything else runs as it is. That is an assumption about the model's code (no other op mixes rows, dim 0 is the
batch), so it is checked rather than trusted: `PopulationNet.choose_forward` (stacked.py) compares the folded losses and
gradients with the vmap path's on the first minibatch, and a model that fails (an error, or other numbers) keeps the
vmap path.
"""

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode


class NotFoldable(Exception):
    """A call the folded forward cannot give a per-member meaning (the population keeps the vmap path)."""


class MemberNumber(float):
    """A module's number that differs between members (a dropout rate): member 0's value as a float, every member's
    in `values`. Only the per-member rules read it; arithmetic or a comparison on it raises NotFoldable."""

    def __new__(cls, values):
        number = super().__new__(cls, values[0])
        number.values = tuple(values)
        return number

    def _refuse(self, *args):
        raise NotFoldable(
            f"a number that differs between members ({self.values}) used outside F.dropout and "
            "scaled_dot_product_attention's dropout_p"
        )

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __pow__ = _refuse
    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _refuse
    __hash__ = float.__hash__


def _rows(n: int, input: torch.Tensor) -> int:
    if input.dim() == 0 or input.shape[0] % n:
        raise NotFoldable(f"a weight applied to a tensor of shape {tuple(input.shape)}, not N * B rows")
    return input.shape[0] // n


class MembersLinear(torch.autograd.Function):
    """x (N, R, in) @ W (N, out, in)^T + b (N, out): F.linear per member, with a backward that writes each gradient
    in its tensor's own layout. Autograd's bmm(x, W.transpose(1, 2)) hands W a transposed gradient, which it then
    copies into W's layout: one strided copy of every weight's gradient per step (a sixth of a 16-member WaveNet
    step) and a slower, transposed matmul for it."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        # forward(ctx, ...) and not the setup_context style: with setup_context, Function.apply binds the arguments
        # through inspect.signature at every call (0.2 ms, a tenth of a 16-member MLP step)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        weight_t = weight.transpose(1, 2)
        return torch.bmm(x, weight_t) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, weight_t)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None  # (N, out, in): W's layout
        grad_b = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(n, input, weight, bias=None):
    _rows(n, input)
    out = MembersLinear.apply(input.reshape(n, -1, input.shape[-1]), weight, bias)
    return out.view(*input.shape[:-1], weight.shape[1])


class MembersEmbedding(torch.autograd.Function):
    """Rows `own_rows` of the members' tables flattened to (N * V, D), with a backward that adds each row's gradient
    into its table row by index_add_: torch's CPU embedding backward sorts the indices first, 2-5x the time (a
    thirtieth of a 16-member WaveNet step, as much of an MLP one); the sums are the same (index order)."""

    @staticmethod
    def forward(ctx, own_rows, tables):
        ctx.save_for_backward(own_rows)
        ctx.table_shape = tables.shape
        return F.embedding(own_rows, tables)

    @staticmethod
    def backward(ctx, grad):
        (own_rows,) = ctx.saved_tensors
        grad_tables = grad.new_zeros(ctx.table_shape)
        grad_tables.index_add_(0, own_rows.flatten(), grad.reshape(-1, ctx.table_shape[1]))
        return None, grad_tables


def embedding(n, input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False):
    if padding_idx is not None or max_norm is not None or scale_grad_by_freq or sparse:
        raise NotFoldable("F.embedding with padding_idx, max_norm, scale_grad_by_freq or sparse")
    _rows(n, input)
    table = weight.shape[1]
    offsets = torch.arange(0, n * table, table, device=input.device).view(n, 1)
    own_rows = (input.reshape(n, -1) + offsets).view(input.shape)
    tables = weight.reshape(n * table, *weight.shape[2:])
    # on a GPU, torch's own backward (index_add_ is atomic there: not deterministic)
    return MembersEmbedding.apply(own_rows, tables) if tables.is_cpu else F.embedding(own_rows, tables)


def batch_norm(n, input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    rows, channels, rest = _rows(n, input), input.shape[1], input.shape[2:]
    # (N*B, C, *rest) -> (B * prod(rest), N*C): member i's channels are columns i*C .. i*C+C-1, each normalised over
    # its own member's rows (and positions) only. A 2-D batch_norm, even for (B, C, T) inputs: torch's 3-D kernel
    # over N*C channels with a short T is several times slower, forward and backward.
    positions = list(range(3, 3 + len(rest)))
    per_member = input.reshape(n, rows, channels, *rest)
    members_as_channels = per_member.permute(1, *positions, 0, 2).reshape(-1, n * channels)
    flat = lambda t: None if t is None else t.view(n * channels)  # views: the update lands in the stacked buffers
    out = F.batch_norm(
        members_as_channels, flat(running_mean), flat(running_var), flat(weight), flat(bias), training, momentum, eps
    )
    # Back to the members' rows, channels last in memory: (B, *rest, N, C) -> (N, B, *rest, C), one copy, shown as
    # (N*B, C, *rest). A sequence model's (B, T, C) activations arrive transposed to (B, C, T) (nn.BatchNorm1d's
    # layout), and are transposed back after: they leave contiguous, so the next ops run on contiguous memory and
    # a reshape after them is a view, not another copy.
    by_member = out.view(rows, *rest, n, channels).movedim(-2, 0).contiguous()
    return by_member.view(n * rows, *rest, channels).movedim(-1, 1)


def layer_norm(n, input, normalized_shape, weight=None, bias=None, eps=1e-5):
    _rows(n, input)
    out = F.layer_norm(input, normalized_shape, None, None, eps).reshape(n, -1, *normalized_shape)
    if weight is not None:
        out = out * weight.unsqueeze(1)
    if bias is not None:
        out = out + bias.unsqueeze(1)
    return out.view(input.shape)


def member_dropout(n, input, rates: MemberNumber):
    """Member i's rows zeroed with probability rates.values[i], the kept ones scaled by 1 / (1 - p), as F.dropout."""
    _rows(n, input)
    keep = 1 - torch.tensor(rates.values, dtype=input.dtype, device=input.device)
    flat = input.reshape(n, -1)
    kept = torch.rand_like(flat) < keep[:, None]
    scale = torch.where(keep > 0, 1 / keep, torch.zeros_like(keep))  # p = 1 drops everything, as F.dropout does
    return (flat * kept * scale[:, None]).view(input.shape)


def dropout(n, input, p=0.5, training=True, inplace=False):
    if not isinstance(p, MemberNumber):
        return F.dropout(input, p, training, inplace)
    return member_dropout(n, input, p) if training else input


def scaled_dot_product_attention(
    n, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    if not isinstance(dropout_p, MemberNumber):
        return F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
        )
    if enable_gqa:
        raise NotFoldable("scaled_dot_product_attention with enable_gqa and per-member dropout")
    # torch's math backend, with each member's own dropout on the attention weights
    scores = query @ key.transpose(-2, -1) * (scale if scale is not None else query.shape[-1] ** -0.5)
    if is_causal:
        length, source = query.shape[-2], key.shape[-2]
        attn_mask = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return member_dropout(n, scores.softmax(dim=-1), dropout_p) @ value


PER_MEMBER = {
    F.linear: linear,
    F.embedding: embedding,
    F.batch_norm: batch_norm,
    F.layer_norm: layer_norm,
    F.dropout: dropout,
    F.scaled_dot_product_attention: scaled_dot_product_attention,
}


def differing_numbers(nets) -> dict[tuple[str, str], tuple]:
    """{(module name, attribute): every member's value} for each float attribute of a module that is not the same in
    every member (the members' dropout rates)."""
    found = {}
    for name, module in nets[0].named_modules():
        for attr, value in vars(module).items():
            if type(value) is float:
                values = tuple(getattr(net.get_submodule(name), attr) for net in nets)
                if len(set(values)) > 1:
                    found[(name, attr)] = values
    return found


class MembersInBatch(TorchFunctionMode):
    """While active, the functions in PER_MEMBER act per member on N * B rows and N stacked weights."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def __torch_function__(self, func, types, args=(), kwargs=None):
        rule = PER_MEMBER.get(func)
        if rule is None:
            return func(*args, **(kwargs or {}))
        return rule(self.size, *args, **(kwargs or {}))
