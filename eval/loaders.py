"""Benchmark loaders: the released files of each benchmark, read into one :class:`Question` list.

A loader takes the path the user gives (``--data``) and an optional image folder
(``--image-root``) and returns the questions in file order. It reads only the annotation files:
images are located, not opened (the runner checks they exist before it loads a model, and
``vlm eval --score`` needs no images at all). A missing file raises ``FileNotFoundError`` naming
the file, where it was looked for and where the benchmark publishes it (the ``*_URL`` constants).

Each loader documents the layout it reads; the defaults for the image folder follow the
layout of the official downloads.
"""

from __future__ import annotations

import base64
import csv
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.metrics.mmbench import circular_rotations, present_options
from eval.metrics.mme import read_mme_benchmark
from eval.metrics.scienceqa import OPTION_LETTERS as SCIENCEQA_LETTERS
from eval.nlvr import NLVR_URL, load_nlvr_split

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

# MMBench releases with circular copies built in (VLMEvalKit's TSVs) number the copies
# index + k * 1_000_000; the copies are skipped and the rotations made here instead.
_MMBENCH_COPY_OFFSET = 1_000_000
# VLMEvalKit's TSVs store an image once; other rows hold the index of the row that has it.
_MMBENCH_IMAGE_REFERENCE_MAX_LEN = 64


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


# ----------------------------------------------------------------------------------- helpers


def _missing(what: str, path: Path, url: str, hint: str = "") -> FileNotFoundError:
    hint = f" {hint}" if hint else ""
    return FileNotFoundError(f"{what}: {path} does not exist.{hint} The data is published at {url}")


def _read_json(path: Path, what: str, url: str) -> Any:
    if not path.is_file():
        raise _missing(what, path, url)
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{what}: {path} is not valid JSON ({err})") from err


def _read_json_lines(path: Path, what: str, url: str) -> list[dict[str, Any]]:
    """A file of one JSON object per line (POPE), or one JSON list."""
    if not path.is_file():
        raise _missing(what, path, url)
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


def _image_root(image_root: Path | None, anchor: Path, *names: str) -> Path:
    """``image_root`` if given, else the first of ``anchor/name``, ``anchor.parent/name`` that
    exists (the layouts of the official downloads), else ``anchor/names[0]`` (so an error names it)."""
    if image_root is not None:
        return Path(image_root).resolve()
    candidates = [base / name for name in names for base in (anchor, anchor.parent)]
    return next((c for c in candidates if c.is_dir()), candidates[0]).resolve()


def _require_fields(record: Mapping[str, Any], fields: Sequence[str], where: str) -> None:
    missing = [name for name in fields if name not in record]
    if missing:
        raise ValueError(f"{where}: record lacks the fields {missing}: {dict(record)!r:.300}")


def _answers(raw: Sequence[Any]) -> list[str]:
    # VQAv2 / OK-VQA / VizWiz answers are {"answer": ..., "answer_confidence": ...}; TextVQA's are strings.
    return [item["answer"] if isinstance(item, Mapping) else str(item) for item in raw]


# ------------------------------------------------------------------------ VQAv2 and OK-VQA


