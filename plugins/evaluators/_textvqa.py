"""TextVQA accuracy, computed as the standard TextVQA evaluator does, and the ``textvqa`` evaluator.

Reference
---------
A. Singh, V. Natarajan, M. Shah, Y. Jiang, X. Chen, D. Batra, D. Parikh and M. Rohrbach, "Towards
VQA Models That Can Read", CVPR 2019.  The accuracy is the one of ``TextVQAAccuracyEvaluator`` in
the M4C code of Pythia / MMF (``m4c_evaluators.py``), which normalises every answer with Pythia's
``EvalAIAnswerProcessor`` (``processors.py``); LLaVA's ``eval_textvqa.py`` scores with a copy of
that evaluator (``llava/eval/m4c_evaluator.py``).  This module is an independent,
standard-library-only re-implementation of those rules, reusing the VQA steps of
:mod:`._vqa_metric` where they are the same.

Method
------
Every answer, the prediction **and each reference**, goes through :func:`process_answer`:

1. lower-case; delete every ``","`` and ``"?"``; ``"'s"`` becomes ``" 's"``; strip the ends;
2. ``"\\n"`` and ``"\\t"`` become spaces; strip the ends;
3. the VQA punctuation step (:func:`._vqa_metric.process_punctuation`);
4. the VQA digit / article / contraction step (:func:`._vqa_metric.process_digit_article`).

For each distinct processed reference answer the evaluator computes the leave-one-out average
over the reference positions of ``min(1, matches among the other references / 3)``; the
prediction scores the value of the answer it equals, or 0.0.  With ten references a prediction
given by 0, 1, 2, 3 or >= 4 of them scores 0.0, 0.3, 0.6, 0.9 and 1.0.

Quirks of the official evaluator reproduced here
------------------------------------------------
* **Both sides are always normalised**, unlike VQAv2's script (which normalises only when the
  references disagree): ten references ``"yes"`` and the prediction ``"Yes."`` score 1.0.
* **Commas and question marks are deleted before the punctuation step**, so ``"10,000"`` ->
  ``"10000"`` and ``"a,b"`` -> ``"ab"`` (VQAv2: ``"b"``), and the VQA rule "a digit-comma-digit
  group deletes every mark" can never fire: ``"1,5 t-shirt"`` -> ``"15 t shirt"`` (VQAv2:
  ``"15 tshirt"``).  (The processor's own digit-comma pattern differs from VQA's, but no comma is
  left for either to see.)
* **``"'s"`` is split off** (after lower-casing): ``"McDonald's"`` -> ``"mcdonald 's"`` on both
  sides, so ``"mcdonalds"`` does not match it.
* The punctuation step's per-mark, whole-string decision, the deletion of periods not followed by
  a digit (at most 32 of them, the ``re.UNICODE``-as-``count`` slip), number words, articles and
  the contraction table (capitalised keys unreachable) are the VQA ones; see :mod:`._vqa_metric`.
* **Leave-one-out is by position** (the evaluator enumerates the references), so repeated answers
  count separately: three ``"coke"`` among ten give ``"coke"`` 0.9.

Deliberate differences (vlmplug extensions)
-------------------------------------------
* The official evaluator asserts exactly ten references.  Here two to nine (or more than ten)
  references use the same leave-one-out formula, and **a single reference is scored by exact
  match after processing both sides** (1.0 or 0.0; leave-one-out would always give 0.0).
* References may also be VQAv2-style ``{"answer": ...}`` dicts (their ``answer`` is used; leave-
  one-out stays by position).
* Scores are fractions in [0, 1], not percentages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._vqa import VqaEvaluator
from ._vqa_metric import leave_one_out, normalize_answer, score_samples

__all__ = ["process_answer", "textvqa_accuracy", "TextVqaEvaluator", "build"]


def process_answer(text: str) -> str:
    """An answer as the TextVQA evaluator's answer processor leaves it (steps 1-4 of the module docstring).

    >>> process_answer("McDonald's, Inc.?")
    "mcdonald 's inc"
    >>> process_answer("10,000")
    '10000'
    """
    if not isinstance(text, str):
        raise TypeError(f"answer must be a string, got {type(text).__name__}")
    # the processor's own first step, then the VQA steps (whitespace, punctuation, digits and articles)
    return normalize_answer(text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip())


def textvqa_accuracy(prediction: str, answers: Sequence[str | Mapping[str, Any]]) -> float:
    """TextVQA accuracy of one prediction against its reference answers, in [0, 1].

    Two or more references: the leave-one-out soft score of the processed prediction among the
    processed references (by position).  One reference: exact match after processing both.

    Raises ``ValueError`` if ``answers`` is empty or a dict lacks ``answer``, and ``TypeError`` if
    ``answers`` is a bare string or holds non-strings.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a list of strings, not a single string; wrap it in a list")
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a string, got {type(prediction).__name__}")
    references = []
    for position, item in enumerate(answers):
        if isinstance(item, Mapping):
            if "answer" not in item:
                raise ValueError(f"answers[{position}] has no 'answer' key")
            item = item["answer"]
        if not isinstance(item, str):
            raise TypeError(f"answers[{position}] must be a string, got {type(item).__name__}")
        references.append(process_answer(item))
    if not references:
        raise ValueError("answers must contain at least one reference answer")
    predicted = process_answer(prediction)
    if len(references) == 1:
        return 1.0 if predicted == references[0] else 0.0
    return leave_one_out(predicted, references)


class TextVqaEvaluator(VqaEvaluator):
    """Prompting, references (``answers``) and parsing as ``vqa``; scoring with :func:`textvqa_accuracy`.

    The answer-prior baseline is ``vqa``'s (the most common training answer), scored here."""

    def score(self, records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[float]]:
        return score_samples(list(records), accuracy=textvqa_accuracy, label="record")


def build(config: Any, ctx: Any) -> TextVqaEvaluator:
    return TextVqaEvaluator(config)
