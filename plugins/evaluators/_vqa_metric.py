"""VQAv2 accuracy, computed exactly as the official VQA evaluation script does.

Reference
---------
S. Antol, A. Agrawal, J. Lu, M. Mitchell, D. Batra, C. L. Zitnick and D. Parikh, "VQA: Visual
Question Answering", ICCV 2015; Y. Goyal et al., "Making the V in VQA Matter", CVPR 2017 (VQAv2).
The rules are those of ``VQAEval.evaluate`` in the official script
(``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of the GT-Vision-Lab/VQA repository, current
version: the one that cleans the whitespace of the reference answers and processes both sides
only when the references disagree).  This module is an independent, standard-library-only
re-implementation of those rules; on every question with ten reference answers it returns the
official per-question accuracy (as a fraction, see below).

How the official script scores one question
-------------------------------------------
1. **Whitespace.**  In the prediction and in every reference answer, ``"\\n"`` and ``"\\t"``
   become spaces and the ends are stripped (:func:`clean_whitespace`).
2. **Do the references agree?**  The cleaned reference strings are compared with each other.
   Only when they are *not* all the same string are the references and the prediction both
   processed further: first :func:`process_punctuation`, then :func:`process_digit_article`
   (together with step 1 this is :func:`normalize_answer`).  When all references are the same
   string, nothing more is done to either side.
3. **Leave-one-out.**  For each reference *i* the script counts how many of the *other*
   references equal the prediction, takes ``min(1, matches / 3)``, and averages over all *i*.
   With ten references a prediction given by 0, 1, 2, 3 or >= 4 of them scores 0.0, 0.3, 0.6,
   0.9 and 1.0.

Punctuation (:func:`process_punctuation`): for each mark in
``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` the decision is taken once for the whole string,
looking at the text as it came in: every occurrence is *deleted* if the mark stands next to a
space anywhere (``"x "`` or ``" x"``) or if the text contains a digit-comma-digit group such as
``"10,000"``; otherwise every occurrence becomes a space.  Then a period not followed by a digit
is deleted (``"3.5"`` survives, ``"dog."`` becomes ``"dog"``).  Apostrophes, colons and every
other character are kept.

Digits and articles (:func:`process_digit_article`): the text is lower-cased and split on
whitespace; ``none`` and ``zero`` .. ``ten`` become ``0`` .. ``10``; ``a``, ``an`` and ``the`` are
dropped; apostrophe-less contractions are restored from the official table (``dont`` ->
``don't``); the words are re-joined with single spaces.

Quirks of the official script reproduced here
---------------------------------------------
* **Nothing but whitespace is normalised when the references all agree.**  Lower-casing,
  punctuation, number words and articles are handled only in step 2's "disagree" branch.  Ten
  references ``"yes"``: prediction ``"yes"`` scores 1.0, but ``"Yes"``, ``"yes."`` and
  ``"a yes"`` score 0.0.  Ten references ``"Yes"`` (never so in VQAv2, whose answers are
  lower-case): prediction ``"Yes"`` scores 1.0 and ``"yes"`` 0.0.
* **When they disagree, everything is normalised, references included.**  Nine ``"yes"`` and one
  ``"Yes"``: prediction ``"Yes."`` becomes ``"yes"``, all ten references become ``"yes"``, and
  the score is 1.0.  ``["Two", "two", "TWO", "2"]`` all become ``"2"``.
* **Whitespace decides agreement.**  ``" yes"`` and ``"yes"`` are the same after step 1, so ten
  references mixing them agree (the prediction is then compared unprocessed).
* **The punctuation decision is per mark and for the whole string**: ``"t-shirt"`` ->
  ``"t shirt"`` but ``"t-shirt - x"`` -> ``"tshirt x"``; any ``digit,digit`` deletes every mark:
  ``"1,5 t-shirt"`` -> ``"15 tshirt"``.  Only ``"\\n"``/``"\\t"`` count as spaces before this
  step, so ``"t-shirt\\r-"`` -> ``"t shirt"`` but ``"t-shirt\\n-"`` -> ``"tshirt"``.
* **At most 32 stray periods are deleted.**  The official call passes ``re.UNICODE`` (whose value
  is 32) where ``Pattern.sub`` takes its ``count``.  Its period pattern starts with ``(?!<=\\d)``,
  a mistyped look-behind that is really a look-ahead for ``"<="`` and never matches at a ``"."``,
  so it has no effect.
* **Contractions are looked up after lower-casing**, so the table's capitalised keys (``Im``,
  ``Ive``, ``Id've``, ``I'dve``) never apply; ``somebody'd`` -> ``somebodyd`` is in the table.
* **Leave-one-out compares whole annotation dicts.**  The script drops every reference *equal* to
  the left-out one, comparing the ``{"answer", "answer_id", ...}`` dicts (after their ``answer``
  was cleaned / processed).  VQAv2's dicts differ by ``answer_id``, so this is leave-one-out by
  position; references given as ``{"answer": ...}`` dicts here are compared the same way, so
  dicts identical in every key are dropped together: ten ``{"answer": "yes"}`` without ids score
  0.0 for ``"yes"`` (each left-out removes all ten), as in the official script.  Plain strings
  are distinct by position (as if each had its own ``answer_id``).

Deliberate differences (vlmplug extensions)
-------------------------------------------
* **One reference answer: exact match after normalising both sides** (:func:`normalize_answer`),
  1.0 or 0.0.  The official leave-one-out would always give 0.0 for one reference, which is
  useless for datasets with one answer per question.  Two to nine references follow the
  official rules unchanged (VQAv2 always has ten).
* Scores are fractions in [0, 1], not percentages rounded to two decimals.
* Per-question-type and per-answer-type accuracies average the per-question scores, like the
  current official script; their keys are lower-cased with whitespace runs turned into ``_``.
* ``yes_ratio`` is an extra bias check (see :func:`score_samples`).
* Malformed input raises ``ValueError`` naming the record instead of failing deep inside.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "clean_whitespace",
    "process_punctuation",
    "process_digit_article",
    "normalize_answer",
    "leave_one_out",
    "vqa_accuracy",
    "score_samples",
]

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


def clean_whitespace(text: str) -> str:
    """Step 1 of the official script: ``"\\n"`` and ``"\\t"`` become spaces, the ends are stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation`` (see the module docstring)."""
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


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, number words, articles, contractions."""
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """The full official processing of an answer: whitespace, punctuation, digits and articles.

    The official script applies it (to the prediction and to every reference) only when the
    references of a question disagree; see :func:`vqa_accuracy`.

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    >>> normalize_answer("A red T-shirt!")
    'red t shirt'
    """
    if not isinstance(text, str):
        raise TypeError(f"answer must be a string, got {type(text).__name__}")
    return process_digit_article(process_punctuation(clean_whitespace(text)))


