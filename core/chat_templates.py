"""Built-in chat templates, selectable by name with ``chat_template: NAME``.

A tokenizer's own template is used when it has one; these are for base models without one, or to
train in a given conversation format. Each is written so that the rendering of a conversation's
first *k* turns plus the generation prompt is a prefix of the rendering with turn *k + 1*, which the
data pipeline needs to label only the assistant's tokens. What each assistant turn contributes to the
labels -- its text and the turn's end marker -- is :data:`ASSISTANT_ENDINGS` (tested per template by
decoding the labelled tokens).

* ``llama3``: Meta Llama 3 / 3.1 instruct format: ``<|start_header_id|>ROLE<|end_header_id|>`` then two
  newlines, the stripped content and ``<|eot_id|>``; the tokenizer's BOS token first.
* ``chatml``: ChatML (OpenAI; Qwen, SmolLM2, ...): ``<|im_start|>ROLE`` newline, content,
  ``<|im_end|>`` newline.
* ``vicuna``: Vicuna v1.1, the conversation format of LLaVA-1.5 (``conv_vicuna_v1``): a system line
  (LLaVA's default when the conversation has none), then ``USER: ... ASSISTANT: ...`` separated by
  single spaces, each assistant turn ending with the tokenizer's EOS token.
"""

from __future__ import annotations

from .errors import ConfigError, did_you_mean

__all__ = ["TEMPLATES", "ASSISTANT_ENDINGS", "VICUNA_SYSTEM", "template_text"]

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

_LLAMA3 = (
    "{{- bos_token or '' -}}"
    "{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

_CHATML = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_VICUNA = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- messages[0]['content'] + ' ' -}}{%- set turns = messages[1:] -%}"
    "{%- else -%}{{- '" + VICUNA_SYSTEM.replace("'", "\\'") + " ' -}}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'assistant' -%}{{- 'ASSISTANT: ' + m['content'] + eos_token -}}"
    "{%- else -%}{{- 'USER: ' + m['content'] + ' ' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

#: name -> Jinja template
TEMPLATES: dict[str, str] = {"llama3": _LLAMA3, "chatml": _CHATML, "vicuna": _VICUNA}

#: name -> ``(before, after)``: an assistant turn's labelled text is ``before + content + after``
#: (``{eos}`` in ``after`` stands for the tokenizer's EOS token; ``llama3`` strips the content).
ASSISTANT_ENDINGS: dict[str, tuple[str, str]] = {
    "llama3": ("", "<|eot_id|>"),
    "chatml": ("", "<|im_end|>\n"),
    "vicuna": (" ", "{eos}"),
}


def template_text(value: str | None) -> str | None:
    """A ``chat_template`` value as Jinja: a built-in's template for its name, a template as it is.
    A bare word that names no built-in is a :class:`ConfigError` (a typo, not a template)."""
    if value is None or value in TEMPLATES:
        return TEMPLATES.get(value or "", value)
    if "{{" not in value and "{%" not in value:
        raise ConfigError(
            f"chat_template: '{value}' is neither a built-in template{did_you_mean(value, TEMPLATES)} nor "
            f"Jinja; built-ins: {', '.join(TEMPLATES)}",
            header="chat_template",
        )
    return value
