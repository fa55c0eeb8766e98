"""One training run, single process or DeepSpeed ZeRO, from a ``TrainConfig``.

    parse config -> build or load the model -> freeze for the stage -> read and check data
    -> transformers Trainer (DeepSpeed if configured) -> final model, logs and plot.

Launch the same code path alone (``vlm train cfg.yaml``), with torchrun, or with the
``deepspeed`` launcher (``deepspeed --num_gpus 2 --module train cfg.yaml deepspeed=zero2``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from transformers import BitsAndBytesConfig, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from projector import calibrate_projector
from train.compile import compile_llm_layers
from train.config import TrainConfig
from train.dataset import VLMCollator, prepare_dataset
from train.features import FeatureCache, fill_cache, tower_fingerprint
from train.plots import plot_metrics
from train.resume import checkpoint_step, finish_from_checkpoint, finished_at, remove_stale_staging, truncate_metrics
from train.stages import apply_stage, parameter_table
from train.trainer import MetricsLogger, VLMTrainer
from vlm.atomic import (
    atomic_write_text,
    check_output_path,
    explained_write_errors,
    removed_on_failure,
    replace_directory,
)
from vlm.builder import build_vlm
from vlm.configuration import VLMConfig
from vlm.modeling import VLMForCausalLM
from vlm.precision import bf16_supported  # bf16 autocast pays off on GPUs with bf16 and CPUs with AMX
from vlm.processing import VLMProcessor
from vlm.quantization import COMPUTE_DTYPES, bitsandbytes_config, load_quantized

FINAL_DIR = "model"


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def log(message: str) -> None:
    if is_main_process():
        print(message, file=sys.stderr, flush=True)


def load_or_build(cfg: TrainConfig) -> tuple[VLMForCausalLM, VLMProcessor]:
    """Stage 2 (and any run with ``init_from``) loads a saved VLM; otherwise a new one is built from parts."""
    if cfg.init_from:
        folder = Path(cfg.init_from).absolute()
        if not (folder / "config.json").is_file():
            hint = f" (a training run keeps its final model in {folder / FINAL_DIR})" if (folder / FINAL_DIR).is_dir() else ""
            raise FileNotFoundError(f"init_from={cfg.init_from} is not a saved VLM folder (no config.json){hint}")
        processor = VLMProcessor.from_pretrained(folder)
        if cfg.pad_to_square is not None:  # this run's image preprocessing, saved with its outputs
            processor.image_processor.pad_to_square = cfg.pad_to_square
        quantization = quantization_config(cfg, folder)
        if quantization is not None:
            return load_quantized(folder, quantization, dtype=torch.float32, device=local_device()), processor
        return VLMForCausalLM.from_pretrained(folder, dtype=torch.float32), processor
    vision_config = json.loads(Path(cfg.vision_config).read_text()) if cfg.vision_config else None
    return build_vlm(
        cfg.llm,
        vision_model=Path(cfg.vision_config).stem if cfg.vision_config else cfg.vision_model,
        vision_pretrained=cfg.vision_pretrained,
        vision_model_config=vision_config,
        projector_type=cfg.projector_type,
        vision_feature_layer=cfg.vision_feature_layer,
        pad_to_square=bool(cfg.pad_to_square),
    )


def quantization_config(cfg: TrainConfig, folder: Path) -> BitsAndBytesConfig | None:
    """QLoRA: the bitsandbytes settings for the LLM of the VLM in ``folder`` (None: full precision)."""
    if not cfg.quantization:
        return None
    if cfg.compute_dtype == "auto":
        bf16 = bf16_supported() if cfg.bf16 is None else cfg.bf16
        compute = torch.bfloat16 if bf16 else torch.float16 if cfg.fp16 else torch.float32
    else:
        compute = COMPUTE_DTYPES[cfg.compute_dtype]
    return bitsandbytes_config(VLMConfig.from_pretrained(folder), cfg.quantization, cfg.double_quant, compute)


def local_device() -> torch.device:
    """This process's device: its GPU (LOCAL_RANK under a launcher), else the CPU."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else torch.device("cpu")


def resolve_resume(cfg: TrainConfig) -> str | None:
    output_dir = Path(cfg.output_dir)
    check_output_path(output_dir, "folder")
    if isinstance(cfg.resume, str):
        if not Path(cfg.resume).is_dir():
            raise FileNotFoundError(f"resume={cfg.resume}: no such checkpoint folder")
        check_world_size(Path(cfg.resume))
        return cfg.resume
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if cfg.resume:
        if last is None:
            log(f"resume=true but {output_dir} holds no complete checkpoint yet: starting from scratch")
        else:
            check_world_size(Path(last))
        return last
    if last is not None and not cfg.overwrite_output_dir:
        raise FileExistsError(
            f"{output_dir} already holds a run ({Path(last).name}); pass resume=true to continue it, "
            "overwrite_output_dir=true to start over, or choose another output_dir"
        )
    return None


