"""Issue 8's optimizations keep the loss and the gradients: the LM head and the loss only at
labeled positions, the vision-feature cache, and the compiled LLM layers (``torch_compile``).

``VLMForCausalLM.forward(..., labeled_positions_only=True)`` runs the LLM's decoder to hidden
states and projects onto the vocabulary only the positions whose shifted label is learned.
It must give the same loss and the same gradients as the plain path (the LLM's own forward),
in fp32 and under bf16 autocast, bare and wrapped by peft LoRA as the training code wraps it.
"""

from __future__ import annotations

import pytest
import torch

from tiny import build_tiny_vlm, make_image
from train.compile import compile_llm_layers
from train.config import TrainConfig
from train.dataset import VLMCollator
from train.labels import tokenize_conversation
from train.stages import apply_stage


@pytest.fixture(params=["llama", "qwen2"])
def vlm(request, llama_dir, qwen2_dir):
    """Llama ties its LM head to the input embeddings; Qwen2 has its own (untied)."""
    model, processor = build_tiny_vlm(llama_dir if request.param == "llama" else qwen2_dir)
    return model.train(), processor


def _training_batch(processor):
    """Two conversations tokenized as training tokenizes them (labels only on the replies), right-padded."""
    conversations = [
        [{"role": "user", "content": "<image>\nwhat colour is the circle"}, {"role": "assistant", "content": "the circle is red"}],
        [
            {"role": "user", "content": "<image>\nhow many shapes are there"},
            {"role": "assistant", "content": "three"},
            {"role": "user", "content": "is there a blue square"},
            {"role": "assistant", "content": "yes, at the top left"},
        ],
    ]
    examples = []
    for seed, messages in enumerate(conversations):
        tokens = tokenize_conversation(processor, messages)
        pixels = processor.image_processor([make_image(seed)], return_tensors="pt")["pixel_values"]
        examples.append({"input_ids": tokens.input_ids, "labels": tokens.labels, "num_images": 1, "pixel_values": pixels})
    return VLMCollator(processor.tokenizer.pad_token_id)(examples)


def _loss_and_grads(model, batch, labeled_positions_only, **kwargs):
    model.zero_grad(set_to_none=True)
    out = model(**batch, labeled_positions_only=labeled_positions_only, **kwargs)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


def _lora_model(model):
    """The model wrapped by peft LoRA as stage 2 wraps it (no dropout), in training mode."""
    cfg = TrainConfig(stage="sft", init_from="unused", data=["unused"], lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    peft_model = apply_stage(model, cfg).train()
    # make the adapters non-trivial so their B matrices, initialised to zero, do not hide a difference
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return peft_model


def _assert_same(plain, fast, grads_plain, grads_fast, **tolerance):
    torch.testing.assert_close(fast.loss, plain.loss, **tolerance)
    assert grads_plain.keys() == grads_fast.keys() and grads_plain
    for name in grads_plain:
        torch.testing.assert_close(grads_fast[name], grads_plain[name], **tolerance, msg=lambda m, n=name: f"{n}: {m}")


def test_loss_and_gradients_equal_the_plain_path_fp32(vlm):
    model, processor = vlm
    batch = _training_batch(processor)
    plain, grads_plain = _loss_and_grads(model, batch, False)
    fast, grads_fast = _loss_and_grads(model, batch, True)
    _assert_same(plain, fast, grads_plain, grads_fast)
    # the projector and every LLM weight received a gradient, the tower none
    assert any(n.startswith("projector.") for n in grads_fast) and any(n.startswith("language_model.") for n in grads_fast)
    assert all(p.grad is None for p in model.vision_tower.parameters())


def test_only_the_labeled_positions_reach_the_lm_head(vlm):
    model, processor = vlm
    batch = _training_batch(processor)
    learned = int((batch["labels"][:, 1:] != -100).sum())
    image_tokens = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == 2 * 196 and learned < batch["input_ids"].numel() - image_tokens
    fast = model(**batch)  # the default in training mode
    assert fast.logits.shape == (learned, model.config.text_config.vocab_size)
    with torch.no_grad():
        full = model(**batch, labeled_positions_only=False).logits  # [B, L, V]
    shift_learned = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:] != -100
    torch.testing.assert_close(fast.logits.detach(), full[shift_learned])


