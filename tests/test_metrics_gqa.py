"""Golden tests for GQA exact-match accuracy after LLaVA's answer cleanup."""

import pytest

from eval.metrics.gqa import gqa_score, normalize_gqa_prediction


@pytest.mark.parametrize(
    ("prediction", "normalised"),
    [
        ("Yes.", "yes"),  # trailing period stripped, lowercased
        ("Traffic light...", "traffic light"),  # every trailing period goes
        ("yes. ", "yes. "),  # no whitespace strip: the period is not trailing
        ("The cat.", "the cat"),  # no article removal
        ("3.5", "3.5"),
    ],
)
def test_normalize_gqa_prediction(prediction, normalised):
    assert normalize_gqa_prediction(prediction) == normalised


def test_accuracy_over_balanced_questions():
    records = [
        {"question_id": "1", "prediction": "Yes.", "answer": "yes"},  # right
        {"question_id": "2", "prediction": "The cat", "answer": "cat"},  # wrong: exact match
        {"question_id": "3", "prediction": "left", "answer": "left"},  # right
        {"question_id": "4", "prediction": "no", "answer": "no", "is_balanced": False},  # not counted
    ]
    score = gqa_score(records)
    assert (score.num_questions, score.num_correct) == (3, 2)
    assert score.accuracy == pytest.approx(200 / 3)


def test_errors():
    with pytest.raises(ValueError, match="question '1' appears twice"):
        gqa_score([{"question_id": "1", "prediction": "a", "answer": "a"}] * 2)
    with pytest.raises(ValueError, match="no balanced GQA records"):
        gqa_score([{"question_id": "1", "prediction": "a", "answer": "a", "is_balanced": False}])
