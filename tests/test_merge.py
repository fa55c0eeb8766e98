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


# ------------------------------------------------------------------ crafted checkpoints (issue: a checkpoint can run code)


def test_every_pickle_deepspeed_and_the_trainer_write_loads_weights_only(runs):
    """The allowlist is exactly enough: each .pt/.pth of real ZeRO-2/3 (LoRA and full) checkpoints loads with it."""
    from train.checkpoint_types import training_state_types
    from vlm.safe_load import UnsafePickleError, load_pickle

    for name in RUNS:
        checkpoint = runs[name] / "checkpoint-3"
        pickles = [p for p in checkpoint.rglob("*") if p.suffix in (".pt", ".pth")]
        assert len(pickles) >= 5, pickles  # model states, 2 optimizer shards, scheduler, 2 RNG states
        for path in pickles:
            load_pickle(path, training_state_types())
        with pytest.raises(UnsafePickleError, match="training_args.bin: refused"):  # loaded by nothing
            load_pickle(checkpoint / "training_args.bin", training_state_types())


@pytest.fixture(scope="module")
def crafted(runs, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Copies of the ZeRO-2 runs whose checkpoint-3 has a payload in a model-states / optimizer shard."""
    from hostile import plant
    from train.checkpoint_types import training_state_types

    root = tmp_path_factory.mktemp("crafted")
    out = {}
    for name, shard in (("zero2-full", "mp_rank_00_model_states.pt"), ("zero2-lora", "zero_pp_rank_1_mp_rank_00_optim_states.pt")):
        run = root / name
        shutil.copytree(runs[name], run, ignore=shutil.ignore_patterns("model", "checkpoint-1", "checkpoint-2"))
        marker = root / f"{name}.ran"
        plant(run / "checkpoint-3" / "global_step3" / shard, marker, training_state_types())
        out[name] = (run, marker)
    return out


@pytest.mark.parametrize("name", ["zero2-full", "zero2-lora"])
def test_merge_of_a_crafted_zero_checkpoint_is_refused_and_runs_nothing(name, crafted, tmp_path, capsys):
    from apps.cli import main as vlm_main

    run, marker = crafted[name]
    code = vlm_main(["merge", str(run / "checkpoint-3"), "--out", str(tmp_path / "merged")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and not marker.exists()
    assert err.startswith(f"vlm merge: error: {run / 'checkpoint-3' / 'global_step3'}/") and "refused to load" in err, err
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.tmp-*"))


@pytest.mark.parametrize("name", ["zero2-full", "zero2-lora"])
def test_chat_with_a_crafted_zero_checkpoint_never_reads_the_shards(name, crafted, capsys):
    """chat loads the checkpoint's safetensors (model or adapter) only: the payload stays inert."""
    from apps.cli import main as vlm_main

    run, marker = crafted[name]
    assert vlm_main(["chat", "--model", str(run / "checkpoint-3"), "--prompt", "hi", "--max-new-tokens", "2"]) == 0
    assert not marker.exists()


def test_resume_of_a_crafted_zero_checkpoint_is_refused_and_runs_nothing(crafted):
    run, marker = crafted["zero2-full"]
    config = run.parent / "resume.yaml"
    settings = yaml.safe_load((run / "train_config.yaml").read_text())
    config.write_text(yaml.safe_dump({**settings, "output_dir": str(run), "max_steps": 4, "resume": True}))
    result = run_deepspeed(config, port=29631)
    assert result.returncode != 0 and not marker.exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("train: error:")]
    assert len(errors) == 1, result.stderr[-3000:]  # said once, not once per process
    assert f"{run / 'checkpoint-3' / 'global_step3' / 'mp_rank_00_model_states.pt'}: refused to load" in errors[0]
    assert not (run / "checkpoint-4").exists()
