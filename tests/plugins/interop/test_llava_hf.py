"""``llava-hf`` end to end: a trained run exported loads in plain transformers with the same logits
and greedy generations (the reference is ``vlmplug.load`` of the run); a LLaVA-HF checkpoint named by
``model:`` is imported, fine-tuned and exported again. CLIP and SigLIP towers, at their own
resolution or at ``image_resolution``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import vlmplug
from vlmplug.errors import ConfigError
from vlmplug.export import export_model
from vlmplug.manager import load
from vlmplug.recipe import resolve
from vlmplug.testing import TINY_RECIPE, run_recipe

MESSAGES = [{"role": "user", "content": "<image>\nWhat color is the shape?"}]


def _images(n: int = 1, seed: int = 0) -> list[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(40, 36, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]


def _compare(vlm: Any, exported: Path) -> float:
    """Max |logit difference| between the vlmplug model and the exported LLaVA (both classes), with
    the processor's own inputs; greedy generations must be identical."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(exported, backend="pil")
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    inputs = processor(images=_images(), text=prompt, return_tensors="pt")
    worst = 0.0
    for cls in (LlavaForConditionalGeneration, AutoModelForImageTextToText):
        hf = cls.from_pretrained(exported).eval()
        vlm.eval()
        with torch.no_grad():
            ours = vlm(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]).logits
            theirs = hf(**inputs).logits[..., : ours.shape[-1]]
            g_ours = vlm.generate(
                inputs["input_ids"],
                inputs["attention_mask"],
                inputs["pixel_values"],
                max_new_tokens=5,
                do_sample=False,
                pad_token_id=vlm.tokenizer.pad_token_id,
            )
            g_theirs = hf.generate(**inputs, max_new_tokens=5, do_sample=False)[:, inputs["input_ids"].shape[1] :]
        worst = max(worst, float((ours - theirs).abs().max()))
        assert torch.equal(g_ours, g_theirs), cls.__name__
    assert worst < 1e-4
    return worst


@pytest.mark.parametrize("peft, connector", [("full", "mlp"), ("lora", "mlp"), ("full", "linear")])
def test_trained_run_exports_to_llava_hf(peft: str, connector: str, tmp_path: Path) -> None:
    plugins = (peft, connector)
    result = run_recipe(
        steps=3, plugins=plugins, output_dir=tmp_path / "run", eval_before_training=False, learning_rate=1e-2
    )
    out = export_model(result.run_dir, "llava-hf", tmp_path / "llava", host=load())
    assert (out / "config.json").is_file() and (out / "chat_template.jinja").is_file()
    diff = _compare(vlmplug.load(result.run_dir), out)
    print(f"llava-hf export ({peft}, {connector}): max |logit diff| {diff:.2e}")


def test_export_refuses_a_model_llava_cannot_hold(tmp_path: Path) -> None:
    result = run_recipe(steps=1, output_dir=tmp_path / "run", eval_before_training=False, **{"connector.depth": 3})
    with pytest.raises(ConfigError, match="depth 3"):
        export_model(result.run_dir, "llava-hf", tmp_path / "llava", host=load())
    assert not (tmp_path / "llava").exists()  # nothing half-written


