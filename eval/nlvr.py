"""NLVR (v1): loader for the released split folders, the prompt, and a converter to LLaVA
conversation-format training data. The answer parser and the official metrics are in
:mod:`eval.metrics.nlvr`.

NLVR (Suhr et al., ACL 2017) is published at https://github.com/lil-lab/nlvr (folder `nlvr/`).
A split folder, as released, looks like::

    dev/dev.json                          one JSON record per line (the last line has no "\\n")
    dev/images/{directory}/dev-{identifier}-{k}.png    k = 0..5, 400x100 RGBA

Each record holds a `sentence`, its `label` ("true"/"false") for one scene, an `identifier`
"n-m" (n: the sentence, m: one of up to four scenes the sentence was judged against), the image
sub-folder `directory` and the scene's `structured_rep` (three boxes, each a list of objects).
Each record is drawn six times: rendering k shows the three boxes left to right in the order
`RENDERING_BOX_ORDERS[k]`. We score one prediction per PNG, as the official script does.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.wording import join_words
from vlm.atomic import atomic_write_json

NLVR_URL = "https://github.com/lil-lab/nlvr"

NUM_RENDERINGS = 6
"""PNG renderings per JSON record: one per permutation of the three boxes."""

RENDERING_BOX_ORDERS: tuple[tuple[int, int, int], ...] = tuple(itertools.permutations(range(3)))
"""Rendering k shows `structured_rep` boxes left to right in this order. Checked against all
11,874 dev and test PNGs by matching each drawn box's colour areas to the structured scene."""

NLVR_PROMPT_TEMPLATE = (
    "Is the following statement true or false about the image? {sentence}\n"
    "Answer with a single word: true or false."
)
"""The question asked for each (image, sentence) pair, in training data and in evaluation."""

NLVR_CAPTION_PROMPT = "Describe the boxes in the image and the objects in each box."
"""The instruction paired with the captions generated from the structured representation."""


@dataclass(frozen=True)
class NLVRExample:
    """One NLVR example: one PNG rendering of one scene, with the sentence and its label."""

    split: str
    """Split name as used in the file names, e.g. "dev"."""
    identifier: str
    """The JSON record's identifier "n-m": sentence n judged against scene m."""
    rendering: int
    """Which of the six renderings (0..5) this PNG is; see `RENDERING_BOX_ORDERS`."""
    image_path: Path
    """Absolute path of the PNG. The loader checks it exists but does not open it."""
    sentence: str
    """The statement to judge."""
    label: bool
    """True when the sentence is true of the scene."""
    structured_rep: list[list[dict[str, Any]]]
    """Three boxes, each a list of objects with type, color, size, x_loc, y_loc (as released)."""

    @property
    def image_id(self) -> str:
        """Unique id of this PNG, its file stem, e.g. "dev-1572-0-3"."""
        return f"{self.split}-{self.identifier}-{self.rendering}"

    @property
    def sentence_id(self) -> str:
        """The sentence this example belongs to (the identifier's prefix n), the unit of
        consistency in the official metric."""
        return self.identifier.split("-")[0]

    @property
    def box_order(self) -> tuple[int, int, int]:
        """Indices into `structured_rep` of the boxes drawn left, middle and right."""
        return RENDERING_BOX_ORDERS[self.rendering]


# ----------------------------------------------------------------------------------- loader


def _find_split_json(split_dir: Path) -> Path:
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"NLVR split folder {split_dir} does not exist. Point to a released split folder "
            f"such as nlvr/dev from {NLVR_URL}, holding dev.json and images/."
        )
    expected = split_dir / f"{split_dir.name}.json"
    if expected.is_file():
        return expected
    candidates = sorted(split_dir.glob("*.json"))
    if len(candidates) == 1:
        return candidates[0]
    raise FileNotFoundError(
        f"NLVR split folder {split_dir}: expected {expected.name} (or exactly one *.json), "
        f"found {[c.name for c in candidates]}. Use the split folders as released at {NLVR_URL}."
    )


def _parse_label(value: Any, where: str) -> bool:
    # The released labels are lowercase strings; the official script compares case-insensitively.
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{where}: label must be \"true\" or \"false\", got {value!r}")


