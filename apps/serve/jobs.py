"""A request's generation as the engine sees it (``Job``) and what it hands back (``Delta``, ``Finished``, ``Failed``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image


@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    finish_reason: str
    """``stop`` (end of turn or a stop string) or ``length`` (max_tokens or the context)."""
    completion_tokens: int


@dataclass
class Failed:
    status: int
    message: str
    code: str


Event = Delta | Finished | Failed


@dataclass
class Job:
    """One request's generation, as the engine runs it."""

    prompt: str
    images: list[Image.Image]
    prompt_tokens: int
    max_tokens: int
    deliver: Callable[[Event], None]
    """Called from the engine thread with each event; must not block."""
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    deadline: float = float("inf")
    """``time.monotonic()`` after which the job fails with a timeout."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set by the request's side when its client is gone: the row stops at the next token."""

    def batch_key(self) -> tuple:
        if self.temperature == 0:
            return ("greedy",)
        if self.seed is not None:
            return ("seeded", id(self))
        return ("sampled", self.temperature, self.top_p)


def timeout_failure(job: Job, limit_s: float | None) -> Failed:
    limit = f" of {limit_s:g} s" if limit_s else ""
    return Failed(504, f"the request ran past the server's time limit{limit} (--request-timeout) before its reply was "
                  "done; ask for fewer max_tokens, or retry when the server is less busy", "timeout")
