"""What a run measured, as JSON and as the Markdown table the demo ends with."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from apps.demo.hardware import CPU_PAIR, Hardware
from apps.demo.planning import CHAT_COUNT_QUESTION, CHAT_FILE
from apps.demo.profiles import NLVRProfile, Profile
from apps.demo.runner import duration, printable, recorded_commands
from apps.demo.step import Step

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


def summarize(workdir: Path, steps: list[Step], profile: Profile, wall_seconds: float,
              nlvr: tuple[NLVRProfile, Path] | None = None, hardware: Hardware = CPU_PAIR) -> dict[str, Any]:
    """Collect what the run measured: step times and memory, accuracy per task, the chat answer."""
    common = {
        "recipe": "shapes" if nlvr is None else "nlvr",
        "profile": asdict(profile),
        "hardware": asdict(hardware),
        "workdir": str(workdir.resolve()),
        "wall_seconds": round(wall_seconds, 1),
        "steps": [
            {"name": s.name, "status": s.status, "seconds": None if s.seconds is None else round(s.seconds, 1),
             "peak_rss_mib": None if s.peak_rss_mib is None else round(s.peak_rss_mib, 1),
             "commands": [printable(c, env=s.env) for c in recorded_commands(s.commands)]}
            for s in steps
        ],
    }
    if nlvr is not None:
        return {**common, "nlvr": _nlvr_results(workdir / "nlvr", *nlvr)}
    results = {}
    for folder, key in (("image", "model"), ("blank", "blank"), ("no-image", "no_image")):
        metrics = workdir / "eval" / folder / "metrics.json"
        if metrics.is_file():
            results[key] = json.loads(metrics.read_text(encoding="utf-8"))["metrics"]
    chat = (workdir / CHAT_FILE).read_text(encoding="utf-8").strip() if (workdir / CHAT_FILE).is_file() else None
    reference = _chat_reference(profile)
    return {**common, "accuracy": results,
            "chat": {"question": CHAT_COUNT_QUESTION, "answer": chat, "reference": reference}}


def _nlvr_results(folder: Path, nlvr: NLVRProfile, nlvr_data: Path) -> dict[str, Any]:
    from eval.metrics.nlvr import majority_class_baseline, score_nlvr
    from eval.nlvr import load_nlvr_split

    results: dict[str, Any] = {}
    for name, key in (("image", "model"), ("no-image", "no_image")):
        metrics = folder / "eval" / name / "metrics.json"
        if metrics.is_file():
            results[key] = json.loads(metrics.read_text(encoding="utf-8"))["metrics"]
    test = nlvr_data / "test"
    if test.is_dir():
        examples = load_nlvr_split(test)  # file order, as vlm eval --limit takes them
        examples = examples if nlvr.eval_limit is None else examples[: nlvr.eval_limit]
        label, share = majority_class_baseline(examples)
        constant = score_nlvr((example, label) for example in examples)
        results["majority"] = {"label": "true" if label else "false", "accuracy": share,
                               "consistency": constant.consistency, "num_images": len(examples)}
    return results


def _chat_reference(profile: Profile) -> str:
    """The true answer to the chat question: the number of shapes in held-out scene 0 (seed 0)."""
    from eval.shapes import SceneConfig, sample_scene, scene_seed

    return str(len(sample_scene(scene_seed(0, "eval", 0), SceneConfig(max_shapes=profile.max_shapes)).shapes))


def render_summary(summary: dict[str, Any]) -> str:
    steps = summary["steps"]
    total = sum(s["seconds"] or 0 for s in steps)  # recorded times of reused steps included
    lines = [f"## vlm demo ({summary['profile']['name']}): {summary['workdir']}", ""]
    if "hardware" in summary:  # summaries written before the hardware was recorded lack it
        lines += [f"Stage 2 on {Hardware(**summary['hardware']).describe()}.", ""]
    lines += [
        "| step | status | wall time | peak RSS (all processes) |",
        "|---|---|---:|---:|",
    ]
    for s in steps:
        rss = "-" if s["peak_rss_mib"] is None else f"{s['peak_rss_mib']:,.0f} MiB"
        lines.append(f"| {s['name']} | {s['status']} | {duration(s['seconds'])} | {rss} |")
    peak = max((s["peak_rss_mib"] or 0 for s in steps), default=0)
    reused = sum(s["status"] == "reused" for s in steps)
    note = f" (this invocation: {duration(summary['wall_seconds'])}, {reused} steps reused)" if reused else ""
    lines.append(f"| **total** | | **{duration(total)}**{note} | **{peak:,.0f} MiB** (largest step) |")
    if "nlvr" in summary:
        results = summary["nlvr"]
        rows = [("model", "merged model, image"), ("no_image", "base LLM, no image")]
        lines += ["", "NLVR test (one prediction per PNG; consistency = sentences with every image right):", "",
                  "| | images | accuracy % | consistency % | unparseable % |", "|---|---:|---:|---:|---:|"]
        for key, title in rows:
            if key in results:
                m = results[key]
                lines.append(f"| {title} | {m['num_images']} | {m['accuracy']:.1f} | {m['consistency']:.1f} | {m['unparseable']:.1f} |")
        if "majority" in results:
            m = results["majority"]
            lines.append(f"| majority class (always {m['label']}) | {m['num_images']} | {m['accuracy']:.1f} | {m['consistency']:.1f} | 0.0 |")
        return "\n".join(lines) + "\n"
    accuracy = summary["accuracy"]
    if accuracy:
        columns = [("model", "merged model, image"), ("blank", "merged model, blank image"),
                   ("no_image", "base LLM, no image")]
        columns = [(key, title) for key, title in columns if key in accuracy]
        lines += ["", "Held-out shapes questions, exact-match accuracy (%):", "",
                  "| task | questions | " + " | ".join(title for _, title in columns) + " |",
                  "|---|---:|" + "---:|" * len(columns)]
        first = accuracy[columns[0][0]]
        for task, tally in first["per_task"].items():
            cells = [f"{accuracy[key]['per_task'].get(task, {}).get('accuracy', float('nan')):.1f}" for key, _ in columns]
            lines.append(f"| {task} | {tally['total']} | " + " | ".join(cells) + " |")
        cells = [f"**{accuracy[key]['accuracy']:.1f}**" for key, _ in columns]
        lines.append(f"| **overall** | {first['total']} | " + " | ".join(cells) + " |")
    chat = summary["chat"]
    if chat["answer"] is not None:
        lines += ["", f"Chat about a held-out image: \"{chat['question']}\" -> {chat['answer']!r}"
                  + (f" (reference: {chat['reference']})" if chat["reference"] is not None else "")]
    return "\n".join(lines) + "\n"
