"""VQAv2 accuracy, computed the way the official VQA evaluation script does.

Reference
---------
S. Antol, A. Agrawal, J. Lu, M. Mitchell, D. Batra, C. L. Zitnick and D. Parikh,
"VQA: Visual Question Answering", ICCV 2015; and the official evaluation script
of the VQA API (``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` in the
GT-Vision-Lab/VQA repository, current Python 3 version).  This module is an
independent, standard-library-only re-implementation of that script's rules.

Method
------
Every VQAv2 question has ten free-form human answers.  A predicted answer is
first normalised (see :func:`normalize_answer`), then compared by exact string
equality against the reference answers.  A prediction counts as fully correct
when at least three humans gave it, i.e. ``min(1, #matches / 3)``.  To make the
machine score comparable with human agreement, the official script averages
this quantity over the ten leave-one-out subsets of nine references: for each
reference *i* it counts the matches among the *other* references, takes
``min(1, matches / 3)`` and returns the mean over all *i*.  With ten references
a prediction given by 0, 1, 2, 3 or >= 4 of them scores 0.0, 0.3, 0.6, 0.9 and
1.0 respectively.

Normalisation (identical to the official processing of predictions):

1. ``"\\n"`` and ``"\\t"`` become spaces, then surrounding whitespace is
   stripped.
2. Punctuation.  For each mark in ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``
   the decision is taken once for the whole string (looking at the text as it
   was before this step): every occurrence of the mark is *deleted* if the mark
   appears anywhere next to a space (``"x "`` or ``" x"``) or if the text
   contains a digit-comma-digit group such as ``"10,000"``; otherwise every
   occurrence is replaced by a space.  Then a period that is not followed by a
   digit is deleted (so ``"3.5"`` survives and ``"dog."`` becomes ``"dog"``);
   like the official code, at most 32 such periods are deleted (the official
   script passes ``re.UNICODE``, whose value is 32, in the ``count`` position of
   ``Pattern.sub``).  Apostrophes, colons, periods before digits and any other
   character not listed are kept.
3. Words.  The text is lower-cased and split on whitespace; the number words
   ``none`` and ``zero`` .. ``ten`` become ``0`` .. ``10``; the articles ``a``,
   ``an``, ``the`` are dropped; apostrophe-less contractions are restored
   (``dont`` -> ``don't``, ``whats`` -> ``what's``, ...) using the official
   table; words are re-joined with single spaces.

Deliberate differences from the official script
-----------------------------------------------
* **References are fully normalised.**  The official script applies *only* the
  punctuation step (no lower-casing, number words, articles or contractions,
  no whitespace handling) to the reference answers, and skips even that when
  all references of a question are the same string.  Here every reference goes
  through :func:`normalize_answer`, exactly like the prediction.  This gives
  the official result for every question whose reference answers are already
  in normalised form (``normalize_answer(a) == a``): normalisation is
  idempotent and the punctuation step leaves a normalised string unchanged, so
  both sides compare the same strings.  When references are *not* normalised
  (e.g. ``"Two"``, ``"a dog"``, ``"t-shirt"``), the official script can never
  match them, because a normalised prediction never equals a non-normalised
  string, whereas this module can; in that case the score here is higher, and
  it is never lower than the official one.  The single exception is a
  pathological answer with more than 32 stray periods, where the official
  32-deletion cap makes normalisation non-idempotent.  In particular, the
  official "skip when all references are identical" shortcut is *not* always
  equivalent to normalising: it is equivalent exactly when that shared answer
  is already normalised.
* **A single reference answer is scored by exact match** (1.0 or 0.0 after
  normalisation).  The official leave-one-out formula would always give 0.0
  for one reference, which is useless for datasets with one answer per
  question.
* Leave-one-out is by position: with references given as plain strings,
  duplicates are distinct entries (the official code compares annotation
  dicts, which always differ by ``answer_id``, so this is the same).
* Scores are fractions in [0, 1], not percentages rounded to two decimals.
* Per-question-type accuracy averages the per-question scores (the current
  official script does the same; an earlier version of it averaged only the
  last leave-one-out term).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["normalize_answer", "vqa_accuracy", "score_samples"]

# Marks handled by the punctuation step.  The period is not here: it has its
# own rule (see _STRAY_PERIOD).
_PUNCTUATION_MARKS = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)

# A comma between two digits ("10,000"): its presence anywhere in the text
# makes every punctuation mark be deleted rather than turned into a space.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")

# A period not followed by a digit.  The official pattern is
# "(?!<=\d)(\.)(?!\d)"; its first group is a negative *lookahead* for the
# literal "<=" plus a digit (a mistyped lookbehind), which can never match at a
# position holding ".", so it has no effect and the pattern is equivalent to
# this one.
_STRAY_PERIOD = re.compile(r"\.(?!\d)")

# The official script deletes at most this many stray periods (see docstring).
_MAX_PERIODS_DELETED = 32

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

_ARTICLES = frozenset({"a", "an", "the"})

# The official contraction table.  Left out, because they can never change a
# result: the entries whose keys contain capitals ("Im", "Ive", "Id've",
# "I'dve"), which cannot match lower-cased words, and the identity entries
# ("let's", "she's").  The odd "somebody'd" -> "somebodyd" entry is official
# and kept.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldn'tve": "couldn't've",
    "couldnt": "couldn't",
    "couldnt've": "couldn't've",
    "couldve": "could've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadn'tve": "hadn't've",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "he'dve": "he'd've",
    "hed": "he'd",
    "hed've": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "isnt": "isn't",
    "it'dve": "it'd've",
    "itd": "it'd",
    "itd've": "it'd've",
    "itll": "it'll",
    "maam": "ma'am",
    "mightn'tve": "mightn't've",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "'ow'sat": "'ow's'at",
    "'ows'at": "'ow's'at",
    "ow's'at": "'ow's'at",
    "shant": "shan't",
    "she'dve": "she'd've",
    "shed've": "she'd've",
    "shouldn'tve": "shouldn't've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldve": "should've",
    "somebody'd": "somebodyd",
    "somebody'dve": "somebody'd've",
    "somebodyd've": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someone'dve": "someone'd've",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "something'dve": "something'd've",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "there'dve": "there'd've",
    "thered": "there'd",
    "thered've": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "they'dve": "they'd've",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "we'dve": "we'd've",
    "wed've": "we'd've",
    "werent": "weren't",
    "weve": "we've",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "who'dve": "who'd've",
    "whod": "who'd",
    "whod've": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldn'tve": "wouldn't've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldve": "would've",
    "y'all'dve": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'allll": "y'all'll",
    "yall": "y'all",
    "yall'd've": "y'all'd've",
    "yall'll": "y'all'll",
    "you'dve": "you'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

_YES_NO = frozenset({"yes", "no"})


def _process_punctuation(text: str) -> str:
    """Punctuation step of the official processing (step 2 of the docstring)."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    result = text
    for mark in _PUNCTUATION_MARKS:
        if mark not in text:
            continue
        # The decision looks at the text as it came in, not at `result`.
        if delete_all or (mark + " ") in text or (" " + mark) in text:
            result = result.replace(mark, "")
        else:
            result = result.replace(mark, " ")
    return _STRAY_PERIOD.sub("", result, count=_MAX_PERIODS_DELETED)


