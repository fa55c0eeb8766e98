"""Tests for the synthetic shapes dataset: scenes, pixels, answers, files and the scorer.

Answers are checked against the scene by an independent reading: the test parses the colour and
kind words out of the question text and recomputes counts, uniqueness and grid cells from the
shapes' centre coordinates itself, so a generator bug cannot hide behind its own bookkeeping.
"""

from __future__ import annotations

import io
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from eval.metrics.shapes import normalize_shapes_answer, score_shapes
from eval.shapes import (
    BACKGROUND,
    COLORS,
    IMAGE_SIZE,
    KINDS,
    POSITIONS,
    TASKS,
    Scene,
    SceneConfig,
    Shape,
    feasible_tasks,
    make_caption,
    make_qa,
    render,
    sample_scene,
    scene_seed,
    write_shapes_dataset,
)

N_SCENES = 300
OVERLAP = SceneConfig(allow_overlap=True)


def _scenes(n: int = N_SCENES, config: SceneConfig | None = None) -> list[Scene]:
    return [sample_scene(scene_seed(7, "train", i), config) for i in range(n)]


# ---------------------------------------------------------------- independent reading of scenes


def _grid_label(cx: int, cy: int) -> str:
    """The 3x3 cell of a centre, from float grid lines at 224/3 and 448/3."""
    third = IMAGE_SIZE / 3
    col = 0 if cx < third else 1 if cx < 2 * third else 2
    row = 0 if cy < third else 1 if cy < 2 * third else 2
    words = [("top", "", "bottom")[row], ("left", "", "right")[col]]
    return " ".join(w for w in words if w) or "center"


_COLOR_RE = re.compile(r"\b(" + "|".join(COLORS) + r")\b")
_KIND_RE = re.compile(r"\b(" + "|".join(KINDS) + r")(?:es|s)?\b")


def _count(scene: Scene, color: str | None = None, kind: str | None = None) -> int:
    return len([s for s in scene.shapes if color in (None, s.color) and kind in (None, s.kind)])


def _group_count(scene: Scene, text: str) -> int:
    colors, kinds = _COLOR_RE.findall(text), _KIND_RE.findall(text)
    assert len(colors) + len(kinds) == 1, f"one group expected in {text!r}"
    return _count(scene, color=colors[0]) if colors else _count(scene, kind=kinds[0])


def _expected_answer(scene: Scene, task: str, question: str) -> str:
    """Recompute the answer of `question` from the scene's shapes alone."""
    colors, kinds = _COLOR_RE.findall(question), _KIND_RE.findall(question)
    if task == "color":
        assert colors == [] and len(kinds) == 1, question
        matches = [s for s in scene.shapes if s.kind == kinds[0]]
        assert len(matches) == 1, f"color asked about a kind that is not unique: {question}"
        return matches[0].color
    if task == "shape":
        assert kinds == [] and len(colors) == 1, question
        matches = [s for s in scene.shapes if s.color == colors[0]]
        assert len(matches) == 1, f"shape asked about a colour that is not unique: {question}"
        return matches[0].kind
    if task == "count":
        assert len(colors) + len(kinds) <= 1, question
        return str(_count(scene, colors[0] if colors else None, kinds[0] if kinds else None))
    if task == "position":
        assert len(colors) == 1 and len(kinds) == 1, question
        matches = [s for s in scene.shapes if (s.color, s.kind) == (colors[0], kinds[0])]
        assert len(matches) == 1, f"position asked about a pair that is not unique: {question}"
        return _grid_label(matches[0].cx, matches[0].cy)
    if task == "existence":
        assert len(colors) == 1 and len(kinds) == 1, question
        return "yes" if _count(scene, colors[0], kinds[0]) else "no"
    if task == "comparison":
        left, right = question.split(" than ")
        return "yes" if _group_count(scene, left) > _group_count(scene, right) else "no"
    raise AssertionError(task)


# ---------------------------------------------------------------- scenes


def test_same_seed_same_scene_independent_of_global_random() -> None:
    random.seed(1)
    first = [sample_scene(s) for s in range(20)]
    random.seed(2)
    random.random()
    assert [sample_scene(s) for s in range(20)] == first
    assert len({scene.shapes for scene in first}) == 20  # different seeds, different scenes


