"""Offline CLIP training with open_clip's own trainer: CSV, a tiny run, its weights as the tower."""

from __future__ import annotations

import copy
import json

import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from eval.shapes import write_shapes_dataset
from train import clip as clip_train
from train.clip import CONFIG_NAME, RECORD_NAME, load_model_config, train_clip, write_clip_csv
from vision import load_vision_tower

# 2 blocks, 64 wide, real geometry (224 px, patch 16); the text tower keeps CLIP's tokenizer vocabulary.
MICRO_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "patch_size": 16, "layers": 2, "width": 64, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TRAIN_ARGS = dict(epochs=1, batch_size=16, lr=1e-3, seed=0)


def _write_records(root, records):
    path = root / "captions.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_write_clip_csv_values(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / name)
    tricky = 'A "red" circle,\tthen a tab'
    records = [
        {
            "id": "0",
            "image": "imgs/a.png",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe."},
                {"from": "gpt", "value": " A blue square. "},
            ],
        },
        {
            "id": "1",
            "image": "imgs/b.png",
            "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": tricky}],
        },
    ]
    captions = _write_records(tmp_path, records)

    out = write_clip_csv(captions, None, tmp_path / "clip.csv")

    frame = pd.read_csv(out, sep="\t")  # exactly how open_clip_train's CsvDataset reads it
    assert list(frame.columns) == ["filepath", "title"]
    assert frame["filepath"].tolist() == [str(tmp_path / "imgs" / "a.png"), str(tmp_path / "imgs" / "b.png")]
    assert frame["title"].tolist() == ["A blue square.", tricky]

    # image_root given explicitly, comma separator
    out = write_clip_csv(captions, tmp_path, tmp_path / "clip_comma.csv", separator=",")
    assert pd.read_csv(out, sep=",")["title"].tolist() == ["A blue square.", tricky]

    # colour names dropped as whole words, any case; "redder" is not "red"
    records[1]["conversations"][1]["value"] = "Red circle, a redder blue square and a small RED cross."
    out = write_clip_csv(_write_records(tmp_path, records), None, tmp_path / "clip_nc.csv", drop_words=["red", "blue"])
    assert pd.read_csv(out, sep="\t")["title"].tolist() == ["A square.", "circle, a redder square and a small cross."]
    records[0]["conversations"][1]["value"] = "blue red"
    with pytest.raises(ValueError, match=r"record 0 \(id '0'\).*nothing of the caption is left"):
        write_clip_csv(_write_records(tmp_path, records), None, tmp_path / "clip_nc2.csv", drop_words=["red", "blue"])


