"""Training configs: shipped YAML + key=value overrides -> a validated TrainConfig."""

from __future__ import annotations

import pytest

from train.config import SHIPPED_DIR, load_config


def test_overrides_are_typed_like_the_fields():
    cfg = load_config(
        "sft_lora",
        ["init_from=runs/s1/model", "data=[a.json,b.jsonl]", "learning_rate=1e-3", "projector_lr=2e-5",
         "max_steps=5", "lora_r=8", "bf16=false", "warmup_ratio=0"],
    )
    assert cfg.lora is True and cfg.stage == "sft"
    assert cfg.data == ["a.json", "b.jsonl"]
    assert cfg.learning_rate == 1e-3 and isinstance(cfg.learning_rate, float)
    assert cfg.projector_lr == 2e-5 and cfg.max_steps == 5 and cfg.lora_r == 8 and cfg.bf16 is False


def test_every_shipped_config_loads_with_data():
    for path in SHIPPED_DIR.glob("*.yaml"):
        cfg = load_config(path, ["data=[x.json]", "init_from=runs/s1/model"] if "sft" in path.stem else ["data=[x.json]"])
        assert cfg.stage in ("pretrain", "sft")


def test_invalid_combinations_fail_at_load_time_with_every_problem_listed():
    with pytest.raises(ValueError) as err:
        load_config("pretrain", ["lora=true", "learning_rate=fast", "deepspeed=zero9"])
    message = str(err.value)
    assert "data is empty" in message and "lora=true needs stage=sft" in message
    assert "learning_rate='fast' is not a number" in message and "deepspeed='zero9'" in message
    with pytest.raises(ValueError, match="unknown config keys \\['learning_rat'\\]"):
        load_config("pretrain", ["learning_rat=1"])
    with pytest.raises(ValueError, match="stage=sft needs init_from"):
        load_config("sft", ["data=[a.json]", "init_from=null"])


def test_torch_compile_is_refused_with_zero3_shipped_or_from_a_file(tmp_path):
    with pytest.raises(ValueError, match="torch_compile=true is not supported with ZeRO-3"):
        load_config("sft_lora", ["data=[a.json]", "torch_compile=true", "deepspeed=zero3"])
    own = tmp_path / "my_zero.json"
    own.write_text('{"zero_optimization": {"stage": 3}}')
    with pytest.raises(ValueError, match="ZeRO-3"):
        load_config("sft_lora", ["data=[a.json]", "torch_compile=true", f"deepspeed={own}"])
    assert load_config("sft_lora", ["data=[a.json]", "torch_compile=true", "deepspeed=zero2"]).torch_compile
