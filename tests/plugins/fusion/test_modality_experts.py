"""Modality experts (CogVLM visual expert): image positions use expert copies of the attention projections
and MLP; exact invariants at init, routing, what trains, generation with a KV cache, LoRA, reload."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import vlmplug
from vlmplug.plugins.fusion import modality_experts as plugin
from vlmplug.plugins.fusion._interleaved import InterleavedVLM
from vlmplug.plugins.fusion._modality_experts import ModalityExpertsFusion, ModalityExpertsVLM
from vlmplug.plugins.peft import full as full_plugin
from vlmplug.plugins.peft import lora as lora_plugin
from vlmplug.testing.conformance import _check_reload

LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def mvlm(tiny: Any, tokenizer: Any, ctx: Any) -> ModalityExpertsVLM:
    return tiny.make_vlm(tokenizer, ctx, fusion=plugin.SPEC)


def _perturb_experts(vlm: ModalityExpertsVLM, scale: float = 0.2) -> None:
    torch.manual_seed(11)
    with torch.no_grad():
        for p in vlm.fusion_modules.parameters():
            p.add_(scale * torch.randn_like(p))


def _left_padded(batch: dict[str, Any], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = batch["input_ids"].clone(), batch["attention_mask"].clone()
    for r in range(ids.shape[0]):
        n = int(mask[r].sum())
        ids[r] = torch.cat([torch.full((ids.shape[1] - n,), pad), batch["input_ids"][r, :n]])
        mask[r] = torch.cat([torch.zeros(ids.shape[1] - n, dtype=mask.dtype), torch.ones(n, dtype=mask.dtype)])
    return ids, mask


def _greedy_by_forward(vlm: Any, ids: torch.Tensor, mask: torch.Tensor, pixels: torch.Tensor, steps: int) -> Any:
    """Greedy decoding by full forward passes (no cache): the reference for generate."""
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = vlm(ids, mask, pixels).logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return torch.cat(out, 1)


def test_build_copies_the_llm_weights_into_experts(tiny, tokenizer, mvlm):
    assert isinstance(mvlm, ModalityExpertsVLM) and isinstance(mvlm, InterleavedVLM)
    assert isinstance(mvlm.fusion, ModalityExpertsFusion)
    assert mvlm.fusion.placeholder_tokens(mvlm.connector) == mvlm.tokens_per_image == 16
    assert mvlm.keep_frozen == {"llm"}
    layer = mvlm.llm.model.layers[0]
    want = [f"0.self_attn.{n}" for n in LLAMA[:4]] + [f"0.mlp.{n}" for n in LLAMA[4:]]
    assert sorted(mvlm.expert_names) == sorted(want)
    for name in want:
        original = layer.get_submodule(name[2:])
        expert = mvlm.fusion_modules[0][name[2:].replace(".", "-")]
        assert torch.equal(expert.weight, original.weight)
        assert expert.weight.data_ptr() != original.weight.data_ptr()  # a copy, not a tie
    base = tiny.make_llm(tokenizer, seed=1)
    assert list(mvlm.llm.state_dict()) == list(base.state_dict())  # nothing inserted into the LLM


def test_text_only_is_exactly_the_base_llm(tiny, tokenizer, mvlm):
    mvlm.eval()
    _perturb_experts(mvlm)  # experts never touch text positions, trained or not
    batch = tiny.make_batch(mvlm, tokenizer, (0, 0), seed=4)
    base = tiny.make_llm(tokenizer, seed=1).eval()
    with torch.no_grad():
        got = mvlm(batch["input_ids"], batch["attention_mask"], None, batch["labels"])
        want = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert torch.equal(got.logits, want.logits)
    assert torch.equal(got.loss, want.loss)


def test_at_init_images_give_the_interleaved_logits(tiny, tokenizer, ctx, mvlm):
    interleaved = tiny.make_vlm(tokenizer, ctx, fusion="interleaved").eval()  # same seeds: same parts
    mvlm.eval()
    batch = tiny.make_batch(mvlm, tokenizer, (1, 2), seed=1)
    with torch.no_grad():
        got = mvlm(**batch)
        want = interleaved(**batch)
    assert torch.equal(got.logits, want.logits)  # the experts are exact copies, run on the same inputs
    assert torch.equal(got.loss, want.loss)


def test_image_positions_use_the_experts_text_positions_the_originals(tiny, tokenizer, ctx, mvlm):
    mvlm.eval()
    _perturb_experts(mvlm)
    batch = tiny.make_batch(mvlm, tokenizer, (1, 2), seed=2)
    is_image = batch["input_ids"] == mvlm.image_token_id
    seen: dict[str, Any] = {}
    q_proj = mvlm.llm.model.layers[0].self_attn.q_proj
    handle = q_proj.register_forward_hook(lambda m, a, o: seen.update(x=a[0], out=o), prepend=False)
    with torch.no_grad():
        mvlm(**batch)
    handle.remove()
    x, out = seen["x"], seen["out"]
    expert = mvlm.fusion_modules[0]["self_attn-q_proj"]
    with torch.no_grad():
        torch.testing.assert_close(out[is_image], expert(x[is_image]), rtol=0, atol=1e-6)
        assert torch.equal(out[~is_image], nn.functional.linear(x[~is_image], q_proj.weight))
    # causal attention: positions before a row's first image see only text, so they match interleaved exactly
    interleaved = tiny.make_vlm(tokenizer, ctx, fusion="interleaved").eval()
    with torch.no_grad():
        got, want = mvlm(**batch).logits, interleaved(**batch).logits
    for r in range(2):
        first = int(is_image[r].float().argmax())
        assert torch.equal(got[r, :first], want[r, :first])
        assert not torch.allclose(got[r, first:], want[r, first:])


def test_one_sgd_step_trains_the_experts_not_the_llm(tiny, tokenizer, ctx, mvlm):
    tiny.build(full_plugin.SPEC, ctx, {}).apply(mvlm)
    assert not any(p.requires_grad for p in mvlm.llm.parameters())
    assert all(p.requires_grad for p in mvlm.fusion_modules.parameters())
    llm_before = {k: v.clone() for k, v in mvlm.llm.state_dict().items()}
    experts_before = {k: v.clone() for k, v in mvlm.fusion_modules.state_dict().items()}
    batch = tiny.make_batch(mvlm, tokenizer, (1, 2), seed=5)
    mvlm.eval()
    with torch.no_grad():
        before = mvlm(**batch).logits
    opt = torch.optim.SGD([p for p in mvlm.parameters() if p.requires_grad], lr=0.5)
    mvlm(**batch).loss.backward()
    opt.step()
    with torch.no_grad():
        after = mvlm(**batch).logits
    assert not torch.allclose(after, before)
    assert all(torch.equal(v, llm_before[k]) for k, v in mvlm.llm.state_dict().items())
    changed = [k for k, v in mvlm.fusion_modules.state_dict().items() if not torch.equal(v, experts_before[k])]
    assert len(changed) == len(experts_before)  # every expert learned


def test_train_llm_option_unfreezes_the_llm(tiny, tokenizer, ctx):
    vlm = tiny.make_vlm(tokenizer, ctx, fusion=plugin.SPEC, fusion_options={"train_llm": True})
    assert vlm.keep_frozen == set()
    tiny.build(full_plugin.SPEC, ctx, {}).apply(vlm)
    assert all(p.requires_grad for p in vlm.llm.parameters())


def test_loss_is_token_sum_over_num_items_in_batch(tiny, tokenizer, mvlm):
    mvlm.eval()
    _perturb_experts(mvlm)
    batch = tiny.make_batch(mvlm, tokenizer, (1, 2), seed=3)
    with torch.no_grad():
        logits = mvlm(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).logits
        per_token = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), reduction="sum"
        )
        n = int((batch["labels"][:, 1:] != -100).sum())
        summed = mvlm(**batch, num_items_in_batch=torch.tensor(3 * n)).loss
    torch.testing.assert_close(summed, per_token / (3 * n))


def test_generate_with_kv_cache_is_greedy_decoding(tiny, tokenizer, mvlm):
    """The prompt's image positions use the experts; each later step sees only new text positions."""
    mvlm.eval()
    _perturb_experts(mvlm, 0.5)
    batch = tiny.make_batch(mvlm, tokenizer, (1, 2), seed=6)
    ids, mask = _left_padded(batch, tokenizer.pad_token_id)
    gen = mvlm.generate(
        ids, mask, batch["pixel_values"], max_new_tokens=4, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=None, use_cache=True,
    )  # fmt: skip
    assert gen.dtype == torch.long and gen.shape == (2, 4)
    with torch.no_grad():
        first = mvlm(ids, mask, batch["pixel_values"]).logits[:, -1].argmax(-1)
    assert torch.equal(gen[:, 0], first)
    assert torch.equal(gen, _greedy_by_forward(mvlm, ids, mask, batch["pixel_values"], 4))
    assert mvlm._context is None
    beams = mvlm.generate(
        ids, mask, batch["pixel_values"], max_new_tokens=2, num_beams=2, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=None,
    )  # fmt: skip
    assert beams.shape == (2, 2)


