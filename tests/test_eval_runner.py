"""`vlm eval`: each benchmark's released layout read, prompted, answered, scored and reported.

Fixture files are written here in the released layouts (tiny images made with Pillow). The tiny
model answers random text, so the tests check the wiring and the arithmetic, not accuracy.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eval.runner as runner
from apps.cli import main as vlm_main
from eval import BENCHMARKS, get_benchmark, read_predictions, run_eval, score_predictions
from eval.loaders import COCO_URL, MMBENCH_URL, POPE_URL, VQAV2_URL
from eval.shapes import write_shapes_dataset
from tiny import build_tiny_vlm, make_image

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
TOKENS = 3  # keep the random replies short: the tests are about wiring


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, llama_dir) -> Path:
    """The one tiny VLM of this module, saved as a merged model folder."""
    model, processor = build_tiny_vlm(llama_dir)
    out = tmp_path_factory.mktemp("eval-model") / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image(seed, size=(48, 48)).save(path)  # the suffix picks the format (.jpg -> JPEG)
    return path


def _json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


# ------------------------------------------------------------------ released layouts, tiny


def write_vqav2(root: Path, prefix: str = "v2_", okvqa: bool = False) -> Path:
    stem = "OpenEnded_mscoco_val2014_questions.json"
    questions = [
        {"image_id": 42, "question": "What color is the box?", "question_id": 420},
        {"image_id": 42, "question": "How many boxes?", "question_id": 421},
        {"image_id": 7, "question": "Is it sunny?", "question_id": 70},
    ]
    annotations = [
        {"question_id": 420, "image_id": 42, "answer_type": "other", "answers": [{"answer": "red", "answer_confidence": "yes", "answer_id": i} for i in range(10)]},
        {"question_id": 421, "image_id": 42, "answer_type": "number", "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(["3"] * 3 + ["4"] * 7)]},
        {"question_id": 70, "image_id": 7, "answer_type": "yes/no", "answers": [{"answer": "yes", "answer_id": i} for i in range(10)]},
    ]
    _json(root / f"{'' if okvqa else prefix}{stem}", {"data_subtype": "val2014", "questions": questions})
    _json(root / f"{'' if okvqa else prefix}mscoco_val2014_annotations.json", {"annotations": annotations})
    for image_id in (42, 7):
        _image(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg", image_id)
    return root


def write_okvqa(root: Path) -> Path:
    return write_vqav2(root, okvqa=True)


def write_vizwiz(root: Path) -> Path:
    records = [
        {"image": f"VizWiz_val_{i:08d}.jpg", "question": q, "answer_type": "other", "answerable": 1,
         "answers": [{"answer": a, "answer_confidence": "yes"} for a in ["soup"] * 10]}
        for i, q in enumerate(["What is in this can?", "What is this?"])
    ]
    for i in range(2):
        _image(root / "val" / f"VizWiz_val_{i:08d}.jpg", i)
    return _json(root / "val.json", records)


def write_textvqa(root: Path) -> Path:
    data = [
        {"question": "what is written on the sign?", "image_id": "003a8ae2ef43b901", "question_id": 34602, "answers": ["stop"] * 10},
        {"question": "what brand is it?", "image_id": "0054c91397f2fe05", "question_id": 34603, "answers": ["nokia"] * 8 + ["Nokia"] * 2},
    ]
    for i, record in enumerate(data):
        _image(root / "train_images" / f"{record['image_id']}.jpg", i)
    return _json(root / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": data})


# POPE golden (tests/test_metrics_pope.py): random split TP 4, FP 1, TN 3, FN 2.
POPE_RANDOM_LABELS = ["yes"] * 4 + ["no"] + ["no"] * 3 + ["yes"] * 2
POPE_RANDOM_ANSWERS = ["Yes"] * 4 + ["Yes, there is."] + ["No"] * 3 + ["No, there is not."] * 2


def write_pope(root: Path) -> Path:
    splits = {
        "random": (POPE_RANDOM_LABELS, ["dog", "cat", "car", "tree", "cup", "bus", "kite", "sink", "bed", "clock"]),
        "adversarial": (["yes", "no"], ["zebra", "giraffe"]),
    }
    for split, (labels, objects) in splits.items():
        lines = [
            json.dumps({"question_id": i + 1, "image": f"COCO_val2014_{i % 3:012d}.jpg",
                        "text": f"Is there a {objects[i]} in the image?", "label": label})
            for i, label in enumerate(labels)
        ]
        (root / f"coco_pope_{split}.json").parent.mkdir(parents=True, exist_ok=True)
        (root / f"coco_pope_{split}.json").write_text("\n".join(lines) + "\n")
    for i in range(3):
        _image(root / "val2014" / f"COCO_val2014_{i:012d}.jpg", i)
    return root


def write_mme(root: Path) -> Path:
    release = root / "MME_Benchmark_release_version"
    # "existence": image and questions side by side; "artwork": images/ + questions_answers_YN/.
    _image(release / "existence" / "000000006040.jpg", 1)
    (release / "existence" / "000000006040.txt").write_text(
        "Is there a train in this image? Please answer yes or no.\tYes\n"
        "Is there a bed in this image? Please answer yes or no.\tNo\n"
    )
    _image(release / "artwork" / "images" / "10002.jpg", 2)
    (release / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (release / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is this artwork created by Giotto? Please answer yes or no.\tYes\n"
        "Is this artwork created by Monet? Please answer yes or no.\tNo\n"
    )
    return release


def write_scienceqa(root: Path) -> Path:
    problems = {
        "5": {"question": "Which material is this spatula made of?", "choices": ["rubber", "cotton"], "answer": 0,
              "hint": "Select the best answer.", "image": "image.png", "split": "test"},
        "6": {"question": "Which word does not rhyme?", "choices": ["bike", "hike", "fish"], "answer": 2,
              "hint": "", "image": None, "split": "test"},  # text only: not in ScienceQA-IMG
        "7": {"question": "Which animal's feet are adapted for digging?", "choices": ["mole", "duck", "eagle"], "answer": 0,
              "hint": "", "image": "image.png", "split": "test"},
        "1": {"question": "A training question?", "choices": ["a", "b"], "answer": 1, "hint": "", "image": "image.png", "split": "train"},
    }
    _json(root / "problems.json", problems)
    _json(root / "pid_splits.json", {"train": ["1"], "val": [], "test": ["5", "6", "7"]})
    for pid in ("5", "7"):
        _image(root / "images" / "test" / pid / "image.png", int(pid))
    return root


def _png_base64(seed: int) -> str:
    buffer = io.BytesIO()
    make_image(seed, size=(48, 48)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


MMBENCH_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category", "comment", "split"]


def write_mmbench(root: Path) -> Path:
    rows = [
        ["0", "What animal is this?", "", "cat", "dog", "bird", "fish", "B", "image_scene", _png_base64(0), "src", "coarse_perception", "", "dev"],
        ["1", "Is the box red?", "Look at the box.", "yes", "no", "", "", "A", "attribute_recognition", _png_base64(1), "src", "fine_perception", "", "dev"],
        # a circular copy as VLMEvalKit's TSVs carry them (index + 1e6, image by reference): skipped
        ["1000000", "What animal is this?", "", "dog", "bird", "fish", "cat", "A", "image_scene", "0", "src", "coarse_perception", "", "dev"],
    ]
    path = root / "mmbench_dev_20230712.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(row) for row in [MMBENCH_HEADER, *rows]) + "\n")
    return path


def write_gqa(root: Path) -> Path:
    questions = {
        "20968379": {"imageId": "n288870", "question": "Is the sky blue?", "answer": "yes", "isBalanced": True},
        "20968380": {"imageId": "n288870", "question": "What is on the table?", "answer": "cup", "isBalanced": True},
    }
    _image(root / "images" / "n288870.jpg", 3)
    return _json(root / "testdev_balanced_questions.json", questions)


def write_coco_caption(root: Path) -> Path:
    images = [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg"}, {"id": 522418, "file_name": "COCO_val2014_000000522418.jpg"}]
    annotations = [
        {"image_id": 391895, "id": 1, "caption": "A man riding a bike down a dirt road."},
        {"image_id": 391895, "id": 2, "caption": "A person on a bicycle on a path."},
        {"image_id": 522418, "id": 3, "caption": "A woman cutting a cake."},
    ]
    for i, image in enumerate(images):
        _image(root / "val2014" / image["file_name"], i)
    return _json(root / "annotations" / "captions_val2014.json", {"images": images, "annotations": annotations})


def write_shapes(root: Path) -> Path:
    return write_shapes_dataset(root, n=1, n_eval=2, parts=("eval",))["eval"]


# name -> (writer, number of prompts, metric keys that must be there)
FORMATS = {
    "vqav2": (write_vqav2, 3, {"overall", "per_answer_type", "num_questions"}),
    "okvqa": (write_okvqa, 3, {"overall", "per_answer_type"}),
    "vizwiz": (write_vizwiz, 2, {"overall"}),
    "textvqa": (write_textvqa, 2, {"overall"}),
    "pope": (write_pope, 12, {"random", "adversarial", "mean"}),
    "mme": (write_mme, 4, {"perception", "cognition", "subtasks", "unpaired_questions_skipped"}),
    "scienceqa": (write_scienceqa, 3, {"accuracy", "image_accuracy", "num_failed"}),
    "mmbench": (write_mmbench, 6, {"overall", "per_category", "per_l2_category", "num_questions"}),
    "gqa": (write_gqa, 2, {"accuracy", "num_correct"}),
    "coco_caption": (write_coco_caption, 2, {"bleu_4", "cider", "num_images"}),
    "shapes": (write_shapes, None, {"accuracy", "per_task"}),
}


def test_every_benchmark_but_nlvr_has_a_fixture():
    assert set(BENCHMARKS) == set(FORMATS) | {"nlvr"}


@pytest.mark.parametrize("name", list(FORMATS))
def test_end_to_end_on_each_released_format(name, model_dir, tmp_path):
    writer, num_prompts, metric_keys = FORMATS[name]
    data = writer(tmp_path / "data")
    if num_prompts is None:  # shapes: as many questions as eval.json holds
        num_prompts = len(json.loads(Path(data).read_text()))
    result = run_eval(model_dir, name, data, tmp_path / "out", max_new_tokens=TOKENS, progress=False)

    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == num_prompts == result.num_generated
    assert all(set(r) == {"id", "prompt", "answer", "reference"} for r in records)
    text_only = {"6"} if name == "scienceqa" else set()  # ScienceQA's text questions are asked without an image
    assert all(r["prompt"].startswith("<image>\n") != (r["id"] in text_only) and isinstance(r["answer"], str) for r in records)
    assert len({r["id"] for r in records}) == num_prompts

    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary == result.summary
    assert summary["benchmark"] == name and summary["model"] == str(model_dir.resolve())
    assert summary["num_questions"] == summary["num_answered"] == summary["num_total"] == num_prompts
    assert summary["max_new_tokens"] == TOKENS
    assert metric_keys <= set(summary["metrics"])

    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith(f"# {name} evaluation")
    assert str(model_dir.resolve()) in report and f"| questions | {num_prompts} answered of {num_prompts} |" in report
    assert "| metric | value |" in report


# --------------------------------------------------------------------------- prompts, exactly


def _prompts(name: str, data: Path) -> dict[str, str]:
    bench = get_benchmark(name)
    return {q.id: bench.prompt(q) for q in bench.load_questions(data)}


def test_prompts_are_the_benchmarks_own(tmp_path):
    pope = _prompts("pope", write_pope(tmp_path / "pope"))
    assert pope["random-1"] == f"<image>\nIs there a dog in the image?\n{SHORT}"
    assert list(pope)[:2] == ["random-1", "random-2"] and list(pope)[-1] == "adversarial-2"

    vqa = _prompts("vqav2", write_vqav2(tmp_path / "vqa"))
    assert vqa["420"] == f"<image>\nWhat color is the box?\n{SHORT}"

    vizwiz = _prompts("vizwiz", write_vizwiz(tmp_path / "vizwiz"))
    assert vizwiz["VizWiz_val_00000000"] == (
        "<image>\nWhat is in this can?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT
    )

    mme = _prompts("mme", write_mme(tmp_path / "mme"))
    assert mme["existence/000000006040.jpg/0"] == "<image>\nIs there a train in this image? Please answer yes or no."

    sqa = _prompts("scienceqa", write_scienceqa(tmp_path / "sqa"))
    assert list(sqa) == ["5", "6", "7"]  # the whole test split, as LLaVA asks it
    assert sqa["6"] == "Which word does not rhyme?\nA. bike\nB. hike\nC. fish\n" + LETTER  # no image, no mark
    assert sqa["5"] == (
        "<image>\nContext: Select the best answer.\nWhich material is this spatula made of?\nA. rubber\nB. cotton\n" + LETTER
    )

    mmbench = _prompts("mmbench", write_mmbench(tmp_path / "mmb"))
    assert list(mmbench) == ["0-r0", "0-r1", "0-r2", "0-r3", "1-r0", "1-r1"]
    assert mmbench["0-r1"] == f"<image>\nWhat animal is this?\nA. dog\nB. bird\nC. fish\nD. cat\n{LETTER}"
    assert mmbench["1-r0"] == f"<image>\nLook at the box.\nIs the box red?\nA. yes\nB. no\n{LETTER}"

    caption = _prompts("coco_caption", write_coco_caption(tmp_path / "coco"))
    assert caption == {q: "<image>\nProvide a one-sentence caption for the provided image." for q in ("391895", "522418")}


def test_loaders_keep_the_released_references(tmp_path):
    questions = get_benchmark("mmbench").load_questions(write_mmbench(tmp_path / "mmb"))
    # "dog" (B) moves to A, D, C as the options rotate; the 2-option question is asked twice.
    assert [q.reference for q in questions] == ["B", "A", "D", "C", "A", "B"]
    assert questions[0].images[0].to_bytes().startswith(b"\x89PNG")
    vqa = get_benchmark("vqav2").load_questions(write_vqav2(tmp_path / "vqa"))
    assert vqa[1].reference == ["3"] * 3 + ["4"] * 7 and vqa[1].meta["answer_type"] == "number"
    assert vqa[2].images[0] == (tmp_path / "vqa" / "val2014" / "COCO_val2014_000000000007.jpg").resolve()


# ------------------------------------------------------------------------------------ resume


@pytest.fixture
def count_generate(monkeypatch):
    """Record the prompts of every generate call the runner makes."""
    calls: list[list[str]] = []
    real = runner.generate_answers

    def counting(model, processor, prompts, images, max_new_tokens, *rest):
        calls.append(list(prompts))
        return real(model, processor, prompts, images, max_new_tokens, *rest)

    monkeypatch.setattr(runner, "generate_answers", counting)
    return calls


def test_resume_asks_only_what_is_missing(model_dir, tmp_path, count_generate):
    data = write_pope(tmp_path / "pope")
    out = tmp_path / "out"
    first = run_eval(model_dir, "pope", data, out, limit=2, batch_size=4, max_new_tokens=TOKENS, progress=False)
    assert first.num_generated == 2 and len(count_generate) == 1
    assert first.summary["num_questions"] == 2 and first.summary["num_total"] == 12
    assert "--limit 2; 12 in the benchmark" in (out / "report.md").read_text()
    first_lines = (out / "predictions.jsonl").read_text().splitlines()

    count_generate.clear()
    second = run_eval(model_dir, "pope", data, out, batch_size=4, max_new_tokens=TOKENS, progress=False)
    assert second.num_generated == 10
    assert [len(call) for call in count_generate] == [4, 4, 2]
    asked = [prompt for call in count_generate for prompt in call]
    assert not any("Is there a dog in the image?" in p or "Is there a cat in the image?" in p for p in asked)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert lines[:2] == first_lines  # earlier answers kept, in place
    assert [json.loads(line)["id"] for line in lines] == [f"random-{i}" for i in range(1, 11)] + ["adversarial-1", "adversarial-2"]

    count_generate.clear()
    third = run_eval(model_dir, "pope", data, out, max_new_tokens=TOKENS, progress=False)
    assert third.num_generated == 0 and count_generate == []  # all answered: no model call at all
    assert third.metrics == second.metrics


def test_a_torn_last_line_is_asked_again(model_dir, tmp_path, count_generate):
    data = write_gqa(tmp_path / "gqa")
    out = tmp_path / "out"
    run_eval(model_dir, "gqa", data, out, max_new_tokens=TOKENS, progress=False)
    path = out / "predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # a crash in the middle of the 2nd write
    assert list(read_predictions(path)) == ["20968379"]

    count_generate.clear()
    result = run_eval(model_dir, "gqa", data, out, max_new_tokens=TOKENS, progress=False)
    assert result.num_generated == 1 and len(count_generate) == 1
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["20968379", "20968380"]


def test_an_output_folder_of_another_evaluation_is_refused(model_dir, tmp_path):
    data = write_gqa(tmp_path / "gqa")
    out = tmp_path / "out"
    run_eval(model_dir, "gqa", data, out, max_new_tokens=TOKENS, progress=False)
    with pytest.raises(ValueError, match="not in pope"):
        run_eval(model_dir, "pope", write_pope(tmp_path / "pope"), out, max_new_tokens=TOKENS, progress=False)
    path = out / "predictions.jsonl"
    path.write_text(path.read_text().replace("Is the sky blue?", "Is the sky green?"))
    with pytest.raises(ValueError, match="another prompt"):
        run_eval(model_dir, "gqa", data, out, max_new_tokens=TOKENS, progress=False)


@pytest.fixture
def record_generate(monkeypatch):
    """Record the prompts and images of every generate call the runner makes."""
    calls: list[tuple[list[str], list[list]]] = []
    real = runner.generate_answers

    def recording(model, processor, prompts, images, max_new_tokens, *rest):
        calls.append((list(prompts), [list(row) for row in images]))
        return real(model, processor, prompts, images, max_new_tokens, *rest)

    monkeypatch.setattr(runner, "generate_answers", recording)
    return calls


def test_image_ablations_blank_and_none(model_dir, tmp_path, record_generate):
    write_shapes_dataset(tmp_path / "shapes", 1, n_eval=2)
    data = tmp_path / "shapes"
    given = run_eval(model_dir, "shapes", data, tmp_path / "given", max_new_tokens=TOKENS, progress=False)
    blank = run_eval(model_dir, "shapes", data, tmp_path / "blank", max_new_tokens=TOKENS, progress=False, images="blank")
    none = run_eval(model_dir, "shapes", data, tmp_path / "none", max_new_tokens=TOKENS, progress=False, images="none")
    assert [r.summary["images"] for r in (given, blank, none)] == ["given", "blank", "none"]
    (given_prompts, given_images), (blank_prompts, blank_images), (none_prompts, none_images) = record_generate
    assert blank_prompts == given_prompts and all(p.startswith("<image>\n") for p in given_prompts)
    assert none_prompts == [p.removeprefix("<image>\n") for p in given_prompts]
    assert all(len(row) == 1 for row in given_images) and none_images == [[] for _ in given_images]
    for real_row, blank_row in zip(given_images, blank_images, strict=True):
        assert blank_row[0].size == real_row[0].size and blank_row[0].getextrema() == ((0, 0),) * 3
        assert real_row[0].getextrema() != ((0, 0),) * 3  # the real scenes have coloured shapes
    none_records = read_predictions(tmp_path / "none" / "predictions.jsonl")
    assert all(r["images"] == "none" and "<image>" not in r["prompt"] for r in none_records.values())
    # A folder of one mode is not resumed in another: the answers would mix two experiments.
    with pytest.raises(ValueError, match="images=blank, this run has images=given"):
        run_eval(model_dir, "shapes", data, tmp_path / "blank", max_new_tokens=TOKENS, progress=False)
    with pytest.raises(ValueError, match="images must be one of"):
        run_eval(model_dir, "shapes", data, tmp_path / "x", images="grey", progress=False)
    default = run_eval(model_dir, "shapes", data, images="none", max_new_tokens=TOKENS, progress=False)
    assert default.output_dir == model_dir / "eval" / "shapes-shapes-none-images"
    shutil.rmtree(default.output_dir)


def test_batching_does_not_change_the_answers(model_dir, tmp_path):
    data = write_mmbench(tmp_path / "mmb")  # prompts of different lengths: left padding matters
    # fp32 whatever the CPU: bf16 rounding (the default on AMX CPUs) does not promise equal greedy tokens across batch shapes.
    one = run_eval(model_dir, "mmbench", data, tmp_path / "b1", batch_size=1, max_new_tokens=6, progress=False, dtype="float32")
    four = run_eval(model_dir, "mmbench", data, tmp_path / "b4", batch_size=4, max_new_tokens=6, progress=False, dtype="float32")
    answers = [read_predictions(result.output_dir / "predictions.jsonl") for result in (one, four)]
    assert {k: r["answer"] for k, r in answers[0].items()} == {k: r["answer"] for k, r in answers[1].items()}


@pytest.mark.parametrize("images", ["given", "blank", "none"])
def test_sharing_each_images_prefix_gives_the_plain_answers_with_one_tower_run_per_image(qwen2_dir, tmp_path, images):
    """Several questions per image (the shapes data): the same answers with the prefix shared and without."""
    model, processor = build_tiny_vlm(qwen2_dir)  # its answers depend on the prompt and the image; fp32
    data = write_shapes(tmp_path / "shapes")
    encoded = []
    model.vision_tower.register_forward_hook(lambda module, args, output: encoded.append(args[0].shape[0]))
    results = {}
    for share in (False, True):
        encoded.clear()
        result = run_eval((model, processor), "shapes", data, tmp_path / f"share-{share}", batch_size=8, max_new_tokens=6,
                          images=images, progress=False, share_prefix=share)
        results[share] = ({k: r["answer"] for k, r in read_predictions(result.output_dir / "predictions.jsonl").items()},
                          sum(encoded))
    questions = json.loads(Path(data).read_text())
    assert len(questions) > len({q["image"] for q in questions}), "the data asks several questions per image"
    assert results[True][0] == results[False][0]
    if images == "given":
        assert results[False][1] == len(questions)
        assert results[True][1] < len(questions), "an image asked about twice in a batch is encoded once"
    if images == "none":
        assert results[True][1] == results[False][1] == 0


def test_limit_keeps_whole_groups_and_a_run_folder_works(model_dir, tmp_path):
    run_folder = tmp_path / "run"
    shutil.copytree(model_dir, run_folder / "model")  # a training run's final model
    data = write_mmbench(tmp_path / "mmb")
    result = run_eval(run_folder, "mmbench", data, limit=1, progress=False)
    assert result.output_dir == run_folder / "eval" / "mmbench-mmbench_dev_20230712"
    ids = list(read_predictions(result.output_dir / "predictions.jsonl"))
    assert ids == ["0-r0", "0-r1", "0-r2", "0-r3"]  # one question = its four rotations
    assert result.metrics["num_questions"] == 1 and result.metrics["incomplete_rotations_skipped"] == 0
    assert result.summary["max_new_tokens"] == get_benchmark("mmbench").max_new_tokens


# --------------------------------------------------------------------------- scoring alone


def _predictions(path: Path, answers: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": k, "answer": v}) + "\n" for k, v in answers.items()))
    return path


def test_score_pope_known_confusion_matrix(tmp_path):
    data = write_pope(tmp_path / "pope")
    answers = {f"random-{i + 1}": a for i, a in enumerate(POPE_RANDOM_ANSWERS)}
    answers.update({"adversarial-1": "Yes", "adversarial-2": "No"})
    result = score_predictions(_predictions(tmp_path / "p.jsonl", answers), "pope", data, tmp_path / "scored")
    random = result.metrics["random"]
    assert (random["true_positives"], random["false_positives"], random["true_negatives"], random["false_negatives"]) == (4, 1, 3, 2)
    assert random["accuracy"] == pytest.approx(70.0)
    assert random["precision"] == pytest.approx(80.0)
    assert random["recall"] == pytest.approx(200 / 3)
    assert random["f1"] == pytest.approx(800 / 11)
    assert random["yes_ratio"] == pytest.approx(50.0)
    assert result.metrics["adversarial"]["accuracy"] == pytest.approx(100.0)
    assert result.metrics["mean"]["f1"] == pytest.approx((800 / 11 + 100) / 2)
    saved = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert saved["model"] is None and saved["num_answered"] == 12
    assert "| random/f1 | 72.73 |" in (tmp_path / "scored" / "report.md").read_text()


def test_score_vqa_mmbench_and_partial_files(tmp_path):
    vqa = write_vqav2(tmp_path / "vqa")
    # 3 of 10 humans said "3": min(1, 2/3) for the 3 left-out rounds, 1 for the 7 others -> 0.9
    result = score_predictions(_predictions(tmp_path / "v.jsonl", {"420": "Red", "421": "three", "70": "yes"}), "vqav2", vqa)
    assert result.metrics["overall"] == pytest.approx(100 * (0 + 0.9 + 1) / 3)  # "Red" != ten identical "red"
    assert result.metrics["per_answer_type"] == pytest.approx({"other": 0.0, "number": 90.0, "yes/no": 100.0})
    assert result.output_dir == tmp_path

    mmb = write_mmbench(tmp_path / "mmb")
    right = {"0-r0": "B", "0-r1": "A", "0-r2": "D", "0-r3": "C", "1-r0": "A", "1-r1": "A"}  # 1-r1 should be B
    result = score_predictions(_predictions(tmp_path / "m.jsonl", right), "mmbench", mmb, tmp_path / "m")
    assert result.metrics["overall"] == pytest.approx(50.0)
    assert result.metrics["per_category"] == {"attribute_recognition": 0.0, "image_scene": 100.0}
    del right["1-r1"]  # a partial file: question 1 cannot be scored circularly
    result = score_predictions(_predictions(tmp_path / "m2.jsonl", right), "mmbench", mmb, tmp_path / "m2")
    assert result.metrics["overall"] == pytest.approx(100.0) and result.metrics["incomplete_rotations_skipped"] == 1
    assert result.summary["num_answered"] == 5 and result.summary["num_questions"] == 6

    no_final_newline = tmp_path / "n.jsonl"
    no_final_newline.write_text(json.dumps({"id": "0-r0", "answer": "B"}) + "\n" + json.dumps({"id": "0-r1", "answer": "A"}))
    assert list(read_predictions(no_final_newline)) == ["0-r0", "0-r1"]  # complete, only the newline is missing

    with pytest.raises(ValueError, match="not in mmbench"):
        score_predictions(_predictions(tmp_path / "x.jsonl", {"0-r9": "A"}), "mmbench", mmb, tmp_path / "x")


# ------------------------------------------------------------------------ missing files


def test_missing_data_names_the_file_and_the_publisher(tmp_path):
    with pytest.raises(FileNotFoundError, match="coco_pope_random.json") as err:
        get_benchmark("pope").load_questions(tmp_path)
    assert POPE_URL in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        get_benchmark("mmbench").load_questions(tmp_path / "mmbench_dev_20230712.tsv")
    assert "mmbench_dev_20230712.tsv" in str(err.value) and MMBENCH_URL in str(err.value)
    data = write_vqav2(tmp_path / "vqa")
    (data / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(FileNotFoundError, match="annotations") as err:
        get_benchmark("vqav2").load_questions(data / "v2_OpenEnded_mscoco_val2014_questions.json")
    assert "v2_mscoco_val2014_annotations.json" in str(err.value) and VQAV2_URL in str(err.value)
    with pytest.raises(FileNotFoundError, match="captions_val2014.json") as err:
        get_benchmark("coco_caption").load_questions(tmp_path / "captions_val2014.json")
    assert COCO_URL in str(err.value)


def test_missing_images_fail_before_the_model_is_loaded(tmp_path):
    data = write_pope(tmp_path / "pope")
    missing = data / "val2014" / "COCO_val2014_000000000001.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError) as err:  # the model folder does not even exist
        run_eval(tmp_path / "no-model", "pope", data, tmp_path / "out", progress=False)
    message = str(err.value)
    assert str(missing) in message and "1 of 3 image files are missing" in message
    assert "(question random-2)" in message
    assert "--image-root" in message and POPE_URL in message
    with pytest.raises(ValueError, match="drop --image-root"):
        get_benchmark("mme").load_questions(write_mme(tmp_path / "mme"), image_root=tmp_path)


def test_cli_reports_a_missing_file_as_an_error(tmp_path, capsys):
    code = vlm_main(["eval", "--score", str(tmp_path / "none.jsonl"), "--benchmark", "gqa", "--data", str(tmp_path)])
    assert code == 2 and "none.jsonl" in capsys.readouterr().err


# ------------------------------------------------------------------------- NLVR, real data

_REPO = Path(__file__).resolve().parents[1]
NLVR_DEV = next(
    (p for p in (_REPO.parent / "shared" / "data" / "nlvr1" / "dev", _REPO / "shared" / "data" / "nlvr1" / "dev") if p.is_dir()),
    _REPO.parent / "shared" / "data" / "nlvr1" / "dev",
)


def test_nlvr_on_real_dev_examples(model_dir, tmp_path):
    # dev.json line 1: identifier "1572-0", label true, six renderings.
    result = run_eval(model_dir, "nlvr", NLVR_DEV, tmp_path / "out", limit=7, max_new_tokens=TOKENS, progress=False)
    records = list(read_predictions(tmp_path / "out" / "predictions.jsonl").values())
    assert [r["id"] for r in records[:6]] == [f"dev-1572-0-{k}" for k in range(6)]
    assert records[0]["prompt"] == (
        "<image>\nIs the following statement true or false about the image? "
        "Each grey box contains atleast one yellow object touching the edge\nAnswer with a single word: true or false."
    )
    assert records[0]["reference"] == "true"
    metrics = result.metrics
    assert metrics["num_images"] == 7 and metrics["num_sentences"] == 2
    assert metrics["num_correct"] + metrics["num_unparseable"] <= 7

    # The metric step on hand-written answers: all six renderings of 1572-0 right -> consistent;
    # the 7th image (sentence 2) answered with nothing parseable -> wrong, its sentence inconsistent.
    answers = {r["id"]: "true" for r in records[:6]} | {records[6]["id"]: "maybe"}
    scored = score_predictions(_predictions(tmp_path / "p.jsonl", answers), "nlvr", NLVR_DEV, tmp_path / "s")
    assert scored.metrics["accuracy"] == pytest.approx(600 / 7)
    assert scored.metrics["consistency"] == pytest.approx(50.0)
    assert scored.metrics["num_unparseable"] == 1
    assert scored.summary["num_answered"] == 7 and scored.summary["num_total"] == 6 * 989


# ------------------------------------------------------------------------------ the command


def test_cli_smoke(model_dir, tmp_path):
    data = write_shapes(tmp_path / "shapes")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "apps", "eval", "--model", str(model_dir), "--benchmark", "shapes", "--data", str(data),
         "--output", str(out), "--limit", "2", "--batch-size", "2", "--max-new-tokens", "3"],
        capture_output=True, text=True, timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# shapes evaluation") and "accuracy" in result.stdout
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "metrics.json").read_text())["num_answered"] == 2
    # the metric step alone, in-process, on the file the command wrote
    assert vlm_main(["eval", "--score", str(out / "predictions.jsonl"), "--benchmark", "shapes", "--data", str(data),
                     "--output", str(tmp_path / "rescored")]) == 0
    rescored = json.loads((tmp_path / "rescored" / "metrics.json").read_text())
    assert rescored["metrics"] == json.loads((out / "metrics.json").read_text())["metrics"]


# ---------------------------------------------------- official and LLaVA result files, as they are


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _without_images(root: Path) -> None:
    for image in [*root.rglob("*.jpg"), *root.rglob("*.png")]:
        image.unlink()


def test_official_vqa_results_list_scores_like_our_file(tmp_path):
    vqa = write_vqav2(tmp_path / "vqa")
    _without_images(vqa)  # scoring reads no pixels
    ours = score_predictions(_predictions(tmp_path / "v.jsonl", {"420": "red", "421": "three", "70": "no"}), "vqav2", vqa,
                             tmp_path / "ours")
    results = _json(tmp_path / "results.json", [{"question_id": 420, "answer": "red"}, {"question_id": 421, "answer": "three"},
                                                 {"question_id": 70, "answer": "no"}])  # convert_vqav2_for_submission.py
    official = score_predictions(results, "vqav2", vqa, tmp_path / "official")
    assert official.summary["format"] == "json" and official.metrics == ours.metrics
    assert official.metrics["overall"] == pytest.approx(100 * (1 + 0.9 + 0) / 3)


def test_llava_textvqa_answers_are_matched_by_image_and_question(tmp_path):
    data = write_textvqa(tmp_path / "textvqa")
    _without_images(data.parent)
    # llava/eval/model_vqa_loader.py output on llava_textvqa_val_v051_ocr.jsonl: question_id is the image id
    answers = _jsonl(tmp_path / "llava.jsonl", [
        {"question_id": "003a8ae2ef43b901", "prompt": f"What is written on the sign?\nReference OCR token: STOP\n{SHORT}",
         "text": "stop", "answer_id": "x", "model_id": "m", "metadata": {}},
        {"question_id": "0054c91397f2fe05", "prompt": f"what brand is it?\n{SHORT}", "text": "Samsung"},
    ])
    result = score_predictions(answers, "textvqa", data, tmp_path / "s")
    assert result.summary["num_answered"] == 2 and result.metrics["overall"] == pytest.approx(50.0)


def test_llava_pope_question_and_answer_files(tmp_path):
    coco = write_pope(tmp_path / "pope" / "coco")
    # llava_pope_test.jsonl: the splits' questions renumbered across them, with their category
    lines = [json.loads(line) for split in ("random", "adversarial") for line in (coco / f"coco_pope_{split}.json").read_text().splitlines()]
    splits = ["random"] * 10 + ["adversarial"] * 2
    questions = _jsonl(tmp_path / "pope" / "llava_pope_test.jsonl", [
        {"question_id": n, "image": r["image"], "text": r["text"] + "\n" + SHORT, "category": split}
        for n, (r, split) in enumerate(zip(lines, splits, strict=True), start=1)
    ])
    _without_images(tmp_path / "pope")
    answers = _jsonl(tmp_path / "answers.jsonl", [
        {"question_id": n, "prompt": "", "text": text}
        for n, text in enumerate(POPE_RANDOM_ANSWERS + ["Yes", "No"], start=1)
    ])
    result = score_predictions(answers, "pope", questions, tmp_path / "s")
    random = result.metrics["random"]
    assert (random["true_positives"], random["false_positives"], random["true_negatives"], random["false_negatives"]) == (4, 1, 3, 2)
    assert result.metrics["adversarial"]["accuracy"] == pytest.approx(100.0)
    assert get_benchmark("pope").prompt(get_benchmark("pope").load_questions(questions)[0]) == \
        f"<image>\nIs there a dog in the image?\n{SHORT}"  # the instruction is not asked twice


def test_llava_scienceqa_answers_score_all_and_img(tmp_path):
    data = write_scienceqa(tmp_path / "sqa")
    _without_images(data)
    # llava/eval/model_vqa_science.py output on llava_test_CQM-A.json: every test problem, image or not
    answers = _jsonl(tmp_path / "sqa.jsonl", [
        {"question_id": "5", "prompt": "<image>\n...", "text": "A"},
        {"question_id": "6", "prompt": "...", "text": "C"},
        {"question_id": "7", "prompt": "<image>\n...", "text": "The answer is B."},
    ])
    result = score_predictions(answers, "scienceqa", data, tmp_path / "s")
    assert result.metrics["accuracy"] == pytest.approx(200 / 3)  # 5 and 6 right
    assert result.metrics["image_accuracy"] == pytest.approx(50.0)  # IMG: 5 right, 7 wrong
    assert result.metrics["num_image_questions"] == 2


def test_mme_eval_tool_results_folder_needs_no_data_and_no_images(tmp_path, capsys):
    results = tmp_path / "Your_Results"
    results.mkdir()
    (results / "existence.txt").write_text(
        "000000006040.jpg\tIs there a train in this image? Please answer yes or no.\tYes\tYes\n"
        "000000006040.jpg\tIs there a bed in this image? Please answer yes or no.\tNo\tYes\n"
    )
    (results / "artwork.txt").write_text(
        "10002.jpg\tIs this artwork created by Giotto? Please answer yes or no.\tYes\tyes\n"
        "10002.jpg\tIs this artwork created by Monet? Please answer yes or no.\tNo\tno\n"
    )
    assert vlm_main(["eval", "--score", str(results), "--benchmark", "mme", "--output", str(tmp_path / "s")]) == 0
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())["metrics"]
    assert metrics["subtasks"]["artwork"]["score"] == pytest.approx(200.0)  # acc 100 + acc+ 100
    assert metrics["subtasks"]["existence"]["score"] == pytest.approx(50.0)  # acc 50 + acc+ 0
    assert metrics["perception"] == pytest.approx(250.0)
    capsys.readouterr()
    (results / "OCR.txt").write_text("1.jpg\tWhat?\tYes\n")  # no prediction column
    assert vlm_main(["eval", "--score", str(results), "--benchmark", "mme", "--output", str(tmp_path / "t")]) == 2
    assert f"{results / 'OCR.txt'}: 1 lines have no prediction" in capsys.readouterr().err


def test_mme_predictions_score_without_the_images(tmp_path):
    release = write_mme(tmp_path / "mme")
    answers = {"existence/000000006040.jpg/0": "Yes", "existence/000000006040.jpg/1": "No",
               "artwork/10002.jpg/0": "Yes", "artwork/10002.jpg/1": "Yes"}
    with_images = score_predictions(_predictions(tmp_path / "p.jsonl", answers), "mme", release, tmp_path / "a")
    _without_images(release)
    without = score_predictions(tmp_path / "p.jsonl", "mme", release, tmp_path / "b")
    assert without.metrics == with_images.metrics and without.summary["num_answered"] == 4


def test_nlvr_official_exact_label_and_lenient_figure(tmp_path):
    split = tmp_path / "dev"
    (split / "images" / "0").mkdir(parents=True)
    boxes = [[{"y_loc": 1, "type": "circle", "color": "Yellow", "x_loc": 1, "size": 10}]] * 3
    records = [{"sentence": f"sentence {n}", "label": label, "identifier": f"{n}-0", "directory": "0", "structured_rep": boxes}
               for n, label in ((1, "true"), (2, "false"))]
    (split / "dev.json").write_text("\n".join(json.dumps(r) for r in records))  # no PNGs: scoring reads none
    # metrics_images.py's CSV: sentence 1 all right (one "TRUE": the script lowercases); sentence 2: "false."
    # and " false" are wrong for the official script, right for our lenient parse
    lines = [f"dev-1-0-{k}.png,{'TRUE' if k == 0 else 'true'}" for k in range(6)]
    lines += [f"dev-2-0-{k}.png,{'false.' if k == 0 else ' false' if k == 1 else 'false'}" for k in range(6)]
    csv = tmp_path / "predictions.csv"
    csv.write_text("\n".join(lines) + "\n")
    result = score_predictions(csv, "nlvr", split, tmp_path / "s")
    assert result.summary["format"] == "csv"
    assert result.metrics["accuracy"] == pytest.approx(1000 / 12) and result.metrics["consistency"] == pytest.approx(50.0)
    assert result.metrics["num_unparseable"] == 2
    assert result.metrics["lenient"] == {"accuracy": 100.0, "consistency": 100.0, "unparseable": 0.0}


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe not text", "not UTF-8 text"),
    (b"[1, 2]", "item 0: expected a JSON object"),
    (b"[{\"question_id\": 420}]", "item 0: needs a string 'answer'"),
    (b"{\"id\": 420, \"answer\": \"red\"}\n{oops\n", "line 2: not valid JSON"),
    (b"{\"id\": [1], \"answer\": \"red\"}\n", "line 1: needs an 'id'"),
    (b"{\"id\": 420, \"answer\": 3}\n", "line 1: needs a string 'answer'"),
    (b"[{\"question_id\": 420, \"answer\": \"a\"}, {\"question_id\": 420, \"answer\": \"b\"}]", "'420' is answered twice"),
    (b"{\"id\": 999, \"answer\": \"red\"}\n", "not in vqav2"),
    (b"[{\"question_id\": 420, \"answer\": \"a\"}", "not valid JSON"),
])
def test_every_unreadable_predictions_file_is_one_line_naming_it(content, message, tmp_path, capsys):
    vqa = write_vqav2(tmp_path / "vqa")
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    assert vlm_main(["eval", "--score", str(path), "--benchmark", "vqav2", "--data", str(vqa), "--output", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"vlm eval: error: {path}") and message in err, err


# ------------------------------------------------------------------- records that cannot be asked


def test_bad_records_are_skipped_and_counted_not_asked_or_fatal(model_dir, tmp_path, capsys):
    data = write_shapes(tmp_path / "shapes")
    good = json.loads(data.read_text())
    bad = [
        "a string, not a record",
        {**good[0], "id": "null-question", "question": None},
        {**good[0], "id": None},
        {**good[0], "id": "int-answer", "answer": 3},
        {key: value for key, value in good[0].items() if key != "task"} | {"id": "no-task"},
        {**good[0], "id": "marked", "question": "<image>\nWhat colour is it?"},
        {**good[0], "id": "huge", "question": "why " * 2000},
        {**good[0], "id": "too-long-for-the-context", "question": "a " * 1990},
    ]
    data.write_text(json.dumps(good + bad))
    out = tmp_path / "out"
    assert vlm_main(["eval", "--model", str(model_dir), "--benchmark", "shapes", "--data", str(data), "--output", str(out),
                     "--max-new-tokens", "2"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["num_answered"] == len(good) and summary["num_skipped"] == len(bad)
    reasons = "\n".join(summary["skipped"])
    n = len(good)
    for expected in (f"eval.json record {n}: a str, not an object", f"record {n + 1}: 'question' is null",
                     f"record {n + 2}: 'id' is null", f"record {n + 3}: 'answer' is an int (3)",
                     f"record {n + 4}: record lacks the fields ['task']", "question marked: the question text holds <image>", "question huge: the question is 8000 characters",
                     "question too-long-for-the-context: the prompt is"):
        assert expected in reasons, reasons
    asked = {json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()}
    assert asked == {record["id"] for record in good}
    err = capsys.readouterr().err
    assert f"skipped {len(bad)} records that cannot be asked" in err and "Traceback" not in err
    assert f"{len(bad)} records skipped" in (out / "report.md").read_text()
