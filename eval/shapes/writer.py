"""Writing the dataset: images and the captions / instruct / eval JSON files, atomically."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from eval.shapes.drawing import render
from eval.shapes.scenes import MAX_INDEX, Scene, SceneConfig, check_int, sample_scene, scene_seed
from eval.shapes.text import CAPTION_PROMPTS, QA, feasible_tasks, make_caption, make_qa
from eval.shapes.vocabulary import COLORS, IMAGE_TOKEN, KINDS, PLURALS
from vlm.atomic import atomic_file, atomic_write_json

MAX_TURNS = 16  # most QA turns of one instruct conversation
_TURN_TRIES = 8  # question draws per wanted turn before a conversation settles for fewer turns
_PARTS = ("captions", "instruct", "eval")
DEFAULT_N_EVAL = 200


def _image_stem(split: str, seed: int, index: int) -> str:
    return f"{split}_s{seed}_{index:06d}"


def _text_rng(scene: Scene, purpose: str) -> random.Random:
    # A separate stream per purpose: changing how questions are drawn never moves the shapes,
    # and captions do not shift when the question code changes. Strings seed via SHA-512, so
    # this is stable across processes (unlike hash()).
    return random.Random(f"shapes/{scene.seed}/{purpose}")


def _caption_record(scene: Scene, stem: str) -> dict[str, Any]:
    rng = _text_rng(scene, "caption")
    prompt = rng.choice(CAPTION_PROMPTS)
    return {
        "id": stem,
        "image": f"images/{stem}.png",
        "conversations": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"},
            {"from": "gpt", "value": make_caption(scene, rng)},
        ],
    }


def _instruct_record(scene: Scene, stem: str, multi_turn_fraction: float, max_turns: int = 3) -> dict[str, Any]:
    rng = _text_rng(scene, "instruct")
    tasks = feasible_tasks(scene)  # count, existence and comparison are always there: >= 3
    n_turns = rng.choice(tuple(range(2, max_turns + 1))) if rng.random() < multi_turn_fraction else 1
    # Every feasible task is asked once before any is asked again; a repeat asks about another
    # subject (the same question is never asked twice about one image, in any phrasing).
    order = list(rng.sample(tasks, min(n_turns, len(tasks))))
    qas: list[QA] = []
    asked: set[tuple[str, ...]] = set()
    named: set[str] = set()  # colours and kinds that earlier turns told something about
    tries = 0
    while len(qas) < n_turns and tries < _TURN_TRIES * n_turns:
        if not order:
            order = list(rng.sample(tasks, len(tasks)))
        task = order.pop(0)
        qa = make_qa(scene, task, rng)
        assert qa is not None, f"{stem}: feasible task {task} gave no question"
        tries += 1
        key, subjects = _question_key(qa), _subjects(qa)
        # A colour, shape or existence question about a colour or kind that an earlier turn told
        # something about could be answered from the text instead of the image ("Which shape is
        # yellow?" "triangle" -> "What color is the triangle?", "Is there a yellow triangle?"):
        # the eval asks single questions, so such turns would teach a shortcut. Positions,
        # counts and comparisons stay: the conversation does not tell them.
        if key in asked or (qa.task in _ANSWERABLE_FROM_NAMES and subjects & named):
            continue
        asked.add(key)
        if qa.task in _ANSWERABLE_FROM_NAMES or qa.task == "position" or qa.answer == "0":
            named |= subjects  # they say which colour goes with which kind, or that one is absent
        qas.append(qa)
    conversations = []
    for turn, qa in enumerate(qas):
        question = f"{IMAGE_TOKEN}\n{qa.question}" if turn == 0 else qa.question
        conversations.append({"from": "human", "value": question})
        conversations.append({"from": "gpt", "value": qa.answer})
    return {"id": stem, "image": f"images/{stem}.png", "conversations": conversations}


_SUBJECT_WORDS = frozenset(COLORS) | frozenset(KINDS) | frozenset(PLURALS.values())
_SINGULAR = {plural: kind for kind, plural in PLURALS.items()}
_ANSWERABLE_FROM_NAMES = ("color", "shape", "existence")


def _subjects(qa: QA) -> set[str]:
    """The colours and kinds (singular) a question and its answer name."""
    words = re.findall(r"[a-z]+", f"{qa.question} {qa.answer}".lower())
    return {_SINGULAR.get(w, w) for w in words if w in _SUBJECT_WORDS}


def _question_key(qa: QA) -> tuple[str, ...]:
    """What a question asks, whatever its phrasing: its task and its colour/kind words in order."""
    words = re.findall(r"[a-z]+", qa.question.lower())
    return (qa.task, *(w for w in words if w in _SUBJECT_WORDS))


def _eval_records(scene: Scene, stem: str, index: int) -> list[dict[str, Any]]:
    rng = _text_rng(scene, "eval")
    # Alternate the yes/no answers by scene index, so the eval split is balanced exactly and a
    # model that always says "yes" scores 50 on existence and comparison.
    polarity = index % 2 == 0
    records = []
    for task in feasible_tasks(scene):
        qa = make_qa(scene, task, rng, polarity=polarity)
        assert qa is not None, f"{stem}: feasible task {task} gave no question"
        records.append(
            {"id": f"{stem}_{task}", "image": f"images/{stem}.png", "question": qa.question,
             "answer": qa.answer, "task": task}
        )
    return records


def write_shapes_dataset(
    out_dir: str | os.PathLike[str],
    n: int,
    seed: int = 0,
    *,
    n_eval: int | None = None,
    parts: Sequence[str] = _PARTS,
    config: SceneConfig | None = None,
    multi_turn_fraction: float = 0.5,
    max_turns: int = 3,
    progress: bool = False,
) -> dict[str, Path]:
    """Write the shapes dataset: `out_dir/images/*.png` and one JSON file per part.

    Args:
        out_dir: folder to write into; created if missing. Existing files of the same names are
            replaced atomically; other files are left alone.
        n: number of training images; captions.json and instruct.json hold one record per image.
        seed: base seed (>= 0). Train and eval scenes come from disjoint seed streams
            (see `scene_seed`), so held-out images never repeat a training scene.
        n_eval: number of held-out images; eval.json asks every feasible task once per image
            (about 6 * n_eval questions). Defaults to min(n, 200). Eval image i depends only on
            (seed, i), so a smaller n_eval gives a prefix of a larger one's images.
        parts: which of "captions", "instruct", "eval" to write.
        config: how scenes are sampled; the default is the published dataset.
        multi_turn_fraction: share of instruct conversations with 2 to `max_turns` QA turns instead of one.
        max_turns: most QA turns of a multi-turn conversation (2-16). Tasks are drawn in rounds
            (each feasible task once per round); a later colour, shape or existence question never
            names a colour or kind that an earlier colour, shape, existence or position turn (or a
            count answered 0) named, so none can be answered from the conversation instead of the
            image, and no question repeats (a scene with few such questions gets fewer turns).
            More turns give more supervised answers per image for little more compute: the 196
            image tokens are paid once per conversation, a turn costs about 20 text tokens.
        progress: show a tqdm progress bar.

    Returns:
        The path of each JSON file written, keyed by part.
    """
    check_int("n", n, minimum=1)
    check_int("seed", seed, minimum=0)
    if n >= MAX_INDEX:
        raise ValueError(f"n must be < 2**32, got {n}")
    if isinstance(parts, str) or not parts:
        raise ValueError(f"parts must be a non-empty sequence drawn from {_PARTS}, got {parts!r}")
    unknown = [p for p in parts if p not in _PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {_PARTS}")
    n_eval = min(n, DEFAULT_N_EVAL) if n_eval is None else n_eval
    if "eval" in parts:
        check_int("n_eval", n_eval, minimum=1)
        if n_eval >= MAX_INDEX:
            raise ValueError(f"n_eval must be < 2**32, got {n_eval}")
    if not 0.0 <= multi_turn_fraction <= 1.0:
        raise ValueError(f"multi_turn_fraction must be in [0, 1], got {multi_turn_fraction}")
    check_int("max_turns", max_turns, minimum=2)
    if max_turns > MAX_TURNS:
        raise ValueError(f"max_turns must be <= {MAX_TURNS}, got {max_turns}")

    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, list[dict[str, Any]]] = {part: [] for part in _PARTS if part in parts}

    jobs: list[tuple[str, int]] = []
    if "captions" in parts or "instruct" in parts:
        jobs += [("train", i) for i in range(n)]
    if "eval" in parts:
        jobs += [("eval", i) for i in range(n_eval)]
    if progress:
        from tqdm import tqdm  # imported only when asked: the library path needs no tqdm

        jobs_iter: Iterable[tuple[str, int]] = tqdm(jobs, desc="shapes", unit="img")
    else:
        jobs_iter = jobs

    for split, index in jobs_iter:
        scene = sample_scene(scene_seed(seed, split, index), config)
        stem = _image_stem(split, seed, index)
        with atomic_file(images_dir / f"{stem}.png", "wb") as handle:
            render(scene).save(handle, format="PNG")  # no metadata chunks: same pixels -> same bytes
        if split == "eval":
            records["eval"].extend(_eval_records(scene, stem, index))
            continue
        if "captions" in records:
            records["captions"].append(_caption_record(scene, stem))
        if "instruct" in records:
            records["instruct"].append(_instruct_record(scene, stem, multi_turn_fraction, max_turns))

    written = {}
    for part, part_records in records.items():
        path = out / f"{part}.json"
        atomic_write_json(path, part_records)
        written[part] = path
    return written
