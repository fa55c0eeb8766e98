"""Our ``VLMConfig`` as a ``LlavaConfig``: the CLIP vision config read off the built tower, the LLM's own config.

- vision: open_clip's ``VisionTransformer`` is a ``CLIPVisionModel`` when it has the plain
  structure (``nn.MultiheadAttention``, ``ln_pre``, no layer scale, an exact GELU or QuickGELU, a
  patch embedding without bias, a square input): width, depth, heads, patch, image size,
  activation and layer-norm eps are read off the module, so open_clip's named models (ViT-B-16:
  768 wide, 12 blocks, ``quick_gelu`` for OpenAI's weights) and the custom ``local-dir:`` towers
  trained here (e.g. 4 blocks of width 192) map the same way.
- feature layer: our ``vision_feature_layer`` is a block index (negative from the end), its
  output before ``ln_post``; LLaVA indexes ``hidden_states``, whose entry 0 is the embeddings
  after ``pre_layrnorm`` and entry ``b + 1`` block ``b``'s output (before ``post_layernorm``). Block
  ``b`` of ``N`` is written as ``b - N`` (always negative, the form vLLM counts layers from).
- CLS: our tower drops it; ``vision_feature_select_strategy="default"`` drops it too.
"""

from __future__ import annotations

import copy

from open_clip.transformer import QuickGELU
from torch import nn
from transformers import CLIPVisionConfig, LlavaConfig

from apps.export.keymap import PROJECTOR_ACTIVATION, ExportError, check_projector_type


def clip_vision_config(model: nn.Module) -> CLIPVisionConfig:
    """The ``CLIPVisionConfig`` computing what ``model``'s open_clip tower computes, or ``ExportError`` saying why none does."""
    visual = model.vision_tower.visual
    block = visual.transformer.resblocks[0]
    gelu = block.mlp.gelu
    unsupported = []
    if not isinstance(block.attn, nn.MultiheadAttention):
        unsupported.append(f"attention {type(block.attn).__name__} (CLIP's is plain multi-head attention)")
    if not isinstance(block.ls_1, nn.Identity):
        unsupported.append("layer scale (ls_init_value)")
    if isinstance(visual.ln_pre, nn.Identity):
        unsupported.append("no ln_pre (CLIP always has pre_layrnorm)")
    if not (isinstance(gelu, QuickGELU) or (isinstance(gelu, nn.GELU) and gelu.approximate == "none")):
        unsupported.append(f"activation {gelu} (CLIP has exact gelu or quick_gelu)")
    if visual.conv1.bias is not None:
        unsupported.append("a patch embedding with bias")
    if visual.image_size[0] != visual.image_size[1] or visual.patch_size[0] != visual.patch_size[1]:
        unsupported.append(f"a non-square input {tuple(visual.image_size)} / patch {tuple(visual.patch_size)}")
    if unsupported:
        raise ExportError(f"this open_clip tower has no CLIPVisionModel equivalent: {'; '.join(unsupported)}")
    return CLIPVisionConfig(
        hidden_size=visual.transformer.width,
        intermediate_size=block.mlp.c_fc.out_features,
        num_hidden_layers=len(visual.transformer.resblocks),
        num_attention_heads=block.attn.num_heads,
        num_channels=visual.conv1.in_channels,
        image_size=visual.image_size[0],
        patch_size=visual.patch_size[0],
        hidden_act="quick_gelu" if isinstance(gelu, QuickGELU) else "gelu",
        layer_norm_eps=block.ln_1.eps,
        projection_dim=model.vision_tower.vision_config["open_clip_config"]["embed_dim"],
    )


def llava_feature_layer(model: nn.Module) -> int:
    """Our feature block as LLaVA's (negative) ``hidden_states`` index."""
    tower = model.vision_tower
    return tower.block_index - tower.num_layers


def llava_config(model: nn.Module) -> LlavaConfig:
    """The ``LlavaConfig`` of ``model`` (a ``VLMForCausalLM``)."""
    check_projector_type(model.config.projector_type)
    text_config = copy.deepcopy(model.config.text_config)
    config = LlavaConfig(
        vision_config=clip_vision_config(model),
        text_config=text_config,
        image_token_id=model.config.image_token_id,
        image_seq_length=model.config.image_seq_length,
        vision_feature_layer=llava_feature_layer(model),
        vision_feature_select_strategy="default",  # drop CLS, as our tower does
        projector_hidden_act=PROJECTOR_ACTIVATION[model.config.projector_type],
        multimodal_projector_bias=True,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    config._attn_implementation = model.config.text_config._attn_implementation
    return config
