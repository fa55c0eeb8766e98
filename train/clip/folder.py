"""The output folder, open_clip's "local-dir" layout (weights and config), and the model configs it is made from."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

DEFAULT_MODEL_CONFIG = Path(__file__).parents[1] / "configs" / "clip_vit_tiny.json"
WEIGHTS_NAME = "open_clip_model.safetensors"  # the first name open_clip's local-dir loader looks for
CONFIG_NAME = "open_clip_config.json"  # open_clip's local-dir config: {"model_cfg": ..., "preprocess_cfg": ...}
RECORD_NAME = "train_clip.json"  # what was asked for (compared on reuse) and what the run measured


def load_model_config(model_config: dict[str, Any] | str | os.PathLike = DEFAULT_MODEL_CONFIG) -> dict[str, Any]:
    """An open_clip model config from a dict, a JSON file, or a ``train_clip`` output folder."""
    return resolve_model_config(model_config, None)[0]


def resolve_model_config(model_config: dict[str, Any] | str | os.PathLike, model_name: str | None) -> tuple[dict, str]:
    if isinstance(model_config, dict):
        config, default_name = json.loads(json.dumps(model_config)), "clip-custom"
    else:
        path = Path(model_config)
        if path.is_dir():  # a train_clip output / open_clip local-dir folder
            config, default_name = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))["model_cfg"], path.name
        else:
            config, default_name = json.loads(path.read_text(encoding="utf-8")), path.stem
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
    if missing:
        raise ValueError(f"CLIP model config {model_config!r} lacks {missing} (see open_clip's model_configs/*.json)")
    name = model_name or default_name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"model_name {name!r} must be letters, digits, '.', '_' or '-' (it becomes a file name)")
    return config, name


def export_weights(checkpoint: Path, target: Path, config: dict[str, Any], name: str) -> None:
    """open_clip's training checkpoint -> the bare fp32 state dict as safetensors."""
    import torch
    from safetensors.torch import save_file

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    state = {key.removeprefix("module."): value.detach().float().contiguous() for key, value in state.items()}
    if not any(key.startswith("visual.") for key in state):
        raise RuntimeError(f"{checkpoint} holds no visual.* weights; keys start {sorted(state)[:3]}")
    save_file(state, str(target), metadata={"format": "pt", "model_name": name, "open_clip_config": json.dumps(config)})
    os.chmod(target, 0o644)  # as vlm.atomic's files: outputs are meant to be shared


def preprocess_cfg(config: dict[str, Any]) -> dict[str, Any]:
    # What open_clip_train trained with: no --image-mean/--image-std, so open_clip's defaults.
    import open_clip

    return {
        "size": config["vision_cfg"]["image_size"],
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
