"""A VLM whose LLM is quantized on load by bitsandbytes (QLoRA's base), everything else in full precision.

transformers' ``BitsAndBytesConfig`` does the quantization while ``from_pretrained`` reads the
full-precision weights; this module only chooses what it applies to (the LLM's Linear layers,
never the vision tower, the projector or the output head), checks that bitsandbytes is there and
that its backend on this device can do the chosen kind, and records the choice in a training
run's folders (``quantization_config.json`` beside a LoRA adapter) so that chat, eval and merge
know the adapter was trained on a quantized base.

A run folder never holds quantized weights: the base is re-quantized from the full-precision
stage-1 folder each time it is loaded (quantization is deterministic, so it is the same base).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from vlm.atomic import atomic_write_json
from vlm.configuration import VLMConfig
from vlm.modeling import VLMForCausalLM

QUANTIZATIONS = ("nf4", "fp4", "int8")
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CONFIG_FILE = "quantization_config.json"
INSTALL_HINT = "pip install -e .[qlora]"


class QuantizationUnavailable(ValueError):
    """bitsandbytes is missing, or its backend on this device cannot do the requested quantization."""


def require_bitsandbytes():
    """The bitsandbytes module, or a one-line error saying how to install it."""
    try:
        import bitsandbytes
    except ImportError as err:
        raise QuantizationUnavailable(
            f"a quantized base (QLoRA) needs bitsandbytes, which is not installed: {INSTALL_HINT}"
        ) from err
    return bitsandbytes


def check_backend(kind: str, device: str | torch.device | None = None) -> None:
    """Quantize and run a 64x64 layer of ``kind`` on ``device`` (default: CUDA if present, else CPU).

    bitsandbytes' backends differ by version and device (its CPU backend is recent), so the only
    reliable check is to try: a few milliseconds, and a clear message instead of a failure at the
    first training step.
    """
    if kind not in QUANTIZATIONS:
        raise QuantizationUnavailable(f"quantization={kind!r} is not one of {', '.join(QUANTIZATIONS)}")
    bnb = require_bitsandbytes()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        weight = torch.randn(64, 64)
        if kind == "int8":
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
            layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type=kind)
            layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=kind)
        layer = layer.to(device)
        inputs = torch.randn(2, 64, device=device, requires_grad=True)
        layer(inputs).sum().backward()
    except Exception as err:  # noqa: BLE001 - any failure of the backend means the same thing to the user
        version = getattr(bnb, "__version__", "?")
        raise QuantizationUnavailable(
            f"bitsandbytes {version} cannot run quantization={kind} on {device.type} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no message'}); "
            "upgrade it (pip install -U bitsandbytes; 0.50 runs all three on CPU) or choose another quantization"
        ) from err


def full_precision_modules(config: VLMConfig) -> list[str]:
    """Module names kept out of quantization: the vision tower, the projector and the LLM's output head.

    transformers skips the output head by itself only when no list is given; with ours it must be
    named, and its name differs between LLM families (``lm_head``, ``embed_out``, ...), so it is read
    from the LLM class built on the meta device (no memory, no weights).
    """
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(config.text_config)
    head = llm.get_output_embeddings()
    names = [name for name, module in llm.named_modules() if module is head]
    return ["vision_tower", "projector", *(f"language_model.{name}" for name in names)]


def bitsandbytes_config(config: VLMConfig, kind: str, double_quant: bool = True,
                        compute_dtype: torch.dtype = torch.float32) -> BitsAndBytesConfig:
    """transformers' ``BitsAndBytesConfig`` for the LLM of a VLM with ``config``."""
    if kind not in QUANTIZATIONS:
        raise QuantizationUnavailable(f"quantization={kind!r} is not one of {', '.join(QUANTIZATIONS)}")
    skip = full_precision_modules(config)
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=kind,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )


def load_quantized(folder: str | os.PathLike, quantization: BitsAndBytesConfig, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> VLMForCausalLM:
    """The full-precision VLM in ``folder`` with its LLM quantized while it loads.

    ``dtype`` is that of the parts that stay unquantized (tower, projector, embeddings, norms).
    """
    require_bitsandbytes()
    device = torch.device(device)
    return VLMForCausalLM.from_pretrained(
        folder, quantization_config=quantization, dtype=dtype, device_map={"": device.index if device.type == "cuda" else device.type}
    )


def quantization_kind(quantization: BitsAndBytesConfig) -> str:
    """``nf4``, ``fp4`` or ``int8``."""
    return "int8" if quantization.load_in_8bit else quantization.bnb_4bit_quant_type


def save_quantization(folder: str | os.PathLike, quantization: BitsAndBytesConfig) -> None:
    """Record in a run's adapter / checkpoint folder that its base was quantized, and how."""
    atomic_write_json(Path(folder) / CONFIG_FILE, json.loads(quantization.to_json_string(use_diff=False)))


def read_quantization(folder: str | os.PathLike) -> BitsAndBytesConfig | None:
    """The quantization an adapter in ``folder`` was trained on, or None for a full-precision base."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return BitsAndBytesConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a bitsandbytes quantization config ({err})") from err