def leave_one_out(prediction: str, references: Sequence[str], identities: Sequence[Any] | None = None) -> float:
    """Mean over references *i* of ``min(1, #{j : identity_j != identity_i, ref_j == prediction} / 3)``.

    ``identities`` tell which references are left out together with reference *i* (every one
    equal to it); by default each reference is its own (leave-one-out by position).  Strings are
    compared exactly: process them first.
    """
    if not references:
        raise ValueError("references must not be empty")
    ids: Sequence[Any] = range(len(references)) if identities is None else identities
    total = 0.0
    for left_out in ids:
        matches = sum(1 for ref, other in zip(references, ids) if other != left_out and ref == prediction)
        total += min(1.0, matches / 3.0)
    return total / len(references)


def _answer_text(item: Any, position: int) -> str:
    if isinstance(item, Mapping):
        if "answer" not in item:
            raise ValueError(f"answers[{position}] has no 'answer' key")
        item = item["answer"]
    if not isinstance(item, str):
        raise TypeError(f"answers[{position}] must be a string, got {type(item).__name__}")
    return item


def vqa_accuracy(prediction: str, answers: Sequence[str | Mapping[str, Any]]) -> float:
    """VQA accuracy of one prediction against its reference answers, in [0, 1].

    ``answers`` holds strings or VQAv2 annotation dicts (``{"answer": ..., "answer_id": ...}``).

    * Two or more references (VQAv2 has ten): the official rules of the module docstring —
      whitespace cleaned on both sides; both sides fully processed only if the cleaned
      references disagree; leave-one-out over the references (dicts equal in every key are left
      out together, strings by position).
    * Exactly one reference (a vlmplug extension): exact match after :func:`normalize_answer` of
      both sides, 1.0 or 0.0.

    Raises ``ValueError`` if ``answers`` is empty or a dict lacks ``answer``, and ``TypeError`` if
    ``answers`` is a bare string or holds non-strings.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a list of strings, not a single string; wrap it in a list")
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a string, got {type(prediction).__name__}")
    texts = [_answer_text(item, i) for i, item in enumerate(answers)]
    if not texts:
        raise ValueError("answers must contain at least one reference answer")

    if len(texts) == 1:
        return 1.0 if normalize_answer(prediction) == normalize_answer(texts[0]) else 0.0

    references = [clean_whitespace(t) for t in texts]
    predicted = clean_whitespace(prediction)
    if len(set(references)) > 1:
        references = [process_digit_article(process_punctuation(r)) for r in references]
        predicted = process_digit_article(process_punctuation(predicted))
    # What the official script compares when it leaves a reference out: the annotation dict as it
    # is by then (its answer cleaned and perhaps processed); a plain string is its own entry.
    identities = [
        {**item, "answer": ref} if isinstance(item, Mapping) else ("position", i)
        for i, (item, ref) in enumerate(zip(answers, references))
    ]
    return leave_one_out(predicted, references, identities)


def _check_answers(raw: Any, where: str, answers_key: str) -> list[Any]:
    """The answers field as a validated list of strings / ``{"answer": str}`` dicts."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, (list, tuple)):
        raise ValueError(
            f"{where}: {answers_key!r} must be a string, a list of strings or "
            f"a list of {{'answer': ...}} objects, got {type(raw).__name__}"
        )
    if not raw:
        raise ValueError(f"{where}: {answers_key!r} is empty")
    for position, item in enumerate(raw):
        if isinstance(item, Mapping):
            if "answer" not in item:
                raise ValueError(f"{where}: {answers_key!r}[{position}] has no 'answer' key")
            item = item["answer"]
        if not isinstance(item, str):
            raise ValueError(f"{where}: {answers_key!r}[{position}] must be a string, got {type(item).__name__}")
    return list(raw)


