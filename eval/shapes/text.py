"""The text about a scene: its caption and its questions with short, exactly checkable answers."""

from __future__ import annotations

import random
from dataclasses import dataclass

from eval.shapes.scenes import Scene, Shape
from eval.shapes.vocabulary import (
    BACKGROUND_NAME,
    COLORS,
    IMAGE_SIZE,
    KINDS,
    NUMBER_WORDS,
    PLURALS,
    POSITION_PHRASES,
    TASKS,
)
from eval.wording import join_words


@dataclass(frozen=True)
class QA:
    """One question about a scene with its short, exactly checkable answer."""

    task: str
    """One of TASKS."""
    question: str
    """The question text, without the image tag."""
    answer: str
    """The reference answer, already in normalised form (see `normalize_shapes_answer`)."""


CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Give a short description of the image.",
    "What is shown in this image?",
    "Write a caption for this image.",
    "Summarize the picture in one sentence.",
    "Which shapes are in the image, and where are they?",
)

_CAPTION_TEMPLATES = (
    "{List}.",
    "The image shows {list}.",
    "{List}, on a " + BACKGROUND_NAME + " background.",
    "There {are_n}: {list}.",
)

_QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": (
        "What color is the {kind}?",
        "What is the color of the {kind}?",
        "Which color does the {kind} have?",
        "Tell me the color of the {kind}.",
    ),
    "shape": (
        "What shape is the {color} object?",
        "What is the shape of the {color} object?",
        "Which shape is {color}?",
        "What kind of shape is the {color} one?",
    ),
    "count_total": (
        "How many shapes are there?",
        "How many objects are in the image?",
        "Count the shapes in the image.",
    ),
    "count_color": (
        "How many {color} shapes are there?",
        "How many {color} objects are in the image?",
        "Count the {color} shapes.",
    ),
    "count_kind": (
        "How many {kinds} are there?",
        "How many {kinds} are in the image?",
        "Count the {kinds}.",
    ),
    "position": (
        "Where is the {color} {kind}?",
        "In which part of the image is the {color} {kind}?",
        "Where is the {color} {kind} located?",
    ),
    "existence": (
        "Is there {a_color} {kind}?",
        "Is there {a_color} {kind} in the image?",
        "Does the image contain {a_color} {kind}?",
        "Can you see {a_color} {kind}?",
    ),
    "comparison": (
        "Are there more {group1} than {group2}?",
        "Does the image have more {group1} than {group2}?",
        "Are {group1} more numerous than {group2}?",
    ),
}


