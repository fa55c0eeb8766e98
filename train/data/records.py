"""The records of one file, read one at a time: JSON / JSONL through a byte-range index, Parquet by row groups."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from train.data.index import index_json_array, index_jsonl
from train.data.sample import DataFormatError, InvalidRecord

_LARGE_ROW_GROUP_BYTES = 512 << 20


class JsonRecords:
    """The records of one JSONL file or JSON array: an index of byte ranges; one record read at a time."""

    def __init__(self, path: Path, container: str):
        self.path = path
        self.container = container  # "jsonl" | "json"
        if container == "jsonl":
            self.ranges, self.line_numbers = index_jsonl(path)
        else:
            self.ranges, self.line_numbers = index_json_array(path), None
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
            if isinstance(err, UnicodeDecodeError):
                raise InvalidRecord(
                    f"not UTF-8 text{where}: byte 0x{err.object[err.start]:02x} at {err.start} of the record "
                    f"cannot be decoded; training files must be UTF-8 (a Latin-1 file converts with "
                    f"`iconv -f latin1 -t utf-8 {self.path.name} > NEW`)"
                ) from None
            raise InvalidRecord(f"not valid JSON{where}: {err}") from None


class ParquetRecords:
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