def _process_words(text: str) -> str:
    """Number-word, article and contraction step (step 3 of the docstring)."""
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Normalise an answer string as the official VQA evaluation does.

    Newlines and tabs become spaces and the ends are stripped; punctuation is
    deleted or turned into spaces; stray periods are deleted; then the text is
    lower-cased, number words become digits, articles are dropped and
    contractions restored.  See the module docstring for the exact rules.

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    >>> normalize_answer("A red T-shirt!")
    'red t shirt'
    """
    if not isinstance(text, str):
        raise TypeError(f"answer must be a string, got {type(text).__name__}")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_words(_process_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA accuracy of one prediction against its reference answers, in [0, 1].

    Both the prediction and every reference are normalised with
    :func:`normalize_answer` (the official script only partly normalises
    references; the module docstring states exactly when the results agree).

    * Two or more references (VQAv2 has ten): the official leave-one-out
      average, ``mean_i min(1, #{j != i : ref_j == pred} / 3)``.
    * Exactly one reference: exact match after normalisation, 1.0 or 0.0.

    Raises ``ValueError`` if ``answers`` is empty and ``TypeError`` if it is a
    bare string or holds non-strings.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a list of strings, not a single string; wrap it in a list")
    references = [normalize_answer(answer) for answer in answers]
    if not references:
        raise ValueError("answers must contain at least one reference answer")
    predicted = normalize_answer(prediction)

    if len(references) == 1:
        return 1.0 if references[0] == predicted else 0.0

    hits = [reference == predicted for reference in references]
    total_hits = sum(hits)
    score = 0.0
    for hit in hits:
        # Matches among the other references once this one is left out.
        others = total_hits - 1 if hit else total_hits
        score += min(1.0, others / 3.0)
    return score / len(references)


def _reference_strings(raw: Any, row: int, answers_key: str) -> list[str]:
    """Turn a sample's answers field into a list of strings."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, (list, tuple)):
        raise ValueError(
            f"row {row}: {answers_key!r} must be a string, a list of strings or "
            f"a list of {{'answer': ...}} objects, got {type(raw).__name__}"
        )
    if not raw:
        raise ValueError(f"row {row}: {answers_key!r} is empty")
    strings = []
    for position, item in enumerate(raw):
        if isinstance(item, Mapping):
            if "answer" not in item:
                raise ValueError(f"row {row}: {answers_key!r}[{position}] has no 'answer' key")
            item = item["answer"]
        if not isinstance(item, str):
            raise ValueError(f"row {row}: {answers_key!r}[{position}] must be a string, got {type(item).__name__}")
        strings.append(item)
    return strings


