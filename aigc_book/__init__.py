"""aigc_book: the code behind *AIGC from Zero to Practice*.

Every chapter imports its implementations from here; each module says which chapter introduces it.
"""

from aigc_book.plotting import use_book_style
from aigc_book.runtime import autocast, get_device, seed_everything

__version__ = "0.1.0"
__all__ = ["autocast", "get_device", "seed_everything", "use_book_style", "__version__"]
