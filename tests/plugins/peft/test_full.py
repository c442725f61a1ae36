"""``full``: full fine-tuning with an optional ``freeze`` list; the LLM is saved as a plain
transformers model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from vlmplug.plugins.peft import full as full_plugin
from vlmplug.plugins.peft._full import PARTS, FullFineTuning, part_modules


def _apply(tiny, ctx, vlm, freeze=()):
    method = tiny.build(full_plugin.SPEC, ctx, {"freeze": list(freeze)})
    assert isinstance(method, FullFineTuning)
    assert method.apply(vlm) is vlm
    assert vlm.peft_method is method
    return method


@pytest.mark.parametrize(
    "freeze",
    [(), ("vision_encoder",), ("llm",), ("vision_encoder", "connector"), ("vision_encoder", "connector", "llm")],
)
def test_freeze_exactly_the_named_parts(tiny, ctx, vlm, freeze):
    for p in vlm.parameters():  # start from a mixed state: apply must set every flag
        p.requires_grad_(False)
    next(vlm.connector.parameters()).requires_grad_(True)
    _apply(tiny, ctx, vlm, freeze)
    modules = {part: part_modules(vlm, part) for part in PARTS}
    assert modules["fusion"] is None  # interleaved fusion adds no modules
    for part, module in modules.items():
        if module is not None:
            assert {p.requires_grad for p in module.parameters()} == {part not in freeze}, part
    n_trainable, _total = vlm.trainable_parameters()
    assert n_trainable == sum(
        p.numel() for part, m in modules.items() if part not in freeze and m is not None for p in m.parameters()
    )


def test_unknown_part_rejected():
    from vlmplug.registry import validate_options

    _, problems = validate_options(full_plugin.SPEC, {"freeze": ["vision"]}, "peft.full")
    assert problems and "vision" in problems[0]


def test_save_llm_writes_loadable_llm(tiny, tokenizer, ctx, vlm, tmp_path):
    method = _apply(tiny, ctx, vlm, freeze=("vision_encoder",))
    # change the LLM so that a reload of the initial weights could not pass
    batch = tiny.make_batch(vlm, tokenizer, (1,))
    opt = torch.optim.SGD([p for p in vlm.parameters() if p.requires_grad], lr=0.5)
    vlm(**batch).loss.backward()
    opt.step()

    assert method.save_llm(vlm, tmp_path) == {"llm": "llm"}
    assert (tmp_path / "llm" / "config.json").is_file()
    assert (tmp_path / "llm" / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "llm").eval()
    vlm.eval()
    ids = torch.randint(6, len(tokenizer), (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # identical weights; the reload picks sdpa attention where the tiny LLM used eager, hence ~1e-7
        torch.testing.assert_close(loaded(input_ids=ids).logits, vlm.llm(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    for name, p in vlm.llm.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name
