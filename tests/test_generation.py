"""Generation: image features enter at prefill only, and the KV cache and left padding change nothing."""

from __future__ import annotations

import pytest
import torch

from tiny import build_tiny_vlm, make_image


@pytest.fixture(params=["llama", "qwen2"])
def vlm(request, llama_dir, qwen2_dir):
    return build_tiny_vlm(llama_dir if request.param == "llama" else qwen2_dir)


def _prompt(processor, content):
    return processor.apply_chat_template([{"role": "user", "content": content}])


def _count_tower_calls(model):
    calls = []
    handle = model.vision_tower.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls, handle


def test_greedy_is_the_same_with_and_without_kv_cache(vlm):
    model, processor = vlm
    inputs = processor(text=_prompt(processor, "<image>\ndescribe the picture"), images=[make_image(5)])
    calls, handle = _count_tower_calls(model)
    cached = model.generate(**inputs, max_new_tokens=12, do_sample=False, use_cache=True)
    cached_calls = list(calls)
    calls.clear()
    uncached = model.generate(**inputs, max_new_tokens=12, do_sample=False, use_cache=False)
    handle.remove()
    assert torch.equal(cached, uncached)
    assert cached.shape[1] == inputs["input_ids"].shape[1] + 12
    assert cached_calls == [1], "with a KV cache the image is encoded once, at prefill"
    assert len(calls) == 12, "without a cache every step re-encodes the image"


def test_the_image_changes_the_answer(vlm):
    """Guards the tests above against a model that ignores its image."""
    model, processor = vlm
    prompt = _prompt(processor, "<image>\ndescribe the picture")
    logits = [model(**processor(text=prompt, images=[make_image(s)])).logits[0, -1] for s in (5, 6)]
    assert (logits[0] - logits[1]).abs().max() > 1e-2


def test_left_padded_batch_generates_what_each_prompt_generates_alone(vlm):
    model, processor = vlm
    prompts = [
        _prompt(processor, "<image>\nwhat colour is the circle"),
        _prompt(processor, "<image>\n<image>\nhow many shapes are there? describe the picture in detail"),
        _prompt(processor, "yes or no"),
    ]
    images = [[make_image(7)], [make_image(8), make_image(9)], []]
    batch = processor(text=prompts, images=images)
    assert batch["attention_mask"][:, 0].tolist() == [0, 1, 0], "padding is on the left"
    together = model.generate(**batch, max_new_tokens=10, do_sample=False)
    new_together = together[:, batch["input_ids"].shape[1]:]
    for i, (prompt, imgs) in enumerate(zip(prompts, images)):
        alone = processor(text=prompt, images=imgs or None)
        out = model.generate(**alone, max_new_tokens=10, do_sample=False)
        assert torch.equal(out[0, alone["input_ids"].shape[1]:], new_together[i]), f"prompt {i}"


def test_the_image_token_is_never_generated(vlm):
    model, processor = vlm
    assert model.config.image_token_id in model.generation_config.suppress_tokens
    inputs = processor(text=_prompt(processor, "<image>\ndescribe"), images=[make_image(1)])
    # make the image token the most likely next token, then check generate refuses it
    with torch.no_grad():
        model.language_model.get_output_embeddings().weight[model.config.image_token_id] *= 50
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert not (out[0, inputs["input_ids"].shape[1]:] == model.config.image_token_id).any()
