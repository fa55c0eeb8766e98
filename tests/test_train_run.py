"""Whole training runs on tiny models and generated data: what changes, what falls, what resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from eval.shapes import write_shapes_dataset
from train.config import TrainConfig
from train.run import run_training
from vlm import VLMForCausalLM


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(out, 16, seed=0, n_eval=1)
    return out


def config(tmp_path: Path, shapes: Path, **overrides) -> TrainConfig:
    values = dict(
        stage="pretrain", data=[str(shapes / "captions.json")], image_root=str(shapes), max_length=512,
        per_device_train_batch_size=4, max_steps=8, learning_rate=1e-2, warmup_ratio=0.0, save_steps=4,
        logging_steps=1, output_dir=str(tmp_path / "run"), seed=0, bf16=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def losses(run_dir: Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in e]


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, shapes, llama_dir, vision_json) -> Path:
    tmp = tmp_path_factory.mktemp("stage1")
    cfg = config(tmp, shapes, llm=str(llama_dir), vision_config=vision_json, vision_pretrained=None)
    return run_training(cfg)


def test_stage1_trains_only_the_projector_and_loss_falls(stage1, llama_dir, vision_json, tmp_path, shapes):
    from train.run import load_or_build

    cfg = config(tmp_path, shapes, llm=str(llama_dir), vision_config=vision_json, vision_pretrained=None)
    torch.manual_seed(0)
    before, _ = load_or_build(cfg)
    after = VLMForCausalLM.from_pretrained(stage1)
    old, new = state(before), state(after)
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed == {"projector.weight", "projector.bias"}
    run = stage1.parent
    curve = losses(run)
    assert len(curve) == 8 and sum(curve[-3:]) / 3 < curve[0]
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(e["samples_per_second"] > 0 for e in entries[1:] if "loss" in e)
    for name in ("train_config.yaml", "metrics.jsonl", "loss.png"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]


def test_stage2_full_trains_llm_and_projector_never_the_tower(stage1, tmp_path, shapes):
    cfg = config(tmp_path, shapes, stage="sft", init_from=str(stage1), data=[str(shapes / "instruct.json")], learning_rate=1e-3)
    final = run_training(cfg)
    old, new = state(VLMForCausalLM.from_pretrained(stage1)), state(VLMForCausalLM.from_pretrained(final))
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith("vision_tower."))
    assert not torch.equal(old["projector.weight"], new["projector.weight"])
    llm_changed = [k for k in old if k.startswith("language_model.") and not torch.equal(old[k], new[k])]
    assert any("layers.0.self_attn.q_proj" in k for k in llm_changed) and any("layers.1.mlp" in k for k in llm_changed)
    curve = losses(final.parent)
    assert sum(curve[-3:]) / 3 < curve[0]


def test_stage2_lora_changes_adapters_and_projector_only(stage1, tmp_path, shapes):
    cfg = config(
        tmp_path, shapes, stage="sft", init_from=str(stage1), data=[str(shapes / "instruct.json")], lora=True,
        lora_r=4, lora_alpha=8, learning_rate=5e-3, projector_lr=1e-3,
    )
    final = run_training(cfg)
    adapter = load_file(str(final / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in adapter) and any("lora_B" in k for k in adapter)
    assert not any("vision_tower" in k or "lm_head" in k for k in adapter)
    # the projector travels with every adapter (modules_to_save), so each checkpoint can be merged
    projector_keys = [k for k in adapter if "projector" in k]
    assert projector_keys
    base = state(VLMForCausalLM.from_pretrained(stage1))
    assert not torch.equal(adapter[[k for k in projector_keys if k.endswith("weight")][0]], base["projector.weight"])
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(stage1)
    for checkpoint in final.parent.glob("checkpoint-*"):
        assert any("projector" in k for k in load_file(str(checkpoint / "adapter_model.safetensors")))


class _Kill(TrainerCallback):
    """Stops the run abruptly right after a step, as a killed process would."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt(f"killed at step {self.at_step}")