def saved_world_size(checkpoint: Path) -> int:
    """How many processes wrote ``checkpoint``: one RNG file each when distributed."""
    return len(list(checkpoint.glob("rng_state_*.pth"))) or 1


def check_world_size(checkpoint: Path) -> None:
    """Refuse (ZeRO) or warn (plain: the steps are rescaled) when a checkpoint was written by another number of processes."""
    saved = saved_world_size(checkpoint)
    current = int(os.environ.get("WORLD_SIZE", "1"))
    if saved == current:
        return
    if any(p.is_dir() and p.name.startswith("global_step") for p in checkpoint.iterdir()):
        raise ValueError(
            f"{checkpoint} was written by {saved} processes and its ZeRO optimizer state is partitioned for "
            f"{saved}; this run has {current}. Resume with {saved} processes, or start a new run from its weights: "
            f"vlm merge {checkpoint} --out MERGED, then init_from=MERGED (the optimizer state starts fresh)"
        )
    log(
        f"warning: {checkpoint} was written by {saved} processes, this run has {current}: the global batch changes "
        f"by {current}/{saved}, so the step count is rescaled to keep the number of samples seen (and the data "
        "position and learning-rate schedule with it); max_steps now counts steps of the new global batch"
    )


CONFIG_FILE = "train_config.yaml"
# Settings that change how a run is logged, saved, resumed or computed, not what it computes.
_BOOKKEEPING = frozenset({"output_dir", "resume", "overwrite_output_dir", "logging_steps", "save_steps", "save_total_limit",
                          "dataloader_num_workers", "feature_cache", "torch_compile"})


