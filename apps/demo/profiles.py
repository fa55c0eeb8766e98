"""The demo's sizes as data: the shapes profiles (full, quick), the NLVR ones, and the choice between them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apps.demo.step import DemoError

# A micro CLIP for --quick: real geometry (224 px, patch 16 -> 196 tokens), 2 blocks of width 64.
QUICK_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "patch_size": 16, "layers": 2, "width": 64, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# The --quick LLM: a 2-layer Llama, 64 wide, with SmolLM2's real tokenizer and chat template.
TINY_LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": True}


@dataclass(frozen=True)
class Profile:
    """The sizes of one demo run."""

    name: str
    llm: str
    """``smollm2-135m-instruct`` (the offline real LLM) or ``tiny`` (built by the llm step)."""
    n_train: int
    n_eval: int
    max_shapes: int
    max_turns: int
    multi_turn_fraction: float
    clip_config: dict[str, Any] | None
    """open_clip model config of the trained CLIP; None = train/configs/clip_vit_tiny.json."""
    clip_epochs: int
    clip_batch: int
    clip_lr: float
    stage1_steps: int
    stage1_batch: int
    stage1_lr: float
    stage2_steps: int
    stage2_batch: int
    """Per process; two processes, so a step sees twice as many conversations."""
    stage2_lr: float
    lora_r: int
    eval_batch: int
    stage2_projector_lr: float | None = None
    """The projector's learning rate in stage 2; None = ``stage2_lr``. The projector is 0.4M
    weights learning from scratch what the image tokens mean, LoRA nudges a pretrained LLM: on
    the shapes colour questions alone, 40 projector-only steps of 8 at 1e-3 answered 80% of
    held-out questions right, 40 LoRA + projector steps of 4 at 5e-4 stayed at chance."""
    extra_stage1: tuple[str, ...] = field(default=())
    extra_stage2: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class NLVRProfile:
    """The sizes of the NLVR recipe (stage 2 on NLVR dev from the shapes run's stage 1, eval on test)."""

    parts: tuple[str, ...]
    """What the dev conversations hold: ``qa`` (true/false) and/or ``captions`` (box descriptions)."""
    steps: int
    batch: int
    """Per process; two processes."""
    lr: float
    lora_r: int
    eval_limit: int | None
    """Test PNGs evaluated, in file order (None: all 5,934; each sentence's six renderings are adjacent)."""
    eval_batch: int


NLVR_PROFILES = {
    "full": NLVRProfile(parts=("qa", "captions"), steps=90, batch=4, lr=5e-4, lora_r=32, eval_limit=1200, eval_batch=16),
    "quick": NLVRProfile(parts=("qa",), steps=3, batch=2, lr=1e-3, lora_r=8, eval_limit=12, eval_batch=12),
}
DEFAULT_NLVR_DATA = Path("../shared/data/nlvr1")
NLVR_URL = "https://github.com/lil-lab/nlvr"

PROFILES = {
    "full": Profile(
        name="full", llm="smollm2-135m-instruct", n_train=2400, n_eval=40, max_shapes=4, max_turns=6,
        multi_turn_fraction=0.9, clip_config=None, clip_epochs=3, clip_batch=64, clip_lr=1e-3,
        stage1_steps=20, stage1_batch=8, stage1_lr=2e-3, stage2_steps=64, stage2_batch=4, stage2_lr=5e-4,
        lora_r=32, eval_batch=16, stage2_projector_lr=2e-3,
    ),
    "quick": Profile(
        name="quick", llm="tiny", n_train=64, n_eval=6, max_shapes=4, max_turns=6, multi_turn_fraction=0.9,
        clip_config=QUICK_CLIP_CONFIG, clip_epochs=1, clip_batch=32, clip_lr=1e-3, stage1_steps=4, stage1_batch=4,
        stage1_lr=1e-3, stage2_steps=4, stage2_batch=2, stage2_lr=1e-3, lora_r=8, eval_batch=16,
    ),
}


def choose_profiles(quick: bool, recipe: str, stage1_steps: int | None = None,
                    stage2_steps: int | None = None) -> tuple[Profile, NLVRProfile | None]:
    """The shapes profile and, for ``recipe="nlvr"``, the NLVR one, with step counts replaced where given.

    ``stage2_steps`` is the recipe's own stage 2 (shapes or NLVR). The defaults are sized for a
    2-core CPU and miss the accuracy targets; a machine with more time can raise them."""
    if recipe not in ("shapes", "nlvr"):
        raise DemoError(f"unknown recipe {recipe!r}; choose shapes or nlvr")
    for name, value in (("stage1-steps", stage1_steps), ("stage2-steps", stage2_steps)):
        if value is not None and value < 1:
            raise DemoError(f"--{name} must be a positive number of steps, got {value}")
    profile = PROFILES["quick" if quick else "full"]
    if stage1_steps is not None:
        profile = replace(profile, stage1_steps=stage1_steps)
    if recipe == "shapes":
        return (profile if stage2_steps is None else replace(profile, stage2_steps=stage2_steps)), None
    nlvr = NLVR_PROFILES[profile.name]
    return profile, (nlvr if stage2_steps is None else replace(nlvr, steps=stage2_steps))
