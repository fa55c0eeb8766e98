"""A step of the demo (its commands and the output that proves it finished), and the demo's error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Step:
    """One step: its commands, the output that proves it finished, and how it ran."""

    name: str
    title: str
    commands: list[list[str]]
    done: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    capture: Path | None = None
    """Write the last command's stdout to this file (atomically) as well as printing it."""
    status: str = "pending"
    seconds: float | None = None
    peak_rss_mib: float | None = None


class DemoError(RuntimeError):
    """A step failed or a finished step does not match this run."""
