"""`vlm demo`: step reuse and refusal on fake steps, then the real --quick pipeline end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps import demo
from apps.demo import DemoError, Step, printable, run_steps

ROOT = Path(__file__).parents[1]


def _writer(path: Path, text: str) -> list[str]:
    # Alive long enough for the memory sampler (every 0.2 s) to see it.
    code = f"import pathlib, time; time.sleep(0.5); pathlib.Path({str(path)!r}).write_text({text!r})"
    return [sys.executable, "-c", code]


def _steps(tmp_path: Path, second_text: str = "b") -> list[Step]:
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    return [
        Step("first", "write a", [_writer(first, "a")], first.is_file),
        Step("second", "write b", [_writer(second, second_text)], second.is_file),
    ]


def test_steps_run_once_then_are_reused(tmp_path):
    logs: list[str] = []
    steps = _steps(tmp_path)
    run_steps(tmp_path, steps, logs.append)
    assert [s.status for s in steps] == ["ran", "ran"] and (tmp_path / "second.txt").read_text() == "b"
    assert all(s.seconds > 0 and s.peak_rss_mib > 1 for s in steps)  # a Python process holds megabytes
    state = json.loads((tmp_path / demo.STATE_FILE).read_text())
    assert state["steps"]["first"]["commands"] == [_writer(tmp_path / "first.txt", "a")]
    assert any(line.startswith("  $ python -c") for line in logs)  # the command, as a user would type it

    (tmp_path / "second.txt").write_text("kept")
    again = _steps(tmp_path)
    run_steps(tmp_path, again, logs.append)
    assert [s.status for s in again] == ["reused", "reused"] and (tmp_path / "second.txt").read_text() == "kept"
    assert again[0].seconds == round(steps[0].seconds, 1)  # the recorded figures, not zero


def test_a_finished_step_made_by_another_command_is_refused(tmp_path):
    run_steps(tmp_path, _steps(tmp_path), lambda _: None)
    with pytest.raises(DemoError, match="step second: its output .* was made by another command"):
        run_steps(tmp_path, _steps(tmp_path, second_text="c"), lambda _: None)
    assert (tmp_path / "second.txt").read_text() == "b"


def test_the_same_interpreter_under_another_name_is_the_same_command(tmp_path):
    run_steps(tmp_path, _steps(tmp_path), lambda _: None)
    state_path = tmp_path / demo.STATE_FILE
    state = json.loads(state_path.read_text())
    folder = Path(sys.executable).parent
    for name in ("python3", "python3.11"):  # how the first run was started, e.g. `python3 -m apps demo`
        state["steps"]["second"]["commands"][0][0] = str(folder / name)
        state_path.write_text(json.dumps(state))
        again = _steps(tmp_path)
        run_steps(tmp_path, again, lambda _: None)
        assert [s.status for s in again] == ["reused", "reused"]
    # another interpreter (another environment) is another command
    state["steps"]["second"]["commands"][0][0] = "/elsewhere/bin/python3"
    state_path.write_text(json.dumps(state))
    with pytest.raises(DemoError, match="made by another command"):
        run_steps(tmp_path, _steps(tmp_path), lambda _: None)


def test_a_failing_step_stops_the_run_and_is_not_recorded(tmp_path):
    steps = _steps(tmp_path)
    steps[0].commands = [[sys.executable, "-c", "raise SystemExit(3)"]]
    with pytest.raises(DemoError, match="step first failed \\(exit status 3\\)"):
        run_steps(tmp_path, steps, lambda _: None)
    assert steps[0].status == "failed" and steps[1].status == "pending" and not (tmp_path / "second.txt").exists()
    assert not (tmp_path / demo.STATE_FILE).exists()
    # A command that succeeds without making its output is a failure too.
    silent = [Step("quiet", "writes nothing", [[sys.executable, "-c", "pass"]], (tmp_path / "never").is_file)]
    with pytest.raises(DemoError, match="output is missing"):
        run_steps(tmp_path, silent, lambda _: None)


def test_printable_commands():
    python = sys.executable
    assert printable([python, "-m", "apps", "eval", "--data", "a b"]) == "vlm eval --data 'a b'"
    assert printable([python, "-m", "train.clip", "csv"]) == "python -m train.clip csv"
    assert printable(["/venv/bin/deepspeed", "--num_gpus", "2"], env={"OMP_NUM_THREADS": "1"}) == "OMP_NUM_THREADS=1 deepspeed --num_gpus 2"
    assert printable(["/venv/bin/deepspeed", "x=a b"]) == "deepspeed 'x=a b'"
    recorded = demo.runner.recorded_commands([["deepspeed", "--master_port", "29555", "--module", "train", "max_steps=4"]])
    assert recorded == [["deepspeed", "--master_port", "{port}", "--module", "train", "max_steps=4"]]


def test_the_plan_chains_each_output_into_the_next_step(tmp_path):
    steps = demo.plan(tmp_path, demo.PROFILES["full"])
    names = [s.name for s in steps]
    assert names == ["data", "clip", "stage1", "stage2", "merge", "eval", "blank", "no-image", "chat"]
    by_name = {s.name: " ".join(s.commands[-1]) for s in steps}
    assert f"vision_model=local-dir:{tmp_path / 'clip'}" in by_name["stage1"] and "llm=smollm2-135m-instruct" in by_name["stage1"]
    assert f"init_from={tmp_path / 'stage1' / 'model'}" in by_name["stage2"] and "deepspeed=zero2" in by_name["stage2"]
    assert "--num_gpus 2" in by_name["stage2"] and "sft_lora" in by_name["stage2"]
    assert f"merge {tmp_path / 'stage2'} --out {tmp_path / 'merged'}" in by_name["merge"]
    assert f"--model {tmp_path / 'merged'}" in by_name["blank"] and "--images blank" in by_name["blank"]
    assert f"--model {tmp_path / 'stage1' / 'model'}" in by_name["no-image"] and "--images none" in by_name["no-image"]
    quick = [s.name for s in demo.plan(tmp_path, demo.PROFILES["quick"])]
    assert quick[:3] == ["data", "clip", "llm"]


def test_step_counts_can_be_raised_for_a_bigger_budget(tmp_path):
    profile, nlvr = demo.choose_profiles(quick=False, recipe="shapes", stage1_steps=200, stage2_steps=640)
    assert nlvr is None and (profile.stage1_steps, profile.stage2_steps) == (200, 640)
    assert profile.stage2_batch == demo.PROFILES["full"].stage2_batch  # only the counts change
    by_name = {s.name: s.commands[-1] for s in demo.plan(tmp_path, profile)}
    assert "max_steps=200" in by_name["stage1"] and "save_steps=100" in by_name["stage1"]
    assert "max_steps=640" in by_name["stage2"] and "save_steps=213" in by_name["stage2"]
    # For the NLVR recipe, --stage2-steps is NLVR's own stage 2; the shapes stage 2 does not run there.
    profile, nlvr = demo.choose_profiles(quick=False, recipe="nlvr", stage2_steps=300)
    assert nlvr.steps == 300 and profile == demo.PROFILES["full"]
    by_name = {s.name: s.commands[-1] for s in demo.plan_nlvr(tmp_path, profile, nlvr, tmp_path / "nlvr1")}
    assert "max_steps=300" in by_name["nlvr-stage2"] and "max_steps=20" in by_name["stage1"]
    assert demo.choose_profiles(quick=True, recipe="shapes") == (demo.PROFILES["quick"], None)


def test_the_plan_follows_the_hardware(tmp_path):
    # The default (no CUDA): 2 CPU processes of 4 conversations, one thread each, the CLIP on the CPU.
    cpu = {s.name: s for s in demo.plan(tmp_path, demo.PROFILES["full"])}
    stage2 = cpu["stage2"].commands[-1]
    assert stage2[1:3] == ["--num_gpus", "2"] and "per_device_train_batch_size=4" in stage2
    assert cpu["stage2"].env == {"OMP_NUM_THREADS": "1"} and "--device" not in cpu["clip"].commands[-1]
    # One GPU: one process takes the whole step of 8, the CLIP trains on CUDA; every other command is the same.
    gpu = {s.name: s for s in demo.plan(tmp_path, demo.PROFILES["full"], hardware=demo.Hardware("cuda", 1, 16))}
    stage2 = gpu["stage2"].commands[-1]
    assert stage2[1:3] == ["--num_gpus", "1"] and "per_device_train_batch_size=8" in stage2
    assert gpu["stage2"].env == {"OMP_NUM_THREADS": "16"} and gpu["clip"].commands[-1][-2:] == ["--device", "cuda"]
    assert "1 GPU process" in gpu["stage2"].title and "2 CPU processes" in cpu["stage2"].title
    assert [n for n in cpu if cpu[n].commands != gpu[n].commands] == ["clip", "stage2"]
    # The NLVR stage 2 shares its step of 8 the same way.
    nlvr = {s.name: s.commands[-1] for s in demo.plan_nlvr(tmp_path, demo.PROFILES["full"], demo.NLVR_PROFILES["full"],
                                                          tmp_path / "nlvr1", hardware=demo.Hardware("cpu", 4, 1))}
    assert nlvr["nlvr-stage2"][1:3] == ["--num_gpus", "4"] and "per_device_train_batch_size=2" in nlvr["nlvr-stage2"]


@pytest.mark.parametrize("gpus, procs, expected", [
    (0, None, ("cpu", 2)), (1, None, ("cuda", 1)), (4, None, ("cuda", 2)), (4, 4, ("cuda", 4)), (0, 1, ("cpu", 1)),
])
def test_the_hardware_is_detected(monkeypatch, gpus, procs, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(demo.hardware, "_usable_cores", lambda: 16)
    hardware = demo.detect_hardware(procs)
    assert (hardware.device, hardware.procs, hardware.threads) == (*expected, 16 // expected[1])


def test_bad_process_counts_are_refused_before_anything_runs(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DemoError, match="--procs must be a positive number of processes, got 0"):
        demo.detect_hardware(0)
    with pytest.raises(DemoError, match="--procs 3 does not divide a stage-2 step's 8 conversations .* use one of 1, 2, 4, 8"):
        demo.plan(tmp_path, demo.PROFILES["full"], hardware=demo.detect_hardware(3))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DemoError, match="--procs 2: torch sees 1 GPU; run at most one process per GPU"):
        demo.detect_hardware(2)
    result = subprocess.run([sys.executable, "-m", "apps", "demo", "--quick", "--workdir", str(tmp_path / "run"), "--procs", "8"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1 and "--procs 8 does not divide a stage-2 step's 4 conversations" in result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_step_counts_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(DemoError, match="--stage2-steps must be a positive number of steps, got 0"):
        demo.choose_profiles(quick=False, recipe="shapes", stage2_steps=0)
    result = subprocess.run([sys.executable, "-m", "apps", "demo", "--workdir", str(tmp_path / "run"), "--stage1-steps", "-3"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1 and "--stage1-steps must be a positive number of steps, got -3" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo") / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "apps", "demo", "--quick", "--workdir", str(workdir)],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    return workdir, result, time.perf_counter() - start


def test_quick_demo_end_to_end(quick_run):
    workdir, result, seconds = quick_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((workdir / demo.SUMMARY_JSON).read_text())
    assert [s["status"] for s in summary["steps"]] == ["ran"] * 10
    assert all(s["seconds"] > 0 and s["peak_rss_mib"] > 100 for s in summary["steps"])
    questions = json.loads((workdir / "data" / "eval.json").read_text())
    references = {q["id"]: q["answer"] for q in questions}
    for folder, key in (("image", "model"), ("blank", "blank"), ("no-image", "no_image")):
        metrics = summary["accuracy"][key]
        assert metrics["total"] == len(questions) and 0 <= metrics["accuracy"] <= 100
        lines = (workdir / "eval" / folder / "predictions.jsonl").read_text().splitlines()
        predictions = [json.loads(line) for line in lines]
        assert {p["id"]: p["reference"] for p in predictions} == references
        assert all(("<image>" in p["prompt"]) == (folder != "no-image") for p in predictions)
    # The merged model is a standalone folder; stage 2 really ran 4 ZeRO-2 steps on 2 processes.
    assert (workdir / "merged" / "config.json").is_file() and (workdir / "merged" / "model.safetensors").is_file()
    metrics = [json.loads(line) for line in (workdir / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert max(m.get("step", 0) for m in metrics) == 4
    table = (workdir / demo.SUMMARY_MD).read_text()
    assert "| stage2 | ran |" in table and "| **overall** |" in table and table in result.stdout
    assert re.search(r"\$ OMP_NUM_THREADS=[0-9]+ deepspeed --num_gpus 2 ", result.stdout)  # threads: the cores shared out
    assert summary["chat"]["answer"] is not None and summary["chat"]["reference"] is not None
    print(f"quick demo: {seconds:.0f} s")


def test_quick_demo_rerun_reuses_every_step(quick_run):
    workdir, first, _ = quick_run
    assert first.returncode == 0
    again = subprocess.run([sys.executable, "-m", "apps", "demo", "--quick", "--workdir", str(workdir)],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((workdir / demo.SUMMARY_JSON).read_text())
    assert [s["status"] for s in summary["steps"]] == ["reused"] * 10
    # The other profile in the same folder is refused rather than mixed in.
    other = subprocess.run([sys.executable, "-m", "apps", "demo", "--workdir", str(workdir)],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert other.returncode == 1 and "holds a quick demo run" in other.stderr


def test_one_process_trains_the_same_steps_as_two(quick_run, tmp_path):
    # --procs 1: one DeepSpeed process takes each step's 4 conversations instead of 2 x 2; the
    # losses and gradient norms of the quick run's 4 steps come out the same. Both runs are pinned
    # to fp32 (bf16=false): under bf16 autocast (chosen by itself on AMX CPUs) a batch of 4 and two
    # of 2 round their matrix products differently (max relative difference 5.5e-4 measured on an
    # AMX Xeon), which would say nothing about the processes. fp32 only reorders the sums: rel 1e-5.
    workdir, first, _ = quick_run
    assert first.returncode == 0

    def stage2(procs: int, run: Path) -> Step:
        planned = {s.name: s for s in demo.plan(workdir, demo.PROFILES["quick"], hardware=demo.Hardware("cpu", procs, 2 // procs))}
        command = [word.replace(str(workdir / "stage2"), str(run)) for word in planned["stage2"].commands[-1]] + ["bf16=false"]
        assert command[1:3] == ["--num_gpus", str(procs)] and f"per_device_train_batch_size={4 // procs}" in command
        return Step("stage2", f"{procs} processes", [command], (run / "model").is_dir, env=planned["stage2"].env)

    for procs, name in ((1, "one"), (2, "two")):
        (tmp_path / name).mkdir()
        run_steps(tmp_path / name, [stage2(procs, tmp_path / name / "stage2")], lambda _: None)

    def logged(run: Path) -> list[float]:  # loss, gradient norm of each step
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [value for m in lines if "loss" in m for value in (m["loss"], m["grad_norm"])]

    two = logged(tmp_path / "two" / "stage2")
    assert len(two) == 8 and logged(tmp_path / "one" / "stage2") == pytest.approx(two, rel=1e-5)  # fp32
    assert len(list((tmp_path / "one" / "stage2" / "checkpoint-4").glob("rng_state*.pth"))) == 1  # one process wrote it
    assert len(list((tmp_path / "two" / "stage2" / "checkpoint-4").glob("rng_state_*.pth"))) == 2


NLVR = next(
    (p for p in (ROOT.parent / "shared" / "data" / "nlvr1", ROOT / "shared" / "data" / "nlvr1") if p.is_dir()),
    ROOT.parent / "shared" / "data" / "nlvr1",
)


def test_quick_nlvr_recipe_continues_from_the_shapes_run(quick_run):
    workdir, first, _ = quick_run
    assert first.returncode == 0
    result = subprocess.run([sys.executable, "-m", "apps", "demo", "--quick", "--recipe", "nlvr", "--workdir", str(workdir),
                             "--nlvr-data", str(NLVR)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((workdir / "nlvr-summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status == {"data": "reused", "clip": "reused", "llm": "reused", "stage1": "reused", "nlvr-data": "ran",
                      "nlvr-stage2": "ran", "nlvr-merge": "ran", "nlvr-eval": "ran", "nlvr-no-image": "ran"}
    results = summary["nlvr"]
    assert results["model"]["num_images"] == results["no_image"]["num_images"] == results["majority"]["num_images"] == 12
    # The first 12 test PNGs: the majority baseline is recomputed from their labels.
    labels = [json.loads(line)["reference"] for line in (workdir / "nlvr" / "eval" / "image" / "predictions.jsonl").read_text().splitlines()]
    majority = max(("true", "false"), key=lambda label: (labels.count(label), label == "true"))
    assert results["majority"]["label"] == majority
    assert results["majority"]["accuracy"] == pytest.approx(100 * labels.count(majority) / 12)
    # Stage 2 padded NLVR's wide images to a square, and the merged model keeps that setting.
    processor = json.loads((workdir / "nlvr" / "merged" / "processor_config.json").read_text())
    assert '"pad_to_square": true' in json.dumps(processor)
    assert "| majority class (always" in (workdir / "nlvr-summary.md").read_text()