def test_lora_adapts_the_text_weights_and_merging_keeps_the_outputs(tiny, tokenizer, ctx, mvlm, tmp_path):
    method = tiny.build(lora_plugin.SPEC, ctx, {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0})
    method.apply(mvlm)
    assert any("lora_" in n for n, _ in mvlm.llm.named_parameters())
    assert not any("lora_" in n for n, _ in mvlm.fusion_modules.named_parameters())  # all-linear stays in the LLM
    assert all(p.requires_grad for p in mvlm.fusion_modules.parameters())
    batch = tiny.make_batch(mvlm, tokenizer, (1, 2), seed=7)
    mvlm.train()
    opt = torch.optim.Adam([p for p in mvlm.parameters() if p.requires_grad], lr=0.05)
    mvlm(**batch).loss.backward()
    opt.step()
    mvlm.eval()
    wrapped = mvlm.llm.base_model.model.model.layers[0].self_attn.q_proj
    assert mvlm._hooked[(0, "self_attn.q_proj")][0] is wrapped  # the hook moved to the LoRA layer
    ids, mask = _left_padded(batch, tokenizer.pad_token_id)
    gen = mvlm.generate(
        ids, mask, batch["pixel_values"], max_new_tokens=3, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=None,
    )  # fmt: skip
    assert torch.equal(gen, _greedy_by_forward(mvlm, ids, mask, batch["pixel_values"], 3))
    _check_reload(mvlm, batch, tmp_path, plugin.SPEC, peft=(lora_plugin.SPEC, {"lora_r": 4, "lora_alpha": 8}))
    with torch.no_grad():
        before = mvlm(**batch).logits
        method.merge(mvlm)
        torch.testing.assert_close(mvlm(**batch).logits, before, rtol=1e-5, atol=1e-5)
    assert mvlm._hooked[(0, "self_attn.q_proj")][0] is mvlm.llm.model.layers[0].self_attn.q_proj


