"""The vision-feature cache: training on cached tower outputs equals training on pixels, and the cache is keyed right."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eval.shapes import write_shapes_dataset
from train.config import TrainConfig
from train.dataset import prepare_dataset
from train.features import FeatureCache, fill_cache, image_digest, tower_fingerprint
from train.run import load_or_build, run_training


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(out, 12, seed=1, n_eval=1)
    return out


def _config(tmp_path, shapes, llama_dir, vision_json, **overrides) -> TrainConfig:
    values = dict(
        stage="pretrain", llm=str(llama_dir), vision_config=vision_json, vision_pretrained=None,
        data=[str(shapes / "captions.json")], image_root=str(shapes), max_length=512, per_device_train_batch_size=4,
        max_steps=4, learning_rate=1e-2, warmup_ratio=0.0, save_steps=100, logging_steps=1, seed=0, bf16=False,
        output_dir=str(tmp_path / "run"),
    )
    values.update(overrides)
    return TrainConfig(**values)


def _losses(run: Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in e]


def test_training_on_cached_features_equals_training_on_pixels(tmp_path, shapes, llama_dir, vision_json):
    plain = run_training(_config(tmp_path / "plain", shapes, llama_dir, vision_json))
    cached = run_training(_config(tmp_path / "cached", shapes, llama_dir, vision_json, feature_cache=str(tmp_path / "cache")))
    assert _losses(plain.parent) == pytest.approx(_losses(cached.parent), rel=1e-5)
    a, b = load_file(str(plain / "model.safetensors")), load_file(str(cached / "model.safetensors"))
    torch.testing.assert_close(a["projector.weight"], b["projector.weight"], rtol=1e-5, atol=1e-6)
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 12  # one per distinct image


def test_the_dataset_reads_the_cache_and_never_decodes_images(tmp_path, shapes, llama_dir, vision_json, monkeypatch):
    cfg = _config(tmp_path, shapes, llama_dir, vision_json)
    torch.manual_seed(0)
    model, processor = load_or_build(cfg)
    dataset, _ = prepare_dataset(cfg.data, cfg.image_root, processor, cfg.max_length, False, progress=False)
    pixels = dataset[3]["pixel_values"]
    cache = FeatureCache(tmp_path / "cache", tower_fingerprint(model.vision_tower, processor.image_processor))
    stats = fill_cache(cache, model.vision_tower, processor.image_processor, dataset, batch_size=5, progress=False)
    assert stats == {"images": 12, "computed": 12, "reused": 0}

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded although its features are cached")

    monkeypatch.setattr(dataset.conversations, "load_images", no_decoding)
    example = dataset[3]
    assert "pixel_values" not in example and example["num_images"] == 1
    with torch.no_grad():
        torch.testing.assert_close(example["vision_features"], model.vision_tower(pixels), rtol=0, atol=0)
    # The model takes the cached tokens in place of pixels and gives the same logits.
    ids = torch.as_tensor(example["input_ids"]).unsqueeze(0)
    with torch.no_grad():
        from_pixels = model(input_ids=ids, pixel_values=pixels).logits
        from_cache = model(input_ids=ids, vision_features=example["vision_features"]).logits
    torch.testing.assert_close(from_cache, from_pixels, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not both"):
        model(input_ids=ids, pixel_values=pixels, vision_features=example["vision_features"])


def test_cache_keys_follow_the_image_bytes_and_the_tower(tmp_path, shapes, llama_dir, vision_json):
    data = tmp_path / "shapes"
    shutil.copytree(shapes, data)
    cfg = _config(tmp_path, data, llama_dir, vision_json, data=[str(data / "captions.json")], image_root=str(data))
    torch.manual_seed(0)
    model, processor = load_or_build(cfg)
    fingerprint = tower_fingerprint(model.vision_tower, processor.image_processor)
    cache = FeatureCache(tmp_path / "cache", fingerprint)

    def fill():
        dataset, _ = prepare_dataset(cfg.data, cfg.image_root, processor, cfg.max_length, False, progress=False)
        return fill_cache(cache, model.vision_tower, processor.image_processor, dataset, progress=False)

    assert fill()["computed"] == 12
    assert fill() == {"images": 12, "computed": 0, "reused": 12}  # a second run reads everything
    first = sorted((data / "images").glob("train_*.png"))[0]
    old_digest = image_digest(first)
    from PIL import Image

    Image.new("RGB", (224, 224), (255, 0, 0)).save(first)  # the file changes: its entry must not be reused
    assert image_digest(first) != old_digest and fill()["computed"] == 1
    # Another tower (other weights, or another feature layer / preprocessing) has another folder.
    weight = model.vision_tower.visual.conv1.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    assert tower_fingerprint(model.vision_tower, processor.image_processor) != fingerprint
    processor.image_processor.pad_to_square = True
    with torch.no_grad():
        weight.copy_(saved)
    assert tower_fingerprint(model.vision_tower, processor.image_processor) != fingerprint
    processor.image_processor.pad_to_square = False
    assert tower_fingerprint(model.vision_tower, processor.image_processor) == fingerprint
