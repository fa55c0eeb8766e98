"""projector.align: the multiple-instance word objective points each patch at the words that describe it."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from projector.align import align_projector_to_words, caption_vocabulary, word_embeddings

COLOURS, KINDS = ("red", "blue", "green"), ("circle", "square", "cross")
VOCAB = ["<pad>", " a", " and", " on", " black", *(" " + w for w in COLOURS + KINDS)]


def tokenize(text: str) -> list[int]:
    return [VOCAB.index(" " + w) for w in text.split()]


def scenes(n: int, seed: int = 0):
    """n images of 16 patches; 1-2 objects, each on one patch as one-hot colour + kind channels."""
    rng = random.Random(seed)
    features, captions, objects = torch.zeros(n, 16, 8), [], []
    for i in range(n):
        parts, placed = [], []
        for patch in rng.sample(range(16), rng.randint(1, 2)):
            colour, kind = rng.randrange(3), rng.randrange(3)
            features[i, patch, colour] = 1.0
            features[i, patch, 3 + kind] = 1.0
            parts.append(f"a {COLOURS[colour]} {KINDS[kind]}")
            placed.append((patch, colour, kind))
        features[i, :, 7] = 1.0  # a channel every patch shares (the tower's common component)
        captions.append(" and ".join(parts) + " on black")
        objects.append(placed)
    return features, captions, objects


def test_vocabulary_keeps_informative_words():
    captions = ["a red circle on black"] * 6 + ["a blue square on black"] * 6 + ["a green cross on black"]
    assert caption_vocabulary(captions, min_count=5) == ["blue", "circle", "red", "square"]
    assert caption_vocabulary(captions, min_count=1) == ["blue", "circle", "cross", "green", "red", "square"]
    with pytest.raises(ValueError):
        caption_vocabulary([])


def test_word_embeddings_are_centred_unit_rows():
    table = torch.randn(len(VOCAB), 12)
    rows = word_embeddings(["red", "circle"], tokenize, table)
    expected = table[VOCAB.index(" red")] - table.mean(0)
    assert torch.allclose(rows[0], expected / expected.norm())
    assert torch.allclose(rows.norm(dim=-1), torch.ones(2))


def test_alignment_points_each_patch_at_its_own_words():
    torch.manual_seed(0)
    table = torch.randn(len(VOCAB), 24)
    features, captions, objects = scenes(300)
    projector = nn.Linear(8, 24)
    steps = []
    stats = align_projector_to_words(projector, features, captions, tokenize, table, target_norm=2.5, steps=300, lr=1e-2,
                                     progress=lambda step, loss: steps.append((step, loss)))
    assert [s for s, _ in steps] == list(range(1, 301))
    assert stats["words"] == 6 and stats["loss_last"] < 0.5 * stats["loss_first"]
    assert stats["presence_accuracy"] > 0.9  # all-absent would score ~0.55
    words = word_embeddings([*COLOURS, *KINDS], tokenize, table)
    with torch.no_grad():
        tokens = projector(features)
    assert tokens.norm(dim=-1).mean().item() == pytest.approx(2.5, rel=1e-4)
    # Held-out check on the training scenes' object patches: the best-matching colour and kind
    # words of each object's patch are its own colour and kind.
    hits = total = 0
    for i, placed in enumerate(objects[:100]):
        for patch, colour, kind in placed:
            cosine = nn.functional.normalize(tokens[i, patch], dim=0) @ words.T
            hits += int(cosine[:3].argmax()) == colour
            hits += int(cosine[3:].argmax()) == kind
            total += 2
    assert hits / total > 0.9  # chance: 1 in 3


def test_alignment_refuses_mismatched_inputs():
    projector = nn.Linear(8, 24)
    features, captions, _ = scenes(10)
    with pytest.raises(ValueError, match="features must be"):
        align_projector_to_words(projector, features[:5], captions, tokenize, torch.randn(len(VOCAB), 24), 1.0)
    with pytest.raises(ValueError, match="no caption word"):
        align_projector_to_words(projector, features, ["on black"] * 10, tokenize, torch.randn(len(VOCAB), 24), 1.0)
