"""``vlm export --to llava``: the folder loads with transformers alone and computes what our model computes.

Tolerances, as the export's own check uses them (``apps/export/parity.py``): pixel_values 1e-5 (backend
"pil"); logits relative to max(1, max |logit|): fp32 1e-4 (only the order of float sums differs), bf16
5e-2 (both models round every op's output to 8 bits of mantissa, in other kernels). Greedy tokens must
be equal in fp32.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from apps.cli import main
from apps.export import ExportError, export
from apps.export.config import clip_vision_config
from apps.export.keymap import vision_state_dict
from tiny import TINY_CLIP_CONFIG, build_tiny_vlm, make_image
from vision import VisionTower, load_image
from vlm.chat import answer_once
from vlm.modeling import VLMForCausalLM
from vlm.processing import VLMProcessor

REPO = Path(__file__).resolve().parents[1]
OUR_PACKAGES = ("apps", "vlm", "vision", "projector", "train", "eval", "benchmarks", "tiny")


def _save(model, processor, folder: Path) -> Path:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((name, f".{name}")))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, llama_dir):
    """Saved tiny VLMs, one per projector type."""
    root = tmp_path_factory.mktemp("export-models")
    return {kind: _save(*build_tiny_vlm(llama_dir, projector_type=kind), root / kind) for kind in ("linear", "mlp2x_gelu")}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("projector", ["linear", "mlp2x_gelu"])
def test_export_round_trip(tiny_models, tmp_path, projector, dtype):
    out = tmp_path / "llava"
    report = export(tiny_models[projector], out, dtype=dtype, max_shard_size="100KB", log=lambda _: None)
    parity = report.parity
    assert parity.pixel_max_diff <= 1e-5
    assert parity.pixel_crop_shifted >= 1  # the probe set holds images where the two crop rules differ
    assert parity.logit_max_diff <= parity.logit_bound
    if dtype == "fp32":
        assert parity.greedy_equal
        assert parity.logit_max_diff < 1e-5
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "processor_config.json", "preprocessor_config.json", "tokenizer.json",
            "chat_template.jinja", "model.safetensors.index.json"} <= names
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(report.files) > 1  # sharded above --max-shard-size
    # the Hub's LLaVA-HF names, which vLLM reads, in the export dtype
    keys = set(index["weight_map"])
    assert "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight" in keys
    assert "multi_modal_projector.linear_2.weight" in keys and "language_model.model.embed_tokens.weight" in keys
    assert not any(k.startswith("model.") for k in keys)
    with safe_open(str(out / report.files[0]), "pt") as weights:
        assert weights.get_tensor(next(iter(weights.keys()))).dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["projector_hidden_act"] == {"linear": "linear", "mlp2x_gelu": "gelu"}[projector]
    assert (config["vision_feature_layer"], config["vision_feature_select_strategy"], config["image_seq_length"]) == (-2, "default", 196)
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert (preprocessor["size"], preprocessor["crop_size"], preprocessor["resample"]) == ({"shortest_edge": 224}, {"height": 224, "width": 224}, 3)
    assert _leftovers(tmp_path, "llava") == ["llava"]  # no staging or merge folder left beside it


# Runs with transformers alone: our packages blocked from import, whatever the editable install put on sys.path.
# argv: image, blocked package names, the repository root, then the export folders.
LOAD_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    BLOCKED = set(sys.argv[2].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the export must load with transformers alone")
            return None

    sys.meta_path.insert(0, Block())
    sys.path = [p for p in sys.path if p not in ("", sys.argv[3])]
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    results = []
    for folder in sys.argv[4:]:
        model, info = LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
        processor = AutoProcessor.from_pretrained(folder, backend="pil")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the circle"}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=Image.open(sys.argv[1]), text=prompt, return_tensors="pt", add_special_tokens=False)
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        new = output[0, inputs["input_ids"].shape[1]:]
        results.append({
            "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]), "prompt": prompt,
            "input_ids": inputs["input_ids"][0].tolist(), "tokens": new.tolist(),
            "text": processor.decode(new, skip_special_tokens=True),
        })
    print(json.dumps({"results": results, "ours_imported": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
    """
)


def test_transformers_alone_loads_the_export_and_generates_our_tokens(tiny_models, tmp_path):
    """Both projector kinds, exported by the command, loaded in one fresh process that cannot import this project."""
    outs = {kind: tmp_path / f"llava-{kind}" for kind in tiny_models}
    for kind, out in outs.items():
        assert main(["export", str(tiny_models[kind]), "--to", "llava", "--out", str(out)]) == 0
    image = tmp_path / "wide.png"
    make_image(7, (320, 180)).save(image)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(image), ",".join(OUR_PACKAGES), str(REPO), *map(str, outs.values())],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": ""},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["ours_imported"] == []
    for kind, theirs in zip(outs, loaded["results"]):
        assert theirs["missing"] == [] and theirs["unexpected"] == []
        model = VLMForCausalLM.from_pretrained(tiny_models[kind]).eval()
        processor = VLMProcessor.from_pretrained(tiny_models[kind])
        prompt = processor.apply_chat_template([{"role": "user", "content": "<image>\nwhat colour is the circle"}])
        assert theirs["prompt"] == prompt  # our chat template, structured content flattened as ours does
        inputs = processor(text=prompt, images=[load_image(image)])
        assert theirs["input_ids"] == inputs["input_ids"][0].tolist()
        ours = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
        assert theirs["tokens"] == ours[0, inputs["input_ids"].shape[1]:].tolist(), kind
        # and `vlm chat`'s own answer is the same text
        assert answer_once(model, processor, "what colour is the circle", images=[image], max_new_tokens=12) == theirs["text"]


