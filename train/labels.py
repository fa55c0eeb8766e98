"""Tokenize a conversation once and mark what is learned.

The prompt text comes from the tokenizer's own chat template (through the processor),
with each ``<image>`` already expanded to its placeholder run. The label mask is computed
on that single tokenization: the character span of every assistant reply (up to and
including its end-of-turn marker) is found by rendering the conversation's prefixes with
the same template, and a token is learned when it starts inside such a span. Nothing is
re-tokenized piecewise, so masks cannot drift from the tokens the model sees.

Stage 1 (captions) and stage 2 (instructions) share this: in both, only assistant turns
are learned; system, user, image and padding tokens are ``-100``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vlm.processing import VLMProcessor

IGNORE_INDEX = -100


class ConversationError(ValueError):
    """A conversation that cannot be turned into a training example (too long, nothing to learn, ...)."""


@dataclass
class TokenizedConversation:
    input_ids: torch.Tensor  # [L]
    labels: torch.Tensor  # [L], IGNORE_INDEX where nothing is learned
    num_images: int


def assistant_spans(processor: VLMProcessor, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the ``[start, end)`` character spans of its assistant replies."""
    render = processor.apply_chat_template
    full = render(messages, add_generation_prompt=False)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:k], add_generation_prompt=True)
        upto = render(messages[: k + 1], add_generation_prompt=False)
        if not (full.startswith(upto) and upto.startswith(prompt)):
            raise ConversationError(
                "the chat template does not render conversations prefix by prefix (turn "
                f"{k} changes earlier text), so assistant replies cannot be located; use a template "
                "whose output for the first k turns is a prefix of the whole conversation"
            )
        end = len(upto.rstrip())  # the reply and its end-of-turn marker, not the newline after it
        spans.append((len(prompt), end))
    return full, spans


def tokenize_conversation(
    processor: VLMProcessor, messages: list[dict[str, Any]], max_length: int | None = None
) -> TokenizedConversation:
    """``input_ids`` and ``labels`` for one conversation (``<image>`` tags still unexpanded).

    Raises :class:`ConversationError` when truncation to ``max_length`` would cut through an
    image's placeholder run, or when nothing would be learned.
    """
    expanded = [{"role": m["role"], "content": processor.expand_image_tokens(m["content"])} for m in messages]
    num_images = sum(m["content"].count(processor.image_token) for m in messages)
    text, spans = assistant_spans(processor, expanded)
    encoding = processor.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = torch.tensor(encoding["input_ids"], dtype=torch.long)
    starts = torch.tensor([start for start, _ in encoding["offset_mapping"]], dtype=torch.long)
    learned = torch.zeros_like(input_ids, dtype=torch.bool)
    for begin, end in spans:
        learned |= (starts >= begin) & (starts < end)
    is_image = input_ids == processor.image_token_id
    learned &= ~is_image
    if int(is_image.sum()) != num_images * processor.image_seq_length:
        raise ConversationError(
            f"{num_images} <image> tags tokenized to {int(is_image.sum())} image tokens, expected "
            f"{num_images * processor.image_seq_length}; does the text contain the image token in another form?"
        )
    labels = torch.where(learned, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    if max_length is not None and len(input_ids) > max_length:
        if is_image[max_length:].any():
            last = int(is_image.nonzero().max()) + 1
            raise ConversationError(
                f"{len(input_ids)} tokens, and its image placeholders run to position {last} > max_length={max_length}; "
                "truncating would cut through an image (raise max_length or shorten the text before the image)"
            )
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    if not (labels != IGNORE_INDEX).any():
        where = f" within max_length={max_length}" if max_length is not None else ""
        raise ConversationError(f"no assistant tokens to learn{where} ({len(encoding['input_ids'])} tokens in all)")
    return TokenizedConversation(input_ids=input_ids, labels=labels, num_images=num_images)
