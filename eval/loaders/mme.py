"""MME: two yes/no questions per image, per subtask, as released."""

from __future__ import annotations

from pathlib import Path

from eval.loaders.common import MME_URL, Question, missing_file
from eval.metrics.mme import read_mme_benchmark


def load_mme(data: Path, image_root: Path | None, need_images: bool = True) -> list[Question]:
    """MME's ``MME_Benchmark_release_version`` folder (read by :func:`eval.metrics.read_mme_benchmark`).

    Two yes/no questions per image, kept together as one group. Images are in the release
    folder (``<subtask>/images/`` or ``<subtask>/``); ``--image-root`` is not used. Scoring
    (``need_images=False``) works on the question files alone.
    """
    data = Path(data).resolve()
    if not data.is_dir():
        raise missing_file("MME benchmark folder", data, MME_URL, "Pass the MME_Benchmark_release_version folder.")
    result = []
    seen: dict[tuple[str, str], int] = {}
    for question in read_mme_benchmark(data, require_images=need_images):
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
