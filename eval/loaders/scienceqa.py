"""ScienceQA: multiple choice, with or without an image."""

from __future__ import annotations

from pathlib import Path

from eval.loaders.common import SCIENCEQA_URL, Question, find_image_root, read_json, require_fields
from eval.metrics.scienceqa import OPTION_LETTERS as SCIENCEQA_LETTERS


def load_scienceqa(data: Path, image_root: Path | None) -> list[Question]:
    """ScienceQA's ``problems.json`` + ``pid_splits.json``: the whole test split, as LLaVA asks it
    (``llava_test_CQM-A.json``): the image questions with their image, the others as text; the
    scorer reports both the accuracy over all and over the image ones (ScienceQA-IMG).

    ``data``: the folder holding both files (``data/scienceqa`` of the ScienceQA repository).
    Images: ``{pid}/{image}`` in ``--image-root``, by default ``images/test`` beside them.
    """
    data = Path(data).resolve()
    folder = data if data.is_dir() else data.parent
    problems = read_json(folder / "problems.json", "ScienceQA problems", SCIENCEQA_URL)
    splits = read_json(folder / "pid_splits.json", "ScienceQA splits", SCIENCEQA_URL)
    if "test" not in splits:
        raise ValueError(f"{folder / 'pid_splits.json'}: no 'test' split; found {sorted(splits)}")
    root = find_image_root(image_root, folder, "images/test", "test")
    result = []
    for pid in splits["test"]:
        problem = problems.get(pid)
        if problem is None:
            raise ValueError(f"{folder / 'pid_splits.json'}: test pid {pid!r} is not in problems.json")
        require_fields(problem, ("question", "choices", "answer"), f"{folder / 'problems.json'} problem {pid}")
        letter = SCIENCEQA_LETTERS[problem["answer"]]
        image = problem.get("image")
        result.append(
            Question(
                id=str(pid),
                text=problem["question"],
                images=(root / str(pid) / image,) if image else (),
                reference=letter,
                meta={"choices": list(problem["choices"]), "hint": problem.get("hint") or "", "answer": problem["answer"],
                      "has_image": bool(image)},
            )
        )
    return result
