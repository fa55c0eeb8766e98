"""The server's limits and options, one field per ``vlm serve`` flag."""

from __future__ import annotations

from dataclasses import dataclass, field

from apps.serve.images import ImageLimits


@dataclass(frozen=True)
class ServeSettings:
    model_name: str
    """The name clients send as ``model`` and ``GET /v1/models`` lists."""
    api_key: str | None = None
    """When set, every ``/v1`` request needs ``Authorization: Bearer KEY``."""
    max_batch_size: int = 8
    """Most requests in one generate call."""
    max_waiting: int = 64
    """Most requests waiting for the model; more are refused with 429."""
    batch_wait_s: float = 0.005
    """How long the first waiting request waits for others to share its generate call."""
    request_timeout_s: float = 300.0
    """Most seconds from a request's arrival to the end of its reply (waiting included); then 504."""
    max_tokens: int = 512
    """Most tokens one reply may have, and a request's default when it says none."""
    max_images: int = 8
    """Most images in one request (the whole conversation)."""
    max_body_bytes: int = 32 * 1024 * 1024
    """Largest request body; a larger one is refused with 413 before it is read."""
    images: ImageLimits = field(default_factory=ImageLimits)
