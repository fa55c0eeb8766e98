"""The speed benchmark's reference: transformers' ``LlavaForConditionalGeneration`` holding OUR weights.

:func:`build_llava_reference` turns a :class:`vlm.VLMForCausalLM` into the LLaVA model that
computes the same function, so the two can be timed against each other on equal terms:

- vision: open_clip's ``VisionTransformer`` becomes a ``CLIPVisionModel`` (same width, depth,
  heads, patch, image size, activation and layer-norm eps, read off the built tower) through
  the explicit key map :data:`VISION_KEY_MAP`; open_clip's fused ``attn.in_proj_*`` is split
  into q / k / v. Our ``vision_feature_layer`` (a block index, CLS dropped) is LLaVA's
  ``hidden_states`` index with ``vision_feature_select_strategy="default"``.
- projector: LLaVA's ``LlavaMultiModalProjector`` is always ``linear_1 -> act -> linear_2``,
  which is our ``mlp2x_gelu`` (exact-erf GELU in both); a ``linear`` projector has no LLaVA
  equivalent, so it is refused.
- LLM: the same causal LM, its decoder as ``model.language_model`` and its head as ``lm_head``.

Conversion is data (the key maps) plus one special transform (the q/k/v split), with asserts
on key counts and shapes; ``tests/test_bench_reference.py`` checks that the logits agree.
"""

from __future__ import annotations

import copy

import torch
from open_clip.transformer import QuickGELU
from torch import nn
from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

from vlm.modeling import VLMForCausalLM

# open_clip VisionTransformer key -> HF CLIPVisionModel key; "{}" is the block index.
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
# open_clip's fused [q; k; v] input projection -> three HF projections (the one special transform).
FUSED_QKV_MAP = {
    "transformer.resblocks.{}.attn.in_proj_weight": "encoder.layers.{}.self_attn.{}_proj.weight",
    "transformer.resblocks.{}.attn.in_proj_bias": "encoder.layers.{}.self_attn.{}_proj.bias",
}
# open_clip keys with no CLIPVisionModel counterpart: the image-embedding projection after
# ln_post, which a LLaVA feature layer never reaches.
DROPPED_VISION_KEYS = ("proj",)

# Where each part lives in our model and in LlavaForConditionalGeneration.
OURS_PREFIX = {"vision": "vision_tower.visual.", "projector": "projector.", "decoder": "language_model.model.", "head": "language_model.lm_head."}
LLAVA_PREFIX = {"vision": "model.vision_tower.", "projector": "model.multi_modal_projector.", "decoder": "model.language_model.", "head": "lm_head."}
# our mlp2x_gelu Sequential(Linear, GELU, Linear) -> LlavaMultiModalProjector
PROJECTOR_KEY_MAP = {"0.weight": "linear_1.weight", "0.bias": "linear_1.bias", "2.weight": "linear_2.weight", "2.bias": "linear_2.bias"}


def clip_vision_config(model: VLMForCausalLM) -> CLIPVisionConfig:
    """The ``CLIPVisionConfig`` that computes what our open_clip tower computes, read off the built tower."""
    visual = model.vision_tower.visual
    block = visual.transformer.resblocks[0]
    unsupported = []
    if not isinstance(block.attn, nn.MultiheadAttention):
        unsupported.append(f"attention {type(block.attn).__name__}")
    if not isinstance(block.ls_1, nn.Identity):
        unsupported.append("layer scale (ls_init_value)")
    if isinstance(visual.ln_pre, nn.Identity):
        unsupported.append("no ln_pre")
    if not isinstance(block.mlp.gelu, (nn.GELU, QuickGELU)) or (isinstance(block.mlp.gelu, nn.GELU) and block.mlp.gelu.approximate != "none"):
        unsupported.append(f"activation {block.mlp.gelu}")
    if visual.conv1.bias is not None:
        unsupported.append("a patch embedding with bias")
    if unsupported:
        raise ValueError(f"this open_clip tower has no CLIPVisionModel equivalent: {', '.join(unsupported)}")
    return CLIPVisionConfig(
        hidden_size=visual.transformer.width,
        intermediate_size=block.mlp.c_fc.out_features,
        num_hidden_layers=len(visual.transformer.resblocks),
        num_attention_heads=block.attn.num_heads,
        num_channels=visual.conv1.in_channels,
        image_size=visual.image_size[0],
        patch_size=visual.patch_size[0],
        hidden_act="quick_gelu" if isinstance(block.mlp.gelu, QuickGELU) else "gelu",
        layer_norm_eps=block.ln_1.eps,
        projection_dim=model.vision_tower.vision_config["open_clip_config"]["embed_dim"],
    )


