"""QLoRA on a tiny Llama: stage 2 on a 4-bit base (bitsandbytes' CPU backend), resume, merge onto the fp32 base."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import bitsandbytes as bnb  # in the test extra: these tests run in CI
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from eval.shapes import write_shapes_dataset
from tiny import build_tiny_vlm
from train.config import TrainConfig, load_config
from train.merge import QUANTIZED_FACTOR, MergeError, merge
from train.run import run_training
from train.stages import apply_stage
from vlm import VLMForCausalLM
from vlm.loading import load_model
from vlm.quantization import read_quantization


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(out, 16, seed=0, n_eval=2)
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A stage-1 model folder; the Llama is 64 wide so each quantized weight holds several 64-value blocks."""
    from tiny import save_llm_folder

    llm = save_llm_folder(tmp_path_factory.mktemp("llm64"), "llama", hidden_size=64)
    folder = tmp_path_factory.mktemp("base") / "stage1"
    model, processor = build_tiny_vlm(llm)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def config(tmp: Path, shapes: Path, base: Path, **overrides) -> TrainConfig:
    values = dict(
        stage="sft", init_from=str(base), data=[str(shapes / "instruct.json")], image_root=str(shapes), max_length=512,
        per_device_train_batch_size=4, max_steps=6, learning_rate=5e-3, warmup_ratio=0.0, save_steps=2, logging_steps=1,
        lora=True, lora_r=4, lora_alpha=8, quantization="nf4", output_dir=str(tmp / "run"), seed=0, bf16=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def losses(run: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in e}


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, shapes, base) -> Path:
    return run_training(config(tmp_path_factory.mktemp("qlora"), shapes, base)).parent


def test_qlora_trains_and_saves_only_the_adapter_and_projector(qlora_run, base):
    curve = losses(qlora_run)
    assert sorted(curve) == [1, 2, 3, 4, 5, 6] and sum(curve[s] for s in (4, 5, 6)) / 3 < curve[1]
    folders = [qlora_run / "model", *sorted(qlora_run.glob("checkpoint-*"))]
    assert [f.name for f in folders] == ["model", "checkpoint-4", "checkpoint-6"]
    base_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    for folder in folders:
        weights = load_file(str(folder / "adapter_model.safetensors"))
        assert all("lora_" in k or ".projector." in k for k in weights), sorted(weights)
        assert {t.dtype for t in weights.values()} == {torch.float32}  # nothing packed, nothing 4-bit
        assert [p.name for p in folder.glob("*.safetensors")] == ["adapter_model.safetensors"]
        assert read_quantization(folder).bnb_4bit_quant_type == "nf4"
        # Every file of the folder together is far smaller than the base: no copy of it travels along.
        assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < base_bytes / 2


def test_the_base_is_quantized_the_rest_full_precision_and_counts_equal_lora(shapes, base, tmp_path):
    from train.run import load_or_build

    lora_cfg = config(tmp_path, shapes, base, quantization=None)
    qlora_cfg = config(tmp_path, shapes, base)
    lora = apply_stage(load_or_build(lora_cfg)[0], lora_cfg)
    qlora = apply_stage(load_or_build(qlora_cfg)[0], qlora_cfg)
    trainable = {n: p.numel() for n, p in lora.named_parameters() if p.requires_grad}
    assert {n: p.numel() for n, p in qlora.named_parameters() if p.requires_grad} == trainable
    assert sum(trainable.values()) > 0
    vlm = qlora.get_base_model()
    llm_linears = [m for n, m in vlm.language_model.named_modules() if n.endswith(("q_proj", "down_proj"))]
    assert llm_linears and all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in llm_linears)
    quantized = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    for part in (vlm.vision_tower, vlm.projector, vlm.language_model.lm_head):
        assert not any(isinstance(m, quantized) for m in part.modules())
    # peft's k-bit preparation: every weight that is not quantized is fp32, norms included
    assert {p.dtype for n, p in vlm.named_parameters() if "norm" in n} == {torch.float32}
    assert {p.dtype for p in vlm.parameters()} == {torch.float32, torch.uint8}


