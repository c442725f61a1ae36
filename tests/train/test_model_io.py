"""A trained run loads back anywhere: ``vlmplug.load`` rebuilds the model through the same plugins
and gives the trained model's logits and greedy generations; ``export --format merged`` folds LoRA
in and loads back the same way. The reference is the in-memory model at the end of training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import vlmplug
from vlmplug.errors import ConfigError
from vlmplug.testing import run_recipe
from vlmplug.train.vlm import VisionLanguageModel


def _batch(vlm: Any, n_images: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two prompts with an image each, from the model's own tokenizer and image pipeline."""
    from PIL import Image

    tok = vlm.tokenizer
    g = torch.Generator().manual_seed(seed)
    texts = ["<image>\nWhat color is the shape?", "<image>\nHow many shapes are there?"][:n_images]
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in texts
    ]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    expanded = [
        [t for i in row for t in ([i] * vlm.tokens_per_image if i == vlm.image_token_id else [i])] for row in ids
    ]
    width = max(map(len, expanded))
    input_ids = torch.full((len(expanded), width), tok.pad_token_id)
    mask = torch.zeros_like(input_ids)
    for r, row in enumerate(expanded):  # left padding, as generation wants
        input_ids[r, width - len(row) :] = torch.tensor(row)
        mask[r, width - len(row) :] = 1
    images = [Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()) for _ in texts]
    return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": vlm.vision_encoder.preprocess(images)}


def _same_outputs(a: Any, b: Any) -> None:
    a.eval()
    b.eval()
    batch = _batch(a)
    with torch.no_grad():
        la, lb = a(**batch).logits, b(**batch).logits
        ga = a.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=a.tokenizer.pad_token_id)
        gb = b.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=b.tokenizer.pad_token_id)
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-5)
    assert torch.equal(ga, gb)


@pytest.fixture(scope="module", params=["full", "lora"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp(request.param) / "run"
    plugins = ("lora",) if request.param == "lora" else ()
    return run_recipe(
        steps=3,
        plugins=plugins,
        output_dir=out,
        eval_before_training=False,
        learning_rate=1e-2,
        **({"lora_modules_to_save": ["lm_head"]} if plugins else {}),
    )


def test_load_gives_the_trained_models_logits_and_generations(trained: Any) -> None:
    loaded = vlmplug.load(trained.run_dir)
    assert isinstance(loaded, VisionLanguageModel)
    assert not loaded.training
    _same_outputs(trained.model, loaded)
    again = VisionLanguageModel.from_pretrained(trained.run_dir / "model")
    _same_outputs(trained.model, again)


def test_export_merged_loads_back_with_the_same_outputs(trained: Any, tmp_path: Path) -> None:
    from vlmplug.export import export_model
    from vlmplug.manager import load

    out = export_model(trained.run_dir, "merged", tmp_path / "merged", host=load())
    manifest = json.loads((out / "vlmplug_model.json").read_text())
    assert "peft" not in manifest["components"]
    assert manifest["llm_files"] == {"llm": "llm"}
    assert not (out / "adapter").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "llm")  # a plain transformers model
    _same_outputs(trained.model, vlmplug.load(out))


def test_load_of_something_else_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no saved vlmplug model here"):
        vlmplug.load(tmp_path)


def test_load_needs_the_plugins_that_built_the_model(trained: Any, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(trained.run_dir / "model", copy)
    manifest = json.loads((copy / "vlmplug_model.json").read_text())
    manifest["components"]["connector"] = {"name": "acme-resampler", "provider": "vlmplug-acme-9.9"}
    (copy / "vlmplug_model.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"needs connector 'acme-resampler' \(from vlmplug-acme-9.9\)"):
        vlmplug.load(copy)