def _type_key(question_type: Any) -> str:
    """Metric-name form of a question type: lower case, spaces -> underscores."""
    return "_".join(str(question_type).lower().split())


def score_samples(
    samples: Iterable[Mapping],
    prediction_key: str = "prediction",
    answers_key: str = "answers",
) -> tuple[dict[str, float], list[float]]:
    """Score many samples with :func:`vqa_accuracy`.

    Each sample is a mapping with a prediction string under ``prediction_key``
    and references under ``answers_key``: a list of strings, a list of
    ``{"answer": ...}`` dicts (the VQAv2 annotation form) or a single string.

    Returns ``(metrics, per_sample_scores)``.  ``metrics`` holds

    * ``accuracy``: mean score over all samples, in [0, 1];
    * ``count``: the number of samples (as a float);
    * ``accuracy_<type>`` for each ``question_type`` found on the samples
      (lower-cased, whitespace runs -> ``_``), averaged over the samples of
      that type; samples without the field (or with an empty one) only count
      towards the overall figures;
    * ``yes_ratio``, present when at least one sample's normalised references
      are all "yes"/"no": the fraction of those samples whose normalised
      prediction is "yes" (a bias check for yes/no questions).

    Raises ``ValueError`` naming the 0-based row for a sample that is not a
    mapping, lacks either key or has malformed answers, and when there are no
    samples at all.
    """
    scores: list[float] = []
    by_type: dict[str, list[float]] = {}
    yes_no_total = 0
    yes_no_said_yes = 0

    for row, sample in enumerate(samples):
        if not isinstance(sample, Mapping):
            raise ValueError(
                f"row {row}: expected a mapping with {prediction_key!r} and "
                f"{answers_key!r}, got {type(sample).__name__}"
            )
        for key in (prediction_key, answers_key):
            if key not in sample:
                raise ValueError(f"row {row}: missing {key!r} (each line needs {prediction_key!r} and {answers_key!r})")
        prediction = sample[prediction_key]
        if not isinstance(prediction, str):
            raise ValueError(f"row {row}: {prediction_key!r} must be a string, got {type(prediction).__name__}")
        references = _reference_strings(sample[answers_key], row, answers_key)

        score = vqa_accuracy(prediction, references)
        scores.append(score)

        question_type = sample.get("question_type")
        if question_type is not None:
            key = _type_key(question_type)
            if key:
                by_type.setdefault(key, []).append(score)

        if all(normalize_answer(r) in _YES_NO for r in references):
            yes_no_total += 1
            if normalize_answer(prediction) == "yes":
                yes_no_said_yes += 1

    if not scores:
        raise ValueError("no samples to score")

    metrics: dict[str, float] = {
        "accuracy": sum(scores) / len(scores),
        "count": float(len(scores)),
    }
    for key in sorted(by_type):
        type_scores = by_type[key]
        metrics[f"accuracy_{key}"] = sum(type_scores) / len(type_scores)
    if yes_no_total:
        metrics["yes_ratio"] = yes_no_said_yes / yes_no_total
    return metrics, scores
