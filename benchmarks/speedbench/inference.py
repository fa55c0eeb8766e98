"""Timing inference: time to first token and decode steps of one ``generate``, clocked at every step."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.speedbench.flops import CPU_ATTENTION_FLOPS
from benchmarks.speedbench.memory import peak_rss_mib, reset_peak_rss
from benchmarks.speedbench.settings import Settings
from benchmarks.speedbench.timing import autocast


class StepClock:
    """A logits processor that only notes the time (and FLOPs so far) of every generation step.

    generate calls it once per new token, right after that token's forward pass: the first call
    ends the prefill (time to first token), the gaps between later calls are decode steps.
    """

    def __init__(self):
        self.counter: FlopCounterMode | None = None
        self.stamps: list[float] = []
        self.flops: list[int] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.stamps.append(time.perf_counter())
        if self.counter is not None:
            self.flops.append(self.counter.get_total_flops())
        return scores


def time_inference(settings: Settings, model, row: str, impl: str, dtype: str, batch: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    from transformers import LogitsProcessorList

    inputs = {k: v for k, v in batch.items() if not (impl == "reference" and k == "num_images")}
    config = copy.deepcopy(model.generation_config)
    config.do_sample, config.num_beams = False, 1
    n = settings.new_tokens
    clock = StepClock()
    runs: list[tuple[float, float]] = []  # (time to first token, mean decode step) per repetition

    def generate() -> None:
        clock.stamps.clear()
        start = time.perf_counter()
        with autocast(dtype):
            model.generate(**inputs, generation_config=config, max_new_tokens=n, min_new_tokens=n,
                           logits_processor=LogitsProcessorList([clock]))
        assert len(clock.stamps) == n, f"generate made {len(clock.stamps)} steps, expected {n}"
        runs.append((clock.stamps[0] - start, (clock.stamps[-1] - clock.stamps[0]) / (n - 1)))

    rss_loaded = reset_peak_rss()
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        clock.counter = counter
        generate()  # warm-up 1, counting FLOPs
    clock.counter = None
    prefill_flops, total_flops = clock.flops[0], counter.get_total_flops()
    for _ in range(settings.warmup - 1):
        generate()
    del runs[:]
    for _ in range(settings.steps):
        generate()
    size = int(batch["input_ids"].shape[0])
    common = {"impl": impl, "dtype": dtype, "batch": size, "rss_loaded_mib": rss_loaded, "peak_rss_mib": peak_rss_mib(),
              "new_tokens": n}
    ttft = [first for first, _ in runs]
    decode = [step for _, step in runs]
    return [
        {**common, "row": f"ttft_b{size}", "median_s": statistics.median(ttft), "times_s": ttft,
         "executed_flops": prefill_flops, "tokens": int(batch["attention_mask"].sum())},
        {**common, "row": f"decode_b{size}", "median_s": statistics.median(decode), "times_s": decode,
         "executed_flops": (total_flops - prefill_flops) / (n - 1), "tokens": size},
    ]
