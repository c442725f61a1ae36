"""Cross-attention fusion (Flamingo): gated blocks hooked before every n-th decoder layer, vision tokens
beside the text; exact invariants at gates 0, what trains, generation with a KV cache, LoRA, reload."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import vlmplug
from vlmplug.plugins.fusion import cross_attention as plugin
from vlmplug.plugins.fusion._cross_attention import (
    CrossAttentionFusion,
    CrossAttentionVLM,
    GatedCrossAttentionBlock,
    find_decoder_layers,
)
from vlmplug.plugins.peft import full as full_plugin
from vlmplug.plugins.peft import lora as lora_plugin
from vlmplug.testing.conformance import _check_reload


@pytest.fixture
def xvlm(tiny: Any, tokenizer: Any, ctx: Any) -> CrossAttentionVLM:
    return tiny.make_vlm(tokenizer, ctx, fusion=plugin.SPEC, fusion_options={"gate_init": 0.0})  # the default


def _base_llm(tiny: Any, tokenizer: Any) -> Any:
    """The same random LLM that make_vlm builds (seed 1), without any hooks."""
    return tiny.make_llm(tokenizer, seed=1).eval()


def _open_gates(vlm: CrossAttentionVLM, value: float = 0.7) -> None:
    with torch.no_grad():
        for block in vlm.fusion_modules.blocks.values():
            block.attn_gate.fill_(value)
            block.ffw_gate.fill_(-value)


def _build(tiny: Any, tokenizer: Any, ctx: Any, llm: Any, **options: Any) -> CrossAttentionVLM:
    fusion = tiny.build(plugin.SPEC, ctx, options)
    tower = tiny.make_clip(ctx)
    conn = tiny.make_connector(vlmplug_spec("mlp"), ctx, tower, llm)
    vlm = fusion.build(
        llm=llm, vision_encoder=tower, connector=conn, image_token_id=tokenizer.convert_tokens_to_ids("<image>")
    )
    vlm.tokens_per_image = fusion.placeholder_tokens(conn)
    return vlm


def vlmplug_spec(name: str) -> Any:
    from vlmplug.manager import load

    return load().registry.get(name)


def test_build_keeps_the_llm_module_tree(tiny, tokenizer, xvlm):
    assert isinstance(xvlm, CrossAttentionVLM)
    assert isinstance(xvlm.fusion, CrossAttentionFusion)
    assert xvlm.fusion.placeholder_tokens(xvlm.connector) == xvlm.tokens_per_image == 1
    assert xvlm.keep_frozen == {"llm"}
    assert xvlm.block_layers == [0]  # the tiny LLM has one layer
    base = _base_llm(tiny, tokenizer)
    assert list(xvlm.llm.state_dict()) == list(base.state_dict())  # nothing inserted into the LLM
    assert not any(isinstance(m, GatedCrossAttentionBlock) for m in xvlm.llm.modules())
    block = xvlm.fusion_modules.blocks["0"]
    assert float(block.attn_gate.detach()) == 0.0 and float(block.ffw_gate.detach()) == 0.0
    mean = base.get_input_embeddings().weight.mean(0)
    torch.testing.assert_close(xvlm.fusion_modules.image_marker, mean, rtol=0, atol=1e-7)
    assert set(xvlm.state_dict()) == {
        *(f"{p}.{k}" for p in ("vision_encoder", "connector", "llm") for k in getattr(xvlm, p).state_dict()),
        *(f"fusion_modules.{k}" for k in xvlm.fusion_modules.state_dict()),
    }


def test_blocks_run_before_every_nth_layer(tiny, tokenizer, ctx):
    llm = tiny.make_llm(tokenizer, seed=1, num_hidden_layers=5)
    vlm = _build(tiny, tokenizer, ctx, llm, every_n_layers=2, num_heads=4, ffw_mult=2)
    assert vlm.block_layers == [0, 2, 4]
    block = vlm.fusion_modules.blocks["2"]
    assert block.num_heads == 4 and block.ffw_in.out_features == 2 * 32
    order: list[str] = []
    for key, block in vlm.fusion_modules.blocks.items():
        block.register_forward_hook(lambda m, a, o, key=key: order.append(f"block{key}"))
    for i, layer in enumerate(find_decoder_layers(vlm.llm, "test")):
        layer.register_forward_hook(lambda m, a, o, i=i: order.append(f"layer{i}"))
    batch = tiny.make_batch(vlm, tokenizer, (1, 2))
    with torch.no_grad():
        vlm(**batch)
    assert order == ["block0", "layer0", "layer1", "block2", "layer2", "layer3", "block4", "layer4"]
    order.clear()
    with torch.no_grad():
        vlm.llm(input_ids=batch["input_ids"][:, :3])  # the LLM on its own: no blocks
    assert order == [f"layer{i}" for i in range(5)]


def test_gates_at_zero_text_only_is_exactly_the_base_llm(tiny, tokenizer, xvlm):
    xvlm.eval()
    batch = tiny.make_batch(xvlm, tokenizer, (0, 0), seed=4)
    base = _base_llm(tiny, tokenizer)
    with torch.no_grad():
        got = xvlm(batch["input_ids"], batch["attention_mask"], None, batch["labels"])
        want = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert torch.equal(got.logits, want.logits)
    assert torch.equal(got.loss, want.loss)


def test_gates_at_zero_vision_has_no_effect(tiny, tokenizer, xvlm):
    """With images the logits are the base LLM's on the text stream (marker at <image>), whatever the images."""
    xvlm.eval()
    batch = tiny.make_batch(xvlm, tokenizer, (1, 2), seed=1)
    other = tiny.make_batch(xvlm, tokenizer, (1, 2), seed=1)
    other["pixel_values"] = torch.rand_like(batch["pixel_values"])
    base = _base_llm(tiny, tokenizer)
    with torch.no_grad():
        got = xvlm(**batch).logits
        want = base(inputs_embeds=xvlm.embed(batch["input_ids"]), attention_mask=batch["attention_mask"]).logits
        shuffled = xvlm(**other).logits
    assert torch.equal(got, want)
    assert torch.equal(shuffled, got)
    is_image = batch["input_ids"] == xvlm.image_token_id
    assert int(is_image.sum()) == 3  # one marker per image
    embeds = xvlm.embed(batch["input_ids"])
    assert torch.equal(embeds[is_image], xvlm.fusion_modules.image_marker.expand(3, -1))


