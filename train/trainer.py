"""transformers' Trainer with the few things a VLM run needs that it lacks.

- a separate learning rate for the projector (LLaVA's ``mm_projector_lr``);
- atomic checkpoints: each ``checkpoint-N`` is written under a staging folder and renamed
  into place once every rank has finished, so a run killed while saving leaves the
  previous checkpoint as the latest complete one (``resume`` only sees complete ones);
- samples/s in every log entry, and a JSONL metrics log written as training goes;
- QLoRA: every saved adapter records the quantization of the base it was trained on.

Everything else (DeepSpeed ZeRO, accumulation, clipping, schedules, resume with optimizer,
scheduler, RNG and data position) is the Trainer's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import BitsAndBytesConfig, Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.trainer_utils import rotate_checkpoints as hf_rotate_checkpoints

from train.checkpoint_types import training_state_types
from vlm.atomic import explained_write_errors, removed_on_failure
from vlm.quantization import save_quantization
from vlm.safe_load import weights_only_loads

STAGING_DIR = ".staging"


class VLMTrainer(Trainer):
    def __init__(self, *args: Any, projector_lr: float | None = None, samples_per_step: int | None = None,
                 quantization: BitsAndBytesConfig | None = None, **kwargs: Any):
        self.projector_lr = projector_lr
        self.quantization = quantization
        self.samples_per_step = samples_per_step
        self._staging = False
        self._last_log: tuple[float, int] | None = None
        super().__init__(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # samples/s since the previous log, so the progress bar, TensorBoard and metrics.jsonl all show it
        now, step = time.perf_counter(), self.state.global_step
        if "loss" in logs and self.samples_per_step and self._last_log is not None and step > self._last_log[1]:
            logs["samples_per_second"] = round((step - self._last_log[1]) * self.samples_per_step / (now - self._last_log[0]), 3)
        if "loss" in logs or self._last_log is None:
            self._last_log = (now, step)
        super().log(logs, start_time)

    def train(self, *args: Any, **kwargs: Any):
        # Resuming loads the checkpoint's pickles (model and optimizer states, scheduler, RNG) in
        # here; DeepSpeed's engine loads its shards with weights_only=False, so a crafted one would
        # run code. Every load of the run is made weights-only with the types these libraries write.
        with weights_only_loads(training_state_types()):
            return super().train(*args, **kwargs)

    def _inner_training_loop(self, *args: Any, **kwargs: Any):
        self._last_log = None  # the clock starts with the first step of this (possibly resumed) run
        return super()._inner_training_loop(*args, **kwargs)

    resume_scale: float = 1.0
    """Samples per step of the checkpoint being resumed / of this run (their world sizes differ)."""

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial):
        epochs_trained, steps_in_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is None or self.resume_scale == 1.0 or self.state.global_step == 0:
            return epochs_trained, steps_in_epoch
        # Another world size: keep the number of samples seen. A step that does not divide evenly
        # rounds down, so at most part of one global batch is seen twice, none skipped.
        old = self.state.global_step
        self.state.global_step = int(old * self.resume_scale)
        self._rescaled_from = old
        epochs_trained = self.state.global_step // num_update_steps_per_epoch
        steps_in_epoch = 0
        if not self.args.ignore_data_skip:
            steps_in_epoch = (self.state.global_step % num_update_steps_per_epoch) * self.args.gradient_accumulation_steps
        return epochs_trained, steps_in_epoch

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or getattr(self, "_rescaled_from", None) is None or self.lr_scheduler is None:
            return
        # The schedule continues from the rescaled step: the same fraction of the run as before.
        scheduler, step = self.lr_scheduler, self.state.global_step
        scheduler.last_epoch, scheduler._step_count = step, step + 1
        if hasattr(scheduler, "lr_lambdas"):  # transformers' schedules are LambdaLRs
            lrs = [base * rate(step) for base, rate in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
        else:
            lrs = scheduler.get_last_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        scheduler._last_lr = list(lrs)

    def _get_train_sampler(self, train_dataset=None):
        # Length grouping with the lengths our dataset already knows: transformers would otherwise
        # load every sample (images included) once just to count its tokens.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = getattr(dataset, "lengths", None)
        if self.args.train_sampling_strategy == "group_by_length" and lengths is not None:
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps, dataset=dataset, lengths=lengths
            )
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model: torch.nn.Module | None = None):
        if self.optimizer is not None:
            return self.optimizer
        model = model if model is not None else self.model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            is_projector = self.projector_lr is not None and "projector." in name
            groups.setdefault((is_projector, name in decay), []).append(param)
        param_groups = []
        for (is_projector, decays), params in groups.items():
            group: dict[str, Any] = {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0}
            if is_projector:
                group["lr"] = self.projector_lr
            param_groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.quantization is not None and self.args.should_save:
            # QLoRA: the adapter was trained on a quantized base; chat, eval and merge read this.
            save_quantization(output_dir if output_dir is not None else self.args.output_dir, self.quantization)

    def _get_output_dir(self, trial: Any) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = os.path.join(run_dir, STAGING_DIR, name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.exists(staged):
            shutil.rmtree(staged)  # left over from a run killed while saving
        self.accelerator.wait_for_everyone()
        self._staging = True
        hook = self.model.register_state_dict_post_hook(_trained_and_buffers_only) if self._saves_frozen_state() else None
        try:
            # A full disk or read-only folder: one line, and the partial checkpoint is removed.
            with explained_write_errors(final), removed_on_failure(staged if self.args.should_save else None):
                super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
            if hook is not None:
                hook.remove()
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(staged, final)
            with contextlib.suppress(OSError):  # empty now: leave no hidden folder behind
                os.rmdir(os.path.dirname(staged))
            hf_rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit, use_mtime=False)
        self.accelerator.wait_for_everyone()

    def _saves_frozen_state(self) -> bool:
        """DeepSpeed with an adapter: transformers asks DeepSpeed to leave frozen parameters out of the
        checkpoint's module state, but DeepSpeed drops only the names ``named_parameters()`` lists, so a
        tied output head (the embeddings again, e.g. 113 MB for SmolLM2) and, under QLoRA, the quantized
        base's constants (bitsandbytes' absmax, quant_map, ...: state-dict entries, not parameters) were
        kept in every checkpoint, never read back (resume and merge take the base from ``init_from``)."""
        return self.is_deepspeed_enabled and hasattr(self.model, "peft_config")


def _trained_and_buffers_only(module: torch.nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """A state-dict post-hook: keep the trainable parameters and the buffers, drop every other entry."""
    keep = {prefix + name for name, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
    keep |= {prefix + name for name, _ in module.named_buffers(remove_duplicate=False)}
    for name in [name for name in state_dict if name not in keep]:
        del state_dict[name]


class MetricsLogger(TrainerCallback):
    """Appends every log entry to ``metrics.jsonl`` (rank 0), as training goes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step == 0 and self.path.exists():
            self.path.unlink()  # a fresh run (not a resume) starts a fresh log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        with explained_write_errors(self.path), open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")
