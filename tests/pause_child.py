"""A vlm command run in a child process that stops at a chosen point, for the kill -9 tests.

``python pause_child.py SPEC_JSON``: installs the pause named by ``spec["point"]``, then runs
``train.run.run_training`` (``spec["train"]``: TrainConfig fields) or ``apps.cli.main``
(``spec["argv"]``). At the point it prints ``PAUSED`` on stdout and sleeps; the test kills it
with SIGKILL there, so the kill lands at the same place every time (no timing guesses).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def pause() -> None:
    print("PAUSED", flush=True)
    time.sleep(3600)


def wrap(owner, name: str, before=None, after=None) -> None:
    """Replace ``owner.name`` by a call that runs ``before(*args)`` / ``after(*args)`` around the original."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def patched(*args, **kwargs):
        if before is not None:
            before(*args, **kwargs)
        result = original(*args, **kwargs)
        if after is not None:
            after(*args, **kwargs)
        return result

    setattr(owner, name, patched)


def install(point: str, step: int | None, call: int | None) -> None:
    from train.trainer import VLMTrainer

    if point == "mid-step":  # inside the optimizer step after `step` finished ones
        wrap(VLMTrainer, "training_step", before=lambda self, *a, **k: self.state.global_step == step and pause())
    elif point == "mid-save":  # checkpoint-`step`: model files written to its staging folder, optimizer not yet
        wrap(VLMTrainer, "_save_optimizer_and_scheduler", before=lambda self, *a, **k: self.state.global_step == step and pause())
    elif point == "final-save":  # the final model written to its staging folder, not yet renamed into place
        wrap(VLMTrainer, "save_model", after=lambda self, output_dir=None, *a, **k: str(output_dir).endswith(".final-staging") and pause())
    elif point == "mid-merge":  # the merged weights written to the staging folder, the processor not yet
        from vlm.processing import VLMProcessor

        wrap(VLMProcessor, "save_pretrained", before=lambda *a, **k: pause())
    elif point == "mid-export":  # every file of the LLaVA folder written to its staging folder, the parity check not yet run
        import importlib

        exporting = importlib.import_module("apps.export.export")  # the module: the package's `export` names the function
        wrap(exporting, "check_parity", before=lambda *a, **k: pause())
    elif point in ("mid-eval", "torn-append"):
        import eval.runner as runner

        calls = {"n": 0}
        if point == "mid-eval":  # generating batch `call` (the earlier ones are in predictions.jsonl)
            def count(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == call:
                    pause()
            wrap(runner, "_answer_batch", before=count)
        else:  # batch `call`: half its first line appended, a torn last line
            original = runner._append_predictions

            def torn(handle, records):
                calls["n"] += 1
                if calls["n"] == call:
                    first = (json.dumps(records[0], ensure_ascii=False) + "\n").encode()
                    handle.write(first[: len(first) // 2])
                    pause()
                original(handle, records)
            runner._append_predictions = torn
    else:
        raise ValueError(point)


def main() -> int:
    spec = json.loads(sys.argv[1])
    install(spec["point"], spec.get("step"), spec.get("call"))
    if "train" in spec:
        from train.config import TrainConfig
        from train.run import run_training

        run_training(TrainConfig(**spec["train"]))
        return 0
    from apps.cli import main as vlm_main

    return vlm_main(spec["argv"])


if __name__ == "__main__":
    sys.exit(main())
