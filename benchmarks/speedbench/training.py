"""Timing training steps: freeze and wrap as the stage does, then forward + backward + AdamW, with paired A/Bs."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from benchmarks.speedbench.memory import peak_rss_mib, reset_peak_rss
from benchmarks.speedbench.settings import Settings
from benchmarks.speedbench.timing import autocast, profile_one, timed


def setup_training(model, row: str, impl: str):
    """Freeze and wrap exactly as the stage does: our training code for ours, its LLaVA mirror for the reference."""
    from train.config import TrainConfig
    from train.stages import apply_stage

    stage_cfg = TrainConfig(stage="pretrain" if row == "stage1" else "sft", init_from=None if row == "stage1" else "(benchmark)",
                            data=["(benchmark)"], lora=row == "lora")
    if impl != "reference":
        return apply_stage(model, stage_cfg)
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    if row == "full":
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    if row == "lora":
        from peft import LoraConfig, get_peft_model

        head = model.get_output_embeddings()
        targets = [f"model.language_model.{name}" for name, module in model.model.language_model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head]
        lora = LoraConfig(r=stage_cfg.lora_r, lora_alpha=stage_cfg.lora_alpha, lora_dropout=stage_cfg.lora_dropout,
                          target_modules=targets, modules_to_save=["multi_modal_projector"], task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model


def time_training(settings: Settings, model, row: str, impl: str, dtype: str, batch: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    model = setup_training(model, row, impl)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel, as our training gets it from transformers' Trainer (optim="adamw_torch_fused")
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0, fused=True)
    inputs = dict(batch)
    if impl == "reference":
        inputs.pop("num_images")
    if impl == "ours-fast":
        from train.compile import compile_llm_layers

        inputs = _with_cached_features(model, inputs)
        compile_llm_layers(model)

    def step(labeled_positions_only: bool | None = None) -> None:
        optimizer.zero_grad(set_to_none=True)
        flag = {} if labeled_positions_only is None else {"labeled_positions_only": labeled_positions_only}
        with autocast(dtype):
            loss = model(**inputs, **flag).loss
        loss.backward()
        optimizer.step()

    rss_loaded = reset_peak_rss()
    paired = None
    if impl == "ours-fast":
        # The compile happens in the first steps (one graph, then one with dynamic shapes for the
        # layers whose input needs a gradient); FlopCounterMode would see only part of the compiled
        # work, so this worker counts no FLOPs (the plain computation's count is the model FLOPs).
        for _ in range(2):
            step()
        times, flops = timed(step, settings.warmup, settings.steps, count_flops=False)
    elif impl == "ours-plain":
        # The plain path's own figures, and a paired A/B of the optimization in this one process:
        # steps with the LM head on labeled positions only and on all of them alternate (in
        # alternating order), so both see the same machine load. `ours` (on) is the training default.
        times, flops = timed(lambda: step(False), settings.warmup, 0)
        step(True)  # warm the labeled path too
        plain, labeled = [], []
        for i in range(settings.steps):
            for flag in ((False, True) if i % 2 == 0 else (True, False)):
                start = time.perf_counter()
                step(flag)
                (labeled if flag else plain).append(time.perf_counter() - start)
        times = plain
        paired = {"plain_s": plain, "labeled_s": labeled,
                  "speedup": statistics.median(p / q for p, q in zip(plain, labeled))}
    else:
        times, flops = timed(step, settings.warmup, settings.steps)
    cache_ab = None
    if impl == "ours" and "pixel_values" in inputs:
        # The vision-feature cache (train.features): the tower's outputs, computed once, replace
        # the pixels; the tower is frozen in every stage. Steps with pixels and with cached
        # features alternate, as above.
        pixel_inputs = inputs
        cached_inputs = _with_cached_features(model, inputs)
        pixels_s, cached_s = [], []
        for i in range(settings.steps):
            for use_cache in ((False, True) if i % 2 == 0 else (True, False)):
                inputs = cached_inputs if use_cache else pixel_inputs
                start = time.perf_counter()
                step()
                (cached_s if use_cache else pixels_s).append(time.perf_counter() - start)
        inputs = pixel_inputs
        cache_ab = {"pixels_s": pixels_s, "cached_s": cached_s,
                    "speedup": statistics.median(p / q for p, q in zip(pixels_s, cached_s))}
    dropout_ab = None
    if impl == "ours" and row == "lora":
        # LoRA dropout 0.05 (LLaVA-1.5's recipe) against 0 (peft's and our default, the rows above):
        # steps with nn.Dropout(0.05) and with nn.Identity on every LoRA input alternate.
        with_s, without_s = [], []
        for i in range(settings.steps):
            for p in ((0.05, 0.0) if i % 2 == 0 else (0.0, 0.05)):
                _set_lora_dropout(model, p)
                start = time.perf_counter()
                step()
                (with_s if p else without_s).append(time.perf_counter() - start)
        _set_lora_dropout(model, 0.0)
        dropout_ab = {"dropout_s": with_s, "no_dropout_s": without_s,
                      "speedup": statistics.median(a / b for a, b in zip(with_s, without_s))}
    record = {
        "row": row, "impl": impl, "dtype": dtype, "batch": int(batch["input_ids"].shape[0]),
        "median_s": statistics.median(times), "times_s": times, "executed_flops": flops,
        "tokens": int(batch["attention_mask"].sum()), "labeled_positions": int((batch["labels"][:, 1:] != -100).sum()),
        "trainable_params": sum(p.numel() for p in trainable),
        "rss_loaded_mib": rss_loaded, "peak_rss_mib": peak_rss_mib(),
    }
    if paired:
        record["paired_ab"] = paired
    if cache_ab:
        record["feature_cache_ab"] = cache_ab
    if dropout_ab:
        record["lora_dropout_ab"] = dropout_ab
    if settings.profile and impl == "ours":
        record["profile"] = profile_one(step)
    return [record]


def _set_lora_dropout(model, p: float) -> None:
    """Give every LoRA layer of a peft model dropout ``p`` on its input (``nn.Identity`` for 0, as peft builds it)."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name in list(dropouts):
                dropouts[name] = torch.nn.Dropout(p) if p else torch.nn.Identity()


def _with_cached_features(model, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch as training's feature cache feeds it: the frozen tower's outputs instead of pixels."""
    vlm = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.no_grad():
        features = vlm.vision_tower(inputs["pixel_values"])  # [N_img, 196, D_vis]
    return {k: v for k, v in inputs.items() if k != "pixel_values"} | {"vision_features": features}
