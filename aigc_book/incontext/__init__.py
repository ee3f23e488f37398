"""In-context learning: induction heads in attention-only Transformers, and few-shot prompting.

Chapter 4, section "In-context learning and induction heads": :mod:`.attention_only` (the toy
model), :mod:`.induction` (repeated random tokens, the scores, the training run that shows the
phase change) and :mod:`.few_shot` (K-shot prompts and accuracy against K for any model).
"""
