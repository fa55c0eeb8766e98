"""Which float type pays off on this machine: bf16 where the hardware multiplies it fast, fp32 elsewhere.

One place for the choice, used by training (bf16 autocast) and inference (bf16 weights):

- a CUDA GPU with bf16 (Ampere and later) runs bf16 matrix products on its tensor cores;
- an Intel CPU with AMX (``amx_bf16``, Sapphire Rapids and later) runs them ~3-5x faster than
  fp32;
- any other CPU (AVX2, AVX-512 without AMX) has no fast bf16 kernels: there bf16 is many times
  slower than fp32 (~55x for the decode of a 135M LLM on an AMD EPYC), so fp32 it is.
"""

from __future__ import annotations

import torch


def bf16_supported(device: str | torch.device | None = None) -> bool:
    """Whether bf16 matrix products are fast on ``device`` (default: CUDA if available, else the CPU)."""
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        # torch's own check (CPUID and the kernel's permission to use AMX tiles), private but
        # the only one torch has; a torch without it is treated as a CPU without AMX.
        return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def inference_dtype(device: str | torch.device) -> str:
    """The weight dtype inference loads a model in on ``device``: ``"bfloat16"`` where it is fast, else ``"float32"``."""
    return "bfloat16" if bf16_supported(device) else "float32"