def test_trained_experts_round_trip_through_fusion_safetensors(tiny, tokenizer, ctx, mvlm, tmp_path):
    tiny.build(full_plugin.SPEC, ctx, {}).apply(mvlm)
    _perturb_experts(mvlm)
    batch = tiny.make_batch(mvlm, tokenizer, (1, 2), seed=8)
    _check_reload(mvlm, batch, tmp_path, plugin.SPEC, peft=(full_plugin.SPEC, {}))
    loaded = vlmplug.load(tmp_path / "model")
    assert isinstance(loaded, ModalityExpertsVLM)
    mine, theirs = mvlm.fusion_modules.state_dict(), loaded.fusion_modules.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with torch.no_grad():  # not bitwise: the reloaded LLM runs sdpa attention where the built one ran eager
        torch.testing.assert_close(loaded(**batch).logits, mvlm(**batch).logits, rtol=0, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(tiny, tokenizer, ctx):
    """Checkpointing replays the layers (and the expert hooks) in backward: the context must still be there."""
    from vlmplug.plugins.optim._gradient_checkpointing import enable_checkpointing

    grads = []
    for checkpointing in (False, True):
        vlm = tiny.make_vlm(tokenizer, ctx, fusion=plugin.SPEC)
        _perturb_experts(vlm)
        if checkpointing:
            assert enable_checkpointing(vlm.llm, {"use_reentrant": False})
        vlm.train()
        vlm(**tiny.make_batch(vlm, tokenizer, (1, 2), seed=9)).loss.backward()
        grads.append([p.grad.clone() for p in vlm.fusion_modules.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_expert_modules_option(tiny, tokenizer, ctx):
    vlm = tiny.make_vlm(tokenizer, ctx, fusion=plugin.SPEC, fusion_options={"expert_modules": ["mlp", "q_proj"]})
    assert sorted(vlm.expert_names) == ["0.mlp", "0.self_attn.q_proj"]  # mlp's own linears are inside the expert
    assert isinstance(vlm.fusion_modules[0]["mlp"], type(vlm.llm.model.layers[0].mlp))
    vlm.eval()
    interleaved = tiny.make_vlm(tokenizer, ctx, fusion="interleaved").eval()
    batch = tiny.make_batch(vlm, tokenizer, (1, 1))
    with torch.no_grad():
        torch.testing.assert_close(vlm(**batch).logits, interleaved(**batch).logits, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"no module of LlamaDecoderLayer .* matches expert_modules \['c_attn'\]"):
        tiny.make_vlm(tokenizer, ctx, fusion=plugin.SPEC, fusion_options={"expert_modules": ["c_attn"]})


def test_config_accepts_a_comma_list():
    from vlmplug.registry import validate_options

    options, problems = validate_options(plugin.SPEC, {"expert_modules": "q_proj, v_proj"}, "fusion")
    assert not problems and plugin.SPEC.make_config(options).expert_modules == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="expert_modules"):
        plugin.SPEC.make_config({"expert_modules": []})


def test_conforms():
    from vlmplug.testing import check_component

    assert check_component(plugin.SPEC)["placeholder_tokens"] == 16


def test_trains_end_to_end_and_loads_back(run_recipe):
    result = run_recipe(steps=3, plugins=("modality-experts",))
    assert result.metrics["status"] == "finished"
    assert result.metrics["train"]["steps"] == 3
    assert torch.isfinite(torch.tensor(result.metrics["train"]["final_loss"]))
    model = result.model.eval()
    assert isinstance(model, ModalityExpertsVLM)
    loaded = vlmplug.load(result.run_dir)
    t = model.tokens_per_image
    ids = torch.tensor([[7, *[model.image_token_id] * t, 9, 11]])
    pixels = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, torch.ones_like(ids), pixels).logits, model(ids, None, pixels).logits)
