"""The bad-input corpus: what an adversarial or careless user feeds the command line, each case run as they would.

Every case runs one ``vlm`` command in-process (``apps.cli.main``) on a file made for it and is one
of three outcomes, asserted:

- ``refused``: a non-zero exit and one ``vlm COMMAND: error:`` (or ``train: error:``) line that
  names the file, field, flag or record and matches the case's pattern; no traceback, nothing
  answered or written.
- ``skipped``: the command finishes (exit 0) and says on stderr which line or record it left
  out and why; that record gets no answer (predict, eval: the rest of the file is answered).
- ``accepted``: an input that looks odd but is valid (16-bit or float images, CMYK, palettes,
  animations, unusual text): exit 0 and an answer.

An exception escaping ``main`` fails the case (that is a traceback for the user). The counts
per command and outcome are asserted below and pasted into the issue's closing note.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apps.cli import main as vlm_main
from eval.shapes import write_shapes_dataset
from tiny import build_tiny_vlm, make_image
from vision import load_image

NOISE = re.compile(r"it/s\]|s/it\]|%\||^\s*$|^Loading weights|^\[transformers\]|^\[20\d\d-")


@dataclass(frozen=True)
class Case:
    name: str
    command: str
    """chat, predict, eval, train-data, model-folder or config (what the case feeds)."""
    outcome: str
    """refused, skipped or accepted."""
    make: Callable[[Path, dict], list[str]]
    """Writes the case's inputs under a fresh folder and returns the ``vlm`` argv."""
    says: str = ""
    """A regex the error line (refused) or the skip report (skipped) must match; for an accepted image,
    its file name (what the model saw is then checked too)."""


# ------------------------------------------------------------------------------------------ inputs


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _photo() -> Image.Image:
    return make_image(3, (96, 64))


