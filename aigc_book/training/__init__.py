"""Training: the pretraining objectives, the training loop, and evaluation on held-out text."""
