"""Session fixtures: tiny LLM folders (weights + tokenizer) and a tiny ViT config, saved once, offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny import TINY_CLIP_CONFIG, save_llm_folder  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return save_llm_folder(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory) -> Path:
    return save_llm_folder(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


@pytest.fixture(scope="session")
def base_llm_dir(tmp_path_factory) -> Path:
    """A Llama-style LLM whose tokenizer has no chat template (a base model)."""
    return save_llm_folder(tmp_path_factory.mktemp("tiny-base"), "llama", with_chat_template=False)


@pytest.fixture(scope="session")
def vision_json(tmp_path_factory) -> str:
    """The tiny open_clip ViT config (224 px / patch 16 -> 196 tokens) as a JSON file, for ``vision_config=``."""
    path = tmp_path_factory.mktemp("vit") / "tiny-vit.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return str(path)
