"""What a speed run measures: its rows, implementations and dtypes, and the settings every worker is told."""

from __future__ import annotations

from dataclasses import dataclass

import torch

TRAIN_ROWS = ("stage1", "lora", "full")
INFER_ROWS = ("infer_b1", "infer_b8")
ROWS = TRAIN_ROWS + INFER_ROWS
IMPLS = ("ours", "ours-plain", "ours-fast", "reference")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ROW_TITLES = {
    "stage1": "stage 1 step (projector)",
    "lora": "stage 2 LoRA step",
    "full": "stage 2 full step",
}


@dataclass
class Settings:
    """What one run measures; the CLI's flags, and what every worker is told."""

    quick: bool
    rows: list[str]
    impls: list[str]
    dtypes: list[str]
    train_batch: int
    steps: int
    warmup: int
    new_tokens: int
    profile: bool
    threads: int | None = None
    workdir: str = ""