class _Kill(TrainerCallback):
    """Stops the run abruptly right after a step, as a killed process would."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5:
            raise KeyboardInterrupt("killed at step 5")


def test_killed_and_resumed_qlora_run_equals_an_uninterrupted_one(qlora_run, shapes, base, tmp_path, monkeypatch):
    import train.run as run_module

    original = run_module.VLMTrainer

    def with_kill(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.add_callback(_Kill())
        return trainer

    monkeypatch.setattr(run_module, "VLMTrainer", with_kill)
    with pytest.raises(KeyboardInterrupt):
        run_training(config(tmp_path, shapes, base))
    monkeypatch.setattr(run_module, "VLMTrainer", original)
    assert not (tmp_path / "run" / "model").exists() and (tmp_path / "run" / "checkpoint-4").is_dir()
    resumed = run_training(config(tmp_path, shapes, base, resume=True))
    assert [losses(resumed.parent)[s] for s in range(1, 7)] == pytest.approx([losses(qlora_run)[s] for s in range(1, 7)], rel=1e-6)
    a, b = load_file(str(qlora_run / "model" / "adapter_model.safetensors")), load_file(str(resumed / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_merge_goes_onto_the_fp32_base_and_matches_the_quantized_model_within_the_stated_tolerance(qlora_run, base, tmp_path):
    from peft import PeftModel

    from train.merge import _logits, _probe_batch

    out = tmp_path / "merged"
    report = merge(qlora_run, out)
    assert report.quantization == "nf4" and report.kind == "lora"
    assert "vs the nf4-quantized base with the adapter" in report.verification_line()
    merged = VLMForCausalLM.from_pretrained(out)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.float32}
    # the weights are peft's own merge of the adapter onto the full-precision base
    expected = PeftModel.from_pretrained(VLMForCausalLM.from_pretrained(base), qlora_run / "model").merge_and_unload().state_dict()
    for key, tensor in merged.state_dict().items():
        torch.testing.assert_close(tensor, expected[key], rtol=0, atol=0, msg=key)
    # against the model as trained: the quantized base with the adapter, loaded as chat / eval load the run
    quantized, processor = load_model(qlora_run)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantized.modules())
    probe = _probe_batch(processor)
    as_trained, after = _logits(quantized, probe), _logits(merged.eval(), probe)
    gap = float((after - as_trained).abs().max())
    assert gap == pytest.approx(report.quantized_diff, rel=1e-5)
    assert 0 < gap <= report.quantized_tolerance  # nonzero: the base really was quantized in training
    # the default bound is measured: what nf4 does to the base alone, times QUANTIZED_FACTOR (+ fp32's merge tolerance)
    with quantized.disable_adapter():
        cost = float((_logits(quantized, probe) - _logits(VLMForCausalLM.from_pretrained(base).eval(), probe)).abs().max())
    assert report.quantized_cost == pytest.approx(cost, rel=1e-4) and cost > 0
    scale = max(1.0, float(as_trained.abs().max()))
    assert report.quantized_tolerance == pytest.approx(QUANTIZED_FACTOR * cost + 1e-4 * scale, rel=1e-4)  # fp32 merge
    # a bound tighter than what nf4 costs fails the merge and writes nothing
    with pytest.raises(MergeError, match="more than nf4 quantization costs"):
        merge(qlora_run, tmp_path / "too-tight", quantized_tolerance=gap / 10 / max(1.0, float(as_trained.abs().max())))
    assert not (tmp_path / "too-tight").exists()


def test_eval_takes_the_unmerged_qlora_run_on_its_quantized_base(qlora_run, base, shapes, tmp_path):
    from peft import PeftModel

    from eval.runner import run_eval
    from vlm.processing import VLMProcessor
    from vlm.quantization import load_quantized

    result = run_eval(qlora_run, "shapes", shapes / "eval.json", tmp_path / "run", limit=4, max_new_tokens=6, progress=False)
    assert result.num_generated == 4
    # the same questions to the adapter put by hand on the base quantized as training recorded it
    by_hand = PeftModel.from_pretrained(load_quantized(base, read_quantization(qlora_run / "model")), qlora_run / "model").eval()
    reference = run_eval((by_hand, VLMProcessor.from_pretrained(qlora_run / "model")), "shapes", shapes / "eval.json",
                         tmp_path / "by-hand", limit=4, max_new_tokens=6, progress=False)

    def answers(folder: Path) -> dict[str, str]:
        return {r["id"]: r["answer"] for r in map(json.loads, (folder / "predictions.jsonl").read_text().splitlines())}

    assert answers(result.output_dir) == answers(reference.output_dir) and len(answers(result.output_dir)) == 4


# --- the early errors ---------------------------------------------------------------------------


def test_qlora_without_lora_or_with_an_unknown_kind_is_refused(shapes, base, tmp_path):
    with pytest.raises(ValueError, match="quantization=nf4 \\(QLoRA\\) needs lora=true"):
        config(tmp_path, shapes, base, lora=False)
    with pytest.raises(ValueError, match="quantization='nf3' is not one of nf4, fp4, int8"):
        config(tmp_path, shapes, base, quantization="nf3")
    with pytest.raises(ValueError, match="compute_dtype='fp8' is not one of auto, fp32, bf16, fp16"):
        config(tmp_path, shapes, base, compute_dtype="fp8")
    assert load_config("sft_qlora", ["data=[x.json]"]).quantization == "nf4"


def test_missing_bitsandbytes_says_how_to_install_it(shapes, base, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    with pytest.raises(ValueError, match=r"needs bitsandbytes, which is not installed: pip install -e \.\[qlora\]"):
        config(tmp_path, shapes, base)


def test_a_quantization_the_backend_lacks_is_refused_before_anything_loads(shapes, base, tmp_path, monkeypatch):
    def no_fp4(self, *args, **kwargs):
        raise NotImplementedError("4-bit fp4 is not implemented for this device")

    monkeypatch.setattr(bnb.nn.Linear4bit, "forward", no_fp4)
    with pytest.raises(ValueError, match=r"bitsandbytes \S+ cannot run quantization=fp4 on cpu \(NotImplementedError: 4-bit fp4"):
        config(tmp_path, shapes, base, quantization="fp4")


def test_vlm_train_prints_the_error_in_one_line(shapes, base, tmp_path, capsys):
    from train.cli import main

    code = main(["sft_qlora", f"init_from={base}", f"data=[{shapes / 'instruct.json'}]", "lora=false"])
    err = capsys.readouterr().err
    assert code == 2 and "needs lora=true" in err and "Traceback" not in err


def test_gradient_checkpointing_gives_the_same_steps(qlora_run, shapes, base, tmp_path):
    run = run_training(config(tmp_path, shapes, base, gradient_checkpointing=True, max_steps=2)).parent
    # step 2's loss follows one update at the same learning rate in both runs (no warm-up)
    assert [losses(run)[s] for s in (1, 2)] == pytest.approx([losses(qlora_run)[s] for s in (1, 2)], rel=1e-5)


# --- DeepSpeed: 2 CPU processes over gloo ------------------------------------------------------


def test_zero2_and_zero3_train_the_same_qlora_steps_resume_and_merge(shapes, base, tmp_path):
    import yaml

    from tiny import run_deepspeed

    runs = {}
    for zero, port in (("zero2", 29641), ("zero3", 29642)):
        cfg = config(tmp_path, shapes, base, deepspeed=zero, per_device_train_batch_size=2, max_steps=3,
                     output_dir=str(tmp_path / zero)).to_dict()
        path = tmp_path / f"{zero}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        result = run_deepspeed(path, port=port)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[zero] = (tmp_path / zero, path, port)
    assert losses(runs["zero3"][0]) == pytest.approx(losses(runs["zero2"][0]), rel=1e-5)
    # the DeepSpeed module state holds the trained tensors only: no quantization constants, no tied head
    for zero in runs:
        for states in (runs[zero][0] / "checkpoint-2").rglob("*model_states.pt"):
            module = torch.load(states, weights_only=False, map_location="cpu")["module"]
            assert module and all("lora_" in k or "modules_to_save" in k for k in module), sorted(module)[:5]
    run, path, port = runs["zero3"]
    resumed = run_deepspeed(path, "max_steps=4", "resume=true", port=port)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and sorted(losses(run)) == [1, 2, 3, 4]
    merged = {}
    for zero in runs:
        report = merge(runs[zero][0] / "checkpoint-3", tmp_path / f"merged-{zero}")
        assert report.zero and report.quantization == "nf4" and report.quantized_diff <= report.quantized_tolerance
        merged[zero] = VLMForCausalLM.from_pretrained(tmp_path / f"merged-{zero}").state_dict()
    for key in merged["zero2"]:
        torch.testing.assert_close(merged["zero3"][key], merged["zero2"][key], rtol=1e-5, atol=1e-6, msg=key)
