"""Answering prompts about images with a saved VLM (the engine behind ``vlm chat``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TextIO

import torch
from transformers import TextStreamer

from vision import load_image
from vlm.modeling import VLMForCausalLM
from vlm.processing import VLMProcessor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_for_chat(
    model_dir: str | os.PathLike, device: str | None = None, dtype: str | None = None
) -> tuple[VLMForCausalLM, VLMProcessor]:
    """Load a saved VLM folder for inference (eval mode, on ``device``)."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"{model_dir} is not a saved VLM folder (no config.json); make one with `vlm build`")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    processor = VLMProcessor.from_pretrained(model_dir)
    model = VLMForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype]).to(device).eval()
    return model, processor


class _Streamer(TextStreamer):
    """TextStreamer that writes to a given stream instead of print()."""

    def __init__(self, tokenizer, stream: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stream = stream

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.stream.write(text + ("\n" if stream_end else ""))
        self.stream.flush()


def answer_once(
    model: VLMForCausalLM,
    processor: VLMProcessor,
    prompt: str,
    images: Sequence[str | os.PathLike] = (),
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stream: TextIO | None = None,
) -> str:
    """Answer one prompt about ``images``; stream the reply token by token to ``stream`` if given.

    ``<image>`` in the prompt marks where each image goes; without marks the images come
    first, each on its own line, as in LLaVA's data.
    """
    pictures = [load_image(path) for path in images]
    content = prompt
    if pictures and processor.image_token not in prompt:
        content = (processor.image_token + "\n") * len(pictures) + prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    inputs = processor(text=processor.apply_chat_template(messages), images=pictures or None).to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    torch.manual_seed(seed)
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        streamer=_Streamer(processor.tokenizer, stream) if stream is not None else None,
        **sampling,
    )
    return processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
