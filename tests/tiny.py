"""Tiny models built inside the tests, offline: a BPE tokenizer, Llama/Qwen2-style LLMs, a ViT.

The ViT keeps the real geometry (224 px, patch 16 -> 196 patch tokens) but is 32 wide and
3 blocks deep, so every test runs in seconds on a CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 32, "layers": 3, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "what colour is the circle in the image",
    "the red square is at the top left and the blue circle at the bottom right",
    "how many shapes are there? there are three shapes",
    "describe the picture. a green triangle next to a yellow star",
    "yes no true false left right top bottom center one two three four five six",
    "you are a helpful assistant that answers questions about images",
] * 20


def make_tokenizer(with_chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences, with ChatML special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if with_chat_template:
        fast.chat_template = CHATML_TEMPLATE
    return fast


def make_llm(kind: str, vocab_size: int, seed: int = 0, hidden_size: int = 32) -> torch.nn.Module:
    """A 2-layer, 32-wide causal LM: ``llama`` (tied embeddings) or ``qwen2`` (untied, with biases)."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
    )
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True))
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
    raise ValueError(kind)


def save_llm_folder(path: Path, kind: str, with_chat_template: bool = True, hidden_size: int = 32) -> Path:
    tokenizer = make_tokenizer(with_chat_template)
    model = make_llm(kind, len(tokenizer), hidden_size=hidden_size)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_vlm(llm_dir: Path, **kwargs):
    from vlm import build_vlm

    torch.manual_seed(0)
    kwargs.setdefault("vision_model", None)
    kwargs.setdefault("vision_model_config", TINY_CLIP_CONFIG)
    model, processor = build_vlm(str(llm_dir), **kwargs)
    # A fresh projector is ~0 in scale; make image features matter for the tests.
    with torch.no_grad():
        for p in model.projector.parameters():
            p.normal_(0, 0.5)
    return model.eval(), processor


def make_image(seed: int, size: tuple[int, int] = (224, 224)) -> Image.Image:
    """A deterministic picture of a few coloured boxes."""
    g = torch.Generator().manual_seed(seed)
    image = Image.new("RGB", size, (200, 200, 200))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = (torch.randint(0, size[0] - 40, (1,), generator=g).item(), torch.randint(0, size[1] - 40, (1,), generator=g).item())
        colour = tuple(torch.randint(0, 256, (3,), generator=g).tolist())
        draw.rectangle([x0, y0, x0 + 40, y0 + 40], fill=colour)
    return image


def run_deepspeed(config_path, *overrides: str, port: int, timeout: int = 600):
    """``deepspeed --num_gpus 2 --module train CONFIG key=value...``: 2 CPU processes over gloo."""
    import shutil
    import subprocess
    import sys

    launcher = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [launcher, "--num_gpus", "2", "--master_port", str(port), "--module", "train", str(config_path), *overrides],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=Path(__file__).parents[1],
    )