IMAGES: dict[str, Callable[[], bytes]] = {
    # refused
    "empty.png": lambda: b"",
    "notes.png": lambda: b"not an image at all\n",
    "page.jpg": lambda: b"<html><body>404</body></html>",
    "drawing.png": lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    "archive.png": lambda: b"PK\x03\x04" + bytes(60),
    "cut.png": lambda: _encoded(Image.effect_noise((96, 64), 60).convert("RGB"), "PNG")[:900],
    "cut.jpg": lambda: _encoded(Image.effect_noise((96, 64), 60).convert("RGB"), "JPEG")[:900],
    "bomb.png": lambda: _encoded(Image.new("1", (9000, 9000)), "PNG"),
    "wide.png": lambda: _encoded(Image.new("RGB", (40000, 1)), "PNG"),
    "tall.png": lambda: _encoded(Image.new("RGB", (1, 40000)), "PNG"),
    "header-only.jpg": lambda: _encoded(_photo(), "JPEG")[:20],
    # accepted
    "grey16.png": lambda: _encoded(Image.fromarray((np.arange(64 * 96).reshape(64, 96) * 9).astype(np.uint16)), "PNG"),
    "float.tiff": lambda: _encoded(Image.fromarray(np.linspace(0, 1, 64 * 96, dtype=np.float32).reshape(64, 96), mode="F"), "TIFF"),
    "int32.tiff": lambda: _encoded(Image.fromarray((np.arange(64 * 96).reshape(64, 96) * 1000).astype(np.int32), mode="I"), "TIFF"),
    "cmyk.jpg": lambda: _encoded(_photo().convert("CMYK"), "JPEG"),
    "palette.png": lambda: _encoded(_photo().convert("P"), "PNG", transparency=0),
    "grey-alpha.png": lambda: _encoded(_photo().convert("LA"), "PNG"),
    "rgba.png": lambda: _encoded(_photo().convert("RGBA"), "PNG"),
    "bilevel.png": lambda: _encoded(_photo().convert("1"), "PNG"),
    "animated.gif": lambda: _encoded(_photo(), "GIF", save_all=True, append_images=[make_image(4, (96, 64))]),
    "dot.png": lambda: _encoded(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"),
    "photo.webp": lambda: _encoded(_photo(), "WEBP"),
    "photo.bmp": lambda: _encoded(_photo(), "BMP"),
    "rotated.jpg": lambda: _encoded(_photo(), "JPEG", exif=_rotated_exif()),
    "photo.png": lambda: _encoded(_photo(), "PNG"),
}


def _rotated_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    return exif.tobytes()


@pytest.fixture(scope="module")
def base(tmp_path_factory, qwen2_dir, llama_dir, vision_json) -> dict:
    """A saved tiny VLM, every image above, a shapes eval split, the tiny LLM and ViT for training."""
    root = tmp_path_factory.mktemp("corpus")
    model, processor = build_tiny_vlm(qwen2_dir)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    for name, make in IMAGES.items():
        _write(root / "images" / name, make())
    write_shapes_dataset(root / "shapes", 4, seed=0, n_eval=2)
    return {"root": root, "model": root / "model", "images": root / "images", "shapes": root / "shapes",
            "llama": llama_dir, "vision_json": vision_json}


# ------------------------------------------------------------------------------------------ chat


def chat(image: str | None = None, prompt: str = "What is in the picture?", *flags: str) -> Callable[[Path, dict], list[str]]:
    def make(work: Path, base: dict) -> list[str]:
        argv = ["chat", "--model", str(base["model"]), "--prompt", prompt, "--max-new-tokens", "3", *flags]
        if image is not None:
            argv += ["--image", str(base["images"] / image) if image != "DIR" else str(base["images"])]
        return argv
    return make


def chat_missing_image(work: Path, base: dict) -> list[str]:
    return chat()(work, base) + ["--image", str(work / "nope.png")]


CHAT = [
    Case("image: no such file", "chat", "refused", chat_missing_image, r"nope\.png: no such image file"),
    Case("image: a folder", "chat", "refused", chat("DIR"), r"images: no such image file"),
    *[Case(f"image: {what}", "chat", "refused", chat(name), rf"{re.escape(name)}: not a readable image") for what, name in (
        ("empty file", "empty.png"), ("text named .png", "notes.png"), ("HTML named .jpg", "page.jpg"), ("SVG", "drawing.png"),
        ("a zip named .png", "archive.png"), ("truncated PNG", "cut.png"), ("truncated JPEG", "cut.jpg"),
        ("JPEG header only", "header-only.jpg"))],
    Case("image: 9000x9000 bomb", "chat", "refused", chat("bomb.png"), r"bomb\.png.*exceeds the limit of 64000000"),
    Case("image: 40000x1 strip", "chat", "refused", chat("wide.png"), r"wide\.png: a 40000x1 image resized .* over the limit"),
    Case("image: 1x40000 strip", "chat", "refused", chat("tall.png"), r"tall\.png: a 1x40000 image resized .* over the limit"),
    *[Case(f"image: {name}", "chat", "accepted", chat(name), name) for name in (
        "grey16.png", "float.tiff", "int32.tiff", "cmyk.jpg", "palette.png", "grey-alpha.png", "rgba.png", "bilevel.png",
        "animated.gif", "dot.png", "photo.webp", "photo.bmp", "rotated.jpg")],
    Case("prompt: a lone surrogate", "chat", "refused", chat("photo.png", "what \udc80 is this"), r"the prompt is not valid UTF-8 text: character 5 is U\+DC80"),
    Case("prompt: longer than the context", "chat", "refused", chat("photo.png", " ".join(["yes"] * 2500)),
         r"\d+ tokens.*context|context.*\d+ tokens"),
    Case("prompt: two <image> marks, one image", "chat", "refused", chat("photo.png", "<image> or <image>?"),
         r"2 <image> marks but 1 image"),
    Case("prompt: an <image> mark, no image", "chat", "refused", chat(None, "<image> what is it?"), r"1 <image> marks? but 0 images"),
    Case("prompt: NUL and control characters", "chat", "accepted", chat("photo.png", "what\x00 is\x07 this\x1b[31m?")),
    Case("prompt: emoji and right-to-left text", "chat", "accepted", chat("photo.png", "ما هذا؟ 🟥🔺")),
    Case("prompt: whitespace only", "chat", "accepted", chat("photo.png", "   ")),
    Case("--max-new-tokens 0", "chat", "refused", chat("photo.png", "hi", "--max-new-tokens", "0"), r"max.new.tokens"),
    Case("--max-new-tokens -5", "chat", "refused", chat("photo.png", "hi", "--max-new-tokens", "-5"), r"max.new.tokens"),
    Case("--max-new-tokens not a number", "chat", "refused", chat("photo.png", "hi", "--max-new-tokens", "many"),
         r"--max-new-tokens.*invalid int"),
    Case("--temperature -1", "chat", "refused", chat("photo.png", "hi", "--temperature", "-1"), r"temperature"),
    Case("--top-p 1.5", "chat", "refused", chat("photo.png", "hi", "--top-p", "1.5"), r"top.p"),
    Case("--top-p 0", "chat", "refused", chat("photo.png", "hi", "--top-p", "0"), r"top.p"),
    Case("--device cuda without a GPU", "chat", "refused", chat("photo.png", "hi", "--device", "cuda"), r"cuda|CUDA|GPU"),
    Case("--device nonsense", "chat", "refused", chat("photo.png", "hi", "--device", "tpu9"), r"tpu9"),
    Case("--dtype not offered", "chat", "refused", chat("photo.png", "hi", "--dtype", "int8"), r"--dtype.*invalid choice"),
]


# ---------------------------------------------------------------------------------- model folders


def folder(damage: Callable[[Path], None]) -> Callable[[Path, dict], list[str]]:
    """``vlm chat`` on a copy of the model with ``damage`` done to it."""
    def make(work: Path, base: dict) -> list[str]:
        model = work / "model"
        shutil.copytree(base["model"], model)
        damage(model)
        return ["chat", "--model", str(model), "--prompt", "hi", "--max-new-tokens", "2"]
    return make


def _rewrite_json(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        data = json.loads((model / name).read_text())
        change(data)
        (model / name).write_text(json.dumps(data))
    return damage


def _weights(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        from safetensors.torch import load_file, save_file

        weights = load_file(model / "model.safetensors")
        change(weights)
        save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    return damage


def _projector_key(weights: dict) -> str:
    return next(k for k in sorted(weights) if k.startswith("projector.") and k.endswith("weight"))


def _shard(model: Path) -> None:
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))


def _cut(name: str, keep: float | int) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        data = (model / name).read_bytes()
        (model / name).write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    return damage


def _unlink(name: str) -> Callable[[Path], None]:
    return lambda model: (model / name).unlink()


def _text(name: str, text: str) -> Callable[[Path], None]:
    return lambda model: (model / name).write_text(text)


def _model_path(kind: str) -> Callable[[Path, dict], list[str]]:
    def make(work: Path, base: dict) -> list[str]:
        path = {"missing": work / "no-model", "file": _write(work / "model.bin", "x"), "empty": work / "empty"}[kind]
        if kind == "empty":
            path.mkdir()
        return ["chat", "--model", str(path), "--prompt", "hi"]
    return make


def _weights_dir(model: Path) -> None:
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").mkdir()


FOLDERS = [
    Case("model: no such folder", "model-folder", "refused", _model_path("missing"), r"no-model"),
    Case("model: a file", "model-folder", "refused", _model_path("file"), r"model\.bin"),
    Case("model: an empty folder", "model-folder", "refused", _model_path("empty"), r"empty.*config\.json|config\.json.*empty"),
    Case("config.json missing", "model-folder", "refused", folder(_unlink("config.json")), r"config\.json"),
    Case("config.json empty", "model-folder", "refused", folder(_text("config.json", "")), r"config\.json: empty"),
    Case("config.json not JSON", "model-folder", "refused", folder(_text("config.json", "{oops")), r"config\.json: not valid JSON"),
    Case("config.json a list", "model-folder", "refused", folder(_text("config.json", "[1]")), r"config\.json: expected a JSON object"),
    Case("config.json of another model type", "model-folder", "refused",
         folder(_rewrite_json("config.json", lambda c: c.update(model_type="llava"))), r"model_type is 'llava', not 'vlm'"),
    Case("config.json without its LLM's config", "model-folder", "refused",
         folder(_rewrite_json("config.json", lambda c: c.pop("text_config", None))), r"config\.json: no .text_config. with its .model_type."),
    Case("config.json without its tower's config", "model-folder", "refused",
         folder(_rewrite_json("config.json", lambda c: c["vision_config"].pop("open_clip_config"))), r"config\.json: no .vision_config."),
    Case("processor_config.json missing", "model-folder", "refused", folder(_unlink("processor_config.json")),
         r"processor_config\.json"),
    Case("processor_config.json empty", "model-folder", "refused", folder(_text("processor_config.json", "")),
         r"processor_config\.json: empty"),
    Case("tokenizer.json missing", "model-folder", "refused", folder(_unlink("tokenizer.json")), r"tokenizer\.json"),
    Case("tokenizer.json not JSON", "model-folder", "refused", folder(_text("tokenizer.json", "{no")), r"tokenizer\.json"),
    Case("tokenizer_config.json missing", "model-folder", "refused", folder(_unlink("tokenizer_config.json")),
         r"tokenizer_config\.json"),
    Case("tokenizer_config.json a list", "model-folder", "refused", folder(_text("tokenizer_config.json", "[1, 2]")),
         r"tokenizer_config\.json: expected a JSON object"),
    Case("model.safetensors missing", "model-folder", "refused", folder(_unlink("model.safetensors")), r"model\.safetensors|weights"),
    Case("model.safetensors a folder", "model-folder", "refused", folder(_weights_dir), r"model\.safetensors"),
    Case("model.safetensors truncated", "model-folder", "refused", folder(_cut("model.safetensors", 0.5)),
         r"model\.safetensors: truncated"),
    Case("model.safetensors 5 bytes", "model-folder", "refused", folder(_cut("model.safetensors", 5)),
         r"model\.safetensors.*too short"),
    Case("model.safetensors header garbage", "model-folder", "refused",
         folder(lambda m: (m / "model.safetensors").write_bytes(b"\x10" + bytes(7) + b"not json at all!" + bytes(64))),
         r"model\.safetensors.*header is not valid JSON"),
    Case("a shard missing", "model-folder", "refused", folder(_shard), r"model-00002-of-00002\.safetensors.*missing"),
    Case("a weight of another shape", "model-folder", "refused",
         folder(_weights(lambda w: w.__setitem__(_projector_key(w), w[_projector_key(w)][:-1].clone()))),
         r"another shape .*projector\."),
    Case("a weight missing", "model-folder", "refused", folder(_weights(lambda w: w.pop(_projector_key(w)))), r"projector\."),
]


# ---------------------------------------------------------------------------------------- predict


def predict(lines: list[str] | bytes, *flags: str, output: str = "answers.jsonl") -> Callable[[Path, dict], list[str]]:
    def make(work: Path, base: dict) -> list[str]:
        shutil.copy(base["images"] / "photo.png", work / "photo.png")
        good = json.dumps({"id": "good", "image": "photo.png", "question": "What is it?"})
        body = lines if isinstance(lines, bytes) else "".join(line + "\n" for line in lines).encode()
        _write(work / "q.jsonl", good.encode() + b"\n" + body)
        out = work / output
        if output == "under-a-file/answers.jsonl":
            _write(work / "under-a-file", "x")
        if output == "a-folder":
            out.mkdir()
        return ["predict", "--model", str(base["model"]), "--input", str(work / "q.jsonl"), "--output", str(out),
                "--max-new-tokens", "2", *flags]
    return make


def predict_input(kind: str) -> Callable[[Path, dict], list[str]]:
    def make(work: Path, base: dict) -> list[str]:
        path = {"missing": work / "none.jsonl", "folder": work / "qdir"}[kind]
        if kind == "folder":
            path.mkdir()
        return ["predict", "--model", str(base["model"]), "--input", str(path), "--output", str(work / "a.jsonl")]
    return make


def _q(**fields) -> str:
    return json.dumps({"id": "bad", "question": "What is it?", "image": "photo.png", **fields})


PREDICT = [
    Case("input: no such file", "predict", "refused", predict_input("missing"), r"none\.jsonl"),
    Case("input: a folder", "predict", "refused", predict_input("folder"), r"qdir"),
    Case("output: under a file", "predict", "refused", predict([], output="under-a-file/answers.jsonl"), r"under-a-file"),
    Case("output: a folder", "predict", "refused", predict([], output="a-folder"), r"a-folder"),
    Case("output: the input file", "predict", "refused", predict([], output="q.jsonl"), r"same file"),
    Case("--batch-size 0", "predict", "refused", predict([], "--batch-size", "0"), r"batch.size"),
    Case("line: not JSON", "predict", "skipped", predict(["{not json"]), r"q\.jsonl line 2: invalid JSON"),
    Case("line: a number", "predict", "skipped", predict(["42"]), r"line 2: expected a JSON object, got int"),
    Case("line: a string", "predict", "skipped", predict(['"hello"']), r"line 2: expected a JSON object, got str"),
    Case("line: a list", "predict", "skipped", predict(["[1, 2]"]), r"line 2: expected a JSON object, got list"),
    Case("line: no id", "predict", "skipped", predict([json.dumps({"question": "x"})]), r"line 2: no 'id'"),
    Case("line: id null", "predict", "skipped", predict([_q(id=None)]), r"line 2: no 'id'"),
    Case("line: id a list", "predict", "skipped", predict([_q(id=[1])]), r"line 2: no 'id'"),
    Case("line: no question", "predict", "skipped", predict([json.dumps({"id": "bad"})]), r"line 2: id 'bad': no 'question'"),
    Case("line: question null", "predict", "skipped", predict([_q(question=None)]), r"line 2: id 'bad': no 'question'"),
    Case("line: question a number", "predict", "skipped", predict([_q(question=7)]), r"line 2: id 'bad': no 'question'"),
    Case("line: question empty", "predict", "skipped", predict([_q(question="")]), r"line 2: id 'bad': no 'question'"),
    Case("line: duplicate id", "predict", "skipped", predict([_q(id="good")]), r"line 2: duplicate id 'good'"),
    Case("line: image missing", "predict", "skipped", predict([_q(image="gone.png")]), r"line 2: id 'bad': no such image file .*gone\.png"),
    Case("line: image a number", "predict", "skipped", predict([_q(image=3)]), r"line 2: 'image' must be a path"),
    Case("line: image a list with a missing file", "predict", "skipped", predict([_q(image=["photo.png", "gone.png"])]),
         r"line 2: .*gone\.png"),
    Case("line: image not an image", "predict", "skipped", predict([_q(image="q.jsonl")]), r"line 2: .*q\.jsonl.*not a readable image"),
    Case("line: two <image> marks, one image", "predict", "skipped", predict([_q(question="<image> and <image>?")]),
         r"line 2: .*2 <image> marks but 1 image"),
    Case("line: question longer than the context", "predict", "skipped", predict([_q(question=" ".join(["yes"] * 2500))]),
         r"line 2: .*tokens"),
    Case("line: a lone surrogate in the question", "predict", "skipped", predict([_q(question="what \udc80?")]),
         r"line 2: id 'bad': 'question' is not valid UTF-8 text: character 5 is U\+DC80"),
    Case("line: bytes that are not UTF-8", "predict", "skipped", predict(b'{"id": "bad", "question": "caf\xe9?"}\n'),
         r"line 2: invalid JSON \('utf-8' codec can't decode byte 0xe9"),
    Case("line: empty lines between records", "predict", "accepted", predict(["", _q(id="second"), ""])),
]


# ------------------------------------------------------------------------------------------- eval


def evaluate(change: Callable[[list], list] | None = None, *flags: str, raw: str | None = None,
             output: str = "out") -> Callable[[Path, dict], list[str]]:
    def make(work: Path, base: dict) -> list[str]:
        data = work / "shapes"
        shutil.copytree(base["shapes"], data)
        records = json.loads((data / "eval.json").read_text())
        if raw is not None:
            (data / "eval.json").write_text(raw)
        elif change is not None:
            (data / "eval.json").write_text(json.dumps(change(records)))
        out = work / output
        if output == "under-a-file/out":
            _write(work / "under-a-file", "x")
        return ["eval", "--model", str(base["model"]), "--benchmark", "shapes", "--data", str(data / "eval.json"),
                "--output", str(out), "--max-new-tokens", "2", *flags]
    return make


def _first(**fields) -> Callable[[list], list]:
    def change(records: list) -> list:
        records[0] = {**records[0], **fields}
        return records
    return change


def _replace_first(value) -> Callable[[list], list]:
    return lambda records: [value, *records[1:]]


def _eval_missing(work: Path, base: dict) -> list[str]:
    return ["eval", "--model", str(base["model"]), "--benchmark", "shapes", "--data", str(work / "none.json"),
            "--output", str(work / "out")]


EVAL = [
    Case("data: no such file", "eval", "refused", _eval_missing, r"none\.json"),
    Case("data: not JSON", "eval", "refused", evaluate(raw="[{oops"), r"eval\.json"),
    Case("data: an object, not a list", "eval", "refused", evaluate(raw='{"questions": []}'), r"eval\.json"),
    Case("data: empty list", "eval", "refused", evaluate(raw="[]"), r"eval\.json|no questions"),
    Case("an image file missing", "eval", "refused", evaluate(_first(image="images/gone.png")), r"gone\.png"),
    Case("unknown benchmark", "eval", "refused", lambda w, b: ["eval", "--model", str(b["model"]), "--benchmark", "vqa9",
                                                               "--data", "x", "--output", str(w / "o")], r"vqa9"),
    Case("--batch-size 0", "eval", "refused", evaluate(None, "--batch-size", "0"), r"batch.size"),
    Case("output under a file", "eval", "refused", evaluate(output="under-a-file/out"), r"under-a-file"),
    Case("record: a number", "eval", "skipped", evaluate(_replace_first(5)), r"record 0.*not an object|record 0.*int"),
    Case("record: a string", "eval", "skipped", evaluate(_replace_first("q")), r"record 0.*not an object|record 0.*str"),
    Case("record: null", "eval", "skipped", evaluate(_replace_first(None)), r"record 0"),
    Case("record: question null", "eval", "skipped", evaluate(_first(question=None)), r"question"),
    Case("record: question a number", "eval", "skipped", evaluate(_first(question=3)), r"question"),
    Case("record: question missing", "eval", "skipped", evaluate(lambda r: [{k: v for k, v in r[0].items() if k != "question"}, *r[1:]]),
         r"question"),
    Case("record: id null", "eval", "skipped", evaluate(_first(id=None)), r"\bid\b"),
    Case("record: image a number", "eval", "skipped", evaluate(_first(image=4)), r"image"),
    Case("record: image a list", "eval", "skipped", evaluate(_first(image=["a.png"])), r"image"),
    Case("record: answer null", "eval", "skipped", evaluate(_first(answer=None)), r"answer"),
    Case("record: task a number", "eval", "skipped", evaluate(_first(task=1)), r"task"),
    Case("record: question holds <image>", "eval", "skipped", evaluate(_first(question="<image> what?")), r"<image>"),
    Case("record: question of 5,000 characters", "eval", "skipped", evaluate(_first(question="why " * 1250)), r"characters"),
    Case("record: a lone surrogate in the question", "eval", "skipped", evaluate(raw=None, change=_first(question="x\udc80?")),
         r"UTF-8|surrogate"),
]


# ---------------------------------------------------------------------------------- training data


def train_on(write: Callable[[Path, dict], Path], *extra: str) -> Callable[[Path, dict], list[str]]:
    def make(work: Path, base: dict) -> list[str]:
        data = write(work, base)
        return ["train", "pretrain", f"llm={base['llama']}", f"vision_config={base['vision_json']}", "vision_pretrained=null",
                f"data=[{data}]", f"image_root={work}", f"output_dir={work / 'run'}", "max_steps=1", "save_steps=1",
                "per_device_train_batch_size=1", *extra]
    return make


def _records(records: list, name: str = "d.json") -> Callable[[Path, dict], Path]:
    def write(work: Path, base: dict) -> Path:
        for image in ("photo.png", "cut.jpg", "notes.png"):
            shutil.copy(base["images"] / image, work / image)
        return _write(work / name, json.dumps(records))
    return write


def _raw(data: bytes | str, name: str = "d.json") -> Callable[[Path, dict], Path]:
    return lambda work, base: _write(work / name, data)


def _cap(**fields) -> dict:
    return {"id": "r0", "image": "photo.png", "conversations": [{"from": "human", "value": "<image>\nDescribe it."},
                                                                {"from": "gpt", "value": "a red box"}], **fields}


def _turns(*turns) -> dict:
    return _cap(conversations=[{"from": f, "value": v} for f, v in turns])


def _missing_data(work: Path, base: dict) -> Path:
    return work / "none.json"


TRAIN_DATA = [
    Case("data: no such file", "train-data", "refused", train_on(_missing_data), r"none\.json"),
    Case("data: Latin-1 bytes", "train-data", "refused", train_on(_raw(b'[{"id": "r0", "conversations": [{"from": "human", '
                                                                      b'"value": "caf\xe9"}]}]')), r"d\.json.*not UTF-8"),
    Case("data: cut inside a string", "train-data", "refused", train_on(_raw('[{"id": "a", "conversations": [{"from": "hu')),
         r"d\.json.*truncated"),
    Case("data: something after the array", "train-data", "refused", train_on(_raw("[{}, {}] {}")), r"d\.json.*data after the end"),
    Case("data: not JSON at all", "train-data", "refused", train_on(_raw("hello", "d.txt")), r"d\.txt.*cannot tell the format"),
    Case("data: another dialect", "train-data", "refused", train_on(_raw('{"messages": []}\n', "d.jsonl")), r"d\.jsonl"),
    Case("data: an empty array", "train-data", "refused", train_on(_raw("[]")), r"d\.json"),
    Case("record: no conversations", "train-data", "refused", train_on(_records([{"id": "r0", "image": "photo.png"}])),
         r"d\.json.*record 0 has no 'conversations' \(its keys: 'id', 'image'\)"),
    Case("record: conversations empty", "train-data", "refused", train_on(_records([_cap(conversations=[])])),
         r"d\.json.*record 0: 'conversations' is empty"),
    Case("record: a number", "train-data", "refused", train_on(_records([7])), r"d\.json.*record 0 is an? int, not an object"),
    Case("record: turn from an unknown speaker", "train-data", "refused",
         train_on(_records([_turns(("human", "<image>\nhi"), ("bot", "x"))])), r"d\.json.*record 0.*bot"),
    Case("record: turn value null", "train-data", "refused", train_on(_records([_turns(("human", "<image>\nhi"), ("gpt", None))])),
         r"d\.json.*record 0"),
    Case("record: image missing", "train-data", "refused", train_on(_records([_cap(image="gone.png")])),
         r"d\.json.*record 0.*gone\.png"),
    Case("record: image truncated JPEG", "train-data", "refused", train_on(_records([_cap(image="cut.jpg")])),
         r"d\.json.*record 0.*cut\.jpg.*(truncated|not a readable image)"),
    Case("record: image a text file", "train-data", "refused", train_on(_records([_cap(image="notes.png")])),
         r"d\.json.*record 0.*notes\.png.*not a readable image"),
    Case("record: two <image> marks, one image", "train-data", "refused",
         train_on(_records([_turns(("human", "<image><image>\nhi"), ("gpt", "x"))])), r"d\.json.*record 0.*<image>"),
    Case("record: image a number", "train-data", "refused", train_on(_records([_cap(image=5)])), r"d\.json.*record 0.*image"),
    Case("record: bad, with skip_bad_samples", "train-data", "skipped",
         train_on(_records([_cap(image="gone.png"), _cap(id="r1")]), "skip_bad_samples=true"), r"skipped 1 of 2 samples"),
]


# ------------------------------------------------------------------------------------------ configs


def config(*overrides: str, name: str = "pretrain") -> Callable[[Path, dict], list[str]]:
    def make(work: Path, base: dict) -> list[str]:
        shutil.copy(base["images"] / "photo.png", work / "photo.png")
        data = _write(work / "d.json", json.dumps([_cap()]))
        model = [f"init_from={base['model']}"] if name.startswith("sft") else [
            f"llm={base['llama']}", f"vision_config={base['vision_json']}", "vision_pretrained=null"]
        fixed = [*model, f"data=[{data}]", f"image_root={work}", f"output_dir={work / 'run'}", "max_steps=1"]
        return ["train", name if not name.startswith("/") else str(work / name[1:]), *fixed, *overrides]
    return make


def config_file(text: str) -> Callable[[Path, dict], list[str]]:
    def make(work: Path, base: dict) -> list[str]:
        _write(work / "mine.yaml", text)
        return ["train", str(work / "mine.yaml")]
    return make


CONFIGS = [
    Case("unknown shipped config", "config", "refused", config(name="pretrian"), r"pretrian"),
    Case("unknown key", "config", "refused", config("learning_rat=1e-3"), r"learning_rat"),
    Case("value of the wrong type", "config", "refused", config("learning_rate=fast"), r"learning_rate"),
    Case("override without =", "config", "refused", config("max_steps"), r"max_steps"),
    Case("negative LoRA rank", "config", "refused", config("lora_r=-1", name="sft_lora"), r"lora_r=-1: the LoRA rank must be a positive integer"),
    Case("LoRA dropout of 1.5", "config", "refused", config("lora_dropout=1.5", name="sft_lora"), r"lora_dropout=1.5 must lie in"),
    Case("batch size 0", "config", "refused", config("per_device_train_batch_size=0"), r"per_device_train_batch_size"),
    Case("unknown DeepSpeed preset", "config", "refused", config("deepspeed=zero9"), r"zero9"),
    Case("unknown stage", "config", "refused", config("stage=stage3"), r"stage"),
    Case("unknown quantization", "config", "refused", config("quantization=nf3", name="sft_qlora"), r"nf3"),
    Case("QLoRA with full fine-tuning", "config", "refused", config("lora=false", name="sft_qlora"), r"lora"),
    Case("output_dir under a file", "config", "refused",
         lambda w, b: config(f"output_dir={_write(w / 'a-file', 'x') / 'run'}")(w, b), r"a-file"),
    Case("config file: YAML syntax error", "config", "refused", config_file("stage: [pretrain\n"), r"mine\.yaml: not valid YAML at line 2"),
    Case("config file: a list", "config", "refused", config_file("- stage\n"), r"mine\.yaml: a training config is a mapping"),
    Case("config file: empty", "config", "refused", config_file(""), r"mine\.yaml: empty"),
    Case("no config given", "config", "refused", lambda w, b: ["train"], r"give a config"),
]

CORPUS = CHAT + FOLDERS + PREDICT + EVAL + TRAIN_DATA + CONFIGS


# -------------------------------------------------------------------------------------------- runs


def run_case(case: Case, work: Path, base: dict, capsys) -> tuple[int, str, str]:
    argv = case.make(work, base)
    capsys.readouterr()
    try:
        code = vlm_main(argv)
    except SystemExit as exit_:  # argparse: usage and one error line naming the flag
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case", CORPUS, ids=[f"{c.command}: {c.name}" for c in CORPUS])
def test_bad_input(case: Case, base, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "case"
    work.mkdir()
    code, out, err = run_case(case, work, base, capsys)
    lines = [line for line in err.replace("\r", "\n").splitlines() if not NOISE.search(line)]
    assert "Traceback" not in err, err
    if case.outcome == "refused":
        starts = [k for k, line in enumerate(lines) if re.match(r"(vlm [a-z]+|train): error: ", line)]
        assert code != 0 and len(starts) == 1, f"exit {code}, stderr:\n{err}"
        block = [lines[starts[0]]] + [line for line in lines[starts[0] + 1:] if line.startswith("  - ")]
        assert re.search(case.says, "\n".join(block)), "\n".join(block)
        assert not out.strip(), out
    elif case.outcome == "skipped":
        assert code == 0, err
        assert any(re.search(case.says, line) for line in lines), err
    else:
        assert code == 0, err
        if case.command == "chat":
            assert out.endswith("\n"), out  # the answer, printed
        if case.says in IMAGES:  # an odd but valid image: what the model saw is the picture, in 8-bit RGB
            seen = np.asarray(load_image(base["images"] / case.says))
            with Image.open(base["images"] / case.says) as source:
                assert seen.shape == (source.height, source.width, 3) and seen.dtype == np.uint8
            if case.says != "dot.png":
                assert seen.std() > 10, f"{case.says} became a flat picture (std {seen.std():.1f})"


def test_the_corpus_counts():
    """The figures the closing note pastes: >= 100 cases, every command family covered."""
    counts = Counter((c.command, c.outcome) for c in CORPUS)
    assert len(CORPUS) >= 100
    assert len({c.name + c.command for c in CORPUS}) == len(CORPUS)
    for command in ("chat", "model-folder", "predict", "eval", "train-data", "config"):
        assert counts[(command, "refused")] + counts[(command, "skipped")] >= 5, command
    assert sum(n for (_, outcome), n in counts.items() if outcome == "accepted") >= 10
