"""Generation that runs what prompts share only once, through the LLM's KV cache.

Questions about one image begin alike: the system text, the image's placeholder tokens (196 per
image) and the opening of the user turn. ``generate_sharing_prefixes`` runs that prefix once per
distinct (prefix, images) in a batch, vision tower included, copies its keys and values to
every question that starts with it (``DynamicCache.batch_select_indices``) and lets transformers'
``generate`` continue each question from there. ``ConversationCache`` does the same across the
turns of a chat: the conversation so far stays in the cache, and a new turn runs only the
tokens that differ from what the cache holds.

The tokens are those of the plain path (one processor call, the same prompts), only their
computation is shared: greedy replies are the plain path's up to float rounding.

Layout of a batch, per row: ``[pad][its prefix][pad][the rest of its prompt]``. Prefixes are
left-padded to the longest, the rests too; position ids come from the attention mask (as
``generate`` makes them), so every real token has the position it has in the plain
left-padded batch, and the pads in the middle are masked like those on the left.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import BatchFeature, DynamicCache

from vlm.processing import VLMProcessor


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Number of leading tokens all ``rows`` have in common."""
    shortest = min(len(row) for row in rows)
    for i in range(shortest):
        token = rows[0][i]
        if any(row[i] != token for row in rows[1:]):
            return i
    return shortest


def whole_images(row: Sequence[int], cut: int, image_token_id: int, image_seq_length: int) -> int:
    """``cut`` moved back to the start of an image whose placeholders it would split (that image goes after it whole)."""
    placeholders = sum(1 for token in row[:cut] if token == image_token_id)
    return cut - placeholders % image_seq_length


def prefix_cut(rows: Sequence[Sequence[int]], image_token_id: int, image_seq_length: int) -> int:
    """Where the prefix that ``rows`` share ends: each row keeps >= 1 token after it (``generate`` needs one to run
    after a cache), and no image's placeholders are split."""
    cut = min(common_prefix_length(rows), min(len(row) for row in rows) - 1)
    return whole_images(rows[0], cut, image_token_id, image_seq_length)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``generate``'s position ids: real tokens counted from 0 in each row, pads at 0."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def new_cache(model: nn.Module) -> DynamicCache:
    """An empty KV cache laid out for the model's LLM (sliding-window layers included), as ``generate`` makes one."""
    return DynamicCache(config=model.config.get_text_config(decoder=True))


