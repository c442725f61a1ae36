"""``llm-judge``: MM-Vet-style grading (Yu et al. 2023) by a judge model behind any OpenAI-compatible
``/v1/chat/completions`` endpoint.

For each record a few-shot rubric prompt (question, ground truth, prediction) asks the judge for a
correctness score between 0.0 and 1.0; the mean is ``score``, with means per ``capability`` (or
``category``) when the records carry them. Replies without a score are asked again and, after
``retries``, counted as ``unparsed`` and scored 0. ``base_url`` and ``model`` are required.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class LlmJudgeConfig:
    base_url: str = field(
        default="",
        metadata={
            "help": "API root of the OpenAI-compatible judge server (required), e.g. https://api.openai.com/v1 "
            "or http://127.0.0.1:8000/v1; requests go to BASE_URL/chat/completions."
        },
    )
    model: str = field(
        default="", metadata={"help": "The judge model's name on that server (required); MM-Vet used gpt-4-0613."}
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={
            "help": "Name of the environment variable holding the API key (sent as a bearer token). The default "
            "one may be unset (no key, for local servers); another name must be set; '' never sends a key."
        },
    )
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the first request (MM-Vet: 0)."})
    retry_temperature_step: float = field(
        default=0.5,
        metadata={
            "help": "Added to the temperature at each re-ask after a reply without a score (MM-Vet: 0.5); at most 2."
        },
    )
    max_tokens: int = field(
        default=3,
        metadata={"help": "max_tokens of each request (MM-Vet: 3); 0 sends none (judges that reason first need more)."},
    )
    timeout: float = field(default=60.0, metadata={"help": "Seconds to wait for each request."})
    retries: int = field(
        default=5,
        metadata={
            "help": "Retries of a failed request (connection error, timeout, HTTP 429/5xx; backoff, Retry-After "
            "honoured) and re-asks after a reply without a score (then scored 0 and counted as unparsed)."
        },
    )
    concurrency: int = field(default=4, metadata={"help": "Records judged at the same time."})
    parse: Literal["first-number", "mmvet"] = field(
        default="first-number",
        metadata={
            "help": "How a score is read from the reply: the first number in [0, 1] ('Score: 0.8', '80%'), or, "
            "as MM-Vet's script, the reply's first space-separated word as a number in [0, 1]."
        },
    )
    prompt_template: str = field(
        default="",
        metadata={
            "help": "Judge prompt with the placeholders {question}, {answer} and {prediction} (other braces are "
            "kept); empty: the built-in MM-Vet-style few-shot rubric."
        },
    )
    retry_suffix: str = field(
        default="\nReply with the correctness score only, one number from 0.0 to 1.0: ",
        metadata={"help": "Appended to the prompt when the judge is asked again after a reply without a score."},
    )
    prompt_suffix: str = field(
        default="", metadata={"help": "Appended to the last user turn when the evaluated model generates."}
    )


SPEC = ComponentSpec(
    name="llm-judge",
    summary="MM-Vet-style 0-1 correctness score from a judge LLM behind an OpenAI-compatible endpoint",
    factory="vlmplug.plugins.evaluators._llm_judge:build",
    config=LlmJudgeConfig,
    test_options={"base_url": "{chat_stub_url}", "model": "stub", "retries": 0},
)


@hookimpl
def register_evaluators(register) -> None:
    register(SPEC)
