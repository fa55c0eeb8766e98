"""The frozen open_clip vision tower that turns images into patch tokens.

``VisionTower`` holds only open_clip's ``VisionTransformer`` (the text tower is never
built) and returns the patch tokens of one of its blocks, CLS dropped:
``(N, 3, 224, 224) -> (N, 196, width)`` for a 224 px / patch-16 ViT.

The tower is frozen in every stage: its parameters never require grad, it stays in
eval mode whatever ``.train()`` is called with, and its forward runs under
``torch.no_grad()``. It is rebuilt from the plain-dict ``vision_config`` that the VLM
config stores, so a saved model needs neither the network nor open_clip's registry.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.factory import load_state_dict as load_open_clip_state_dict
from open_clip.transformer import VisionTransformer
from torch import nn

# open_clip's defaults (PreprocessCfg): OpenAI CLIP mean/std, bicubic, resize shortest side + centre crop.
DEFAULT_PREPROCESS = {
    "image_mean": list(open_clip.OPENAI_DATASET_MEAN),
    "image_std": list(open_clip.OPENAI_DATASET_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
# open_clip's "local-dir:FOLDER" models (open_clip.factory): a config file and a weights file in a folder.
LOCAL_DIR_SCHEMA = "local-dir:"
LOCAL_DIR_CONFIG = "open_clip_config.json"
LOCAL_DIR_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# open_clip's pretrained-tag keys -> our preprocessing keys.
_TAG_PREPROCESS_KEYS = {"mean": "image_mean", "std": "image_std", "interpolation": "interpolation", "resize_mode": "resize_mode"}


class VisionTower(nn.Module):
    """A frozen open_clip ViT that returns the patch tokens of one block.

    Args:
        vision_config: the plain dict made by :func:`load_vision_tower` (key
            ``open_clip_config`` holds open_clip's model config: ``embed_dim``,
            ``vision_cfg``, optional ``quick_gelu``).
        feature_layer: which block's output to return. Negative counts from the end:
            ``-2`` (default) is the second to last block as in LLaVA-1.5, ``-1`` the last
            block as in MiniMind-V (both before open_clip's final ``ln_post``).
    """

    def __init__(self, vision_config: dict[str, Any], feature_layer: int = -2):
        super().__init__()
        model_config = vision_config["open_clip_config"]
        vision_cfg = model_config["vision_cfg"]
        if "timm_model_name" in vision_cfg:
            raise ValueError(
                f"vision tower {vision_config.get('model_name')!r} is a timm model; only open_clip's own "
                "VisionTransformer (e.g. ViT-B-16, ViT-L-14) is supported"
            )
        # open_clip's own builder for the image tower alone: CLIP(...) would also build the
        # text tower, which we would throw away.
        self.visual = open_clip.model._build_vision_tower(
            model_config["embed_dim"], vision_cfg, quick_gelu=model_config.get("quick_gelu", False)
        )
        if not isinstance(self.visual, VisionTransformer):
            raise ValueError(f"vision tower must be an open_clip VisionTransformer, got {type(self.visual).__name__}")
        self.vision_config = copy.deepcopy(vision_config)
        self.num_layers = len(self.visual.transformer.resblocks)
        if not -self.num_layers <= feature_layer < self.num_layers:
            raise ValueError(
                f"vision_feature_layer={feature_layer} is out of range for a {self.num_layers}-block ViT "
                f"(use -{self.num_layers}..{self.num_layers - 1}; -1 is the last block)"
            )
        self.feature_layer = feature_layer
        self.block_index = feature_layer % self.num_layers
        _run_sequence_first(self.visual)
        self.hidden_size = self.visual.transformer.width
        grid_h, grid_w = self.visual.grid_size
        self.num_patches = grid_h * grid_w
        self.image_size = tuple(self.visual.image_size)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> VisionTower:
        # Frozen in every stage: a model-wide .train() must not turn on dropout / patch dropout here.
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` normalised pixels -> ``(N, num_patches, hidden_size)`` patch tokens."""
        with torch.no_grad():
            out = self.visual.forward_intermediates(
                pixel_values.to(self.dtype),
                indices=[self.block_index],
                stop_early=True,  # blocks after the chosen one are never run
                intermediates_only=True,
                output_fmt="NLC",  # tokens, CLS already split off by open_clip
            )
        return out["image_intermediates"][0]  # [N, T, D]


def _run_sequence_first(visual: VisionTransformer) -> None:
    """Run the blocks on ``(L, N, D)`` tokens, open_clip's ``batch_first=False`` layout (same weights, same outputs).

    In open_clip's default batch-first layout, ``nn.MultiheadAttention`` transposes its input to
    ``(L, N, D)`` without a copy and projects it with ``F.linear``; under autocast (bf16 training
    on AMX CPUs and GPUs) that projection is not folded into one matrix product but runs as a
    ``bmm`` of L = 197 products of N rows each against a broadcast weight, a slow kernel shape.
    Sequence-first, open_clip makes the tokens contiguous ``(L, N, D)`` once, and every
    projection is one ``addmm``; in fp32 (where the batch-first layout would use torch's fused
    attention kernel) it measured as fast or faster. open_clip builds the vision tower batch-first
    without a way to ask otherwise, hence the switch after building.
    """
    blocks = visual.transformer.resblocks
    if all(isinstance(getattr(block, "attn", None), nn.MultiheadAttention) for block in blocks):
        visual.transformer.batch_first = False
        for block in blocks:
            block.attn.batch_first = False


def resolve_open_clip_config(model_name: str | None, model_config: dict[str, Any] | None) -> dict[str, Any]:
    """Return open_clip's model config for ``model_name``, or ``model_config`` itself when given."""
    if model_config is not None:
        if "vision_cfg" not in model_config or "embed_dim" not in model_config:
            raise ValueError("an open_clip model config needs 'embed_dim' and 'vision_cfg' keys (see open_clip's model_configs/*.json)")
        return copy.deepcopy(model_config)
    if model_name is None:
        raise ValueError("give the vision tower as an open_clip model name (e.g. 'ViT-B-16') or a model config dict")
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"open_clip has no model named {model_name!r}; open_clip.list_models() lists them")
    return cfg


