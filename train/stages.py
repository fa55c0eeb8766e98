"""Which parameters each stage trains, LoRA wrapping, and the parameter table printed at start.

- ``pretrain``: only the projector (optionally also the last N LLM decoder layers).
- ``sft``: projector + the whole LLM, or projector + LoRA adapters on the LLM (peft).
- The vision tower is frozen in every stage.
"""

from __future__ import annotations

from torch import nn

from train.config import TrainConfig
from vlm.modeling import VLMForCausalLM


def apply_stage(model: VLMForCausalLM, cfg: TrainConfig) -> nn.Module:
    """Set ``requires_grad`` for the stage; return the model to train (a peft model under LoRA)."""
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    if cfg.stage == "pretrain":
        if cfg.train_last_n_llm_layers:
            layers = model.language_model.get_decoder().layers
            if cfg.train_last_n_llm_layers > len(layers):
                raise ValueError(f"train_last_n_llm_layers={cfg.train_last_n_llm_layers} but the LLM has {len(layers)} layers")
            for layer in layers[-cfg.train_last_n_llm_layers :]:
                layer.requires_grad_(True)
        return model
    if not cfg.lora:
        model.language_model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_quantized", False):
        # QLoRA (peft's k-bit preparation): every non-quantized weight in fp32 (norms included),
        # the input embeddings' outputs requiring grad so that gradient checkpointing reaches
        # the adapters, and checkpointing itself when asked for.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
        model.requires_grad_(False)
        model.projector.requires_grad_(True)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_modules(model, cfg.lora_target_modules),
        # The projector trains fully and is saved inside every adapter checkpoint, so any
        # checkpoint is enough for the merge (LLaVA's intermediate LoRA checkpoints lacked it).
        modules_to_save=["projector"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def lora_target_modules(model: VLMForCausalLM, targets: str | list[str]) -> list[str]:
    """Full names of the LLM's Linear layers to adapt; never the vision tower, projector or ``lm_head``."""
    output = model.language_model.get_output_embeddings()
    names = [
        f"language_model.{name}"
        for name, module in model.language_model.named_modules()
        if isinstance(module, nn.Linear) and module is not output
    ]
    if targets != "all-linear":
        wanted = [targets] if isinstance(targets, str) else list(targets)
        names = [n for n in names if any(n == w or n.endswith("." + w) for w in wanted)]
        if not names:
            raise ValueError(f"lora_target_modules={wanted} matches no Linear layer of the LLM")
    return names


def parameter_table(model: nn.Module) -> str:
    """Trainable / frozen parameter counts per part, as a small markdown table."""
    parts: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        part = _part_of(name)
        counts = parts.setdefault(part, [0, 0])
        counts[0 if param.requires_grad else 1] += param.numel()
    rows = ["| part | trainable | frozen |", "| --- | ---: | ---: |"]
    for part, (trainable, frozen) in parts.items():
        rows.append(f"| {part} | {trainable:,} | {frozen:,} |")
    total_t, total_f = sum(c[0] for c in parts.values()), sum(c[1] for c in parts.values())
    rows.append(f"| total | {total_t:,} | {total_f:,} |")
    return "\n".join(rows)


def _part_of(name: str) -> str:
    if "lora_" in name:
        return "LoRA adapters"
    for part in ("vision_tower", "projector", "language_model"):
        if f"{part}." in name or name.startswith(part):
            return part
    return "other"