def load_nlvr_split(split_dir: str | os.PathLike[str], require_images: bool = True) -> list[NLVRExample]:
    """Load an NLVR split folder (e.g. `data/nlvr1/dev`) as one example per PNG rendering.

    Examples come in file order, the six renderings of a record in order k = 0..5. Images are
    not opened; every PNG path is checked to exist (unless ``require_images`` is off: scoring).

    Raises:
        FileNotFoundError: the folder, its JSON or a PNG is missing (the message names the file).
        ValueError: a record is malformed (bad JSON, unknown label, duplicate identifier, not
            three boxes); the message names the file and line.
    """
    split_dir = Path(split_dir).resolve()
    json_path = _find_split_json(split_dir)
    split = json_path.stem
    examples: list[NLVRExample] = []
    seen: dict[str, int] = {}
    with open(json_path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{json_path} line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err})") from err
            missing = {"sentence", "label", "identifier", "directory", "structured_rep"} - set(record)
            if missing:
                raise ValueError(f"{where}: record lacks the fields {sorted(missing)}")
            identifier = str(record["identifier"])
            if not re.fullmatch(r"\d+-\d+", identifier):
                raise ValueError(f"{where}: identifier {identifier!r} is not of the form \"n-m\"")
            if identifier in seen:
                raise ValueError(f"{where}: identifier {identifier} already used on line {seen[identifier]}")
            seen[identifier] = line_number
            label = _parse_label(record["label"], where)
            boxes = record["structured_rep"]
            if not isinstance(boxes, list) or len(boxes) != 3:
                n = len(boxes) if isinstance(boxes, list) else type(boxes).__name__
                raise ValueError(f"{where}: structured_rep must hold 3 boxes, got {n}")
            image_dir = split_dir / "images" / str(record["directory"])
            for k in range(NUM_RENDERINGS):
                image_path = image_dir / f"{split}-{identifier}-{k}.png"
                if require_images and not image_path.is_file():
                    raise FileNotFoundError(
                        f"NLVR image {image_path} is missing (rendering {k} of identifier "
                        f"{identifier}, {where}) in split folder {split_dir}. Each record needs "
                        f"{NUM_RENDERINGS} PNGs; get the complete split from {NLVR_URL}."
                    )
                examples.append(
                    NLVRExample(
                        split=split,
                        identifier=identifier,
                        rendering=k,
                        image_path=image_path,
                        sentence=str(record["sentence"]),
                        label=label,
                        structured_rep=boxes,
                    )
                )
    if not examples:
        raise ValueError(f"{json_path} holds no records; expected one JSON record per line.")
    return examples


# ----------------------------------------------------------------------------------- prompt


def build_nlvr_prompt(sentence: str) -> str:
    """The question for one sentence, from `NLVR_PROMPT_TEMPLATE` (without the `<image>` tag)."""
    return NLVR_PROMPT_TEMPLATE.format(sentence=sentence)


# -------------------------------------------------------------------------------- captions

_COLOR_NAMES = {"#0099ff": "blue", "yellow": "yellow", "black": "black"}
_SIZE_NAMES = {10: "small", 20: "medium", 30: "large"}
_NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_ORDINALS = ["first", "second", "third"]
_BOX_SIDE = 100  # each box is 100x100 units; x_loc, y_loc are an object's top-left corner
_TOWER_X, _TOWER_SIZE, _TOWER_BOTTOM_Y, _TOWER_STEP = 40, 20, 80, 21  # as drawn in tower scenes


def _spelled_count(n: int, noun: str, plural: str | None = None) -> str:
    word = _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)
    return f"{word} {noun if n == 1 else plural or noun + 's'}"


def _color_name(color: str) -> str:
    return _COLOR_NAMES.get(color.lower(), color.lower())


def _is_tower(objects: list[dict[str, Any]]) -> bool:
    # Tower scenes stack medium squares at x=40 from the floor up, 21 units apart.
    if not objects:
        return False
    if any(o["type"] != "square" or o["size"] != _TOWER_SIZE or o["x_loc"] != _TOWER_X for o in objects):
        return False
    levels = sorted(_TOWER_BOTTOM_Y - _TOWER_STEP * i for i in range(len(objects)))
    return sorted(o["y_loc"] for o in objects) == levels


def _describe_object(obj: dict[str, Any]) -> str:
    size = _SIZE_NAMES.get(obj["size"], f"size-{obj['size']}")
    text = f"a {size} {_color_name(obj['color'])} {obj['type']}"
    edges = [
        name
        for name, touches in (
            ("top", obj["y_loc"] <= 0),
            ("bottom", obj["y_loc"] + obj["size"] >= _BOX_SIDE),
            ("left", obj["x_loc"] <= 0),
            ("right", obj["x_loc"] + obj["size"] >= _BOX_SIDE),
        )
        if touches
    ]
    if edges:
        text += f" touching the {join_words(edges)} edge{'s' if len(edges) > 1 else ''}"
    return text