def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path, shapes, stage1, monkeypatch):
    common = dict(stage="sft", init_from=str(stage1), data=[str(shapes / "instruct.json")], learning_rate=1e-3, save_steps=2, max_steps=6)
    straight = run_training(config(tmp_path / "a", shapes, **common))

    import train.run as run_module

    original = run_module.VLMTrainer

    def with_kill(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.add_callback(_Kill(at_step=5))
        return trainer

    monkeypatch.setattr(run_module, "VLMTrainer", with_kill)
    with pytest.raises(KeyboardInterrupt):
        run_training(config(tmp_path / "b", shapes, **common))
    monkeypatch.setattr(run_module, "VLMTrainer", original)
    assert not (tmp_path / "b" / "run" / "model").exists()
    resumed = run_training(config(tmp_path / "b", shapes, **common, resume=True))

    first = losses(straight.parent)
    second = [e for e in map(json.loads, (resumed.parent / "metrics.jsonl").read_text().splitlines()) if "loss" in e]
    by_step = {e["step"]: e["loss"] for e in second}  # steps 5 is logged twice: killed run, then resumed run
    assert [by_step[s] for s in range(1, 7)] == pytest.approx(first, rel=1e-6)
    a, b = state(VLMForCausalLM.from_pretrained(straight)), state(VLMForCausalLM.from_pretrained(resumed))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_resuming_under_other_settings_is_said_and_the_earlier_ones_kept(tmp_path, shapes, stage1, capsys):
    common = dict(stage="sft", init_from=str(stage1), data=[str(shapes / "instruct.json")], learning_rate=1e-3, save_steps=2)
    first = run_training(config(tmp_path, shapes, **common, max_steps=4))
    run = first.parent
    capsys.readouterr()
    # Only bookkeeping changed: nothing to say, nothing kept, and the finished run stays as it was.
    run_training(config(tmp_path, shapes, **common, max_steps=4, resume=True, logging_steps=2, save_total_limit=1))
    assert "other settings" not in capsys.readouterr().err and not list(run.glob("train_config.before-*"))
    assert max(e["step"] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())) == 4
    # Training a finished run on: a larger max_steps and another learning rate are named, the run goes on to step 6.
    run_training(config(tmp_path, shapes, **{**common, "learning_rate": 5e-4}, max_steps=6, resume=True))
    err = capsys.readouterr().err
    assert f"warning: resuming {run / 'checkpoint-4'} under other settings" in err
    assert "learning_rate 0.001 -> 0.0005, max_steps 4 -> 6." in err
    earlier = yaml.safe_load((run / "train_config.before-checkpoint-4.yaml").read_text())
    assert (earlier["max_steps"], earlier["learning_rate"]) == (4, 1e-3)
    assert yaml.safe_load((run / "train_config.yaml").read_text())["max_steps"] == 6
    assert [e["step"] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in e][-2:] == [5, 6]


def test_a_new_run_never_overwrites_an_old_one(stage1, shapes, llama_dir, vision_json):
    cfg = config(stage1.parent.parent, shapes, llm=str(llama_dir), vision_config=vision_json, vision_pretrained=None)
    with pytest.raises(FileExistsError, match="resume=true"):
        run_training(cfg)


def test_bad_records_stop_the_run_or_are_skipped_and_counted(tmp_path, shapes, stage1, capsys):
    records = json.loads((shapes / "instruct.json").read_text())[:6]
    records[1]["image"] = "images/missing.png"
    records[4]["conversations"][0]["value"] = "<image>\n" + "describe the picture in detail " * 80  # too long
    data = tmp_path / "mixed.json"
    data.write_text(json.dumps(records))
    common = dict(stage="sft", init_from=str(stage1), data=[str(data)], image_root=str(shapes), max_length=300, max_steps=1)
    from train.data import BadSampleError

    with pytest.raises(BadSampleError, match=r"mixed\.json record 1 .*missing\.png"):
        run_training(config(tmp_path / "strict", shapes, **common))
    run_training(config(tmp_path / "lenient", shapes, **common, skip_bad_samples=True))
    err = capsys.readouterr().err
    assert "skipped 2 of 6 samples" in err
    assert "missing.png" in err and "max_length=300" in err