@pytest.mark.parametrize("config", [None, OVERLAP], ids=["no_overlap", "overlap"])
def test_scene_invariants(config: SceneConfig | None) -> None:
    n_shapes = Counter()
    for scene in _scenes(config=config):
        assert 1 <= len(scene.shapes) <= 6
        n_shapes[len(scene.shapes)] += 1
        for s in scene.shapes:
            r = s.radius
            assert r + 2 <= s.cx <= IMAGE_SIZE - 1 - r - 2 and r + 2 <= s.cy <= IMAGE_SIZE - 1 - r - 2
            # Centres keep away from the grid lines, so the position answer is never a coin toss.
            for line in (IMAGE_SIZE / 3, 2 * IMAGE_SIZE / 3):
                assert abs(s.cx - line) > 5 and abs(s.cy - line) > 5
            assert s.position == _grid_label(s.cx, s.cy)
        for i, a in enumerate(scene.shapes):
            for b in scene.shapes[i + 1:]:
                if config is None:  # boxes apart by the 4-pixel gap on at least one axis
                    reach = a.radius + b.radius + 4
                    assert abs(a.cx - b.cx) > reach or abs(a.cy - b.cy) > reach
                else:  # neither centre under the other's box
                    assert abs(a.cx - b.cx) > b.radius or abs(a.cy - b.cy) > b.radius
                    assert abs(a.cx - b.cx) > a.radius or abs(a.cy - b.cy) > a.radius
    assert set(n_shapes) == {1, 2, 3, 4, 5, 6}, n_shapes


def test_bad_scene_arguments_fail_loudly() -> None:
    with pytest.raises(ValueError, match="min_shapes"):
        SceneConfig(min_shapes=0)
    with pytest.raises(ValueError, match="max_shapes"):
        SceneConfig(min_shapes=4, max_shapes=3)
    with pytest.raises(ValueError, match="star"):
        Shape("star", "red", "small", 100, 100)
    with pytest.raises(ValueError, match="leaves"):
        Shape("circle", "red", "large", 5, 100)
    with pytest.raises(ValueError, match="split"):
        scene_seed(0, "test", 0)
    with pytest.raises(ValueError, match="task"):
        make_qa(sample_scene(0), "size", random.Random(0))


# ---------------------------------------------------------------- rendering


def test_render_is_deterministic() -> None:
    scene = sample_scene(123)
    a, b = render(scene), render(sample_scene(123))
    assert a.mode == "RGB" and a.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert a.tobytes() == b.tobytes()
    png_a, png_b = io.BytesIO(), io.BytesIO()
    a.save(png_a, format="PNG")
    b.save(png_b, format="PNG")
    assert png_a.getvalue() == png_b.getvalue()
    assert render(sample_scene(124)).tobytes() != a.tobytes()


# Share of the shape's (2r+1)^2 box the kind fills, and of the box's bottom row.
_FILL = {"circle": 0.785, "square": 1.0, "triangle": 0.5, "diamond": 0.5, "cross": 0.6}


@pytest.mark.parametrize("config", [None, OVERLAP], ids=["no_overlap", "overlap"])
def test_render_draws_each_shape_in_its_colour(config: SceneConfig | None) -> None:
    for scene in _scenes(100, config):
        pixels = np.asarray(render(scene))  # [H, W, 3] uint8
        covered = np.zeros(pixels.shape[:2], dtype=bool)
        for s in scene.shapes:
            # Every kind is filled at its centre, and no later shape covers a centre.
            assert tuple(pixels[s.cy, s.cx]) == COLORS[s.color], (scene.seed, s)
            left, top, right, bottom = s.box
            covered[top:bottom + 1, left:right + 1] = True
            if config is None:  # boxes are disjoint: the box holds only this shape
                inside = (pixels[top:bottom + 1, left:right + 1] == COLORS[s.color]).all(axis=-1)
                assert abs(inside.mean() - _FILL[s.kind]) < 0.08, (s, inside.mean())
                bottom_row = inside[-1].mean()
                if s.kind in ("triangle", "square"):  # flat base tells a triangle from a diamond
                    assert bottom_row > 0.9, (s, bottom_row)
                else:
                    assert bottom_row < 0.4, (s, bottom_row)
        # Outside every box there is only background; the corners always are.
        assert (pixels[~covered] == BACKGROUND).all()
        for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
            assert tuple(pixels[y, x]) == BACKGROUND


