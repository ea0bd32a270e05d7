"""One plain nn.Module per architecture. Every model maps a context window `idx` of shape (B, block_size) to the
logits (B, vocab_size) of the next character, and names its output layer `lm_head` (init.py scales it)."""
