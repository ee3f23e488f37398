"""The errors a user of the command line sees: each is reported as one line, never a traceback.

Library code raises these where the problem is the user's input or the run itself, so that it never
has to import the command line (which sits at the top of the package's layers).

Introduced in chapter 3, section "Your own text", where the first command trains a GPT on a reader's file.
"""

from __future__ import annotations

__all__ = ["RunError", "UsageError"]


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


class RunError(Exception):
    """The run itself went wrong (e.g. the loss became NaN): one line, exit status 1."""
