"""Our weights in LLaVA's names: the key maps as data, plus the two special transforms.

    open_clip VisionTransformer  -> CLIPVisionModel       (VISION_KEY_MAP; fused in_proj split into q / k / v)
    our projector                -> LlavaMultiModalProjector (PROJECTOR_KEY_MAPS; ``linear`` gets an identity linear_2)
    our causal LM                -> the same LM, decoder and head moved (OURS_PREFIX -> LLAVA_PREFIX)

:func:`llava_state_dict` gives the names of transformers' in-memory ``LlavaForConditionalGeneration``;
:func:`hub_layout` renames them to the layout of the LLaVA-HF checkpoints on the Hub
(``vision_tower.vision_model.*``, ``language_model.model.*``), which is what vLLM reads and what
transformers 5 still loads (its conversion mapping for ``llava`` and ``CLIPVisionModel``).
"""

from __future__ import annotations

import torch
from torch import nn


class ExportError(ValueError):
    """A model that has no exact LLaVA form, or an export that failed its checks; nothing was written."""


# open_clip VisionTransformer key -> transformers CLIPVisionModel key; "{}" is the block index.
VISION_KEY_MAP = {
    "conv1.weight": "embeddings.patch_embedding.weight",
    "class_embedding": "embeddings.class_embedding",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight",
    "ln_pre.bias": "pre_layrnorm.bias",
    "transformer.resblocks.{}.ln_1.weight": "encoder.layers.{}.layer_norm1.weight",
    "transformer.resblocks.{}.ln_1.bias": "encoder.layers.{}.layer_norm1.bias",
    "transformer.resblocks.{}.attn.out_proj.weight": "encoder.layers.{}.self_attn.out_proj.weight",
    "transformer.resblocks.{}.attn.out_proj.bias": "encoder.layers.{}.self_attn.out_proj.bias",
    "transformer.resblocks.{}.ln_2.weight": "encoder.layers.{}.layer_norm2.weight",
    "transformer.resblocks.{}.ln_2.bias": "encoder.layers.{}.layer_norm2.bias",
    "transformer.resblocks.{}.mlp.c_fc.weight": "encoder.layers.{}.mlp.fc1.weight",
    "transformer.resblocks.{}.mlp.c_fc.bias": "encoder.layers.{}.mlp.fc1.bias",
    "transformer.resblocks.{}.mlp.c_proj.weight": "encoder.layers.{}.mlp.fc2.weight",
    "transformer.resblocks.{}.mlp.c_proj.bias": "encoder.layers.{}.mlp.fc2.bias",
    "ln_post.weight": "post_layernorm.weight",
    "ln_post.bias": "post_layernorm.bias",
}
# open_clip's fused [q; k; v] input projection -> three projections (special transform 1).
FUSED_QKV_MAP = {
    "transformer.resblocks.{}.attn.in_proj_weight": "encoder.layers.{}.self_attn.{}_proj.weight",
    "transformer.resblocks.{}.attn.in_proj_bias": "encoder.layers.{}.self_attn.{}_proj.bias",
}
# open_clip weights after ln_post (the contrastive projection, attention poolers): no LLaVA
# feature layer reaches them, and CLIPVisionModel has no place for them.
DROPPED_VISION_PREFIXES = ("proj", "attn_pool.", "attn_pool_contrastive.")

# Our projector's keys -> LlavaMultiModalProjector's, per projector type, with LLaVA's activation.
# LLaVA's projector is always linear_1 -> act -> linear_2; ``linear`` is that with the identity
# activation ("linear" in transformers' ACT2FN) and an identity linear_2 (special transform 2),
# which multiplies by 1 and adds exact zeros: the same numbers, in any dtype.
PROJECTOR_KEY_MAPS = {
    "linear": {"weight": "linear_1.weight", "bias": "linear_1.bias"},
    "mlp2x_gelu": {"0.weight": "linear_1.weight", "0.bias": "linear_1.bias", "2.weight": "linear_2.weight", "2.bias": "linear_2.bias"},
}
PROJECTOR_ACTIVATION = {"linear": "linear", "mlp2x_gelu": "gelu"}  # nn.GELU() is exact-erf, as is ACT2FN["gelu"]

