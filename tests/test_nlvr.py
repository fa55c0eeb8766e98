"""NLVR v1: loader, parser, official metrics and converter, on the real dev and test splits."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.metrics.nlvr import majority_class_baseline, parse_nlvr_answer, score_nlvr
from eval.nlvr import (
    NLVR_CAPTION_PROMPT,
    NLVR_URL,
    NLVRExample,
    build_nlvr_prompt,
    convert_nlvr_split,
    describe_nlvr_scene,
    load_nlvr_split,
)

# The shared data folder sits beside the repository (../shared) or, in some checkouts, inside it.
_REPO = Path(__file__).resolve().parents[1]
NLVR_ROOT = next(
    (p for p in (_REPO.parent / "shared" / "data" / "nlvr1", _REPO / "shared" / "data" / "nlvr1") if p.is_dir()),
    _REPO.parent / "shared" / "data" / "nlvr1",
)
DEV_DIR = NLVR_ROOT / "dev"
TEST_DIR = NLVR_ROOT / "test"

# No skip when the data is missing: CI always has shared/, so a missing folder is a failure to see.


@pytest.fixture(scope="module")
def nlvr_dev() -> list[NLVRExample]:
    return load_nlvr_split(DEV_DIR)


@pytest.fixture(scope="module")
def nlvr_test() -> list[NLVRExample]:
    return load_nlvr_split(TEST_DIR)


# ----------------------------------------------------------------------------------- loader


def test_loader_finds_the_six_renderings_of_a_known_sentence(nlvr_dev):
    # dev.json line 1: identifier "1572-0", directory "2", label "true".
    renderings = [e for e in nlvr_dev if e.identifier == "1572-0"]
    assert [e.rendering for e in renderings] == [0, 1, 2, 3, 4, 5]
    assert [e.image_path for e in renderings] == [(DEV_DIR / "images/2" / f"dev-1572-0-{k}.png").resolve() for k in range(6)]
    assert all(e.image_path.is_file() for e in renderings)
    assert {e.sentence for e in renderings} == {"Each grey box contains atleast one yellow object touching the edge"}
    assert all(e.label is True and e.split == "dev" and e.sentence_id == "1572" for e in renderings)
    assert renderings[3].image_id == "dev-1572-0-3"
    # The same sentence judged against three more scenes (dev.json lines 134, 930, 259).
    labels = {e.identifier: e.label for e in nlvr_dev if e.sentence_id == "1572"}
    assert labels == {"1572-0": True, "1572-1": True, "1572-2": False, "1572-3": False}


def test_loader_on_the_test_split(nlvr_test):
    renderings = [e for e in nlvr_test if e.identifier == "1838-2"]
    assert [e.image_path.name for e in renderings] == [f"test-1838-2-{k}.png" for k in range(6)]
    assert renderings[0].image_path.parent == (TEST_DIR / "images" / "6").resolve()
    assert all(e.label is False and e.sentence == "there is a black square touching the edge" for e in renderings)


def test_split_sizes(nlvr_dev, nlvr_test):
    for examples, records, sentences in ((nlvr_dev, 989, 267), (nlvr_test, 990, 266)):
        assert len(examples) == 6 * records
        assert len({e.identifier for e in examples}) == records
        assert len({e.sentence_id for e in examples}) == sentences
        assert len({e.image_id for e in examples}) == len(examples)


def test_majority_class_baseline(nlvr_dev, nlvr_test):
    assert majority_class_baseline(nlvr_test) == (True, pytest.approx(100 * 556 / 990))  # 56.16 %
    assert majority_class_baseline(nlvr_dev) == (True, pytest.approx(100 * 547 / 989))  # 55.31 %


def test_majority_baseline_scores_like_the_official_script(nlvr_test):
    score = score_nlvr([(e, True) for e in nlvr_test], examples=nlvr_test)
    assert score.accuracy == pytest.approx(100 * 556 / 990)
    assert (score.num_images, score.num_correct) == (5940, 6 * 556)
    # Only 29 of the 266 test sentences are true of all of their scenes.
    assert (score.num_sentences, score.num_consistent) == (266, 29)


def test_missing_png_names_file_folder_and_source(tmp_path):
    split_dir = tmp_path / "dev"
    (split_dir / "images" / "2").mkdir(parents=True)
    first_record = (DEV_DIR / "dev.json").read_text().splitlines()[0]
    (split_dir / "dev.json").write_text(first_record + "\n")
    for k in range(6):
        if k != 4:
            shutil.copy(DEV_DIR / "images" / "2" / f"dev-1572-0-{k}.png", split_dir / "images" / "2")
    with pytest.raises(FileNotFoundError) as err:
        load_nlvr_split(split_dir)
    message = str(err.value)
    assert "dev-1572-0-4.png" in message and str(split_dir) in message and NLVR_URL in message


def test_missing_split_folder_and_bad_label(tmp_path):
    with pytest.raises(FileNotFoundError, match="lil-lab/nlvr"):
        load_nlvr_split(tmp_path / "nowhere")
    split_dir = tmp_path / "dev"
    split_dir.mkdir()
    record = json.loads((DEV_DIR / "dev.json").read_text().splitlines()[0])
    record["label"] = "maybe"
    (split_dir / "dev.json").write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match="line 1.*'maybe'"):
        load_nlvr_split(split_dir)


def test_rendering_k_draws_the_boxes_in_box_order(nlvr_dev):
    # In scene 1572-0 only box 2 holds a black object; find which third of the PNG shows it.
    for example in [e for e in nlvr_dev if e.identifier == "1572-0"]:
        pixels = np.asarray(Image.open(example.image_path).convert("RGB")).astype(int)  # [100, 400, 3]
        black = (pixels.sum(-1) < 30).sum(0)  # [400] black pixels per column
        drawn = [int(black[x0 : x0 + 100].sum() > 0) for x0 in (0, 150, 300)]  # boxes at x 0, 150, 300
        assert drawn.index(1) == example.box_order.index(2)


# ------------------------------------------------------------------------ prompt and parser


def test_prompt_holds_the_sentence():
    prompt = build_nlvr_prompt("There is a tower with four blocks.")
    assert prompt == (
        "Is the following statement true or false about the image? There is a tower with four blocks.\n"
        "Answer with a single word: true or false."
    )
    assert parse_nlvr_answer(prompt) is None  # a model that repeats the question has not answered


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("True.", True),
        ("false", False),
        ("FALSE", False),
        ("**True**", True),
        ("The statement is true", True),
        ("Answer: false.", False),
        ("It is not true.", False),
        ("That isn't true", False),
        ("untrue", False),
        ("Yes", True),
        ("No.", False),
        ("There is no black square, so the statement is true.", True),  # true/false beat yes/no
        ("True or false? False", False),  # an echoed question is not an answer
        ("I am not sure", None),
        ("nottrue, falsely", None),  # only whole words count
        ("", None),
    ],
)
def test_parse_nlvr_answer(reply, expected):
    assert parse_nlvr_answer(reply) is expected


# --------------------------------------------------------------------------------- metrics


def _fake(identifier: str, rendering: int, label: bool) -> NLVRExample:
    image_path = Path(f"/nonexistent/{identifier}-{rendering}.png")  # metrics never open images
    return NLVRExample("dev", identifier, rendering, image_path, "a sentence", label, [[], [], []])


def test_score_two_sentences_one_wrong_rendering():
    examples = [_fake("1-0", k, True) for k in range(6)] + [_fake("2-0", k, False) for k in range(6)]
    predictions = [(e, e.label) for e in examples]
    predictions[8] = (examples[8], True)  # sentence 2, rendering 2 is wrong
    score = score_nlvr(predictions, examples=examples)
    assert score.accuracy == pytest.approx(100 * 11 / 12)
    assert score.consistency == pytest.approx(50.0)
    assert (score.num_images, score.num_correct, score.num_sentences, score.num_consistent) == (12, 11, 2, 1)
    assert score.unparseable == 0.0


def test_score_groups_scenes_by_sentence_and_counts_unparseable_as_wrong():
    # Sentence 7 judged against two scenes (7-0 true, 7-1 false); sentence 8 against one.
    examples = [_fake("7-0", k, True) for k in range(6)] + [_fake("7-1", k, False) for k in range(6)]
    examples += [_fake("8-0", k, True) for k in range(6)]
    predictions = [(e, e.label) for e in examples]
    predictions[11] = (examples[11], None)  # unparseable reply on scene 7-1
    score = score_nlvr(predictions)
    assert (score.num_images, score.num_correct, score.num_unparseable) == (18, 17, 1)
    assert score.unparseable == pytest.approx(100 / 18)
    assert (score.num_sentences, score.num_consistent) == (2, 1)
    assert score.consistency == pytest.approx(50.0)


def test_score_rejects_duplicates_and_missing_predictions():
    examples = [_fake("1-0", k, True) for k in range(6)]
    with pytest.raises(ValueError, match="more than once"):
        score_nlvr([(examples[0], True), (examples[0], True)])
    with pytest.raises(ValueError, match="1 of 6 images missing"):
        score_nlvr([(e, True) for e in examples[:5]], examples=examples)
    with pytest.raises(ValueError, match="no predictions"):
        score_nlvr([])


# -------------------------------------------------------------------------------- captions


def test_caption_of_a_tower_scene(nlvr_dev):
    example = next(e for e in nlvr_dev if e.image_id == "dev-3125-1-0")  # dev.json line 2
    assert describe_nlvr_scene(example.structured_rep, example.box_order) == (
        "Three boxes. The first box has a tower of one yellow block. "
        "The second box has a tower of one yellow block. "
        "The third box has a tower of four blocks, from bottom to top yellow, yellow, yellow and yellow."
    )


def test_caption_follows_the_rendering_box_order(nlvr_dev):
    first, second = [e for e in nlvr_dev if e.identifier == "1572-0"][:2]  # box orders (0,1,2), (0,2,1)
    caption_first = describe_nlvr_scene(first.structured_rep, first.box_order)
    caption_second = describe_nlvr_scene(second.structured_rep, second.box_order)
    assert caption_first.startswith(
        "Three boxes. The first box has three objects: a small blue triangle, "
        "a small yellow circle touching the right edge and a medium blue triangle touching the bottom and right edges. "
        "The second box has two objects:"
    )
    assert "The second box has five objects: a large black square touching the right edge" in caption_second
    with pytest.raises(ValueError, match="permutation"):
        describe_nlvr_scene(first.structured_rep, (0, 0, 1))


# ------------------------------------------------------------------------------- converter


def test_convert_split_to_llava_conversations(tmp_path, nlvr_dev):
    out = tmp_path / "nlvr_dev_llava.json"
    count = convert_nlvr_split(DEV_DIR, out)
    records = json.loads(out.read_text())
    assert count == len(records) == 2 * len(nlvr_dev)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left behind
    labels = {e.image_id: e.label for e in nlvr_dev}
    for record in records:
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        text = human["value"] + gpt["value"]
        assert text.count("<image>") == 1 and human["value"].startswith("<image>\n")
        assert Path(record["image"]).is_absolute() and Path(record["image"]).is_file()
        image_id = Path(record["image"]).stem
        if record["id"].endswith("-qa"):
            assert gpt["value"] == ("true" if labels[image_id] else "false")
        else:
            assert human["value"] == "<image>\n" + NLVR_CAPTION_PROMPT and gpt["value"].startswith("Three boxes.")
    qa = next(r for r in records if r["id"] == "nlvr-dev-1572-0-3-qa")
    assert qa["conversations"][0]["value"] == "<image>\n" + build_nlvr_prompt(
        "Each grey box contains atleast one yellow object touching the edge"
    )
    assert qa["conversations"][1]["value"] == "true"


def test_convert_with_image_root_and_only_qa(tmp_path, nlvr_test):
    out = tmp_path / "sub" / "nlvr_test_qa.json"
    count = convert_nlvr_split(TEST_DIR, out, include_captions=False, image_root=NLVR_ROOT)
    records = json.loads(out.read_text())
    assert count == len(records) == len(nlvr_test)
    assert all(r["id"].endswith("-qa") for r in records)
    assert records[0]["image"].startswith("test/images/")
    assert all((NLVR_ROOT / r["image"]).is_file() for r in records[:60])


def test_convert_refuses_bad_requests(tmp_path):
    with pytest.raises(ValueError, match="nothing to write"):
        convert_nlvr_split(DEV_DIR, tmp_path / "x.json", include_captions=False, include_qa=False)
    with pytest.raises(ValueError, match="read-only"):
        convert_nlvr_split(DEV_DIR, DEV_DIR / "llava.json")
    with pytest.raises(ValueError, match="not under image_root"):
        convert_nlvr_split(DEV_DIR, tmp_path / "x.json", image_root=TEST_DIR)
    assert not (tmp_path / "x.json").exists()
