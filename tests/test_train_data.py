"""Reading LLaVA / MiniMind-V conversation files as they are released, with errors that name the record."""

from __future__ import annotations

import io
import json
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from train.data import (
    BadSampleError,
    ConversationDataset,
    DataFormatError,
    SubsetDataset,
    validate,
)
from train.data.index import index_json_array, index_jsonl


def _png(path: Path, color=(255, 0, 0), size=(4, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _png_bytes(color=(0, 0, 255), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (5, 2), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _llava(id_, image=None, *turns):
    record = {"id": id_, "conversations": [{"from": f, "value": v} for f, v in turns]}
    if image is not None:
        record["image"] = image
    return record


def _caption(id_="c0", image="a.png"):
    return _llava(id_, image, ("human", "Describe the photo.\n<image>"), ("gpt", "a red square"))


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    _png(root / "a.png", (255, 0, 0))
    _png(root / "b.png", (0, 255, 0))
    _png(root / "sub" / "c.png", (0, 0, 255))
    return root


# --- each format, values checked -----------------------------------------------------------------


def test_llava_json_array(tmp_path, images):
    records = [
        _caption("004539375", "a.png"),
        _llava(
            "multi",
            ["a.png", "sub/c.png"],
            ("system", "Be brief."),
            ("human", "<image>\nand <image>: same colour?"),
            ("gpt", "No."),
            ("human", "Which is red?"),
            ("gpt", "The first."),
        ),
        _llava(7, None, ("human", "Hi [there] {x}"), ("gpt", 'Hello "you"')),  # text-only, integer id
    ]
    data = tmp_path / "llava.json"
    data.write_text(json.dumps(records, indent=2))
    dataset = ConversationDataset(data, images)
    assert dataset.sources == [(str(data), "llava-json", 3)]
    assert len(dataset) == 3

    first = dataset[0]
    assert (first.source, first.index, first.id) == (str(data), 0, "004539375")
    assert first.messages == [
        {"role": "user", "content": "Describe the photo.\n<image>"},
        {"role": "assistant", "content": "a red square"},
    ]
    assert first.images == [images / "a.png"] and first.images[0].is_absolute()

    multi = dataset[1]
    assert [m["role"] for m in multi.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert multi.messages[1]["content"] == "<image>\nand <image>: same colour?"
    assert multi.images == [images / "a.png", images / "sub" / "c.png"]
    loaded = dataset.load_images(multi)
    assert [im.mode for im in loaded] == ["RGB", "RGB"]
    assert loaded[0].getpixel((0, 0)) == (255, 0, 0) and loaded[1].getpixel((0, 0)) == (0, 0, 255)

    text_only = dataset[-1]
    assert (text_only.id, text_only.images, dataset.load_images(text_only)) == ("7", [], [])
    assert text_only.messages[1]["content"] == 'Hello "you"'


def test_llava_jsonl_and_default_image_root(tmp_path):
    _png(tmp_path / "pics" / "a.png")
    data = _write_jsonl(
        tmp_path / "sft.jsonl", [_caption("x", "pics/a.png"), _caption("y", str(tmp_path / "pics/a.png"))]
    )
    dataset = ConversationDataset(str(data))  # relative paths resolve against the data file's folder
    assert dataset.sources[0][1] == "llava-jsonl"
    assert [s.id for s in dataset] == ["x", "y"]
    assert dataset[0].images == dataset[1].images == [tmp_path / "pics" / "a.png"]


def test_minimind_jsonl_multi_image_and_no_id(tmp_path, images):
    records = [
        {
            "conversations": [
                {"role": "user", "content": "提供给定图像的简要描述。\n<image>"},
                {"role": "assistant", "content": "红色"},
            ],
            "image": "a.png",
        },
        {
            "conversations": [
                {"role": "system", "content": "你是minimind"},
                {"role": "user", "content": "<image>\n<image>\n两张图有什么不同？"},
                {"role": "assistant", "content": "颜色不同。"},
            ],
            "image": "a.png, b.png",
        },
        {
            "conversations": [{"role": "user", "content": "<image><image>"}, {"role": "assistant", "content": "ok"}],
            "image": "a.png,b.png",
        },
    ]
    dataset = ConversationDataset(_write_jsonl(tmp_path / "sft_vlm.jsonl", records), images)
    assert dataset.sources[0][1] == "minimind-jsonl"
    assert [s.id for s in dataset] == ["0", "1", "2"]
    assert dataset[0].messages == [
        {"role": "user", "content": "提供给定图像的简要描述。\n<image>"},
        {"role": "assistant", "content": "红色"},
    ]
    assert dataset[1].messages[0] == {"role": "system", "content": "你是minimind"}
    assert dataset[1].images == dataset[2].images == [images / "a.png", images / "b.png"]
    assert [im.getpixel((0, 0)) for im in dataset.load_images(dataset[1])] == [(255, 0, 0), (0, 255, 0)]


def _minimind_parquet(path: Path, rows: list[tuple[list, object]], image_type, row_group_size=2) -> Path:
    table = pa.table(
        {
            "conversations": pa.array([json.dumps(c, ensure_ascii=False) for c, _ in rows], pa.string()),
            "image_bytes": pa.array([b for _, b in rows], image_type),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _turns(question: str, answer: str = "ok") -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_minimind_parquet_single_and_multi_image_read_by_row_group(tmp_path):
    red, blue, grey = _png_bytes((255, 0, 0)), _png_bytes((0, 0, 255)), _png_bytes(128, mode="L")
    single = _minimind_parquet(
        tmp_path / "pretrain_i2t.parquet",
        [(_turns(f"<image>\ncaption {i}", f"answer {i}"), [red, blue, grey][i % 3]) for i in range(7)],
        pa.binary(),
    )
    multi = _minimind_parquet(
        tmp_path / "sft_i2t.parquet",
        [(_turns("<image><image> compare"), [red, blue]), (_turns("text only"), None)],
        pa.list_(pa.binary()),
    )
    dataset = ConversationDataset([single, multi])
    assert [fmt for _, fmt, _ in dataset.sources] == ["minimind-parquet", "minimind-parquet"]
    assert len(dataset) == 9

    reader = dataset._files[0].records
    assert reader._file is None  # nothing opened before the first read
    sample = dataset[4]
    assert (sample.index, sample.id) == (4, "4")
    assert sample.messages == [
        {"role": "user", "content": "<image>\ncaption 4"},
        {"role": "assistant", "content": "answer 4"},
    ]
    assert sample.images == [blue]
    assert reader._group == 2 and reader._table.num_rows == 2  # only row group 2 (rows 4-5) decoded
    assert dataset.load_images(dataset[5])[0].getpixel((0, 0)) == (128, 128, 128)  # L -> RGB

    compare = dataset[7]
    assert (compare.source, compare.index) == (str(multi), 0)
    assert compare.images == [red, blue]
    assert [im.getpixel((1, 1)) for im in dataset.load_images(compare)] == [(255, 0, 0), (0, 0, 255)]
    assert dataset[8].images == [] and "bytes" in repr(compare) and len(repr(compare)) < 300


# --- several files ------------------------------------------------------------------------------


def test_files_concatenate_with_errors_naming_file_and_record(tmp_path, images):
    first = _write_jsonl(tmp_path / "one.jsonl", [_caption("a"), _caption("b")])
    second = tmp_path / "two.json"
    second.write_text(json.dumps([_caption("c"), _caption("d", "missing.png"), _caption("e")]))
    dataset = ConversationDataset([first, second], images)
    assert len(dataset) == 5
    assert [(s.source, s.index, s.id) for s in (dataset[1], dataset[2], dataset[4])] == [
        (str(first), 1, "b"),
        (str(second), 0, "c"),
        (str(second), 2, "e"),
    ]
    with pytest.raises(
        BadSampleError, match=r"two\.json record 1 \(id 'd'\): image 0 \('missing.png'\) not found"
    ) as err:
        dataset[3]
    assert (err.value.source, err.value.index, err.value.sample_id) == (str(second), 1, "d")
    with pytest.raises(IndexError):
        dataset[5]


# --- bad data -----------------------------------------------------------------------------------

_BAD_LLAVA = [
    ({"id": "s", "image": "a.png"}, "no 'conversations' field"),
    (_llava("s", "a.png"), "'conversations' is empty"),
    ({"id": "s", "conversations": "hi"}, "'conversations' is a string"),
    (_llava("s", None, ("human", "hi"), ("bot", "yo")), "turn 1 has unknown 'from' value 'bot'"),
    (_llava("s", None, ("gpt", "hello"), ("human", "hi")), "turn 0 is assistant ('gpt') but user was expected"),
    (
        _llava("s", None, ("human", "a"), ("human", "b"), ("gpt", "c")),
        "turn 1 is user ('human') but assistant was expected",
    ),
    (_llava("s", None, ("human", "a"), ("gpt", "b"), ("system", "c"), ("gpt", "d")), "turn 2 is a system message"),
    (_llava("s", None, ("human", "a"), ("gpt", "b"), ("human", "c")), "ends with a user turn (turn 2)"),
    (_llava("s", None, ("system", "x")), "only a system message"),
    (_llava("s", "a.png", ("human", "<image> <image>"), ("gpt", "b")), "2 <image> tags but 1 image"),
    (_llava("s", ["a.png", "b.png"], ("human", "<image>"), ("gpt", "b")), "1 <image> tag but 2 images"),
    (_llava("s", "a.png", ("human", "look"), ("gpt", "b")), "0 <image> tags but 1 image"),
    (_llava("s", None, ("human", "<image>"), ("gpt", "b")), "1 <image> tag but 0 images"),
    (_llava("s", "a.png", ("human", "<image>"), ("gpt", "see <image>")), "<image> in turn 1 (assistant)"),
    (_llava("s", "nope.png", ("human", "<image>"), ("gpt", "b")), "image 0 ('nope.png') not found"),
    (_llava("s", 3, ("human", "<image>"), ("gpt", "b")), "'image' is a number"),
    (_llava("s", "", ("human", "<image>"), ("gpt", "b")), "image 0 in 'image' is ''"),
    (
        {"id": "s", "conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "b"}]},
        "turn 0 (human) has no text",
    ),
    ({"id": "s", "conversations": [{"value": "hi"}]}, "turn 0 has no 'from' field"),
    ({"id": "s", "conversations": ["hi"]}, "turn 0 is a string"),
    (["not", "an", "object"], "the record is a JSON array, expected an object"),
]


@pytest.mark.parametrize("record, problem", _BAD_LLAVA, ids=[p for _, p in _BAD_LLAVA])
def test_bad_llava_records_name_file_record_id_and_problem(tmp_path, images, record, problem):
    data = _write_jsonl(tmp_path / "sft.jsonl", [_caption("ok0"), _caption("ok1"), record])
    dataset = ConversationDataset(data, images)
    with pytest.raises(BadSampleError) as err:
        dataset[2]
    message = str(err.value)
    assert message.startswith(f"{data} record 2 (line 3")
    assert problem in message
    if isinstance(record, dict):
        assert "id 's'" in message
    dataset[1]  # neighbours are unaffected


def test_unreadable_json_names_the_line_in_jsonl_and_the_record_in_arrays(tmp_path, images):
    good = json.dumps(_caption())
    jsonl = tmp_path / "sft.jsonl"
    jsonl.write_text(f"{good}\n\n{good}\n{{'single': 'quotes'}}\n   \n{good}")  # blank lines are not records
    dataset = ConversationDataset(jsonl, images)
    assert len(dataset) == 4
    with pytest.raises(BadSampleError, match=r"sft\.jsonl record 2 \(line 4\): not valid JSON"):
        dataset[2]
    assert dataset[3].index == 3

    array = tmp_path / "llava.json"
    array.write_text(f'[{good},\n {{"id": "x", "conversations": [1 2]}},\n {good}]')
    dataset = ConversationDataset(array, images)
    assert len(dataset) == 3
    with pytest.raises(BadSampleError, match=r"llava\.json record 1: not valid JSON \(bytes \d+-\d+ of the file\)"):
        dataset[1]
    assert dataset[2].id == "c0"


def test_a_latin1_file_is_named_as_not_utf8_with_the_fix(tmp_path, images):
    record = _llava("c0", "a.png", ("human", "<image>\nQu'est-ce que c'est ?"), ("gpt", "un carr\u00e9 rouge, tr\u00e8s joli"))
    latin1 = tmp_path / "sft.json"
    latin1.write_bytes(json.dumps([record, record], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"sft\.json: none of its first 2 records can be read; record 0: not UTF-8 text "
                                              r"\(bytes \d+-\d+ of the file\): byte 0xe9 at \d+ of the record cannot be decoded.*"
                                              r"iconv -f latin1 -t utf-8 sft\.json > NEW"):
        ConversationDataset(latin1, images)
    # one Latin-1 record among good ones: that record is named, the others read
    mixed = tmp_path / "mixed.jsonl"
    good = json.dumps(_caption()).encode()
    mixed.write_bytes(good + b"\n" + json.dumps(record, ensure_ascii=False).encode("latin-1") + b"\n" + good + b"\n")
    dataset = ConversationDataset(mixed, images)
    with pytest.raises(BadSampleError, match=r"mixed\.jsonl record 1 \(line 2\): not UTF-8 text: byte 0xe9"):
        dataset[1]
    assert dataset[2].id == "c0"


def test_bad_minimind_records(tmp_path, images):
    records = [
        {
            "conversations": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}],
            "image": "a.png, b.png",
        },
        {"conversations": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        {
            "conversations": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}],
            "image": "a.png, ",
        },
    ]
    dataset = ConversationDataset(_write_jsonl(tmp_path / "m.jsonl", records), images, format="minimind-jsonl")
    with pytest.raises(BadSampleError, match=r"m\.jsonl record 0 \(line 1\): 1 <image> tag but 2 images"):
        dataset[0]
    with pytest.raises(BadSampleError, match=r"record 1 \(line 2\): turn 0 has unknown 'role' value 'human'"):
        dataset[1]
    with pytest.raises(BadSampleError, match=r"record 2 \(line 3\): image 1 in 'image' is ''"):
        dataset[2]

    parquet = tmp_path / "bad.parquet"
    pq.write_table(
        pa.table(
            {
                "conversations": ["not json", json.dumps(_turns("<image>")), json.dumps(_turns("<image>"))],
                "image_bytes": [_png_bytes(), b"", b"this is not an image"],
            }
        ),
        parquet,
    )
    dataset = ConversationDataset(parquet)
    with pytest.raises(BadSampleError, match=r"bad\.parquet record 0: 'conversations' is not valid JSON"):
        dataset[0]
    with pytest.raises(BadSampleError, match=r"bad\.parquet record 1: image 0 in 'image_bytes' is empty"):
        dataset[1]
    with pytest.raises(BadSampleError, match=r"bad\.parquet record 2 \(id '2'\): image 0: <\d+ bytes of image data>: not a readable image"):
        dataset.load_images(dataset[2])


def test_load_images_errors_name_record_and_image(tmp_path, images):
    (images / "broken.png").write_bytes(_png_bytes()[:30])  # a truncated PNG: the header reads, the pixels do not
    data = _write_jsonl(
        tmp_path / "d.jsonl", [_llava("x", ["a.png", "broken.png"], ("human", "<image><image>"), ("gpt", "y"))]
    )
    dataset = ConversationDataset(data, images)
    with pytest.raises(BadSampleError, match=r"d\.jsonl record 0 \(id 'x'\): image 1: .*broken\.png"):
        dataset.load_images(dataset[0])
    with pytest.raises(BadSampleError, match=r"image 0: .*exceeds the limit of 10"):
        dataset.load_images(dataset[0], max_pixels=10)


def test_whole_file_problems(tmp_path):
    (tmp_path / "obj.json").write_text('{"conversations": [] ')
    with pytest.raises(DataFormatError):
        ConversationDataset(tmp_path / "obj.json", format="llava-json")
    (tmp_path / "cut.json").write_text('[{"id": "a", "conversations": [{"from": "human", "value": "x]')
    with pytest.raises(DataFormatError, match=r"truncated: the file ends inside a string in record 0"):
        ConversationDataset(tmp_path / "cut.json")
    (tmp_path / "tail.json").write_text("[{}, {}] {}")
    with pytest.raises(DataFormatError, match="data after the end"):
        ConversationDataset(tmp_path / "tail.json")
    (tmp_path / "weird.txt").write_text("hello")
    with pytest.raises(DataFormatError, match="cannot tell the format"):
        ConversationDataset(tmp_path / "weird.txt")
    (tmp_path / "other.jsonl").write_text('{"messages": []}\n')
    with pytest.raises(DataFormatError, match="cannot tell LLaVA"):
        ConversationDataset(tmp_path / "other.jsonl")
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "cols.parquet")
    with pytest.raises(DataFormatError, match=r"columns \['conversations', 'image_bytes'\] missing"):
        ConversationDataset(tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match="unknown data format"):
        ConversationDataset(tmp_path / "tail.json", format="sharegpt")
    with pytest.raises(FileNotFoundError, match="no such data file"):
        ConversationDataset(tmp_path / "absent.json")
    (tmp_path / "empty.json").write_text(" [ \n ] \n")
    assert len(ConversationDataset(tmp_path / "empty.json")) == 0


def test_explicit_format_overrides_detection(tmp_path, images):
    # A JSONL file named .json, with MiniMind turns: auto-detection reads the content, not only the name.
    record = {
        "conversations": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}],
        "image": "a.png",
    }
    data = _write_jsonl(tmp_path / "data.json", [record])
    assert ConversationDataset(data, images).sources[0][1] == "minimind-jsonl"
    # Read as LLaVA on purpose, the same turns are errors rather than silently different data.
    with pytest.raises(BadSampleError, match="turn 0 has no 'from' field"):
        ConversationDataset(data, images, format="llava-jsonl")[0]


# --- validation ------------------------------------------------------------------------------------


def test_validate_skips_and_reports_bad_samples(tmp_path, images):
    (images / "fake.png").write_text("not an image")
    records = [
        _caption("g0"),
        _llava("b1", "a.png", ("human", "no tag"), ("gpt", "x")),
        _caption("g2", "b.png"),
        _caption("b3", "fake.png"),  # exists, but is no image: found only by check_images
        _caption("b4", "gone.png"),
        _caption("g5"),
    ]
    data = tmp_path / "train.json"
    data.write_text(json.dumps(records))
    dataset = ConversationDataset(data, images)

    report = validate(dataset, skip_bad=True, num_reasons=2)
    assert report.valid_indices.tolist() == [0, 2, 5] and report.bad_indices.tolist() == [1, 3, 4]
    assert (report.num_total, report.num_bad) == (6, 3)
    assert len(report.first_reasons) == 2
    assert report.first_reasons[0] == f"{data} record 1 (id 'b1'): 0 <image> tags but 1 image"
    assert (
        report.first_reasons[1].startswith(f"{data} record 3 (id 'b3'): image 0: ")
        and "fake.png" in report.first_reasons[1]
    )
    summary = report.summary()
    assert summary.startswith("skipped 3 of 6 samples (bad data); first reasons: ") and "(and 1 more)" in summary

    without_images = validate(dataset, skip_bad=True, check_images=False)
    assert without_images.valid_indices.tolist() == [0, 2, 3, 5]

    with pytest.raises(BadSampleError, match="record 1 .*0 <image> tags but 1 image"):
        validate(dataset, skip_bad=False)

    subset = SubsetDataset(dataset, report.valid_indices)
    assert [s.id for s in subset] == ["g0", "g2", "g5"]
    assert subset.load_images(subset[1])[0].getpixel((0, 0)) == (0, 255, 0)
    assert validate(subset, skip_bad=False).summary() == "all 3 samples are valid"

    report.save(tmp_path / "out" / "data_report.json")
    saved = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert saved["num_bad"] == 3 and saved["bad_indices"] == [1, 3, 4]


def test_validate_checks_parquet_image_headers(tmp_path):
    parquet = _minimind_parquet(
        tmp_path / "p.parquet", [(_turns("<image>"), _png_bytes()), (_turns("<image>"), b"GIF89a-garbage")], pa.binary()
    )
    report = validate(ConversationDataset(parquet), skip_bad=True, progress=True)
    assert report.valid_indices.tolist() == [0]
    assert "p.parquet record 1 (id '1'): image 0: not a readable image" in report.first_reasons[0]


# --- the indexes --------------------------------------------------------------------------------

_TRICKY = [
    {"id": "brackets", "conversations": [{"from": "human", "value": "[[{,}]] ] } , [ {"}]},
    {"id": 'quote\\"s', "v": 'he said "hi" \\" \\\\ \\\\" , ]'},
    {"id": "slashes", "v": "\\", "w": "\\\\", "x": "ends with backslash\\", "y": '\\"'},
    {"id": "unicode", "v": "中文 😀 é \u2028 \u0000 \\u005d", "nested": [[1, [2, {"a": [3]}]], {"b": {"c": []}}]},
    [1, 2, {"a": "]"}],
    "a string, with commas",
    12.5e-3,
    None,
    {},
    [],
    {"last": True},
]


@pytest.mark.parametrize("ensure_ascii, indent", [(True, None), (False, 2), (False, None)])
def test_json_array_index_matches_json_load(tmp_path, ensure_ascii, indent):
    path = tmp_path / "tricky.json"
    path.write_bytes(
        b"\xef\xbb\xbf \n" + json.dumps(_TRICKY, ensure_ascii=ensure_ascii, indent=indent).encode() + b"\n\n"
    )
    expected = json.loads(path.read_bytes().decode("utf-8-sig"))
    raw = path.read_bytes()
    for chunk_bytes in [1, 2, 3, 5, 7, 16, 64, 1 << 20]:  # small chunks cut escapes, strings and brackets apart
        ranges = index_json_array(path, chunk_bytes=chunk_bytes)
        assert [json.loads(raw[s:e]) for s, e in ranges] == expected, chunk_bytes


def test_jsonl_index_matches_lines(tmp_path):
    lines = [json.dumps(r, ensure_ascii=False) for r in _TRICKY if isinstance(r, dict)]
    path = tmp_path / "tricky.jsonl"
    path.write_bytes(
        ("\n".join(lines[:2]) + "\r\n\n  \t\n" + "\n".join(lines[2:])).encode()
    )  # blank lines, CRLF, no final newline
    raw = path.read_bytes()
    for chunk_bytes in [1, 3, 8, 1 << 20]:
        ranges, line_numbers = index_jsonl(path, chunk_bytes=chunk_bytes)
        assert [json.loads(raw[s:e]) for s, e in ranges] == [json.loads(line) for line in lines]
        assert line_numbers.tolist() == [1, 2, *range(5, 5 + len(lines) - 2)]
    path.write_text("\n".join(lines) + "\n")
    ranges, line_numbers = index_jsonl(path)
    assert len(ranges) == len(lines) and line_numbers is None


# --- DataLoader workers: small pickles, lazy handles, fork-safe ----------------------------------------


def test_dataset_pickles_small_and_reads_after_fork(tmp_path, images):
    long_text = "a long caption " * 40
    records = [_llava(f"id{i}", "a.png", ("human", f"<image>\n{i}"), ("gpt", long_text)) for i in range(2000)]
    array = tmp_path / "big.json"
    array.write_text(json.dumps(records))
    jsonl = _write_jsonl(tmp_path / "big.jsonl", records)
    parquet = _minimind_parquet(
        tmp_path / "big.parquet", [(_turns("<image>", long_text), _png_bytes()) for _ in range(2000)], pa.binary(), 500
    )
    dataset = ConversationDataset([array, jsonl, parquet], images)
    assert dataset[10].id == "id10" and dataset[2010].id == "id10" and dataset[4010].id == "10"  # handles now open
    data_bytes = sum(p.stat().st_size for p in (array, jsonl, parquet))
    pickled = pickle.dumps(dataset)
    assert len(pickled) < data_bytes / 20, (len(pickled), data_bytes)
    copy = pickle.loads(pickled)
    assert copy[3999] == dataset[3999] and copy[5999].messages == dataset[5999].messages

    global _FORKED
    _FORKED = dataset  # inherited by the forked children together with the parent's open handles
    with multiprocessing.get_context("fork").Pool(2) as pool:
        ids = pool.map(_forked_sample_id, [5, 2500, 4999, 5000])
    assert ids == ["id5", "id500", "999", "1000"]


_FORKED: ConversationDataset | None = None


def _forked_sample_id(index: int) -> str:
    return _FORKED[index].id


def test_sample_is_frozen_and_numpy_indices_work(tmp_path, images):
    dataset = ConversationDataset(_write_jsonl(tmp_path / "d.jsonl", [_caption("a"), _caption("b")]), images)
    sample = dataset[np.int64(1)]
    assert sample.id == "b"
    with pytest.raises(AttributeError):
        sample.id = "y"


def test_a_truncated_jpeg_is_found_before_training_and_checked_files_are_remembered(tmp_path, images, monkeypatch):
    """The header of a JPEG cut in half reads fine; the check reads its data through, and each good file only once."""
    import train.data.image_check as image_check

    monkeypatch.setenv("VLM_CACHE", str(tmp_path / "cache"))
    photo = io.BytesIO()
    Image.effect_noise((64, 48), 60).convert("RGB").save(photo, format="JPEG")
    (images / "cut.jpg").write_bytes(photo.getvalue()[: len(photo.getvalue()) // 2])
    with Image.open(images / "cut.jpg") as opened:
        assert opened.size == (64, 48)  # what the header-only check saw
    data = _write_jsonl(tmp_path / "d.jsonl", [_caption("a", "a.png"), _caption("cut", "cut.jpg"), _caption("b", "b.png")])
    with pytest.raises(BadSampleError, match=r"d\.jsonl record 1 \(id 'cut'\): image 0: .*cut\.jpg: not a readable image "
                                             r"\(image file is truncated"):
        validate(ConversationDataset(data, images), skip_bad=False)
    report = validate(ConversationDataset(data, images), skip_bad=True)
    assert report.valid_indices.tolist() == [0, 2] and report.num_bad == 1 and "cut.jpg" in report.first_reasons[0]

    calls = []
    real = image_check.check_image
    monkeypatch.setattr(image_check, "check_image", lambda image, limit: (calls.append(Path(image).name), real(image, limit)))
    validate(ConversationDataset(data, images), skip_bad=True)
    assert calls == ["cut.jpg"]  # a.png and b.png passed before: remembered; the bad file is checked again
    _png(images / "a.png", (9, 9, 9), size=(7, 7))  # an edited file is checked anew
    calls.clear()
    validate(ConversationDataset(data, images), skip_bad=True)
    assert calls == ["a.png", "cut.jpg"]


def test_the_checked_images_cache_keeps_the_newest_entries_only(tmp_path, images, monkeypatch):
    import train.data.image_check as image_check

    monkeypatch.setattr(image_check, "MAX_REMEMBERED", 2)
    cache = image_check.CheckedImages(tmp_path / "cache")
    for name in ("a.png", "b.png", "sub/c.png"):
        cache.check(images / name, 1000)
    cache.save()
    kept = (tmp_path / "cache" / image_check.CACHE_NAME).read_text().split()
    assert kept == [cache.key(images / n, 1000) for n in ("b.png", "sub/c.png")]  # a.png, the oldest, forgotten
    assert image_check.CheckedImages(tmp_path / "cache").known.keys() == set(kept)
