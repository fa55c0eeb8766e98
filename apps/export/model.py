"""``LlavaForConditionalGeneration`` holding a ``VLMForCausalLM``'s weights, in memory.

The one conversion of the project: ``vlm export`` writes this model's weights and config, and
the speed benchmark times it against ours (``benchmarks/speed.py``).
"""

from __future__ import annotations

import copy

from torch import nn
from transformers import LlavaForConditionalGeneration

from apps.export.config import llava_config
from apps.export.keymap import ExportError, llava_state_dict


def build_llava(model: nn.Module) -> LlavaForConditionalGeneration:
    """``LlavaForConditionalGeneration`` computing what ``model`` computes, its weights copied, in ``model``'s dtype."""
    dtype = model.language_model.dtype
    llava = LlavaForConditionalGeneration(llava_config(model)).to(dtype)
    converted = llava_state_dict(model)
    expected = llava.state_dict()
    tied = {"lm_head.weight"} if llava.config.tie_word_embeddings else set()
    missing = sorted(set(expected) - set(converted) - tied)
    unexpected = sorted(set(converted) - set(expected))
    if missing or unexpected:
        raise ExportError(f"the key map does not fit LlavaForConditionalGeneration: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, tensor in converted.items():
        if tensor.shape != expected[key].shape:
            raise ExportError(f"{key}: ours {tuple(tensor.shape)} vs LLaVA's {tuple(expected[key].shape)}")
    llava.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=not tied)
    if tied and llava.lm_head.weight.data_ptr() != llava.get_input_embeddings().weight.data_ptr():
        raise ExportError("lm_head is not tied to the input embeddings as in our LLM")
    llava.generation_config = copy.deepcopy(model.generation_config)
    return llava.eval()
