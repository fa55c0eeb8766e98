"""Hostile inputs the tests plant: a pickle payload that creates a file when it runs."""

from __future__ import annotations

from pathlib import Path

import torch

from vlm.safe_load import load_pickle


class Payload:
    """Unpickles as ``open(marker, "w")``: a file appears where the pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path, allowed=()) -> None:
    """Add the payload to the pickle at ``path`` (its own content kept, so only the payload is foreign)."""
    state = load_pickle(path, allowed)
    state["payload"] = Payload(marker)
    torch.save(state, path)