@pytest.fixture(scope="module")
def llava_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaVA-HF checkpoint saved by the test itself (from a short vlmplug run)."""
    root = tmp_path_factory.mktemp("ckpt")
    result = run_recipe(steps=2, output_dir=root / "run", eval_before_training=False)
    return export_model(result.run_dir, "llava-hf", root / "llava", host=load())


def _recipe_on(checkpoint: Path) -> dict[str, Any]:
    data = copy.deepcopy(TINY_RECIPE)
    for key in ("vision_encoder", "connector", "model_config"):
        data.pop(key)
    data["model"] = str(checkpoint)
    return data


def test_config_reads_the_components_from_the_checkpoint(llava_checkpoint: Path) -> None:
    host = load()
    r = resolve(_recipe_on(llava_checkpoint), host.registry, host=host)
    assert r.components()["vision_encoder"] == "clip"
    assert r.components()["connector"] == "mlp"
    assert r.components()["fusion"] == "interleaved"
    assert r.pretrained == {"format": "llava-hf", "model": str(llava_checkpoint)}
    with pytest.raises(
        ConfigError, match="is a llava-hf checkpoint whose connector is 'mlp', but the recipe chooses 'linear'"
    ):
        resolve({**_recipe_on(llava_checkpoint), "connector": "linear"}, host.registry, host=host)


def test_import_train_export_round_trip(llava_checkpoint: Path, tmp_path: Path) -> None:
    from transformers import LlavaForConditionalGeneration

    before = LlavaForConditionalGeneration.from_pretrained(llava_checkpoint)
    result = run_recipe(
        _recipe_on(llava_checkpoint),
        steps=2,
        output_dir=tmp_path / "run",
        eval_before_training=False,
        learning_rate=1e-2,
    )
    assert (tmp_path / "run" / "imported" / "vlmplug_model.json").is_file()
    manifest = json.loads((tmp_path / "run" / "model" / "vlmplug_model.json").read_text())
    assert manifest["initialised_from"] == str(llava_checkpoint)
    out = export_model(result.run_dir, "llava-hf", tmp_path / "llava", host=load())
    _compare(result.model, out)
    after = LlavaForConditionalGeneration.from_pretrained(out)
    moved = [k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])]
    assert any("multi_modal_projector" in k for k in moved) and any("language_model" in k for k in moved)
    # the fine-tuned model also reloads through vlmplug, self-contained
    _compare(vlmplug.load(result.run_dir), out)


# -- SigLIP towers ---------------------------------------------------------------------------------

SIGLIP = {
    "name": "siglip",
    "model": "tiny",
    "tiny_image_size": 32,
    "tiny_patch_size": 8,
    "tiny_hidden_size": 32,
    "tiny_layers": 2,
    "tiny_heads": 2,
}


def _siglip_recipe(**options: Any) -> dict[str, Any]:
    return {**copy.deepcopy(TINY_RECIPE), "vision_encoder": {**SIGLIP, **options}}


@pytest.fixture(scope="module")
def siglip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short run with a SigLIP tower at 48 px (position embeddings interpolated from 32 px), exported."""
    root = tmp_path_factory.mktemp("siglip")
    result = run_recipe(
        {**_siglip_recipe(image_resolution=48), "max_seq_length": 64},  # 36 image tokens
        steps=3,
        output_dir=root / "run",
        eval_before_training=False,
        learning_rate=1e-2,
    )
    return export_model(result.run_dir, "llava-hf", root / "llava", host=load())


def test_siglip_run_exports_to_llava_hf(siglip_checkpoint: Path) -> None:
    config = json.loads((siglip_checkpoint / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "siglip_vision_model"
    assert config["vision_config"]["image_size"] == 48  # the run's image_resolution, baked in
    assert config["vision_feature_select_strategy"] == "full"
    assert config["image_seq_length"] == (48 // 8) ** 2
    processor = json.loads((siglip_checkpoint / "processor_config.json").read_text())
    assert processor["num_additional_image_tokens"] == 0
    diff = _compare(vlmplug.load(siglip_checkpoint.parent / "run"), siglip_checkpoint)
    print(f"llava-hf export (siglip at 48 px): max |logit diff| {diff:.2e}")


def test_siglip_checkpoint_imports_as_siglip(siglip_checkpoint: Path, tmp_path: Path) -> None:
    from vlmplug.plugins.interop._llava_hf import import_to_vlmplug

    host = load()
    r = resolve(_recipe_on(siglip_checkpoint), host.registry, host=host)
    assert r.components()["vision_encoder"] == "siglip"
    assert r.single["vision_encoder"].options["feature_layer"] == -1
    import_to_vlmplug(str(siglip_checkpoint), str(tmp_path / "imported"), {})
    manifest = json.loads((tmp_path / "imported" / "vlmplug_model.json").read_text())
    assert manifest["components"]["vision_encoder"] == {
        "name": "siglip",
        "model": "./vision_tower",
        "feature_layer": -1,
    }
    imported = vlmplug.load(tmp_path / "imported")
    assert imported.vision_encoder.image_size == 48 and not imported.vision_encoder.interpolate_pos_encoding
    _compare(imported, siglip_checkpoint)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"patch_pooling": "adaptive", "pooled_grid": 2}, "patch_pooling pools the 4 x 4 patch grid to 2 x 2"),
        ({"post_layernorm": True}, "post_layernorm"),
    ],
)
def test_export_refuses_what_llava_hf_cannot_compute(options: dict[str, Any], match: str, tmp_path: Path) -> None:
    result = run_recipe(_siglip_recipe(**options), steps=1, output_dir=tmp_path / "run", eval_before_training=False)
    with pytest.raises(ConfigError, match=match):
        export_model(result.run_dir, "llava-hf", tmp_path / "llava", host=load())
    assert not (tmp_path / "llava").exists()
