"""The types DeepSpeed and transformers' Trainer pickle into a checkpoint: the allowlist of every load.

Everything else a training checkpoint holds is tensors, containers, numbers and strings, which
torch's ``weights_only=True`` unpickler builds by itself. These are the few objects beside them,
found by ``torch.serialization.get_unsafe_globals_in_checkpoint`` on real ZeRO-2/ZeRO-3 and
single-process checkpoints (``tests/test_safe_load.py`` checks that every pickle of those loads
with exactly this list). ``training_args.bin`` (a pickled ``TrainingArguments``) is on purpose not
covered: nothing here loads it, and it stays refused if anything tries.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def training_state_types() -> list[Any]:
    """The allowlist for loading a training checkpoint's ``.pt`` / ``.pth`` files."""
    # deepspeed is imported here, not at module level: importing it takes seconds, and only
    # ZeRO checkpoints need its types.
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [
        LossScaler,  # ZeRO optimizer states: the (static) loss scaler
        ZeroStageEnum,  # ZeRO optimizer states: the stage
        fragment_address,  # ZeRO optimizer states: where each parameter's fragment lies
        *numpy_rng_types(),  # rng_state*.pth: numpy's generator state
    ]


def numpy_rng_types() -> list[Any]:
    """numpy's array reconstruction, which the Trainer's ``rng_state*.pth`` needs (numpy 1 and 2 names)."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