def _left_pad(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of ``rows`` left-padded to the longest: ``[B, L]`` each."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def _image_digest(pixel_values: torch.Tensor) -> str:
    """A digest of one preprocessed image: equal pixels, equal prefix."""
    return hashlib.blake2b(pixel_values.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()


def _pixels(model: nn.Module, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Forward kwargs for these images (``[3, H, W]`` each, in placeholder order), or none."""
    if not images:
        return {}
    return {"pixel_values": torch.stack(images).to(model.device, model.dtype)}


def prefill(
    model: nn.Module, rows: Sequence[Sequence[int]], images: list[torch.Tensor], pad_token_id: int
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """Run token ``rows`` (with the ``images`` of their placeholders, in row order) once; return ``(cache, ids, mask)``.

    The rows are left-padded to the longest; the cache holds their keys and values at the
    positions ``generate`` would give them.
    """
    ids, mask = _left_pad(rows, pad_token_id)
    cache = new_cache(model)
    model(
        input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
        position_ids=position_ids_from_mask(mask).to(model.device), cache=cache, use_cache=True, logits_to_keep=1,
        **_pixels(model, images),
    )
    return cache, ids, mask


def _continue(
    model: nn.Module,
    cache: DynamicCache,
    prefix_ids: torch.Tensor,
    prefix_mask: torch.Tensor,
    rests: Sequence[Sequence[int]],
    rest_images: list[list[torch.Tensor]],
    pad_token_id: int,
    generate_kwargs: dict[str, Any],
) -> torch.Tensor:
    """``generate`` after a cache holding ``prefix_ids`` (``[B, P]``): each row's ``rests`` (and their images) then new tokens.

    Returns the new tokens ``[B, T]`` (padded with ``pad_token_id`` after a row's end).
    """
    rest_ids, rest_mask = _left_pad(rests, pad_token_id)
    input_ids = torch.cat([prefix_ids, rest_ids], dim=1).to(model.device)  # [B, P + S]
    attention_mask = torch.cat([prefix_mask, rest_mask], dim=1).to(model.device)
    flat = [image for row in rest_images for image in row]
    extra = {"num_images": torch.tensor([len(row) for row in rest_images]), **_pixels(model, flat)} if flat else {}
    output = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, cache=cache, pad_token_id=pad_token_id,
        **extra, **generate_kwargs,
    )
    return output[:, input_ids.shape[1]:]


def _rows(inputs: BatchFeature) -> tuple[list[list[int]], list[list[torch.Tensor]]]:
    """A left-padded processor batch as per-row token lists and per-row image lists."""
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    pixel_values = inputs.get("pixel_values")
    counts = inputs["num_images"].tolist()
    images, start = [], 0
    for count in counts:
        images.append([pixel_values[k] for k in range(start, start + count)])
        start += count
    return rows, images


def generate_sharing_prefixes(
    model: nn.Module, processor: VLMProcessor, inputs: BatchFeature, **generate_kwargs: Any
) -> torch.Tensor:
    """New tokens ``[B, T]`` for a processor batch, each (prefix, images) run once.

    Prompts with the same images (equal pixels) form a group; the group's shared prefix (see
    :func:`prefix_cut`) is run once for all groups together, copied to the group's rows, and
    ``generate`` runs each row's rest and its reply. ``generate_kwargs`` go to ``generate``
    (``max_new_tokens``, sampling, ``streamer``, ...).
    """
    image_token_id, image_seq_length = processor.image_token_id, processor.image_seq_length
    pad_token_id = processor.tokenizer.pad_token_id
    rows, images = _rows(inputs)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, row_images in enumerate(images):
        groups.setdefault(tuple(_image_digest(image) for image in row_images), []).append(i)
    prefixes, prefix_images, group_of_row = [], [], [0] * len(rows)
    rests: list[list[int]] = [[] for _ in rows]
    rest_images: list[list[torch.Tensor]] = [[] for _ in rows]
    for g, members in enumerate(groups.values()):
        cut = prefix_cut([rows[i] for i in members], image_token_id, image_seq_length)
        first = rows[members[0]]
        in_prefix = sum(1 for token in first[:cut] if token == image_token_id) // image_seq_length
        prefixes.append(first[:cut])
        prefix_images += images[members[0]][:in_prefix]
        for i in members:
            group_of_row[i] = g
            rests[i] = rows[i][cut:]
            rest_images[i] = images[i][in_prefix:]
    cache, prefix_ids, prefix_mask = prefill(model, prefixes, prefix_images, pad_token_id)
    index = torch.tensor(group_of_row)
    cache.batch_select_indices(index.to(model.device))  # [G, ...] -> [B, ...]: each row gets its group's prefix
    return _continue(
        model, cache, prefix_ids[index], prefix_mask[index], rests, rest_images, pad_token_id, generate_kwargs
    )


class ConversationCache:
    """The KV cache of one conversation: the tokens it holds and their keys and values.

    ``generate`` continues from the longest start the new prompt shares with those tokens (the
    history, whose text the chat template renders the same each turn) and keeps what it ran for
    the next turn: a turn costs its own tokens, not the whole conversation's.
    """

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.token_ids: list[int] = []
        """The tokens whose keys and values ``cache`` holds, in order."""

    def reset(self) -> None:
        self.cache, self.token_ids = None, []

    def generate(self, model: nn.Module, processor: VLMProcessor, inputs: BatchFeature, **generate_kwargs: Any) -> torch.Tensor:
        """New tokens ``[1, T]`` for a one-prompt processor batch, reusing the cache; on an error the cache is dropped."""
        if inputs["input_ids"].shape[0] != 1:
            raise ValueError(f"a conversation cache continues one prompt at a time, got {inputs['input_ids'].shape[0]}")
        image_token_id, image_seq_length = processor.image_token_id, processor.image_seq_length
        (row,), (images,) = _rows(inputs)
        shared = min(common_prefix_length([row, self.token_ids]), len(row) - 1)
        keep = whole_images(row, shared, image_token_id, image_seq_length)
        if self.cache is None or not self.cache.is_croppable:
            self.cache, self.token_ids, keep = new_cache(model), [], 0
        self.cache.crop(keep - len(self.token_ids))  # forget what the new prompt does not share (0: nothing)
        in_cache = sum(1 for token in row[:keep] if token == image_token_id) // image_seq_length
        ids = torch.tensor([row[:keep]], dtype=torch.long)
        cache, self.cache, self.token_ids = self.cache, None, []  # dropped unless generate returns
        new = _continue(model, cache, ids, torch.ones_like(ids), [row[keep:]], [images[in_cache:]],
                        processor.tokenizer.pad_token_id, generate_kwargs)
        ran = row + new[0].tolist()
        if cache.get_seq_length() == len(ran) - 1:  # generate runs every token but the last it makes
            self.cache, self.token_ids = cache, ran[:-1]
        return new
