"""The per-module spec on a built model: what it freezes, the optimizer's parameter groups (each
part's learning rate really is the step it takes), and the table a run records."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from vlmplug.modules import ModulePlan
from vlmplug.plugins.peft import full as full_plugin
from vlmplug.plugins.peft import lora as lora_plugin
from vlmplug.testing import tiny as tiny_mod
from vlmplug.train.modules import apply_module_plan, build_optimizer, module_table, parameter_groups, parameter_parts


@pytest.fixture
def tok() -> Any:
    return tiny_mod.make_tokenizer()


@pytest.fixture
def model(tok: Any) -> Any:
    return tiny_mod.make_vlm(tok, tiny_mod.make_ctx())


def _args(**kw: Any) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to="none", **kw)


def _method(spec: Any, **options: Any) -> Any:
    return tiny_mod.build(spec, tiny_mod.make_ctx(), options)


def test_frozen_and_full_override_the_method(model: Any) -> None:
    model = _method(full_plugin.SPEC).apply(model)
    apply_module_plan(model, {"vision_encoder": ModulePlan(train="frozen"), "llm": ModulePlan(train="frozen")})
    assert not any(p.requires_grad for p in model.vision_encoder.parameters())
    assert not any(p.requires_grad for p in model.llm.parameters())
    assert all(p.requires_grad for p in model.connector.parameters())


def test_unnamed_parts_keep_what_the_method_decided(model: Any) -> None:
    model = _method(lora_plugin.SPEC, lora_r=4).apply(model)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    apply_module_plan(model, {"connector": ModulePlan(learning_rate=1e-2)})
    assert before == {n: p.requires_grad for n, p in model.named_parameters()}


def test_fusion_without_modules_has_nothing_to_train(model: Any) -> None:
    """The align stage says fusion: full; under interleaved fusion (no modules) that changes nothing."""
    model = _method(full_plugin.SPEC).apply(model)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    apply_module_plan(model, {"fusion": ModulePlan(train="full")})
    assert before == {n: p.requires_grad for n, p in model.named_parameters()}
    assert "fusion" not in {r["part"] for r in module_table(model, 1e-3, "full")}


def test_every_parameter_has_one_part(model: Any) -> None:
    owner = parameter_parts(model)
    assert len(owner) == len(list(model.parameters()))
    assert {owner[id(p)] for p in model.connector.parameters()} == {"connector"}
    assert {owner[id(p)] for p in model.llm.parameters()} == {"llm"}


def test_groups_carry_each_parts_rate_and_the_trainers_decay_split(model: Any) -> None:
    model = _method(full_plugin.SPEC).apply(model)
    apply_module_plan(model, {"connector": ModulePlan(learning_rate=1e-2, weight_decay=0.5)})
    groups = parameter_groups(model, _args(learning_rate=1e-4, weight_decay=0.1))
    by = {(g["part"], g["weight_decay"] > 0): g for g in groups}
    assert by[("connector", True)]["lr"] == 1e-2 and by[("connector", True)]["weight_decay"] == 0.5
    assert by[("llm", True)]["lr"] == 1e-4 and by[("llm", True)]["weight_decay"] == 0.1
    # norms and biases take no decay, as in transformers' Trainer
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    norm = model.llm.model.norm.weight
    assert id(norm) in no_decay
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == sum(1 for p in model.parameters() if p.requires_grad)


def test_without_own_rates_the_optimizer_equals_the_trainers(model: Any) -> None:
    """Same class, same hyper-parameters, the same parameters under the same lr and decay."""
    from transformers import Trainer

    model = _method(full_plugin.SPEC).apply(model)
    args = _args(learning_rate=1e-3, weight_decay=0.1)
    reference = Trainer(model=model, args=args).create_optimizer()
    ours = build_optimizer(model, args)
    assert type(ours) is type(reference)

    def settings(opt: Any) -> dict[int, tuple[float, float]]:
        return {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}

    assert settings(ours) == settings(reference)
    assert {k: v for k, v in ours.defaults.items() if k != "lr"} == {
        k: v for k, v in reference.defaults.items() if k != "lr"
    }


def test_a_parts_rate_is_the_step_it_takes(model: Any, tok: Any) -> None:
    """Plain SGD: each weight moves by its part's lr x its gradient."""
    model = _method(full_plugin.SPEC).apply(model)
    apply_module_plan(model, {"connector": ModulePlan(learning_rate=0.5)})
    args = _args(learning_rate=0.01, weight_decay=0.0, optim="sgd")
    opt = build_optimizer(model, args)
    batch = tiny_mod.make_batch(model, tok)
    model(**batch).loss.backward()
    w_conn = next(model.connector.parameters())
    w_llm = model.llm.model.layers[0].mlp.up_proj.weight
    before = (w_conn.detach().clone(), w_llm.detach().clone())
    grads = (w_conn.grad.clone(), w_llm.grad.clone())
    opt.step()
    torch.testing.assert_close(w_conn.detach(), before[0] - 0.5 * grads[0])
    torch.testing.assert_close(w_llm.detach(), before[1] - 0.01 * grads[1])


def test_table_counts_each_part(model: Any) -> None:
    model = _method(lora_plugin.SPEC, lora_r=4).apply(model)
    apply_module_plan(model, {"connector": ModulePlan(learning_rate=1e-3)})
    rows = {r["part"]: r for r in module_table(model, 2e-4, "lora")}
    assert rows["vision_encoder"]["trainable"] == 0 and rows["vision_encoder"]["train"] == "frozen"
    assert rows["connector"]["train"] == "full" and rows["connector"]["learning_rate"] == 1e-3
    lora = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n)
    assert rows["llm"]["trainable"] == lora and rows["llm"]["train"] == "lora"
    assert rows["llm"]["learning_rate"] == 2e-4
    assert sum(r["parameters"] for r in rows.values()) == sum(p.numel() for p in model.parameters())


def test_a_run_uses_the_spec(run_recipe: Any, monkeypatch: Any) -> None:
    import yaml

    from vlmplug.train.trainer import VLMTrainer

    made: list[Any] = []
    original = VLMTrainer.create_optimizer

    def recording(self: Any, model: Any = None) -> Any:
        made.append(original(self, model))
        return made[-1]

    monkeypatch.setattr(VLMTrainer, "create_optimizer", recording)
    res = run_recipe(
        None, steps=2, modules={"vision_encoder": "frozen", "connector": {"learning_rate": 5e-3}, "llm": "frozen"}
    )
    vlm = res.model
    assert not any(p.requires_grad for p in vlm.llm.parameters())
    assert all(p.requires_grad for p in vlm.connector.parameters())
    saved = yaml.safe_load((res.run_dir / "resolved_recipe.yaml").read_text())
    rows = {r["part"]: r for r in saved["runtime"]["modules"]}
    assert rows["connector"]["learning_rate"] == 5e-3 and rows["connector"]["train"] == "full"
    assert rows["llm"]["train"] == "frozen" and rows["llm"]["trainable"] == 0
    # the Trainer's optimizer holds the connector at its own rate (initial_lr: before the schedule)
    connector = {id(p) for p in vlm.connector.parameters()}
    rates = {g["initial_lr"] for g in made[-1].param_groups if {id(p) for p in g["params"]} & connector}
    assert rates == {5e-3}