def _type_key(value: Any) -> str:
    """Metric-name form of a question / answer type: lower case, whitespace runs -> ``_``."""
    return "_".join(str(value).lower().split())


def _group_means(groups: dict[str, list[float]]) -> dict[str, float]:
    return {key: sum(groups[key]) / len(groups[key]) for key in sorted(groups)}


def score_samples(
    samples: Iterable[Mapping],
    prediction_key: str = "prediction",
    answers_key: str = "answers",
    accuracy: Callable[[str, list[Any]], float] = vqa_accuracy,
    label: str = "row",
) -> tuple[dict[str, Any], list[float]]:
    """Score many samples with ``accuracy(prediction, answers)`` (:func:`vqa_accuracy` by default).

    Each sample is a mapping with a prediction string under ``prediction_key`` and references
    under ``answers_key``: a list of strings, a list of ``{"answer": ...}`` dicts (the VQAv2
    annotation form) or a single string.

    Returns ``(metrics, per_sample_scores)``.  ``metrics`` holds

    * ``accuracy``: mean score over all samples, in [0, 1];
    * ``count``: the number of samples;
    * ``per_type``: ``{question_type: accuracy}`` over the samples that carry a non-empty
      ``question_type`` (keys lower-cased, whitespace runs -> ``_``), when any does;
    * ``per_answer_type``: the same for ``answer_type`` (VQAv2: ``yes/no``, ``number``,
      ``other``), when any sample carries one;
    * ``yes_ratio``, present when at least one sample's normalised references are all
      "yes"/"no": the fraction of those samples whose normalised prediction is "yes" (a bias
      check for yes/no questions; not an official metric).

    Raises ``ValueError`` naming the 0-based record (``"<label> N: ..."``) for a sample that is
    not a mapping, lacks either key or has malformed answers, and when there are no samples.
    """
    scores: list[float] = []
    by_type: dict[str, list[float]] = {}
    by_answer_type: dict[str, list[float]] = {}
    yes_no_total = 0
    yes_no_said_yes = 0

    for row, sample in enumerate(samples):
        where = f"{label} {row}"
        if not isinstance(sample, Mapping):
            raise ValueError(
                f"{where}: expected a mapping with {prediction_key!r} and {answers_key!r}, got {type(sample).__name__}"
            )
        for key in (prediction_key, answers_key):
            if key not in sample:
                raise ValueError(f"{where}: missing {key!r} (each line needs {prediction_key!r} and {answers_key!r})")
        prediction = sample[prediction_key]
        if not isinstance(prediction, str):
            raise ValueError(f"{where}: {prediction_key!r} must be a string, got {type(prediction).__name__}")
        references = _check_answers(sample[answers_key], where, answers_key)

        score = accuracy(prediction, references)
        scores.append(score)

        for field, groups in (("question_type", by_type), ("answer_type", by_answer_type)):
            value = sample.get(field)
            key = _type_key(value) if value is not None else ""
            if key:
                groups.setdefault(key, []).append(score)

        texts = [r["answer"] if isinstance(r, Mapping) else r for r in references]
        if all(normalize_answer(t) in _YES_NO for t in texts):
            yes_no_total += 1
            if normalize_answer(prediction) == "yes":
                yes_no_said_yes += 1

    if not scores:
        raise ValueError("no samples to score")

    metrics: dict[str, Any] = {"accuracy": sum(scores) / len(scores), "count": len(scores)}
    if by_type:
        metrics["per_type"] = _group_means(by_type)
    if by_answer_type:
        metrics["per_answer_type"] = _group_means(by_answer_type)
    if yes_no_total:
        metrics["yes_ratio"] = yes_no_said_yes / yes_no_total
    return metrics, scores
