"""Whole models: the Transformer stack, the GPT, counting models, Hugging Face conversion, saving and loading."""
