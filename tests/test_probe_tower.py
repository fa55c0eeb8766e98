"""benchmarks.probe_tower: probes read the shapes' colour and kind from a tower's patch tokens."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from benchmarks import probe_tower
from eval.shapes import SceneConfig, write_shapes_dataset

MICRO_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "patch_size": 16, "layers": 2, "width": 64, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    write_shapes_dataset(root / "data", 100, parts=("captions",), config=SceneConfig(max_shapes=4))
    torch.manual_seed(1)
    clip = open_clip.CLIP(**MICRO_CLIP_CONFIG)
    (root / "clip").mkdir()
    save_file(clip.state_dict(), str(root / "clip" / "open_clip_model.safetensors"))
    (root / "clip" / "open_clip_config.json").write_text(json.dumps({"model_cfg": MICRO_CLIP_CONFIG}))
    return root


def test_probes_read_colour_from_any_tower(setup, tmp_path, capsys):
    out = tmp_path / "probe.json"
    tower = f"local-dir:{setup / 'clip'}"
    status = probe_tower.main(["--data", str(setup / "data"), "--max-shapes", "4", "--train", "70", "--test", "30",
                               "--tower", tower, "--tower", f"random:{tower}", "--out", str(out)])
    assert status == 0
    results = json.loads(out.read_text())["results"]
    assert [r["tower"] for r in results] == [tower, f"random:{tower}"]
    for r in results:
        assert r["test_shapes"] >= 30
        # colour is a pixel statistic: even untrained patch tokens give it away
        assert r["color_linear"] >= 0.9 and r["color_mlp"] >= 0.9
    # kind needs the outline; 70 scenes are few, but an MLP beats chance (20%)
    assert max(r["kind_mlp"] for r in results) > 0.35
    # two different initialisations: different features, different probes
    assert results[0] != {**results[1], "tower": results[0]["tower"]}
    assert "| tower | test shapes |" in capsys.readouterr().out


def test_a_dataset_made_with_other_settings_is_refused(setup, capsys):
    status = probe_tower.main(["--data", str(setup / "data"), "--max-shapes", "6", "--train", "5", "--test", "5",
                               "--tower", f"random:local-dir:{setup / 'clip'}"])
    assert status == 1
    assert "is not the scene drawn from --seed 0 --max-shapes 6" in capsys.readouterr().err
    status = probe_tower.main(["--data", str(setup / "data"), "--max-shapes", "4", "--train", "90", "--test", "20",
                               "--tower", f"random:local-dir:{setup / 'clip'}"])
    assert status == 1
    assert "exceeds the dataset's --n" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probe_tower.main(["--data", str(setup), "--tower", f"random:local-dir:{setup / 'clip'}"])
    assert "has no images/ folder" in capsys.readouterr().err
