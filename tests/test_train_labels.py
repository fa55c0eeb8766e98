"""Label masks on hand-built conversations: exactly the assistant replies and their end-of-turn token."""

from __future__ import annotations

import pytest
import torch

from tiny import build_tiny_vlm
from train.labels import IGNORE_INDEX, ConversationError, tokenize_conversation


@pytest.fixture(scope="module")
def processor(llama_dir):
    return build_tiny_vlm(llama_dir)[1]


def learned_text(processor, tokens) -> list[str]:
    """The learned tokens, grouped into the contiguous runs the mask selects."""
    runs, current = [], []
    for token_id, label in zip(tokens.input_ids.tolist(), tokens.labels.tolist()):
        if label != IGNORE_INDEX:
            assert label == token_id
            current.append(token_id)
        elif current:
            runs.append(processor.tokenizer.decode(current))
            current = []
    if current:
        runs.append(processor.tokenizer.decode(current))
    return runs


def test_single_turn_with_image_learns_only_the_reply(processor):
    messages = [{"role": "user", "content": "<image>\nwhat colour is the circle"}, {"role": "assistant", "content": "red"}]
    tokens = tokenize_conversation(processor, messages)
    assert learned_text(processor, tokens) == ["red<|im_end|>"]
    is_image = tokens.input_ids == processor.image_token_id
    assert int(is_image.sum()) == 196 and (tokens.labels[is_image] == IGNORE_INDEX).all()
    assert tokens.num_images == 1


def test_multi_turn_learns_every_assistant_turn_and_no_system_or_user(processor):
    messages = [
        {"role": "system", "content": "you are a helpful assistant"},
        {"role": "user", "content": "<image>\nhow many shapes are there"},
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": "what colour is the circle"},
        {"role": "assistant", "content": "the circle is red"},
    ]
    tokens = tokenize_conversation(processor, messages)
    assert learned_text(processor, tokens) == ["three<|im_end|>", "the circle is red<|im_end|>"]


def test_multi_image_and_text_only(processor):
    two = [{"role": "user", "content": "<image>\n<image>\nwhich is left"}, {"role": "assistant", "content": "left"}]
    tokens = tokenize_conversation(processor, two)
    assert tokens.num_images == 2 and int((tokens.input_ids == processor.image_token_id).sum()) == 392
    assert learned_text(processor, tokens) == ["left<|im_end|>"]
    text = [{"role": "user", "content": "yes or no"}, {"role": "assistant", "content": "yes"}]
    tokens = tokenize_conversation(processor, text)
    assert tokens.num_images == 0 and learned_text(processor, tokens) == ["yes<|im_end|>"]


def test_tokens_are_the_processors_tokens(processor):
    """One tokenization: the ids equal what the processor makes for the rendered prompt."""
    messages = [{"role": "user", "content": "<image>\ndescribe the picture"}, {"role": "assistant", "content": "a red square"}]
    tokens = tokenize_conversation(processor, messages)
    rendered = processor.apply_chat_template(messages, add_generation_prompt=False)
    from tiny import make_image

    reference = processor(text=rendered, images=[make_image(0)])["input_ids"][0]
    assert torch.equal(tokens.input_ids, reference)


def test_truncation_never_cuts_an_image(processor):
    messages = [{"role": "user", "content": "what is this <image>"}, {"role": "assistant", "content": "a square"}]
    with pytest.raises(ConversationError, match=r"image placeholders run to position \d+ > max_length=100"):
        tokenize_conversation(processor, messages, max_length=100)
    long_reply = [{"role": "user", "content": "<image>\ndescribe"}, {"role": "assistant", "content": "red " * 50}]
    tokens = tokenize_conversation(processor, long_reply, max_length=220)
    assert len(tokens.input_ids) == 220 and (tokens.labels != IGNORE_INDEX).any()


def test_a_sample_with_nothing_left_to_learn_is_an_error(processor):
    messages = [{"role": "user", "content": "<image>\n" + "describe the picture " * 10}, {"role": "assistant", "content": "red"}]
    with pytest.raises(ConversationError, match="no assistant tokens to learn within max_length=205"):
        tokenize_conversation(processor, messages, max_length=205)
