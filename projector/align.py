"""Word alignment: point the projector's image tokens at the LLM's own word embeddings, without the LLM.

Stage 1 teaches the projector through the frozen LLM (caption loss), which costs a full LLM
forward and backward per caption; on a small budget the projected tokens stay far from anything
the LLM reads, and stage 2 then learns to ignore them (an LLM fine-tuned on a scene *described in
words* learns the same questions in ~100 steps; on unaligned image tokens, not in 160).
``align_projector_to_words`` is a cheap step before stage 1 that needs only the tower's patch
tokens, the captions and the LLM's input-embedding matrix:

    score[image, patch, word] = <projector(patch token), unit embedding of word>
    presence[image, word]     = soft maximum over the image's patches (multiple-instance pooling)
    loss                      = BCE(scale * presence + bias[word], word in the image's caption)

Every caption word must be matched by some patch of its image, and a word the caption lacks by
none, so each patch is pulled toward the embeddings of the words that describe what it shows
(" red", " circle", " left", ...): the LLM then meets the image as something like words it knows.
A word's embedding is the mean of its tokens' input embeddings (with a leading space, as it
stands inside a sentence), centred on the vocabulary's mean. Words in (nearly) every caption or
in almost none carry nothing to align and are left out. The projector's output norm is put back
to ``target_norm`` at the end, so the LLM sees image tokens at its own embedding scale.

Status: an experiment, run by ``python -m benchmarks.learnability --projector align``; no
training config uses it. Measured on the demo's trained CLIP (2026-12-02, 2,400 captions, 300
steps): the word each patch points at is the shape's colour for 43% of the shapes' centre patches
(chance 14%), its kind for 27% (chance 20%), and stage 2 from it learned no more than from the
plain calibrated projector (see benchmarks/README.md). Pooling over patches does not say which
patch a word belongs to; that is what is still missing.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch import nn

WORD = re.compile(r"[a-z]+")


def caption_vocabulary(captions: Sequence[str], min_count: int = 5, max_share: float = 0.5) -> list[str]:
    """Words (lower case) in at least ``min_count`` captions and at most ``max_share`` of them, sorted."""
    if not captions:
        raise ValueError("caption_vocabulary needs at least one caption")
    documents = Counter(word for caption in captions for word in set(WORD.findall(caption.lower())))
    limit = max_share * len(captions)
    return sorted(w for w, n in documents.items() if min_count <= n <= limit)


def word_embeddings(words: Sequence[str], tokenize: Callable[[str], list[int]], table: torch.Tensor) -> torch.Tensor:
    """``(W, D)``: each word's mean token embedding (`` word``), centred on the table's mean, unit norm."""
    rows = []
    for word in words:
        ids = tokenize(" " + word)
        if not ids:
            raise ValueError(f"the tokenizer gives no tokens for {word!r}")
        rows.append(table[ids].float().mean(0))
    vectors = torch.stack(rows) - table.float().mean(0)
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def align_projector_to_words(
    projector: nn.Module,
    features: torch.Tensor,
    captions: Sequence[str],
    tokenize: Callable[[str], list[int]],
    embedding_table: torch.Tensor,
    target_norm: float,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """Train ``projector`` in place on the multiple-instance word objective above.

    Args:
        features: ``(N, T, D_vis)`` patch tokens of N images (the frozen tower's output).
        captions: the N images' captions.
        tokenize: text -> token ids of the LLM's tokenizer (no special tokens).
        embedding_table: the LLM's input embeddings ``(V, D_llm)``.
        target_norm: mean L2 norm of the projected tokens at the end (the LLM's embedding norm).
        progress: called with (step, loss) after every step.

    Returns the vocabulary size, the first and last losses, and the presence accuracy (share of
    (image, word) pairs whose predicted presence is right) at the end, for the log.
    """
    if features.ndim != 3 or features.shape[0] != len(captions):
        raise ValueError(f"features must be (N, T, D_vis) for N={len(captions)} captions, got {tuple(features.shape)}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    linears = [m for m in projector.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("align_projector_to_words needs a projector with at least one nn.Linear (its output is rescaled)")
    words = caption_vocabulary(captions, min_count=min(5, max(1, len(captions) // 20)))
    if not words:
        raise ValueError("no caption word is both frequent enough and informative (in at most half of the captions)")
    targets = word_embeddings(words, tokenize, embedding_table.detach())  # [W, D]
    index = {w: k for k, w in enumerate(words)}
    present = torch.zeros(len(captions), len(words))
    for i, caption in enumerate(captions):
        for word in set(WORD.findall(caption.lower())):
            if word in index:
                present[i, index[word]] = 1.0
    scale = nn.Parameter(torch.tensor(1.0))
    bias = nn.Parameter(torch.logit(present.mean(0).clamp(1e-3, 1 - 1e-3)))
    parameters = [p for p in projector.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([{"params": parameters}, {"params": [scale, bias], "lr": 10 * lr}], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.BCEWithLogitsLoss()

    def logits_of(rows: torch.Tensor) -> torch.Tensor:
        tokens = projector(features[rows].float())  # [B, T, D]
        tokens = tokens / tokens.norm(dim=-1, keepdim=True).mean().clamp_min(1e-12)  # scale-free scores
        scores = tokens @ targets.T  # [B, T, W]
        pooled = torch.logsumexp(8.0 * scores, dim=1) / 8.0  # a soft maximum over the patches
        return scale * 8.0 * pooled + bias

    first = last = float("nan")
    for step in range(1, steps + 1):
        rows = torch.randint(0, len(captions), (min(batch_size, len(captions)),), generator=generator)
        loss = loss_fn(logits_of(rows), present[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last = loss.item()
        if step == 1:
            first = last
        if progress is not None:
            progress(step, last)
    with torch.no_grad():
        sample = torch.arange(min(len(captions), 256))
        accuracy = ((logits_of(sample) > 0).float() == present[sample]).float().mean().item()
        norm = projector(features[sample].float()).norm(dim=-1).mean().clamp_min(1e-12)
        factor = target_norm / norm
        linears[-1].weight.mul_(factor)
        if linears[-1].bias is not None:
            linears[-1].bias.mul_(factor)
    return {"words": len(words), "loss_first": first, "loss_last": last, "presence_accuracy": accuracy}
