"""Faults: kill -9 at chosen points (mid-step, mid-save, mid-final-save, mid-merge, mid-export, mid-eval), a finished run
resumed, two evals into one folder, full and read-only disks.

Kills land where the child says it is (``pause_child.py`` prints PAUSED there), never after a sleep.
The reference is the same run uninterrupted: CPU fp32 training is deterministic, so a resumed run
must end with bit-identical weights (``bf16=False`` pins fp32 on AMX machines too).
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from apps.cli import main as vlm_main
from eval.runner import read_predictions, run_eval
from eval.shapes import write_shapes_dataset
from train.config import TrainConfig
from train.run import run_training
from vlm.atomic import OutputBusyError, OutputWriteError, atomic_directory, mount_point, remove_stale_staging

TESTS = Path(__file__).parent
STEPS = 4


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(out, 8, seed=0, n_eval=3)
    return out


def train_fields(output_dir: Path, shapes: Path, llama_dir: Path, vision_json: str, **overrides) -> dict:
    fields = dict(
        stage="pretrain", llm=str(llama_dir), vision_config=vision_json, vision_pretrained=None,
        data=[str(shapes / "captions.json")], image_root=str(shapes), max_length=512, per_device_train_batch_size=2,
        max_steps=STEPS, save_steps=2, logging_steps=1, learning_rate=1e-2, warmup_ratio=0.0, lr_scheduler_type="constant",
        output_dir=str(output_dir), seed=0, bf16=False, save_total_limit=None,
    )
    return {**fields, **overrides}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shapes, llama_dir, vision_json) -> Path:
    """The uninterrupted run: the weights and the metrics every killed-and-resumed run must end with."""
    run = tmp_path_factory.mktemp("reference") / "run"
    run_training(TrainConfig(**train_fields(run, shapes, llama_dir, vision_json)))
    return run


def run_until_paused(spec: dict, log: Path, timeout: float = 600) -> subprocess.Popen:
    """Start pause_child.py with ``spec`` and return once it says PAUSED (it is then still running)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as err:
        child = subprocess.Popen([sys.executable, str(TESTS / "pause_child.py"), json.dumps(spec)], stdout=subprocess.PIPE,
                                 stderr=err, text=True, env=env, cwd=TESTS.parent)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], 1.0)
        if not ready:
            continue
        line = child.stdout.readline()
        if line.strip() == "PAUSED":
            return child
        if line == "" and child.poll() is not None:
            break
    child.kill()
    raise AssertionError(f"the child never reached its pause (exit {child.poll()}): {log.read_text()[-3000:]}")


