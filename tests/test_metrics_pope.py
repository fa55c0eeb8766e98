"""Golden tests for POPE's answer parser and metrics, values worked by hand."""

import pytest

from eval.metrics.pope import parse_pope_answer, pope_metrics, pope_score


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("Yes, there is a dog.", "yes"),  # first sentence "Yes there is a dog": no negation word
        ("No.", "no"),
        ("No, there is not.", "no"),
        ("There is no dog in the image.", "no"),
        ("not sure", "no"),
        # The official test is case sensitive: only "No", "not" and "no" count, so a capitalised
        # "Not" or an upper-case "NO" parse as yes.
        ("Not sure.", "yes"),
        ("NO", "yes"),
        ("Yes. There is no cat.", "yes"),  # only the text before the first "." is read
        ("The answer is no. Yes.", "no"),
        ("no,", "no"),  # commas are removed before splitting
        ("No\nthere is none", "yes"),  # split(" ") keeps "No\nthere" as one word
    ],
)
def test_parse_pope_answer(text, parsed):
    assert parse_pope_answer(text) == parsed


def test_confusion_matrix_metrics():
    # TP = 4 (yes/yes), FP = 1 (yes/no), TN = 3 (no/no), FN = 2 (no/yes); 10 questions.
    predictions = ["Yes"] * 4 + ["Yes"] + ["No"] * 3 + ["No"] * 2
    labels = ["yes"] * 4 + ["no"] + ["no"] * 3 + ["yes"] * 2
    metrics = pope_metrics(predictions, labels)
    assert (metrics.true_positives, metrics.false_positives) == (4, 1)
    assert (metrics.true_negatives, metrics.false_negatives) == (3, 2)
    assert metrics.accuracy == pytest.approx(70.0)  # (4 + 3) / 10
    assert metrics.precision == pytest.approx(80.0)  # 4 / (4 + 1)
    assert metrics.recall == pytest.approx(200 / 3)  # 4 / (4 + 2) = 66.67%
    # F1 = 2PR / (P + R) = 2 * (4/5) * (2/3) / (4/5 + 2/3) = (16/15) / (22/15) = 8/11
    assert metrics.f1 == pytest.approx(800 / 11)
    assert metrics.yes_ratio == pytest.approx(50.0)  # (4 + 1) / 10


def test_scores_each_split_separately():
    records = [
        {"prediction": "No", "label": "no", "split": "adversarial"},
        {"prediction": "Yes", "label": "no", "split": "adversarial"},
        {"prediction": "Yes", "label": "yes", "split": "random"},
        {"prediction": "No", "label": "no", "split": "random"},
    ]
    scores = pope_score(records)
    assert list(scores) == ["random", "adversarial"]  # canonical order, not input order
    assert scores["random"].accuracy == pytest.approx(100.0)
    # adversarial: TP 0, FP 1, TN 1, FN 0 -> accuracy 50, precision 0, yes ratio 50.
    assert scores["adversarial"].accuracy == pytest.approx(50.0)
    assert scores["adversarial"].precision == 0.0
    assert scores["adversarial"].yes_ratio == pytest.approx(50.0)


def test_all_no_predictions_give_zero_precision_instead_of_crashing():
    metrics = pope_metrics(["No", "No"], ["yes", "no"])
    assert (metrics.precision, metrics.recall, metrics.f1) == (0.0, 0.0, 0.0)


def test_errors():
    with pytest.raises(ValueError, match="label must be 'yes' or 'no'"):
        pope_metrics(["Yes"], ["maybe"])
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        pope_metrics(["Yes", "No"], ["yes"])
