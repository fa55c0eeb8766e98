"""``vlm merge``: a training output (ZeRO shards and/or a LoRA adapter) -> one standalone HF model.

    find the checkpoint and its base (from the checkpoint's own files, never the folder name)
    -> consolidate ZeRO shards with DeepSpeed's zero_to_fp32 -> load base + trained weights
    (+ LoRA with peft; a QLoRA adapter onto the full-precision base) -> merge_and_unload -> save into a staging folder -> reload it and check
    its logits against the unmerged model on a probe batch -> rename into place.

The result loads with ``VLMForCausalLM`` / ``AutoModelForCausalLM`` / ``AutoProcessor``
without peft or DeepSpeed. Also runnable as ``python -m train.merge``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from train.checkpoint_types import training_state_types
from vlm.atomic import atomic_directory
from vlm.loading import adapter_base, resolve_model_dir
from vlm.modeling import VLMForCausalLM
from vlm.processing import VLMProcessor
from vlm.quantization import QuantizationUnavailable, load_quantized, quantization_kind, read_quantization
from vlm.safe_load import UnsafePickleError, weights_only_loads

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Max |logit difference| allowed between merged and unmerged, relative to the logits' scale
# (max(1, max |logit|)): fp32 only reorders float sums; bf16/fp16 round every weight.
DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}
# QLoRA: the merged model (adapter on the full-precision base) against the model as it was trained
# (the same adapter on the quantized base). Their difference is what quantizing the base costs, and
# that differs by model far more than by method: measured by benchmarks/qlora_memory.py's merge gap
# (2026-12-04, AMD EPYC, fp32, 4 steps), max |logit diff| relative to max(1, max |logit|):
#   tiny test Llama (hidden 32): nf4 0.090, fp4 0.134, int8 0.009
#   SmolLM2-135M:                nf4 0.675, fp4 0.465, int8 0.131
# So no fixed bound fits both; the bound is measured on the spot instead: what quantization does
# to the base alone (the same probe through the base, quantized and not, no adapter), times
# QUANTIZED_FACTOR, plus the dtype's merge tolerance. A merge that moved the model further from
# how it was trained than quantization itself moves the base fails.
QUANTIZED_FACTOR = 2.0


def quantized_bound_for(cost: float, scale: float, dtype: str = "fp32") -> float:
    """The default bound on |merged - as trained|: ``QUANTIZED_FACTOR`` x what quantization moves the
    base alone (``cost``), plus the dtype's merge tolerance at the logits' ``scale``."""
    return QUANTIZED_FACTOR * cost + DEFAULT_TOLERANCE[dtype] * scale


class MergeError(RuntimeError):
    """A merge that cannot be done safely; nothing has been written."""


@dataclass
class MergeReport:
    source: Path
    base: Path | None
    kind: str  # "full" or "lora"
    zero: bool
    max_abs_diff: float | None
    tolerance: float | None
    quantization: str | None = None  # QLoRA: the base's quantization during training
    quantized_diff: float | None = None
    quantized_tolerance: float | None = None
    quantized_scale: float | None = None
    """max(1, the largest |logit| as trained)."""
    quantized_cost: float | None = None
    """Max |logit diff| of the base alone, quantized against full precision: what the bound is made of."""

    def verification_line(self) -> str:
        if self.max_abs_diff is None:
            return "verification: skipped (--no-verify)"
        line = f"verification: max |logit diff| merged vs unmerged = {self.max_abs_diff:.3e} (tolerance {self.tolerance:.1e}) OK"
        if self.quantized_diff is not None:
            line += (f"; vs the {self.quantization}-quantized base with the adapter, as trained = {self.quantized_diff:.3e} "
                     f"(bound {self.quantized_tolerance:.3e}; {self.quantization} moves the base alone by "
                     f"{self.quantized_cost:.3e}) OK")
        return line


def find_checkpoint(path: str | Path) -> Path:
    """A run folder -> its final model; a checkpoint or model folder -> itself."""
    path = Path(path)
    if is_zero_checkpoint(path):
        return path
    return resolve_model_dir(path)


def is_zero_checkpoint(folder: Path) -> bool:
    return (folder / "latest").is_file() and any(p.is_dir() and p.name.startswith("global_step") for p in folder.iterdir())


def zero_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights from ZeRO-1/2/3 shards, by DeepSpeed's own consolidation (any world size, no GPU)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        # zero_to_fp32 reads the shards with torch.load(weights_only=False): a crafted shard would run
        # code here. Its consolidation is kept, its loads made weights-only (train.checkpoint_types).
        with weights_only_loads(training_state_types()):
            return get_fp32_state_dict_from_zero_checkpoint(str(folder))
    except UnsafePickleError as err:
        raise MergeError(str(err)) from None
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise MergeError(f"cannot consolidate the ZeRO checkpoint in {folder}: {err}") from err


def load_unmerged(folder: Path, base: Path | None = None) -> tuple[nn.Module, VLMProcessor, Path | None, str, bool]:
    """The trained model exactly as training left it (LoRA unmerged), with its processor."""
    zero = is_zero_checkpoint(folder)
    weights = zero_state_dict(folder) if zero else None
    if (folder / "adapter_config.json").is_file():
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file

        base = Path(base) if base else _adapter_base(folder)
        model = get_peft_model(VLMForCausalLM.from_pretrained(base, dtype=torch.float32), LoraConfig.from_pretrained(folder))
        if weights is None:
            adapter_file = folder / "adapter_model.safetensors"
            if not adapter_file.is_file():
                raise MergeError(f"{folder} has adapter_config.json but no adapter_model.safetensors")
            try:
                result = set_peft_model_state_dict(model, load_file(str(adapter_file)))
            except RuntimeError as err:  # torch reports every shape mismatch, one per line
                mismatches = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
                raise MergeError(
                    f"the adapter in {folder} does not fit the base model {base}: {len(mismatches)} tensors with other "
                    f"shapes, e.g. {mismatches[0] if mismatches else err}; is --base the model this run started from?"
                ) from err
            _check_adapter(folder, model, result)
        else:
            _load_strict(model, weights, folder)
        processor = VLMProcessor.from_pretrained(folder if (folder / "processor_config.json").is_file() else base)
        return model, processor, base, "lora", zero
    if not (folder / "config.json").is_file():
        raise MergeError(f"{folder} holds neither a VLM config.json nor a LoRA adapter_config.json")
    source = Path(base) if base else folder
    if weights is None:
        model = VLMForCausalLM.from_pretrained(folder, dtype=torch.float32)
    else:
        model = VLMForCausalLM.from_pretrained(source, dtype=torch.float32) if any(source.glob("*.safetensors")) else VLMForCausalLM(_config(folder))
        _load_strict(model, weights, folder)
    processor = VLMProcessor.from_pretrained(folder if (folder / "processor_config.json").is_file() else source)
    return model, processor, (Path(base) if base else None), "full", zero


def merge(
    source: str | Path,
    out: str | Path,
    base: str | Path | None = None,
    dtype: str = "fp32",
    max_shard_size: str = "5GB",
    verify: bool = True,
    tolerance: float | None = None,
    overwrite: bool = False,
    quantized_tolerance: float | None = None,
) -> MergeReport:
    """Merge ``source`` into a standalone model folder ``out`` (see the module docstring).

    A QLoRA adapter is merged onto the full-precision base it was trained from (as LLaVA's merge
    does), so the result is an ordinary fp32 / bf16 / fp16 model. It is checked twice: against the
    same unmerged adapter on the full-precision base (the merge itself, at ``tolerance``), and
    against the adapter on the quantized base as training saw it (at ``quantized_tolerance``,
    what the quantization costs).
    """
    if dtype not in DTYPES:
        raise MergeError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    folder = find_checkpoint(source)
    model, processor, base_path, kind, zero = load_unmerged(folder, Path(base) if base else None)
    quantization = read_quantization(folder) if kind == "lora" else None
    model.eval()
    probe = _probe_batch(processor)
    reference = _logits(model, probe) if verify else None
    as_trained = quantized_base = full_base = None
    if verify and quantization:
        as_trained, quantized_base = _quantized_logits(model, base_path, quantization, probe)
        with model.disable_adapter():
            full_base = _logits(model, probe)
    merged = model.merge_and_unload() if kind == "lora" else model
    merged = merged.to(DTYPES[dtype])
    merged.config.dtype = DTYPES[dtype]
    tol = tolerance if tolerance is not None else DEFAULT_TOLERANCE[dtype]
    max_diff = quantized_diff = quantized_bound = quantized_scale = quantized_cost = None
    with atomic_directory(out, overwrite=overwrite) as staging:
        merged.save_pretrained(staging, max_shard_size=max_shard_size)
        processor.save_pretrained(staging)
        if verify:
            reloaded = VLMForCausalLM.from_pretrained(staging, dtype=DTYPES[dtype]).eval()
            logits = _logits(reloaded, probe)
            max_diff = float((logits - reference).abs().max())
            bound = tol * max(1.0, float(reference.abs().max()))
            if not max_diff <= bound:
                raise MergeError(
                    f"verification failed: merged logits differ from the unmerged model's by {max_diff:.3e} "
                    f"> {bound:.3e} ({dtype}); nothing was written"
                )
            tol = bound
            if as_trained is not None:
                kind_name = quantization_kind(quantization)
                quantized_diff = float((logits - as_trained).abs().max())
                quantized_scale = max(1.0, float(as_trained.abs().max()))
                quantized_cost = float((full_base - quantized_base).abs().max())
                if quantized_tolerance is not None:
                    quantized_bound = quantized_tolerance * quantized_scale
                else:
                    quantized_bound = quantized_bound_for(quantized_cost, quantized_scale, dtype)
                if not quantized_diff <= quantized_bound:
                    raise MergeError(
                        f"verification failed: merged logits differ from the {kind_name}-quantized model with the adapter "
                        f"(as trained) by {quantized_diff:.3e} > {quantized_bound:.3e}, more than {kind_name} quantization "
                        f"costs (it moves the base alone by {quantized_cost:.3e}): the adapter leans on the quantization's "
                        "errors, so the full-precision merge behaves otherwise than the model trained (--quantized-tolerance "
                        "to accept it); nothing was written"
                    )
    return MergeReport(
        source=folder, base=base_path, kind=kind, zero=zero, max_abs_diff=max_diff, tolerance=tol if verify else None,
        quantization=quantization_kind(quantization) if quantization else None,
        quantized_diff=quantized_diff, quantized_tolerance=quantized_bound, quantized_scale=quantized_scale,
        quantized_cost=quantized_cost,
    )


def _quantized_logits(model: nn.Module, base: Path, quantization, probe: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the model as QLoRA trained it (the base quantized again, the same adapter weights on it),
    and of that quantized base without the adapter."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    try:
        quantized = get_peft_model(load_quantized(base, quantization), copy.deepcopy(model.peft_config["default"]))
    except QuantizationUnavailable as err:
        raise MergeError(f"{err} (needed to compare the merged model with the quantized one it was trained as; "
                         "--no-verify skips the check)") from err
    set_peft_model_state_dict(quantized, get_peft_model_state_dict(model))
    logits = _logits(quantized.eval(), probe)
    with quantized.disable_adapter():
        plain = _logits(quantized, probe)
    del quantized
    return logits, plain


def _adapter_base(folder: Path) -> Path:
    try:
        return adapter_base(folder)
    except FileNotFoundError as err:
        raise MergeError(str(err)) from err


def _config(folder: Path):
    from vlm.configuration import VLMConfig

    return VLMConfig.from_pretrained(folder)


def _load_strict(model: nn.Module, weights: dict[str, torch.Tensor], folder: Path) -> None:
    """Load consolidated ZeRO weights: every trained tensor must be there and fit; frozen ones may be
    absent (DeepSpeed leaves them out of LoRA checkpoints) and then come from the base."""
    expected = model.state_dict()
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trained - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape]
    if missing or unexpected or shapes:
        raise MergeError(
            f"the weights in {folder} do not fit the base model: {len(missing)} trained tensors missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(shapes)} with other shapes (e.g. {shapes[:3]}); "
            "is --base the model this run started from?"
        )
    model.load_state_dict(weights, strict=False)


def _check_adapter(folder: Path, model: nn.Module, result) -> None:
    unexpected = [k for k in result.unexpected_keys if "lora_" in k or "modules_to_save" in k]
    trained = {k for k, p in model.named_parameters() if p.requires_grad}
    missing = sorted(k for k in result.missing_keys if k in trained)
    if unexpected or missing:
        raise MergeError(
            f"the adapter in {folder} does not fit the base model: {len(unexpected)} adapter weights have no place "
            f"in it (e.g. {unexpected[:3]}), {len(missing)} adapted weights are missing (e.g. {missing[:3]}); "
            "is --base the model this run started from?"
        )


def _probe_batch(processor: VLMProcessor) -> dict[str, torch.Tensor]:
    """A generated image and a prompt: enough to exercise the tower, projector and every LLM layer."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (224, 224), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    draw.ellipse([40, 40, 120, 120], fill=(220, 40, 40))
    draw.rectangle([130, 120, 200, 190], fill=(40, 90, 220))
    prompt = processor.apply_chat_template([{"role": "user", "content": "<image>\nDescribe the shapes and their colours."}])
    return dict(processor(text=prompt, images=[image]))


