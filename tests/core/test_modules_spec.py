"""The per-module spec (``modules:``) and the stage presets (``stage:``) as a recipe resolves them:
what each part does, which PEFT method that selects, precedence, and every bad value named."""

from __future__ import annotations

from typing import Any

import pytest

from vlmplug.errors import ConfigError
from vlmplug.modules import ModulePlan, parse_modules
from vlmplug.recipe import parse_set, resolve, stage_names

BASE: dict[str, Any] = {
    "model": "tiny-llama",
    "vision_encoder": {"name": "clip", "model": "tiny"},
    "connector": "mlp",
    "datasets": ["shapes"],
}


def run(host: Any, data: dict[str, Any], plugins: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> Any:
    return resolve({**BASE, **data}, host.registry, host=host, plugins=list(plugins), sets=parse_set(sets))


def problems(host: Any, data: dict[str, Any], sets: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as e:
        run(host, data, sets=sets)
    return e.value.problems


# -- parsing ---------------------------------------------------------------------------------------


def test_shorthand_and_full_form() -> None:
    plans, errs = parse_modules(
        {"vision_encoder": "frozen", "connector": {"train": "full", "learning_rate": "1e-3"}}, ["lora"]
    )
    assert errs == []
    assert plans == {
        "vision_encoder": ModulePlan(train="frozen"),
        "connector": ModulePlan(train="full", learning_rate=1e-3),
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"conector": "full"}, "modules.conector: unknown part (did you mean 'connector'?)"),
        ({"connector": {"lr": 1e-3}}, "modules.connector.lr: unknown setting"),
        ({"connector": {"learning_rate": 0}}, "modules.connector.learning_rate: must be > 0, got 0"),
        ({"connector": {"weight_decay": -1}}, "modules.connector.weight_decay: must be >= 0"),
        ({"connector": {"learning_rate": "fast"}}, "modules.connector.learning_rate: expected a number"),
        ({"connector": "lora"}, "modules.connector.train: 'lora' is not one of frozen, full (a PEFT method"),
        ({"llm": "lorra"}, "modules.llm.train: 'lorra' is not one of frozen, full, lora"),
        (["connector"], "modules: expected a mapping of part -> settings"),
    ],
)
def test_bad_values_name_the_key(value: Any, expected: str) -> None:
    _, errs = parse_modules(value, ["lora"])
    assert any(e.startswith(expected) for e in errs), errs


# -- resolution --------------------------------------------------------------------------------------


def test_llm_method_selects_the_peft_method(host: Any) -> None:
    r = run(host, {"modules": {"llm": {"train": "lora", "learning_rate": 2e-4}, "connector": {"learning_rate": 1e-3}}})
    assert r.single["peft"].name == "lora"
    assert r.core["modules"] == {"llm": {"train": "lora", "learning_rate": 2e-4}, "connector": {"learning_rate": 1e-3}}


def test_llm_full_or_frozen_means_full_fine_tuning(host: Any) -> None:
    assert run(host, {"modules": {"llm": "frozen"}}).single["peft"].name == "full"
    assert run(host, {"modules": {"llm": "full"}}).single["peft"].name == "full"


def test_llm_method_against_the_recipes_own_choice(host: Any) -> None:
    errs = problems(host, {"peft": "full", "modules": {"llm": "lora"}})
    assert any("modules.llm.train: 'lora' but the recipe's peft chooses 'full'" in e for e in errs), errs


def test_frozen_llm_with_an_adapter_method_is_refused(host: Any) -> None:
    errs = problems(host, {"peft": "lora", "modules": {"llm": "frozen"}})
    assert any("modules.llm.train: frozen, but PEFT method 'lora' trains the LLM" in e for e in errs), errs


def test_set_reaches_one_setting(host: Any) -> None:
    r = run(host, {"modules": {"connector": "full"}}, sets=("modules.connector.learning_rate=5e-4", "modules.llm=lora"))
    assert r.core["modules"]["connector"] == {"train": "full", "learning_rate": 5e-4}
    assert r.single["peft"].name == "lora"


# -- stages --------------------------------------------------------------------------------------------


def test_shipped_stages() -> None:
    assert stage_names() == ["align", "instruct", "task"]


def test_align_trains_the_connector_only_at_1e_3(host: Any) -> None:
    r = run(host, {"stage": "align"})
    assert r.single["peft"].name == "full"
    assert r.core["modules"] == {
        "vision_encoder": {"train": "frozen"},
        "llm": {"train": "frozen"},
        "connector": {"train": "full"},
        "fusion": {"train": "full"},
    }
    assert r.training["learning_rate"] == 1e-3
    assert r.training["num_train_epochs"] == 1
    assert any(n.startswith("stage: align ->") for n in r.notes)


def test_instruct_is_qlora_at_2e_4_or_full_at_2e_5(host: Any) -> None:
    qlora = run(host, {"stage": "instruct"})
    assert (qlora.single["peft"].name, qlora.training["learning_rate"]) == ("qlora", 2e-4)
    full = run(host, {"stage": "instruct", "use_peft": False})
    assert (full.single["peft"].name, full.training["learning_rate"]) == ("full", 2e-5)


def test_task_is_qlora_at_1e_4(host: Any) -> None:
    r = run(host, {"stage": "task"})
    assert (r.single["peft"].name, r.training["learning_rate"]) == ("qlora", 1e-4)


def test_the_recipe_wins_over_the_stage(host: Any) -> None:
    r = run(host, {"stage": "align", "learning_rate": 5e-4, "modules": {"vision_encoder": "full"}})
    assert r.training["learning_rate"] == 5e-4
    assert r.core["modules"]["vision_encoder"] == {"train": "full"}
    assert r.core["modules"]["llm"] == {"train": "frozen"}
    r = run(host, {"stage": "instruct", "peft": "lora"})
    assert r.single["peft"].name == "lora" and r.training["learning_rate"] == 2e-4


def test_unknown_stage(host: Any) -> None:
    errs = problems(host, {"stage": "allign"})
    assert any("stage: unknown stage 'allign' (did you mean 'align'?)" in e for e in errs), errs