def llava_config(model: VLMForCausalLM) -> LlavaConfig:
    """A ``LlavaConfig`` equivalent to ``model.config`` (which must use the ``mlp2x_gelu`` projector)."""
    if model.config.projector_type != "mlp2x_gelu":
        raise ValueError(
            f"projector_type={model.config.projector_type!r}: LLaVA's projector is always Linear -> GELU -> Linear, "
            "so only a VLM built with projector_type='mlp2x_gelu' has a LlavaForConditionalGeneration equivalent"
        )
    feature_layer = model.config.vision_feature_layer
    text_config = copy.deepcopy(model.config.text_config)
    config = LlavaConfig(
        vision_config=clip_vision_config(model),
        text_config=text_config,
        image_token_id=model.config.image_token_id,
        image_seq_length=model.config.image_seq_length,
        # LLaVA indexes hidden_states, whose entry 0 is the embeddings: block b's output is entry b + 1
        vision_feature_layer=feature_layer if feature_layer < 0 else feature_layer + 1,
        vision_feature_select_strategy="default",  # drop CLS, as our tower does
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    config._attn_implementation = model.config.text_config._attn_implementation
    return config


def convert_vision_state_dict(open_clip_state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """open_clip ``VisionTransformer`` keys -> ``CLIPVisionModel`` keys."""
    converted, used = {}, set()
    for layer in range(num_layers):
        for source, target in FUSED_QKV_MAP.items():
            key = source.format(layer)
            for part, tensor in zip(("q", "k", "v"), open_clip_state[key].chunk(3, dim=0)):
                converted[target.format(layer, part)] = tensor
            used.add(key)
    for source, target in VISION_KEY_MAP.items():
        layers = range(num_layers) if "{}" in source else [None]
        for layer in layers:
            key = source.format(layer) if layer is not None else source
            converted[target.format(layer) if layer is not None else target] = open_clip_state[key]
            used.add(key)
    left = set(open_clip_state) - used - set(DROPPED_VISION_KEYS)
    assert not left, f"open_clip vision keys the key map does not cover: {sorted(left)[:5]}"
    return converted


def convert_state_dict(model: VLMForCausalLM) -> dict[str, torch.Tensor]:
    """Our ``state_dict`` in ``LlavaForConditionalGeneration`` keys."""
    state = model.state_dict()
    converted = {}
    part_states = {part: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} for part, prefix in OURS_PREFIX.items()}
    assert sum(len(s) for s in part_states.values()) == len(state), "keys outside vision tower / projector / LLM"
    vision = convert_vision_state_dict(part_states["vision"], len(model.vision_tower.visual.transformer.resblocks))
    converted.update({LLAVA_PREFIX["vision"] + k: v for k, v in vision.items()})
    assert part_states["projector"].keys() == PROJECTOR_KEY_MAP.keys(), sorted(part_states["projector"])
    converted.update({LLAVA_PREFIX["projector"] + PROJECTOR_KEY_MAP[k]: v for k, v in part_states["projector"].items()})
    for part in ("decoder", "head"):
        converted.update({LLAVA_PREFIX[part] + k: v for k, v in part_states[part].items()})
    return converted


def build_llava_reference(model: VLMForCausalLM) -> LlavaForConditionalGeneration:
    """``LlavaForConditionalGeneration`` with ``model``'s weights (copied), in ``model``'s dtype."""
    dtype = model.language_model.dtype
    reference = LlavaForConditionalGeneration(llava_config(model)).to(dtype)
    converted = convert_state_dict(model)
    expected = reference.state_dict()
    tied = {"lm_head.weight"} if reference.config.tie_word_embeddings else set()
    missing = set(expected) - set(converted) - tied
    unexpected = set(converted) - set(expected)
    assert not missing and not unexpected, f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
    for key, tensor in converted.items():
        assert tensor.shape == expected[key].shape, f"{key}: ours {tuple(tensor.shape)} vs LLaVA {tuple(expected[key].shape)}"
    reference.load_state_dict(converted, strict=not tied)
    if tied:
        assert reference.lm_head.weight.data_ptr() == reference.get_input_embeddings().weight.data_ptr(), "lm_head is not tied"
    reference.generation_config = copy.deepcopy(model.generation_config)
    return reference.eval()
