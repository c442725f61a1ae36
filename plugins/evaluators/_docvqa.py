"""The ``docvqa`` evaluator: ANLS as the official DocVQA evaluation computes it.

Reference
---------
A. F. Biten, R. Tito, A. Mafla, L. Gomez, M. Rusiñol, E. Valveny, C. V. Jawahar and D. Karatzas,
"Scene Text Visual Question Answering", ICCV 2019 (ANLS, introduced for ST-VQA); and the official
scoring script of the DocVQA / InfographicVQA challenges of the Robust Reading Competition
(``evaluate_method`` of the script distributed at docvqa.org and rrc.cvc.uab.es; the same code is
copied by Qwen-VL's and lmms-eval's ANLS). This module is an independent, standard-library-only
re-implementation of that script's rules.

Method
------
For one question with prediction ``p`` and reference answers ``a_1 .. a_M``::

    NLD(a, p) = lev(norm(a), norm(p)) / max(len(a.upper()), len(p.upper()))   (0 when that length is 0)
    s         = 1 - min_j NLD(a_j, p)
    score     = 0 if s < threshold else s

and ANLS is the mean of the per-question scores. ``norm`` strips the ends, lower-cases and joins the
whitespace-separated words with single spaces.

Quirks of the official script reproduced here
---------------------------------------------
* **Normalisation** (both the prediction and every answer): ``strip()``, ``lower()``, then runs of
  any whitespace (``str.split()``: spaces, tabs, newlines, Unicode spaces) become one space. Nothing
  else: punctuation, articles and accents are kept, so ``"$5"`` vs ``"5"`` costs one edit.
* **The denominator uses the raw strings**, not the normalised ones: ``max(len(a.upper()),
  len(p.upper()))``. Surrounding or repeated whitespace therefore lengthens the denominator without
  adding to the distance (``p = "abc   "`` vs ``a = "abd"``: distance 1, length 6, score 5/6, where
  the normalised lengths would give 2/3), and ``upper()`` can lengthen a string (``"ß"`` -> ``"SS"``).
* **Empty strings**: when the raw prediction and the raw answer are both empty the length is 0 and
  the NLD is defined as 0, i.e. a perfect match. An empty prediction against a non-empty answer has
  distance ``len(norm(a))``, so it scores 0 unless the answer is padded with enough whitespace to
  lift ``1 - len(norm(a)) / len(a)`` to the threshold (``a = "x   "``: 1 - 1/4 = 0.75).
* **Threshold**: a similarity strictly below the threshold becomes 0; one exactly at the threshold
  is kept (``"abcd"`` vs ``"abxy"``: 1 - 2/4 = 0.5 is kept at threshold 0.5).
* **Best answer**: the minimum NLD over the answers is taken before thresholding (the same as
  thresholding each answer and taking the maximum).
* The edit distance is the plain Levenshtein distance (insert, delete, substitute, each 1) over
  Unicode code points.

Deliberate differences
----------------------
* Records are scored in order; the official script matches predictions to questions by
  ``questionId`` and refuses a submission with missing or extra ids.
* A question with no reference answer raises ``ValueError`` (the official ``min`` of an empty list
  crashes); a prediction that is not a string raises ``ValueError`` (the official validation refuses
  a list answer too).
* ``answers`` may be a single string (read as one answer).
* ``accuracy`` (exact match of the normalised prediction with a normalised answer) is an extra
  metric, not part of the official output.
* Excluded question ids, per answer-type / evidence / operation breakdowns (InfographicVQA) are not
  implemented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vlmplug.contracts import EvaluatorBase
from vlmplug.errors import DataError

from ._common import conversation

__all__ = ["DocvqaEvaluator", "anls", "build", "exact_match", "levenshtein", "normalize", "score_records"]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each costing 1) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalize(text: str) -> str:
    """The official normalisation: strip, lower-case, whitespace runs -> one space."""
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """ANLS of one prediction against its reference answers, in [0, 1] (see the module docstring)."""
    if not answers:
        raise ValueError("answers must contain at least one reference answer")
    predicted = normalize(prediction)
    distances = []
    for answer in answers:
        length = max(len(answer.upper()), len(prediction.upper()))  # raw strings, as the official script
        distances.append(0.0 if length == 0 else levenshtein(normalize(answer), predicted) / length)
    similarity = 1.0 - min(distances)
    return 0.0 if similarity < threshold else similarity


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised answer, else 0.0."""
    predicted = normalize(prediction)
    return 1.0 if any(normalize(a) == predicted for a in answers) else 0.0


def _answers(raw: Any, row: int) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"record {row}: 'answers' must be a list of strings, got {type(raw).__name__}")
    if not raw:
        raise ValueError(f"record {row}: 'answers' is empty (each question needs at least one reference answer)")
    for k, item in enumerate(raw):
        if not isinstance(item, str):
            raise ValueError(f"record {row}: 'answers'[{k}] must be a string, got {type(item).__name__}")
    return list(raw)


def score_records(records: Sequence[Mapping[str, Any]], threshold: float = 0.5) -> tuple[dict[str, Any], list[float]]:
    """``(metrics, per-record ANLS)`` of records ``{"prediction": str, "answers": [str, ...]}``.

    ``metrics``: ``anls`` (mean ANLS), ``accuracy`` (mean exact match after normalisation) and
    ``count``. Raises ``ValueError("record N: ...")`` for a record that is not a mapping, lacks a
    key or has a bad value, and when there are no records."""
    scores: list[float] = []
    matches: list[float] = []
    for row, record in enumerate(records):
        if not isinstance(record, Mapping):
            kind = type(record).__name__
            raise ValueError(f"record {row}: expected a mapping with 'prediction' and 'answers', got {kind}")
        for key in ("prediction", "answers"):
            if key not in record:
                raise ValueError(f"record {row}: missing {key!r} (each record needs 'prediction' and 'answers')")
        prediction = record["prediction"]
        if not isinstance(prediction, str):
            raise ValueError(f"record {row}: 'prediction' must be a string, got {type(prediction).__name__}")
        answers = _answers(record["answers"], row)
        scores.append(anls(prediction, answers, threshold))
        matches.append(exact_match(prediction, answers))
    if not scores:
        raise ValueError("no records to score")
    metrics: dict[str, Any] = {
        "anls": sum(scores) / len(scores),
        "accuracy": sum(matches) / len(matches),
        "count": len(scores),
    }
    return metrics, scores


class DocvqaEvaluator(EvaluatorBase):
    primary_metric = "anls"

    def __init__(self, config: Any):
        self.threshold = float(config.threshold)
        self.suffix = config.prompt_suffix

    def prompt(self, sample: Mapping[str, Any]) -> list[dict[str, str]]:
        """The conversation up to the last assistant turn, ``prompt_suffix`` appended to the last turn."""
        return conversation(sample, self.suffix)

    def references(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """``answers`` (the sample's, else the last assistant turn)."""
        refs = sample.get("answers")
        if refs:
            return {"answers": [refs] if isinstance(refs, str) else list(refs)}
        turns = [m["content"] for m in sample["messages"] if m["role"] == "assistant"]
        if not turns:
            raise DataError(
                "docvqa sample has neither 'answers' nor an assistant turn to score against",
                reason="no-target",
                where=sample.get("_where"),
            )
        return {"answers": [turns[-1]]}

    def parse(self, text: str) -> str:
        """The first non-empty line, stripped."""
        text = text.strip()
        return text.splitlines()[0].strip() if text else ""

    def score(self, records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[float]]:
        return score_records(records, self.threshold)


def build(config: Any, ctx: Any) -> DocvqaEvaluator:
    return DocvqaEvaluator(config)
