"""``vlm demo``: the whole recipe, offline, from nothing to a chatting VLM, with a summary table.

Steps (each one a command of this toolkit, printed before it runs, so it can be rerun alone):

    data      vlm data shapes                  synthetic scenes: captions, instructions, held-out QA
    clip      python -m train.clip csv|train   a small CLIP trained contrastively on the captions
    llm       python -m apps.demo tiny-llm     (--quick only) a tiny random LLM with SmolLM2's tokenizer
    stage1    vlm train pretrain               the projector learns on the captions
    stage2    deepspeed ... train sft_lora     projector + LoRA on the instructions, ZeRO-2, 2 processes
                                               (2 CPU processes; with CUDA one per GPU up to 2; --procs N)
    merge     vlm merge                        ZeRO shards + LoRA -> one verified HF model folder
    eval      vlm eval --benchmark shapes      held-out questions, with the images
    blank     vlm eval ... --images blank      baseline: the same model, every image black
    no-image  vlm eval ... --images none       baseline: the base LLM (stage 1's, untouched) without images
    chat      vlm chat                         one answer about a held-out image

Every step writes its output atomically (a folder appears complete or not at all; training
resumes from its last checkpoint), and ``WORKDIR/demo.json`` records the command that made it.
Rerunning the demo reuses each step whose output is complete and whose command is unchanged, and
refuses (instead of silently mixing) when a finished step was made by another command.
"""

from apps.demo.cli import add_arguments, main, run
from apps.demo.hardware import CPU_PAIR, Hardware, detect_hardware
from apps.demo.planning import plan, plan_nlvr
from apps.demo.profiles import NLVR_PROFILES, PROFILES, NLVRProfile, Profile, choose_profiles
from apps.demo.recipe import build_tiny_llm, run_demo
from apps.demo.runner import STATE_FILE, printable, run_steps
from apps.demo.step import DemoError, Step
from apps.demo.summary import SUMMARY_JSON, SUMMARY_MD, render_summary, summarize

__all__ = [
    "CPU_PAIR",
    "NLVR_PROFILES",
    "PROFILES",
    "STATE_FILE",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "DemoError",
    "Hardware",
    "NLVRProfile",
    "Profile",
    "Step",
    "add_arguments",
    "build_tiny_llm",
    "choose_profiles",
    "detect_hardware",
    "main",
    "plan",
    "plan_nlvr",
    "printable",
    "render_summary",
    "run",
    "run_demo",
    "run_steps",
    "summarize",
]