def test_open_gates_each_row_sees_only_its_own_images(tiny, tokenizer, xvlm):
    xvlm.eval()
    _open_gates(xvlm)
    batch = tiny.make_batch(xvlm, tokenizer, (1, 2, 0), seed=2)  # row 2: no image
    other = {**batch, "pixel_values": batch["pixel_values"].clone()}
    other["pixel_values"][0] = torch.rand_like(other["pixel_values"][0])  # row 0's only image
    with torch.no_grad():
        got = xvlm(**batch).logits
        changed = xvlm(**other).logits
        alone = xvlm(batch["input_ids"][2:], batch["attention_mask"][2:], None).logits
    assert torch.isfinite(got).all()
    assert not torch.allclose(changed[0], got[0])  # vision now matters ...
    assert torch.equal(changed[1:], got[1:])  # ... only to its own row
    n = int(batch["attention_mask"][2].sum())
    torch.testing.assert_close(got[2, :n], alone[0, :n], rtol=0, atol=1e-6)  # a text row: batch-independent


def test_a_row_without_images_attends_to_nothing():
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(8, 2, 2)
    x, vision = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[True, True, False, False], [False] * 4])
    out = block.cross_attention(x, vision, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    # padded keys are ignored: the same as attending to the two real tokens only
    torch.testing.assert_close(out[0], block.cross_attention(x[:1], vision[:1, :2], mask[:1, :2])[0], atol=1e-6, rtol=0)


def test_loss_is_token_sum_over_num_items_in_batch(tiny, tokenizer, xvlm):
    xvlm.eval()
    _open_gates(xvlm)
    batch = tiny.make_batch(xvlm, tokenizer, (1, 2), seed=3)
    with torch.no_grad():
        logits = xvlm(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).logits
        per_token = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), reduction="sum"
        )
        n = int((batch["labels"][:, 1:] != -100).sum())
        summed = xvlm(**batch, num_items_in_batch=torch.tensor(5 * n)).loss
        mean = xvlm(**batch).loss
    torch.testing.assert_close(summed, per_token / (5 * n))
    torch.testing.assert_close(mean, per_token / n)


def test_one_sgd_step_trains_the_blocks_not_the_llm(tiny, tokenizer, ctx, xvlm):
    method = tiny.build(full_plugin.SPEC, ctx, {})
    method.apply(xvlm)
    assert not any(p.requires_grad for p in xvlm.llm.parameters())
    assert all(p.requires_grad for p in xvlm.fusion_modules.parameters())
    assert all(p.requires_grad for p in xvlm.connector.parameters())
    llm_before = {k: v.clone() for k, v in xvlm.llm.state_dict().items()}
    batch = tiny.make_batch(xvlm, tokenizer, (1, 2), seed=5)
    xvlm.eval()
    with torch.no_grad():
        before = xvlm(**batch).logits
    opt = torch.optim.SGD([p for p in xvlm.parameters() if p.requires_grad], lr=0.5)
    xvlm(**batch).loss.backward()
    block = xvlm.fusion_modules.blocks["0"]
    assert float(block.attn_gate.grad.abs()) > 0 and float(block.ffw_gate.grad.abs()) > 0
    opt.step()
    assert float(block.attn_gate.detach()) != 0.0  # the gate opened
    with torch.no_grad():
        after = xvlm(**batch).logits
    assert not torch.allclose(after, before)
    assert all(torch.equal(v, llm_before[k]) for k, v in xvlm.llm.state_dict().items())