# ---------------------------------------------------------------- captions and questions


_CAPTION_OBJECT = re.compile(
    r"\b(small|large) (" + "|".join(COLORS) + r") (" + "|".join(KINDS) + r") "
    r"(?:at the|on the|in the) "
    r"(top left|top right|bottom left|bottom right|top|bottom|left|right|center)\b"
)


def test_captions_name_every_shape_with_its_position() -> None:
    phrasings = set()
    for scene in _scenes(150):
        caption = make_caption(scene, random.Random(scene.seed))
        mentioned = Counter(_CAPTION_OBJECT.findall(caption))
        expected = Counter((s.size, s.color, s.kind, _grid_label(s.cx, s.cy)) for s in scene.shapes)
        assert mentioned == expected, (caption, scene)
        assert caption[0].isupper() and caption.endswith(".")
        # The sentence around the list of objects, e.g. "The image shows LIST."
        skeleton = re.sub(_CAPTION_OBJECT, "X", caption)
        skeleton = re.sub(r"an? X((, an? X)* and an? X)?", "LIST", skeleton, flags=re.IGNORECASE)
        phrasings.add(re.sub(r"\b(is one shape|are \w+ shapes)\b", "are N shapes", skeleton))
    assert len(phrasings) >= 4, phrasings  # several phrasings, chosen by the seed


@pytest.mark.parametrize("config", [None, OVERLAP], ids=["no_overlap", "overlap"])
def test_answers_match_the_scene(config: SceneConfig | None) -> None:
    asked = Counter()
    for scene in _scenes(config=config):
        rng = random.Random(scene.seed)
        for task in TASKS:
            qa = make_qa(scene, task, rng)
            if qa is None:
                # Only the uniqueness-gated tasks may be skipped, and only when nothing is unique.
                if task == "color":
                    assert all(_count(scene, kind=s.kind) > 1 for s in scene.shapes)
                elif task == "shape":
                    assert all(_count(scene, color=s.color) > 1 for s in scene.shapes)
                elif task == "position":
                    assert all(_count(scene, s.color, s.kind) > 1 for s in scene.shapes)
                else:
                    raise AssertionError(f"{task} must always be askable")
                continue
            asked[task] += 1
            assert qa.task == task
            assert qa.answer == _expected_answer(scene, task, qa.question), (scene, qa)
            assert normalize_shapes_answer(qa.answer) == qa.answer  # references are already normal
            if task == "position":
                assert qa.answer in POSITIONS
    assert set(asked) == set(TASKS)
    assert min(asked.values()) > N_SCENES // 2, asked


def test_yes_no_tasks_are_balanced_and_polarity_is_honoured() -> None:
    scenes = _scenes(400)
    for task in ("existence", "comparison"):
        answers = Counter(make_qa(s, task, random.Random(s.seed)).answer for s in scenes)
        assert 0.4 < answers["yes"] / 400 < 0.6, (task, answers)
        for polarity, word in ((True, "yes"), (False, "no")):
            forced = {make_qa(s, task, random.Random(1), polarity=polarity).answer for s in scenes}
            assert forced == {word}


def test_train_and_eval_seeds_never_overlap() -> None:
    train = {scene_seed(base, "train", i) for base in range(4) for i in range(3000)}
    held_out = {scene_seed(base, "eval", i) for base in range(4) for i in range(3000)}
    assert len(train) == len(held_out) == 4 * 3000  # injective within a split too
    assert not train & held_out
    with pytest.raises(ValueError, match="seed"):
        scene_seed(-1, "train", 0)


# ---------------------------------------------------------------- files


def _load(out: Path) -> dict[str, list[dict]]:
    parts = ("captions", "instruct", "eval")
    return {part: json.loads((out / f"{part}.json").read_text()) for part in parts}


