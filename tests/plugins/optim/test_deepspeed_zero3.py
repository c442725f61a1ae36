"""``deepspeed-zero3``: the recipe key selects it, its DeepSpeed config reaches TrainingArguments, and a
missing or bad config, values contradicting the recipe, ``fsdp`` beside it and a missing DeepSpeed
package are errors before anything loads. The training itself: tests/train/test_zero3.py (slow)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vlmplug.cli import cli
from vlmplug.errors import ConfigError
from vlmplug.manager import load
from vlmplug.plugins.optim import deepspeed_zero3 as ds_plugin
from vlmplug.recipe import parse_set, resolve
from vlmplug.testing import TINY_RECIPE
from vlmplug.train.hardware import Hardware

HOST = load()
CPU = Hardware(False, "cpu", False, False)
HAVE_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(not HAVE_DEEPSPEED, reason='needs DeepSpeed: pip install "vlmplug[deepspeed]"')


def _resolve(data: dict[str, Any], plugins: tuple[str, ...] = (), sets: tuple[str, ...] = (), check_deps: bool = False):
    return resolve(data, HOST.registry, host=HOST, plugins=list(plugins), sets=parse_set(sets), check_deps=check_deps)


def _problems(data: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as e:
        _resolve(data, **kwargs)
    return " | ".join(e.value.problems)


def _component(tiny: Any, options: dict[str, Any] | None = None) -> Any:
    return tiny.build(ds_plugin.SPEC, tiny.make_ctx(), options or {})


def _update(tiny: Any, options: dict[str, Any] | None = None, **args: Any) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []
    base = {"output_dir": "out", "per_device_train_batch_size": 8, "learning_rate": 2e-4, **args}
    return _component(tiny, options).update_training_args(base, CPU, notes.append), notes


@pytest.fixture
def ds_json(tmp_path: Path) -> Path:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}))
    return path


# -- selection --------------------------------------------------------------------------------------


def test_the_recipe_key_selects_it_with_its_path(ds_json: Path) -> None:
    recipe = _resolve({**TINY_RECIPE, "deepspeed": str(ds_json)})
    (sel,) = [s for s in recipe.optimizer_stack if s.name == "deepspeed-zero3"]
    assert sel.options == {"deepspeed": str(ds_json)}


def test_by_name_it_uses_the_shipped_config() -> None:
    recipe = _resolve(dict(TINY_RECIPE), plugins=("deepspeed-zero3",))
    (sel,) = recipe.optimizer_stack
    assert sel.options == {"deepspeed": "zero3"}
    shipped = json.loads(ds_plugin.shipped_config().read_text())
    assert shipped["zero_optimization"]["stage"] == 3
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert shipped[key] == "auto", key  # filled from the recipe's training values
    assert shipped["bf16"]["enabled"] == "auto"


def test_the_repository_copy_is_the_packaged_one() -> None:
    repo = Path(__file__).resolve().parents[3] / "recipes" / "deepspeed" / "zero3.json"
    assert json.loads(repo.read_text()) == json.loads(ds_plugin.shipped_config().read_text())


def test_false_selects_nothing() -> None:
    recipe = _resolve({**TINY_RECIPE, "deepspeed": False})
    assert [s.name for s in recipe.optimizer_stack] == []


# -- early errors -----------------------------------------------------------------------------------


def test_a_missing_config_file_is_named_when_the_recipe_resolves(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "zero3.json"
    text = _problems({**TINY_RECIPE, "deepspeed": str(missing)})
    assert str(missing) in text and "does not exist" in text


def test_invalid_json_is_named_with_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "zero_optimization": {"stage": 3,}\n}\n')
    text = _problems({**TINY_RECIPE, "deepspeed": str(bad)})
    assert str(bad) in text and "not valid JSON" in text and "line 2" in text


def test_a_json_list_and_a_bad_stage_are_refused(tmp_path: Path) -> None:
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    assert "must hold a JSON object" in _problems({**TINY_RECIPE, "deepspeed": str(listed)})
    assert "stage must be 0, 1, 2 or 3" in _problems({**TINY_RECIPE, "deepspeed": {"zero_optimization": {"stage": 4}}})


def test_training_args_fsdp_beside_it_is_refused(tiny: Any) -> None:
    with pytest.raises(ConfigError, match="both shard the model"):
        _update(tiny, fsdp="full_shard")


def test_values_hard_coded_against_the_recipe_are_refused_before_loading(tiny: Any) -> None:
    config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 8, "gradient_clipping": 1.0}
    with pytest.raises(ConfigError) as e:
        _update(tiny, {"deepspeed": config}, per_device_train_batch_size=4, max_grad_norm=0.5)
    text = " ".join(e.value.problems)
    assert "train_micro_batch_size_per_gpu is 8 but the run's per_device_train_batch_size is 4" in text
    assert "gradient_clipping is 1.0 but the run's max_grad_norm is 0.5" in text
    # equal values and "auto" pass; bf16 is compared only once the run sets it (mixed-precision may come later)
    config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 8, "bf16": {"enabled": True}}
    args, _ = _update(tiny, {"deepspeed": config})
    assert args["deepspeed"] == config
    with pytest.raises(ConfigError, match=r"bf16\.enabled is True but the run's bf16 is False"):
        _update(tiny, {"deepspeed": config}, bf16=False)


# -- what it hands to transformers ------------------------------------------------------------------


def test_training_args_get_the_config_path_and_not_use_cpu(tiny: Any, ds_json: Path) -> None:
    args, notes = _update(tiny, {"deepspeed": str(ds_json)}, use_cpu=True)
    assert args["deepspeed"] == str(ds_json.resolve())
    assert args["use_cpu"] is False  # use_cpu makes transformers skip DeepSpeed
    assert args["learning_rate"] == 2e-4
    assert any("ZeRO stage 3" in n and str(ds_json.resolve()) in n for n in notes)


def test_a_lower_stage_is_noted(tiny: Any) -> None:
    _, notes = _update(tiny, {"deepspeed": {"zero_optimization": {"stage": 2}}})
    assert any("ZeRO stage 2: parameters stay whole" in n for n in notes)


def test_outside_a_run_the_process_environment_is_left_alone(tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(var, "")  # recorded, so what launch_setup sets is undone after the test
        monkeypatch.delenv(var)
    _update(tiny)
    assert "RANK" not in os.environ and "LOCAL_RANK" not in os.environ


def test_in_a_run_without_a_launcher_one_process_is_described(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmplug.plugins.optim._deepspeed_zero3 import launch_setup

    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(var, "")  # recorded, so what launch_setup sets is undone after the test
        monkeypatch.delenv(var)
    notes: list[str] = []
    assert launch_setup(CPU, notes.append) == {}
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("0", "0", "1")
    assert int(os.environ["MASTER_PORT"]) > 0
    assert any("no launcher" in n for n in notes)


def test_accelerate_cpu_flag_with_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmplug.plugins.optim._deepspeed_zero3 import launch_setup

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
        launch_setup(Hardware(True, "A100", True, True), lambda _: None)


@needs_deepspeed
def test_transformers_reads_the_shipped_config_with_the_recipe_values(tiny: Any, tmp_path: Path) -> None:
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    args, _ = _update(
        tiny,
        output_dir=str(tmp_path),
        report_to="none",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_grad_norm=0.5,
    )
    try:
        built = TrainingArguments(**args)
        ds = built.hf_deepspeed_config
        assert ds.is_zero3()
        assert ds.config["train_micro_batch_size_per_gpu"] == 4
        assert ds.config["gradient_accumulation_steps"] == 2
        assert ds.config["gradient_clipping"] == 0.5
        assert ds.config["bf16"]["enabled"] is False
    finally:
        unset_hf_deepspeed_config()


@needs_deepspeed
def test_model_load_kwargs_keeps_the_model_whole(tiny: Any, tmp_path: Path) -> None:
    """With ZeRO-3 TrainingArguments alive, transformers would build from_pretrained models partitioned."""
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    comp = _component(tiny)
    args = comp.update_training_args({"output_dir": str(tmp_path), "report_to": "none"}, CPU, lambda _: None)
    try:
        built = TrainingArguments(**args)
        assert is_deepspeed_zero3_enabled()
        assert comp.model_load_kwargs() == {}
        assert not is_deepspeed_zero3_enabled()
        assert built.deepspeed
    finally:
        unset_hf_deepspeed_config()


# -- without the package ----------------------------------------------------------------------------


@pytest.fixture
def without_deepspeed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "deepspeed" or name.startswith("deepspeed.") else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_without_deepspeed_it_lists_as_missing_its_extra(without_deepspeed: None) -> None:
    res = CliRunner().invoke(cli, ["list", "--json"], env={"VLMPLUG_LOAD_PLUGINS": ""})
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["deepspeed-zero3"]["status"] == "missing-extra"


def test_without_deepspeed_selecting_it_fails_naming_the_extra(without_deepspeed: None) -> None:
    text = _problems(dict(TINY_RECIPE), plugins=("deepspeed-zero3",), check_deps=True)
    assert 'deepspeed-zero3 needs deepspeed, which is not installed: pip install "vlmplug[deepspeed]"' in text
