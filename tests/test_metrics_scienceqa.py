"""Golden tests for LLaVA's ScienceQA prompt, answer extraction and accuracy."""

import pytest

from eval.metrics.scienceqa import build_scienceqa_prompt, parse_scienceqa_answer, scienceqa_score


def test_prompt_with_image_and_context():
    prompt = build_scienceqa_prompt(
        "Which property do these three objects have in common?",
        ["shiny", "slippery", "opaque"],
        hint="Select the best answer.",
        has_image=True,
    )
    assert prompt == (
        "<image>\n"
        "Context: Select the best answer.\n"
        "Which property do these three objects have in common?\n"
        "A. shiny\nB. slippery\nC. opaque\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_prompt_without_image_or_context():
    prompt = build_scienceqa_prompt("Select the reptile.", ["toad", "alligator"], single_pred_prompt=False)
    assert prompt == "Select the reptile.\nA. toad\nB. alligator"
    with pytest.raises(ValueError, match="2 to 5 choices, got 6"):
        build_scienceqa_prompt("q", list("abcdef"))


@pytest.mark.parametrize(
    ("prediction", "letter"),
    [
        ("B", "B"),  # exactly a letter
        ("B. glass", "B"),  # "X. " prefix
        ("Because of heat. The answer is C.", "C"),  # one "The answer is X." match
        ("The answer is B, because it floats.", "B"),  # the regex "." matches any character
        ("The answer is A. No wait, the answer is B. The answer is B.", None),  # two matches
        ("The answer is A", None),  # nothing after the letter for the regex "." to match
        ("E", None),  # a letter beyond the 3 choices (the official script guesses randomly)
        ("The answer is Z.", None),
        (" A", None),  # no stripping
        ("a", None),
        ("A.", None),  # neither a bare letter nor "A. "
        ("", None),
    ],
)
def test_parse_scienceqa_answer(prediction, letter):
    assert parse_scienceqa_answer(prediction, num_choices=3) == letter


def test_accuracy_overall_and_on_image_questions():
    records = [
        # image, right
        {"question_id": "1", "prediction": "A", "choices": ["x", "y"], "answer": 0, "has_image": True},
        # image, two "The answer is" matches -> failed, wrong
        {
            "question_id": "2",
            "prediction": "The answer is A. The answer is B.",
            "choices": ["x", "y"],
            "answer": 1,
            "has_image": True,
        },
        # text only, right
        {"question_id": "3", "prediction": "C. z", "choices": ["x", "y", "z"], "answer": 2, "has_image": False},
        # text only, a valid but wrong letter
        {"question_id": "4", "prediction": "B", "choices": ["x", "y", "z"], "answer": 0, "has_image": False},
    ]
    score = scienceqa_score(records)
    assert score.accuracy == pytest.approx(50.0)  # 2 right of 4
    assert score.image_accuracy == pytest.approx(50.0)  # 1 right of 2 image questions
    assert (score.num_questions, score.num_image_questions) == (4, 2)
    assert (score.num_correct, score.num_failed) == (2, 1)


def test_scoring_errors():
    record = {"question_id": "9", "prediction": "A", "choices": ["x", "y"], "answer": 2, "has_image": False}
    with pytest.raises(ValueError, match=r"question '9': answer index 2 outside its 2 choices"):
        scienceqa_score([record])
    with pytest.raises(ValueError, match="appears twice"):
        scienceqa_score([{**record, "answer": 0}] * 2)
