"""The speed benchmark's reference is transformers' LLaVA with our weights (``vlm export``'s conversion): it must compute what we compute."""

from __future__ import annotations

import copy

import pytest
import torch

from apps.export import build_llava
from apps.export.config import clip_vision_config
from apps.export.keymap import llava_state_dict
from tiny import TINY_CLIP_CONFIG, build_tiny_vlm, make_image


def _batch(processor):
    """Right-padded: sample 0 with two images, sample 1 with one."""
    prompts = [
        processor.apply_chat_template([{"role": "user", "content": "<image>\nleft <image>\nright: which is red"}]),
        processor.apply_chat_template([{"role": "user", "content": "<image>\ndescribe the picture"}]),
    ]
    return processor(text=prompts, images=[[make_image(1), make_image(2)], [make_image(3)]], padding_side="right")


def _build(llama_dir, quick_gelu=False, feature_layer=-2):
    clip_config = copy.deepcopy(TINY_CLIP_CONFIG)
    clip_config["quick_gelu"] = quick_gelu
    model, processor = build_tiny_vlm(
        llama_dir, projector_type="mlp2x_gelu", vision_model_config=clip_config, vision_feature_layer=feature_layer
    )
    return model, processor, build_llava(model)


@pytest.mark.parametrize(("quick_gelu", "feature_layer"), [(False, -2), (True, -2), (False, -1), (False, 0)])
def test_llava_reference_gives_our_logits_and_loss(llama_dir, quick_gelu, feature_layer):
    model, processor, reference = _build(llama_dir, quick_gelu, feature_layer)
    assert reference.config.vision_config.hidden_act == ("quick_gelu" if quick_gelu else "gelu")
    batch = _batch(processor)
    labels = batch["input_ids"].masked_fill(batch["input_ids"] == model.config.image_token_id, -100)
    labels[batch["attention_mask"] == 0] = -100
    with torch.no_grad():
        ours = model(**batch, labels=labels)
        theirs = reference(
            input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"], labels=labels
        )
    assert ours.logits.shape == theirs.logits.shape
    torch.testing.assert_close(theirs.logits, ours.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(theirs.loss, ours.loss, rtol=1e-5, atol=1e-5)
    # the images really matter, so the vision conversion is tested, not bypassed
    with torch.no_grad():
        other = reference(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"].flip(0), attention_mask=batch["attention_mask"])
    assert (other.logits - theirs.logits).abs().max() > 1e-3


def test_vision_features_match_layer_by_layer(llama_dir):
    model, processor, reference = _build(llama_dir)
    pixels = _batch(processor)["pixel_values"]
    with torch.no_grad():
        ours = model.get_image_features(pixels)  # [N, 196, D]
        theirs = torch.cat(reference.get_image_features(pixels, vision_feature_layer=-2, vision_feature_select_strategy="default").pooler_output)
    torch.testing.assert_close(theirs.reshape(ours.shape), ours, rtol=1e-5, atol=1e-5)


def test_greedy_generation_is_the_same(llama_dir):
    model, processor, reference = _build(llama_dir)
    prompt = processor.apply_chat_template([{"role": "user", "content": "<image>\nwhat colour is the circle"}])
    inputs = processor(text=[prompt], images=[make_image(4)])
    settings = dict(max_new_tokens=6, do_sample=False, suppress_tokens=[model.config.image_token_id], pad_token_id=processor.tokenizer.pad_token_id)
    ours = model.generate(**inputs, **settings)
    theirs = reference.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"], **settings)
    assert ours.tolist() == theirs.tolist()


def test_key_map_covers_every_weight_with_matching_shapes(llama_dir):
    model, _, reference = _build(llama_dir)
    converted = llava_state_dict(model)
    layers = TINY_CLIP_CONFIG["vision_cfg"]["layers"]
    vision = [k for k in converted if k.startswith("model.vision_tower.")]
    # embeddings (3) + pre/post layer norms (4) + per block 16 (q/k/v/out weights and biases, 2 norms, 2 MLP layers)
    assert len(vision) == 3 + 4 + 16 * layers
    assert converted.keys() <= reference.state_dict().keys()
    config = clip_vision_config(model)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (32, 3, 2, 64)
    assert config.layer_norm_eps == 1e-5 and config.patch_size == 16 and config.image_size == 224


def test_a_linear_projector_is_linear_1_with_an_identity_activation_and_linear_2(llama_dir):
    model, processor = build_tiny_vlm(llama_dir, projector_type="linear")
    reference = build_llava(model)
    projector = reference.model.multi_modal_projector
    assert reference.config.projector_hidden_act == "linear"
    torch.testing.assert_close(projector.linear_1.weight, model.projector.weight, rtol=0, atol=0)
    torch.testing.assert_close(projector.linear_2.weight, torch.eye(projector.linear_2.weight.shape[0]), rtol=0, atol=0)
    batch = _batch(processor)
    with torch.no_grad():
        ours = model.get_image_features(batch["pixel_values"])
        theirs = torch.cat(reference.get_image_features(batch["pixel_values"]).pooler_output)
        # the identity linear_2 multiplies by 1 and adds exact zeros: the projected tokens are equal to the last bit
        torch.testing.assert_close(reference.model.multi_modal_projector(model.vision_tower(batch["pixel_values"])), ours, rtol=0, atol=0)
        logits = model(**batch).logits
        their_logits = reference(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(theirs.reshape(ours.shape), ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(their_logits, logits, rtol=1e-4, atol=1e-4)