def _describe_box(ordinal: str, objects: list[dict[str, Any]]) -> str:
    if not objects:
        return f"The {ordinal} box is empty."
    if _is_tower(objects):
        colors = [_color_name(o["color"]) for o in sorted(objects, key=lambda o: -o["y_loc"])]
        if len(colors) == 1:
            return f"The {ordinal} box has a tower of one {colors[0]} block."
        blocks = _spelled_count(len(colors), "block")
        return f"The {ordinal} box has a tower of {blocks}, from bottom to top {join_words(colors)}."
    # Top to bottom, then left to right, so the caption reads like the picture.
    ordered = sorted(objects, key=lambda o: (o["y_loc"], o["x_loc"]))
    described = join_words([_describe_object(o) for o in ordered])
    return f"The {ordinal} box has {_spelled_count(len(ordered), 'object')}: {described}."


def describe_nlvr_scene(
    structured_rep: list[list[dict[str, Any]]],
    box_order: Sequence[int] = (0, 1, 2),
) -> str:
    """A caption of a scene from its structured representation, boxes left to right.

    Pass the rendering's `NLVRExample.box_order`: the six PNGs of a scene draw its boxes in
    different orders, so "the first box" differs between them. Example: "Three boxes. The first
    box has a tower of two blocks, from bottom to top yellow and black. The second box ..."
    """
    if sorted(box_order) != list(range(len(structured_rep))):
        raise ValueError(
            f"box_order {tuple(box_order)} is not a permutation of the {len(structured_rep)} boxes."
        )
    sentences = [f"{_spelled_count(len(structured_rep), 'box', 'boxes').capitalize()}."]
    for position, box_index in enumerate(box_order):
        ordinal = _ORDINALS[position] if position < len(_ORDINALS) else f"box {position + 1}"
        sentences.append(_describe_box(ordinal, structured_rep[box_index]))
    return " ".join(sentences)


# ------------------------------------------------------------------------------- converter


def convert_nlvr_split(
    split_dir: str | os.PathLike[str],
    out_json: str | os.PathLike[str],
    *,
    include_captions: bool = True,
    include_qa: bool = True,
    image_root: str | os.PathLike[str] | None = None,
) -> int:
    """Write an NLVR split as LLaVA conversation-format training data; return the record count.

    One record per PNG and kind, in split order:
    `{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."},
    {"from": "gpt", "value": ...}]}`. The QA record asks `NLVR_PROMPT_TEMPLATE` and answers
    "true"/"false"; the caption record asks `NLVR_CAPTION_PROMPT` and answers
    `describe_nlvr_scene` for that rendering's box order. Ids are "nlvr-{image_id}-qa" and
    "nlvr-{image_id}-caption".

    Images are referenced, never copied: `image` is the absolute PNG path, or the path relative
    to `image_root` when given (for a dataset that joins an image folder with `image`). The file
    is written atomically (a temporary file in the same folder, then `os.replace`).

    Raises:
        ValueError: both kinds disabled, `out_json` inside the split folder, or an image outside
            `image_root`.
    """
    if not (include_captions or include_qa):
        raise ValueError("convert_nlvr_split: include_captions and include_qa are both False, nothing to write.")
    split_path = Path(split_dir).resolve()
    out_path = Path(out_json).resolve()
    if out_path.is_relative_to(split_path):
        raise ValueError(
            f"out_json {out_path} is inside the NLVR split folder {split_path}; keep the data folder "
            "read-only and write the training JSON elsewhere."
        )
    root = Path(image_root).resolve() if image_root is not None else None

    records: list[dict[str, Any]] = []
    for example in load_nlvr_split(split_path):
        if root is None:
            image = str(example.image_path)
        elif example.image_path.is_relative_to(root):
            image = example.image_path.relative_to(root).as_posix()
        else:
            raise ValueError(
                f"image {example.image_path} is not under image_root {root}; "
                "pass a folder that contains the split, or None for absolute paths."
            )
        if include_qa:
            records.append(
                {
                    "id": f"nlvr-{example.image_id}-qa",
                    "image": image,
                    "conversations": [
                        {"from": "human", "value": "<image>\n" + build_nlvr_prompt(example.sentence)},
                        {"from": "gpt", "value": "true" if example.label else "false"},
                    ],
                }
            )
        if include_captions:
            records.append(
                {
                    "id": f"nlvr-{example.image_id}-caption",
                    "image": image,
                    "conversations": [
                        {"from": "human", "value": "<image>\n" + NLVR_CAPTION_PROMPT},
                        {"from": "gpt", "value": describe_nlvr_scene(example.structured_rep, example.box_order)},
                    ],
                }
            )

    atomic_write_json(out_path, records)
    return len(records)
