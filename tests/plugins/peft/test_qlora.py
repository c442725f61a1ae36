"""``qlora``: the LLM in 4-bit NF4 through bitsandbytes (on CPU here), LoRA on top; the guide's keys;
what is quantised and what trains; save -> load gives the same logits; merging folds the adapters
into the dequantised base; a next stage starts from the merged model, quantised again."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch

pytest.importorskip("bitsandbytes")

from vlmplug.testing import TINY_RECIPE
from vlmplug.train.model_io import load


def _linear4bit() -> type:
    import bitsandbytes as bnb

    return bnb.nn.Linear4bit


def _fixed_batch(vlm: Any) -> dict[str, torch.Tensor]:
    from vlmplug.testing.tiny import make_batch

    return make_batch(vlm, vlm.tokenizer, seed=3)


def _logits(vlm: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    vlm.eval()
    with torch.no_grad():
        return vlm(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_guide_keys_select_qlora(vlmplug_host: Any) -> None:
    from vlmplug.recipe import resolve

    data = {
        **copy.deepcopy(TINY_RECIPE),
        "use_peft": True,
        "load_in_4bit": True,
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_use_double_quant": True,
        "lora_r": 16,
        "lora_modules_to_save": ["lm_head", "embed_tokens"],
    }
    r = resolve(data, vlmplug_host.registry, host=vlmplug_host)
    opts = r.single["peft"].options
    assert r.single["peft"].name == "qlora"
    assert (opts["bnb_4bit_compute_dtype"], opts["lora_r"], opts["bnb_4bit_quant_type"]) == ("bfloat16", 16, "nf4")


def test_quantisation_config(tiny: Any) -> None:
    from vlmplug.plugins.peft import qlora

    method = tiny.build(qlora.SPEC, tiny.make_ctx(), {"llm_int8_skip_modules": ["model.layers.0.mlp.down_proj"]})
    q = method.model_load_kwargs()["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float32  # auto on a CPU without fast bfloat16
    assert q.llm_int8_skip_modules == ["model.layers.0.mlp.down_proj"]


def test_run_quantises_only_the_llm_and_reloads_exactly(run_recipe: Any) -> None:
    res = run_recipe(None, steps=3, plugins=("qlora",), lora_r=4)
    vlm = res.model
    linear4bit = _linear4bit()
    llm_layers = [m for m in vlm.llm.modules() if isinstance(m, linear4bit)]
    assert len(llm_layers) == 2 * 7  # every projection of both decoder layers
    assert not any(isinstance(m, linear4bit) for m in vlm.vision_encoder.modules())
    assert not any(isinstance(m, linear4bit) for m in vlm.connector.modules())
    trainable = {n for n, p in vlm.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("connector.") or "lora_" in n for n in trainable)
    saved = res.run_dir / "model"
    manifest = json.loads((saved / "vlmplug_model.json").read_text())
    assert manifest["llm_files"] == {"adapter": "adapter", "llm_base": "llm_base"}
    config = json.loads((saved / "llm_base" / "config.json").read_text())
    assert "quantization_config" not in config  # the base is kept at full precision
    batch = _fixed_batch(vlm)
    before = _logits(vlm, batch)
    again = load(res.run_dir)
    assert sum(isinstance(m, linear4bit) for m in again.llm.modules()) == len(llm_layers)
    torch.testing.assert_close(_logits(again, batch), before, rtol=0, atol=0)


def test_memory_is_below_lora(run_recipe: Any, tmp_path: Any) -> None:
    """The LLM's weights take less memory in 4-bit than the same run under plain LoRA."""

    def llm_bytes(vlm: Any) -> int:
        base = vlm.llm.get_base_model()
        return sum(t.numel() * t.element_size() for t in base.state_dict().values())

    quiet = {"eval_datasets": [], "evaluators": [], "lora_r": 4}
    q = run_recipe(None, steps=1, plugins=("qlora",), output_dir=tmp_path / "q", **quiet)
    lo = run_recipe(None, steps=1, plugins=("lora",), output_dir=tmp_path / "lo", **quiet)
    quantised = sum(m.weight.quant_state.shape.numel() for m in q.model.llm.modules() if isinstance(m, _linear4bit()))
    assert quantised == 2 * (4 * 64 * 64 + 3 * 64 * 128)  # every projection of the tiny Llama
    saved = llm_bytes(lo.model) - llm_bytes(q.model)
    # 4 bytes -> half a byte per weight, less the block scales (one byte per 64 weights, double quantised)
    assert 0.9 * quantised * 3.5 <= saved <= quantised * 3.5


def test_merge_is_the_trained_function(run_recipe: Any) -> None:
    res = run_recipe(None, steps=3, plugins=("qlora",), lora_r=4, lora_dropout=0.0)
    vlm = res.model
    batch = _fixed_batch(vlm)
    before = _logits(vlm, batch)
    merged = vlm.peft_method.merge(vlm)
    assert not any(isinstance(m, _linear4bit()) for m in merged.llm.modules())
    torch.testing.assert_close(_logits(merged, batch), before, rtol=1e-4, atol=1e-4)


def test_a_next_stage_quantises_the_merged_model(run_recipe: Any, tmp_path: Any) -> None:
    first = run_recipe(None, steps=2, plugins=("lora",), lora_r=4, output_dir=tmp_path / "one")
    second = run_recipe(
        {**copy.deepcopy(TINY_RECIPE), "model": str(first.run_dir)},
        steps=2,
        plugins=("qlora",),
        lora_r=4,
        output_dir=tmp_path / "two",
    )
    assert any(isinstance(m, _linear4bit()) for m in second.model.llm.modules())
    again = load(second.run_dir)
    batch = _fixed_batch(second.model)
    torch.testing.assert_close(_logits(again, batch), _logits(second.model, batch), rtol=0, atol=0)
