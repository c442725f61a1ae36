"""Short fixture names for the built-in plugin tests, on the tiny builders of ``vlmplug.testing``
(the same ones plugin authors get): a CLIP tower at 32 px with 8 px patches (16 patch tokens of
width 32), a 1-layer Llama of width 32 and a small BPE tokenizer. Nothing is downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from typing import Any

import pytest

from vlmplug.testing import tiny as _tiny


@pytest.fixture(scope="session")
def tokenizer(tiny_tokenizer: Any) -> Any:
    return tiny_tokenizer


@pytest.fixture
def ctx() -> Any:
    return _tiny.make_ctx()


@pytest.fixture
def clip_tower(ctx: Any) -> Any:
    return _tiny.make_clip(ctx)


@pytest.fixture
def tiny_llm(tokenizer: Any) -> Any:
    return _tiny.make_llm(tokenizer)


@pytest.fixture
def vlm(tokenizer: Any, ctx: Any) -> Any:
    return _tiny.make_vlm(tokenizer, ctx)
