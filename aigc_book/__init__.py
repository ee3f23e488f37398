"""aigc_book: the code behind *AIGC from Zero to Practice*.

Every chapter imports its implementations from here; each module says which chapter introduces it.
The names below are loaded on first use, so that importing the package (``python -m aigc_book``)
does not wait for PyTorch before it can answer, or be interrupted.
"""

from importlib import import_module

__version__ = "0.1.0"
__all__ = ["ChapterSettings", "autocast", "get_device", "seed_everything", "use_book_style", "__version__"]
_EXPORTS = {
    "ChapterSettings": "runtime",
    "autocast": "runtime",
    "get_device": "runtime",
    "seed_everything": "runtime",
    "use_book_style": "plotting",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"aigc_book.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'aigc_book' has no attribute {name!r}")
