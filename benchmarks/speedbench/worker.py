"""One worker: load one implementation, set it up for the row, time it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from benchmarks.speedbench.inference import time_inference
from benchmarks.speedbench.settings import TRAIN_ROWS, Settings
from benchmarks.speedbench.training import time_training


def run_worker(settings: Settings, row: str, impl: str, dtype: str) -> list[dict[str, Any]]:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    work = Path(settings.workdir)
    batches = torch.load(work / "batches.pt", weights_only=True)
    model = load_impl(work, impl)
    load = [round(x, 2) for x in os.getloadavg()]
    if row in TRAIN_ROWS:
        records = time_training(settings, model, row, impl, dtype, batches["stage1" if row == "stage1" else "stage2"])
    else:
        records = time_inference(settings, model, row, impl, dtype, batches[row])
    for record in records:
        record["load_1m"] = [load[0], round(os.getloadavg()[0], 2)]
    return records


def load_impl(work: Path, impl: str):
    if impl == "reference":
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration.from_pretrained(work / "reference", dtype=torch.float32).eval()
    from vlm import VLMForCausalLM

    return VLMForCausalLM.from_pretrained(work / "ours", dtype=torch.float32).eval()
