"""Building blocks: attention, positions, the KV cache, the Transformer block, and module surgery."""