def kill9(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL


def logged(run: Path, key: str) -> list:
    """``key`` of every training-step entry of metrics.jsonl."""
    return [e[key] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in e]


def logged_steps(run: Path) -> list[int]:
    return logged(run, "step")


def assert_same_weights(run: Path, reference: Path) -> None:
    mine, theirs = load_file(run / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(mine[key], theirs[key]), key


# ------------------------------------------------------------------------------ kill -9 in training


@pytest.mark.parametrize("point, step, resumes_from", [("mid-step", 3, 2), ("mid-save", 4, 2)])
def test_killed_training_resumes_to_the_same_weights_and_log(point, step, resumes_from, tmp_path, shapes, llama_dir,
                                                             vision_json, reference, capsys):
    run = tmp_path / "run"
    fields = train_fields(run, shapes, llama_dir, vision_json)
    kill9(run_until_paused({"point": point, "step": step, "train": fields}, tmp_path / "child.log"))
    assert sorted(p.name for p in run.glob("checkpoint-*")) == [f"checkpoint-{n}" for n in range(2, resumes_from + 1, 2)]
    if point == "mid-save":
        assert (run / ".staging" / f"checkpoint-{step}").is_dir()  # the half-written checkpoint, hidden
    assert logged_steps(run) == list(range(1, step + 1))

    run_training(TrainConfig(**{**fields, "resume": True}))
    err = capsys.readouterr().err
    assert f"resuming from {run / f'checkpoint-{resumes_from}'}" in err
    assert_same_weights(run, reference)
    assert logged_steps(run) == list(range(1, STEPS + 1))  # each step once: the re-trained ones replace theirs
    assert logged(run, "loss") == logged(reference, "loss")
    assert not (run / ".staging").exists()
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_resuming_a_run_killed_in_its_final_save_trains_nothing(tmp_path, shapes, llama_dir, vision_json, reference, capsys):
    run = tmp_path / "run"
    fields = train_fields(run, shapes, llama_dir, vision_json)
    kill9(run_until_paused({"point": "final-save", "train": fields}, tmp_path / "child.log"))
    assert (run / f"checkpoint-{STEPS}").is_dir() and not (run / "model").exists()

    final = run_training(TrainConfig(**{**fields, "resume": True}))
    err = capsys.readouterr().err
    assert final == run / "model"
    assert f"already trained to step {STEPS} (max_steps={STEPS}); nothing to train" in err and "was written from" in err
    assert not (run / f"checkpoint-{STEPS + 1}").exists() and not (run / ".final-staging").exists()
    assert_same_weights(run, reference)
    assert logged_steps(run) == list(range(1, STEPS + 1))

    before = (run / "model" / "model.safetensors").stat().st_mtime_ns
    run_training(TrainConfig(**{**fields, "resume": True}))  # again: a no-op that says so
    assert "nothing to train" in capsys.readouterr().err
    assert (run / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_resuming_a_finished_run_with_a_stale_final_model_replaces_it(tmp_path, reference, shapes, llama_dir, vision_json, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.copy2(reference / "checkpoint-2" / "model.safetensors", run / "model" / "model.safetensors")  # an older final
    run_training(TrainConfig(**train_fields(run, shapes, llama_dir, vision_json, resume=True)))
    assert "was written from checkpoint-4" in capsys.readouterr().err
    assert_same_weights(run, reference)
    assert not (run / "checkpoint-5").exists()


# ----------------------------------------------------------------------------------- kill -9 in merge


def test_killed_merge_leaves_nothing_visible_and_the_rerun_cleans_its_staging(tmp_path, reference):
    out = tmp_path / "merged"
    kill9(run_until_paused({"point": "mid-merge", "argv": ["merge", str(reference / "model"), "--out", str(out)]},
                           tmp_path / "child.log"))
    stale = list(tmp_path.glob(".merged.tmp-*"))
    assert not out.exists() and len(stale) == 1 and (stale[0] / "model.safetensors").is_file()

    assert vlm_main(["merge", str(reference / "model"), "--out", str(out)]) == 0
    assert not list(tmp_path.glob(".merged.*"))
    assert torch.equal(load_file(out / "model.safetensors")["projector.weight"],
                       load_file(reference / "model" / "model.safetensors")["projector.weight"])


def test_killed_export_leaves_no_folder_that_looks_complete_and_the_rerun_finishes(tmp_path, llama_dir):
    """Killed with every file of the LLaVA folder written but not yet checked against our model: nothing at --out."""
    from tiny import build_tiny_vlm

    model, processor = build_tiny_vlm(llama_dir)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    out = tmp_path / "llava"
    argv = ["export", str(tmp_path / "model"), "--to", "llava", "--out", str(out)]
    kill9(run_until_paused({"point": "mid-export", "argv": argv}, tmp_path / "child.log"))
    stale = list(tmp_path.glob(".llava.tmp-*"))
    assert not out.exists() and len(stale) == 1 and (stale[0] / "config.json").is_file()  # written, hidden, unchecked

    assert vlm_main(argv) == 0
    assert not list(tmp_path.glob(".llava.*"))
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))


def test_staging_of_a_live_process_or_not_ours_is_never_removed(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:  # our own staging, alive: a concurrent write
        assert remove_stale_staging(target) == [] and staging.is_dir()
        (tmp_path / ".out.tmp-abc").mkdir()  # a name we do not make
        (tmp_path / ".out.tmp-otherhost-1-x").mkdir()  # another host's
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        ours_dead = tmp_path / staging.name.replace(f"-{os.getpid()}-", f"-{int(dead.stdout)}-")
        ours_dead.mkdir()
        assert remove_stale_staging(target) == [ours_dead]
    assert target.is_dir() and (tmp_path / ".out.tmp-abc").is_dir() and (tmp_path / ".out.tmp-otherhost-1-x").is_dir()


# ------------------------------------------------------------------------------------ kill -9 in eval


@pytest.fixture(scope="module")
def eval_reference(reference, shapes, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("eval-reference")
    run_eval(reference / "model", "shapes", shapes / "eval.json", out, batch_size=2, max_new_tokens=4, progress=False)
    return {k: r["answer"] for k, r in read_predictions(out / "predictions.jsonl").items()}


@pytest.mark.parametrize("point", ["mid-eval", "torn-append"])
def test_killed_eval_resumes_with_nothing_lost_or_twice_and_a_second_eval_is_refused(point, tmp_path, reference, shapes,
                                                                                    eval_reference):
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(reference / "model"), "--benchmark", "shapes", "--data", str(shapes / "eval.json"),
            "--output", str(out), "--batch-size", "2", "--max-new-tokens", "4"]
    child = run_until_paused({"point": point, "call": 2, "argv": argv}, tmp_path / "child.log")
    try:
        with pytest.raises(OutputBusyError, match=rf"{out} is being written by another vlm eval"):
            run_eval(reference / "model", "shapes", shapes / "eval.json", out, batch_size=2, max_new_tokens=4, progress=False)
    finally:
        kill9(child)
    raw = (out / "predictions.jsonl").read_bytes()
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n") == (point == "mid-eval")  # batch 1 (+ half a line of batch 2)

    result = run_eval(reference / "model", "shapes", shapes / "eval.json", out, batch_size=2, max_new_tokens=4, progress=False)
    assert result.num_generated == len(eval_reference) - 2
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(eval_reference)  # each once
    assert {k: r["answer"] for k, r in read_predictions(out / "predictions.jsonl").items()} == eval_reference


# ------------------------------------------------------------------------------- full and read-only disks


def full_disk_safetensors(monkeypatch) -> None:
    """transformers' safetensors writer fails as safetensors does on a full disk (its message, seen on a real tmpfs)."""
    import transformers.modeling_utils as modeling_utils
    from safetensors import SafetensorError

    def no_space(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    writer = next(n for n in ("safe_save_file", "save_file") if hasattr(modeling_utils, n))
    monkeypatch.setattr(modeling_utils, writer, no_space)


def test_merge_onto_a_full_disk_says_so_and_leaves_nothing(tmp_path, reference, monkeypatch, capsys):
    full_disk_safetensors(monkeypatch)
    out = tmp_path / "merged"
    assert vlm_main(["merge", str(reference / "model"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"vlm merge: error: no space left on {mount_point(tmp_path)} writing {out}; free some space and run again"
    assert not out.exists() and not list(tmp_path.glob(".merged.*"))


def test_training_onto_a_full_disk_says_so_and_leaves_no_partial_checkpoint(tmp_path, shapes, llama_dir, vision_json,
                                                                            monkeypatch):
    full_disk_safetensors(monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(OutputWriteError, match=rf"^no space left on {mount_point(tmp_path)} writing {run / 'checkpoint-2'}"):
        run_training(TrainConfig(**train_fields(run, shapes, llama_dir, vision_json)))
    assert not list(run.glob("checkpoint-*")) and not list((run / ".staging").glob("*"))


def test_eval_onto_a_full_disk_says_so_and_keeps_whole_lines(tmp_path, reference, shapes, monkeypatch):
    import eval.runner as runner

    out = tmp_path / "eval"
    real_open = open

    def full_predictions(path, mode="r", *args, **kwargs):  # appends to predictions.jsonl hit a full disk
        return real_open("/dev/full", mode, *args, **kwargs) if Path(path).name == "predictions.jsonl" and "a" in mode else \
            real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(runner, "open", full_predictions, raising=False)
    with pytest.raises(OutputWriteError, match=rf"^no space left on {mount_point(tmp_path)} writing {out / 'predictions.jsonl'}"):
        run_eval(reference / "model", "shapes", shapes / "eval.json", out, batch_size=2, max_new_tokens=4, progress=False)
    assert not (out / "predictions.jsonl").exists() or (out / "predictions.jsonl").read_bytes() == b""


def test_append_cut_back_to_whole_lines_when_the_disk_fills(tmp_path, monkeypatch):
    from eval.runner import _append_predictions

    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": "1", "answer": "a"}\n')
    with open(path, "ab", buffering=0) as handle:
        real_write = handle.write
        calls = []

        class Half:  # the first write lands half, the second finds the disk full
            def write(self, data):
                calls.append(len(data))
                if len(calls) == 1:
                    return real_write(bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, "No space left on device")

            def fileno(self):
                return handle.fileno()

        with pytest.raises(OSError):
            _append_predictions(Half(), [{"id": "2", "answer": "b"}, {"id": "3", "answer": "c"}])
    assert path.read_bytes() == b'{"id": "1", "answer": "a"}\n'


def unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not unshare_available(), reason="needs unprivileged mount namespaces (unshare -rm) for a real tmpfs")


def in_small_tmpfs(mount: Path, size: str, command: str, read_only: bool = False) -> subprocess.CompletedProcess:
    """Run the shell ``command`` with a real ``size`` tmpfs at ``mount`` (read-only if asked), in a private mount namespace;
    afterwards ``===`` and ``ls -A`` of the mount are printed, and the command's exit status kept."""
    mount.mkdir()
    remount = f" && mount -o remount,ro {mount}" if read_only else ""
    script = f"mount -t tmpfs -o size={size} tmpfs {mount}{remount} && {{ {command}; rc=$?; echo ===; ls -A {mount}; exit $rc; }}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env,
                          cwd=TESTS.parent, timeout=600)


@needs_mounts
@pytest.mark.parametrize("read_only", [False, True])
def test_merge_on_a_real_full_or_read_only_tmpfs(read_only, tmp_path, reference):
    mount = tmp_path / "small"
    out = mount / "merged"
    result = in_small_tmpfs(mount, "128k", f"{sys.executable} -m apps merge {reference / 'model'} --out {out}", read_only)
    assert result.returncode == 2, result.stderr[-3000:]
    expected = f"{mount} is read-only" if read_only else f"no space left on {mount} writing {out}"
    assert result.stderr.strip().splitlines()[-1].startswith(f"vlm merge: error: {expected}"), result.stderr[-500:]
    assert result.stdout.split("===")[-1].split() == []  # nothing left on the tmpfs: no output, no staging folder


@needs_mounts
def test_eval_on_a_real_full_tmpfs(tmp_path, reference, shapes):
    mount = tmp_path / "small"
    out = mount / "eval"
    command = (f"{sys.executable} -m apps eval --model {reference / 'model'} --benchmark shapes --data {shapes / 'eval.json'} "
               f"--output {out} --max-new-tokens 4 --batch-size 1")
    result = in_small_tmpfs(mount, "4k", f"{command}; rc=$?; cat {out / 'predictions.jsonl'}; echo ---; (exit $rc)")
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"vlm eval: error: no space left on {mount} writing " in result.stderr.strip().splitlines()[-1]
    lines = [line for line in result.stdout.split("---")[0].splitlines() if line.startswith("{")]  # the predictions
    assert lines and all(json.loads(line)["id"] for line in lines)  # whole lines only
