"""``VLMProcessor``: chat formatting, ``<image>`` expansion, tokenization and image preprocessing.

A prompt marks each image with the image token string (``<image>``), as LLaVA and
MiniMind-V data do. The processor renders a conversation with the tokenizer's own chat
template, expands every ``<image>`` to ``image_seq_length`` copies of the image token
(one per patch token of the vision tower), tokenizes, and preprocesses the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from tokenizers import AddedToken
from transformers import BatchFeature, ProcessorMixin

# Used when the LLM's tokenizer has no chat template of its own (base models).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")

Images = Image.Image | Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | None


class VLMProcessor(ProcessorMixin):
    """The LLM's tokenizer plus the vision tower's image processor.

    Args:
        image_processor: a :class:`vlm.VLMImageProcessor`.
        tokenizer: the LLM's tokenizer. ``image_token`` is added to it as a special token if
            missing (resize the LLM's embeddings to ``len(tokenizer)`` afterwards; the
            builder does), and so is a ChatML template if it has no chat template.
        image_token: the placeholder string marking an image in prompts.
        image_seq_length: placeholder tokens per image (the tower's patch count).
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        image_seq_length: int = 196,
        **kwargs: Any,
    ):
        self.image_token = image_token
        self.image_seq_length = image_seq_length
        if tokenizer.convert_tokens_to_ids(image_token) in (None, tokenizer.unk_token_id):
            tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
        if chat_template is None and tokenizer.chat_template is None:
            missing = [t for t in CHATML_TOKENS if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
            if missing:
                tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        elif chat_template is not None:
            tokenizer.chat_template = chat_template
        if tokenizer.pad_token is None:
            # Left padding for generation needs a pad id; its positions are masked out anyway.
            tokenizer.pad_token = tokenizer.eos_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        super().__init__(image_processor, tokenizer, chat_template=None)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """Render a conversation to prompt text with the tokenizer's chat template.

        ``messages`` are ``{"role": "system"|"user"|"assistant", "content": ...}``; content is
        a string with ``<image>`` marks, or a list of ``{"type": "image"}`` /
        ``{"type": "text", "text": ...}`` parts (an image part becomes ``<image>\\n``).
        """
        flat = [{"role": m["role"], "content": self._content_to_text(m["content"])} for m in messages]
        return self.tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)

    def _content_to_text(self, content: str | list[dict[str, Any]]) -> str:
        if isinstance(content, str):
            return content
        parts = []
        for part in content:
            if part.get("type") == "image":
                parts.append(self.image_token + "\n")
            elif part.get("type") == "text":
                parts.append(part["text"])
            else:
                raise ValueError(f"unknown message part type {part.get('type')!r}; use 'image' or 'text'")
        return "".join(parts)

    def expand_image_tokens(self, text: str) -> str:
        """Replace each ``<image>`` by ``image_seq_length`` copies of it."""
        return text.replace(self.image_token, self.image_token * self.image_seq_length)

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Images = None,
        padding: bool | str = True,
        padding_side: str = "left",
        return_tensors: str | None = "pt",
        add_special_tokens: bool = False,
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenize prompts (already chat-formatted) and preprocess their images.

        Args:
            text: one prompt or a batch; each ``<image>`` in a prompt needs one image.
            images: for one prompt, an image or a list; for a batch, one list per prompt
                (a flat list is also accepted and assigned in order).
            padding_side: ``left`` (default, for generation) or ``right`` (training).
            add_special_tokens: off by default, as chat templates write BOS themselves.

        Returns:
            ``input_ids``, ``attention_mask``, ``num_images`` ``(B,)`` and, when there are
            images, ``pixel_values`` ``(N_img, 3, H, W)`` in sample order.
        """
        if text is None:
            raise ValueError("VLMProcessor needs text (use the image_processor alone for images only)")
        texts = [text] if isinstance(text, str) else list(text)
        per_sample = self._group_images(texts, images)
        expanded = [self.expand_image_tokens(t) for t in texts]
        encoding = self.tokenizer(
            expanded,
            padding=padding,
            padding_side=padding_side,
            return_tensors=return_tensors,
            add_special_tokens=add_special_tokens,
            **kwargs,
        )
        num_images = [len(group) for group in per_sample]
        for i, ids in enumerate(encoding["input_ids"]):
            found = int((torch.as_tensor(ids) == self.image_token_id).sum())
            if found != num_images[i] * self.image_seq_length:
                raise ValueError(
                    f"prompt {i}: tokenized to {found} image tokens, expected {num_images[i]} x {self.image_seq_length}; "
                    "was the text truncated through an image, or does the prompt contain the image token id in another form?"
                )
        data = dict(encoding)
        data["num_images"] = torch.tensor(num_images) if return_tensors == "pt" else num_images
        flat_images = [image for group in per_sample for image in group]
        if flat_images:
            data["pixel_values"] = self.image_processor(flat_images, return_tensors=return_tensors)["pixel_values"]
        return BatchFeature(data, tensor_type=return_tensors)

    def _group_images(self, texts: list[str], images: Images) -> list[list[Image.Image]]:
        """Images per prompt, checked against the ``<image>`` count of each prompt."""
        counts = [t.count(self.image_token) for t in texts]
        if images is None:
            images = []
        elif isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        if images and all(isinstance(group, (list, tuple)) for group in images):
            if len(images) != len(texts):
                raise ValueError(f"got image lists for {len(images)} prompts but {len(texts)} prompts")
            groups = [list(group) for group in images]
        elif len(texts) == 1:
            groups = [images]
        else:
            # A flat list for a batch: hand images out in order, by each prompt's <image> count.
            if len(images) != sum(counts):
                raise ValueError(f"{sum(counts)} {self.image_token} tags in the batch (per prompt: {counts}) but {len(images)} images")
            groups, start = [], 0
            for count in counts:
                groups.append(images[start : start + count])
                start += count
        for i, (count, group) in enumerate(zip(counts, groups)):
            if count != len(group):
                raise ValueError(f"prompt {i}: {count} {self.image_token} tags but {len(group)} images")
        return groups

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)
