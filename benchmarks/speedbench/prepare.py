"""Preparation, once, in the parent: the two models saved, the batches tokenized and saved."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from benchmarks.speedbench.settings import Settings

# --quick: the same code paths on tiny models (the real tokenizer, 224 px / patch 16 -> 196 tokens).
QUICK_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
QUICK_LLM_OVERRIDES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


def prepare(settings: Settings) -> dict[str, Any]:
    """Save our model, the LLaVA reference built from it, and every batch into the work folder."""
    from apps.export import build_llava
    from vlm import build_vlm

    work = Path(settings.workdir)
    torch.manual_seed(0)
    if settings.quick:
        llm = str(_quick_llm_folder(work / "quick-llm"))
        model, processor = build_vlm(llm, vision_model=None, vision_model_config=QUICK_CLIP_CONFIG, projector_type="mlp2x_gelu")
    else:
        model, processor = build_vlm("smollm2-135m-instruct", vision_model="ViT-B-16", projector_type="mlp2x_gelu")
    model.save_pretrained(work / "ours")
    processor.save_pretrained(work / "ours")
    reference = build_llava(model)
    reference.save_pretrained(work / "reference")
    shapes = {
        "vision": model.config.vision_config["model_name"],
        "vision_width": model.vision_tower.hidden_size,
        "vision_layers": model.vision_tower.num_layers,
        "image_tokens": model.config.image_seq_length,
        "projector": model.config.projector_type,
        "llm": model.config.text_config.model_type,
        "llm_hidden": model.config.text_config.hidden_size,
        "llm_layers": model.config.text_config.num_hidden_layers,
        "vocab": model.config.text_config.vocab_size,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
    }
    del model, reference
    batches, stats = make_batches(processor, work, settings.train_batch)
    torch.save(batches, work / "batches.pt")
    shapes["batches"] = stats
    return shapes


def _quick_llm_folder(folder: Path) -> Path:
    """A 2-layer, 64-wide Llama with SmolLM2's config, tokenizer and chat template, random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from vlm.llm_source import resolve_llm

    source = resolve_llm("smollm2-135m-instruct")
    config = AutoConfig.from_pretrained(source)
    for key, value in QUICK_LLM_OVERRIDES.items():
        setattr(config, key, value)
    config.head_dim = config.hidden_size // config.num_attention_heads
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def make_batches(processor, work: Path, train_batch: int) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Training batches as the training code makes them, and left-padded generation prompts."""
    from eval.shapes import IMAGE_TOKEN, write_shapes_dataset
    from train.dataset import VLMCollator, prepare_dataset

    files = write_shapes_dataset(work / "data", n=64, seed=0, n_eval=8)
    rng = random.Random(0)
    collate = VLMCollator(processor.tokenizer.pad_token_id)
    batches, stats = {}, {}
    for name, part in (("stage1", "captions"), ("stage2", "instruct")):
        dataset, _ = prepare_dataset([str(files[part])], None, processor, max_length=2048, skip_bad=False, progress=False)
        batch = collate([dataset[i] for i in rng.sample(range(len(dataset)), train_batch)])
        batches[name] = batch
        lengths = batch["attention_mask"].sum(1)
        stats[name] = {
            "batch": train_batch,
            "tokens_per_sample": lengths.tolist(),
            "padded_length": batch["input_ids"].shape[1],
            "labeled_positions": int((batch["labels"][:, 1:] != -100).sum()),
        }
    records = json.loads(Path(files["eval"]).read_text())[:8]
    prompts = [processor.apply_chat_template([{"role": "user", "content": f"{IMAGE_TOKEN}\n{r['question']}"}]) for r in records]
    from PIL import Image

    images = [[Image.open(Path(files["eval"]).parent / r["image"]).convert("RGB")] for r in records]
    for batch_size in (1, 8):
        batch = dict(processor(text=prompts[:batch_size], images=images[:batch_size], padding_side="left"))
        batches[f"infer_b{batch_size}"] = batch
        stats[f"infer_b{batch_size}"] = {"batch": batch_size, "prompt_tokens": batch["attention_mask"].sum(1).tolist()}
    return batches, stats
