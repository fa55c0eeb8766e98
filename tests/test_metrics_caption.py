"""Golden tests for BLEU and CIDEr-D through pycocoevalcap, checked against hand computations."""

import math
import shutil
from collections import Counter

import pytest

from eval.metrics.caption import (
    caption_scores,
    coco_candidates,
    coco_references,
    ptb_tokenize,
    tokenize_captions,
)

# Two images: one exact 4-gram-rich match, one short candidate that triggers the brevity penalty.
REFERENCES = {1: ["The cat is on a mat.", "A cat is on the mat."], 2: ["a dog runs", "The dog runs fast!"]}
CANDIDATES = {1: "the cat is on the mat", 2: "A dog."}


def _independent_corpus_bleu(references, candidates, max_n=4):
    """Corpus BLEU (clipped n-gram precision, closest-reference brevity penalty) without smoothing."""
    correct, guessed = [0] * max_n, [0] * max_n
    test_length = ref_length = 0
    for key, candidate in candidates.items():
        words = candidate.split()
        refs = [ref.split() for ref in references[key]]
        test_length += len(words)
        ref_length += min((abs(len(ref) - len(words)), len(ref)) for ref in refs)[1]
        for n in range(1, max_n + 1):
            counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
            max_ref = Counter()
            for ref in refs:
                for gram, count in Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)).items():
                    max_ref[gram] = max(max_ref[gram], count)
            correct[n - 1] += sum(min(count, max_ref[gram]) for gram, count in counts.items())
            guessed[n - 1] += max(0, len(words) - n + 1)
    penalty = min(1.0, math.exp(1 - ref_length / test_length))
    scores, product = [], 1.0
    for n in range(max_n):
        product *= correct[n] / guessed[n]
        scores.append(product ** (1 / (n + 1)) * penalty)
    return scores


def test_identical_candidate_and_reference_give_bleu_one():
    scores = caption_scores({7: ["A man riding a horse."]}, {7: "a man riding a horse"})
    # pycocoevalcap adds 1e-15 / 1e-9 to every ratio, so "1" is 1 - ~5e-10.
    assert scores.bleu_4 == pytest.approx(1.0, abs=1e-8)
    # CIDEr-D's idf on a one-image set is log(1) - log(1) = 0 for every n-gram: the score is 0.
    assert scores.cider == 0.0


def test_bleu_two_image_corpus():
    # Tokenized: image 1 "the cat is on the mat" vs refs "the cat is on a mat" / "a cat is on the mat";
    # image 2 "a dog" vs "a dog runs" / "the dog runs fast".
    # Image 1 clipped matches: 1-grams 5/6 ("the" clipped to 1), 2-grams 5/5, 3-grams 4/4, 4-grams 3/3;
    # length 6, closest ref 6. Image 2: 1-grams 2/2, 2-grams 1/1, no 3/4-grams; length 2, closest ref 3.
    # Corpus: correct [7, 6, 4, 3] / guessed [8, 6, 4, 3]; lengths 8 vs 9 -> BP = exp(1 - 9/8).
    penalty = math.exp(1 - 9 / 8)
    expected = [
        (7 / 8) * penalty,  # 0.77218
        (7 / 8 * 6 / 6) ** (1 / 2) * penalty,  # 0.82550
        (7 / 8) ** (1 / 3) * penalty,  # 0.84408
        (7 / 8) ** (1 / 4) * penalty,  # 0.85352
    ]
    scores = caption_scores(REFERENCES, CANDIDATES)
    bleu = [scores.bleu_1, scores.bleu_2, scores.bleu_3, scores.bleu_4]
    assert bleu == pytest.approx(expected, rel=1e-8)
    tokenized_refs = tokenize_captions(REFERENCES)
    tokenized_cands = {key: ptb_tokenize(text) for key, text in CANDIDATES.items()}
    assert bleu == pytest.approx(_independent_corpus_bleu(tokenized_refs, tokenized_cands), rel=1e-8)


