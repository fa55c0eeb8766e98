"""Golden tests for VQA accuracy (VQAv2 official script and TextVQA/m4c), values worked by hand."""

import pytest

from eval.metrics.vqa import normalize_m4c_answer, normalize_vqa_answer, vqa_accuracy, vqa_score


def test_identical_answers_are_not_normalised_in_vqav2_mode():
    # Ten identical "yes": len(set(gt)) == 1, so vqaEval.py compares raw strings; "Yes" != "yes",
    # k = 0 matches -> 0. m4c lowercases everything: k = 10 -> 1.
    answers = ["yes"] * 10
    assert vqa_accuracy("Yes", answers, "vqav2") == 0.0
    assert vqa_accuracy("Yes", answers, "m4c") == 1.0
    records = [{"question_id": 1, "prediction": "Yes", "answers": answers}]
    assert vqa_score(records, "vqav2").overall == 0.0
    assert vqa_score(records, "m4c").overall == 100.0


def test_whitespace_is_always_cleaned():
    # Newlines/tabs -> spaces and strip happen before the identical-answers test: "\tyes\n" == "yes".
    assert vqa_accuracy("\tyes\n", ["yes"] * 10, "vqav2") == 1.0


def test_disagreeing_answers_normalise_both_sides():
    # 9 "yes" + 1 "Yes": two distinct strings, so both sides are normalised (lowercased) and
    # "YES" matches all 10 -> 1.
    assert vqa_accuracy("YES", ["yes"] * 9 + ["Yes"], "vqav2") == 1.0


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # k matching humans: (k * min(1, (k-1)/3) + (10-k) * min(1, k/3)) / 10
        (0, 0.0),
        (1, 0.3),  # (1*0 + 9*(1/3)) / 10 = 3/10
        (2, 0.6),  # (2*(1/3) + 8*(2/3)) / 10 = (2/3 + 16/3) / 10 = 6/10
        (3, 0.9),  # (3*(2/3) + 7*1) / 10 = (2 + 7) / 10
        (4, 1.0),  # (4*1 + 6*1) / 10
    ],
)
def test_leave_one_out_average(matches, expected):
    others = ["red", "blue", "green", "pink", "gray", "teal", "gold", "navy", "plum", "rose"]
    answers = ["2"] * matches + others[: 10 - matches]
    # "two" becomes "2" through manualMap (the answers disagree, so normalisation is on).
    assert vqa_accuracy("two", answers, "vqav2") == pytest.approx(expected)
    assert vqa_accuracy("two", answers, "m4c") == pytest.approx(expected)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("3,000", "3000"),  # digit,digit -> every punctuation mark deleted
        ("1,2", "12"),
        ("don't", "don't"),  # "'" is not in the punctuation list
        ("dont", "don't"),  # contractions map
        ("yes!", "yes"),  # "!" not next to a space -> replaced by a space, then split/join
        ("black/white", "black white"),
        ("t-shirt", "t shirt"),
        ("hello, world", "hello world"),  # ", " touches a space -> deleted
        ("The Dog.", "dog"),  # period strip, lowercase, article dropped
        ("an apple", "apple"),
        ("3.5", "3.5"),  # period followed by a digit is kept
        ("5.", "5"),
        ("none", "0"),  # manualMap maps "none" to 0 (GT-Vision-Lab/VQA issue #7)
        ("Two Dogs", "2 dogs"),
        ("10:30", "10:30"),  # ":" is not in the punctuation list
    ],
)
def test_vqav2_normalisation(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


def test_period_strip_removes_at_most_32_periods():
    # The official call periodStrip.sub("", text, re.UNICODE) passes re.UNICODE == 32 as `count`.
    assert normalize_vqa_answer("." * 40) == "." * 8


def test_m4c_normalisation():
    # word_tokenize: lowercase, drop "," and "?", split "'s".
    assert normalize_m4c_answer("The Man's Hat?") == "man 's hat"
    assert normalize_m4c_answer("3,000") == "3000"
    assert normalize_m4c_answer(" Coca-Cola ") == "coca cola"


def test_m4c_normalises_the_human_answers_too():
    # Answers "Stop" x3 and 7 others; prediction "STOP." -> "stop" matches 3 processed answers -> 0.9.
    answers = ["Stop", "Stop", "Stop", "go", "go", "go", "go", "yield", "yield", "exit"]
    assert vqa_accuracy("STOP.", answers, "m4c") == pytest.approx(0.9)


def test_aggregate_overall_and_per_answer_type():
    records = [
        {"question_id": 1, "prediction": "yes", "answers": ["yes"] * 10, "answer_type": "yes/no"},
        {
            "question_id": 2,
            "prediction": "three",
            "answers": ["3", "3", "3", "4", "4", "4", "4", "5", "5", "6"],
            "answer_type": "number",
        },
        {"question_id": 3, "prediction": "cat", "answers": ["dog"] * 10, "answer_type": "other"},
        {"question_id": 4, "prediction": "cat", "answers": ["cat"] * 10},
    ]
    # Per question: 1.0, 0.9 (k = 3), 0.0, 1.0 -> overall 100 * 2.9 / 4 = 72.5.
    score = vqa_score(records)
    assert score.overall == pytest.approx(72.5)
    assert score.per_answer_type == pytest.approx({"yes/no": 100.0, "number": 90.0, "other": 0.0})
    assert score.num_questions == 4


def test_errors_name_the_question():
    with pytest.raises(ValueError, match=r"question 'q7'.*expected 10 human answers, got 9"):
        vqa_score([{"question_id": "q7", "prediction": "yes", "answers": ["yes"] * 9}])
    record = {"question_id": 5, "prediction": "yes", "answers": ["yes"] * 10}
    with pytest.raises(ValueError, match="question 5 appears twice"):
        vqa_score([record, record])
    with pytest.raises(ValueError, match="unknown VQA mode"):
        vqa_accuracy("yes", ["yes"] * 10, "vqa")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no VQA records"):
        vqa_score([])
