"""Check a model folder before loading it: each missing or broken file named, with what writes it.

Loading a damaged folder otherwise fails deep inside transformers with messages about
something else ("install sentencepiece" for a missing tokenizer.json, "Asking to pad but the
tokenizer does not have a padding token" for a missing tokenizer_config.json, a JSON or
safetensors parse error without a file name). The checks read only file headers.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

WRITERS = "vlm build, vlm merge or a training run (save_pretrained)"


class ModelFolderError(ValueError):
    """A model folder with a missing or damaged file."""


def _json_object(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ModelFolderError(f"{path.parent}: no {path.name} ({what}, written by {WRITERS}); the folder is incomplete")
    raw = path.read_bytes()
    if not raw.strip():
        raise ModelFolderError(f"{path}: empty ({what}, written by {WRITERS}); the file was cut off, write the model again")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{path}: not valid JSON ({err}); {what}, written by {WRITERS}, is damaged") from None
    if not isinstance(value, dict):
        raise ModelFolderError(f"{path}: expected a JSON object ({what}), got {type(value).__name__}")
    return value


def check_safetensors(path: Path) -> None:
    """Raise :class:`ModelFolderError` if ``path`` is not a complete safetensors file (header and data length)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ModelFolderError(f"{path}: {size} bytes, too short for a safetensors file; it was cut off, write it again")
        (header_size,) = struct.unpack("<Q", head)
        if header_size > size - 8:
            raise ModelFolderError(f"{path}: the safetensors header claims {header_size} bytes, the file has {size}; it is truncated or not safetensors")
        try:
            header = json.loads(handle.read(header_size).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelFolderError(f"{path}: the safetensors header is not valid JSON; the file is damaged") from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{path}: the safetensors header is not a JSON object; the file is damaged")
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list)]
    needed = 8 + header_size + max(ends, default=0)
    if needed > size:
        raise ModelFolderError(f"{path}: truncated ({size} of {needed} bytes); the weights were cut off while being written, write them again")


def _weights(folder: Path, name: str) -> None:
    single, index = folder / f"{name}.safetensors", folder / f"{name}.safetensors.index.json"
    if single.is_dir():
        raise ModelFolderError(f"{single}: a folder, where the weights file should be; remove it and write the weights "
                               "again (vlm merge, or save_pretrained)")
    if single.is_file():
        check_safetensors(single)
    elif index.is_file():
        weight_map = _json_object(index, "the index of the sharded weights").get("weight_map", {})
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise ModelFolderError(f"{folder}: weight shard {shard} named in {index.name} is missing")
            check_safetensors(folder / shard)


def check_processor_files(folder: Path) -> None:
    """The tokenizer and image preprocessing files ``VLMProcessor.from_pretrained`` needs."""
    _json_object(folder / "processor_config.json", "the image preprocessing and image token")
    _json_object(folder / "tokenizer_config.json", "the tokenizer's settings: special tokens, padding")
    _json_object(folder / "tokenizer.json", "the tokenizer itself")


def check_model_folder(folder: Path) -> None:
    """A saved/merged VLM folder: config.json, complete safetensors weights, the processor's files."""
    config = _json_object(folder / "config.json", "the model's configuration")
    if config.get("model_type") != "vlm":
        raise ModelFolderError(f"{folder / 'config.json'}: model_type is {config.get('model_type')!r}, not 'vlm'; is this a VLM folder of this toolkit?")
    # Without its parts' configs the class would build defaults (a 7B Llama for text_config) and
    # then find no weights for them: say which entry is missing before anything is allocated.
    for key, inner, what in (("text_config", "model_type", "the LLM's configuration"),
                             ("vision_config", "open_clip_config", "the vision tower's configuration")):
        if not isinstance(config.get(key), dict) or inner not in config[key]:
            raise ModelFolderError(f"{folder / 'config.json'}: no {key!r} with its {inner!r} ({what}); the file was edited "
                                   "or not written by vlm build / vlm merge: restore it from where the model was made")
    _weights(folder, "model")
    check_processor_files(folder)


def check_adapter_folder(folder: Path) -> None:
    """A LoRA adapter folder: adapter_config.json and, where it has them, complete adapter weights."""
    _json_object(folder / "adapter_config.json", "the LoRA adapter's configuration")
    if (folder / "adapter_model.safetensors").is_file():
        check_safetensors(folder / "adapter_model.safetensors")