def test_cider_d_by_hand():
    # Two images, one reference each. ref_len = log(2); idf(g) = log(2) - log(max(1, df(g))), so
    # n-grams in both images' references ("a") weigh 0, all others weigh L = log 2.
    # Image 1: "a cat" vs "a black cat".
    #   unigrams: hyp {a: 0, cat: L}, ref {a: 0, black: L, cat: L}: cos = L^2 / (L * sqrt(2) L) = 1/sqrt(2)
    #   bigrams: hyp {"a cat"} vs ref {"a black", "black cat"}: 0; no 3- or 4-grams in the hypothesis: 0.
    #   length penalty: pycocoevalcap counts bigrams as "length" (1 vs 2), delta = -1 -> exp(-1 / 72).
    #   score = 10 * mean([1/sqrt(2) * exp(-1/72), 0, 0, 0]) = 2.5 * exp(-1/72) / sqrt(2) = 1.74339
    # Image 2: "a dog" vs "a dog": unigram and bigram cosines 1, no 3/4-grams -> 10 * (1 + 1) / 4 = 5.
    image_1 = 2.5 * math.exp(-1 / 72) / math.sqrt(2)
    scores = caption_scores({1: ["a black cat"], 2: ["a dog"]}, {1: "a cat", 2: "a dog"})
    assert scores.cider == pytest.approx((image_1 + 5.0) / 2, rel=1e-9)  # 3.37169


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
        ('He said "hello" and it\'s John\'s dog; don\'t go.', "he said hello and it 's john 's dog do n't go"),
        ("Two dogs, playing in the (tall) grass!", "two dogs playing in the -lrb- tall -rrb- grass"),
        ("The U.S. flag at 3.5 p.m., 1,000 times...", "the u.s. flag at 3.5 p.m. 1,000 times"),
        ("a black-and-white photo -- really?!", "a black-and-white photo really ?!"),  # "?!" is one token
        ("Cannot stop, gonna go", "can not stop gon na go"),
    ],
)
def test_python_ptb_tokenizer(text, tokens):
    # Expected strings are what pycocoevalcap's Java PTBTokenizer produces for these captions.
    assert ptb_tokenize(text) == tokens


@pytest.mark.skipif(shutil.which("java") is None, reason="needs java for pycocoevalcap's PTBTokenizer")
def test_python_tokenizer_matches_java_on_plain_captions():
    captions = {
        i: [text]
        for i, text in enumerate(
            [
                "A group of people standing around a kitchen.",
                "a bathroom with a toilet, sink, and mirror.",
                "A person on a snowboard (in mid-air) jumps.",
                'Picture of a street sign that reads "Main St."',
                "Dr. Who and St. Paul at 5 p.m. on Jan. 5",
                "a cat's toy isn't the dogs' bone",
                "the dog; the cat: and -the- bird",
                "wow!! what?! really?? no!!! ok?.",
                "The bus is 5.5 meters long; 50% off $5 hats & #1 e-mail a/b",
            ]
        )
    }
    java = tokenize_captions(captions, tokenizer="java")
    assert tokenize_captions(captions, tokenizer="python") == java
    assert caption_scores(REFERENCES, CANDIDATES, tokenizer="java") == caption_scores(REFERENCES, CANDIDATES)


def test_coco_format_helpers():
    annotations = {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [
            {"image_id": 1, "id": 10, "caption": "a cat"},
            {"image_id": 1, "id": 11, "caption": "a kitten"},
            {"image_id": 2, "id": 12, "caption": "a dog"},
        ],
    }
    assert coco_references(annotations) == {1: ["a cat", "a kitten"], 2: ["a dog"]}
    assert coco_candidates([{"image_id": 1, "caption": "a cat"}]) == {1: "a cat"}
    with pytest.raises(ValueError, match="image 1 has more than one caption"):
        coco_candidates([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}])
    with pytest.raises(ValueError, match="no 'annotations' list"):
        coco_references({"images": []})


def test_candidate_without_references_is_an_error():
    with pytest.raises(ValueError, match=r"1 candidate image\(s\) have no reference captions, e.g. \[3\]"):
        caption_scores({1: ["a cat"]}, {1: "a cat", 3: "a dog"})
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tokenize_captions({1: ["a"]}, tokenizer="nltk")  # type: ignore[arg-type]
