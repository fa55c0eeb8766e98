"""bf16 where the hardware multiplies it fast (vlm.precision): the choice, and bf16 inference's correctness.

The bf16 path's speed is not measured here (these CPUs may lack AMX, where bf16 is many times
slower than fp32); its results are checked on the tiny models against fp32 with a tolerance
made for bf16 (8 bits of mantissa: ~1% of the logits' scale after a few layers).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList

import train.run
import vlm.precision
from tiny import build_tiny_vlm, make_image
from vlm.chat import ChatSession, answer_once, load_for_chat
from vlm.precision import bf16_supported, inference_dtype
from vlm.shared_prefix import generate_sharing_prefixes

BF16_TOLERANCE = 0.03  # of the logits' largest magnitude


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, qwen2_dir):
    model, processor = build_tiny_vlm(qwen2_dir)
    out = tmp_path_factory.mktemp("precision") / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.mark.parametrize("amx", [True, False])
def test_the_cpu_gets_bf16_exactly_when_it_has_amx(monkeypatch, amx):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert bf16_supported("cpu") is amx
    assert inference_dtype("cpu") == ("bfloat16" if amx else "float32")
    assert train.run.bf16_supported is vlm.precision.bf16_supported, "training's autocast choice is the same check"


def test_a_gpu_without_bf16_or_without_cuda_gets_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference_dtype("cuda") == "float32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert inference_dtype("cuda:0") == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert inference_dtype("cuda:1") == "bfloat16"


@pytest.mark.parametrize("amx", [True, False])
def test_loading_for_inference_picks_the_dtype_by_itself(monkeypatch, model_dir, amx):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    model, _ = load_for_chat(model_dir, device="cpu")
    expected = torch.bfloat16 if amx else torch.float32
    assert {p.dtype for p in model.parameters()} == {expected}
    assert load_for_chat(model_dir, device="cpu", dtype="float32")[0].dtype == torch.float32, "an explicit dtype wins"


def _scores(model, processor, prompts, images, share):
    steps = []

    def keep(input_ids, scores):
        steps.append(scores.float().clone())
        return scores

    inputs = processor(text=prompts, images=images)
    options = dict(max_new_tokens=3, do_sample=False, logits_processor=LogitsProcessorList([keep]))
    if share:
        generate_sharing_prefixes(model, processor, inputs, **options)
    else:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        model.generate(**inputs, pad_token_id=processor.tokenizer.pad_token_id, **options)
    first = steps[0]  # [B, V]: the first step's, computed from the same prompts by every path
    return first.masked_fill(first.isinf(), 0.0)  # the image token is suppressed (-inf) in every path


def test_bf16_inference_answers_as_fp32_does_within_bf16_rounding(model_dir):
    fp32, processor = load_for_chat(model_dir, device="cpu", dtype="float32")
    bf16, _ = load_for_chat(model_dir, device="cpu", dtype="bfloat16")
    image = make_image(3)
    prompts = [processor.apply_chat_template([{"role": "user", "content": f"<image>\n{q}"}])
               for q in ("what colour is the circle", "how many shapes are there?")]
    images = [[image], [image]]
    reference = _scores(fp32, processor, prompts, images, share=False)
    scale = reference.abs().max().item()
    for share in (False, True):
        scores = _scores(bf16, processor, prompts, images, share=share)
        assert (scores - reference).abs().max().item() < BF16_TOLERANCE * scale, f"share_prefix={share}"
    # the whole user path in bf16: one question, and a conversation with its cache
    assert isinstance(answer_once(bf16, processor, "describe", images=[image], max_new_tokens=4), str)
    session = ChatSession(bf16, processor, max_new_tokens=4)
    session.pending.append((model_dir / "x.png", image))
    session.ask("describe the picture")
    session.ask("and its colour?")
    assert len(session.turns) == 2 and session.cache.cache is not None
