"""What every scorer checks first: one answer per question."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

Record = TypeVar("Record", bound=Mapping[str, Any])


def each_question_once(records: Iterable[Record], benchmark: str = "", answer: str = "answer") -> Iterator[Record]:
    """``records`` in order; a ``ValueError`` naming the question at the second record of one ``question_id``."""
    seen: set[Any] = set()
    prefix = f"{benchmark} " if benchmark else ""
    for record in records:
        question_id = record["question_id"]
        if question_id in seen:
            raise ValueError(f"{prefix}question {question_id!r} appears twice; give one {answer} per question")
        seen.add(question_id)
        yield record
