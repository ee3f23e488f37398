"""Text: corpora that ship with Python, a generated language with a known entropy, and tokenizers."""