def test_calibrated_projector_starts_at_the_embedding_norm(tmp_path, shapes, llama_dir, vision_json):
    from train.dataset import prepare_dataset
    from train.run import calibrate_on_dataset, load_or_build

    cfg = config(tmp_path, shapes, llm=str(llama_dir), vision_config=vision_json, vision_pretrained=None,
                 projector_init="calibrate", calibration_images=8)
    torch.manual_seed(0)
    model, processor = load_or_build(cfg)
    dataset, _ = prepare_dataset(cfg.data, cfg.image_root, processor, cfg.max_length, False, progress=False)
    pixels = torch.cat([dataset[i]["pixel_values"] for i in range(8)])
    with torch.no_grad():
        features = model.vision_tower(pixels)
        before = model.projector(features)
    stats = calibrate_on_dataset(model, dataset, 8)
    target = model.get_input_embeddings().weight.norm(dim=-1).mean().item()
    with torch.no_grad():
        after = model.projector(features)
    assert stats["target_norm"] == pytest.approx(target) and stats["norm_before"] == pytest.approx(before.norm(dim=-1).mean().item(), rel=1e-4)
    assert after.norm(dim=-1).mean().item() == pytest.approx(target, rel=1e-3)
    assert after.reshape(-1, after.shape[-1]).mean(dim=0).abs().max().item() < 1e-4  # the shared component is gone
    with pytest.raises(ValueError, match="init_from brings a trained one"):
        config(tmp_path, shapes, stage="sft", init_from="x", projector_init="calibrate")
    # Wired into a run: the log says it happened, and the run trains as usual.
    final = run_training(config(tmp_path / "run2", shapes, llm=str(llama_dir), vision_config=vision_json,
                                vision_pretrained=None, projector_init="calibrate", calibration_images=8, max_steps=2))
    assert (final / "config.json").is_file()


def test_group_by_length_uses_the_measured_lengths(tmp_path, shapes, llama_dir, vision_json):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from train.dataset import VLMCollator, prepare_dataset
    from train.run import load_or_build, training_arguments
    from train.trainer import VLMTrainer

    cfg = config(tmp_path, shapes, llm=str(llama_dir), vision_config=vision_json, vision_pretrained=None,
                 data=[str(shapes / "instruct.json")], group_by_length=True, per_device_train_batch_size=2)
    model, processor = load_or_build(cfg)
    dataset, _ = prepare_dataset(cfg.data, cfg.image_root, processor, cfg.max_length, False, progress=False)
    assert dataset.lengths == [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
    assert len(set(dataset.lengths)) > 4  # 1-3 turn conversations: lengths differ
    trainer = VLMTrainer(model=model, args=training_arguments(cfg), train_dataset=dataset,
                         data_collator=VLMCollator(processor.tokenizer.pad_token_id))
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler) and sampler.lengths == dataset.lengths
    order = list(sampler)
    assert sorted(order) == list(range(len(dataset)))  # every sample once per epoch

    def padding(indices):  # padded tokens of consecutive batches of 2
        batches = [indices[i : i + 2] for i in range(0, len(indices), 2)]
        return sum(2 * max(dataset.lengths[j] for j in b) - sum(dataset.lengths[j] for j in b) for b in batches)

    assert padding(order) < padding(list(range(len(dataset))))
    plain = VLMTrainer(model=model, args=training_arguments(config(tmp_path, shapes, llm=str(llama_dir))), train_dataset=dataset,
                       data_collator=VLMCollator(processor.tokenizer.pad_token_id))
    assert not isinstance(plain._get_train_sampler(), LengthGroupedSampler)


def test_an_image_that_breaks_after_the_check_is_replaced_and_counted_with_skip_bad_samples(tmp_path, shapes, stage1, monkeypatch):
    """skip_bad_samples covers images that fail during training too (damaged after the check): the next sample
    stands in, the count lands in the report; without the option the failure names the record."""
    import shutil

    from train.data import BadSampleError
    from train.dataset import prepare_dataset
    from vlm.processing import VLMProcessor

    monkeypatch.setenv("VLM_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    shutil.copytree(shapes / "images", root / "images")
    records = json.loads((shapes / "instruct.json").read_text())[:4]
    (tmp_path / "d.json").write_text(json.dumps(records))
    processor = VLMProcessor.from_pretrained(stage1)
    lenient, report = prepare_dataset([str(tmp_path / "d.json")], str(root), processor, 512, skip_bad=True, progress=False)
    strict, _ = prepare_dataset([str(tmp_path / "d.json")], str(root), processor, 512, skip_bad=False, progress=False)
    broken = root / records[1]["image"]
    broken.write_bytes(broken.read_bytes()[:200])

    assert torch.equal(lenient[1]["input_ids"], strict[2]["input_ids"])  # sample 2 stood in for the broken 1
    assert torch.equal(lenient[0]["input_ids"], strict[0]["input_ids"])
    lenient[1]  # a known-bad sample is not retried or counted twice
    assert report.in_training == 1 and "1 more sample failed to load during training" in report.summary()
    assert broken.name in report.summary()
    with pytest.raises(BadSampleError, match=rf"d\.json record 1 .*{broken.name}"):
        strict[1]
