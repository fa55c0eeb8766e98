"""Byte-range indexes of JSONL files and top-level JSON arrays: records found without parsing the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from train.data.sample import DataFormatError

_CHUNK_BYTES = 4 << 20  # index scans read 4 MiB at a time
UTF8_BOM = b"\xef\xbb\xbf"
WHITESPACE = b" \t\r\n"

_NOT_WHITESPACE = np.ones(256, dtype=bool)
_NOT_WHITESPACE[list(WHITESPACE)] = False
_JSON_SYNTAX = np.zeros(256, dtype=bool)  # the bytes that decide string and nesting state
_JSON_SYNTAX[list(b'[]{},"\\')] = True


def _skip_bom(handle) -> int:
    if handle.read(3) == UTF8_BOM:
        return 3
    handle.seek(0)
    return 0


def index_jsonl(path: Path, chunk_bytes: int = _CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray | None]:
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
        if pending.strip(WHITESPACE):  # a last line without a newline
            ranges.append(np.array([[offset, offset + len(pending)]], dtype=np.int64))
            lines.append(np.array([next_line], dtype=np.int64))
    if not ranges:
        return np.zeros((0, 2), dtype=np.int64), None
    line_numbers = np.concatenate(lines).astype(np.int64)
    return np.concatenate(ranges).astype(np.int64), None if line_numbers[-1] == len(line_numbers) else line_numbers


def index_json_array(path: Path, chunk_bytes: int = _CHUNK_BYTES) -> np.ndarray:
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
                rest = chunk.lstrip(WHITESPACE)
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
                if chunk.strip(WHITESPACE):
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
                if chunk[begin + end + 1 :].strip(WHITESPACE):
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
            if not handle.read(int(ranges[0, 1] - ranges[0, 0])).strip(WHITESPACE):
                ranges = ranges[:0]
    return ranges