@torch.no_grad()
def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    inputs = {k: (v.to(dtype) if k == "pixel_values" else v) for k, v in batch.items()}
    return model(**inputs).logits.float()


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m train.merge")
    parser.description = (
        "Turn a training output (a run folder, any checkpoint-N, ZeRO-1/2/3 shards, a LoRA adapter) into one "
        "standalone Hugging Face model folder, verified against the unmerged model."
    )
    parser.epilog = "example: vlm merge runs/stage2/checkpoint-500 --out runs/merged --dtype bf16"
    parser.add_argument("source", type=Path, help="run folder, checkpoint-N folder or saved adapter/model folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder (written atomically)")
    parser.add_argument("--base", type=Path, help="base model folder (default: the one the checkpoint names)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weight dtype of the result (default fp32)")
    parser.add_argument("--max-shard-size", default="5GB", help="split weights into safetensors shards above this size")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the logits check")
    parser.add_argument("--tolerance", type=float, help="relative logits tolerance (default by dtype: fp32 1e-4, fp16 2e-2, bf16 1e-1)")
    parser.add_argument("--quantized-tolerance", type=float,
                        help="QLoRA runs: a fixed relative logits tolerance against the quantized model with the adapter, "
                             f"as trained (default: measured, {QUANTIZED_FACTOR:g} x what the quantization does to the base alone)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def run(args: argparse.Namespace) -> int:
    report = merge(
        args.source, args.out, base=args.base, dtype=args.dtype, max_shard_size=args.max_shard_size,
        verify=args.verify, tolerance=args.tolerance, overwrite=args.overwrite, quantized_tolerance=args.quantized_tolerance,
    )
    kind = f"{'qlora, ' + report.quantization + ' base' if report.quantization else report.kind}{' + ZeRO shards' if report.zero else ''}"
    print(f"merged {report.source} ({kind}; base {report.base or 'its own config'}) -> {args.out}", file=sys.stderr)
    print(report.verification_line(), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (MergeError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"merge: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
