"""``TrainConfig``: one typed dataclass; the shipped YAML files mirror it field by field.

``vlm train CONFIG.yaml key=value ...`` loads the YAML, applies the overrides (values are
parsed as YAML scalars: ``lora=true``, ``learning_rate=2e-4``, ``data=[a.json,b.json]``),
and validates everything in one place, before any model is built.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlm.quantization import COMPUTE_DTYPES, QUANTIZATIONS, QuantizationUnavailable, check_backend

STAGES = ("pretrain", "sft")
SHIPPED_DIR = Path(__file__).parent / "configs"
SHIPPED_DEEPSPEED = {"zero2": "zero2.json", "zero3": "zero3.json", "zero3_offload": "zero3_offload.json"}


@dataclass
class TrainConfig:
    """Everything a training run needs. Every field has a default; YAML keys are the field names."""

    # --- what to train -------------------------------------------------------------------
    stage: str = "pretrain"
    """``pretrain`` (stage 1: projector only) or ``sft`` (stage 2: projector + LLM, full or LoRA)."""
    init_from: str | None = None
    """A saved VLM folder to start from: stage 1's output for ``sft``; for ``pretrain`` the model is built from the parts below when empty."""
    llm: str = "smollm2-135m-instruct"
    """LLM for a new model (hub id, folder, .gguf, or ``smollm2-135m-instruct`` offline)."""
    vision_model: str | None = "ViT-B-16"
    """open_clip model name of the vision tower for a new model."""
    vision_pretrained: str | None = "openai"
    """open_clip tag (needs the network), a weights file, or null for random init."""
    vision_config: str | None = None
    """JSON file with an open_clip model config, instead of ``vision_model``'s."""
    projector_type: str = "linear"
    """``linear`` or ``mlp2x_gelu`` (new models only)."""
    vision_feature_layer: int = -2
    """ViT block feeding the projector (new models only): -2 LLaVA-1.5, -1 MiniMind-V."""
    pad_to_square: bool | None = None
    """Pad images to a square (with the mean colour) before the tower's resize and centre crop,
    as LLaVA's ``image_aspect_ratio=pad``: needed for wide images such as NLVR's 400x100, whose
    centre crop would keep only the middle. None keeps the model's setting (a new model: off)."""
    projector_init: str = "random"
    """New models only: ``random`` (PyTorch's default init) or ``calibrate`` (standardise the
    vision features of the first ``calibration_images`` training images inside the first Linear
    and scale the output to the LLM's embedding norm; see projector.calibrate_projector)."""
    calibration_images: int = 64
    """How many training images ``projector_init=calibrate`` measures."""

    # --- data ----------------------------------------------------------------------------
    data: list[str] = field(default_factory=list)
    """Training files: LLaVA JSON/JSONL, MiniMind-V JSONL or Parquet; several are concatenated."""
    image_root: str | None = None
    """Folder that relative image paths in the data are resolved against (default: each file's folder)."""
    max_length: int = 2048
    """Longest tokenized sample; longer ones are truncated unless that would cut an image (an error)."""
    skip_bad_samples: bool = False
    """Skip and count bad records instead of stopping at the first one."""

    # --- stages --------------------------------------------------------------------------
    train_last_n_llm_layers: int = 0
    """``pretrain`` only: also train the last N LLM decoder layers (MiniMind-V trains 1)."""
    lora: bool = False
    """``sft`` only: train LoRA adapters on the LLM instead of all its weights."""
    lora_r: int = 64
    """LoRA rank."""
    lora_alpha: int = 128
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input (peft's and LLaMA-Factory's default 0; LLaVA-1.5 uses 0.05, as
    ``sft_lora.yaml`` does). On a CPU it is not free: drawing the masks of the 7 LoRA inputs of
    every layer made a SmolLM2-135M LoRA step 16-31% slower here (see benchmarks/README.md)."""
    lora_target_modules: str | list[str] = "all-linear"
    """``all-linear`` (every Linear of the LLM but ``lm_head``; never the vision tower or projector) or a list of module-name suffixes."""
    quantization: str | None = None
    """QLoRA (``sft_qlora.yaml``): quantize the LLM while it loads with bitsandbytes, ``nf4`` (QLoRA's
    4-bit NormalFloat), ``fp4`` or ``int8``; the adapters, projector and vision tower stay in full
    precision, and only they are saved. null: a full-precision LLM. Needs ``lora=true`` and
    ``pip install -e .[qlora]``."""
    double_quant: bool = True
    """QLoRA, 4-bit only: also quantize the per-block scales (QLoRA's double quantization, ~0.4 bit per weight less)."""
    compute_dtype: str = "auto"
    """QLoRA: dtype the quantized layers compute in, ``fp32``, ``bf16``, ``fp16``, or ``auto``: the run's own (bf16 / fp16 when on, else fp32)."""

    # --- optimisation ----------------------------------------------------------------------
    learning_rate: float = 1e-3
    """Peak learning rate (AdamW)."""
    projector_lr: float | None = None
    """Learning rate of the projector when it should differ (LLaVA's ``mm_projector_lr``)."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    warmup_ratio: float = 0.03
    """Share of steps with linear warm-up before the cosine decay."""
    lr_scheduler_type: str = "cosine"
    """transformers scheduler name."""
    num_train_epochs: float = 1.0
    """Epochs over the data (ignored when ``max_steps`` > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""
    per_device_train_batch_size: int = 8
    """Samples per process per micro-batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold."""
    feature_cache: str | None = None
    """Folder caching the frozen vision tower's patch tokens per image (see train.features): filled
    once before the first step, then read instead of decoding and encoding images every step.
    Shared safely between runs and stages: entries are keyed by the tower and the image bytes."""
    group_by_length: bool = False
    """Batch samples of similar token counts together (transformers' LengthGroupedSampler, on the
    lengths the data check already measured): less padding, faster steps; the order stays random
    across groups."""
    torch_compile: bool = False
    """Compile each decoder layer of the LLM with ``torch.compile`` (regional compilation: one
    graph serves every layer, so compiling costs about one layer's time, ~1 min on a CPU, paid at the
    first steps). Fuses the element-wise work around the matrix products: 10-17% faster steps in a
    2-thread probe here, less in the 1-thread benchmark (see benchmarks/README.md); worth trying
    for runs longer than a few minutes. Needs a C++ compiler on CPUs (inductor). Checked
    single-process (loss and gradients equal the eager ones); not with ZeRO-3, whose hooks gather
    each layer's weights."""
    seed: int = 42
    """Seed for model init, data order and dropout."""
    bf16: bool | None = None
    """bf16 autocast (default: on where supported: GPUs with bf16, CPUs with AMX/AVX512-bf16)."""
    fp16: bool = False
    """fp16 with loss scaling (GPU only)."""
    gradient_checkpointing: bool = False
    """Recompute LLM activations in the backward pass to save memory."""
    deepspeed: str | None = None
    """DeepSpeed config: ``zero2``, ``zero3``, ``zero3_offload`` (shipped) or a JSON path; null = no DeepSpeed."""
    dataloader_num_workers: int = 0
    """DataLoader worker processes."""

    # --- output --------------------------------------------------------------------------
    output_dir: str = "runs/train"
    """Where the final model, checkpoints, the resolved config and the logs go."""
    logging_steps: int = 1
    """Log loss / learning rate every N steps."""
    save_steps: int = 500
    """Checkpoint every N steps."""
    save_total_limit: int | None = 2
    """Keep only the last K checkpoints (null: keep all)."""
    resume: bool | str = False
    """``true``: continue from the latest complete checkpoint in output_dir; or a checkpoint path."""
    overwrite_output_dir: bool = False
    """Allow a new run (not a resume) into an output_dir that already holds a run."""

    def __post_init__(self) -> None:
        problems = _coerce_numbers(self)
        if self.stage not in STAGES:
            problems.append(f"stage={self.stage!r} is not one of {', '.join(STAGES)}")
        if self.stage == "sft" and not self.init_from:
            problems.append("stage=sft needs init_from: the folder stage 1 (pretrain) wrote")
        if self.lora and self.stage != "sft":
            problems.append("lora=true needs stage=sft (stage 1 trains only the projector)")
        if self.lora and (not isinstance(self.lora_r, int) or self.lora_r < 1):
            problems.append(f"lora_r={self.lora_r!r}: the LoRA rank must be a positive integer (8-64 is usual)")
        if self.lora and not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout={self.lora_dropout!r} must lie in [0, 1)")
        problems += _quantization_problems(self)
        if self.projector_init not in ("random", "calibrate"):
            problems.append(f"projector_init={self.projector_init!r} is not one of random, calibrate")
        if self.projector_init == "calibrate" and self.init_from:
            problems.append("projector_init=calibrate initialises a new projector; init_from brings a trained one")
        if self.calibration_images < 1:
            problems.append("calibration_images must be >= 1")
        if self.train_last_n_llm_layers and self.stage != "pretrain":
            problems.append("train_last_n_llm_layers applies to stage=pretrain only (sft trains the whole LLM or LoRA)")
        if not self.data:
            problems.append("data is empty: give one or more training files (data=[a.json,b.jsonl])")
        if self.fp16 and self.bf16:
            problems.append("choose one of fp16 and bf16")
        if self.max_length <= 0 or self.per_device_train_batch_size <= 0 or self.gradient_accumulation_steps <= 0:
            problems.append("max_length, per_device_train_batch_size and gradient_accumulation_steps must be positive")
        if self.deepspeed and self.deepspeed not in SHIPPED_DEEPSPEED and not os.path.isfile(self.deepspeed):
            problems.append(f"deepspeed={self.deepspeed!r} is neither a shipped config ({', '.join(SHIPPED_DEEPSPEED)}) nor a file")
        if self.torch_compile and self.deepspeed and _zero_stage(self.deepspeed_path) == 3:
            problems.append("torch_compile=true is not supported with ZeRO-3 (it gathers each layer's weights in hooks "
                            "around the layer's forward); use zero2 or no DeepSpeed, or torch_compile=false")
        if problems:
            raise ValueError("invalid training config:\n  - " + "\n  - ".join(problems))

    @property
    def deepspeed_path(self) -> str | None:
        if self.deepspeed in SHIPPED_DEEPSPEED:
            return str(SHIPPED_DIR / SHIPPED_DEEPSPEED[self.deepspeed])
        return self.deepspeed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _quantization_problems(cfg: TrainConfig) -> list[str]:
    """QLoRA's settings; the bitsandbytes backend is tried last, only when the rest is right."""
    if cfg.quantization is None:
        return []
    if cfg.quantization not in QUANTIZATIONS:
        return [f"quantization={cfg.quantization!r} is not one of {', '.join(QUANTIZATIONS)} (or null for a full-precision LLM)"]
    problems = []
    if not cfg.lora:
        problems.append(f"quantization={cfg.quantization} (QLoRA) needs lora=true: a quantized LLM cannot be trained "
                        "fully; use the shipped sft_qlora config, or drop quantization for full fine-tuning")
    if cfg.compute_dtype not in ("auto", *COMPUTE_DTYPES):
        problems.append(f"compute_dtype={cfg.compute_dtype!r} is not one of auto, {', '.join(COMPUTE_DTYPES)}")
    if not problems:
        try:
            check_backend(cfg.quantization)
        except QuantizationUnavailable as err:
            problems.append(str(err))
    return problems


def _zero_stage(deepspeed_path: str | None) -> int | None:
    """The ZeRO stage a DeepSpeed config file asks for (None: unreadable or not given)."""
    try:
        return int(json.loads(Path(str(deepspeed_path)).read_text()).get("zero_optimization", {}).get("stage", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _coerce_numbers(cfg: TrainConfig) -> list[str]:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; turn such values into the field's number type."""
    problems = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kinds = str(f.type).replace(" ", "").split("|")
        if not isinstance(value, str) or not ({"float", "int"} & set(kinds)):
            continue
        try:
            number = float(value)
        except ValueError:
            if "str" not in kinds:
                problems.append(f"{f.name}={value!r} is not a number")
            continue
        setattr(cfg, f.name, int(number) if "float" not in kinds and number.is_integer() else number)
    return problems


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["lora=true", "data=[a.json]"]`` -> ``{"lora": True, "data": ["a.json"]}``."""
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        parsed[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return parsed


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML config (a shipped name like ``sft_lora`` works too), apply overrides, validate."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists() and (SHIPPED_DIR / f"{path}.yaml").exists():
            path = SHIPPED_DIR / f"{path}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"config {path} not found (shipped: {', '.join(p.stem for p in SHIPPED_DIR.glob('*.yaml'))})")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); save the config as UTF-8") from None
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            raise ValueError(f"{path}: not valid YAML{at} ({getattr(err, 'problem', None) or err}); "
                             "a training config is a mapping of field: value") from None
        if values is None:
            raise ValueError(f"{path}: empty; a training config is a mapping of field: value "
                             "(start from a shipped one: train/configs/*.yaml)")
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a training config is a mapping of field: value")
    values.update(parse_overrides(overrides or []))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; `vlm train --help-config` lists them all")
    if isinstance(values.get("data"), str):
        values["data"] = [values["data"]]
    return TrainConfig(**values)


def describe_fields() -> str:
    """Every field with its default and docstring, for ``--help-config``."""
    import inspect

    source = inspect.getsource(TrainConfig)
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        marker = f"    {f.name}:"
        doc = ""
        start = source.find(marker)
        if start != -1:
            after = source[start:].split('"""')
            doc = after[1].strip() if len(after) > 1 else ""
        lines.append(f"{f.name} = {default!r}\n    {doc}")
    return "\n".join(lines)
