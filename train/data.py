"""Conversations read straight from the files people already have: LLaVA JSON/JSONL, MiniMind-V JSONL/Parquet.

Formats (``format=`` names; ``"auto"`` picks one from the file's first bytes and first records):

- ``llava-json``: a top-level JSON array, as LLaVA ships ``blip_laion_cc_sbu_558k.json`` and
  ``llava_v1_5_mix665k.json``: ``{"id", "image": "a.jpg" | ["a.jpg", ...] (optional),
  "conversations": [{"from": "human" | "gpt" | "system", "value": "...<image>..."}]}``.
- ``llava-jsonl``: the same records, one per line.
- ``minimind-jsonl``: ``{"conversations": [{"role": "user" | "assistant" | "system", "content": ...}],
  "image": "a.jpg, b.jpg"}`` (several images in one comma-separated string; no id).
- ``minimind-parquet``: columns ``conversations`` (the turn list as a JSON string) and
  ``image_bytes`` (encoded image bytes, or a list of them for several images).

Nothing is loaded whole. JSON files are indexed once into byte ranges of their records (numpy
arrays) and each ``dataset[i]`` reads and parses one record; Parquet is read one row group at a
time. File handles open lazily in each process, so DataLoader workers share the index pages
instead of copying a table each.

Record numbers in messages and in ``Sample.index`` are 0-based positions in their file; line
numbers of JSONL files are 1-based, as editors show them.
"""

from __future__ import annotations

import io
import json
import operator
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from vision.preprocess import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from vlm.atomic import atomic_write_json

ImageRef = Path | bytes
"""An image of a sample: an absolute file path (JSON formats) or the encoded bytes (Parquet)."""

FORMATS = ("auto", "llava-json", "llava-jsonl", "minimind-jsonl", "minimind-parquet")

_CHUNK_BYTES = 4 << 20  # index scans read 4 MiB at a time
_UTF8_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"
_PARQUET_MAGIC = b"PAR1"
_LARGE_ROW_GROUP_BYTES = 512 << 20
_DETECT_RECORDS = 16  # records looked at to tell LLaVA from MiniMind-V turns


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


def _bad_sample(
    source: str, index: int, problem: str, sample_id: str | None = None, location: str | None = None
) -> BadSampleError:
    details = [d for d in (location, None if sample_id is None else f"id {sample_id!r}") if d]
    context = f" ({', '.join(details)})" if details else ""
    return BadSampleError(
        f"{source} record {index}{context}: {problem}", source=source, index=index, sample_id=sample_id, problem=problem
    )


class _Invalid(Exception):
    """A problem with one record, raised inside parsing and turned into a ``BadSampleError`` with its context."""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _type_name(value: Any) -> str:
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


# --- byte-range indexes ---------------------------------------------------------------------

_NOT_WHITESPACE = np.ones(256, dtype=bool)
_NOT_WHITESPACE[list(_WHITESPACE)] = False
_JSON_SYNTAX = np.zeros(256, dtype=bool)  # the bytes that decide string and nesting state
_JSON_SYNTAX[list(b'[]{},"\\')] = True


def _skip_bom(handle) -> int:
    if handle.read(3) == _UTF8_BOM:
        return 3
    handle.seek(0)
    return 0