def test_connector_gets_gradient_once_the_gates_are_open(tiny, tokenizer, ctx, xvlm):
    """Gates at 0 (the default): vision has no effect yet, so no gradient reaches the connector; with
    ``gate_init`` (or after a step) it does."""
    assert plugin.SPEC.make_config({}).gate_init == 0.0
    batch = tiny.make_batch(xvlm, tokenizer, (1, 2), seed=10)
    xvlm(**batch).loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in xvlm.connector.parameters())
    opened = tiny.make_vlm(tokenizer, ctx, fusion=plugin.SPEC, fusion_options={"gate_init": 0.1})
    assert float(opened.fusion_modules.blocks["0"].attn_gate.detach()) == pytest.approx(0.1)
    opened(**batch).loss.backward()
    assert all(p.grad is not None and p.grad.any() for p in opened.connector.parameters())


def test_train_llm_option_unfreezes_the_llm(tiny, tokenizer, ctx):
    vlm = tiny.make_vlm(tokenizer, ctx, fusion=plugin.SPEC, fusion_options={"train_llm": True})
    assert vlm.keep_frozen == set()
    tiny.build(full_plugin.SPEC, ctx, {}).apply(vlm)
    assert all(p.requires_grad for p in vlm.llm.parameters())


def _greedy_by_forward(vlm, ids, mask, pixels, steps):
    """Greedy decoding by full forward passes (no cache): the reference for generate."""
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = vlm(ids, mask, pixels).logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return torch.cat(out, 1)


def _left_padded(batch, pad):
    ids, mask = batch["input_ids"].clone(), batch["attention_mask"].clone()
    for r in range(ids.shape[0]):
        n = int(mask[r].sum())
        ids[r] = torch.cat([torch.full((ids.shape[1] - n,), pad), batch["input_ids"][r, :n]])
        mask[r] = torch.cat([torch.zeros(ids.shape[1] - n, dtype=mask.dtype), torch.ones(n, dtype=mask.dtype)])
    return ids, mask


def test_generate_with_kv_cache_is_greedy_decoding(tiny, tokenizer, xvlm):
    xvlm.eval()
    _open_gates(xvlm, 2.0)
    batch = tiny.make_batch(xvlm, tokenizer, (1, 2), seed=6)
    ids, mask = _left_padded(batch, tokenizer.pad_token_id)
    gen = xvlm.generate(
        ids, mask, batch["pixel_values"], max_new_tokens=4, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=None, use_cache=True,
    )  # fmt: skip
    assert gen.dtype == torch.long and gen.shape == (2, 4)
    with torch.no_grad():
        first = xvlm(ids, mask, batch["pixel_values"]).logits[:, -1].argmax(-1)
    assert torch.equal(gen[:, 0], first)
    assert torch.equal(gen, _greedy_by_forward(xvlm, ids, mask, batch["pixel_values"], 4))
    assert xvlm._context is None  # cleared after generation
    beams = xvlm.generate(
        ids, mask, batch["pixel_values"], max_new_tokens=2, num_beams=2, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=None,
    )  # fmt: skip
    assert beams.shape == (2, 2)


def test_lora_wraps_the_llm_and_blocks_still_run(tiny, tokenizer, ctx, xvlm, tmp_path):
    _open_gates(xvlm)
    method = tiny.build(lora_plugin.SPEC, ctx, {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0})
    method.apply(xvlm)
    names = [n for n, _ in xvlm.named_parameters()]
    assert any("lora_" in n for n in names)
    assert not any("lora_" in n for n, _ in xvlm.fusion_modules.named_parameters())  # all-linear stays in the LLM
    assert all(p.requires_grad for p in xvlm.fusion_modules.parameters())
    batch = tiny.make_batch(xvlm, tokenizer, (1, 2), seed=7)
    other = {**batch, "pixel_values": torch.rand_like(batch["pixel_values"])}
    xvlm.train()
    opt = torch.optim.Adam([p for p in xvlm.parameters() if p.requires_grad], lr=0.05)
    xvlm(**batch).loss.backward()
    opt.step()
    xvlm.eval()
    with torch.no_grad():
        assert not torch.allclose(xvlm(**batch).logits, xvlm(**other).logits)  # the hooks survive the wrapping
    ids, mask = _left_padded(batch, tokenizer.pad_token_id)
    gen = xvlm.generate(
        ids, mask, batch["pixel_values"], max_new_tokens=3, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=None,
    )  # fmt: skip
    assert torch.equal(gen, _greedy_by_forward(xvlm, ids, mask, batch["pixel_values"], 3))
    _check_reload(xvlm, batch, tmp_path, plugin.SPEC, peft=(lora_plugin.SPEC, {"lora_r": 4, "lora_alpha": 8}))
    with torch.no_grad():
        before = xvlm(**batch).logits
        method.merge(xvlm)
        torch.testing.assert_close(xvlm(**batch).logits, before, rtol=1e-5, atol=1e-5)