# Where each part lives in our model and in transformers' LlavaForConditionalGeneration.
OURS_PREFIX = {"vision": "vision_tower.visual.", "projector": "projector.", "decoder": "language_model.model.", "head": "language_model.lm_head."}
LLAVA_PREFIX = {"vision": "model.vision_tower.", "projector": "model.multi_modal_projector.", "decoder": "model.language_model.", "head": "lm_head."}
# transformers 5's in-memory names -> the Hub's LLaVA-HF checkpoint names (what vLLM reads).
HUB_PREFIX = {
    "model.vision_tower.": "vision_tower.vision_model.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "model.language_model.": "language_model.model.",
    "lm_head.": "language_model.lm_head.",
}


def check_projector_type(projector_type: str) -> None:
    """Refuse a projector type with no exact ``LlavaMultiModalProjector`` form."""
    if projector_type not in PROJECTOR_KEY_MAPS:
        raise ExportError(
            f"projector_type {projector_type!r} has no LLaVA form: LlavaMultiModalProjector is always "
            f"linear_1 -> activation -> linear_2, which computes exactly only {', '.join(PROJECTOR_KEY_MAPS)}"
        )


def vision_state_dict(open_clip_state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """open_clip ``VisionTransformer`` keys -> ``CLIPVisionModel`` keys; every key is used or knowingly dropped."""
    converted, used = {}, set()
    for layer in range(num_layers):
        for source, target in FUSED_QKV_MAP.items():
            key = source.format(layer)
            for part, tensor in zip(("q", "k", "v"), open_clip_state[key].chunk(3, dim=0)):
                converted[target.format(layer, part)] = tensor
            used.add(key)
    for source, target in VISION_KEY_MAP.items():
        for layer in range(num_layers) if "{}" in source else [None]:
            key = source if layer is None else source.format(layer)
            if key not in open_clip_state:
                raise ExportError(f"the open_clip tower has no {key!r}, which CLIPVisionModel needs")
            converted[target if layer is None else target.format(layer)] = open_clip_state[key]
            used.add(key)
    left = sorted(k for k in set(open_clip_state) - used if not k.startswith(DROPPED_VISION_PREFIXES))
    if left:
        raise ExportError(f"the open_clip tower has weights CLIPVisionModel has no place for: {', '.join(left[:5])}")
    return converted


def projector_state_dict(projector_type: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our projector's weights as ``linear_1`` / ``linear_2`` (an identity ``linear_2`` for ``linear``)."""
    check_projector_type(projector_type)
    key_map = PROJECTOR_KEY_MAPS[projector_type]
    if state.keys() != key_map.keys():
        raise ExportError(f"the {projector_type} projector holds {sorted(state)}, expected {sorted(key_map)}")
    converted = {key_map[k]: v for k, v in state.items()}
    if projector_type == "linear":
        width = converted["linear_1.weight"].shape[0]
        dtype = converted["linear_1.weight"].dtype
        converted["linear_2.weight"] = torch.eye(width, dtype=dtype)
        converted["linear_2.bias"] = torch.zeros(width, dtype=dtype)
    return converted


def llava_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A ``VLMForCausalLM``'s ``state_dict`` in ``LlavaForConditionalGeneration`` keys (tensors shared, not copied)."""
    state = model.state_dict()
    parts = {part: {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} for part, prefix in OURS_PREFIX.items()}
    outside = sorted(set(state) - {prefix + k for part, prefix in OURS_PREFIX.items() for k in parts[part]})
    if outside:
        raise ExportError(f"weights outside the vision tower, projector and LLM: {', '.join(outside[:5])}")
    converted = {}
    vision = vision_state_dict(parts["vision"], len(model.vision_tower.visual.transformer.resblocks))
    converted.update({LLAVA_PREFIX["vision"] + k: v for k, v in vision.items()})
    projector = projector_state_dict(model.config.projector_type, parts["projector"])
    converted.update({LLAVA_PREFIX["projector"] + k: v for k, v in projector.items()})
    for part in ("decoder", "head"):
        converted.update({LLAVA_PREFIX[part] + k: v for k, v in parts[part].items()})
    return converted


def hub_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5's in-memory LLaVA names -> the Hub checkpoints' names (``vision_tower.vision_model.*``, ...)."""
    renamed = {}
    for key, tensor in state.items():
        prefix = next((p for p in HUB_PREFIX if key.startswith(p)), None)
        if prefix is None:
            raise ExportError(f"{key}: no place in the LLaVA-HF checkpoint layout")
        renamed[HUB_PREFIX[prefix] + key[len(prefix) :]] = tensor
    return renamed