def _index_jsonl(path: Path, chunk_bytes: int = _CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray | None]:
    """Byte ranges ``(N, 2)`` of the non-blank lines of a JSONL file, and their 1-based line numbers.

    The line numbers are ``None`` when there are no blank lines (line = record + 1).
    """
    ranges: list[np.ndarray] = []
    lines: list[np.ndarray] = []
    with open(path, "rb") as handle:
        offset = _skip_bom(handle)  # file offset of pending[0]
        pending = b""
        next_line = 1
        while chunk := handle.read(chunk_bytes):
            pending = pending + chunk if pending else chunk
            buffer = np.frombuffer(pending, dtype=np.uint8)
            newlines = np.flatnonzero(buffer == 10)
            if not newlines.size:
                continue
            starts = np.empty_like(newlines)
            starts[0] = 0
            starts[1:] = newlines[:-1] + 1
            content = np.zeros(buffer.size + 1, dtype=np.int64)
            np.cumsum(_NOT_WHITESPACE[buffer], out=content[1:])
            nonblank = content[newlines] > content[starts]
            ranges.append(offset + np.stack([starts[nonblank], newlines[nonblank]], axis=1))
            lines.append(next_line + np.flatnonzero(nonblank))
            next_line += newlines.size
            consumed = int(newlines[-1]) + 1
            del buffer
            pending = pending[consumed:]
            offset += consumed
        if pending.strip(_WHITESPACE):  # a last line without a newline
            ranges.append(np.array([[offset, offset + len(pending)]], dtype=np.int64))
            lines.append(np.array([next_line], dtype=np.int64))
    if not ranges:
        return np.zeros((0, 2), dtype=np.int64), None
    line_numbers = np.concatenate(lines).astype(np.int64)
    return np.concatenate(ranges).astype(np.int64), None if line_numbers[-1] == len(line_numbers) else line_numbers


def _index_json_array(path: Path, chunk_bytes: int = _CHUNK_BYTES) -> np.ndarray:
    """Byte ranges ``(N, 2)`` of the elements of a top-level JSON array, without parsing it.

    A vectorised scanner: it looks only at ``[ ] { } , " \\``, decides which quotes are escaped
    (an odd run of backslashes before them), which syntax bytes lie outside strings (an even
    number of real quotes before them) and their nesting depth; the commas at depth 1 and the
    closing bracket separate the elements. Ranges may include surrounding whitespace, which
    ``json.loads`` ignores. Each element is parsed, and so fully checked, when it is read.
    """
    separators: list[np.ndarray] = []  # the opening '[', the depth-1 commas, the closing ']'
    state = "before"  # before | inside | after the top-level array
    depth, in_string, backslashes = 0, 0, 0  # carried from one chunk to the next
    with open(path, "rb") as handle:
        offset = _skip_bom(handle)
        while chunk := handle.read(chunk_bytes):
            base, offset = offset, offset + len(chunk)
            begin = 0
            if state == "before":
                rest = chunk.lstrip(_WHITESPACE)
                if not rest:
                    continue
                begin = len(chunk) - len(rest)
                if rest[:1] != b"[":
                    raise DataFormatError(
                        f"{path}: not a JSON array (byte {base + begin} is {rest[:1].decode(errors='replace')!r}, expected '['); "
                        "for one JSON object per line use format='llava-jsonl' or 'minimind-jsonl'"
                    )
                separators.append(np.array([base + begin], dtype=np.int64))
                state, depth, begin = "inside", 1, begin + 1
            if state == "after":
                if chunk.strip(_WHITESPACE):
                    raise DataFormatError(f"{path}: data after the end of the top-level JSON array (near byte {base})")
                continue

            data = np.frombuffer(chunk, dtype=np.uint8)[begin:]
            positions = np.flatnonzero(_JSON_SYNTAX[data])
            values = data[positions]
            # Runs of backslashes: a quote right after an odd run is escaped.
            slashes = positions[values == 92]
            if slashes.size:
                breaks = np.flatnonzero(np.diff(slashes) != 1)
                run_first = np.concatenate(([0], breaks + 1))
                run_last = np.concatenate((breaks, [slashes.size - 1]))
                run_end, run_length = slashes[run_last], run_last - run_first + 1
                if slashes[0] == 0:
                    run_length[0] += backslashes
            else:
                run_end, run_length = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
            if backslashes and not (slashes.size and slashes[0] == 0):  # a run that ended the last chunk
                run_end, run_length = np.concatenate(([-1], run_end)), np.concatenate(([backslashes], run_length))
            quotes = positions[values == 34]
            if quotes.size and run_end.size:
                k = np.minimum(np.searchsorted(run_end, quotes - 1), run_end.size - 1)
                quotes = quotes[~((run_end[k] == quotes - 1) & (run_length[k] % 2 == 1))]
            backslashes = int(run_length[-1]) if run_end.size and run_end[-1] == data.size - 1 else 0
            # Brackets and commas outside strings, and the depth before each.
            syntax = positions[(values != 92) & (values != 34)]
            syntax = syntax[(np.searchsorted(quotes, syntax) + in_string) % 2 == 0]
            in_string = (in_string + quotes.size) % 2
            kinds = data[syntax]
            delta = np.isin(kinds, (91, 123)).astype(np.int64) - np.isin(kinds, (93, 125))
            depth_after = depth + np.cumsum(delta)
            commas = syntax[(kinds == 44) & (depth_after == 1)]
            closed = np.flatnonzero(depth_after == 0)
            if closed.size:
                end = int(syntax[closed[0]])
                if kinds[closed[0]] != 93:
                    raise DataFormatError(
                        f"{path}: byte {base + begin + end}: '}}' closes the top-level array; the file is malformed "
                        f"near record {sum(len(s) for s in separators) - 1 + int((commas < end).sum())}"
                    )
                separators += [base + begin + commas[commas < end], np.array([base + begin + end], dtype=np.int64)]
                state = "after"
                if chunk[begin + end + 1 :].strip(_WHITESPACE):
                    raise DataFormatError(
                        f"{path}: data after the end of the top-level JSON array (byte {base + begin + end + 1})"
                    )
            else:
                separators.append(base + begin + commas)
                depth = int(depth_after[-1]) if depth_after.size else depth

    if state == "before":
        raise DataFormatError(f"{path}: empty file, expected a JSON array of records")
    bounds = np.concatenate(separators)
    if state == "inside":
        inside = " inside a string" if in_string else ""
        raise DataFormatError(
            f"{path}: truncated: the file ends{inside} in record {bounds.size - 1} before the top-level array is closed"
        )
    ranges = np.stack([bounds[:-1] + 1, bounds[1:]], axis=1).astype(np.int64)
    if len(ranges) == 1:  # "[]" has one whitespace-only range and no records
        with open(path, "rb") as handle:
            handle.seek(int(ranges[0, 0]))
            if not handle.read(int(ranges[0, 1] - ranges[0, 0])).strip(_WHITESPACE):
                ranges = ranges[:0]
    return ranges


