"""save_pretrained / from_pretrained round trips, through our classes and transformers' Auto classes."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from tiny import build_tiny_vlm, make_image
from vlm import VLMForCausalLM, VLMProcessor
from vlm.processing import DEFAULT_CHAT_TEMPLATE


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_round_trip_gives_identical_logits(kind, llama_dir, qwen2_dir, tmp_path):
    model, processor = build_tiny_vlm(llama_dir if kind == "llama" else qwen2_dir, projector_type="mlp2x_gelu")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert {"model.safetensors", "config.json", "generation_config.json", "processor_config.json", "tokenizer.json"} <= set(files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))], files

    prompt = processor.apply_chat_template([{"role": "user", "content": "<image>\nwhat colour is the circle"}])
    inputs = processor(text=prompt, images=[make_image(2)])
    with torch.no_grad():
        expected = model(**inputs).logits

    for loaded in (VLMForCausalLM.from_pretrained(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)):
        assert type(loaded) is VLMForCausalLM
        assert loaded.config.projector_type == "mlp2x_gelu"
        with torch.no_grad():
            assert torch.equal(loaded.eval()(**inputs).logits, expected)

    for loaded_processor in (VLMProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded_processor) is VLMProcessor
        again = loaded_processor(text=prompt, images=[make_image(2)])
        assert torch.equal(again["input_ids"], inputs["input_ids"])
        assert torch.equal(again["pixel_values"], inputs["pixel_values"])
        assert loaded_processor.image_token_id == model.config.image_token_id
        assert loaded_processor.image_seq_length == 196


def test_loaded_model_generates_the_same(llama_dir, tmp_path):
    model, processor = build_tiny_vlm(llama_dir)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    inputs = processor(text=processor.apply_chat_template([{"role": "user", "content": "<image>\ndescribe"}]), images=[make_image(4)])
    assert torch.equal(
        model.generate(**inputs, max_new_tokens=8, do_sample=False),
        loaded.generate(**inputs, max_new_tokens=8, do_sample=False),
    )
    assert loaded.generation_config.suppress_tokens == model.generation_config.suppress_tokens


def test_base_llm_gets_a_chatml_template_that_survives_saving(base_llm_dir, tmp_path):
    model, processor = build_tiny_vlm(base_llm_dir)
    tokenizer = processor.tokenizer
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn in model.generation_config.eos_token_id
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}]
    text = loaded.apply_chat_template(messages)
    assert text == "<|im_start|>user\n<image>\ndescribe<|im_end|>\n<|im_start|>assistant\n"
    assert text == processor.apply_chat_template(messages)
