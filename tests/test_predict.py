"""`vlm predict`: batched answers equal one-at-a-time answers, a killed run resumes, bad lines are skipped."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import vlm.predict
from tiny import build_tiny_vlm, make_image
from vlm.chat import answer_once, load_for_chat
from vlm.predict import answered_ids, generate_answers, predict_file

REPO = Path(__file__).parents[1]
MAX_NEW_TOKENS = 6

QUESTIONS = [
    {"id": "q1", "image": "imgs/a.png", "question": "what colour is the circle"},
    {"id": "q2", "question": "yes or no"},
    {"id": 3, "image": ["imgs/a.png", "imgs/b.png"], "question": "how many shapes are there"},
    {"id": "q4", "image": ["imgs/b.png", "imgs/a.png"], "question": "is <image> brighter than <image>?"},
    {"id": "q5", "image": "imgs/b.png", "question": "describe the picture", "source": "kept in the output"},
    {"id": "q6", "image": "imgs/c.png", "question": "describe the picture"},
    {"id": "q7", "question": "what is at the top left"},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory, qwen2_dir) -> Path:
    """One saved tiny VLM (Qwen2-style: its answers depend on the prompt) and a question file with its images."""
    root = tmp_path_factory.mktemp("predict")
    model, processor = build_tiny_vlm(qwen2_dir)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    (root / "imgs").mkdir()
    for seed, name in enumerate("abc"):
        make_image(seed).save(root / "imgs" / f"{name}.png")
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return root


@pytest.fixture(scope="module")
def loaded(data):
    # fp32 whatever the CPU: batched and one-at-a-time answers are compared token for token, which
    # bf16 rounding (the default on AMX CPUs) does not promise across batch shapes.
    return load_for_chat(data / "model", dtype="float32")


def _predict(loaded, data, output: Path, **kwargs) -> vlm.predict.PredictReport:
    kwargs = {"batch_size": 3, "max_new_tokens": MAX_NEW_TOKENS, "progress": False, "log": io.StringIO(), **kwargs}
    return predict_file(*loaded, data / "questions.jsonl", output, **kwargs)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batched_answers_equal_one_by_one_answers(loaded, data):
    model, processor = loaded
    names = [[q["image"]] if isinstance(q.get("image"), str) else q.get("image", []) for q in QUESTIONS]
    requests = [([data / name for name in group], q["question"]) for group, q in zip(names, QUESTIONS)]
    batches = list(generate_answers(model, processor, requests, batch_size=3, max_new_tokens=MAX_NEW_TOKENS))
    assert [len(batch) for batch in batches] == [3, 3, 1]
    alone = [answer_once(model, processor, question, images, max_new_tokens=MAX_NEW_TOKENS)
             for images, question in requests]
    assert [answer for batch in batches for answer in batch] == alone
    assert len(set(alone)) > 3, "the answers should depend on the questions, or this test proves little"


def test_a_killed_run_resumes_without_duplicates(loaded, data, tmp_path, monkeypatch):
    reference = tmp_path / "reference.jsonl"
    assert _predict(loaded, data, reference).answered == len(QUESTIONS)
    expected = _lines(reference)
    assert [r["id"] for r in expected] == [q["id"] for q in QUESTIONS]
    assert all(record.items() >= question.items() for record, question in zip(expected, QUESTIONS))  # input + answer
    assert expected[4]["source"] == "kept in the output"

    # killed after the first batch was written, while the second batch was being written
    output = tmp_path / "answers.jsonl"
    real_generate_answers = vlm.predict.generate_answers

    def killed_after_one_batch(*args, **kwargs):
        batches = real_generate_answers(*args, **kwargs)
        yield next(batches)
        raise KeyboardInterrupt

    monkeypatch.setattr(vlm.predict, "generate_answers", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        _predict(loaded, data, output)
    monkeypatch.undo()
    assert _lines(output) == expected[:3]
    torn = json.dumps(expected[3])
    with open(output, "a") as handle:
        handle.write(torn[: len(torn) // 2])

    log = io.StringIO()
    report = _predict(loaded, data, output, log=log)
    assert (report.answered, report.already_answered, report.skipped) == (4, 3, 0)
    assert "answers.jsonl line 4: cut off by an interrupted run" in log.getvalue()
    assert _lines(output) == expected  # every id exactly once, the same answers
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file left behind"

    again = _predict(loaded, data, output)
    assert (again.answered, again.already_answered) == (0, len(QUESTIONS))
    assert _lines(output) == expected


def test_a_damaged_line_before_the_last_is_an_error(tmp_path):
    output = tmp_path / "answers.jsonl"
    output.write_text('{"id": 1, "answer": "a"}\n{"id": 2, "ans\n{"id": 3, "answer": "c"}\n')
    with pytest.raises(ValueError, match="answers.jsonl line 2: not an answer record"):
        answered_ids(output)
    output.write_text('{"id": 1, "answer": "a"}\n{"id": 2, "answer": "b"}\n')
    assert answered_ids(output) == {1, 2}


def test_bad_lines_are_reported_with_their_numbers_and_counted(loaded, data, tmp_path):
    (data / "imgs" / "notes.png").write_text("not an image")
    lines = [
        json.dumps({"id": "ok1", "image": "imgs/a.png", "question": "describe the picture"}),  # 1
        "{not json",  # 2
        json.dumps({"question": "no id"}),  # 3
        json.dumps({"id": "no-question"}),  # 4
        json.dumps({"id": "ok2", "question": "yes or no"}),  # 5
        json.dumps({"id": "ok1", "question": "again"}),  # 6
        json.dumps({"id": "gone", "image": "imgs/missing.png", "question": "?"}),  # 7
        json.dumps({"id": "garbled", "image": "imgs/notes.png", "question": "?"}),  # 8
        json.dumps({"id": "long", "question": " ".join(["yes"] * 1100)}),  # 9: ~2200 tokens, context 2048
        "",  # 10: blank lines are ignored
        "[1, 2]",  # 11
        json.dumps({"id": "marks", "image": "imgs/a.png", "question": "<image> vs <image>"}),  # 12
        json.dumps({"id": "ok3", "image": ["imgs/a.png", "imgs/b.png"], "question": "compare"}),  # 13
    ]
    questions = data / "bad.jsonl"
    questions.write_text("\n".join(lines) + "\n")
    log = io.StringIO()
    output = tmp_path / "answers.jsonl"
    report = predict_file(
        *loaded, questions, output, batch_size=2, max_new_tokens=MAX_NEW_TOKENS, progress=False, log=log
    )
    assert (report.answered, report.skipped) == (3, 9)
    assert [r["id"] for r in _lines(output)] == ["ok1", "ok2", "ok3"]
    messages = log.getvalue()
    for number, problem in [
        (2, "invalid JSON"), (3, "no 'id'"), (4, "no 'question'"), (6, "duplicate id 'ok1' (first on line 1)"),
        (7, "no such image file"), (8, "not a readable image"), (9, "context is 2048 tokens"),
        (11, "expected a JSON object"), (12, "2 <image> marks but 1 image"),
    ]:
        assert f"bad.jsonl line {number}: " in messages and problem in messages, (number, problem)
    assert "skipped 9 bad lines" in str(report)


def test_the_command_line(loaded, data, tmp_path):
    """One subprocess: --image-root, a bad line, the summary, the progress bar, nothing on stdout."""
    questions = tmp_path / "questions.jsonl"
    records = [{"id": "x", "image": "a.png", "question": "describe the picture"}, {"id": "y", "question": "yes or no"},
               {"id": "x", "question": "a duplicate"}, {"id": "z", "image": ["b.png", "c.png"], "question": "compare"}]
    questions.write_text("".join(json.dumps(r) + "\n" for r in records))
    output = tmp_path / "out" / "answers.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "apps", "predict", "--model", str(data / "model"), "--input", str(questions),
         "--output", str(output), "--image-root", str(data / "imgs"), "--batch-size", "2",
         "--max-new-tokens", str(MAX_NEW_TOKENS), "--dtype", "float32"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "questions.jsonl line 3: duplicate id 'x' (first on line 1); skipped" in result.stderr
    assert "answering" in result.stderr  # the tqdm bar
    assert "answered 3 questions, 0 already answered, skipped 1 bad line" in result.stderr
    model, processor = loaded
    imgs = data / "imgs"
    expected = [
        answer_once(model, processor, "describe the picture", [imgs / "a.png"], max_new_tokens=MAX_NEW_TOKENS),
        answer_once(model, processor, "yes or no", max_new_tokens=MAX_NEW_TOKENS),
        answer_once(model, processor, "compare", [imgs / "b.png", imgs / "c.png"], max_new_tokens=MAX_NEW_TOKENS),
    ]
    assert _lines(output) == [{**r, "answer": a} for r, a in zip([records[0], records[1], records[3]], expected)]
