"""The ``multiple-choice`` evaluator: MMBench / SEED-Bench style questions with lettered options.

Reference
---------
Y. Liu, H. Duan, Y. Zhang et al., "MMBench: Is Your Multi-modal Model an All-around Player?",
ECCV 2024 (CircularEval and rule-based choice extraction), as implemented by the official
evaluation in VLMEvalKit (``can_infer_option`` / ``can_infer_text`` / ``can_infer`` in
``vlmeval/utils/matching_util.py``; ``prefetch_circular_group``, ``mcq_circular_eval`` and
``report_acc`` in ``vlmeval/dataset/utils/multiple_choice.py``); SEED-Bench (B. Li et al. 2023)
is the same task scored once per question (``circular: false``). This module is an independent,
standard-library-only re-implementation.

Samples and prompts
-------------------
A sample carries its question in the last user turn (with any ``<image>`` placeholder), ``options``
(``{"A": "cat", "B": "dog"}``, or a list of texts lettered A, B, C, ...) and ``answer`` (the correct
letter, or the correct option's text; else the last assistant turn). The prompt is the conversation
up to the last assistant turn with the options and ``instruction`` appended to the last user turn::

    <image>
    What animal is this?
    A. cat
    B. dog
    Answer with the option's letter from the given choices directly.

Choice extraction (:func:`extract_choice`, done in ``score`` because it needs the options)
-------------------------------------------------------------------------------------------
Only the letters of this question's options count. The first step that gives one letter wins:

1. *Lone letter*: the whole answer is one option letter, in either case, possibly wrapped in
   ``.()[]{}:;,!*#'"`` or spaces (``"b"``, ``"(B)"``, ``"**C**"``, ``"D."``).
2. *Answer phrase*: ``answer``, ``option`` or ``choice`` (any case), optionally followed by ``is``
   and ``:``, then an upper-case letter, optionally in brackets (``"Answer: B"``, ``"The answer is
   (C)"``, ``"option D"``); used when all such phrases name the same option.
3. *MMBench letter match*: ``.()[],:;!*#{}`` become spaces, the text is split on whitespace, and
   the tokens that are exactly an upper-case option letter are collected; exactly one distinct
   letter -> that letter. (``"B. dog"``, ``"I choose C because"``.)
4. *Option text*: the answer (lower-cased, whitespace runs collapsed, trailing ``.``/``!`` dropped)
   equal to exactly one option's text; else, as MMBench, each option text that occurs in the
   lower-cased answer is a candidate, exactly one candidate -> its letter, and an answer longer than
   twice the options' total text length matches nothing.

Anything else (no letter and no option text, or several) is *unparsed*: counted as wrong and
reported in ``unparsed``.

Quirks of the official evaluation reproduced here
-------------------------------------------------
* Step 3 is MMBench's ``can_infer_option``: the same punctuation set, whitespace tokens, exact
  upper-case option letters only (``"a"`` or ``"E"`` for a 4-option question never count), and
  two or more distinct letters (``"A or B"``) fall through to the option-text step.
* Step 4 (second half) is MMBench's ``can_infer_text``: lower-cased substring search, exactly one
  candidate, and no text match at all when the answer is longer than twice the summed option texts.
* A question with no usable answer is wrong (VLMEvalKit's exact-matching mode records "Z").
* CircularEval: a question with N options is asked N times, rotation k showing the option texts
  shifted by k (ABCD, BCDA, CDAB, DABC), with the correct letter moved accordingly; the question
  is correct only if every rotation's extracted letter is the correct one.
* Per-category accuracy is the accuracy (circular when circular) over the questions of each
  ``category``.

Deliberate differences
----------------------
* No LLM judge: VLMEvalKit asks ChatGPT to map an unmatched answer to an option (and picks at
  random when that fails); here it stays unparsed and wrong, as in VLMEvalKit's exact-matching mode.
* Steps 1, 2 and the exact-text half of step 4 are additions, tried before MMBench's rules, so a
  lower-case lone letter or "The answer is B, not A" are read, and an answer equal to one option's
  text is not blocked by another option being its substring ("dark red" vs "red").
* The article "A": when step 3 finds only ``A`` in an answer of more than three tokens, and step 4
  finds a single option by text, the text wins (``"A white cat sleeps."`` with B = "white cat"
  -> B); when the text finds nothing, ``A`` stays. MMBench guards this only with ``VERBOSE`` set,
  and then drops the letter whenever ``A`` is a token of an answer of more than three tokens.
* Option texts are compared with whitespace runs collapsed on both sides (MMBench only
  lower-cases), and empty option texts never match.
* Refusals ("Sorry, I can't help...") are mapped to "Z" by VLMEvalKit; here they are unparsed
  (both are wrong). Later VLMEvalKit versions also restrict where in the answer the letter may
  appear; that rule is not reproduced.
* Rotations are made by the evaluator (:meth:`MultipleChoiceEvaluator.variants`); MMBench ships
  them pre-computed (``index + k * 10**6``). Samples that already carry ``rotation`` (and
  ``circular_id``) are taken as pre-rotated and asked as they are.
* A question with fewer rotations in the records than options (e.g. a sample limit cut the group)
  is scored on the rotations present and counted in ``incomplete``.
* ``vanilla_accuracy`` (rotation 0 only) is reported next to the circular ``accuracy``; MMBench's
  ``hint`` field and ``l2-category`` breakdown are not used.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any, cast

from vlmplug.contracts import EvaluatorBase
from vlmplug.errors import DataError

from ._common import conversation

__all__ = [
    "MultipleChoiceEvaluator",
    "answer_letter",
    "build",
    "extract_choice",
    "normalize_options",
    "rotate",
    "score_records",
]

LETTERS = string.ascii_uppercase

# MMBench's can_infer_option turns these into spaces before splitting.
_MMBENCH_PUNCTUATION = ".()[],:;!*#{}"
_MMBENCH_TABLE = str.maketrans(dict.fromkeys(_MMBENCH_PUNCTUATION, " "))
_WRAPPING = " \t\r\n.()[]{}:;,!*#'\""
_ANSWER_PHRASE = re.compile(
    r"\b(?i:answer|option|choice)\b\s*(?:(?i:is)\b\s*)?:?\s*[\(\[]?\s*([A-Z])\b",
)


# -- options and answers ----------------------------------------------------------------------------


def _option_text(value: Any, where: str) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where} must be a string, got {type(value).__name__}")


def normalize_options(raw: Any) -> dict[str, str]:
    """``{letter: text}`` in letter order from a dict ``{letter: text}`` (``None`` / NaN values, as
    MMBench's unused columns, are dropped) or a list of texts lettered A, B, C, ...; numbers become
    text. Raises ``ValueError`` for anything else."""
    options: dict[str, str] = {}
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            if not isinstance(key, str) or len(key) != 1 or key not in LETTERS:
                raise ValueError(f"'options' keys must be single letters A-Z, got {key!r}")
            text = _option_text(value, f"'options'[{key!r}]")
            if text is not None:
                options[key] = text
        options = dict(sorted(options.items()))
    elif isinstance(raw, (list, tuple)):
        if len(raw) > len(LETTERS):
            raise ValueError(f"'options' has {len(raw)} entries, at most {len(LETTERS)} can be lettered")
        for k, value in enumerate(raw):
            text = _option_text(value, f"'options'[{k}]")
            if text is None:
                raise ValueError(f"'options'[{k}] is empty (a list of options cannot skip one)")
            options[LETTERS[k]] = text
    else:
        raise ValueError(f"'options' must be a dict letter -> text or a list of texts, got {type(raw).__name__}")
    if not options:
        raise ValueError("'options' is empty")
    return options


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def answer_letter(answer: Any, options: Mapping[str, str]) -> str:
    """The letter of the correct option: ``answer`` itself when it is one of the option letters,
    else the option whose text equals it (case and whitespace runs ignored; numbers are read as
    text). Raises ``ValueError`` when it names no option or several."""
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"'answer' must be an option letter or an option's text, got {answer!r}")
    text = answer.strip() if isinstance(answer, str) else str(answer)
    if text in options:
        return text
    exact = [k for k, v in options.items() if v == text]
    matches = exact or [k for k, v in options.items() if _norm(v) == _norm(text)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"'answer' {answer!r} is the text of several options ({', '.join(matches)})")
    raise ValueError(f"'answer' {answer!r} is neither an option letter ({', '.join(options)}) nor an option's text")


def rotate(options: Mapping[str, str], k: int) -> dict[str, str]:
    """The options with their texts shifted by ``k``: letter ``i`` shows the text of letter ``i + k``
    (circularly), e.g. ABCD -> BCDA for ``k = 1``."""
    letters, texts = list(options), list(options.values())
    return {letter: texts[(i + k) % len(texts)] for i, letter in enumerate(letters)}


def _rotated_letter(letter: str, options: Mapping[str, str], k: int) -> str:
    letters = list(options)
    return letters[(letters.index(letter) - k) % len(letters)]


# -- choice extraction ------------------------------------------------------------------------------


def _text_match(text: str, options: Mapping[str, str]) -> str | None:
    said = _norm(text).rstrip(".! ")
    exact = [k for k, v in options.items() if _norm(v) == said]
    if len(exact) == 1:
        return exact[0]
    # MMBench's can_infer_text: refuse long answers, then a unique substring match.
    if len(text) > 2 * sum(len(v) for v in options.values()):
        return None
    lowered = _norm(text)
    found = [k for k, v in options.items() if _norm(v) and _norm(v) in lowered]
    return found[0] if len(found) == 1 else None


def extract_choice(text: str, options: Mapping[str, str]) -> str | None:
    """The option letter a generated answer picks, or ``None`` when none or several can be read
    (the procedure of the module docstring)."""
    stripped = text.strip()
    if not stripped:
        return None
    bare = stripped.strip(_WRAPPING)
    if len(bare) == 1 and bare.upper() in options:  # 1. lone letter
        return bare.upper()
    named = {m for m in _ANSWER_PHRASE.findall(stripped) if m in options}  # 2. answer phrase
    if len(named) == 1:
        return named.pop()
    tokens = stripped.translate(_MMBENCH_TABLE).split()  # 3. MMBench letter match
    letters = {t for t in tokens if t in options}
    by_text = _text_match(stripped, options)  # 4. option text
    if len(letters) == 1:
        letter = letters.pop()
        if letter == "A" and len(tokens) > 3 and by_text is not None:  # "A" as an article
            return by_text
        return letter
    return by_text


# -- scoring ----------------------------------------------------------------------------------------


def _key(value: Any, row: int) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"record {row}: 'circular_id' must be a string or an integer, got {value!r}")
    return value


def _rotation(value: Any, row: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"record {row}: 'rotation' must be a non-negative integer, got {value!r}")
    return value


def score_records(records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[float]]:
    """``(metrics, per-record correctness)`` of records ``{"prediction", "options", "answer",
    "circular_id"?, "rotation"?, "category"?}``.

    When any record has ``rotation > 0`` the records are grouped by ``circular_id`` and a question
    is correct only if all its records are (CircularEval); otherwise every record is a question.
    ``metrics``: ``accuracy``, ``vanilla_accuracy`` (records with rotation 0; absent when there are
    none), ``unparsed`` (records whose answer could not be read), ``questions``, ``records``,
    ``incomplete`` (circular only: questions with fewer rotations than options) and
    ``per_category`` when records carry ``category``. Raises ``ValueError("record N: ...")``."""
    correct: list[bool] = []
    rotations: list[int] = []
    keys: list[Any] = []
    categories: list[str | None] = []
    sizes: list[int] = []
    unparsed = 0
    for row, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"record {row}: expected a mapping with 'prediction', 'options' and 'answer'")
        for key in ("prediction", "options", "answer"):
            if key not in record:
                raise ValueError(f"record {row}: missing {key!r} (each record needs 'prediction', 'options', 'answer')")
        prediction = record["prediction"]
        if not isinstance(prediction, str):
            raise ValueError(f"record {row}: 'prediction' must be a string, got {type(prediction).__name__}")
        try:
            options = normalize_options(record["options"])
            answer = answer_letter(record["answer"], options)
        except ValueError as e:
            raise ValueError(f"record {row}: {e}") from None
        choice = extract_choice(prediction, options)
        unparsed += choice is None
        correct.append(choice == answer)
        rotations.append(_rotation(record.get("rotation") or 0, row))
        keys.append(record.get("circular_id"))
        category = record.get("category")
        categories.append(None if category is None else str(category))
        sizes.append(len(options))
    if not correct:
        raise ValueError("no records to score")

    circular = any(rotations)
    groups: dict[Any, list[int]] = {}
    if circular:
        seen: dict[tuple[Any, int], int] = {}
        for row, (raw, rotation) in enumerate(zip(keys, rotations)):
            if raw is None:
                raise ValueError(f"record {row}: missing 'circular_id' (needed to group the rotations of a question)")
            cid = _key(raw, row)
            if (cid, rotation) in seen:
                raise ValueError(
                    f"record {row}: circular_id {cid!r} rotation {rotation} appears twice "
                    f"(also record {seen[cid, rotation]}); every question needs its own circular_id"
                )
            seen[cid, rotation] = row
            groups.setdefault(cid, []).append(row)
    else:
        groups = {row: [row] for row in range(len(correct))}

    hits = {key: all(correct[i] for i in rows) for key, rows in groups.items()}
    metrics: dict[str, Any] = {"accuracy": sum(hits.values()) / len(hits)}
    vanilla = [c for c, r in zip(correct, rotations) if r == 0]
    if vanilla:
        metrics["vanilla_accuracy"] = sum(vanilla) / len(vanilla)
    metrics["unparsed"] = unparsed
    metrics["questions"] = len(groups)
    metrics["records"] = len(correct)
    if circular:
        metrics["incomplete"] = sum(len(rows) < sizes[rows[0]] for rows in groups.values())
    per_category: dict[str, list[bool]] = {}
    for key, rows in groups.items():
        category = next((categories[i] for i in rows if categories[i] is not None), None)
        if category is not None:
            per_category.setdefault(category, []).append(hits[key])
    if per_category:
        metrics["per_category"] = {c: sum(v) / len(v) for c, v in sorted(per_category.items())}
    return metrics, [1.0 if c else 0.0 for c in correct]


# -- the evaluator ----------------------------------------------------------------------------------


def _data_error(sample: Mapping[str, Any], message: str) -> DataError:
    return DataError(f"multiple-choice sample: {message}", reason="malformed-row", where=sample.get("_where"))


def _stable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return "sha1:" + hashlib.sha1(bytes(value)).hexdigest()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    return type(value).__name__  # a PIL image or another object: no stable text form


class MultipleChoiceEvaluator(EvaluatorBase):
    primary_metric = "accuracy"

    def __init__(self, config: Any):
        self.instruction = config.instruction
        self.circular = bool(config.circular)

    def _options(self, sample: Mapping[str, Any]) -> dict[str, str]:
        if sample.get("options") is None:
            raise _data_error(sample, "no 'options' (a dict letter -> text or a list of texts)")
        try:
            return normalize_options(sample["options"])
        except ValueError as e:
            raise _data_error(sample, str(e)) from None

    def _answer(self, sample: Mapping[str, Any], options: Mapping[str, str]) -> str:
        raw = sample.get("answer")
        if raw is None:
            turns = [m["content"] for m in sample.get("messages", ()) if m["role"] == "assistant"]
            if not turns:
                raise _data_error(sample, "no 'answer' and no assistant turn to take it from")
            raw = turns[-1]
        try:
            return answer_letter(raw, options)
        except ValueError as e:
            raise _data_error(sample, str(e)) from None

    def _circular_id(self, sample: Mapping[str, Any], options: Mapping[str, str]) -> str | int:
        """The sample's ``id``, else a hash of its row, conversation, images and options (the same
        for every copy of the sample, whatever its position in the dataset)."""
        sid = sample.get("id")
        if isinstance(sid, (str, int)) and not isinstance(sid, bool):
            return sid
        content = {k: sample.get(k) for k in ("_where", "messages", "images", "videos")}
        blob = json.dumps(_stable({**content, "options": dict(options)}), sort_keys=True)
        return "mc-" + hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]

    def variants(self, sample: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The copies of ``sample`` to ask: the sample itself when ``circular`` is off or it already
        carries a ``rotation``; else one copy per rotation of its options (``options`` rotated,
        ``answer`` the new letter, ``circular_id`` and ``rotation`` set)."""
        if not self.circular or sample.get("rotation") is not None:
            return [cast(dict[str, Any], sample)]
        options = self._options(sample)
        answer = self._answer(sample, options)
        key = self._circular_id(sample, options)
        return [
            {
                **sample,
                "options": rotate(options, k),
                "answer": _rotated_letter(answer, options, k),
                "circular_id": key,
                "rotation": k,
            }
            for k in range(len(options))
        ]

    def prompt(self, sample: Mapping[str, Any]) -> list[dict[str, str]]:
        """The conversation up to the last assistant turn, the options ("A. text" lines) and
        ``instruction`` appended to the last user turn."""
        options = self._options(sample)
        msgs = conversation(sample, "")
        lines = [msgs[-1]["content"], *(f"{k}. {v}" for k, v in options.items())]
        if self.instruction:
            lines.append(self.instruction)
        msgs[-1]["content"] = "\n".join(lines)
        return msgs

    def references(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """``answer`` (a letter), ``options`` (``{letter: text}``), ``circular_id``, ``rotation``
        (0 for a sample that was not rotated) and ``category`` when present."""
        options = self._options(sample)
        rotation = sample.get("rotation") or 0
        circular_id = sample.get("circular_id")
        if circular_id is None:
            if rotation:
                raise _data_error(
                    sample, "a pre-rotated sample ('rotation' set) needs the 'circular_id' of its question"
                )
            circular_id = self._circular_id(sample, options)
        out: dict[str, Any] = {
            "answer": self._answer(sample, options),
            "options": options,
            "circular_id": circular_id,
            "rotation": rotation,
        }
        if sample.get("category") is not None:
            out["category"] = sample["category"]
        return out

    def parse(self, text: str) -> str:
        """The generated text, stripped; the option letter is read in :meth:`score`, which knows the
        options (see :func:`extract_choice`)."""
        return text.strip()

    def score(self, records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[float]]:
        return score_records(records)


def build(config: Any, ctx: Any) -> MultipleChoiceEvaluator:
    return MultipleChoiceEvaluator(config)
