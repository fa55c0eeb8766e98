"""A normalised sample, and the errors that name the file, record and problem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

ImageRef = Path | bytes
"""An image of a sample: an absolute file path (JSON formats) or the encoded bytes (Parquet)."""

FORMATS = ("auto", "llava-json", "llava-jsonl", "minimind-jsonl", "minimind-parquet")


class BadSampleError(ValueError):
    """A record that cannot be trained on. The message names the file, record number, id and problem.

    Constructible from the message alone (so it survives DataLoader workers and pickling); the
    parts are also kept as attributes when known.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        index: int | None = None,
        sample_id: str | None = None,
        problem: str | None = None,
    ):
        super().__init__(message)
        self.source = source
        self.index = index
        self.sample_id = sample_id
        self.problem = problem


class DataFormatError(ValueError):
    """A whole data file that cannot be read: unknown format, not a JSON array, truncated, missing columns."""


@dataclass(frozen=True)
class Sample:
    """One conversation, normalised. Tokenization and labels are done elsewhere."""

    source: str
    """The data file, as it was given to the dataset."""
    index: int
    """Record number in that file, 0-based."""
    id: str
    """The record's ``id``, or its record number when it has none."""
    messages: list[dict[str, str]]
    """``[{"role": "system" | "user" | "assistant", "content": str}]``, ``<image>`` tags kept in place."""
    images: list[ImageRef]
    """One entry per ``<image>`` tag, in order."""

    def __repr__(self) -> str:  # bytes images would flood a traceback
        images = [str(i) if isinstance(i, Path) else f"<{len(i)} bytes>" for i in self.images]
        return f"Sample(source={self.source!r}, index={self.index}, id={self.id!r}, turns={len(self.messages)}, images={images})"


def bad_sample(
    source: str, index: int, problem: str, sample_id: str | None = None, location: str | None = None
) -> BadSampleError:
    details = [d for d in (location, None if sample_id is None else f"id {sample_id!r}") if d]
    context = f" ({', '.join(details)})" if details else ""
    return BadSampleError(
        f"{source} record {index}{context}: {problem}", source=source, index=index, sample_id=sample_id, problem=problem
    )


class InvalidRecord(Exception):
    """A problem with one record, raised inside parsing and turned into a ``BadSampleError`` with its context."""


def type_name(value: Any) -> str:
    names = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
