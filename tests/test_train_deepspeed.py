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
    }))
    first = run_deepspeed(config, "max_steps=4", port=port)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for step in (2, 4):
        shards = sorted(p.name for p in (run / f"checkpoint-{step}" / f"global_step{step}").iterdir())
        assert any("rank_0" in s or "rank0" in s for s in shards) and any("rank_1" in s or "rank1" in s for s in shards), shards
    model = VLMForCausalLM.from_pretrained(run / "model")
    assert model.config.model_type == "vlm"

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

