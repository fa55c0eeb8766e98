"""English for the generated captions and questions (shapes, NLVR)."""

from __future__ import annotations

from collections.abc import Sequence


def join_words(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]
