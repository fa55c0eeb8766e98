"""Golden tests for MME's parser, acc / acc+ / score, totals and file readers."""

import pytest

from eval.metrics.mme import (
    MMEQuestion,
    mme_score,
    mme_subtask_score,
    parse_mme_answer,
    read_mme_benchmark,
    read_mme_results_dir,
)


@pytest.mark.parametrize(
    ("prediction", "parsed"),
    [
        ("Yes, it is", "yes"),  # first 4 chars "yes," contain "yes"
        ("YES", "yes"),
        ("No", "no"),
        ("Not really", "no"),  # "not " contains "no"
        ("nope", "no"),
        ("I think yes", "other"),  # "i th" holds neither
        ("", "other"),
    ],
)
def test_parse_mme_answer(prediction, parsed):
    assert parse_mme_answer(prediction) == parsed


def _pair(subtask, image, first, second):
    # Two questions of one image; the gold answers are Yes then No, as MME pairs them.
    return [
        MMEQuestion(subtask, image, f"Is there a {image}? Please answer yes or no.", "Yes", first),
        MMEQuestion(subtask, image, f"Is there no {image}? Please answer yes or no.", "No", second),
    ]


def test_acc_plus_needs_both_questions_of_an_image():
    questions = (
        _pair("existence", "1.jpg", "Yes", "No")  # both right
        + _pair("existence", "2.jpg", "Yes", "Yes")  # one right
        + _pair("existence", "3.jpg", "No", "maybe")  # none right ("maybe" -> other)
    )
    score = mme_subtask_score(questions)
    assert score.accuracy == pytest.approx(3 / 6)  # 2 + 1 + 0 right of 6
    assert score.accuracy_plus == pytest.approx(1 / 3)  # 1 image of 3
    assert score.score == pytest.approx(50 + 100 / 3)  # 100 * 0.5 + 100 * 1/3 = 83.33
    assert (score.num_questions, score.num_images, score.num_other) == (6, 3, 1)


def test_totals_sum_subtask_scores():
    questions = (
        _pair("existence", "1.jpg", "Yes", "No")
        + _pair("existence", "2.jpg", "Yes", "Yes")  # existence: acc 3/4, acc+ 1/2 -> 125
        + _pair("count", "1.jpg", "Yes", "No")  # count: 200
        + _pair("code_reasoning", "1.png", "Yes, it prints 3", "No")  # code_reasoning: 200
    )
    score = mme_score(questions)
    assert score.subtasks["existence"].score == pytest.approx(125.0)  # 75 + 50
    assert score.perception == pytest.approx(325.0)  # 125 + 200
    assert score.cognition == pytest.approx(200.0)
    assert "OCR" in score.missing_subtasks and "existence" not in score.missing_subtasks
    assert len(score.missing_subtasks) == 11


def test_scoring_errors():
    with pytest.raises(ValueError, match="unknown MME subtask 'ocr'"):
        mme_score(_pair("ocr", "1.jpg", "Yes", "No"))
    with pytest.raises(ValueError, match=r"existence/1\.jpg: 1 questions"):
        mme_subtask_score(_pair("existence", "1.jpg", "Yes", "No")[:1])
    with pytest.raises(ValueError, match="no prediction"):
        mme_subtask_score(_pair("existence", "1.jpg", None, None))
    with pytest.raises(ValueError, match="gold answer must be yes or no"):
        mme_subtask_score([MMEQuestion("existence", "1.jpg", "q", "maybe", "yes")] * 2)


def test_read_results_dir_with_and_without_predictions(tmp_path):
    # eval_tool/Your_Results/<subtask>.txt: image, question, answer (+ prediction once answered).
    (tmp_path / "OCR.txt").write_text(
        "a.jpg\tIs the word \"cat\"? Please answer yes or no.\tYes\tYes\n"
        "a.jpg\tIs the word \"dog\"? Please answer yes or no.\tNo\tYes\n",
        encoding="utf-8",
    )
    (tmp_path / "color.txt").write_text("b.jpg\tIs it red?\tYes\r\nb.jpg\tIs it blue?\tNo\r\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    questions = read_mme_results_dir(tmp_path)
    assert [q.subtask for q in questions] == ["color", "color", "OCR", "OCR"]
    assert questions[0] == MMEQuestion("color", "b.jpg", "Is it red?", "Yes", None)
    assert questions[3].prediction == "Yes"
    ocr = mme_subtask_score([q for q in questions if q.subtask == "OCR"])
    assert (ocr.accuracy, ocr.accuracy_plus) == (0.5, 0.0)


def test_read_results_file_rejects_malformed_lines(tmp_path):
    (tmp_path / "count.txt").write_text("only\ttwo\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"count.txt:1: expected 3 or 4 tab-separated fields, got 2"):
        read_mme_results_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no MME subtask files"):
        read_mme_results_dir(tmp_path / "missing")


def test_read_released_benchmark_layouts(tmp_path):
    # Side by side (existence/000.jpg + 000.txt) and images/ + questions_answers_YN/ (artwork).
    existence = tmp_path / "existence"
    existence.mkdir()
    (existence / "000.jpg").write_bytes(b"")
    (existence / "000.txt").write_text("Is there a cat?\tYes\nIs there a dog?\tNo\n", encoding="utf-8")
    artwork = tmp_path / "artwork"
    (artwork / "images").mkdir(parents=True)
    (artwork / "questions_answers_YN").mkdir()
    (artwork / "images" / "10002.png").write_bytes(b"")
    (artwork / "questions_answers_YN" / "10002.txt").write_text("Is it by Monet?\tNo\n", encoding="utf-8")
    questions = read_mme_benchmark(tmp_path)
    assert questions == [
        MMEQuestion("existence", "000.jpg", "Is there a cat?", "Yes"),
        MMEQuestion("existence", "000.jpg", "Is there a dog?", "No"),
        MMEQuestion("artwork", "10002.png", "Is it by Monet?", "No"),
    ]
    (existence / "001.txt").write_text("Is there a cat?\tYes\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="no image named 001"):
        read_mme_benchmark(tmp_path)
