"""The projector modules and their factory.

A projector maps each vision patch token (width ``vision_width``) to one LLM input
embedding (width ``text_width``), token by token: ``(N, T, D_vis) -> (N, T, D_llm)``.
Only torch is imported here, so the projector can be reused anywhere.

``calibrate_projector`` is an optional data-dependent initialisation (in the spirit of LSUV):
ViT residual-stream features have a large component shared by every patch (here 12x the norm
of a text embedding, with the patch-specific part a third of it), so freshly projected image
tokens look alike to the LLM and far from its embedding scale. Folding a per-channel
standardisation into the first Linear and a rescale into the last one starts training with
zero-mean image tokens at the LLM's own embedding norm.
"""

from __future__ import annotations

import torch
from torch import nn

PROJECTOR_TYPES = ("linear", "mlp2x_gelu")


def build_projector(projector_type: str, vision_width: int, text_width: int) -> nn.Module:
    """Return a freshly initialised projector.

    ``linear`` is MiniMind-V's single ``nn.Linear``; ``mlp2x_gelu`` is LLaVA-1.5's
    ``Linear -> GELU -> Linear`` (both layers ``text_width`` wide).
    """
    if vision_width <= 0 or text_width <= 0:
        raise ValueError(f"projector widths must be positive, got vision_width={vision_width}, text_width={text_width}")
    if projector_type == "linear":
        return nn.Linear(vision_width, text_width)
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(vision_width, text_width), nn.GELU(), nn.Linear(text_width, text_width))
    raise ValueError(f"unknown projector_type {projector_type!r}; choose one of {', '.join(PROJECTOR_TYPES)}")


@torch.no_grad()
def calibrate_projector(projector: nn.Module, features: torch.Tensor, target_norm: float) -> dict[str, float]:
    """Re-initialise ``projector`` in place from a sample of vision features.

    The first Linear's input is standardised per channel over ``features`` (``(..., D_vis)``;
    its bias is set so the calibration tokens average to zero there), and the last Linear is
    scaled so the projected tokens' mean L2 norm equals ``target_norm`` (e.g. the LLM's mean
    input-embedding norm). Returns the norms before and after, for the log.
    """
    linears = [m for m in projector.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("calibrate_projector needs a projector with at least one nn.Linear")
    if target_norm <= 0:
        raise ValueError(f"target_norm must be positive, got {target_norm}")
    x = features.reshape(-1, features.shape[-1]).float()
    if x.shape[0] < 2:
        raise ValueError("calibrate_projector needs at least two feature vectors")
    before = projector(x).norm(dim=-1).mean().item()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    first, last = linears[0], linears[-1]
    weight = first.weight / std  # W((x - mean) / std) = (W / std) x - (W / std) mean
    first.weight.copy_(weight)
    if first.bias is not None:
        first.bias.copy_(-weight @ mean)
    scale = target_norm / projector(x).norm(dim=-1).mean().clamp_min(1e-12)
    last.weight.mul_(scale)
    if last.bias is not None:
        last.bias.mul_(scale)
    return {"norm_before": before, "norm_after": projector(x).norm(dim=-1).mean().item(), "target_norm": target_norm}
