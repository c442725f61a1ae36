"""``lora``: adapters scoped to the LLM, what trains, the B = 0 invariant, and saving/reloading with
plain peft."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from vlmplug.plugins.peft import lora as lora_plugin
from vlmplug.plugins.peft._lora import LoraMethod


def _apply(tiny, ctx, vlm, **options):
    method = tiny.build(lora_plugin.SPEC, ctx, {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, **options})
    assert isinstance(method, LoraMethod)
    out = method.apply(vlm)
    assert out is vlm and vlm.peft_method is method
    return method


def _train_step(vlm, batch, lr=0.05):
    vlm.train()
    opt = torch.optim.Adam([p for p in vlm.parameters() if p.requires_grad], lr=lr)
    loss = vlm(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    vlm.eval()


def test_adapters_only_inside_llm(tiny, ctx, vlm):
    _apply(tiny, ctx, vlm)
    names = [n for n, _ in vlm.named_parameters()]
    lora = [n for n in names if "lora_" in n]
    assert lora, "no LoRA parameters were created"
    assert all(n.startswith("llm.") for n in lora)
    assert not any("lora_" in n for n, _ in vlm.vision_encoder.named_parameters())
    assert not any("lora_" in n for n, _ in vlm.connector.named_parameters())
    # all-linear reaches every projection of the decoder layers
    wrapped = {n.split(".")[-4] for n in lora if n.endswith("lora_A.default.weight")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_what_trains(tiny, ctx, vlm):
    _apply(tiny, ctx, vlm)
    assert all(p.requires_grad for p in vlm.connector.parameters())
    assert not any(p.requires_grad for p in vlm.vision_encoder.parameters())
    for name, p in vlm.llm.named_parameters():
        assert p.requires_grad == ("lora_" in name), name
    trainable, total = vlm.trainable_parameters()
    n_connector = sum(p.numel() for p in vlm.connector.parameters())
    n_lora = sum(p.numel() for n, p in vlm.llm.named_parameters() if "lora_" in n)
    assert trainable == n_connector + n_lora < total


def test_train_vision_encoder_option(tiny, ctx, vlm):
    _apply(tiny, ctx, vlm, train_vision_encoder=True)
    assert all(p.requires_grad for p in vlm.vision_encoder.parameters())
    assert not any("lora_" in n for n, _ in vlm.vision_encoder.named_parameters())


def test_all_linear_does_not_wrap_lm_head(tiny, ctx, vlm):
    _apply(tiny, ctx, vlm, lora_target_modules="all-linear")
    head = vlm.llm.get_base_model().lm_head
    assert isinstance(head, torch.nn.Linear)
    assert not any("lm_head" in n and "lora_" in n for n, _ in vlm.llm.named_parameters())
    assert not head.weight.requires_grad


def test_explicit_target_modules(tiny, ctx, vlm):
    _apply(tiny, ctx, vlm, lora_target_modules=["q_proj", "v_proj"])
    wrapped = {n.split(".")[-4] for n, _ in vlm.llm.named_parameters() if n.endswith("lora_A.default.weight")}
    assert wrapped == {"q_proj", "v_proj"}


def test_default_init_leaves_outputs_unchanged(tiny, tokenizer, ctx, vlm):
    vlm.eval()
    batch = tiny.make_batch(vlm, tokenizer, (1, 2))
    with torch.no_grad():
        before = vlm(**batch)
    _apply(tiny, ctx, vlm, lora_dropout=0.05)  # the default dropout; eval mode disables it
    vlm.eval()
    assert all(float(p.detach().abs().max()) == 0 for n, p in vlm.llm.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        after = vlm(**batch)
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=0)
    torch.testing.assert_close(after.loss, before.loss, rtol=0, atol=0)


def test_one_step_changes_outputs(tiny, tokenizer, ctx, vlm):
    _apply(tiny, ctx, vlm)
    vision_before = {k: v.clone() for k, v in vlm.vision_encoder.state_dict().items()}
    base_before = {n: p.detach().clone() for n, p in vlm.llm.named_parameters() if "lora_" not in n}
    batch = tiny.make_batch(vlm, tokenizer, (1, 1))
    vlm.eval()
    with torch.no_grad():
        before = vlm(**batch).logits
    _train_step(vlm, batch)
    with torch.no_grad():
        after = vlm(**batch).logits
    assert (after - before).abs().max() > 1e-4
    assert any(float(p.detach().abs().max()) > 0 for n, p in vlm.llm.named_parameters() if "lora_B" in n)
    for k, v in vlm.vision_encoder.state_dict().items():
        assert torch.equal(v, vision_before[k]), k
    for n, p in vlm.llm.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), n


def test_save_llm_layout(tiny, tokenizer, ctx, vlm, tmp_path):
    method = _apply(tiny, ctx, vlm)
    written = method.save_llm(vlm, tmp_path)
    assert written == {"adapter": "adapter", "llm_base": "llm_base"}
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "llm_base" / "config.json").is_file()
    assert (tmp_path / "llm_base" / "model.safetensors").is_file()
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert cfg["task_type"] == "CAUSAL_LM"


def test_no_llm_base_for_a_hub_llm(tiny, ctx, vlm, tmp_path):
    vlm.manifest = {**vlm.manifest, "save_llm_base": False}  # as for a hub / local LLM
    method = _apply(tiny, ctx, vlm)
    assert method.save_llm(vlm, tmp_path) == {"adapter": "adapter"}
    assert not (tmp_path / "llm_base").exists()


def test_saved_adapter_reloads_with_plain_peft(tiny, tokenizer, ctx, vlm, tmp_path):
    method = _apply(tiny, ctx, vlm)
    batch = tiny.make_batch(vlm, tokenizer, (1, 1))
    for _ in range(2):
        _train_step(vlm, batch)
    method.save_llm(vlm, tmp_path)

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "llm_base")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ids = torch.randint(6, len(tokenizer), (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = vlm.llm(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
        # the base weights written are the untouched random init: without the adapter they differ
        with reloaded.disable_adapter():
            plain = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (plain - expected).abs().max() > 1e-4


def test_full_vlm_save_pretrained(tiny, ctx, vlm, tmp_path):
    _apply(tiny, ctx, vlm)
    vlm.save_pretrained(tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / "vlmplug_model.json").read_text())
    assert manifest["llm_files"] == {"adapter": "adapter", "llm_base": "llm_base"}
    assert manifest["image_token_id"] == vlm.image_token_id
    assert (tmp_path / "model" / "connector.safetensors").is_file()
    # the tiny tower is a preset (random init), so it is saved even though it was frozen
    assert manifest["parts"]["vision_encoder"] == "vision_encoder.safetensors"
    assert (tmp_path / "model" / "vision_encoder.safetensors").is_file()


@pytest.mark.parametrize("options, match", [({"lora_r": 0}, "lora_r"), ({"lora_dropout": 1.0}, "lora_dropout")])
def test_config_validation(options, match):
    with pytest.raises(ValueError, match=match):
        lora_plugin.SPEC.make_config(options)
