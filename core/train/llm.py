"""The language model and its tokenizer.

``model`` is any ``AutoModelForCausalLM`` hub id or local path (the same code path for
``meta-llama/Meta-Llama-3.1-8B`` and a temp dir), or the preset ``tiny-llama``: a small random-init
Llama built from a config, with a byte-level BPE tokenizer trained offline on the run's own texts
(so nothing is downloaded). The image placeholder is added to every tokenizer as a special token,
but the LLM's embedding matrix is never resized for it: its positions are overwritten by vision
tokens, so a saved adapter carries no embedding matrix it does not train and loads onto the
unchanged base model with plain peft.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vlmplug.chat_templates import template_text
from vlmplug.errors import ConfigError

__all__ = [
    "PRESETS",
    "TINY_CHAT_TEMPLATE",
    "build_tiny_tokenizer",
    "load_tokenizer",
    "load_llm",
    "reload_llm",
    "vocab_needed",
]

PRESETS: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
}

# The space after each role tag is the word-boundary marker the tokenizer puts there anyway, so
# decode(encode(text)) == text; the generation prompt ends at the tag and the answer's first token
# carries the marker, exactly as in training.
TINY_CHAT_TEMPLATE = (
    "{%- for m in messages -%}<|{{ m['role'] }}|> {{ m['content'] }}<|end|>{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
TINY_SPECIALS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def build_tiny_tokenizer(texts: Iterable[str], image_token: str, vocab_size: int = 512) -> Any:
    """Train a small BPE tokenizer on ``texts`` (deterministic, offline).

    SentencePiece-style: every word carries its leading-space marker, including the first word of a
    turn, so ``red`` in a question and ``red`` as an answer are the same token; unseen characters
    fall back to bytes, so any text round-trips.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="\u2581", prepend_scheme="always")]
    )
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(bytes_), special_tokens=[*TINY_SPECIALS, image_token, *bytes_], show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>", additional_special_tokens=[image_token]
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def load_tokenizer(name: str, image_token: str, hub_kwargs: dict[str, Any], chat_template: str | None) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name, **hub_kwargs)
    if image_token not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [image_token]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if chat_template:
        tok.chat_template = template_text(chat_template)
    if not getattr(tok, "chat_template", None):
        raise ConfigError(
            f"tokenizer: '{name}' has no chat template; use an instruct tokenizer "
            f"(tokenizer: <the -Instruct model>) or set chat_template: in the recipe",
            header="tokenizer",
        )
    return tok


def vocab_needed(tokenizer: Any, image_token: str | None = None) -> int:
    """Embedding rows the LLM needs: every token id except a trailing image token (whose positions
    the fusion overwrites, so it needs no row of its own)."""
    n = len(tokenizer)
    image_id = tokenizer.convert_tokens_to_ids(image_token) if image_token else None
    return n - 1 if image_id == n - 1 else n


def load_llm(
    model: str,
    tokenizer: Any,
    *,
    dtype: Any,
    overrides: dict[str, Any],
    load_kwargs: dict[str, Any],
    hub_kwargs: dict[str, Any],
    attn_implementation: str,
    image_token: str | None = None,
) -> tuple[Any, bool]:
    """Return ``(model, from_preset)``; embeddings grow only when the tokenizer has new tokens other
    than the image token (see :func:`vocab_needed`)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    attn: dict[str, Any] = {} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}
    if overrides:
        _check_overrides(overrides, LlamaConfig() if model in PRESETS else None, model)
    if model in PRESETS:
        cfg = LlamaConfig(
            **{**PRESETS[model], **overrides},
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            **attn,
        )
        from transformers import LlamaForCausalLM

        llm = LlamaForCausalLM(cfg).to(dtype)
        llm.generation_config.pad_token_id = tokenizer.pad_token_id
        llm.generation_config.eos_token_id = tokenizer.eos_token_id
        return (reload_llm(llm, load_kwargs, dtype) if load_kwargs else llm), True
    llm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, **{**attn, **load_kwargs}, **hub_kwargs)
    _check_overrides(overrides, llm.config, model)
    for key, value in overrides.items():
        setattr(llm.config, key, value)
    needed = vocab_needed(tokenizer, image_token)
    rows = int(_embedding_rows(llm))
    if needed > rows:
        llm.resize_token_embeddings(needed)
    if llm.generation_config.pad_token_id is None:
        llm.generation_config.pad_token_id = tokenizer.pad_token_id
    return llm, False


def _embedding_rows(llm: Any) -> int:
    return int(llm.get_input_embeddings().weight.shape[0])


def _check_overrides(overrides: dict[str, Any], config: Any, model: str) -> None:
    """``model_config`` keys must be fields of the model's config (no silent typos)."""
    if config is None:
        return
    from vlmplug.errors import did_you_mean

    valid = set(config.to_dict())
    bad = [k for k in overrides if k not in valid]
    if bad:
        raise ConfigError(
            [
                f"model_config.{k}: not a field of {type(config).__name__} ({model}){did_you_mean(k, valid)}"
                for k in bad
            ],
            header="model_config",
        )


def reload_llm(llm: Any, load_kwargs: dict[str, Any], dtype: Any) -> Any:
    """``llm`` loaded again through ``from_pretrained`` with ``load_kwargs`` (a quantization config,
    an attention kernel), for an LLM that did not come from ``from_pretrained`` (a preset built from its
    config, the merged LLM of a finished stage). Its weights go to a temporary folder that lives as long
    as the returned model: a method that must save the base at full precision (QLoRA) reads them there
    (``config._name_or_path``)."""
    import shutil
    import tempfile
    import weakref

    from transformers import AutoModelForCausalLM

    folder = tempfile.mkdtemp(prefix="vlmplug-llm-")
    llm.save_pretrained(folder)
    kernel = getattr(llm.config, "_attn_implementation", None)  # not in the saved config: keep it
    kwargs = {"attn_implementation": kernel, **load_kwargs} if kernel else dict(load_kwargs)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    reloaded.generation_config = llm.generation_config
    weakref.finalize(reloaded, shutil.rmtree, folder, True)
    return reloaded
