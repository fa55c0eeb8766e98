"""One data file: its format (given or detected) and its records turned into ``Sample``s."""

from __future__ import annotations

import json
import os
from pathlib import Path

from train.data.formats import LLAVA, MINIMIND, check_image_tags, image_bytes, image_names, normalise_turns
from train.data.index import UTF8_BOM, WHITESPACE
from train.data.records import JsonRecords, ParquetRecords
from train.data.sample import FORMATS, DataFormatError, ImageRef, InvalidRecord, Sample, bad_sample, type_name

_PARQUET_MAGIC = b"PAR1"
_DETECT_RECORDS = 16  # records looked at to tell LLaVA from MiniMind-V turns


class DataFile:
    """One data file: where it is, how to read its records and how to read a record's fields."""

    def __init__(self, path: str | os.PathLike, format: str):
        self.source = os.fspath(path)
        self.path = Path(path).absolute()
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.source}: no such data file")
        if format == "auto":
            container = _sniff_container(self.path)
        else:
            container = format.split("-")[1]
        self.records: JsonRecords | ParquetRecords = (
            ParquetRecords(self.path) if container == "parquet" else JsonRecords(self.path, container)
        )
        family = format.split("-")[0] if format != "auto" else _detect_family(self)
        self.flavour = LLAVA if family == "llava" else MINIMIND
        self.format = f"{family}-{container}"

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, index: int, image_root: Path | None, image_token: str) -> Sample:
        location = self.records.location(index)
        sample_id = None
        try:
            record = self.records.read(index)
            if not isinstance(record, dict):
                raise InvalidRecord(f"the record is a JSON {type_name(record)}, expected an object")
            if record.get("id") is not None:
                sample_id = str(record["id"])
            conversations = record.get("conversations")
            if isinstance(self.records, ParquetRecords) and isinstance(conversations, str):
                try:
                    conversations = json.loads(conversations)
                except ValueError as err:
                    raise InvalidRecord(f"'conversations' is not valid JSON: {err}") from None
            messages = normalise_turns(conversations, self.flavour)
            if isinstance(self.records, ParquetRecords):
                images: list[ImageRef] = list(image_bytes(record.get("image_bytes")))
                check_image_tags(messages, len(images), image_token)
            else:
                names = image_names(record.get("image"), self.flavour)
                check_image_tags(messages, len(names), image_token)
                root = image_root if image_root is not None else self.path.parent
                images = [root / name for name in names]
                for k, (name, image) in enumerate(zip(names, images)):
                    if not os.path.isfile(image):
                        raise InvalidRecord(f"image {k} ({name!r}) not found: no file {image}")
        except InvalidRecord as err:
            raise bad_sample(self.source, index, str(err), sample_id, location) from None
        return Sample(self.source, index, sample_id if sample_id is not None else str(index), messages, images)


def _sniff_container(path: Path) -> str:
    """``parquet``, ``json`` (a top-level array) or ``jsonl``, from the extension and the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(64 << 10)
    if path.suffix.lower() == ".parquet" or head.startswith(_PARQUET_MAGIC):
        return "parquet"
    first = head.removeprefix(UTF8_BOM).lstrip(WHITESPACE)[:1]
    if first == b"[":
        return "json"
    if first == b"{" or not head.strip(WHITESPACE):
        return "jsonl"
    raise DataFormatError(
        f"{path}: cannot tell the format: it starts with {first.decode(errors='replace')!r}, not '[' (JSON array), "
        f"'{{' (JSONL) or Parquet; pass format= one of {FORMATS[1:]}"
    )


def _detect_family(data_file: DataFile) -> str:
    """``llava`` (turns with "from"/"value") or ``minimind`` ("role"/"content"), from the first readable records."""
    if isinstance(data_file.records, ParquetRecords):
        return "minimind"
    unreadable: list[tuple[int, InvalidRecord]] = []
    first: str | None = None  # what the first readable record holds instead of turns
    for index in range(min(len(data_file.records), _DETECT_RECORDS)):
        try:
            record = data_file.records.read(index)
        except InvalidRecord as err:
            unreadable.append((index, err))
            continue
        turns = record.get("conversations") if isinstance(record, dict) else None
        if first is None:
            first = _why_no_turns(index, record, turns)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            if "from" in turns[0]:
                return "llava"
            if "role" in turns[0]:
                return "minimind"
    if not len(data_file.records):
        return "llava"  # nothing to read; the family does not matter
    if len(unreadable) == min(len(data_file.records), _DETECT_RECORDS):
        index, err = unreadable[0]
        raise DataFormatError(f"{data_file.source}: none of its first {len(unreadable)} records can be read; record {index}: {err}")
    raise DataFormatError(
        f"{data_file.source}: cannot tell LLaVA ('from'/'value' turns) from MiniMind-V ('role'/'content' turns) in its "
        f"first {min(len(data_file.records), _DETECT_RECORDS)} records ({first}); each record needs a 'conversations' "
        f"list of turns, or pass format= one of {FORMATS[1:]}"
    )


def _why_no_turns(index: int, record: object, turns: object) -> str:
    if not isinstance(record, dict):
        return f"record {index} is {'null' if record is None else 'a ' + type(record).__name__}, not an object"
    if "conversations" not in record:
        return f"record {index} has no 'conversations' (its keys: {', '.join(map(repr, list(record)[:6])) or 'none'})"
    if not isinstance(turns, list):
        return f"record {index}: 'conversations' is a {type(turns).__name__}, not a list"
    if not turns:
        return f"record {index}: 'conversations' is empty"
    if not isinstance(turns[0], dict):
        return f"record {index}: turn 0 is a {type(turns[0]).__name__}, not an object"
    return f"record {index}: turn 0 has keys {', '.join(map(repr, turns[0]))}"
