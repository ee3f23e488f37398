"""One consistent look for every figure in the book.

Introduced in chapter 0, section "Reading in Jupyter or on the site": every chapter calls
:func:`use_book_style` first.
"""

from __future__ import annotations

import matplotlib as mpl

BOOK_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")

_BOOK_STYLE = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.frameon": False,
    "font.size": 10,
    "axes.prop_cycle": mpl.cycler(color=list(BOOK_COLORS)),
    # Same bytes for the same figure: no build dates or random ids in saved SVGs.
    "svg.hashsalt": "aigc-book",
}


def use_book_style() -> None:
    """Apply the book's matplotlib style (sizes, grid, colours) to every later figure."""
    mpl.rcParams.update(_BOOK_STYLE)
