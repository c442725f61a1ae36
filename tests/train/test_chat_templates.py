"""The built-in chat templates (``chat_template: llama3 | chatml | vicuna``): only the assistant turns
are labelled -- decoding each labelled run gives back exactly that turn's text and end marker -- and
the generation prompt the evaluator uses is the training encoding's own prefix.

A byte-level BPE tokenizer is trained here (it decodes any token run back to the exact text), so the
comparison is character for character."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from vlmplug.chat_templates import ASSISTANT_ENDINGS, TEMPLATES, VICUNA_SYSTEM, template_text
from vlmplug.errors import ConfigError
from vlmplug.train.data import IGNORE_INDEX, SampleEncoder

IMAGE = "<image>"
T = 3

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": f"{IMAGE}\nWhat colour is the big shape?"},
    {"role": "assistant", "content": "It is red."},
    {"role": "user", "content": "And how many shapes are there?"},
    {"role": "assistant", "content": "There are 3 shapes, one of them a circle."},
]


@pytest.fixture(scope="module")
def tok() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [m["content"] for m in CONVERSATION] + [VICUNA_SYSTEM, "USER: ASSISTANT: <|im_start|><|im_end|>"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    # the templates' markers are special tokens, as in the tokenizers each template belongs to
    markers = ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", IMAGE, *markers],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(texts * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        additional_special_tokens=[IMAGE, *markers],
    )


def _encoder(tok: Any, name: str) -> SampleEncoder:
    tok.chat_template = template_text(name)
    return SampleEncoder(tok, IMAGE, T, max_seq_length=4096)


def _labelled_runs(tok: Any, ids: list[int], labels: list[int]) -> list[str]:
    runs = []
    for labelled, group in itertools.groupby(zip(ids, labels), key=lambda x: x[1] != IGNORE_INDEX):
        if labelled:
            runs.append(tok.decode([t for t, _ in group]))
    return runs


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_only_the_assistant_turns_are_labelled(tok: Any, name: str) -> None:
    enc = _encoder(tok, name)
    ids, labels, slots = enc.encode({"messages": CONVERSATION, "images": ["x.png"]}, "row 1")
    before, after = ASSISTANT_ENDINGS[name]
    after = after.replace("{eos}", tok.eos_token)
    answers = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    if name == "llama3":
        answers = [a.strip() for a in answers]
    assert _labelled_runs(tok, ids, labels) == [before + a + after for a in answers]
    assert sum(t == enc.image_token_id for t in ids) == T and len(slots) == 1
    assert all(lb == IGNORE_INDEX for t, lb in zip(ids, labels) if t == enc.image_token_id)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_the_generation_prompt_is_the_training_prefix(tok: Any, name: str) -> None:
    """What the model sees when asked to answer is exactly what it saw before the answer in training."""
    enc = _encoder(tok, name)
    sample = {"messages": CONVERSATION, "images": ["x.png"]}
    ids, labels, _ = enc.encode(sample, "row 1")
    prompt, _ = enc.encode_prompt(CONVERSATION[:-1], sample, "row 1")
    assert ids[: len(prompt)] == prompt
    assert labels[len(prompt)] != IGNORE_INDEX and all(
        lb == IGNORE_INDEX for lb in labels[len(prompt) - 1 : len(prompt)]
    )


def test_vicuna_has_llavas_system_line_when_the_conversation_has_none(tok: Any) -> None:
    tok.chat_template = template_text("vicuna")
    text = tok.apply_chat_template(CONVERSATION[1:3], tokenize=False)
    assert text == f"{VICUNA_SYSTEM} USER: {IMAGE}\nWhat colour is the big shape? ASSISTANT: It is red.</s>"


def test_llama3_starts_with_bos_and_uses_headers(tok: Any) -> None:
    tok.chat_template = template_text("llama3")
    text = tok.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<s><|start_header_id|>system<|end_header_id|>\n\nYou answer briefly.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_a_bare_word_must_name_a_template() -> None:
    assert template_text("{{ messages }}") == "{{ messages }}"
    with pytest.raises(ConfigError, match=r"'chatlm' is neither a built-in template \(did you mean 'chatml'\?\)"):
        template_text("chatlm")


def test_a_recipe_names_a_template(run_recipe: Any) -> None:
    quiet = {"eval_datasets": [], "evaluators": [], "max_seq_length": 256}  # the markers are not in its vocab
    res = run_recipe(None, steps=1, chat_template="chatml", **quiet)
    assert res.tokenizer.chat_template == TEMPLATES["chatml"]
    saved = (res.run_dir / "model" / "tokenizer" / "chat_template.jinja").read_text()
    assert saved == TEMPLATES["chatml"]