# --- files of records -----------------------------------------------------------------------


class _JsonRecords:
    """The records of one JSONL file or JSON array: an index of byte ranges; one record read at a time."""

    def __init__(self, path: Path, container: str):
        self.path = path
        self.container = container  # "jsonl" | "json"
        if container == "jsonl":
            self.ranges, self.line_numbers = _index_jsonl(path)
        else:
            self.ranges, self.line_numbers = _index_json_array(path), None
        self._handle: Any = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.ranges)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_pid": None}

    def close(self) -> None:
        if getattr(self, "_handle", None) is not None and self._pid == os.getpid():  # also after a failed __init__
            self._handle.close()
        self._handle = self._pid = None

    __del__ = close

    def location(self, index: int) -> str | None:
        if self.container != "jsonl":
            return None
        return f"line {int(self.line_numbers[index]) if self.line_numbers is not None else index + 1}"

    def read_bytes(self, index: int) -> bytes:
        if self._handle is None or self._pid != os.getpid():  # never share a handle across a fork
            self._handle, self._pid = open(self.path, "rb"), os.getpid()
        start, end = (int(x) for x in self.ranges[index])
        if hasattr(os, "pread"):
            return os.pread(self._handle.fileno(), end - start, start)
        self._handle.seek(start)
        return self._handle.read(end - start)

    def read(self, index: int) -> Any:
        try:
            return json.loads(self.read_bytes(index))
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            where = (
                ""
                if self.container == "jsonl"
                else f" (bytes {self.ranges[index, 0]}-{self.ranges[index, 1]} of the file)"
            )
            raise _Invalid(f"not valid JSON{where}: {err}") from None


