"""The ``llm-judge`` evaluator: a judge model grades each prediction against its ground truth with a
correctness score between 0.0 and 1.0, the way MM-Vet does.

Reference
---------
W. Yu, Z. Yang, L. Li, J. Wang, K. Lin, Z. Liu, X. Wang and L. Wang, "MM-Vet: Evaluating Large
Multimodal Models for Integrated Capabilities", ICML 2024 (arXiv:2308.02490, 2023); the official
grader is ``mm-vet_evaluator.py`` in the yuweihao/MM-Vet repository.  This module is an independent
re-implementation on the standard library's HTTP client (:mod:`vlmplug.plugins._openai_http`), so
any OpenAI-compatible ``/v1/chat/completions`` server can be the judge.

Reproduced from the official grader
-----------------------------------
* One user message per record: a few-shot rubric (instructions, then a ``Question | Ground truth |
  Prediction | Correctness`` table of graded examples) ending with the record's row and an empty last
  cell: ``{question} | {answer} | {prediction} | ``.  ``<AND>`` in the ground truth means every
  element must be in the prediction, ``<OR>`` that any one is enough; as in the official script, the
  ground truth is written with spaces around them (``-1<AND>-5`` -> ``-1 <AND> -5``).
* First request at temperature 0 with ``max_tokens`` 3, no system message.
* A reply without a usable score is asked again with a sentence appended to the prompt asking for
  the score alone, the temperature raised by 0.5 each time; after the last try the record scores 0.
* ``parse: mmvet`` reads the score like the official script: the reply's first space-separated word
  as a number, accepted only in [0, 1] (``"0.8"`` and ``"1"`` pass, ``"Score: 0.8"`` does not).
* Per-capability means: a record counts toward every capability in its ``capability`` list
  (``per_capability``), and toward its capability combination (``per_capability_set``, the
  official "capability integration" table, keyed by the capabilities sorted and joined by ``_``).

Deliberate differences
----------------------
* The built-in prompt is this module's own MM-Vet-style wording and examples, not the official text;
  for official numbers put the official prompt in ``prompt_template`` (it has no placeholders: add
  ``\\n{question} | {answer} | {prediction} | `` after it).
* ``parse: first-number`` (the default) takes the first number in [0, 1] anywhere in the reply
  (``"Score: 0.8"`` -> 0.8, ``"80%"`` -> 0.8, ``"1"`` -> 1.0); a judge that writes another number
  first (``"on a 0-1 scale: 0.7"``) is misread as 0.  NaN is never a score (the official ``float``
  parse would accept ``"nan"``).
* ``retries`` re-asks after the first reply (official: 5, and its sixth request is sent but never
  read); the temperature stops at 2, the most the OpenAI API accepts (the official script asks at 2.5
  on its last try, which that API rejects).  Replies still without a score are counted in
  ``unparsed`` and logged, not hidden in the mean.
* Rate limits (HTTP 429), server errors (5xx), timeouts and refused connections are retried with
  capped exponential backoff (``Retry-After`` honoured) up to ``retries`` times; the official script
  waits 30 s on a rate limit and retries forever.  A request that still fails, or any other HTTP
  error (a wrong key, URL or model), stops the scoring with an error naming the record: a record the
  judge never saw is not scored 0.
* Scores are fractions in [0, 1] (MM-Vet reports them x100, rounded to one decimal); a single run
  (MM-Vet's paper averages 5 runs and reports their standard deviation).
* ``answers`` (a list, e.g. VQA references) is read when there is no ``answer``: its distinct
  entries joined with `` <OR> ``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from functools import partial
from typing import Any

from vlmplug.contracts import EvaluatorBase
from vlmplug.errors import ConfigError, VlmplugError

from .._openai_http import Backoff, Endpoint, RequestFailed, chat_completions_url, reply_text, with_retries
from ._common import conversation

__all__ = ["DEFAULT_TEMPLATE", "JudgeError", "LlmJudgeEvaluator", "fill_template", "parse_score", "build"]

log = logging.getLogger(__name__)

#: The built-in rubric (MM-Vet's structure and scale, this module's wording and examples).
DEFAULT_TEMPLATE = """\
You grade the answers of an AI model to questions about images. Compare the model's prediction with \
the ground truth and give the prediction a correctness score. In the ground truth, <AND> means the \
prediction is fully correct only if it contains every listed element, and <OR> means it is fully \
correct if it contains any one of them. The score is one of 0.0 (completely wrong), 0.1, 0.2, 0.3, \
0.4, 0.5, 0.6, 0.7, 0.8, 0.9 or 1.0 (completely right). Reply with the score only, by filling in the \
empty last cell of the table.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
How many apples are on the table? | 3 | There are three apples on the table. | 1.0
How many apples are on the table? | 3 | 4 | 0.0
Which two colors does the flag have? | red <AND> white | The flag is red. | 0.5
Which two colors does the flag have? | red <AND> white | It is white with a red cross. | 1.0
What does the sign ask drivers to do? | stop <OR> halt | It tells drivers to come to a halt. | 1.0
Describe the weather in the picture. | It is a sunny summer day with a clear blue sky; the short \
shadows suggest it is around noon. | The sky is clear and it is sunny. | 0.6
{question} | {answer} | {prediction} | """

#: The temperature never goes above this (the OpenAI API's maximum).
MAX_TEMPERATURE = 2.0
_PLACEHOLDER = re.compile(r"\{(question|answer|prediction)\}")
_NUMBER = re.compile(r"[-+]?(?:[0-9][0-9.]*|\.[0-9]+)")


class JudgeError(VlmplugError):
    """The judge could not be asked (the endpoint failed or refused the request)."""


def fill_template(template: str, question: str, answer: str, prediction: str) -> str:
    """``template`` with ``{question}``, ``{answer}`` and ``{prediction}`` replaced in one pass (text
    inside the values is never substituted again; other braces are kept)."""
    values = {"question": question, "answer": answer, "prediction": prediction}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def parse_score(text: str, mode: str = "first-number") -> float | None:
    """The score in a judge's reply, or ``None`` when there is none in [0, 1].

    ``first-number``: the first number in [0, 1] in the text; a number followed by ``%`` is divided
    by 100.  ``mmvet``: the first space-separated word, read as a number, must be in [0, 1]."""
    if mode == "mmvet":
        word = text.split(" ")[0].strip()
        try:
            value = float(word)
        except ValueError:
            return None
        return value if 0.0 <= value <= 1.0 else None
    for m in _NUMBER.finditer(text):
        start = m.start()
        number = m.group().rstrip(".")  # a sentence's full stop is not part of the number
        end = start + len(number)
        if start > 0 and (text[start - 1].isalnum() or text[start - 1] in "._"):
            continue  # inside a word or a longer number ("gpt4", "v1.5")
        if end < len(text) and (text[end].isalnum() or text[end] == "_"):
            continue  # "0.5x"
        try:
            value = float(number)
        except ValueError:  # "1.2.3"
            continue
        if text[end:].lstrip(" ").startswith("%"):
            value /= 100.0
        if 0.0 <= value <= 1.0:
            return value
    return None


def _ground_truth(value: Any, where: str, key: str) -> str:
    """An ``answer`` string, or an ``answers`` list joined with `` <OR> ``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value:
        texts = []
        for i, item in enumerate(value):
            if isinstance(item, Mapping) and isinstance(item.get("answer"), str):
                item = item["answer"]  # VQAv2 annotation objects
            if not isinstance(item, str):
                raise ValueError(f"{where}: {key!r}[{i}] must be a string, got {type(item).__name__}")
            texts.append(item)
        return " <OR> ".join(dict.fromkeys(texts))
    if isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: {key!r} is empty")
    raise ValueError(f"{where}: {key!r} must be a string or a list of strings, got {type(value).__name__}")