def test_write_clip_csv_names_the_bad_record(tmp_path):
    records = [{"id": "x7", "image": "missing.png", "conversations": [{"from": "gpt", "value": "a caption"}]}]
    with pytest.raises(FileNotFoundError, match=r"record 0 \(id 'x7'\).*missing.png"):
        write_clip_csv(_write_records(tmp_path, records), None, tmp_path / "clip.csv")
    Image.new("RGB", (8, 8)).save(tmp_path / "missing.png")
    records[0]["conversations"] = [{"from": "human", "value": "<image>"}]
    with pytest.raises(ValueError, match="no 'gpt' turn"):
        write_clip_csv(_write_records(tmp_path, records), None, tmp_path / "clip.csv")
    assert not (tmp_path / "clip.csv").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real open_clip_train run: 48 shapes pairs, 1 epoch of 3 steps, from saved initial weights."""
    root = tmp_path_factory.mktemp("clip")
    files = write_shapes_dataset(root / "shapes", 48, seed=3, parts=("captions",))
    csv_path = write_clip_csv(files["captions"], None, root / "clip.csv")
    torch.manual_seed(0)
    initial = open_clip.CLIP(**copy.deepcopy(MICRO_CLIP_CONFIG)).state_dict()
    save_file(initial, str(root / "init.safetensors"))
    out = root / "out"
    weights = train_clip(csv_path, out, MICRO_CLIP_CONFIG, pretrained=root / "init.safetensors", **TRAIN_ARGS)
    return {"root": root, "csv": csv_path, "out": out, "weights": weights, "initial": initial}


def test_training_changes_every_tower_weight_and_the_tower_loads_them(trained):
    weights = load_file(str(trained["weights"]))
    assert trained["weights"] == trained["out"] / "open_clip_model.safetensors"
    assert not any(key.startswith("module.") for key in weights)
    assert weights.keys() == trained["initial"].keys()  # the whole CLIP, text tower included
    visual = {key[len("visual.") :]: value for key, value in weights.items() if key.startswith("visual.")}
    for key, value in visual.items():
        assert value.dtype == torch.float32
        assert not torch.equal(value, trained["initial"][f"visual.{key}"]), f"visual.{key} was not trained"

    tower = load_vision_tower(None, pretrained=str(trained["weights"]), model_config=MICRO_CLIP_CONFIG)
    for key, value in tower.visual.state_dict().items():
        torch.testing.assert_close(value, visual[key], rtol=0, atol=0)
    # The folder is an open_clip local-dir model, and the config it records is the one trained.
    assert load_model_config(trained["out"]) == MICRO_CLIP_CONFIG
    reference = open_clip.create_model(f"local-dir:{trained['out']}").eval()
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference.visual.forward_intermediates(
            pixels, indices=[0], intermediates_only=True, output_fmt="NLC"
        )["image_intermediates"][0]
    torch.testing.assert_close(tower(pixels), expected)


def test_local_dir_name_loads_the_folder_as_the_tower(trained, tmp_path):
    by_name = load_vision_tower(f"local-dir:{trained['out']}", pretrained=None)
    by_file = load_vision_tower(None, pretrained=str(trained["weights"]), model_config=MICRO_CLIP_CONFIG)
    pixels = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(by_name(pixels), by_file(pixels), rtol=0, atol=0)
    config = by_name.vision_config
    assert config["model_name"] == f"local-dir:{trained['out']}" and config["pretrained"] == str(trained["weights"].resolve())
    assert config["open_clip_config"]["vision_cfg"] == MICRO_CLIP_CONFIG["vision_cfg"]
    assert config["image_mean"] == list(open_clip.OPENAI_DATASET_MEAN)  # the folder's preprocess_cfg
    with pytest.raises(ValueError, match="brings its own weights"):
        load_vision_tower(f"local-dir:{trained['out']}", pretrained="openai")
    with pytest.raises(FileNotFoundError, match="open_clip_config.json not found"):
        load_vision_tower(f"local-dir:{tmp_path}", pretrained=None)


def test_run_record(trained):
    record = json.loads((trained["out"] / RECORD_NAME).read_text())
    args = record["open_clip_train_args"]
    assert args[args.index("--dataset-type") + 1] == "csv"
    assert args[args.index("--precision") + 1] == "fp32"
    assert args[args.index("--warmup") + 1] == "1"  # 10% of 3 steps, at least 1
    assert len(record["summary"]["images_per_second"]) == 1  # one epoch
    assert json.loads((trained["out"] / CONFIG_NAME).read_text())["model_cfg"] == MICRO_CLIP_CONFIG
    assert not list(trained["out"].rglob("epoch_*.pt"))  # the trainer's checkpoint is not kept by default


def test_rerun_reuses_the_result_and_refuses_other_arguments(trained, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("re-running with the same output must not train again")

    monkeypatch.setattr(clip_train.training.subprocess, "run", no_training)
    before = trained["weights"].stat().st_mtime_ns
    again = train_clip(
        trained["csv"], trained["out"], MICRO_CLIP_CONFIG, pretrained=trained["root"] / "init.safetensors", **TRAIN_ARGS
    )
    assert again == trained["weights"] and again.stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="epochs: 1 -> 2"):
        train_clip(
            trained["csv"],
            trained["out"],
            MICRO_CLIP_CONFIG,
            pretrained=trained["root"] / "init.safetensors",
            **{**TRAIN_ARGS, "epochs": 2},
        )


def test_failed_run_leaves_no_output(tmp_path):
    pd.DataFrame({"filepath": [str(tmp_path / f"gone_{i}.png") for i in range(4)], "title": ["a caption"] * 4}).to_csv(
        tmp_path / "clip.csv", sep="\t", index=False
    )
    with pytest.raises(RuntimeError, match="open_clip_train.main exited"):
        train_clip(tmp_path / "clip.csv", tmp_path / "out", MICRO_CLIP_CONFIG, epochs=1, batch_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.csv"]  # no out/, no staging folder


def test_too_few_rows_for_one_batch(tmp_path):
    pd.DataFrame({"filepath": ["x.png"] * 3, "title": ["c"] * 3}).to_csv(tmp_path / "clip.csv", sep="\t", index=False)
    with pytest.raises(ValueError, match="3 rows, fewer than batch_size=16"):
        train_clip(tmp_path / "clip.csv", tmp_path / "out", MICRO_CLIP_CONFIG, batch_size=16)