class _ParquetRecords:
    """The rows of one MiniMind-V Parquet file, read one row group at a time (the last one is kept)."""

    columns = ("conversations", "image_bytes")

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path = path
        try:
            with pq.ParquetFile(path) as parquet:
                names = parquet.schema_arrow.names
                metadata = parquet.metadata
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
            raise DataFormatError(f"{path}: not a readable Parquet file ({err})") from err
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise DataFormatError(
                f"{path}: Parquet columns {missing} missing (found {names}); MiniMind-V Parquet has "
                "'conversations' (JSON string of turns) and 'image_bytes'"
            )
        self.read_columns = [*self.columns, *(["id"] if "id" in names else [])]
        groups = [metadata.row_group(g) for g in range(metadata.num_row_groups)]
        self.group_starts = np.concatenate(([0], np.cumsum([g.num_rows for g in groups]))).astype(np.int64)
        largest = max((g.total_byte_size for g in groups), default=0)
        if largest > _LARGE_ROW_GROUP_BYTES:
            warnings.warn(
                f"{path}: row groups of up to {largest / 2**30:.1f} GiB; every DataLoader worker holds one decoded "
                "row group, and shuffled reads decode one per sample. Rewrite it with small row groups, e.g. "
                "pyarrow.parquet.write_table(table, path, row_group_size=1000).",
                stacklevel=3,
            )
        self._file: Any = None
        self._pid: int | None = None
        self._group: int | None = None
        self._table: Any = None

    def __len__(self) -> int:
        return int(self.group_starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": None, "_group": None, "_table": None}

    def close(self) -> None:
        if getattr(self, "_file", None) is not None and self._pid == os.getpid():  # also after a failed __init__
            self._file.close()
        self._file = self._pid = self._group = self._table = None

    __del__ = close

    def location(self, index: int) -> str | None:
        return None

    def read(self, index: int) -> dict[str, Any]:
        import pyarrow.parquet as pq

        if self._file is None or self._pid != os.getpid():
            self._file, self._pid, self._group, self._table = (
                pq.ParquetFile(self.path, memory_map=True),
                os.getpid(),
                None,
                None,
            )
        group = int(np.searchsorted(self.group_starts, index, side="right")) - 1
        if group != self._group:
            self._table = None  # free the previous group before decoding the next
            self._table = self._file.read_row_group(group, columns=self.read_columns)
            self._group = group
        row = index - int(self.group_starts[group])
        return {name: self._table.column(name)[row].as_py() for name in self.read_columns}


# --- turning a record into a Sample ------------------------------------------------------------


@dataclass(frozen=True)
class _Flavour:
    """How one family of formats names turns and images."""

    role_key: str
    content_key: str
    roles: dict[str, str]
    comma_separated_images: bool


_LLAVA = _Flavour(
    "from",
    "value",
    {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"},
    False,
)
_MINIMIND = _Flavour("role", "content", {"user": "user", "assistant": "assistant", "system": "system"}, True)


def _normalise_turns(conversations: Any, flavour: _Flavour) -> list[dict[str, str]]:
    if conversations is None:
        raise _Invalid("no 'conversations' field")
    if not isinstance(conversations, list):
        raise _Invalid(f"'conversations' is a {_type_name(conversations)}, expected an array of turns")
    if not conversations:
        raise _Invalid("'conversations' is empty")
    messages, speakers = [], []
    for t, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise _Invalid(
                f"turn {t} is a {_type_name(turn)}, expected an object with {flavour.role_key!r} and {flavour.content_key!r}"
            )
        if flavour.role_key not in turn:
            raise _Invalid(f"turn {t} has no {flavour.role_key!r} field (it has {sorted(turn)})")
        speaker = turn[flavour.role_key]
        role = flavour.roles.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise _Invalid(
                f"turn {t} has unknown {flavour.role_key!r} value {speaker!r}; expected one of {sorted(flavour.roles)}"
            )
        content = turn.get(flavour.content_key)
        if not isinstance(content, str):
            raise _Invalid(
                f"turn {t} ({speaker}) has no text: {flavour.content_key!r} is {_type_name(content)}, expected a string"
            )
        messages.append({"role": role, "content": content})
        speakers.append(speaker)

    first = 1 if messages[0]["role"] == "system" else 0
    if first == len(messages):
        raise _Invalid("the conversation is only a system message; it needs a user turn and an assistant reply")
    for t in range(first, len(messages)):
        expected = "user" if (t - first) % 2 == 0 else "assistant"
        if messages[t]["role"] != expected:
            if messages[t]["role"] == "system":
                raise _Invalid(f"turn {t} is a system message; only the first turn may be one")
            raise _Invalid(
                f"turn {t} is {messages[t]['role']} ({speakers[t]!r}) but {expected} was expected: turns must alternate "
                "user/assistant, starting with user (after an optional system message)"
            )
    if messages[-1]["role"] != "assistant":
        raise _Invalid(
            f"the conversation ends with a user turn (turn {len(messages) - 1}); the last turn must be the assistant's reply"
        )
    return messages


def _image_names(field: Any, flavour: _Flavour) -> list[str]:
    """The image paths of a JSON record as written: ``"a.jpg"``, ``["a.jpg", "b.jpg"]`` or MiniMind's ``"a.jpg, b.jpg"``."""
    if field is None:
        return []
    if isinstance(field, str):
        names = [n.strip() for n in field.split(",")] if flavour.comma_separated_images else [field]
    elif isinstance(field, list):
        names = field
    else:
        raise _Invalid(f"'image' is a {_type_name(field)}, expected a path or an array of paths")
    for k, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise _Invalid(f"image {k} in 'image' is {name!r}, expected a file path")
    return names


def _image_bytes(field: Any) -> list[bytes]:
    """The images of a Parquet row: one ``bytes`` value, a list of them, or null (text-only)."""
    if field is None:
        return []
    images = field if isinstance(field, list) else [field]
    for k, data in enumerate(images):
        if not isinstance(data, bytes):
            raise _Invalid(f"image {k} in 'image_bytes' is a {type(data).__name__}, expected encoded image bytes")
        if not data:
            raise _Invalid(f"image {k} in 'image_bytes' is empty (0 bytes)")
    return images


def _check_image_tags(messages: list[dict[str, str]], num_images: int, image_token: str) -> None:
    for t, message in enumerate(messages):
        if message["role"] != "user" and image_token in message["content"]:
            raise _Invalid(f"{image_token} in turn {t} ({message['role']}); image tags belong in user turns")
    tags = sum(m["content"].count(image_token) for m in messages)
    if tags != num_images:
        raise _Invalid(f"{_count(tags, image_token + ' tag')} but {_count(num_images, 'image')}")


class _DataFile:
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
        self.records: _JsonRecords | _ParquetRecords = (
            _ParquetRecords(self.path) if container == "parquet" else _JsonRecords(self.path, container)
        )
        family = format.split("-")[0] if format != "auto" else _detect_family(self)
        self.flavour = _LLAVA if family == "llava" else _MINIMIND
        self.format = f"{family}-{container}"

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, index: int, image_root: Path | None, image_token: str) -> Sample:
        location = self.records.location(index)
        sample_id = None
        try:
            record = self.records.read(index)
            if not isinstance(record, dict):
                raise _Invalid(f"the record is a JSON {_type_name(record)}, expected an object")
            if record.get("id") is not None:
                sample_id = str(record["id"])
            conversations = record.get("conversations")
            if isinstance(self.records, _ParquetRecords) and isinstance(conversations, str):
                try:
                    conversations = json.loads(conversations)
                except ValueError as err:
                    raise _Invalid(f"'conversations' is not valid JSON: {err}") from None
            messages = _normalise_turns(conversations, self.flavour)
            if isinstance(self.records, _ParquetRecords):
                images: list[ImageRef] = list(_image_bytes(record.get("image_bytes")))
                _check_image_tags(messages, len(images), image_token)
            else:
                names = _image_names(record.get("image"), self.flavour)
                _check_image_tags(messages, len(names), image_token)
                root = image_root if image_root is not None else self.path.parent
                images = [root / name for name in names]
                for k, (name, image) in enumerate(zip(names, images)):
                    if not os.path.isfile(image):
                        raise _Invalid(f"image {k} ({name!r}) not found: no file {image}")
        except _Invalid as err:
            raise _bad_sample(self.source, index, str(err), sample_id, location) from None
        return Sample(self.source, index, sample_id if sample_id is not None else str(index), messages, images)


def _sniff_container(path: Path) -> str:
    """``parquet``, ``json`` (a top-level array) or ``jsonl``, from the extension and the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(64 << 10)
    if path.suffix.lower() == ".parquet" or head.startswith(_PARQUET_MAGIC):
        return "parquet"
    first = head.removeprefix(_UTF8_BOM).lstrip(_WHITESPACE)[:1]
    if first == b"[":
        return "json"
    if first == b"{" or not head.strip(_WHITESPACE):
        return "jsonl"
    raise DataFormatError(
        f"{path}: cannot tell the format: it starts with {first.decode(errors='replace')!r}, not '[' (JSON array), "
        f"'{{' (JSONL) or Parquet; pass format= one of {FORMATS[1:]}"
    )


def _detect_family(data_file: _DataFile) -> str:
    """``llava`` (turns with "from"/"value") or ``minimind`` ("role"/"content"), from the first readable records."""
    if isinstance(data_file.records, _ParquetRecords):
        return "minimind"
    for index in range(min(len(data_file.records), _DETECT_RECORDS)):
        try:
            record = data_file.records.read(index)
        except _Invalid:
            continue
        turns = record.get("conversations") if isinstance(record, dict) else None
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            if "from" in turns[0]:
                return "llava"
            if "role" in turns[0]:
                return "minimind"
    if not len(data_file.records):
        return "llava"  # nothing to read; the family does not matter
    raise DataFormatError(
        f"{data_file.source}: cannot tell LLaVA ('from'/'value' turns) from MiniMind-V ('role'/'content' turns) in its "
        f"first {min(len(data_file.records), _DETECT_RECORDS)} records; pass format= one of {FORMATS[1:]}"
    )


# --- the dataset ------------------------------------------------------------------------------


class ConversationDataset:
    """Map-style dataset of ``Sample``s from one or more files, concatenated in order.

    ``dataset[i]`` reads one record and checks its text: JSON, turn roles and order (an
    optional system message, then user/assistant alternating, ending with the assistant),
    ``<image>`` tags only in user turns and as many tags as images, and that image files
    exist. Any problem raises ``BadSampleError``. Images are decoded only by ``load_images``.

    Args:
        paths: one data file or a list of them; indices run through them in order.
        image_root: folder that relative image paths are resolved against (absolute paths
            are kept); default: each data file's own folder.
        format: one of ``FORMATS``; ``"auto"`` detects each file's format.
        image_token: the image placeholder in the text.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        image_root: str | os.PathLike | None = None,
        *,
        format: str = "auto",
        image_token: str = "<image>",
    ):
        if format not in FORMATS:
            raise ValueError(f"unknown data format {format!r}; choose one of {FORMATS}")
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not paths:
            raise ValueError("no data files given")
        if not image_token:
            raise ValueError("image_token must be a non-empty string")
        self.image_root = Path(image_root).absolute() if image_root is not None else None
        if self.image_root is not None and not self.image_root.is_dir():
            raise FileNotFoundError(f"image_root {image_root}: no such folder")
        self.image_token = image_token
        self._files = [_DataFile(path, format) for path in paths]
        self._ends = np.cumsum([len(f) for f in self._files]).astype(np.int64)

    @property
    def sources(self) -> list[tuple[str, str, int]]:
        """``(file, format, number of records)`` for each file, in order."""
        return [(f.source, f.format, len(f)) for f in self._files]

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, index: int) -> Sample:
        index = operator.index(index)
        total = len(self)
        if index < 0:
            index += total
        if not 0 <= index < total:
            raise IndexError(f"index {index} out of range for a dataset of {total} samples")
        file_number = int(np.searchsorted(self._ends, index, side="right"))
        local = index - (int(self._ends[file_number - 1]) if file_number else 0)
        return self._files[file_number].sample(local, self.image_root, self.image_token)

    def __repr__(self) -> str:
        files = ", ".join(f"{source} ({fmt}, {n})" for source, fmt, n in self.sources)
        return f"ConversationDataset({len(self)} samples: {files})"

    def close(self) -> None:
        """Close the file handles this process opened; later reads reopen them."""
        for data_file in self._files:
            data_file.records.close()

    def load_images(self, sample: Sample, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
        """Decode ``sample``'s images as RGB; a missing, broken or oversized image raises ``BadSampleError``."""
        images = []
        for k, image in enumerate(sample.images):
            try:
                images.append(load_image(image, max_pixels))
            except ImageLoadError as err:
                raise _bad_sample(sample.source, sample.index, f"image {k}: {err}", sample.id) from err
        return images


def _check_image_header(image: ImageRef, max_pixels: int) -> None:
    """Read only the header: catches non-images and oversized images without decoding pixels."""
    name = f"{image}: " if isinstance(image, Path) else ""
    try:
        with Image.open(image if isinstance(image, Path) else io.BytesIO(image)) as opened:
            width, height = opened.size
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{name}{err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{name}not a readable image ({err})") from err
    if width * height > max_pixels:
        raise ImageLoadError(f"{name}{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")


class SubsetDataset:
    """The samples of ``dataset`` at ``indices`` (e.g. ``ValidationReport.valid_indices``), with the same ``load_images``."""

    def __init__(self, dataset: ConversationDataset | SubsetDataset, indices: Sequence[int] | np.ndarray):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1:
            raise ValueError(f"indices must be one-dimensional, got shape {self.indices.shape}")
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(dataset)):
            raise IndexError(f"indices must lie in [0, {len(dataset)}), got {self.indices.min()}..{self.indices.max()}")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.dataset[int(self.indices[index])]

    def load_images(self, sample: Sample, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
        """See ``ConversationDataset.load_images``."""
        return self.dataset.load_images(sample, max_pixels)


# --- validation -----------------------------------------------------------------------------


@dataclass
class ValidationReport:
    """What a validation pass found; bad samples are never dropped without being counted here."""

    valid_indices: np.ndarray
    """Indices (into the validated dataset) of the samples that passed, ascending."""
    num_total: int
    """Samples checked."""
    num_bad: int
    """Samples that failed and were left out."""
    first_reasons: list[str]
    """The first few ``BadSampleError`` messages."""
    bad_indices: np.ndarray
    """Indices of the samples that failed."""

    def summary(self) -> str:
        """One paragraph for the log."""
        if not self.num_bad:
            return f"all {self.num_total} samples are valid"
        reasons = "; ".join(self.first_reasons)
        more = f" (and {self.num_bad - len(self.first_reasons)} more)" if self.num_bad > len(self.first_reasons) else ""
        return f"skipped {self.num_bad} of {self.num_total} samples (bad data); first reasons: {reasons}{more}"

    def save(self, path: str | os.PathLike) -> None:
        """Write the report as JSON (atomically), e.g. next to a training run's outputs."""
        atomic_write_json(
            path,
            {
                "summary": self.summary(),
                "num_total": self.num_total,
                "num_bad": self.num_bad,
                "first_reasons": self.first_reasons,
                "bad_indices": self.bad_indices.tolist(),
            },
        )


def validate(
    dataset: ConversationDataset | SubsetDataset,
    *,
    skip_bad: bool,
    check_images: bool = True,
    progress: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_reasons: int = 5,
) -> ValidationReport:
    """Check every sample once; raise on the first bad one, or with ``skip_bad`` count and leave it out.

    ``check_images`` also opens each image's header (not a full decode) to catch files that are
    not images or exceed ``max_pixels``.
    """
    valid, bad, reasons = [], [], []
    for index in tqdm(range(len(dataset)), desc="checking data", unit="sample", disable=not progress):
        try:
            sample = dataset[index]
            if check_images:
                for k, image in enumerate(sample.images):
                    try:
                        _check_image_header(image, max_pixels)
                    except ImageLoadError as err:
                        raise _bad_sample(sample.source, sample.index, f"image {k}: {err}", sample.id) from err
        except BadSampleError as err:
            if not skip_bad:
                raise
            bad.append(index)
            if len(reasons) < num_reasons:
                reasons.append(str(err))
            continue
        valid.append(index)
    return ValidationReport(
        valid_indices=np.asarray(valid, dtype=np.int64),
        num_total=len(dataset),
        num_bad=len(bad),
        first_reasons=reasons,
        bad_indices=np.asarray(bad, dtype=np.int64),
    )
