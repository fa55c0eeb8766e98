"""GQA: open-ended questions on scene graphs (testdev balanced)."""

from __future__ import annotations

from pathlib import Path

from eval.loaders.common import GQA_URL, Question, find_image_root, read_json, require_fields


def load_gqa(data: Path, image_root: Path | None) -> list[Question]:
    """GQA's ``testdev_balanced_questions.json``: ``{qid: {"imageId", "question", "answer",
    "isBalanced", ...}}``.

    ``data``: the JSON file, or the folder holding it. Images: ``{imageId}.jpg`` in
    ``--image-root``, by default ``images/`` beside the file or one folder up.
    """
    data = Path(data).resolve()
    path = data / "testdev_balanced_questions.json" if data.is_dir() else data
    content = read_json(path, "GQA questions", GQA_URL)
    root = find_image_root(image_root, path.parent, "images")
    result = []
    for qid, record in content.items():
        require_fields(record, ("imageId", "question", "answer"), f"{path} question {qid}")
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
