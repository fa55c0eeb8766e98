"""Real DeepSpeed ZeRO-2 / ZeRO-3 runs: 2 CPU processes (gloo) train, checkpoint and resume."""

from __future__ import annotations

import json

import pytest
import yaml

from eval.shapes import write_shapes_dataset
from tiny import TINY_CLIP_CONFIG, run_deepspeed
from vlm import VLMForCausalLM


@pytest.mark.parametrize("zero, port", [("zero2", 29611), ("zero3", 29612)])
def test_zero_run_trains_checkpoints_and_resumes(zero, port, tmp_path, llama_dir):
    shapes = tmp_path / "shapes"
    write_shapes_dataset(shapes, 16, seed=0, n_eval=1)
    vit = tmp_path / "tiny-vit.json"
    vit.write_text(json.dumps(TINY_CLIP_CONFIG))
    run = tmp_path / "run"
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "stage": "pretrain", "llm": str(llama_dir), "vision_config": str(vit), "vision_pretrained": None,
        "data": [str(shapes / "captions.json")], "image_root": str(shapes), "max_length": 512,
        "per_device_train_batch_size": 2, "learning_rate": 1e-2, "warmup_ratio": 0.0, "save_steps": 2,
        "logging_steps": 1, "output_dir": str(run), "seed": 0, "bf16": False, "deepspeed": zero,
        "feature_cache": str(tmp_path / "features"),  # both ranks read the tower outputs rank 0 cached
    }))
    first = run_deepspeed(config, "max_steps=4", port=port)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for step in (2, 4):
        shards = sorted(p.name for p in (run / f"checkpoint-{step}" / f"global_step{step}").iterdir())
        assert any("rank_0" in s or "rank0" in s for s in shards) and any("rank_1" in s or "rank1" in s for s in shards), shards
    model = VLMForCausalLM.from_pretrained(run / "model")
    assert model.config.model_type == "vlm"
    assert len(list((tmp_path / "features").rglob("*.safetensors"))) == 16
    assert "16 images, 16 computed now" in first.stderr + first.stdout

    second = run_deepspeed(config, "max_steps=6", "resume=true", port=port)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming from" in second.stderr and "checkpoint-4" in second.stderr
    steps = [e["step"] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in e]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (run / "checkpoint-6").is_dir()

    # The ZeRO optimizer state is partitioned for 2 processes: one process must not resume it.
    from train.config import TrainConfig
    from train.run import resolve_resume

    single = TrainConfig(stage="pretrain", data=["unused.json"], output_dir=str(run), resume=True)
    with pytest.raises(ValueError, match="written by 2 processes .* this run has 1"):
        resolve_resume(single)



def test_plain_ddp_checkpoint_resumes_on_one_process_with_steps_rescaled(tmp_path, llama_dir):
    """2 DDP processes (torchrun, gloo) train 4 steps of 2x2 samples; one process resumes at step 8 of 2 samples."""
    import math
    import os
    import subprocess
    import sys
    from pathlib import Path

    from train.config import TrainConfig
    from train.run import run_training

    shapes = tmp_path / "shapes"
    write_shapes_dataset(shapes, 32, seed=0, n_eval=1)
    vit = tmp_path / "tiny-vit.json"
    vit.write_text(json.dumps(TINY_CLIP_CONFIG))
    run = tmp_path / "run"
    values = {
        "stage": "pretrain", "llm": str(llama_dir), "vision_config": str(vit), "vision_pretrained": None,
        "data": [str(shapes / "captions.json")], "image_root": str(shapes), "max_length": 512,
        "per_device_train_batch_size": 2, "learning_rate": 1e-2, "warmup_ratio": 0.0, "save_steps": 4,
        "logging_steps": 1, "output_dir": str(run), "seed": 0, "bf16": False, "lr_scheduler_type": "cosine",
    }
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(values))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29625",
         "-m", "train", str(config), "max_steps=4"],
        capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).parents[1],
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoint-4").glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]

    # 4 steps x 4 samples = 16 samples seen = step 8 of a 2-sample global batch; 2 steps remain to 10.
    run_training(TrainConfig(**{**values, "max_steps": 10, "resume": True}))
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in entries if "loss" in e]
    assert steps == [1, 2, 3, 4, 9, 10]
    lr = {e["step"]: e["learning_rate"] for e in entries if "loss" in e}
    for step in (9, 10):  # the cosine schedule of a 10-step run, continued at the rescaled step
        # (the rate logged at step k is the one step k used: the schedule's value after k - 1 steps)
        assert lr[step] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * (step - 1) / 10)), abs=1e-9)
    state = json.loads((run / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["global_step"] == 10
