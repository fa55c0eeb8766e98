"""What a resumed run repairs before it trains: the state a kill can leave in a run folder.

- a run whose last checkpoint already reached its target (a kill in the final save) is finished:
  resuming it trains nothing (the Trainer would run one step past ``max_steps``) and only makes
  sure the final model is that checkpoint's;
- ``metrics.jsonl`` keeps the steps logged after the checkpoint: they are trained again, so they
  are cut, or they would appear twice;
- the staging folders of a checkpoint or final model killed while being written are removed.
"""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

from train.config import TrainConfig
from vlm.atomic import atomic_directory, atomic_write_text

TRAINER_STATE = "trainer_state.json"
STAGING_DIRS = (".staging", ".final-staging")
"""The trainer's own staging folders in a run folder (train.trainer, train.run)."""
# A checkpoint's training state, next to the model files that save_model wrote into it.
_STATE_FILES = {"optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin", "latest",
                "zero_to_fp32.py", "zero_to_torch.py", "rng_state.pth"}


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a checkpoint was saved at (its trainer_state.json)."""
    return int(json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"])


def finished_at(checkpoint: Path, cfg: TrainConfig, world_scale: float = 1.0) -> int | None:
    """The step count of ``checkpoint`` if it already is the end of the run ``cfg`` asks for, else None.

    With ``max_steps`` > 0 the run ends there; with epochs, at the checkpoint's own planned
    ``max_steps`` when the number of epochs is the one it was planned with. ``world_scale`` is the
    checkpoint's samples per step over this run's (another number of processes).
    """
    state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    step = int(int(state["global_step"]) * world_scale)
    if cfg.max_steps > 0:
        return step if step >= cfg.max_steps else None
    if float(state.get("num_train_epochs", -1)) == float(cfg.num_train_epochs) and step >= int(state["max_steps"] * world_scale):
        return step
    return None


def model_files(checkpoint: Path) -> list[Path]:
    """The files of a checkpoint that ``save_model`` wrote (the model), not the training state."""
    return sorted(p for p in checkpoint.iterdir()
                  if p.is_file() and p.name not in _STATE_FILES and not p.name.startswith("rng_state_"))


def finish_from_checkpoint(checkpoint: Path, final: Path) -> bool:
    """Make ``final`` the model of ``checkpoint`` (the same files the final save writes); False if it already is."""
    files = model_files(checkpoint)
    if final.is_dir() and all((final / p.name).is_file() and filecmp.cmp(p, final / p.name, shallow=False) for p in files):
        return False
    with atomic_directory(final, overwrite=True) as staging:
        for path in files:
            shutil.copy2(path, staging / path.name)
    return True


def truncate_metrics(path: Path, step: int) -> int:
    """Drop the entries of ``metrics.jsonl`` logged after ``step``; returns how many were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry_step = json.loads(line).get("step", 0)
        except (json.JSONDecodeError, AttributeError):
            dropped += 1  # a line torn by the kill
            continue
        if entry_step > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return dropped


def remove_stale_staging(output_dir: Path) -> list[Path]:
    """Remove the trainer's staging folders (a checkpoint or final model killed while being written)."""
    removed = [output_dir / name for name in STAGING_DIRS if (output_dir / name).is_dir()]
    for path in removed:
        shutil.rmtree(path)
    return removed