def test_eval_mode_and_generation_keep_the_full_logits(vlm):
    model, processor = vlm
    batch = _training_batch(processor)
    model.eval()
    out = model(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, model.config.text_config.vocab_size)
    last = model(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=1)
    assert last.logits.shape[1] == 1


def test_num_items_in_batch_is_honoured(vlm):
    """transformers' Trainer passes num_items_in_batch under gradient accumulation: sum / N, not mean."""
    model, processor = vlm
    batch = _training_batch(processor)
    n = torch.tensor(1000)
    plain, grads_plain = _loss_and_grads(model, batch, False, num_items_in_batch=n)
    fast, grads_fast = _loss_and_grads(model, batch, True, num_items_in_batch=n)
    _assert_same(plain, fast, grads_plain, grads_fast)
    mean = model(**batch).loss
    learned = int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(fast.loss, mean * learned / 1000)


def test_loss_and_gradients_equal_the_plain_path_bf16_autocast(vlm):
    model, processor = vlm
    batch = _training_batch(processor)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, grads_plain = _loss_and_grads(model, batch, False)
        fast, grads_fast = _loss_and_grads(model, batch, True)
    # bf16 keeps 8 mantissa bits; matmuls of different row counts may round differently
    _assert_same(plain, fast, grads_plain, grads_fast, rtol=2e-2, atol=2e-2)


def test_under_peft_lora_as_training_wraps_it(vlm):
    model, processor = vlm
    peft_model = _lora_model(model)
    batch = _training_batch(processor)
    plain, grads_plain = _loss_and_grads(peft_model, batch, False)
    fast, grads_fast = _loss_and_grads(peft_model, batch, True)
    _assert_same(plain, fast, grads_plain, grads_fast)
    assert any("lora_A" in n for n in grads_fast) and any("projector" in n for n in grads_fast)
    assert peft_model(**batch).logits.shape[0] == int((batch["labels"][:, 1:] != -100).sum())


def test_llm_with_logit_post_processing_falls_back(vlm):
    """An LLM that changes logits after its head (Gemma soft-capping, ...) keeps the plain path."""
    model, processor = vlm
    batch = _training_batch(processor)
    model.language_model.config.final_logit_softcapping = 30.0
    out = model(**batch, labeled_positions_only=True)
    assert out.logits.shape == (*batch["input_ids"].shape, model.config.text_config.vocab_size)


def test_every_optimization_on_equals_every_optimization_off(llama_dir):
    """LoRA training as the demo runs it, plain (LM head everywhere, pixels, eager) against all
    optimizations at once (labeled positions, cached tower features, compiled LLM layers)."""
    model, processor = build_tiny_vlm(llama_dir)
    peft_model = _lora_model(model)
    batch = _training_batch(processor)
    plain, grads_plain = _loss_and_grads(peft_model, batch, False)
    names_before = [n for n, _ in peft_model.named_parameters()]
    assert compile_llm_layers(peft_model) == model.config.text_config.num_hidden_layers
    assert all(layer._compiled_call_impl is not None for layer in model.language_model.get_decoder().layers)
    assert [n for n, _ in peft_model.named_parameters()] == names_before  # checkpoints keep their keys
    with torch.no_grad():
        features = model.vision_tower(batch["pixel_values"])
    cached = {k: v for k, v in batch.items() if k != "pixel_values"} | {"vision_features": features}
    fast, grads_fast = _loss_and_grads(peft_model, cached, True)
    _assert_same(plain, fast, grads_plain, grads_fast, rtol=1e-4, atol=1e-5)
    assert any("lora_A" in n for n in grads_fast) and any("projector" in n for n in grads_fast)


def test_training_forward_builds_no_kv_cache(vlm):
    model, processor = vlm
    batch = _training_batch(processor)
    assert model(**batch).cache is None
    assert model(**batch, labeled_positions_only=False).cache is None
    model.eval()
    with torch.no_grad():
        assert model(**{k: v for k, v in batch.items() if k != "labels"}).cache is not None  # inference keeps it
