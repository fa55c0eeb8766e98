"""``torch_compile=true``: compile the LLM's decoder layers in place (regional compilation).

Why regional, and why only the LLM's layers: the decoder layers are where a training step spends
its time and they are identical, so one compiled graph serves all of them and compiling costs
about one layer's time. Compiling the whole VLM instead would break the graph at the placeholder
checks of ``VLMForCausalLM.embed_inputs`` and recompile for every new batch shape; the frozen vision
tower runs under ``no_grad`` (or not at all with ``feature_cache``). accelerate's
``compile_regions_deepspeed`` does the in-place ``Module.compile()`` per block, which keeps parameter
names (checkpoints and the merge see the same model). Checked single-process; ZeRO-3 is refused
by the config.
"""

from __future__ import annotations

from torch import nn


def compile_llm_layers(model: nn.Module) -> int:
    """Compile each decoder layer of the VLM's LLM in place; return how many were compiled.

    ``model`` is a ``VLMForCausalLM`` or the peft model wrapping one (LoRA layers are compiled
    with the decoder layer that holds them).
    """
    from accelerate.utils import compile_regions_deepspeed

    vlm = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(vlm.language_model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"torch_compile=true: {type(vlm.language_model).__name__} has no `layers` list of decoder layers to compile; "
            "set torch_compile=false"
        )
    compile_regions_deepspeed(layers)  # Module.compile() on each layer, in place
    return len(layers)
