"""What every loader returns (``Question``, embedded images), where each benchmark is published, and the
reading helpers the loaders share."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VQAV2_URL = "https://visualqa.org/download.html"
OKVQA_URL = "https://okvqa.allenai.org/download.html"
VIZWIZ_URL = "https://vizwiz.org/tasks-and-datasets/vqa/"
TEXTVQA_URL = "https://textvqa.org/dataset/"
POPE_URL = "https://github.com/AoiDragon/POPE/tree/main/output/coco"
MME_URL = "https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation"
SCIENCEQA_URL = "https://github.com/lupantech/ScienceQA (data/scienceqa)"
MMBENCH_URL = "https://github.com/open-compass/MMBench"
GQA_URL = "https://cs.stanford.edu/people/dorarad/gqa/download.html"
COCO_URL = "https://cocodataset.org/#download"
COCO_VAL2014_IMAGES_URL = "http://images.cocodataset.org/zips/val2014.zip"
SHAPES_HOW = "make it with `vlm data shapes --out DIR --n N` (eval.shapes.write_shapes_dataset)"


@dataclass(frozen=True)
class EmbeddedImage:
    """An image stored inside an annotation file (MMBench's TSV), base64-encoded."""

    name: str
    """Where it came from, for error messages (e.g. "mmbench_dev.tsv, index 12")."""
    data: str
    """The base64 text as released."""

    def to_bytes(self) -> bytes:
        return base64.b64decode(self.data)


ImageSource = Path | EmbeddedImage


@dataclass(frozen=True)
class Question:
    """One prompt of a benchmark, before the prompt text is built.

    The benchmark's prompt function turns ``text`` (+ ``meta``) into the text the model sees;
    its scorer reads ``reference`` and ``meta``.
    """

    id: str
    """Unique within the benchmark file; the key of predictions.jsonl and of resuming."""
    text: str
    """The question as released ("" for captioning)."""
    images: tuple[ImageSource, ...]
    """Image files (absolute paths, not checked here) or embedded images, in prompt order."""
    reference: Any
    """The gold answer(s), JSON-serialisable, as written to predictions.jsonl."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """What the prompt builder and the scorer need besides the text (options, split, ...)."""
    group: str | None = None
    """Questions asked together (MMBench's rotations, MME's two questions per image); --limit
    counts groups, so a subset never splits one. None: the question is its own group."""

    @property
    def group_key(self) -> str:
        return self.id if self.group is None else self.group


class Questions(list):
    """A loader's questions (a plain list of ``Question``) and the records it skipped.

    ``skipped`` holds one line per record left out ("eval.json record 4: 'question' is null"):
    a bad record is skipped and counted, not a reason to abort an evaluation of thousands."""

    def __init__(self, questions: Sequence[Question] = (), skipped: Sequence[str] = ()) -> None:
        super().__init__(questions)
        self.skipped: list[str] = list(skipped)


class BadRecord(ValueError):
    """One record that cannot be asked; the loader skips it with this message."""


def text_field(record: Mapping[str, Any], name: str, where: str, allow_int: bool = False) -> str:
    """``record[name]`` as text; ``BadRecord`` if it is null, empty or not a string (an int where ``allow_int``)."""
    value = record[name]
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        kind = "null" if value is None else f"{article(type(value).__name__)} ({json.dumps(value)[:60]})"
        raise BadRecord(f"{where}: {name!r} is {kind}; it must be {'text or a number' if allow_int else 'text'}")
    if not value.strip():
        raise BadRecord(f"{where}: {name!r} is empty")
    return value


def article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def missing_file(what: str, path: Path, url: str, hint: str = "") -> FileNotFoundError:
    hint = f" {hint}" if hint else ""
    return FileNotFoundError(f"{what}: {path} does not exist.{hint} The data is published at {url}")


def read_json(path: Path, what: str, url: str) -> Any:
    if not path.is_file():
        raise missing_file(what, path, url)
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{what}: {path} is not valid JSON ({err})") from err


def read_json_lines(path: Path, what: str, url: str) -> list[dict[str, Any]]:
    """A file of one JSON object per line (POPE), or one JSON list."""
    if not path.is_file():
        raise missing_file(what, path, url)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{what}: {path} line {line_number} is not valid JSON ({err})") from err
    return records


def find_image_root(image_root: Path | None, anchor: Path, *names: str) -> Path:
    """``image_root`` if given, else the first of ``anchor/name``, ``anchor.parent/name`` that
    exists (the layouts of the official downloads), else ``anchor/names[0]`` (so an error names it)."""
    if image_root is not None:
        return Path(image_root).resolve()
    candidates = [base / name for name in names for base in (anchor, anchor.parent)]
    return next((c for c in candidates if c.is_dir()), candidates[0]).resolve()


def require_fields(record: Mapping[str, Any], fields: Sequence[str], where: str) -> None:
    missing = [name for name in fields if name not in record]
    if missing:
        raise ValueError(f"{where}: record lacks the fields {missing}: {dict(record)!r:.300}")