def _scene_of(image: str) -> Scene:
    split, seed, index = re.fullmatch(r"images/(train|eval)_s(\d+)_(\d{6})\.png", image).groups()
    return sample_scene(scene_seed(int(seed), split, int(index)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    written = write_shapes_dataset(out, 60, seed=3, n_eval=40)
    assert set(written) == {"captions", "instruct", "eval"}
    return out


def test_written_files_are_well_formed(dataset: Path) -> None:
    data = _load(dataset)
    assert len(data["captions"]) == len(data["instruct"]) == 60
    referenced = set()
    for part in ("captions", "instruct"):
        ids = [r["id"] for r in data[part]]
        assert len(set(ids)) == len(ids)
        for record in data[part]:
            assert set(record) == {"id", "image", "conversations"}
            turns = record["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
            assert sum(t["value"].count("<image>") for t in turns) == 1, record
            assert turns[0]["value"].startswith("<image>\n")
            assert (dataset / record["image"]).is_file()
            referenced.add(record["image"])
    turn_counts = Counter(len(r["conversations"]) // 2 for r in data["instruct"])
    assert set(turn_counts) == {1, 2, 3}, turn_counts  # single- and multi-turn
    ids = [r["id"] for r in data["eval"]]
    assert len(set(ids)) == len(ids)
    for record in data["eval"]:
        assert set(record) == {"id", "image", "question", "answer", "task"}
        assert "<image>" not in record["question"]
        assert (dataset / record["image"]).is_file()
        referenced.add(record["image"])
    on_disk = {f"images/{p.name}" for p in (dataset / "images").iterdir()}
    assert on_disk == referenced  # no stray images, no leftover temporary files
    assert not list(dataset.glob(".*.tmp"))
    from PIL import Image

    with Image.open(dataset / data["eval"][0]["image"]) as image:
        assert image.mode == "RGB" and image.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_written_records_are_right_and_tasks_complete(dataset: Path) -> None:
    data = _load(dataset)
    train_images = {r["image"] for r in data["captions"]} | {r["image"] for r in data["instruct"]}
    eval_images = {r["image"] for r in data["eval"]}
    assert not train_images & eval_images
    # Different file names could still hide equal scenes; compare the scenes' seeds too.
    assert not {_scene_of(i).seed for i in train_images} & {_scene_of(i).seed for i in eval_images}

    instruct_tasks = Counter()
    for record in data["instruct"]:
        scene = _scene_of(record["image"])
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2]):
            question = human["value"].removeprefix("<image>\n")
            task = _task_of(question)
            instruct_tasks[task] += 1
            assert gpt["value"] == _expected_answer(scene, task, question), (record, question)
    assert set(instruct_tasks) == set(TASKS), instruct_tasks

    eval_tasks = Counter()
    for record in data["eval"]:
        scene = _scene_of(record["image"])
        eval_tasks[record["task"]] += 1
        assert record["answer"] == _expected_answer(scene, record["task"], record["question"]), record
        assert record["task"] == _task_of(record["question"])
    assert set(eval_tasks) == set(TASKS)
    for task in ("existence", "comparison"):  # eval alternates yes/no: balanced exactly
        answers = Counter(r["answer"] for r in data["eval"] if r["task"] == task)
        assert answers["yes"] == answers["no"] == 20, (task, answers)

    for record in data["captions"]:
        scene = _scene_of(record["image"])
        assert len(_CAPTION_OBJECT.findall(record["conversations"][1]["value"])) == len(scene.shapes)


def _task_of(question: str) -> str:
    """Which task a question belongs to, from its wording alone."""
    q = question.lower()
    if " than " in q:
        return "comparison"
    if q.startswith(("how many", "count")):
        return "count"
    if q.startswith(("is there", "does the image contain", "can you see")):
        return "existence"
    if "where" in q or "which part" in q:
        return "position"
    if "color" in q:
        return "color"
    if "shape" in q:
        return "shape"
    raise AssertionError(f"unknown question wording: {question!r}")


def test_writing_is_deterministic(tmp_path: Path) -> None:
    write_shapes_dataset(tmp_path / "a", 12, seed=5, n_eval=6)
    write_shapes_dataset(tmp_path / "b", 12, seed=5, n_eval=6)
    write_shapes_dataset(tmp_path / "c", 12, seed=6, n_eval=6)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 3 + 12 + 6
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    for part in ("captions.json", "instruct.json", "eval.json"):
        assert (tmp_path / "a" / part).read_text() != (tmp_path / "c" / part).read_text()
    # Rewriting in place (atomic replace) leaves the same bytes and no temporary files.
    before = (tmp_path / "a" / "instruct.json").read_bytes()
    write_shapes_dataset(tmp_path / "a", 12, seed=5, n_eval=6, parts=("instruct",), progress=True)
    assert (tmp_path / "a" / "instruct.json").read_bytes() == before
    assert not list((tmp_path / "a").rglob(".*.tmp"))


def test_eval_images_do_not_depend_on_n(tmp_path: Path) -> None:
    write_shapes_dataset(tmp_path / "small", 5, seed=0, n_eval=3, parts=("eval",))
    write_shapes_dataset(tmp_path / "large", 9, seed=0, n_eval=5, parts=("eval",))
    small = json.loads((tmp_path / "small" / "eval.json").read_text())
    large = json.loads((tmp_path / "large" / "eval.json").read_text())
    assert large[: len(small)] == small
    assert not (tmp_path / "small" / "captions.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 0}, ValueError, "n must be >= 1"),
        ({"n": -3}, ValueError, "n must be >= 1"),
        ({"n": 2.5}, TypeError, "n must be an int"),
        ({"n": 2, "seed": -1}, ValueError, "seed must be >= 0"),
        ({"n": 2, "n_eval": 0}, ValueError, "n_eval must be >= 1"),
        ({"n": 2, "parts": ("captions", "pretrain")}, ValueError, "pretrain"),
        ({"n": 2, "parts": "eval"}, ValueError, "sequence"),
        ({"n": 2, "parts": ()}, ValueError, "non-empty"),
        ({"n": 2, "multi_turn_fraction": 1.5}, ValueError, "multi_turn_fraction"),
        ({"n": 2, "max_turns": 1}, ValueError, "max_turns must be >= 2"),
        ({"n": 2, "max_turns": 17}, ValueError, "max_turns must be <= 16"),
    ],
)
def test_bad_writer_arguments_fail_before_writing(
    tmp_path: Path, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        write_shapes_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- scorer


@pytest.mark.parametrize(
    ("prediction", "reference", "same"),
    [
        ("Three.", "3", True),
        ("red", "Red.", True),
        ("blue", "red", False),
        ("  The red one ", "red", True),
        ("A circle!", "circle", True),
        ("Top-left", "top left", True),
        ("bottom   right", "bottom right", True),
        ("In the centre", "center", False),  # only articles are dropped, not prepositions
        ("Centre.", "center", True),
        ("Yes.", "yes", True),
        ("yes, there is", "yes", False),
        ("one", "1", True),
        ("Only two", "2", True),
        ("zero", "0", True),
        ("ten", "10", True),
        ("\"no\"", "no", True),
        ("3 shapes", "3", False),
    ],
)
def test_normalize_answer(prediction: str, reference: str, same: bool) -> None:
    assert (normalize_shapes_answer(prediction) == normalize_shapes_answer(reference)) is same


def test_score_shapes_arithmetic() -> None:
    predictions = [
        {"id": "a", "task": "color", "answer": "red", "prediction": "Red."},
        {"id": "b", "task": "color", "answer": "blue", "prediction": "green"},
        {"id": "c", "task": "count", "answer": "3", "prediction": "Three"},
        {"id": "d", "task": "count", "answer": "2", "prediction": "2"},
        {"id": "e", "task": "count", "answer": "0", "prediction": "1"},
        {"id": "f", "task": "existence", "answer": "yes", "prediction": "yes"},
    ]
    result = score_shapes(predictions)
    assert (result["correct"], result["total"]) == (4, 6)
    assert result["accuracy"] == pytest.approx(400 / 6)
    assert list(result["per_task"]) == ["color", "count", "existence"]
    assert result["per_task"]["color"] == {"accuracy": 50.0, "correct": 1, "total": 2}
    assert result["per_task"]["count"]["accuracy"] == pytest.approx(200 / 3)
    assert result["per_task"]["existence"] == {"accuracy": 100.0, "correct": 1, "total": 1}
    with pytest.raises(ValueError, match="no predictions"):
        score_shapes([])
    with pytest.raises(ValueError, match=r"prediction 0 \(id 'x'\) lacks keys \['prediction'\]"):
        score_shapes([{"id": "x", "task": "color", "answer": "red"}])


def test_reference_answers_score_100(dataset: Path) -> None:
    records = json.loads((dataset / "eval.json").read_text())
    result = score_shapes([{**r, "prediction": r["answer"].upper() + "."} for r in records])
    assert result["accuracy"] == 100.0
    assert set(result["per_task"]) == set(TASKS)


def test_max_turns_asks_more_distinct_tasks_per_image(tmp_path: Path) -> None:
    default = json.loads(write_shapes_dataset(tmp_path / "a", 40, parts=("instruct",))["instruct"].read_text())
    long = json.loads(
        write_shapes_dataset(tmp_path / "b", 40, parts=("instruct",), multi_turn_fraction=1.0, max_turns=12)["instruct"].read_text()
    )
    assert max(len(r["conversations"]) // 2 for r in default) == 3
    turns = [len(r["conversations"]) // 2 for r in long]
    assert min(turns) >= 2 and 6 <= max(turns) <= 12 and sum(turns) > 1.5 * sum(len(r["conversations"]) // 2 for r in default)
    repeated = 0
    for record in long:
        scene = sample_scene(scene_seed(0, "train", int(record["id"].rsplit("_", 1)[1])))
        questions = [turn["value"].removeprefix("<image>\n") for turn in record["conversations"][0::2]]
        answers = [turn["value"] for turn in record["conversations"][1::2]]
        assert record["conversations"][0]["value"].startswith("<image>\n")
        assert not any("<image>" in q for q in questions)
        tasks = [_task_of(q) for q in questions]
        repeated += len(tasks) > len(feasible_tasks(scene))
        # a repeat asks about another subject: no question twice, in any phrasing
        subjects = [(task, *_COLOR_RE.findall(q), *_KIND_RE.findall(q)) for task, q in zip(tasks, questions, strict=True)]
        assert len(set(subjects)) == len(subjects), (record["id"], questions)
        for task, question, answer in zip(tasks, questions, answers, strict=True):
            assert answer == _expected_answer(scene, task, question), (record["id"], question)
        _assert_no_turn_answered_by_the_conversation(record["id"], tasks, questions, answers)
    assert repeated >= 10  # scenes have 3-6 feasible tasks, so long conversations repeat tasks


def _assert_no_turn_answered_by_the_conversation(record_id: str, tasks: list[str], questions: list[str], answers: list[str]) -> None:
    """No colour, shape or existence question names a colour or kind that an earlier colour, shape,
    existence or position turn (which pair colours with kinds) or a count of 0 spoke about."""
    told: set[str] = set()
    for task, question, answer in zip(tasks, questions, answers, strict=True):
        named = set(_COLOR_RE.findall(f"{question} {answer}")) | set(_KIND_RE.findall(f"{question} {answer}"))
        if task in ("color", "shape", "existence"):
            assert not named & told, (record_id, question, told)
        if task in ("color", "shape", "existence", "position") or answer == "0":
            told |= named


def test_default_conversations_cannot_be_answered_from_earlier_turns(dataset: Path) -> None:
    records = _load(dataset)["instruct"]
    assert any(len(r["conversations"]) > 2 for r in records)
    for record in records:
        questions = [turn["value"].removeprefix("<image>\n") for turn in record["conversations"][0::2]]
        answers = [turn["value"] for turn in record["conversations"][1::2]]
        _assert_no_turn_answered_by_the_conversation(record["id"], [_task_of(q) for q in questions], questions, answers)


def _task_of(question: str) -> str:
    """Which task a generated question belongs to, read from its wording."""
    if question.startswith(("How many", "Count")):
        return "count"
    if " more " in question:
        return "comparison"
    if question.startswith("Where") or "part of the image" in question:
        return "position"
    if question.startswith(("Is there", "Does the image contain", "Can you see")):
        return "existence"
    return "color" if "color" in question else "shape"