def test_a_lora_adapter_is_merged_on_the_way(tiny_models, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = VLMForCausalLM.from_pretrained(tiny_models["linear"])
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "llava"
    report = export(tmp_path / "adapter", out, log=lambda _: None)
    assert report.merged and report.parity.greedy_equal and report.parity.logit_max_diff < 1e-5
    assert _leftovers(tmp_path, "llava") == ["llava"]  # the merge's temporary folder is gone


def _refused(argv: list[str], capsys) -> str:
    capsys.readouterr()  # what the test's own set-up printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vlm export: error: ") and "Traceback" not in err
    return err


def test_refuses_a_projector_with_no_llava_form(tiny_models, tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    for path in tiny_models["linear"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["projector_type"] = "mlp3x_gelu"
    (folder / "config.json").write_text(json.dumps(config))
    err = _refused(["export", str(folder), "--out", str(tmp_path / "llava")], capsys)
    assert "mlp3x_gelu" in err and "no LLaVA form" in err
    assert _leftovers(tmp_path, "llava") == []


def test_refuses_an_existing_out_without_overwrite(tiny_models, tmp_path, capsys):
    out = tmp_path / "llava"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _refused(["export", str(tiny_models["linear"]), "--out", str(out)], capsys)
    assert "already exists" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and _leftovers(tmp_path, "llava") == ["llava"]


def test_refuses_a_lora_checkpoint_whose_base_is_missing(tiny_models, tmp_path, capsys):
    import shutil

    from peft import LoraConfig, get_peft_model

    base_dir = tmp_path / "stage1"
    shutil.copytree(tiny_models["linear"], base_dir)
    lora = get_peft_model(VLMForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path / "checkpoint-4")
    shutil.rmtree(base_dir)
    err = _refused(["export", str(tmp_path / "checkpoint-4"), "--out", str(tmp_path / "llava")], capsys)
    assert "stage1" in err and "--base" in err
    assert _leftovers(tmp_path, "llava") == []


def test_a_failed_check_leaves_nothing_and_keeps_the_old_folder(tiny_models, tmp_path, monkeypatch):
    from apps.export import parity

    out = tmp_path / "llava"
    out.mkdir()
    (out / "keep.txt").write_text("old export")
    monkeypatch.setitem(parity.LOGIT_TOLERANCE, "fp32", -1.0)  # no logits can pass
    with pytest.raises(ExportError, match="logits differ"):
        export(tiny_models["linear"], out, overwrite=True, log=lambda _: None)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and _leftovers(tmp_path, "llava") == ["llava"]


def test_pad_to_square_exports_only_where_llava_pads_with_our_colour(llama_dir, tmp_path):
    # CLIP's mean: we pad with round(255 * mean) = (123, 117, 104), LLaVA with int(255 * mean) = (122, 116, 104)
    model, processor = build_tiny_vlm(llama_dir, pad_to_square=True)
    with pytest.raises(ExportError, match=r"pad_to_square.*\(123, 117, 104\).*\(122, 116, 104\)"):
        export(_save(model, processor, tmp_path / "clip-mean"), tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out").exists()
    # a mean whose 255 * mean is whole pads the same: LlavaImageProcessor(do_pad=True) is then exact
    config = {**copy.deepcopy(TINY_CLIP_CONFIG), "preprocess_cfg": {"image_mean": [0.4, 0.6, 0.2]}}
    model, processor = build_tiny_vlm(llama_dir, pad_to_square=True, vision_model_config=config)
    report = export(_save(model, processor, tmp_path / "whole-mean"), tmp_path / "out", log=lambda _: None)
    assert report.parity.pixel_max_diff <= 1e-5 and report.parity.greedy_equal
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["do_pad"] is True


def test_a_tower_with_no_clip_form_is_refused(llama_dir):
    config = copy.deepcopy(TINY_CLIP_CONFIG)
    config["vision_cfg"]["ls_init_value"] = 0.1  # layer scale: CLIPVisionModel has none
    model, _ = build_tiny_vlm(llama_dir, vision_model_config=config)
    with pytest.raises(ExportError, match="layer scale"):
        clip_vision_config(model)


class _Holder(torch.nn.Module):
    """Just enough of a VLMForCausalLM for the vision conversion."""

    def __init__(self, tower: VisionTower):
        super().__init__()
        self.vision_tower = tower


@pytest.mark.parametrize("shape", ["clip_vit_tiny", "ViT-B-16"])
def test_the_towers_trained_here_and_vit_b_16_map_to_clip(shape):
    """The custom tower of train/configs (4 blocks of width 192, what `python -m train.clip train` makes) and the
    ViT-B-16 shape with OpenAI's QuickGELU: CLIPVisionModel's hidden state gives our patch tokens."""
    import open_clip
    from transformers import CLIPVisionModel

    if shape == "ViT-B-16":
        model_config = {**open_clip.get_model_config("ViT-B-16"), "quick_gelu": True}
    else:
        model_config = json.loads((REPO / "train" / "configs" / "clip_vit_tiny.json").read_text())
    torch.manual_seed(0)
    tower = VisionTower({"model_name": shape, "open_clip_config": model_config}, feature_layer=-2)
    config = clip_vision_config(_Holder(tower))
    width = model_config["vision_cfg"]["width"]
    expected = {"ViT-B-16": (768, 12, 12, 3072, "quick_gelu"), "clip_vit_tiny": (192, 4, 3, 768, "gelu")}[shape]
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size, config.hidden_act) == expected
    assert width == expected[0] and config.layer_norm_eps == 1e-5 and (config.image_size, config.patch_size) == (224, 16)
    clip = CLIPVisionModel(config).eval()
    clip.load_state_dict(vision_state_dict(tower.visual.state_dict(), config.num_hidden_layers))
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        theirs = clip(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]  # CLS dropped ("default")
        ours = tower(pixels)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
