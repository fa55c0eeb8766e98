"""Load a VLM for inference from whatever a user points at.

- a saved or merged model folder (``config.json`` + safetensors);
- a LoRA adapter folder (a training run's final model or any of its checkpoints): the base
  named in ``adapter_config.json`` is loaded and the adapter applied with peft, unmerged; a
  QLoRA adapter (``quantization_config.json`` beside it) gets its base quantized the same way
  as in training (needs bitsandbytes);
- a training run folder: its final model (``RUN/model``) or, before it exists, its latest
  checkpoint.

ZeRO-sharded checkpoints without consolidated weights need ``vlm merge`` first.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn
from transformers.utils import logging as transformers_logging

from vlm.folder_check import ModelFolderError, check_adapter_folder, check_model_folder, check_processor_files
from vlm.modeling import VLMForCausalLM
from vlm.processing import VLMProcessor
from vlm.quantization import load_quantized, read_quantization
from vlm.safe_load import weights_only_loads

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The folder holding weights: ``path`` itself, a run's final ``model/``, or its latest checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model folder")
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path
    if (path / "model").is_dir():
        return resolve_model_dir(path / "model")
    checkpoints = sorted(
        (int(m.group(1)), p) for p in path.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()
    )
    if checkpoints:
        return checkpoints[-1][1]
    raise FileNotFoundError(
        f"{path} holds no model: expected config.json (a saved/merged VLM), adapter_config.json (LoRA), "
        "a training run's model/ folder or checkpoint-N folders"
    )


def load_model(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[nn.Module, VLMProcessor]:
    """Model (eval mode) and processor for ``path``; a LoRA adapter is applied unmerged.

    Weights are read from safetensors; a ``.bin`` that transformers or peft falls back to is loaded
    weights-only (:mod:`vlm.safe_load`), and refused, naming the file, if it holds anything else.
    """
    with weights_only_loads():
        return _load_model(path, dtype, device)


def load_processor(path: str | os.PathLike) -> VLMProcessor:
    """The processor of what ``load_model(path)`` loads, without the weights (cheap: the tokenizer and the
    image settings), so that inputs can be checked before a model is loaded for them."""
    folder = resolve_model_dir(path)
    processor_dir = folder
    if (folder / "adapter_config.json").is_file() and not (folder / "processor_config.json").is_file():
        check_adapter_folder(folder)
        processor_dir = adapter_base(folder)
    check_processor_files(processor_dir)
    return VLMProcessor.from_pretrained(processor_dir)


def _load_model(path: str | os.PathLike, dtype: torch.dtype, device: str | torch.device) -> tuple[nn.Module, VLMProcessor]:
    folder = resolve_model_dir(path)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        check_adapter_folder(folder)
        base_path = adapter_base(folder)
        check_model_folder(base_path)
        quantization = read_quantization(folder)
        if quantization is None:
            base = load_weights_checked(base_path, dtype)
        else:  # QLoRA: the base as the adapter was trained on it, quantized while it loads
            base = load_quantized(base_path, quantization, dtype=dtype, device=device)
        model = PeftModel.from_pretrained(base, folder)
        processor_dir = folder if (folder / "processor_config.json").is_file() else base_path
        check_processor_files(processor_dir)
        if quantization is not None:  # already on its device: a quantized model is not moved
            return model.eval(), VLMProcessor.from_pretrained(processor_dir)
    else:
        if not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(
                f"{folder} has a config but no safetensors weights; if it is a DeepSpeed ZeRO checkpoint, "
                f"consolidate it first: vlm merge {folder} --out MERGED"
            )
        check_model_folder(folder)
        model = load_weights_checked(folder, dtype)
        processor_dir = folder
    return model.to(device).eval(), VLMProcessor.from_pretrained(processor_dir)


def load_weights_checked(folder: Path, dtype: torch.dtype) -> VLMForCausalLM:
    """``VLMForCausalLM.from_pretrained``, with weights of the wrong shape or missing ones refused in one line.

    transformers would print its multi-line load report and then raise (a wrong shape) or go on
    with freshly initialised weights (a missing one, a silent wrong); here the first offending
    key is named with its shapes and nothing is loaded."""
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the report is what this function replaces
    try:
        model, info = VLMForCausalLM.from_pretrained(folder, dtype=dtype, ignore_mismatched_sizes=True, output_loading_info=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    weights = "model.safetensors" if (folder / "model.safetensors").is_file() else "the safetensors shards"
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if mismatched:
        key, found, expected = _mismatch(mismatched[0])
        raise ModelFolderError(
            f"{folder}: {len(mismatched)} weight{'s' if len(mismatched) != 1 else ''} in {weights} "
            f"{'have' if len(mismatched) != 1 else 'has'} another shape than config.json asks for, e.g. {key}: "
            f"{found} in the file, {expected} by the config; the weights and config.json come from different models"
        )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ModelFolderError(
            f"{folder}: {weights} lack{'s' if weights == 'model.safetensors' else ''} {len(missing)} weights that config.json "
            f"asks for, e.g. {missing[0]}; the folder is incomplete or from another model. Save or merge it again"
        )
    return model


def _mismatch(entry: object) -> tuple[str, str, str]:
    """(key, checkpoint shape, model shape) of a transformers ``mismatched_keys`` entry."""
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        key, found, expected = entry
        return str(key), "x".join(map(str, found)), "x".join(map(str, expected))
    return str(entry), "?", "?"


def adapter_base(folder: str | os.PathLike) -> Path:
    """The base model folder a LoRA adapter was trained on, from its own ``adapter_config.json``."""
    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base or not (Path(base) / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder}/adapter_config.json names base model {base!r}, which is not a saved VLM folder here; "
            "pass the stage-1 model folder explicitly (--base)"
        )
    return Path(base)
