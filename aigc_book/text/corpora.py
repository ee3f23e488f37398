"""Real text that ships with every Python: the documentation topics behind ``help()``.

Introduced in chapter 1, section "A corpus every Python has"; chapters 2 and 3 train on it too.
``pydoc_data.topics`` holds the text of the language reference's topics (about 465,000 characters in
Python 3.11), so every reader has the same English corpus without a download.
"""

from __future__ import annotations


def python_topics() -> list[str]:
    """The ``pydoc_data.topics`` texts, one document per topic, in sorted-key order (chapter 8's corpus)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # some distributions strip pydoc_data
        raise RuntimeError(
            "this Python has no pydoc_data module (some Linux distributions package it separately); "
            "use any UTF-8 text file instead"
        ) from err
    return [topics[key].strip() for key in sorted(topics)]


def python_docs_text() -> str:
    """The ``pydoc_data.topics`` texts joined in sorted-key order (deterministic for a Python version)."""
    return "\n\n".join(python_topics())


def split_train_val(text, val_fraction: float = 0.1):
    """Split a string or sequence into (train, val): the last ``val_fraction`` is held out, unshuffled.

    Holding out the *tail* (not random characters) keeps validation text unseen as a contiguous
    stretch, so the model cannot score well by memorising neighbouring characters.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_train = int(round(len(text) * (1.0 - val_fraction)))
    if n_train == 0 or n_train == len(text):
        raise ValueError(f"text of length {len(text)} is too short to split with val_fraction={val_fraction}")
    return text[:n_train], text[n_train:]