def _with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def make_caption(scene: Scene, rng: random.Random) -> str:
    """One sentence naming every shape (size, colour, kind, position), in reading order.

    The phrasing is drawn from `rng`, so pass a generator seeded from the scene for reproducible
    text.
    """
    # Reading order (grid row, then column, then pixels) makes captions of similar scenes similar.
    ordered = sorted(
        scene.shapes, key=lambda s: (s.cy * 3 // IMAGE_SIZE, s.cx * 3 // IMAGE_SIZE, s.cy, s.cx)
    )
    parts = [
        f"{_with_article(s.size)} {s.color} {s.kind} {POSITION_PHRASES[s.position]}" for s in ordered
    ]
    listed = join_words(parts)
    n = len(ordered)
    are_n = "is one shape" if n == 1 else f"are {NUMBER_WORDS[n]} shapes"
    template = rng.choice(_CAPTION_TEMPLATES)
    return template.format(List=listed[0].upper() + listed[1:], list=listed, are_n=are_n)


def feasible_tasks(scene: Scene) -> tuple[str, ...]:
    """The tasks `make_qa` can ask about `scene`, in TASKS order.

    color needs a kind that occurs once, shape a colour that occurs once, position a
    (colour, kind) pair that occurs once; count, existence and comparison are always possible.
    """
    tasks = []
    for task in TASKS:
        if task == "color" and not _unique_values(scene, "kind"):
            continue
        if task == "shape" and not _unique_values(scene, "color"):
            continue
        if task == "position" and not _unique_pairs(scene):
            continue
        tasks.append(task)
    return tuple(tasks)


def _unique_values(scene: Scene, attribute: str) -> list[str]:
    values = [getattr(s, attribute) for s in scene.shapes]
    return [v for v in dict.fromkeys(values) if values.count(v) == 1]


def _unique_pairs(scene: Scene) -> list[Shape]:
    return [s for s in scene.shapes if scene.count(color=s.color, kind=s.kind) == 1]


def make_qa(scene: Scene, task: str, rng: random.Random, *, polarity: bool | None = None) -> QA | None:
    """Ask one `task` question about `scene`; None when the scene cannot support it.

    Args:
        scene: the scene the question is about.
        task: one of TASKS.
        rng: draws the subject and the phrasing.
        polarity: for the yes/no tasks (existence, comparison), force the answer to be "yes"
            (True) or "no" (False); None draws it 50/50. Ignored by the other tasks.
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    if task == "color":
        return _attribute_qa(scene, rng, task, known="kind", asked="color")
    if task == "shape":
        return _attribute_qa(scene, rng, task, known="color", asked="kind")
    if task == "count":
        return _count_qa(scene, rng)
    if task == "position":
        candidates = _unique_pairs(scene)
        if not candidates:
            return None
        s = rng.choice(candidates)
        question = rng.choice(_QUESTIONS["position"]).format(color=s.color, kind=s.kind)
        return QA(task, question, s.position)
    want_yes = rng.random() < 0.5 if polarity is None else polarity
    if task == "existence":
        return _existence_qa(scene, rng, want_yes)
    return _comparison_qa(scene, rng, want_yes)


def _attribute_qa(scene: Scene, rng: random.Random, task: str, known: str, asked: str) -> QA | None:
    """Ask for the `asked` attribute of the one shape whose `known` attribute is unique in the scene
    ("What color is the {kind}?" -> its colour); None when no `known` value is unique."""
    values = _unique_values(scene, known)
    if not values:
        return None
    value = rng.choice(values)
    answer = next(getattr(s, asked) for s in scene.shapes if getattr(s, known) == value)
    return QA(task, rng.choice(_QUESTIONS[task]).format(**{known: value}), answer)


def _count_qa(scene: Scene, rng: random.Random) -> QA:
    variant = rng.choice(("total", "color", "kind"))
    if variant == "total":
        return QA("count", rng.choice(_QUESTIONS["count_total"]), str(len(scene.shapes)))
    # Mostly ask about a value in the scene; sometimes about any value, so "0" is learned too.
    present = sorted({getattr(s, variant) for s in scene.shapes})
    everything = list(COLORS) if variant == "color" else list(KINDS)
    value = rng.choice(present if rng.random() < 0.8 else everything)
    if variant == "color":
        question = rng.choice(_QUESTIONS["count_color"]).format(color=value)
        return QA("count", question, str(scene.count(color=value)))
    question = rng.choice(_QUESTIONS["count_kind"]).format(kinds=PLURALS[value])
    return QA("count", question, str(scene.count(kind=value)))


def _existence_qa(scene: Scene, rng: random.Random, want_yes: bool) -> QA:
    present = sorted({(s.color, s.kind) for s in scene.shapes})
    if want_yes:
        color, kind = rng.choice(present)
    else:
        absent = [(c, k) for c in COLORS for k in KINDS if (c, k) not in present]
        # Half the negatives share a colour or a kind with a present shape, so "no" cannot be
        # answered from colour alone or from shape alone.
        near = [(c, k) for c, k in absent if any(c == pc or k == pk for pc, pk in present)]
        color, kind = rng.choice(near if near and rng.random() < 0.5 else absent)
    question = rng.choice(_QUESTIONS["existence"]).format(a_color=_with_article(color), kind=kind)
    return QA("existence", question, "yes" if want_yes else "no")


def _comparison_qa(scene: Scene, rng: random.Random, want_yes: bool) -> QA:
    # "Are there more A than B?" is yes exactly when count(A) > count(B); a tie is "no".
    # Groups are two colours or two kinds; at least one of them is in the scene, and for any
    # present value both orders exist, so either answer can always be produced.
    # The one case with no "yes" pair is every value present equally often (five shapes, one
    # of each kind): then the other attribute is used. Both cannot happen with <= 10 shapes.
    attributes = ["color", "kind"]
    rng.shuffle(attributes)
    for attribute in attributes:
        values = list(COLORS) if attribute == "color" else list(KINDS)
        counts = {v: scene.count(**{attribute: v}) for v in values}
        pairs = [
            (a, b)
            for a in values
            for b in values
            if a != b and (counts[a] or counts[b]) and (counts[a] > counts[b]) == want_yes
        ]
        if pairs:
            break
    assert pairs, f"scene {scene.seed}: no comparison with answer {'yes' if want_yes else 'no'}"
    first, second = rng.choice(pairs)
    if attribute == "color":
        group1, group2 = f"{first} shapes", f"{second} shapes"
    else:
        group1, group2 = PLURALS[first], PLURALS[second]
    question = rng.choice(_QUESTIONS["comparison"]).format(group1=group1, group2=group2)
    return QA("comparison", question, "yes" if want_yes else "no")
