"""Placeholder embeddings, the loss and gradients of VLMForCausalLM, on tiny Llama and Qwen2 LLMs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tiny import build_tiny_vlm, make_image

T = 196  # placeholders per image (224 px / patch 16)


@pytest.fixture(params=["llama", "qwen2"])
def vlm(request, llama_dir, qwen2_dir):
    return build_tiny_vlm(llama_dir if request.param == "llama" else qwen2_dir)


def _batch(processor):
    """Sample 0: two images; sample 1: text only; sample 2: one image."""
    prompts = [
        processor.apply_chat_template([{"role": "user", "content": "<image>\nleft <image>\nright: which is red"}]),
        processor.apply_chat_template([{"role": "user", "content": "how many shapes are there"}]),
        processor.apply_chat_template([{"role": "user", "content": "<image>\ndescribe the picture"}]),
    ]
    images = [[make_image(1), make_image(2)], [], [make_image(3)]]
    return processor(text=prompts, images=images, padding_side="right"), images


def test_placeholder_rows_are_projected_patch_tokens_in_order(vlm):
    model, processor = vlm
    batch, _ = _batch(processor)
    assert batch["num_images"].tolist() == [2, 0, 1]
    assert batch["pixel_values"].shape == (3, 3, 224, 224)
    embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"], batch["num_images"])
    with torch.no_grad():
        features = model.projector(model.vision_tower(batch["pixel_values"]))  # [3, T, D]
        token_embeds = model.get_input_embeddings()(batch["input_ids"])
    is_image = batch["input_ids"] == model.config.image_token_id
    # sample 0: image 0 fills its first run of placeholders, image 1 the second
    rows = embeds[0][is_image[0]]
    torch.testing.assert_close(rows[:T], features[0])
    torch.testing.assert_close(rows[T:], features[1])
    torch.testing.assert_close(embeds[2][is_image[2]], features[2])
    assert not is_image[1].any()
    # every other row is the LLM's own token embedding
    torch.testing.assert_close(embeds[~is_image], token_embeds[~is_image])
    # the two images really differ, so order is tested, not assumed
    assert (features[0] - features[1]).abs().max() > 1e-3


def test_swapping_images_swaps_their_placeholder_rows(vlm):
    model, processor = vlm
    prompt = processor.apply_chat_template([{"role": "user", "content": "<image>\n<image>\nwhich is red"}])
    a, b = make_image(1), make_image(2)
    ab = processor(text=prompt, images=[a, b])
    ba = processor(text=prompt, images=[b, a])
    mask = ab["input_ids"][0] == model.config.image_token_id
    e_ab = model.embed_inputs(ab["input_ids"], ab["pixel_values"])[0][mask]
    e_ba = model.embed_inputs(ba["input_ids"], ba["pixel_values"])[0][mask]
    torch.testing.assert_close(e_ab[:T], e_ba[T:])
    torch.testing.assert_close(e_ab[T:], e_ba[:T])


def test_mismatched_placeholders_and_images_raise(vlm):
    model, processor = vlm
    batch, _ = _batch(processor)
    ids, pixels, counts = batch["input_ids"], batch["pixel_values"], batch["num_images"]
    with pytest.raises(ValueError, match="sample 0 of the batch: 392 image placeholder tokens but 196"):
        model(input_ids=ids, pixel_values=pixels, num_images=torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="but 2 images in pixel_values"):
        model(input_ids=ids, pixel_values=pixels[:2])
    with pytest.raises(ValueError, match="but 0 images in pixel_values"):
        model(input_ids=ids)
    cut = ids.clone()
    cut[2, (cut[2] == model.config.image_token_id).nonzero()[0]] = 5  # one placeholder lost
    with pytest.raises(ValueError, match="sample 2 of the batch: 195 image placeholder tokens"):
        model(input_ids=cut, pixel_values=pixels, num_images=counts)
    with pytest.raises(ValueError, match="prompt 0: 2 <image> tags but 1 images"):
        processor(text="<image><image> two", images=[make_image(0)])


def test_labels_give_the_shifted_cross_entropy(vlm):
    model, processor = vlm
    batch, _ = _batch(processor)
    labels = batch["input_ids"].clone()
    labels[batch["input_ids"] == model.config.image_token_id] = -100
    labels[batch["attention_mask"] == 0] = -100
    out = model(**batch, labels=labels)
    logits = out.logits.float()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_gradients_reach_projector_and_llm_never_the_tower(vlm):
    model, processor = vlm
    model.train()
    batch, _ = _batch(processor)
    labels = batch["input_ids"].masked_fill(batch["input_ids"] == model.config.image_token_id, -100)
    model(**batch, labels=labels).loss.backward()
    assert all(p.grad is None for p in model.vision_tower.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    layer_grads = [p.grad for p in model.language_model.get_decoder().layers.parameters()]
    assert all(g is not None for g in layer_grads) and sum(g.abs().sum() for g in layer_grads) > 0


def test_frozen_llm_still_trains_the_projector(vlm):
    model, processor = vlm
    model.train()
    model.language_model.requires_grad_(False)
    batch, _ = _batch(processor)
    labels = batch["input_ids"].masked_fill(batch["input_ids"] == model.config.image_token_id, -100)
    model(**batch, labels=labels).loss.backward()
    assert all(p.grad is None for p in model.language_model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())


def test_text_only_training_batch_gives_the_projector_zero_gradients(vlm):
    """Under DDP every rank must produce a gradient for every trainable parameter."""
    model, processor = vlm
    model.train()
    batch = processor(text=["how many shapes are there", "yes no"], padding_side="right")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    for p in model.projector.parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0


def test_builder_keeps_the_pretrained_llm_weights(llama_dir):
    model, processor = build_tiny_vlm(llama_dir)
    reference = AutoModelForCausalLM.from_pretrained(llama_dir)
    old_vocab = reference.get_input_embeddings().num_embeddings
    assert model.get_input_embeddings().num_embeddings == len(processor.tokenizer) == old_vocab + 1
    assert model.config.image_token_id == old_vocab  # <image> is the one new token
    ours = model.language_model.state_dict()
    for name, tensor in reference.state_dict().items():
        if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            torch.testing.assert_close(ours[name][:old_vocab], tensor, rtol=0, atol=0)
        else:
            torch.testing.assert_close(ours[name], tensor, rtol=0, atol=0)
    # tied embeddings stay tied after the resize
    assert model.language_model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