def read_local_dir(model_name: str, pretrained: str | None) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Model config, preprocessing and weights file of an open_clip ``local-dir:FOLDER`` model.

    The folder is what open_clip's ``create_model("local-dir:FOLDER")`` reads (and what
    ``train.clip`` writes): ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``)
    beside ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``).
    """
    folder = Path(model_name[len(LOCAL_DIR_SCHEMA) :]).expanduser()
    if pretrained is not None:
        raise ValueError(
            f"vision model {model_name} brings its own weights ({folder}/{LOCAL_DIR_WEIGHTS[0]}); "
            f"drop vision pretrained={pretrained!r} (set it to null / none)"
        )
    config_path = folder / LOCAL_DIR_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(
            f"vision model {model_name}: {config_path} not found; a local-dir model is a folder with "
            f"{LOCAL_DIR_CONFIG} and {LOCAL_DIR_WEIGHTS[0]} (python -m train.clip train writes one)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model_cfg = config["model_cfg"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{config_path}: not an open_clip config with a 'model_cfg' entry ({err})") from err
    weights = next((folder / name for name in LOCAL_DIR_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"vision model {model_name}: no weights in {folder} (looked for {', '.join(LOCAL_DIR_WEIGHTS)})")
    preprocess = {
        _TAG_PREPROCESS_KEYS[key]: list(value) if isinstance(value, (list, tuple)) else value
        for key, value in (config.get("preprocess_cfg") or {}).items()
        if key in _TAG_PREPROCESS_KEYS
    }
    return model_cfg, preprocess, str(weights.resolve())


def load_vision_tower(
    model_name: str | None = "ViT-B-16",
    pretrained: str | None = None,
    model_config: dict[str, Any] | None = None,
    feature_layer: int = -2,
    preprocess: dict[str, Any] | None = None,
) -> VisionTower:
    """Build a frozen vision tower with its weights.

    Args:
        model_name: open_clip architecture name (``ViT-B-16``, ``ViT-L-14``, ...), or
            ``local-dir:FOLDER`` for an open_clip model folder with its own config and weights
            (what ``train.clip`` writes; ``pretrained`` must then be None).
        pretrained: an open_clip pretrained tag such as ``"openai"`` (downloads, needs the
            network), a local weights file (an open_clip/CLIP checkpoint with ``visual.*``
            keys, or a tower-only state dict; ``.safetensors`` or a torch file), or ``None``
            for open_clip's random initialisation.
        model_config: an open_clip model config dict; overrides ``model_name``'s registered
            config (how tests and the offline recipe build small ViTs).
        feature_layer: see :class:`VisionTower`.
        preprocess: overrides of the image preprocessing (``image_mean``, ``image_std``,
            ``interpolation``, ``resize_mode``); a pretrained tag brings its own.
    """
    local_preprocess: dict[str, Any] = {}
    if model_name is not None and model_name.startswith(LOCAL_DIR_SCHEMA):
        model_config, local_preprocess, weights = read_local_dir(model_name, pretrained)
        pretrained = str(weights)
    open_clip_config = resolve_open_clip_config(model_name, model_config)
    preprocess_cfg = dict(DEFAULT_PREPROCESS)
    preprocess_cfg.update(local_preprocess)
    preprocess_cfg.update(open_clip_config.pop("preprocess_cfg", {}) or {})
    state_dict = None
    if pretrained is not None and not os.path.isfile(pretrained):
        if model_name is None or not open_clip.get_pretrained_cfg(model_name, pretrained):
            tags = open_clip.list_pretrained_tags_by_model(model_name) if model_name else []
            raise ValueError(
                f"vision pretrained={pretrained!r} is neither a weights file nor an open_clip tag of {model_name!r} "
                f"(known tags: {', '.join(tags) or 'none'})"
            )
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        # The weights of a tag were trained with a given activation (OpenAI's use QuickGELU).
        open_clip_config["quick_gelu"] = bool(tag_cfg.get("quick_gelu", open_clip_config.get("quick_gelu", False)))
        clip = open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=open_clip_config["quick_gelu"])
        state_dict = clip.visual.state_dict()
        for tag_key, key in _TAG_PREPROCESS_KEYS.items():
            if tag_key in tag_cfg:
                value = tag_cfg[tag_key]
                preprocess_cfg[key] = list(value) if isinstance(value, (list, tuple)) else value
        del clip
    elif pretrained is not None:
        state_dict = _visual_state_dict(load_open_clip_state_dict(pretrained), pretrained)
    preprocess_cfg.update(preprocess or {})
    vision_config = {
        "model_name": model_name if model_config is None else (model_name or "custom"),
        "pretrained": pretrained,
        "open_clip_config": open_clip_config,
        **preprocess_cfg,
    }
    tower = VisionTower(vision_config, feature_layer=feature_layer)
    if state_dict is not None:
        missing, unexpected = tower.visual.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"vision weights {pretrained} do not fit the {vision_config['model_name']} tower: "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
    return tower


def _visual_state_dict(state_dict: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """The image-tower part of a full CLIP checkpoint, or the file itself if it holds only the tower."""
    visual = {k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")}
    if visual:
        return visual
    if "conv1.weight" in state_dict:
        return state_dict
    raise ValueError(f"{path} holds no open_clip image tower weights (no 'visual.*' or 'conv1.weight' keys)")
