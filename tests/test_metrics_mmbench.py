"""Golden tests for MMBench rotations, exact-match option extraction and circular accuracy."""

import math

import pytest

from eval.metrics.mmbench import (
    circular_rotations,
    extract_mmbench_option,
    format_mmbench_question,
    mmbench_circular_score,
    present_options,
)

OPTIONS = ["cat", "dog", "bird", "fish"]


def test_rotations_shift_options_and_track_the_answer():
    rotations = circular_rotations(OPTIONS, "B")  # the answer is "dog"
    assert [r.options for r in rotations] == [
        ("cat", "dog", "bird", "fish"),
        ("dog", "bird", "fish", "cat"),
        ("bird", "fish", "cat", "dog"),
        ("fish", "cat", "dog", "bird"),
    ]
    # "dog" is shown under B, A, D, C: original index 1, shown at (1 - k) % 4.
    assert [r.answer for r in rotations] == ["B", "A", "D", "C"]
    assert rotations[2].original_letters == ("C", "D", "A", "B")
    assert all(r.to_original(r.answer) == "B" for r in rotations)


def test_rotations_use_only_present_options():
    row = {"A": "yes", "B": "no", "C": math.nan, "D": "stray"}
    options = present_options(row)  # stops at the first missing option, as LLaVA's get_options
    assert options == ["yes", "no"]
    rotations = circular_rotations(options, "A")
    assert [(r.options, r.answer) for r in rotations] == [(("yes", "no"), "A"), (("no", "yes"), "B")]
    with pytest.raises(ValueError, match="answer 'C' is not one of"):
        circular_rotations(options, "C")


def test_format_question():
    text = format_mmbench_question("What animal is this?", ["cat", "dog"], hint="A pet.")
    assert text == (
        "<image>\nA pet.\nWhat animal is this?\nA. cat\nB. dog\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert format_mmbench_question("Q?", ["x", "y"], hint=math.nan, single_pred_prompt=False) == (
        "<image>\nQ?\nA. x\nB. y"
    )


@pytest.mark.parametrize(
    ("prediction", "letter"),
    [
        ("B", "B"),
        ("(C)", "C"),  # brackets become spaces
        ("The answer is D.", "D"),
        ("It is a dog", "B"),  # no capital letter word; the text "dog" appears once
        ("A cat", "A"),  # "A" stands as a word (the quantifier guard is off by default)
        ("cat and dog", None),  # two option texts appear
        ("A or B", None),  # two letters; no option text
        ("Cannot determine the answer", "Z"),  # a refusal
        ("Z", "Z"),
        ("an elephant", None),
    ],
)
def test_extract_option(prediction, letter):
    assert extract_mmbench_option(prediction, OPTIONS) == letter


def _question(question_id, predictions, category, l2_category, answer="B", options=OPTIONS):
    return [
        {
            "question_id": question_id,
            "prediction": prediction,
            "options": rotation.options,
            "answer": rotation.answer,
            "category": category,
            "l2_category": l2_category,
        }
        for rotation, prediction in zip(circular_rotations(options, answer), predictions, strict=True)
    ]


def test_one_wrong_rotation_makes_the_question_wrong():
    # q1: all four rotations right ("dog" is under B, A, D, C).
    # q2: right in three rotations, "cat" in the last one -> wrong.
    # q3: two options, both rotations right.
    records = (
        _question(1, ["B", "A", "D. dog", "The answer is C"], "object_localization", "FP-S")
        + _question(2, ["B", "A", "D", "cat"], "object_localization", "FP-S")
        + _question(3, ["A", "B"], "image_scene", "CP", answer="A", options=["day", "night"])
    )
    score = mmbench_circular_score(records)
    assert score.num_questions == 3
    assert score.overall == pytest.approx(200 / 3)  # 2 of 3
    assert score.per_category == pytest.approx({"image_scene": 100.0, "object_localization": 50.0})
    assert score.per_l2_category == pytest.approx({"CP": 100.0, "FP-S": 50.0})


def test_an_unparsable_rotation_makes_the_question_wrong():
    records = _question(1, ["B", "A", "D", "I am not sure"], "c", "l2")
    assert mmbench_circular_score(records).overall == 0.0


def test_missing_rotations_are_an_error():
    records = _question(7, ["B", "A", "D", "C"], "c", "l2")[:3]
    with pytest.raises(ValueError, match="question 7: 3 rotations for 4 options"):
        mmbench_circular_score(records)
