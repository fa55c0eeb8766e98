"""Writing the LLaVA-HF folder: ``config.json``, safetensors weights (sharded above a size, with the
index), ``generation_config.json``, the processor (``processor_config.json``, ``preprocessor_config.json``,
tokenizer files, ``chat_template.jinja``) and a short model card."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file
from tqdm import tqdm

from vlm.atomic import atomic_write_text

WEIGHTS_INDEX = "model.safetensors.index.json"

MODEL_CARD = """---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [llava, vlm-toolkit]
---
# {name}

A LLaVA-style vision-language model exported by `vlm export --to llava` (vlm-toolkit) from
`{source}`: {vision}, a `{projector}` projector, {llm}. It loads with transformers alone:

```python
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

model = LlavaForConditionalGeneration.from_pretrained("{name}")
processor = AutoProcessor.from_pretrained("{name}", backend="pil")  # "pil": the exact pixels of training
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is in the image?"}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=Image.open("image.png"), text=prompt, return_tensors="pt", add_special_tokens=False)
output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Checked on export against the source model ({dtype}):
{checks}
"""


def write_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_size: str | int = "5GB") -> list[str]:
    """``state`` as safetensors files, one or sharded with ``model.safetensors.index.json``; returns the file names."""
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    files = list(split.filename_to_tensors.items())
    for filename, names in tqdm(files, desc="writing weights", unit="file", disable=len(files) == 1):
        # contiguous copies: the q / k / v chunks share open_clip's fused tensor, which safetensors refuses
        save_file({name: state[name].contiguous().clone() for name in names}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())}, "weight_map": split.tensor_to_filename}
        atomic_write_text(folder / WEIGHTS_INDEX, json.dumps(index, indent=2) + "\n")
    return [name for name, _ in files]


def write_model_card(folder: Path, **fields: str) -> None:
    atomic_write_text(folder / "README.md", MODEL_CARD.format(**fields))
