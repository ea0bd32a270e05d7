"""The architectures, one file each. What every model must be, stated once (the rest of the package relies on it):

- `Model(vocab_size: int, block_size: int, **model_config)`: an `nn.Module` built from its `configs/model/*.yaml`.
- `forward(idx)`: idx (B, block_size) of character indices, '.' (0) as left padding -> (B, vocab_size) logits of the
  character after the window.
- `scores_every_position` (class attribute, default False): True when `forward(idx, all_positions=True)` returns
  (B, T, vocab_size) logits, position t predicting character t + 1, each position seeing only what is left of it.
  Such a model (rnn, gru, lstm, transformer) can train on whole items (data.train_on=items) and is evaluated on
  whole items; the others are scored window by window.
- `lm_head`: the output layer (nn.Linear or nn.Embedding); `init.initialize(net, scheme, gain)` shrinks it so the
  network starts unsure (loss ~ ln V), and sets every other Linear by the gain of the nonlinearity after it.
"""


def scores_every_position(net) -> bool:
    """Whether `net` can score every position of a window at once (see the contract above)."""
    return bool(getattr(net, "scores_every_position", False))
