"""The projector modules and their factory.

A projector maps each vision patch token (width ``vision_width``) to one LLM input
embedding (width ``text_width``), token by token: ``(N, T, D_vis) -> (N, T, D_llm)``.
Only torch is imported here, so the projector can be reused anywhere.
"""

from __future__ import annotations

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