def note_resumed_settings(checkpoint: Path, cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Warn when a run resumes ``checkpoint`` under other settings than those of the run that wrote it.

    Resuming with, say, a larger ``max_steps`` is allowed (it is how a finished run is trained on),
    but from the checkpoint on the learning-rate schedule follows the new settings, and the run's
    ``train_config.yaml`` is about to be rewritten: the earlier one is kept beside it as
    ``train_config.before-<checkpoint>.yaml``. Returns the changed settings, ``{name: (old, new)}``."""
    written = checkpoint.parent / CONFIG_FILE
    if not written.is_file():
        return {}
    before = yaml.safe_load(written.read_text(encoding="utf-8")) or {}
    now = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))  # the same YAML round trip as the saved file
    changed = {key: (before.get(key), now.get(key)) for key in sorted(set(before) | set(now))
               if key not in _BOOKKEEPING and before.get(key) != now.get(key)}
    if not changed:
        return {}
    kept = ""
    if written.parent.resolve() == Path(cfg.output_dir).resolve():
        earlier = written.parent / f"train_config.before-{checkpoint.name}.yaml"
        if is_main_process() and not earlier.exists():
            atomic_write_text(earlier, written.read_text(encoding="utf-8"))
        kept = f"; the settings that wrote it are kept in {earlier}"
    log(f"warning: resuming {checkpoint} under other settings than the run that wrote it: "
        + ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
        + ". Training continues under the new ones (the learning-rate schedule follows them from this step)" + kept)
    return changed


def training_arguments(cfg: TrainConfig) -> TrainingArguments:
    bf16 = bf16_supported() if cfg.bf16 is None else cfg.bf16
    report_to = ["tensorboard"] if _tensorboard_installed() else []
    return TrainingArguments(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=cfg.lr_scheduler_type,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        bf16=bf16,
        fp16=cfg.fp16,
        activation_checkpointing=cfg.gradient_checkpointing,
        deepspeed=cfg.deepspeed_path,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=cfg.dataloader_num_workers,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=report_to,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        disable_tqdm=not is_main_process(),
    )


def run_training(cfg: TrainConfig) -> Path:
    """Train as ``cfg`` says; return the folder holding the final model."""
    resume_from = resolve_resume(cfg)
    output_dir = Path(cfg.output_dir)
    if resume_from:
        note_resumed_settings(Path(resume_from), cfg)
        if is_main_process():
            for path in remove_stale_staging(output_dir):
                log(f"removed {path}, left by a run killed while saving")
        finished = finish_if_done(Path(resume_from), cfg, output_dir)
        if finished is not None:
            return finished
        if is_main_process():
            dropped = truncate_metrics(output_dir / "metrics.jsonl", checkpoint_step(Path(resume_from)))
            if dropped:
                log(f"metrics.jsonl: dropped {dropped} entries logged after {Path(resume_from).name} (they are trained again)")
    set_seed(cfg.seed)
    model, processor = load_or_build(cfg)
    model = apply_stage(model, cfg)
    kind = f" (QLoRA, {cfg.quantization} base)" if cfg.quantization else " (LoRA)" if cfg.lora else ""
    log(f"stage {cfg.stage}{kind}: parameters\n{parameter_table(model)}")
    dataset, report = prepare_dataset(
        cfg.data, cfg.image_root, processor, cfg.max_length, cfg.skip_bad_samples, progress=is_main_process()
    )
    log(report.summary())
    if cfg.feature_cache:
        with args_main_first():
            vlm = model.get_base_model() if hasattr(model, "get_base_model") else model
            cache = FeatureCache(cfg.feature_cache, tower_fingerprint(vlm.vision_tower, processor.image_processor))
            stats = fill_cache(cache, vlm.vision_tower, processor.image_processor, dataset, progress=is_main_process())
        log(f"feature cache {cache.folder}: {stats['images']} images, {stats['computed']} computed now, {stats['reused']} reused")
    if cfg.projector_init == "calibrate" and not resume_from:
        log(f"projector_init=calibrate: {calibrate_on_dataset(model, dataset, cfg.calibration_images)}")
    if cfg.torch_compile:
        log(f"torch_compile: {compile_llm_layers(model)} LLM decoder layers compiled in place (the first steps pay the compile)")
    args = training_arguments(cfg)
    if is_main_process():
        with explained_write_errors(output_dir / CONFIG_FILE):
            output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    samples_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * args.world_size
    trainer = VLMTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=VLMCollator(processor.tokenizer.pad_token_id),
        processing_class=processor,
        callbacks=[MetricsLogger(output_dir / "metrics.jsonl")],
        projector_lr=cfg.projector_lr,
        samples_per_step=samples_per_step,
        quantization=getattr(getattr(model, "config", None), "quantization_config", None) if cfg.quantization else None,
    )
    if resume_from:
        log(f"resuming from {resume_from}")
        trainer.resume_scale = saved_world_size(Path(resume_from)) / args.world_size
    trainer.train(resume_from_checkpoint=resume_from)
    final = output_dir / FINAL_DIR
    # Every rank takes part in save_model (ZeRO-3 gathers the weights); rank 0 writes into a
    # staging folder that replaces the final one only when complete.
    staging = output_dir / ".final-staging"
    if trainer.args.should_save and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    with explained_write_errors(final), removed_on_failure(staging):
        trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        with explained_write_errors(final):
            replace_directory(staging, final)
            plot_metrics(output_dir / "metrics.jsonl", output_dir / "loss.png")
    trainer.accelerator.wait_for_everyone()
    log(report.summary())
    log(f"final model: {final}")
    return final


def finish_if_done(checkpoint: Path, cfg: TrainConfig, output_dir: Path) -> Path | None:
    """The final model folder if ``checkpoint`` already ends the run (nothing is trained), else None."""
    scale = saved_world_size(checkpoint) / int(os.environ.get("WORLD_SIZE", "1"))
    step = finished_at(checkpoint, cfg, scale)
    if step is None:
        return None
    final = output_dir / FINAL_DIR
    if is_main_process():
        wrote = finish_from_checkpoint(checkpoint, final)
        if wrote:
            plot_metrics(output_dir / "metrics.jsonl", output_dir / "loss.png")
        log(f"{output_dir} is already trained to step {step} (max_steps={cfg.max_steps}); nothing to train: the final model "
            f"{final} {'was written from' if wrote else 'is that of'} {checkpoint.name}. Raise max_steps to train on")
    return final


@contextlib.contextmanager
def args_main_first():
    """Run the block on the main process first, then on the others (no-op when not distributed)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield


def calibrate_on_dataset(model: nn.Module, dataset, num_images: int) -> dict[str, float]:
    """``projector.calibrate_projector`` on the vision features of the dataset's first images.

    Deterministic (file order), so every DeepSpeed rank computes the same projector.
    """
    vlm = model.get_base_model() if hasattr(model, "get_base_model") else model
    parts, seen = [], 0
    with torch.no_grad():
        for index in range(len(dataset)):
            example = dataset[index]
            if not example.get("num_images"):
                continue
            # The tower's tokens: from the feature cache when it is on, else from the pixels.
            tokens = example["vision_features"] if "vision_features" in example else vlm.vision_tower(example["pixel_values"])
            parts.append(tokens)
            seen += tokens.shape[0]
            if seen >= num_images:
                break
    if not parts:
        raise ValueError("projector_init=calibrate needs training samples with images; the data has none")
    features = torch.cat(parts)[:num_images]
    target = vlm.get_input_embeddings().weight.detach().float().norm(dim=-1).mean().item()
    return calibrate_projector(vlm.projector, features, target)


def _tensorboard_installed() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
