"""``vlm export``: a model trained here -> a folder that transformers' LLaVA, vLLM and the Hub's tools read.

    find the model (a merged/saved folder as is; a run folder, checkpoint or LoRA adapter merged on the way by
    train.merge) -> refuse what has no exact LLaVA form -> convert (apps.export.keymap / config / processor)
    -> write into a staging folder (apps.export.writer) -> reload it with transformers alone and check pixels,
    logits and greedy tokens against our model (apps.export.parity) -> rename into place.

A failed check or a refusal leaves nothing at ``--out`` (``vlm.atomic``); an existing ``--out`` is replaced
only with ``--overwrite``, and only once the new folder has passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from apps.export.config import llava_config
from apps.export.keymap import ExportError, check_projector_type, hub_layout, llava_state_dict
from apps.export.parity import PIXEL_TOLERANCE, ParityReport, check_parity
from apps.export.processor import llava_processor
from apps.export.writer import write_model_card, write_weights
from train.merge import find_checkpoint, is_zero_checkpoint, merge
from vlm.atomic import atomic_directory
from vlm.loading import adapter_base, load_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMATS = ("llava",)


@dataclass
class ExportReport:
    source: Path
    merged: bool
    out: Path
    dtype: str
    files: list[str] = field(default_factory=list)
    parity: ParityReport | None = None


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def needs_merge(folder: Path) -> bool:
    """ZeRO shards or a LoRA adapter: merged first (``train.merge``); a saved or merged model folder is read as it is."""
    return is_zero_checkpoint(folder) or (folder / "adapter_config.json").is_file()


def _projector_type(folder: Path, base: Path | None) -> str | None:
    """The projector type named in the model's config (a LoRA adapter's: its base's), read before any loading."""
    if (folder / "adapter_config.json").is_file():
        named = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        folder = base or (Path(named) if named else folder)
    config = folder / "config.json"
    if not config.is_file():
        return None  # the merge says what is missing
    return json.loads(config.read_text()).get("projector_type", "linear")


def export(
    source: str | Path,
    out: str | Path,
    to: str = "llava",
    dtype: str = "fp32",
    base: str | Path | None = None,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
    log=_log,
) -> ExportReport:
    """Export ``source`` (see the module docstring) to ``out``; ``ExportError`` (nothing written) when it cannot be exact."""
    if to not in FORMATS:
        raise ExportError(f"--to {to}: not one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype}: not one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    folder = find_checkpoint(source)
    if (folder / "adapter_config.json").is_file() and base is None:
        adapter_base(folder)  # a LoRA run whose base is gone: refused before any work, saying what to pass
    projector_type = _projector_type(folder, Path(base) if base else None)
    if projector_type is not None:
        check_projector_type(projector_type)
    report = ExportReport(source=folder, merged=needs_merge(folder), out=out, dtype=dtype)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.merge-", dir=out.absolute().parent) as work:
        model_dir = folder
        if report.merged:
            log(f"merging {folder} (train.merge) ...")
            model_dir = Path(work) / "merged"
            merge(folder, model_dir, base=base, dtype="fp32")
        model, processor = load_model(model_dir, dtype=torch.float32)
    log(f"converting {model_dir if not report.merged else folder} to LLaVA ({dtype}) ...")
    config = llava_config(model)
    config.dtype = DTYPES[dtype]
    llava_proc = llava_processor(processor, config.vision_config.patch_size, model.config.image_seq_length)
    state = {k: v.to(DTYPES[dtype]) for k, v in llava_state_dict(model).items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to the input embeddings, as transformers saves it
    state = hub_layout(state)
    model = model.to(DTYPES[dtype])  # the reference: our model in the export dtype, as `vlm chat --dtype` runs it
    with atomic_directory(out, overwrite=overwrite) as staging:
        config.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        report.files = write_weights(state, staging, max_shard_size)
        del state
        llava_proc.save_pretrained(staging)
        llava_proc.image_processor.save_pretrained(staging)  # preprocessor_config.json, for tools that read only it
        log("checking the export with transformers alone (pixels, logits, greedy tokens) ...")
        llava = LlavaForConditionalGeneration.from_pretrained(staging, dtype=DTYPES[dtype]).eval()
        loaded = AutoProcessor.from_pretrained(staging)
        exact = AutoProcessor.from_pretrained(staging, backend="pil")
        parity = check_parity(model, processor, llava, loaded, exact, dtype)
        report.parity = parity
        failures = []
        if not parity.pixel_max_diff <= PIXEL_TOLERANCE:
            failures.append(f"pixel_values differ by {parity.pixel_max_diff:.2e} > {PIXEL_TOLERANCE:.0e}")
        if not parity.logit_max_diff <= parity.logit_bound:
            failures.append(f"logits differ by {parity.logit_max_diff:.3e} > {parity.logit_bound:.3e} ({dtype})")
        if not parity.greedy_equal and dtype == "fp32":
            failures.append(f"greedy tokens differ ({parity.first_difference})")
        if failures:
            raise ExportError(f"the exported model does not compute what {folder} computes: {'; '.join(failures)}; nothing was written")
        if not parity.greedy_equal:
            log(f"warning: greedy tokens differ in {dtype} ({parity.first_difference}): both models round in {dtype}, "
                "in other kernels, and a near tie went the other way; the logits are within the bound")
        vision = model.config.vision_config
        write_model_card(
            staging, name=out.name, source=str(source), dtype=dtype, projector=model.config.projector_type,
            vision=f"open_clip {vision.get('model_name')} ({config.vision_config.num_hidden_layers} blocks of width "
            f"{config.vision_config.hidden_size}, {model.config.image_seq_length} image tokens)",
            llm=f"{config.text_config.model_type} LLM ({config.text_config.num_hidden_layers} layers of width {config.text_config.hidden_size})",
            checks="\n".join(f"- {line}" for line in parity.lines(dtype)),
        )
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="a merged/saved VLM folder, a training run folder, a checkpoint-N or a LoRA adapter folder")
    parser.add_argument("--to", default="llava", choices=FORMATS, help="the format: llava (transformers' LlavaForConditionalGeneration)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (written atomically; nothing is left there on failure)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="weight dtype of the export (default fp32)")
    parser.add_argument("--base", type=Path, help="a LoRA run's base model folder (default: the one its adapter names)")
    parser.add_argument("--max-shard-size", default="5GB", help="split the weights into safetensors shards above this size (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (after the new export has passed its checks)")


def run(args: argparse.Namespace) -> int:
    report = export(args.model, args.out, to=args.to, dtype=args.dtype, base=args.base, overwrite=args.overwrite, max_shard_size=args.max_shard_size)
    origin = f"{report.source} (merged on the way)" if report.merged else str(report.source)
    print(f"exported {origin} -> {report.out} (LLaVA, {report.dtype}, {len(report.files)} weight file(s))", file=sys.stderr)
    for line in report.parity.lines(report.dtype):
        print(f"  {line}", file=sys.stderr)
    return 0
