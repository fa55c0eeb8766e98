"""`vlm merge` on real ZeRO-2 / ZeRO-3 checkpoints (2-process CPU DeepSpeed runs made here), with and without LoRA."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from eval.shapes import write_shapes_dataset
from tiny import build_tiny_vlm, run_deepspeed, save_llm_folder
from train.merge import MergeError, load_unmerged, merge
from vlm import VLMForCausalLM

RUNS = {"zero2-full": ("zero2", False), "zero2-lora": ("zero2", True), "zero3-full": ("zero3", False), "zero3-lora": ("zero3", True)}


@pytest.fixture(scope="module")
def base(tmp_path_factory, llama_dir) -> Path:
    folder = tmp_path_factory.mktemp("base") / "stage1"
    model, processor = build_tiny_vlm(llama_dir)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, base) -> dict[str, Path]:
    """Four real 2-process DeepSpeed runs (3 steps, a checkpoint every step)."""
    root = tmp_path_factory.mktemp("ds-runs")
    shapes = root / "shapes"
    write_shapes_dataset(shapes, 12, seed=1, n_eval=1)
    out = {}
    for port, (name, (zero, lora)) in enumerate(RUNS.items(), start=29621):
        config = root / f"{name}.yaml"
        config.write_text(yaml.safe_dump({
            "stage": "sft", "init_from": str(base), "data": [str(shapes / "instruct.json")], "image_root": str(shapes),
            "max_length": 512, "per_device_train_batch_size": 2, "max_steps": 3, "save_steps": 1, "save_total_limit": None,
            "learning_rate": 5e-3, "warmup_ratio": 0.0, "lora": lora, "lora_r": 4, "lora_alpha": 8, "seed": 0,
            "bf16": False, "deepspeed": zero, "output_dir": str(root / name),
        }))
        result = run_deepspeed(config, port=port)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        out[name] = root / name
    return out


def deepspeed_script_weights(checkpoint: Path, tmp: Path) -> dict[str, torch.Tensor]:
    """Consolidate with the zero_to_fp32.py script DeepSpeed saved into the checkpoint."""
    out = tmp / f"script-{checkpoint.parent.name}-{checkpoint.name}"
    # torch format: the script's safetensors writer refuses the tied embedding / lm_head pair
    subprocess.run([sys.executable, str(checkpoint / "zero_to_fp32.py"), str(checkpoint), str(out)], check=True, capture_output=True)
    weights = {}
    for file in sorted(out.glob("*.bin")):
        weights.update(torch.load(file, weights_only=True))
    assert weights, f"the script wrote nothing into {out}"
    return weights


@pytest.mark.parametrize("name", list(RUNS))
def test_merged_weights_equal_deepspeeds_own_consolidation(name, runs, base, tmp_path):
    checkpoint = runs[name] / "checkpoint-3"
    report = merge(checkpoint, tmp_path / "merged")
    assert report.zero and report.kind == ("lora" if "lora" in name else "full")
    assert report.max_abs_diff is not None and report.max_abs_diff <= report.tolerance
    merged = VLMForCausalLM.from_pretrained(tmp_path / "merged").state_dict()

    script = deepspeed_script_weights(checkpoint, tmp_path)
    if "lora" in name:
        # the script's fp32 weights, put into the peft model and merged by peft itself
        from peft import LoraConfig, get_peft_model

        reference = get_peft_model(VLMForCausalLM.from_pretrained(base), LoraConfig.from_pretrained(checkpoint))
        result = reference.load_state_dict(script, strict=False)  # frozen base weights are not in LoRA checkpoints
        assert not result.unexpected_keys
        assert {n for n, p in reference.named_parameters() if p.requires_grad} <= set(script)
        expected = reference.merge_and_unload().state_dict()
    else:
        expected = script
    assert set(merged) <= set(expected) | {"language_model.lm_head.weight"}
    for key, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[key], rtol=0, atol=0, msg=key)
    # training really changed something, so equality is not trivially base == base
    base_weights = VLMForCausalLM.from_pretrained(base).state_dict()
    assert not torch.equal(merged["projector.weight"], base_weights["projector.weight"])


def test_intermediate_checkpoint_merges_and_differs_from_the_last(runs, tmp_path):
    merge(runs["zero3-lora"] / "checkpoint-1", tmp_path / "step1")
    merge(runs["zero3-lora"] / "checkpoint-3", tmp_path / "step3")
    first = VLMForCausalLM.from_pretrained(tmp_path / "step1").state_dict()
    last = VLMForCausalLM.from_pretrained(tmp_path / "step3").state_dict()
    assert not torch.equal(first["projector.weight"], last["projector.weight"])


def test_merged_folder_loads_without_peft_or_deepspeed(runs, tmp_path):
    out = tmp_path / "merged"
    report = merge(runs["zero2-lora"], out, dtype="bf16")  # a run folder: its final model
    assert not report.zero and report.kind == "lora"
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "processor_config.json", "tokenizer.json", "chat_template.jinja"} <= files
    assert any(f.endswith(".safetensors") for f in files) and not any(f.endswith((".bin", ".pt")) for f in files)
    code = (
        "import sys, vlm, torch\n"
        "from transformers import AutoModelForCausalLM, AutoProcessor\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); p = AutoProcessor.from_pretrained({str(out)!r})\n"
        "assert type(m).__name__ == 'VLMForCausalLM' and type(p).__name__ == 'VLMProcessor', (type(m), type(p))\n"
        "assert m.dtype == torch.bfloat16, m.dtype\n"
        "assert 'peft' not in sys.modules and 'deepspeed' not in sys.modules, [k for k in sys.modules if k in ('peft', 'deepspeed')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_sharded_output(runs, tmp_path):
    merge(runs["zero2-full"] / "checkpoint-2", tmp_path / "sharded", max_shard_size="200KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    VLMForCausalLM.from_pretrained(tmp_path / "sharded")


def test_missing_rank_shard_is_an_error_and_writes_nothing(runs, tmp_path):
    broken = tmp_path / "checkpoint-2"
    shutil.copytree(runs["zero2-full"] / "checkpoint-2", broken)
    for shard in (broken / "global_step2").glob("*rank_1*"):
        shard.unlink()
    with pytest.raises(MergeError, match="cannot consolidate the ZeRO checkpoint"):
        merge(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_adapter_that_does_not_fit_the_base_is_an_error(runs, tmp_path):
    other = tmp_path / "other-base"
    model, processor = build_tiny_vlm(save_llm_folder(tmp_path / "wider-llm", "llama", hidden_size=48))
    model.save_pretrained(other)
    processor.save_pretrained(other)
    with pytest.raises(MergeError, match="does not fit the base model"):
        merge(runs["zero2-lora"] / "model", tmp_path / "out", base=other)
    assert not (tmp_path / "out").exists()


def test_failed_verification_writes_nothing(runs, tmp_path):
    with pytest.raises(MergeError, match="verification failed"):
        merge(runs["zero2-lora"] / "model", tmp_path / "out", dtype="bf16", tolerance=1e-12)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_existing_output_is_never_overwritten_without_the_flag(runs, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        merge(runs["zero2-full"], tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_unmerged_loading_names_the_base_from_the_checkpoint(runs, base):
    model, _, base_path, kind, zero = load_unmerged(runs["zero2-lora"] / "checkpoint-1")
    assert kind == "lora" and zero and base_path == base
    assert json.loads((runs["zero2-lora"] / "checkpoint-1" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
