"""Captioning metrics on COCO-format references: BLEU-1..4 and CIDEr-D, computed by pycocoevalcap.

The scores come from pycocoevalcap's own ``Bleu(4)`` and ``Cider`` scorers (the COCO caption
evaluation code; its ``Cider`` is CIDEr-D: clipped n-gram tf-idf, Gaussian length penalty,
sigma 6, x10). They are returned raw, as pycocoevalcap returns them (BLEU in [0, 1], CIDEr-D
typically in [0, 10]; papers usually print both x100).

Captions are tokenized first. pycocoevalcap's ``PTBTokenizer`` runs Stanford's Java PTB tokenizer
(lowercase, split punctuation and clitics) and then deletes punctuation tokens; it needs ``java``.
``tokenizer="java"`` calls it (when ``java`` is on PATH); the default ``tokenizer="python"`` uses
:func:`ptb_tokenize`, a pure-Python approximation that gives the same tokens on ordinary caption
text (checked against the Java tokenizer in the tests) but not on every corner of PTB's rules.

Two properties of the official scorers worth knowing: CIDEr-D's idf is computed from the
references of the images being scored, so it depends on the whole evaluated set (and is 0 for a
set of one image); BLEU is corpus-level (n-gram counts summed over images, then one brevity
penalty with the closest reference length).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

ImageId = TypeVar("ImageId", bound=Hashable)
Tokenizer = Literal["python", "java"]

# pycocoevalcap tokenizer/ptbtokenizer.py PUNCTUATIONS: tokens deleted after PTB tokenization.
# Note the upper-case bracket names: with -lowerCase PTB emits "-lrb-", which is therefore kept.
PTB_PUNCTUATIONS: frozenset[str] = frozenset(
    {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
)
# Stanford PTBTokenizer escapes of brackets (lowercased by -lowerCase).
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# Stanford PTBTokenizer: characters split off the front / the end of a word.
_LEADING = {'"': "``", "'": "`", "`": "`", "(": "-lrb-", "[": "-lsb-", "{": "-lcb-", "$": "$", "#": "#"}
_TRAILING = {
    '"': "''", "'": "'", ")": "-rrb-", "]": "-rsb-", "}": "-rcb-", ".": ".", ",": ",",
    ";": ";", ":": ":", "!": "!", "?": "?", "%": "%", "-": "-",
}
# Stanford PTBTokenizer: clitics split off the end of a word ("don't" -> "do n't").
_CLITICS: tuple[str, ...] = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
# Stanford PTBTokenizer: words it splits in two.
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na")}
# Abbreviations whose final period PTB keeps: a subset of its list, plus acronyms ("u.s.", "p.m.").
_ACRONYM = re.compile(r"(?:[a-z]\.)+[a-z]")
_ABBREVIATIONS: frozenset[str] = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "mt", "vs", "etc", "inc", "co", "corp", "ltd",
     "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"}
)


@dataclass(frozen=True)
class CaptionScores:
    """Corpus-level caption scores, raw as pycocoevalcap returns them."""

    bleu_1: float
    bleu_2: float
    bleu_3: float
    bleu_4: float
    cider: float
    """CIDEr-D (pycocoevalcap ``Cider``)."""
    num_images: int


def _split_core(core: str) -> list[str]:
    if core in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[core])
    for clitic in _CLITICS:
        if core.endswith(clitic) and len(core) > len(clitic):
            return [core[: -len(clitic)], clitic]
    return [core] if core else []


def _keeps_final_period(word: str) -> bool:
    stem = word[:-1]
    return stem in _ABBREVIATIONS or _ACRONYM.fullmatch(stem) is not None


def _peel_leading(word: str) -> tuple[list[str], str]:
    leading: list[str] = []
    while len(word) > 1:
        if word[0] in _LEADING:
            leading.append(_LEADING[word[0]])
        elif word[0] == "-" and word[1].isalpha():  # "-the-" -> "- the -", but "-5" stays
            leading.append("-")
        else:
            break
        word = word[1:]
    return leading, word


def _peel_trailing(word: str) -> tuple[str, list[str]]:
    trailing: list[str] = []
    while word and word[-1] in _TRAILING:
        if word[-1] in "!?":  # a run of ! and ? is one token: "!!", "?!"
            run = len(word) - len(word.rstrip("!?"))
            trailing.append(word[-run:])
            word = word[:-run]
            continue
        if word[-1] == "." and len(word) > 1 and _keeps_final_period(word):
            break
        trailing.append(_TRAILING[word[-1]])
        word = word[:-1]
    return word, trailing[::-1]


def _split_word(word: str) -> list[str]:
    if word in ("...", "--"):
        return [word]
    if word in _BRACKETS:
        return [_BRACKETS[word]]
    leading, word = _peel_leading(word)
    word, trailing = _peel_trailing(word)
    return leading + _split_core(word) + trailing


def ptb_tokenize(text: str) -> str:
    """Tokenize one caption like pycocoevalcap's PTBTokenizer, in pure Python.

    Lowercases; splits off punctuation, brackets (as ``-lrb-`` etc.), ``$ # %``, ``...``,
    ``--`` and clitics (``n't 's 're 've 'll 'd 'm``); splits "cannot", "gonna", "gotta",
    "wanna"; keeps inner periods and commas (``3.5``, ``1,000``, ``u.s.``) and hyphenated words;
    then deletes the punctuation tokens pycocoevalcap deletes. An approximation of Stanford's
    rules that matches them on ordinary caption text.
    """
    # Stanford PTBTokenizer -preserveLines -lowerCase, as invoked by pycocoevalcap.
    text = text.replace("\n", " ").lower().replace("...", " ... ").replace("--", " -- ")
    tokens = [token for word in text.split() for token in _split_word(word)]
    # pycocoevalcap tokenizer/ptbtokenizer.py: drop punctuation tokens.
    return " ".join(token for token in tokens if token not in PTB_PUNCTUATIONS)


def _java_tokenize(captions: Mapping[ImageId, Sequence[str]]) -> dict[ImageId, list[str]]:
    if shutil.which("java") is None:
        raise RuntimeError(
            "tokenizer='java' needs a `java` executable on PATH (pycocoevalcap runs Stanford's "
            "PTBTokenizer jar); install a JRE or use tokenizer='python'"
        )
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized = PTBTokenizer().tokenize({key: [{"caption": c} for c in texts] for key, texts in captions.items()})
    return {key: tokenized.get(key, []) for key in captions}


def tokenize_captions(
    captions: Mapping[ImageId, Sequence[str]], tokenizer: Tokenizer = "python"
) -> dict[ImageId, list[str]]:
    """Tokenize every caption of every image with the pure-Python or the Java PTB tokenizer."""
    if tokenizer == "python":
        return {key: [ptb_tokenize(text) for text in texts] for key, texts in captions.items()}
    if tokenizer == "java":
        return _java_tokenize(captions)
    raise ValueError(f"unknown tokenizer {tokenizer!r}; use 'python' or 'java'")


def _check_inputs(references: Mapping[ImageId, Sequence[str]], candidates: Mapping[ImageId, str]) -> None:
    if not candidates:
        raise ValueError("no candidate captions to score")
    missing = [key for key in candidates if not references.get(key)]
    if missing:
        raise ValueError(
            f"{len(missing)} candidate image(s) have no reference captions, e.g. {missing[:5]}; "
            "every scored image needs at least one reference"
        )


def caption_scores(
    references: Mapping[ImageId, Sequence[str]],
    candidates: Mapping[ImageId, str],
    tokenizer: Tokenizer = "python",
) -> CaptionScores:
    """Compute BLEU-1..4 and CIDEr-D of one candidate caption per image against its references.

    Args:
        references: image id -> reference captions (raw text).
        candidates: image id -> the model's caption (raw text). Only these images are scored,
            as COCOEvalCap scores the images of the results file.
        tokenizer: ``"python"`` (:func:`ptb_tokenize`, no Java) or ``"java"`` (pycocoevalcap's
            Stanford PTBTokenizer; needs ``java`` on PATH).
    """
    _check_inputs(references, candidates)
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as error:
        raise ImportError("caption metrics need pycocoevalcap: pip install pycocoevalcap") from error
    gts = tokenize_captions({key: list(references[key]) for key in candidates}, tokenizer)
    res = tokenize_captions({key: [caption] for key, caption in candidates.items()}, tokenizer)
    # pycocoevalcap eval.py COCOEvalCap.evaluate: Bleu(4) and Cider() on the tokenized captions.
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return CaptionScores(
        bleu_1=float(bleu[0]),
        bleu_2=float(bleu[1]),
        bleu_3=float(bleu[2]),
        bleu_4=float(bleu[3]),
        cider=float(cider),
        num_images=len(candidates),
    )


def coco_references(annotations: Mapping[str, Any]) -> dict[int, list[str]]:
    """Group the captions of a COCO captions annotation file (``{"annotations": [...]}``) by image id."""
    if "annotations" not in annotations:
        raise ValueError("not a COCO captions file: no 'annotations' list (expected captions_*.json)")
    references: dict[int, list[str]] = {}
    for index, annotation in enumerate(annotations["annotations"]):
        if "image_id" not in annotation or "caption" not in annotation:
            raise ValueError(f"COCO annotation {index} lacks 'image_id' or 'caption': {annotation!r}")
        references.setdefault(annotation["image_id"], []).append(annotation["caption"])
    return references


def coco_candidates(results: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """Read a COCO results list (``[{"image_id": ..., "caption": ...}, ...]``), one caption per image."""
    candidates: dict[int, str] = {}
    for index, result in enumerate(results):
        if "image_id" not in result or "caption" not in result:
            raise ValueError(f"COCO result {index} lacks 'image_id' or 'caption': {result!r}")
        image_id = result["image_id"]
        if image_id in candidates:
            raise ValueError(f"image {image_id!r} has more than one caption in the results; pycocoevalcap scores one")
        candidates[image_id] = result["caption"]
    return candidates