def _capabilities(record: Mapping[str, Any], where: str) -> list[str] | str | None:
    """The record's ``capability`` (a list, or one name) or else ``category``; ``None`` if neither."""
    for key in ("capability", "category"):
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ValueError(f"{where}: {key!r} must be a string or a list of strings, got {value!r:.80}")
    return None


class LlmJudgeEvaluator(EvaluatorBase):
    primary_metric = "score"

    def __init__(self, config: Any, ctx: Any = None):
        problems = []
        if not str(config.base_url).strip():
            problems.append(
                "base_url is not set: give the judge server's API root, e.g. https://api.openai.com/v1 or "
                "http://127.0.0.1:8000/v1 (recipe: evaluators: [{name: llm-judge, base_url: URL, model: NAME}]; "
                "vlmplug score: --option base_url=URL)"
            )
        elif chat_completions_url(str(config.base_url).strip()) is None:
            problems.append(
                f"base_url {config.base_url!r}: not an http(s) URL; give the API root, e.g. http://host:8000/v1"
            )
        if not str(config.model).strip():
            problems.append("model is not set: give the judge model's name on that server (--option model=NAME)")
        template = config.prompt_template or DEFAULT_TEMPLATE
        missing = [p for p in ("{answer}", "{prediction}") if p not in template]
        if missing:
            problems.append(f"prompt_template has no {' and no '.join(missing)}: the judge must see what it grades")
        if config.retries < 0:
            problems.append(f"retries {config.retries}: must be 0 or more")
        if config.concurrency < 1:
            problems.append(f"concurrency {config.concurrency}: must be 1 or more")
        if not config.timeout > 0:
            problems.append(f"timeout {config.timeout}: must be more than 0 seconds")
        key = None
        if config.api_key_env:
            key = os.environ.get(config.api_key_env) or None
            if key is None and config.api_key_env != "OPENAI_API_KEY":
                problems.append(
                    f"api_key_env {config.api_key_env}: that environment variable is not set (or empty); export "
                    "it, or set api_key_env to '' for a server that needs no key"
                )
        if problems:
            raise ConfigError(problems, header="llm-judge is not configured")
        base_url = str(config.base_url).strip()
        self.endpoint = Endpoint(
            chat_completions_url(base_url) or base_url, str(config.model).strip(), key, config.timeout
        )
        self.template = template
        self.parse_mode = config.parse
        self.temperature = float(config.temperature)
        self.temperature_step = float(config.retry_temperature_step)
        self.max_tokens = int(config.max_tokens)
        self.retries = int(config.retries)
        self.concurrency = int(config.concurrency)
        self.retry_suffix = config.retry_suffix
        self.suffix = config.prompt_suffix
        core = getattr(getattr(ctx, "recipe", None), "core", None) or {}
        self.image_tokens = {"<image>", str(core.get("image_token") or "<image>")}
        self.backoff = Backoff()

    # -- the evaluation pipeline's side -------------------------------------------------------------------

    def prompt(self, sample: Mapping[str, Any]) -> list[dict[str, str]]:
        """The conversation up to (not including) the last assistant turn, the suffix appended to
        the turn before it."""
        return conversation(sample, self.suffix)

    def references(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """``question`` (the sample's, else the last user turn without image placeholders),
        ``answer`` (the sample's ``answer``, else its ``answers`` joined with `` <OR> ``, else the last
        assistant turn) and ``capability`` / ``category`` when the sample has them."""
        msgs = list(sample["messages"])
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
        question = sample.get("question")
        if not isinstance(question, str):
            users = [m["content"] for m in msgs[:last] if m["role"] == "user"]
            question = users[-1] if users else ""
            for token in self.image_tokens:
                question = question.replace(token, "")
            question = question.strip()
        if isinstance(sample.get("answer"), str):
            answer = sample["answer"]
        elif sample.get("answers"):
            answer = _ground_truth(sample["answers"], "sample", "answers")
        else:
            answer = msgs[last]["content"] if last < len(msgs) else ""
        out: dict[str, Any] = {"question": question, "answer": answer}
        for key in ("capability", "category"):
            if sample.get(key) is not None:
                out[key] = list(sample[key]) if isinstance(sample[key], (list, tuple)) else sample[key]
        return out

    def parse(self, text: str) -> str:
        """The whole generated text, stripped (the judge reads free-form answers)."""
        return text.strip()

    # -- scoring -------------------------------------------------------------------------------------------

    def _check(self, records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str, Any]]:
        """``(question, answer, prediction, capabilities)`` per record; ``ValueError`` naming the
        first bad record (nothing is sent before every record is checked)."""
        rows = []
        for n, record in enumerate(records):
            where = f"record {n}"
            if not isinstance(record, Mapping):
                raise ValueError(f"{where}: expected an object with 'prediction', 'question' and 'answer'")
            for key in ("prediction", "question"):
                if key not in record:
                    raise ValueError(
                        f"{where}: missing {key!r} (each line needs 'prediction', 'question' and 'answer')"
                    )
                if not isinstance(record[key], str):
                    raise ValueError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
            found = "answer" if "answer" in record else "answers" if "answers" in record else None
            if found is None:
                raise ValueError(f"{where}: missing 'answer' (each line needs 'prediction', 'question' and 'answer')")
            answer = _ground_truth(record[found], where, found)
            rows.append((record["question"], answer, record["prediction"], _capabilities(record, where)))
        if not rows:
            raise ValueError("no records to score")
        return rows

    def _judge(self, n: int, question: str, answer: str, prediction: str) -> tuple[float | None, int, str]:
        """Ask the judge about record ``n``: (score or ``None`` after every re-ask, requests sent, last reply)."""
        answer = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
        prompt = fill_template(self.template, question, answer, prediction)
        temperature = self.temperature
        requests = 0
        text = ""
        for attempt in range(self.retries + 1):
            payload: dict[str, Any] = {
                "model": self.endpoint.model,
                "messages": [{"role": "user", "content": prompt if attempt == 0 else prompt + self.retry_suffix}],
                "temperature": temperature,
            }
            if self.max_tokens > 0:
                payload["max_tokens"] = self.max_tokens
            try:
                body, retried = with_retries(partial(self.endpoint.post, payload), self.retries, self.backoff)
            except RequestFailed as e:
                raise JudgeError(
                    f"llm-judge: record {n}: the judge at {self.endpoint.url} gave no answer: {e}"
                ) from None
            requests += retried + 1
            try:
                text = reply_text(body)
            except RequestFailed as e:
                if e.reason != "empty-reply":
                    raise JudgeError(f"llm-judge: record {n}: {e}") from None
                text = ""
            score = parse_score(text, self.parse_mode)
            if score is not None:
                return score, requests, text
            temperature = min(temperature + self.temperature_step, MAX_TEMPERATURE)
        return None, requests, text

    def score(self, records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[float]]:
        """Judge every record (``concurrency`` at a time): ``score`` (mean, in [0, 1]), ``count``,
        ``unparsed`` (records still without a score after the re-asks, scored 0), ``requests`` (HTTP
        requests sent, retries included), ``per_capability`` / ``per_capability_set`` when records
        carry ``capability`` (or ``category``); the per-record score is the judge's."""
        rows = self._check(records)
        results: list[tuple[float | None, int, str] | None] = [None] * len(rows)
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(rows)))
        futures = {pool.submit(self._judge, n, q, a, p): n for n, (q, a, p, _) in enumerate(rows)}
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    raise error
            for future, n in futures.items():
                results[n] = future.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        scores: list[float] = []
        unparsed = []
        requests = 0
        for n, result in enumerate(results):
            assert result is not None
            value, sent, text = result
            requests += sent
            if value is None:
                unparsed.append((n, text))
            scores.append(0.0 if value is None else value)
        if unparsed:
            examples = "; ".join(f"record {n}: {text[:80]!r}" for n, text in unparsed[:3])
            log.warning(
                "llm-judge: %d of %d replies had no score in [0, 1] after %d re-ask(s), scored 0 (%s)",
                len(unparsed),
                len(rows),
                self.retries,
                examples,
            )
        metrics: dict[str, Any] = {
            "score": sum(scores) / len(scores),
            "count": len(scores),
            "unparsed": len(unparsed),
            "requests": requests,
        }
        by_capability: dict[str, list[float]] = {}
        by_set: dict[str, list[float]] = {}
        for (_, _, _, caps), value in zip(rows, scores):
            if caps is None:
                continue
            names = [caps] if isinstance(caps, str) else caps
            for name in dict.fromkeys(names):
                by_capability.setdefault(name, []).append(value)
            if not isinstance(caps, str):
                by_set.setdefault("_".join(sorted(set(caps))), []).append(value)
        if by_capability:
            metrics["per_capability"] = {k: sum(v) / len(v) for k, v in sorted(by_capability.items())}
        if by_set:
            metrics["per_capability_set"] = {k: sum(v) / len(v) for k, v in sorted(by_set.items())}
        return metrics, scores


def build(config: Any, ctx: Any) -> LlmJudgeEvaluator:
    return LlmJudgeEvaluator(config, ctx)