def test_trained_blocks_round_trip_through_fusion_safetensors(tiny, tokenizer, ctx, xvlm, tmp_path):
    tiny.build(full_plugin.SPEC, ctx, {}).apply(xvlm)
    _open_gates(xvlm)
    with torch.no_grad():
        for p in xvlm.fusion_modules.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = tiny.make_batch(xvlm, tokenizer, (1, 2), seed=8)
    _check_reload(xvlm, batch, tmp_path, plugin.SPEC, peft=(full_plugin.SPEC, {}))
    assert (tmp_path / "model" / "fusion.safetensors").is_file()
    loaded = vlmplug.load(tmp_path / "model")
    assert isinstance(loaded, CrossAttentionVLM)
    for (k, v), (k2, v2) in zip(xvlm.fusion_modules.state_dict().items(), loaded.fusion_modules.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with torch.no_grad():  # not bitwise: the reloaded LLM runs sdpa attention where the built one ran eager
        torch.testing.assert_close(loaded(**batch).logits, xvlm(**batch).logits, rtol=0, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(tiny, tokenizer, ctx):
    from vlmplug.plugins.optim._gradient_checkpointing import enable_checkpointing

    grads = []
    for checkpointing in (False, True):
        vlm = tiny.make_vlm(tokenizer, ctx, fusion=plugin.SPEC)
        _open_gates(vlm)
        if checkpointing:
            assert enable_checkpointing(vlm.llm, {"use_reentrant": False})
        vlm.train()
        vlm(**tiny.make_batch(vlm, tokenizer, (1, 2), seed=9)).loss.backward()
        grads.append([p.grad.clone() for p in vlm.fusion_modules.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_images_and_markers_must_agree(tiny, tokenizer, xvlm):
    batch = tiny.make_batch(xvlm, tokenizer, (1, 1))
    with pytest.raises(ValueError, match="2 <image> markers but 1 images"):
        xvlm(**{**batch, "pixel_values": batch["pixel_values"][:1]})
    with pytest.raises(ValueError, match="2 <image> markers but no pixel_values"):
        xvlm(**{**batch, "pixel_values": None})


def test_an_llm_is_hooked_by_one_fusion_model_only(tiny, tokenizer, ctx, xvlm):
    from vlmplug.plugins.fusion import modality_experts

    for spec in (plugin.SPEC, modality_experts.SPEC):
        with pytest.raises(ValueError, match="already carries the hooks of a cross-attention model"):
            tiny.build(spec, ctx, {}).build(
                llm=xvlm.llm, vision_encoder=xvlm.vision_encoder, connector=xvlm.connector, image_token_id=5
            )


def test_an_llm_without_decoder_layers_is_named():
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Cfg", (), {"num_hidden_layers": 2})()
            self.proj = nn.Linear(4, 4)

    with pytest.raises(ValueError, match="cross-attention: cannot find the decoder layers of Plain"):
        find_decoder_layers(Plain(), "cross-attention")


@pytest.mark.parametrize("options, match", [({"every_n_layers": 0}, "every_n_layers"), ({"ffw_mult": 0}, "ffw_mult")])
def test_config_validation(options, match):
    with pytest.raises(ValueError, match=match):
        plugin.SPEC.make_config(options)


def test_conforms():
    from vlmplug.testing import check_component

    assert check_component(plugin.SPEC)["placeholder_tokens"] == 1


def test_trains_end_to_end_and_loads_back(run_recipe):
    result = run_recipe(steps=3, plugins=("cross-attention",))
    assert result.metrics["status"] == "finished"
    assert result.metrics["train"]["steps"] == 3
    assert torch.isfinite(torch.tensor(result.metrics["train"]["final_loss"]))
    model = result.model.eval()
    assert isinstance(model, CrossAttentionVLM) and model.tokens_per_image == 1
    gates = torch.cat([b.attn_gate for b in model.fusion_modules.blocks.values()])
    assert bool((gates != 0).all())  # the gates opened
    loaded = vlmplug.load(result.run_dir)
    ids = torch.tensor([[7, model.image_token_id, 9, 11]])
    pixels = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, torch.ones_like(ids), pixels).logits, model(ids, None, pixels).logits)
