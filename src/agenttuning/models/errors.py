"""The one error model sources raise."""

from __future__ import annotations

__all__ = ["ModelSourceError"]


class ModelSourceError(ValueError):
    """A model that cannot be found, checked or converted; the message names it and the command that fixes it.

    A ``ValueError``, so the CLI prints it as one line (no traceback) and callers catching ``ValueError`` see it.
    """
