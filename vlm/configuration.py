"""``VLMConfig``: everything needed to rebuild a VLM exactly, saved as ``config.json``."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from projector import PROJECTOR_TYPES


@strict
class VLMConfig(PreTrainedConfig):
    r"""Configuration of a :class:`~vlm.VLMForCausalLM`.

    Args:
        vision_config: the vision tower spec as made by ``vision.load_vision_tower``: the
            open_clip model config (``open_clip_config``), where its weights came from
            (``model_name``, ``pretrained``; provenance only, never downloaded on load) and
            its preprocessing (``image_mean``, ``image_std``, ``interpolation``, ``resize_mode``).
        text_config: the LLM's own config (any transformers causal LM).
        projector_type: ``linear`` (MiniMind-V) or ``mlp2x_gelu`` (LLaVA-1.5).
        vision_feature_layer: which ViT block feeds the projector; ``-2`` (LLaVA-1.5) is the
            second to last, ``-1`` (MiniMind-V) the last.
        image_token: the placeholder string that marks an image in a prompt.
        image_token_id: its id in the tokenizer (added as a special token).
        image_seq_length: placeholder tokens per image, equal to the tower's patch count.
    """

    model_type = "vlm"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    vision_config: dict | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_type: str = "linear"
    vision_feature_layer: int = -2
    image_token: str = "<image>"
    image_token_id: int | None = None
    image_seq_length: int = 196

    def __post_init__(self, **kwargs: Any):
        super().__post_init__(**kwargs)
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type={self.projector_type!r} is not one of {', '.join(PROJECTOR_TYPES)}")
        if self.image_seq_length <= 0:
            raise ValueError(f"image_seq_length must be positive, got {self.image_seq_length}")
        if self.vision_config is not None and "open_clip_config" not in self.vision_config:
            raise ValueError("vision_config needs an 'open_clip_config' entry (build it with vision.load_vision_tower)")
