"""benchmarks.learnability: perfect patch tokens, KV-cached teacher-forced scoring, the training curve."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import learnability
from benchmarks.learnbench import tokens as patch_tokens
from eval.shapes import COLORS, KINDS, SceneConfig, sample_scene, scene_seed, write_shapes_dataset
from tiny import build_tiny_vlm


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, llama_dir):
    """A `vlm demo`-shaped folder: shapes data and a tiny 'stage 1' VLM."""
    root = tmp_path_factory.mktemp("learn")
    write_shapes_dataset(root / "data", 12, n_eval=3, config=SceneConfig(max_shapes=4), multi_turn_fraction=0.9, max_turns=6)
    model, processor = build_tiny_vlm(llama_dir)
    model.save_pretrained(root / "stage1" / "model")
    processor.save_pretrained(root / "stage1" / "model")
    return root


def test_oracle_tokens_state_each_shape_where_it_lies():
    scene = sample_scene(scene_seed(0, "train", 5), SceneConfig(max_shapes=4))
    tokens = patch_tokens.oracle_tokens("train_s0_000005", 4, 32).reshape(14, 14, 32)
    centre = 7 + 5 + 2 + 9  # after colour, kind, size and cell one-hots
    assert int(tokens[..., centre].sum()) == len(scene.shapes)
    for shape in scene.shapes:
        row = tokens[shape.cy // 16, shape.cx // 16]
        assert row[centre] == 1
        assert row[list(COLORS).index(shape.color)] == 1 and row[:7].sum() == 1
        assert row[7 + KINDS.index(shape.kind)] == 1 and row[7:12].sum() == 1
        assert row[14:23].sum() == 1 and row[14 + patch_tokens.patch_cell(shape.cy // 16, shape.cx // 16)] == 1
    covered = torch.zeros(14, 14, dtype=torch.bool)
    for shape in scene.shapes:
        left, top, right, bottom = shape.box
        covered[top // 16 : bottom // 16 + 1, left // 16 : right // 16 + 1] = True
    # every covered patch says colour, kind, size and cell; every other patch is all zero
    assert torch.equal(tokens.abs().sum(-1) > 0, covered)
    assert torch.equal(tokens[covered][:, :centre].sum(-1), torch.full((int(covered.sum()),), 4.0))
    with pytest.raises(ValueError, match="channels"):
        patch_tokens.oracle_tokens("train_s0_000005", 4, 16)


def test_cached_scoring_equals_one_full_forward_per_question(workdir):
    model = learnability.VLMForCausalLM.from_pretrained(workdir / "stage1" / "model").eval()
    processor = learnability.VLMProcessor.from_pretrained(workdir / "stage1" / "model")
    questions = json.loads((workdir / "data" / "eval.json").read_text())
    features = patch_tokens.tower_tokens(model, processor, sorted((workdir / "data" / "images").glob("eval_*.png")))
    items = learnability.eval_items(processor, questions)
    result = learnability.evaluate(model, items, features, processor.tokenizer.pad_token_id)
    assert not model.training  # evaluate leaves the mode as it found it
    plain, right = [], 0
    with torch.no_grad():
        for item in items:
            for q in item["questions"]:
                logits = model(input_ids=q["input_ids"][None], vision_features=features[item["stem"]][None],
                               num_images=torch.tensor([1])).logits[0]
                at = (q["labels"] != -100).nonzero().flatten()
                predicted = logits[at - 1].argmax(-1)
                plain.append(predicted.tolist())
                right += int(torch.equal(predicted, q["labels"][at]))
    assert result["questions"] == len(questions) == len(plain)
    assert result["predictions"] == plain
    assert math.isclose(result["overall"], 100.0 * right / len(plain))


def test_curve_from_oracle_tokens_then_from_the_tower(workdir, tmp_path, capsys):
    out = tmp_path / "curve.json"
    run = learnability.main(["--workdir", str(workdir), "--tokens", "oracle", "--stage1-steps", "2", "--stage1-batch", "2",
                             "--steps", "3", "--batch", "2", "--eval-every", "2", "--threads", "1", "--out", str(out)])
    curve = json.loads(out.read_text())["curve"]
    assert curve == run["curve"]
    assert [(r["phase"], r["step"]) for r in curve] == [("stage1", 2), ("start", 0), ("stage2", 2), ("stage2", 3)]
    assert all(math.isfinite(r["loss"]) for r in curve if r["phase"] != "start")
    assert all(r["questions"] == len(json.loads((workdir / "data" / "eval.json").read_text())) for r in curve)
    assert "| stage2 | 3 |" in capsys.readouterr().out
    # the whole LLM trains with --lora-r 0; the tower's own tokens, no stage 1
    run = learnability.main(["--workdir", str(workdir), "--tokens", "tower", "--steps", "1", "--batch", "2",
                             "--lora-r", "0", "--threads", "1"])
    assert [(r["phase"], r["step"]) for r in run["curve"]] == [("start", 0), ("stage2", 1)]
    # the projector calibrated then word-aligned on the captions, or the oracle's channel -> word map
    run = learnability.main(["--workdir", str(workdir), "--tokens", "tower", "--projector", "align", "--align-steps", "3",
                             "--align-images", "12", "--steps", "1", "--batch", "2", "--threads", "1"])
    assert [(r["phase"], r["step"]) for r in run["curve"]] == [("start", 0), ("stage2", 1)]
    with pytest.raises(SystemExit, match="missing: .*instruct.json"):
        learnability.main(["--workdir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--batch must be >= 1"):
        learnability.main(["--workdir", str(workdir), "--batch", "0"])
    with pytest.raises(SystemExit, match="needs --tokens oracle"):
        learnability.main(["--workdir", str(workdir), "--tokens", "tower", "--projector", "oracle-words"])


def test_oracle_words_projector_maps_channels_to_word_embeddings(workdir):
    model = learnability.VLMForCausalLM.from_pretrained(workdir / "stage1" / "model")
    processor = learnability.VLMProcessor.from_pretrained(workdir / "stage1" / "model")
    patch_tokens.word_projector(model, processor)
    table = model.language_model.get_input_embeddings().weight
    tokens = patch_tokens.oracle_tokens("train_s0_000005", 4, 32)
    scene = patch_tokens.scene_of("train_s0_000005", 4)
    shape = scene.shapes[-1]  # drawn last: nothing covers its centre patch
    row, col = shape.cy // 16, shape.cx // 16
    words = [shape.color, shape.kind, shape.size, patch_tokens.POSITIONS[patch_tokens.patch_cell(row, col)], "shape"]
    expected = sum(table[processor.tokenizer(" " + w, add_special_tokens=False)["input_ids"]].mean(0) for w in words)
    with torch.no_grad():
        got = model.projector(tokens[row * 14 + col])
    assert torch.allclose(got, expected, atol=1e-5)


def test_text_mode_puts_the_scene_in_words_where_the_image_was(workdir):
    processor = learnability.VLMProcessor.from_pretrained(workdir / "stage1" / "model")
    questions = json.loads((workdir / "data" / "eval.json").read_text())
    stem = "eval_s0_000001"
    scene = patch_tokens.scene_of(stem, 4)
    text = patch_tokens.scene_text(stem, 4)
    assert all(f"{s.color} {s.kind}" in text for s in scene.shapes)
    items = learnability.eval_items(processor, questions, lambda s: patch_tokens.scene_text(s, 4))
    item = next(i for i in items if i["stem"] == stem)
    for q in item["questions"]:
        assert q["num_images"] == 0 and processor.image_token_id not in q["input_ids"]
        assert text in processor.tokenizer.decode(q["input_ids"])
    run = learnability.main(["--workdir", str(workdir), "--tokens", "text", "--steps", "2", "--batch", "2", "--threads", "1"])
    assert [(r["phase"], r["step"]) for r in run["curve"]] == [("start", 0), ("stage2", 2)]
    with pytest.raises(SystemExit, match="stage1-steps"):
        learnability.main(["--workdir", str(workdir), "--tokens", "text", "--stage1-steps", "1"])


def test_caption_turns_carry_the_images_caption_once():
    records = [{"image": "images/a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]}]
    captions = [{"image": "images/a.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": "A red circle."}]}]
    last = learnability.with_caption_turns(records, captions, "last")[0]["conversations"]
    assert [t["value"] for t in last] == ["<image>\nWhat colour?", "red", "Describe the image.", "A red circle."]
    first = learnability.with_caption_turns(records, captions, "first")[0]["conversations"]
    assert [t["value"] for t in first] == ["<image>\nDescribe the image.", "A red circle.", "What colour?", "red"]
    assert sum(t["value"].count("<image>") for t in first + last) == 2  # one image tag per conversation
    with pytest.raises(SystemExit, match="no caption for images/b.png"):
        learnability.with_caption_turns([{**records[0], "image": "images/b.png"}], captions, "last")


def test_projector_first_on_the_conversations_then_saved(workdir, tmp_path):
    run = learnability.main(["--workdir", str(workdir), "--tokens", "tower", "--stage1-data", "instruct", "--stage1-steps", "2",
                             "--stage1-batch", "2", "--steps", "1", "--batch", "2", "--caption-turn", "last",
                             "--eval-every", "1", "--threads", "1", "--save", str(tmp_path / "saved")])
    phases = [(row["phase"], row["step"]) for row in run["curve"]]
    assert phases == [("stage1", 1), ("stage1", 2), ("start", 0), ("stage2", 1)]
    assert all(row["image_token_norm"] > 0 for row in run["curve"])
    saved = learnability.VLMForCausalLM.from_pretrained(tmp_path / "saved")
    assert not any("lora" in name for name, _ in saved.named_parameters())  # the adapter is merged in