def _find_one(folder: Path, patterns: Sequence[str], subfolders: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for sub in ("", *subfolders):
        for pattern in patterns:
            found.extend(sorted((folder / sub).glob(pattern)))
    return list(dict.fromkeys(found))


def _vqa_files(data: Path, url: str) -> tuple[Path, Path]:
    """The questions file and its annotations file from a folder or a questions file."""
    if data.is_file():
        questions = data
        # v2_OpenEnded_mscoco_val2014_questions.json -> v2_mscoco_val2014_annotations.json (VQAv2);
        # OpenEnded_mscoco_val2014_questions.json -> mscoco_val2014_annotations.json (OK-VQA).
        name = data.name.replace("OpenEnded_", "").replace("_questions", "_annotations")
        candidates = [data.parent / name, data.parent.parent / "Annotations" / name]
        annotations = next((c for c in candidates if c.is_file()), None)
        if annotations is None:
            raise FileNotFoundError(
                f"VQA annotations for {data.name}: looked for {candidates[0]} and {candidates[1]}, "
                f"neither exists. Pass --data a folder holding both the questions and the annotations "
                f"file. The data is published at {url}"
            )
        return questions, annotations
    if not data.is_dir():
        raise _missing("VQA data", data, url, "Pass the questions JSON file or a folder holding it and its annotations.")
    found = {}
    for kind, subfolder in (("questions", "Questions"), ("annotations", "Annotations")):
        matches = _find_one(data, [f"*{kind}*.json"], [subfolder])
        if len(matches) != 1:
            listing = [str(m) for m in matches] or "none"
            raise FileNotFoundError(
                f"VQA data folder {data}: expected exactly one *{kind}*.json in it or in {subfolder}/, found "
                f"{listing}. Pass --data the questions file to choose. The data is published at {url}"
            )
        found[kind] = matches[0]
    return found["questions"], found["annotations"]


def load_vqa(data: Path, image_root: Path | None, url: str = VQAV2_URL) -> list[Question]:
    """VQAv2 / OK-VQA in the official VQA format: a questions file and an annotations file.

    ``data``: the questions file (``v2_OpenEnded_mscoco_val2014_questions.json``; the annotations
    ``v2_mscoco_val2014_annotations.json`` are found beside it or in ``../Annotations``), or a
    folder holding one of each (directly or in ``Questions/`` and ``Annotations/``).
    Images: ``COCO_{data_subtype}_{image_id:012d}.jpg`` in ``--image-root``, by default the
    ``{data_subtype}`` folder (e.g. ``val2014``) beside the files. Questions come in the
    questions file's order; each carries its 10 answers and its answer_type.
    """
    data = Path(data).resolve()
    questions_path, annotations_path = _vqa_files(data, url)
    questions_file = _read_json(questions_path, "VQA questions", url)
    annotations_file = _read_json(annotations_path, "VQA annotations", url)
    if "questions" not in questions_file:
        raise ValueError(f"{questions_path}: no 'questions' list; is it a VQA questions file?")
    if "annotations" not in annotations_file:
        raise ValueError(f"{annotations_path}: no 'annotations' list; is it a VQA annotations file?")
    annotations = {a["question_id"]: a for a in annotations_file["annotations"]}
    subtype = questions_file.get("data_subtype", "val2014")
    root = _image_root(image_root, questions_path.parent, subtype, "Images/mscoco/" + subtype)
    result = []
    for index, record in enumerate(questions_file["questions"]):
        _require_fields(record, ("question_id", "image_id", "question"), f"{questions_path} question {index}")
        annotation = annotations.get(record["question_id"])
        if annotation is None:
            raise ValueError(
                f"{annotations_path}: no annotation for question {record['question_id']} of {questions_path}; "
                "the two files must be the same split (test splits have no public annotations)"
            )
        result.append(
            Question(
                id=str(record["question_id"]),
                text=record["question"],
                images=(root / f"COCO_{subtype}_{int(record['image_id']):012d}.jpg",),
                reference=_answers(annotation["answers"]),
                meta={"answer_type": annotation.get("answer_type")},
            )
        )
    return result


def load_okvqa(data: Path, image_root: Path | None) -> list[Question]:
    """OK-VQA: the VQA format of :func:`load_vqa` (``OpenEnded_mscoco_val2014_questions.json`` +
    ``mscoco_val2014_annotations.json``), COCO val2014 images."""
    return load_vqa(data, image_root, url=OKVQA_URL)


# ------------------------------------------------------------------------------------ VizWiz


def load_vizwiz(data: Path, image_root: Path | None) -> list[Question]:
    """VizWiz-VQA as released: ``val.json`` (or ``train.json``), a list of
    ``{"image", "question", "answers": [10 x {"answer", "answer_confidence"}], "answer_type", "answerable"}``.

    ``data``: the JSON file, or the folder holding ``val.json``. Images: ``--image-root``, by
    default the folder named like the file (``val/``) beside it. The id is the image name
    (VizWiz asks one question per image).
    """
    data = Path(data).resolve()
    path = data / "val.json" if data.is_dir() else data
    records = _read_json(path, "VizWiz annotations", VIZWIZ_URL)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of VizWiz records")
    root = _image_root(image_root, path.parent, path.stem)
    result = []
    for index, record in enumerate(records):
        where = f"{path} record {index}"
        _require_fields(record, ("image", "question"), where)
        if "answers" not in record:
            raise ValueError(
                f"{where}: no answers; VizWiz's test split is scored by its EvalAI server, score val.json here"
            )
        result.append(
            Question(
                id=Path(record["image"]).stem,
                text=record["question"],
                images=(root / record["image"],),
                reference=_answers(record["answers"]),
                meta={"answer_type": record.get("answer_type")},
            )
        )
    return result


# ----------------------------------------------------------------------------------- TextVQA


def load_textvqa(data: Path, image_root: Path | None) -> list[Question]:
    """TextVQA as released: ``TextVQA_0.5.1_val.json`` = ``{"data": [{"question_id", "question",
    "image_id", "answers": [10 strings], ...}]}``.

    ``data``: the JSON file, or the folder holding it. Images: ``{image_id}.jpg`` in
    ``--image-root``, by default ``train_images/`` beside the file (the val images ship in
    ``train_val_images.zip``).
    """
    data = Path(data).resolve()
    path = data / "TextVQA_0.5.1_val.json" if data.is_dir() else data
    content = _read_json(path, "TextVQA annotations", TEXTVQA_URL)
    if "data" not in content:
        raise ValueError(f"{path}: no 'data' list; is it TextVQA_0.5.1_val.json?")
    root = _image_root(image_root, path.parent, "train_images")
    result = []
    for index, record in enumerate(content["data"]):
        where = f"{path} record {index}"
        _require_fields(record, ("question_id", "question", "image_id"), where)
        if "answers" not in record:
            raise ValueError(f"{where}: no answers; the TextVQA test split is scored by its EvalAI server")
        result.append(
            Question(
                id=str(record["question_id"]),
                text=record["question"],
                images=(root / f"{record['image_id']}.jpg",),
                reference=_answers(record["answers"]),
            )
        )
    return result


# -------------------------------------------------------------------------------------- POPE

POPE_SPLIT_FILES = ("coco_pope_random.json", "coco_pope_popular.json", "coco_pope_adversarial.json")


def load_pope(data: Path, image_root: Path | None) -> list[Question]:
    """POPE's COCO files: ``coco_pope_{random,popular,adversarial}.json``, one
    ``{"question_id", "image", "text", "label"}`` per line.

    ``data``: the folder holding the split files (all present are read, in the order random,
    popular, adversarial), or one split file. Images: COCO val2014 in ``--image-root``, by
    default ``val2014/`` beside the files. Ids are ``{split}-{question_id}`` (each split
    numbers its questions from 1).
    """
    data = Path(data).resolve()
    if data.is_file():
        paths = [data]
    elif data.is_dir():
        paths = [data / name for name in POPE_SPLIT_FILES if (data / name).is_file()]
        if not paths:
            raise FileNotFoundError(
                f"POPE: none of {', '.join(POPE_SPLIT_FILES)} in {data}. The data is published at {POPE_URL} "
                f"(images: COCO val2014, {COCO_VAL2014_IMAGES_URL})"
            )
    else:
        raise _missing("POPE data", data, POPE_URL, "Pass the folder holding coco_pope_*.json or one of them.")
    root = _image_root(image_root, paths[0].parent, "val2014")
    result = []
    for path in paths:
        split = path.stem.removeprefix("coco_pope_")
        for index, record in enumerate(_read_json_lines(path, "POPE questions", POPE_URL)):
            _require_fields(record, ("question_id", "image", "text", "label"), f"{path} record {index}")
            result.append(
                Question(
                    id=f"{split}-{record['question_id']}",
                    text=record["text"],
                    images=(root / record["image"],),
                    reference=record["label"],
                    meta={"split": split},
                )
            )
    return result


# --------------------------------------------------------------------------------------- MME


def load_mme(data: Path, image_root: Path | None) -> list[Question]:
    """MME's ``MME_Benchmark_release_version`` folder (read by :func:`eval.metrics.read_mme_benchmark`).

    Two yes/no questions per image, kept together as one group. Images are in the release
    folder (``<subtask>/images/`` or ``<subtask>/``); ``--image-root`` is not used.
    """
    data = Path(data).resolve()
    if not data.is_dir():
        raise _missing("MME benchmark folder", data, MME_URL, "Pass the MME_Benchmark_release_version folder.")
    result = []
    seen: dict[tuple[str, str], int] = {}
    for question in read_mme_benchmark(data):
        subtask_dir = data / question.subtask
        image_dir = subtask_dir / "images" if (subtask_dir / "images").is_dir() else subtask_dir
        key = (question.subtask, question.image_name)
        k = seen[key] = seen.get(key, -1) + 1
        result.append(
            Question(
                id=f"{question.subtask}/{question.image_name}/{k}",
                text=question.question,
                images=(image_dir / question.image_name,),
                reference=question.answer,
                meta={"subtask": question.subtask, "image_name": question.image_name},
                group=f"{question.subtask}/{question.image_name}",
            )
        )
    return result


# --------------------------------------------------------------------------------- ScienceQA


def load_scienceqa(data: Path, image_root: Path | None) -> list[Question]:
    """ScienceQA's ``problems.json`` + ``pid_splits.json``: the test split's image questions
    (ScienceQA-IMG, the number LLaVA reports).

    ``data``: the folder holding both files (``data/scienceqa`` of the ScienceQA repository).
    Images: ``{pid}/{image}`` in ``--image-root``, by default ``images/test`` beside them.
    """
    data = Path(data).resolve()
    folder = data if data.is_dir() else data.parent
    problems = _read_json(folder / "problems.json", "ScienceQA problems", SCIENCEQA_URL)
    splits = _read_json(folder / "pid_splits.json", "ScienceQA splits", SCIENCEQA_URL)
    if "test" not in splits:
        raise ValueError(f"{folder / 'pid_splits.json'}: no 'test' split; found {sorted(splits)}")
    root = _image_root(image_root, folder, "images/test", "test")
    result = []
    for pid in splits["test"]:
        problem = problems.get(pid)
        if problem is None:
            raise ValueError(f"{folder / 'pid_splits.json'}: test pid {pid!r} is not in problems.json")
        if not problem.get("image"):
            continue
        _require_fields(problem, ("question", "choices", "answer"), f"{folder / 'problems.json'} problem {pid}")
        letter = SCIENCEQA_LETTERS[problem["answer"]]
        result.append(
            Question(
                id=str(pid),
                text=problem["question"],
                images=(root / str(pid) / problem["image"],),
                reference=letter,
                meta={"choices": list(problem["choices"]), "hint": problem.get("hint") or "", "answer": problem["answer"]},
            )
        )
    return result


# ----------------------------------------------------------------------------------- MMBench


def _read_tsv(path: Path) -> list[dict[str, Any]]:
    # Base64 images overflow csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    # pandas (which LLaVA reads the TSV with) turns empty cells into NaN; None is our NaN.
    return [{key: (None if value == "" else value) for key, value in row.items()} for row in rows]


def load_mmbench(data: Path, image_root: Path | None) -> list[Question]:
    """MMBench's released TSV (e.g. ``mmbench_dev_20230712.tsv``): columns ``index``, ``question``,
    ``hint``, ``A``-``D``, ``answer``, ``category``, ``l2-category``, ``image`` (base64).

    Each question becomes one prompt per rotation of its options (circular evaluation,
    :func:`eval.metrics.circular_rotations`), ids ``{index}-r{round}``, grouped by index. Rows
    numbered ``>= 1,000,000`` (circular copies that VLMEvalKit's TSVs carry) are skipped, as
    the rotations are made here. Images are in the TSV; ``--image-root`` is not used.
    """
    data = Path(data).resolve()
    if not data.is_file():
        raise _missing("MMBench TSV", data, MMBENCH_URL, "Pass the released .tsv file, e.g. mmbench_dev_20230712.tsv.")
    rows = _read_tsv(data)
    required = ("index", "question", "A", "B", "image", "category")
    if rows:
        _require_fields(rows[0], required, f"{data} (header)")
        if "answer" not in rows[0]:
            raise ValueError(f"{data} has no 'answer' column; MMBench's test TSV is scored by its server, use the dev TSV")
    images = {row["index"]: row["image"] for row in rows}
    result = []
    for line_number, row in enumerate(rows, start=2):
        index = int(row["index"])
        if index >= _MMBENCH_COPY_OFFSET:
            continue
        where = f"{data} line {line_number} (index {index})"
        image = row["image"]
        if image is not None and len(image) <= _MMBENCH_IMAGE_REFERENCE_MAX_LEN:
            image = images.get(image)  # a reference to the row that stores the image
        if not image:
            raise ValueError(f"{where}: no image")
        try:
            rotations = circular_rotations(present_options(row), row["answer"])
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        for rotation in rotations:
            result.append(
                Question(
                    id=f"{index}-r{rotation.round_index}",
                    text=row["question"],
                    images=(EmbeddedImage(f"{data.name} index {index}", image),),
                    reference=rotation.answer,
                    meta={
                        "index": index,
                        "hint": row.get("hint"),
                        "options": list(rotation.options),
                        "category": row["category"],
                        "l2_category": row.get("l2-category"),
                    },
                    group=str(index),
                )
            )
    return result


# --------------------------------------------------------------------------------------- GQA


def load_gqa(data: Path, image_root: Path | None) -> list[Question]:
    """GQA's ``testdev_balanced_questions.json``: ``{qid: {"imageId", "question", "answer",
    "isBalanced", ...}}``.

    ``data``: the JSON file, or the folder holding it. Images: ``{imageId}.jpg`` in
    ``--image-root``, by default ``images/`` beside the file or one folder up.
    """
    data = Path(data).resolve()
    path = data / "testdev_balanced_questions.json" if data.is_dir() else data
    content = _read_json(path, "GQA questions", GQA_URL)
    root = _image_root(image_root, path.parent, "images")
    result = []
    for qid, record in content.items():
        _require_fields(record, ("imageId", "question", "answer"), f"{path} question {qid}")
        result.append(
            Question(
                id=str(qid),
                text=record["question"],
                images=(root / f"{record['imageId']}.jpg",),
                reference=record["answer"],
                meta={"is_balanced": bool(record.get("isBalanced", True))},
            )
        )
    return result


# ------------------------------------------------------------------------------ COCO captions


def load_coco_captions(data: Path, image_root: Path | None) -> list[Question]:
    """A COCO-format captions file (``captions_val2014.json``, or a Karpathy test split in COCO
    format such as ``coco_karpathy_test_gt.json``): ``{"images": [{"id", "file_name"}],
    "annotations": [{"image_id", "caption"}]}``.

    One question per image with captions, in the ``images`` order (annotation order when the
    file has no ``images``). Images: ``file_name`` in ``--image-root``, by default ``val2014/``
    beside the file or one folder up; without ``file_name`` the val2014 name
    ``COCO_val2014_{id:012d}.jpg`` is used (the Karpathy test images all come from val2014).
    """
    data = Path(data).resolve()
    content = _read_json(data, "COCO captions annotations", COCO_URL)
    if "annotations" not in content:
        raise ValueError(f"{data}: no 'annotations' list; expected a COCO captions file such as captions_val2014.json")
    references: dict[Any, list[str]] = {}
    for index, annotation in enumerate(content["annotations"]):
        _require_fields(annotation, ("image_id", "caption"), f"{data} annotation {index}")
        references.setdefault(annotation["image_id"], []).append(annotation["caption"])
    file_names = {image["id"]: image.get("file_name") for image in content.get("images", [])}
    order = [image_id for image_id in file_names if image_id in references] or list(references)
    root = _image_root(image_root, data.parent, "val2014")
    return [
        Question(
            id=str(image_id),
            text="",
            images=(root / (file_names.get(image_id) or f"COCO_val2014_{int(image_id):012d}.jpg"),),
            reference=references[image_id],
        )
        for image_id in order
    ]


# -------------------------------------------------------------------------------------- NLVR


def load_nlvr(data: Path, image_root: Path | None) -> list[Question]:
    """An NLVR v1 split folder (``dev/`` or ``test/``), read by :func:`eval.nlvr.load_nlvr_split`:
    one question per PNG rendering, id = the PNG's stem. Images are in the split folder."""
    return [
        Question(
            id=example.image_id,
            text=example.sentence,
            images=(example.image_path,),
            reference="true" if example.label else "false",
            meta={"example": example},
        )
        for example in load_nlvr_split(data)
    ]


# ------------------------------------------------------------------------------------ shapes


def load_shapes(data: Path, image_root: Path | None) -> list[Question]:
    """Our synthetic benchmark's ``eval.json`` (from ``vlm data shapes``): a list of
    ``{"id", "image", "question", "answer", "task"}``; ``image`` is relative to the file's
    folder (or to ``--image-root``)."""
    data = Path(data).resolve()
    path = data / "eval.json" if data.is_dir() else data
    records = _read_json(path, "shapes eval split", SHAPES_HOW)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of eval records (eval.json of `vlm data shapes`)")
    root = Path(image_root).resolve() if image_root is not None else path.parent
    result = []
    for index, record in enumerate(records):
        _require_fields(record, ("id", "image", "question", "answer", "task"), f"{path} record {index}")
        result.append(
            Question(
                id=str(record["id"]),
                text=record["question"],
                images=(root / record["image"],),
                reference=record["answer"],
                meta={"task": record["task"]},
            )
        )
    return result


__all__ = [
    "COCO_URL",
    "GQA_URL",
    "MMBENCH_URL",
    "MME_URL",
    "NLVR_URL",
    "OKVQA_URL",
    "POPE_URL",
    "SCIENCEQA_URL",
    "TEXTVQA_URL",
    "VIZWIZ_URL",
    "VQAV2_URL",
    "EmbeddedImage",
    "ImageSource",
    "Question",
    "load_coco_captions",
    "load_gqa",
    "load_mmbench",
    "load_mme",
    "load_nlvr",
    "load_okvqa",
    "load_pope",
    "load_scienceqa",
    "load_shapes",
    "load_textvqa",
    "load_vizwiz",
    "load_vqa",
]
