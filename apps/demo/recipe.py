"""One demo run from start to end: plan, run, summarise; and the --quick demo's tiny LLM."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apps.demo.hardware import detect_hardware
from apps.demo.planning import plan, plan_nlvr
from apps.demo.profiles import DEFAULT_NLVR_DATA, NLVR_URL, TINY_LLM, choose_profiles
from apps.demo.runner import STATE_FILE, read_state, run_steps
from apps.demo.step import DemoError
from apps.demo.summary import SUMMARY_JSON, SUMMARY_MD, render_summary, summarize
from vlm.atomic import atomic_directory, atomic_write_json, atomic_write_text


def run_demo(workdir: str | os.PathLike, quick: bool = False, fresh: bool = False,
             log: Callable[[str], None] = print, recipe: str = "shapes",
             nlvr_data: str | os.PathLike = DEFAULT_NLVR_DATA, stage1_steps: int | None = None,
             stage2_steps: int | None = None, procs: int | None = None) -> dict[str, Any]:
    """Run (or finish) the shapes demo, or the NLVR recipe, in ``workdir``; return the summary (also written there).

    ``stage1_steps`` / ``stage2_steps``: see ``choose_profiles``; ``procs``: see ``detect_hardware``."""
    workdir = Path(workdir)
    profile, nlvr_profile = choose_profiles(quick, recipe, stage1_steps, stage2_steps)
    hardware = detect_hardware(procs)
    nlvr = None
    if nlvr_profile is not None:
        nlvr_data = Path(nlvr_data)
        missing = [p for p in (nlvr_data / "dev", nlvr_data / "test") if not p.is_dir()]
        if missing:
            raise DemoError(f"NLVR v1 not found: {', '.join(map(str, missing))} missing. Get the dev and test folders of "
                            f"{NLVR_URL} (folder nlvr/) and pass --nlvr-data DIR")
        nlvr = (nlvr_profile, nlvr_data.resolve())
    # Planned before the workdir is touched: a plan that cannot run (e.g. --procs 3) leaves nothing behind.
    steps = plan(workdir, profile, hardware=hardware) if nlvr is None else plan_nlvr(workdir, profile, *nlvr, hardware=hardware)
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state = read_state(workdir)
    if state.get("profile") not in (None, profile.name):
        raise DemoError(f"{workdir} holds a {state['profile']} demo run; use another --workdir (or --fresh) for {profile.name}")
    state["profile"] = profile.name
    atomic_write_json(workdir / STATE_FILE, state)
    if profile.clip_config is not None:
        atomic_write_json(workdir / "clip_config.json", profile.clip_config)
    prefix = "" if nlvr is None else "nlvr-"
    start = time.perf_counter()
    try:
        run_steps(workdir, steps, log)
    finally:
        summary = summarize(workdir, steps, profile, time.perf_counter() - start, nlvr, hardware)
        atomic_write_json(workdir / (prefix + SUMMARY_JSON), summary)
        atomic_write_text(workdir / (prefix + SUMMARY_MD), render_summary(summary))
    log("")
    log(render_summary(summary))
    return summary


def build_tiny_llm(out: str | os.PathLike, seed: int = 0) -> Path:
    """A 2-layer Llama with random weights and SmolLM2-135M-Instruct's tokenizer (offline)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from vlm.llm_source import default_cache_dir, packaged_gguf_path

    gguf = packaged_gguf_path("smollm2-135m-instruct")
    # The tokenizer of an earlier full conversion loads in a second; from the GGUF it takes ~10 s.
    cached = default_cache_dir() / "llm"
    converted = next((p for p in cached.glob(f"{gguf.stem}-*") if (p / "tokenizer_config.json").is_file()), None)
    if converted is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(converted))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **TINY_LLM)
    model = LlamaForCausalLM(config)
    with atomic_directory(Path(out), overwrite=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(out)
