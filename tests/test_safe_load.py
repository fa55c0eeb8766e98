"""Pickles that would run code are refused, named, and never run: the loads of chat, resume and merge.

The payload is a real one: ``Payload`` pickles as a call of ``open(MARKER, "w")``, which creates
the marker file when a plain ``torch.load(weights_only=False)`` unpickles it (checked first).
The DeepSpeed ZeRO-2 cases (merge, resume, chat of a crafted shard) are in ``test_merge.py``,
which has the real 2-process checkpoints.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from apps.cli import main as vlm_main
from eval.shapes import write_shapes_dataset
from hostile import Payload, plant
from tiny import build_tiny_vlm
from train.checkpoint_types import training_state_types
from train.config import TrainConfig
from train.run import run_training
from vlm import VLMForCausalLM
from vlm.safe_load import UnsafePickleError, load_pickle, weights_only_loads


def test_the_payload_is_live_without_the_safe_load(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"w": torch.zeros(2), "p": Payload(marker)}, tmp_path / "x.pt")
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()  # so the absence of the marker below means the code did not run


def test_weights_only_loads_overrides_weights_only_false_and_names_the_file(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"w": torch.ones(3), "p": Payload(marker)}, tmp_path / "evil.pt")
    torch.save({"w": torch.ones(3)}, tmp_path / "good.pt")
    original = torch.load
    with weights_only_loads():
        assert torch.equal(torch.load(tmp_path / "good.pt", weights_only=False)["w"], torch.ones(3))
        with pytest.raises(UnsafePickleError, match=r"evil\.pt: refused to load: this pickle needs io\.open") as err:
            torch.load(tmp_path / "evil.pt", map_location="cpu", weights_only=False)  # as DeepSpeed calls it
        # loads that bypass torch.load go through torch's own switch
        with pytest.raises(Exception, match="Weights only load failed"):
            torch.serialization.load(tmp_path / "evil.pt", weights_only=False)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    assert torch.load is original and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_the_allowlist_is_scoped_to_the_block(tmp_path):
    from deepspeed.runtime.zero.config import ZeroStageEnum

    torch.save({"stage": ZeroStageEnum.gradients}, tmp_path / "stage.pt")
    assert load_pickle(tmp_path / "stage.pt", training_state_types())["stage"] == ZeroStageEnum.gradients
    with pytest.raises(UnsafePickleError, match="stage.pt: .*ZeroStageEnum"):
        load_pickle(tmp_path / "stage.pt")


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, llama_dir, vision_json) -> Path:
    """A single-process stage-1 run of 2 steps with a checkpoint at step 2 (optimizer, scheduler, RNG pickles)."""
    root = tmp_path_factory.mktemp("plain-run")
    write_shapes_dataset(root / "shapes", 4, seed=0, n_eval=1)
    run_training(plain_config(root / "run", root / "shapes", llm=str(llama_dir), vision_config=vision_json))
    return root


def plain_config(output_dir: Path, shapes: Path, **overrides) -> TrainConfig:
    values = dict(
        stage="pretrain", data=[str(shapes / "captions.json")], image_root=str(shapes), max_length=512,
        per_device_train_batch_size=2, max_steps=2, save_steps=2, learning_rate=1e-2, warmup_ratio=0.0,
        output_dir=str(output_dir), seed=0, bf16=False, vision_pretrained=None,
    )
    return TrainConfig(**{**values, **overrides})


def test_every_pickle_of_a_plain_checkpoint_loads_with_the_allowlist(plain_run):
    checkpoint = plain_run / "run" / "checkpoint-2"
    pickles = sorted(p.name for p in checkpoint.iterdir() if p.suffix in (".pt", ".pth", ".bin"))
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"} <= set(pickles)
    for name in pickles:
        if name == "training_args.bin":  # a pickled TrainingArguments: nothing loads it, and it stays refused
            with pytest.raises(UnsafePickleError, match="training_args.bin: refused"):
                load_pickle(checkpoint / name, training_state_types())
        else:
            load_pickle(checkpoint / name, training_state_types())


@pytest.mark.parametrize("name", ["optimizer.pt", "rng_state.pth", "scheduler.pt"])
def test_resume_refuses_a_crafted_training_state(name, plain_run, tmp_path, llama_dir, vision_json, capsys):
    run = tmp_path / "run"
    shutil.copytree(plain_run / "run", run)
    marker = tmp_path / "ran"
    plant(run / "checkpoint-2" / name, marker, training_state_types())
    cfg = plain_config(run, plain_run / "shapes", llm=str(llama_dir), vision_config=vision_json, max_steps=3, resume=True)
    with pytest.raises(UnsafePickleError, match=rf"checkpoint-2/{name.replace('.', '[.]')}: refused to load"):
        run_training(cfg)
    assert not marker.exists()
    assert not (run / "checkpoint-3").exists()


def test_chat_refuses_a_crafted_adapter_bin(tmp_path, llama_dir, capsys):
    from peft import LoraConfig, get_peft_model

    model, processor = build_tiny_vlm(llama_dir)
    base = tmp_path / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    adapter = tmp_path / "adapter"
    lora = get_peft_model(VLMForCausalLM.from_pretrained(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(adapter, safe_serialization=False)  # adapter_model.bin, as older peft wrote
    processor.save_pretrained(adapter)
    marker = tmp_path / "ran"
    plant(adapter / "adapter_model.bin", marker)
    assert not (adapter / "adapter_model.safetensors").exists()
    code = vlm_main(["chat", "--model", str(adapter), "--prompt", "hi", "--max-new-tokens", "2"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and not marker.exists()
    assert err.startswith(f"vlm chat: error: {adapter / 'adapter_model.bin'}: refused to load"), err
