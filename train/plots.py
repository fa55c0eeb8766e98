"""A loss / learning-rate curve as a PNG, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, ImageDraw

from vlm.atomic import atomic_file


def plot_metrics(metrics_jsonl: str | os.PathLike, out_png: str | os.PathLike, width: int = 800, height: int = 360) -> bool:
    """Draw training loss (left axis, blue) and learning rate (right axis, orange) against step.

    Returns False (and writes nothing) when the log holds fewer than two loss points.
    """
    points = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    loss = [(p["step"], p["loss"]) for p in points if "loss" in p]
    lr = [(p["step"], p["learning_rate"]) for p in points if "learning_rate" in p]
    if len(loss) < 2:
        return False
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 60, width - 70, 20, height - 40
    draw.rectangle([left, top, right, bottom], outline="black")
    steps = [s for s, _ in loss] + [s for s, _ in lr]
    s_min, s_max = min(steps), max(max(steps), min(steps) + 1)

    def series(values: list[tuple[int, float]], colour: str, label_x: int, fmt: str) -> None:
        v_min, v_max = min(v for _, v in values), max(v for _, v in values)
        span = (v_max - v_min) or 1.0
        xy = [
            (left + (s - s_min) / (s_max - s_min) * (right - left), bottom - (v - v_min) / span * (bottom - top))
            for s, v in values
        ]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        draw.text((label_x, top), format(v_max, fmt), fill=colour)
        draw.text((label_x, bottom - 10), format(v_min, fmt), fill=colour)

    series(loss, "#1f77b4", 5, ".3f")
    if lr:
        series(lr, "#ff7f0e", right + 5, ".1e")
    draw.text((left, bottom + 8), f"step {s_min}", fill="black")
    draw.text((right - 60, bottom + 8), f"step {s_max}", fill="black")
    draw.text((width // 2 - 80, bottom + 20), "loss (blue), learning rate (orange)", fill="black")
    with atomic_file(out_png, "wb") as handle:
        image.save(handle, format="PNG")
    return True
