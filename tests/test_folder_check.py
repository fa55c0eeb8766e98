"""A damaged model folder is refused before loading, with the file named and what to do."""

from __future__ import annotations

import json
import shutil

import pytest

from apps.cli import main as vlm_main
from tiny import build_tiny_vlm
from vlm.folder_check import ModelFolderError, check_model_folder
from vlm.loading import load_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory, llama_dir):
    folder = tmp_path_factory.mktemp("vlm") / "model"
    model, processor = build_tiny_vlm(llama_dir)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def copy(saved, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(saved, target)
    return target


def test_a_whole_folder_passes_and_loads(saved):
    check_model_folder(saved)
    model, processor = load_model(saved)
    assert processor.image_token_id == model.config.image_token_id


def test_truncated_weights_are_named(copy):
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFolderError, match=r"model\.safetensors: truncated \(\d+ of \d+ bytes\)"):
        load_model(copy)
    weights.write_bytes(data[:5])
    with pytest.raises(ModelFolderError, match="too short for a safetensors file"):
        load_model(copy)
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"not json at all!" + data[100:200])
    with pytest.raises(ModelFolderError, match="header is not valid JSON"):
        load_model(copy)


@pytest.mark.parametrize("name, damage, message", [
    ("tokenizer.json", "delete", r"no tokenizer\.json \(the tokenizer itself"),
    ("processor_config.json", "empty", r"processor_config\.json: empty"),
    ("config.json", "garbage", r"config\.json: not valid JSON"),
    ("tokenizer_config.json", "list", r"tokenizer_config\.json: expected a JSON object"),
])
def test_each_missing_or_damaged_file_is_named(copy, name, damage, message):
    path = copy / name
    if damage == "delete":
        path.unlink()
    else:
        path.write_text({"empty": "", "garbage": "{not json", "list": "[1, 2]"}[damage])
    with pytest.raises(ModelFolderError, match=message):
        load_model(copy)


def test_a_folder_of_another_model_type_is_refused(copy):
    config = json.loads((copy / "config.json").read_text())
    config["model_type"] = "llava"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="model_type is 'llava', not 'vlm'"):
        check_model_folder(copy)


def test_a_missing_shard_is_named(copy):
    (copy / "model.safetensors").rename(copy / "model-00001-of-00002.safetensors")
    (copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelFolderError, match="weight shard model-00002-of-00002.safetensors named in .* is missing"):
        check_model_folder(copy)


def test_the_command_line_says_it_in_one_line(copy, capsys):
    (copy / "tokenizer.json").unlink()
    questions = copy.parent / "q.jsonl"
    questions.write_text(json.dumps({"id": 1, "question": "Hello?"}) + "\n")
    code = vlm_main(["predict", "--model", str(copy), "--input", str(questions), "--output", str(copy.parent / "out.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and "tokenizer.json" in err[0] and "Traceback" not in err[0]
    assert not (copy.parent / "out.jsonl").exists()


def _rewrite_weights(folder, change) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    change(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def test_weights_of_another_shape_are_named_in_one_line(copy, capsys):
    import torch

    key = next(k for k in sorted(load_model(copy)[0].state_dict()) if k.startswith("projector.") and k.endswith("weight"))
    _rewrite_weights(copy, lambda w: w.__setitem__(key, torch.zeros(w[key].shape[0] + 3, *w[key].shape[1:])))
    with pytest.raises(ModelFolderError, match=rf"1 weight in model\.safetensors has another shape .* e\.g\. {key}: \d+x\d+ in the "
                                               r"file, \d+x\d+ by the config"):
        load_model(copy)
    questions = copy.parent / "q.jsonl"
    questions.write_text(json.dumps({"id": 1, "question": "Hello?"}) + "\n")
    capsys.readouterr()
    assert vlm_main(["predict", "--model", str(copy), "--input", str(questions), "--output", str(copy.parent / "out.jsonl")]) != 0
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("Loading weights")]  # the loader's own bar
    assert len(lines) == 1 and key in lines[0] and "LOAD REPORT" not in err and "Traceback" not in err, err


def test_missing_weights_are_refused_not_initialised_at_random(copy):
    key = next(k for k in sorted(load_model(copy)[0].state_dict()) if k.startswith("projector."))
    _rewrite_weights(copy, lambda w: w.pop(key))
    with pytest.raises(ModelFolderError, match=rf"model\.safetensors lacks 1 weights that config\.json asks for, e\.g\. {key}"):
        load_model(copy)
