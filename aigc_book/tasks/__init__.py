"""Tasks with known answers (classification, extractive QA, instructions), the chat template and SFT
batches, and the metrics that score them (chapter 4)."""
