"""``gradient-checkpointing``: switched on in the LLM (and the vision tower) without changing the
loss or the gradients of a training step."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from vlmplug.plugins.optim import gradient_checkpointing as gc_plugin


def _is_checkpointing(model) -> bool:
    with warnings.catch_warnings():  # transformers 5 renames it is_activation_checkpointing
        warnings.simplefilter("ignore", FutureWarning)
        return bool(getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing)


def _loss_and_grads(vlm, batch):
    vlm.train()
    vlm.zero_grad(set_to_none=True)
    loss = vlm(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in vlm.named_parameters() if p.grad is not None}


def test_patch_model_turns_checkpointing_on(tiny, ctx, vlm):
    comp = tiny.build(gc_plugin.SPEC, ctx)
    assert not _is_checkpointing(vlm.llm)
    assert comp.patch_model(vlm) is vlm
    assert _is_checkpointing(vlm.llm)
    assert _is_checkpointing(vlm.vision_encoder.model)
    assert vlm.llm.config.use_cache is False


def test_vision_encoder_option(tiny, ctx, vlm):
    tiny.build(gc_plugin.SPEC, ctx, {"vision_encoder": False}).patch_model(vlm)
    assert _is_checkpointing(vlm.llm)
    assert not _is_checkpointing(vlm.vision_encoder.model)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_same_loss_and_gradients(tiny, tokenizer, ctx, vlm, use_reentrant):
    # dropout is 0 in the tiny CLIP and Llama configs, so train mode is deterministic
    assert vlm.llm.config.attention_dropout == 0
    assert vlm.vision_encoder.model.config.attention_dropout == 0
    batch = tiny.make_batch(vlm, tokenizer, (1, 1))
    plain = copy.deepcopy(vlm)
    ref_loss, ref_grads = _loss_and_grads(plain, batch)

    comp = tiny.build(gc_plugin.SPEC, ctx, {"gradient_checkpointing_kwargs": {"use_reentrant": use_reentrant}})
    comp.patch_model(vlm)
    assert _is_checkpointing(vlm.llm)
    loss, grads = _loss_and_grads(vlm, batch)

    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    # every part trains here (no PEFT applied): vision tower, connector and LLM all get gradients
    assert any(n.startswith("vision_encoder.") for n in grads)
    assert any(n.startswith("llm.model.layers.") for n in grads)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_same_step_under_lora(tiny, tokenizer, ctx, vlm, use_reentrant):
    from vlmplug.plugins.peft import lora

    tiny.build(lora.SPEC, ctx, {"lora_r": 4, "lora_dropout": 0.0}).apply(vlm)
    for p in vlm.llm.parameters():  # non-zero B so the adapters carry gradient to A as well
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    batch = tiny.make_batch(vlm, tokenizer, (1, 1), seed=4)
    plain = copy.deepcopy(vlm)
    ref_loss, ref_grads = _loss_and_grads(plain, batch)
    tiny.build(gc_plugin.SPEC, ctx, {"gradient_checkpointing_kwargs": {"use_reentrant": use_reentrant}}).patch_model(
        vlm
    )
    loss, grads = _loss_and_grads(vlm, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and any("lora_A" in n for n in grads)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)
