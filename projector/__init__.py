"""Projectors: map vision patch tokens into the LLM's embedding space."""

from projector.projectors import PROJECTOR_TYPES, build_projector, calibrate_projector

__all__ = ["PROJECTOR_TYPES", "build_projector", "calibrate_projector"]
