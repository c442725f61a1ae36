"""The shipped recipes' tiny twins train on CPU, as written (only shortened: fewer steps and samples):
the three stages chained through their saved models, the multi-stage recipe, Spectrum and full
fine-tuning with a per-module spec."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from vlmplug.recipe import load_recipe

pytest.importorskip("bitsandbytes")  # the instruct and task stages are QLoRA

STEPS = 6


def _short(data: dict[str, Any], steps: int = STEPS) -> dict[str, Any]:
    """The recipe with few samples and steps (everything else as shipped)."""
    out = dict(data)
    out["datasets"] = [{**d, "num_samples": 256} for d in data["datasets"]]
    out["eval_datasets"] = [{**d, "num_samples": 16} for d in data.get("eval_datasets", [])]
    out["max_steps"] = steps
    out["logging_steps"] = 1
    for stage in out.get("stages", []):
        stage["max_steps"] = steps
    return out


def _twin(name: str, **changes: Any) -> dict[str, Any]:
    data, _ = load_recipe(name)
    return {**_short(data), **changes}


def _modules(run_dir: Path) -> dict[str, dict[str, Any]]:
    saved = yaml.safe_load((run_dir / "resolved_recipe.yaml").read_text())
    return {r["part"]: r for r in saved["runtime"]["modules"]}


def test_three_stages_chain_through_saved_models(run_recipe: Any, tmp_path: Path) -> None:
    from vlmplug.train.model_io import load

    one = run_recipe(_twin("stage1-align-tiny"), steps=STEPS, output_dir=tmp_path / "one")
    rows = _modules(one.run_dir)
    assert rows["llm"]["trainable"] == rows["vision_encoder"]["trainable"] == 0
    assert rows["connector"]["train"] == "full" and rows["connector"]["learning_rate"] == 1e-3

    two = run_recipe(_twin("stage2-instruct-tiny", model=str(one.run_dir)), steps=STEPS, output_dir=tmp_path / "two")
    rows = _modules(two.run_dir)
    assert rows["llm"]["train"] == "qlora" and rows["llm"]["learning_rate"] == 2e-3
    manifest = json.loads((two.run_dir / "model" / "vlmplug_model.json").read_text())
    assert manifest["initialised_from"] == str(one.run_dir / "model")
    # stage 1 trained the projection only: stage 2 starts from exactly its connector
    first = load(one.run_dir)
    assert manifest["components"]["connector"]["name"] == "mlp"

    three = run_recipe(_twin("stage3-task-tiny", model=str(two.run_dir)), steps=STEPS, output_dir=tmp_path / "three")
    assert _modules(three.run_dir)["llm"]["train"] == "qlora"
    again = load(three.run_dir)
    assert again.tokens_per_image == first.tokens_per_image
    for res in (one, two, three):
        assert res.metrics["status"] == "finished" and res.metrics["train"]["steps"] == STEPS


def test_multi_stage_recipe(vlmplug_host: Any, tmp_path: Path) -> None:
    from rich.console import Console

    from vlmplug.stages import plan_stages, run_stages

    data = _short(load_recipe("stages-tiny")[0], steps=3)
    stages = plan_stages(data, str(tmp_path / "chain"))
    assert [s.run_dir.name for s in stages] == ["1-align", "2-instruct", "3-task"]
    results = run_stages(stages, vlmplug_host, plugins=[], sets=[], source="stages-tiny", console=Console(quiet=True))
    assert all(r is not None and r.metrics["status"] == "finished" for r in results)
    for previous, stage in itertools.pairwise(stages):
        manifest = json.loads((stage.run_dir / "model" / "vlmplug_model.json").read_text())
        assert manifest["initialised_from"] == str(previous.run_dir / "model")
    assert _modules(stages[0].run_dir)["llm"]["trainable"] == 0
    assert _modules(stages[1].run_dir)["llm"]["train"] == "qlora"
    # re-running the recipe trains nothing again
    again = run_stages(stages, vlmplug_host, plugins=[], sets=[], source="stages-tiny", console=Console(quiet=True))
    assert again == [None, None, None]


def test_a_typo_in_a_later_stage_stops_before_the_first_trains(vlmplug_host: Any, tmp_path: Path) -> None:
    from rich.console import Console

    from vlmplug.errors import ConfigError
    from vlmplug.stages import plan_stages, run_stages

    data = _short(load_recipe("stages-tiny")[0], steps=2)
    data["stages"][2]["learning_rat"] = 1e-3
    stages = plan_stages(data, str(tmp_path / "chain"))
    with pytest.raises(ConfigError) as e:
        run_stages(stages, vlmplug_host, plugins=[], sets=[], source="stages-tiny", console=Console(quiet=True))
    assert any(p.startswith("stage 3-task: learning_rat: unknown recipe key") for p in e.value.problems)
    assert not (tmp_path / "chain").exists()


@pytest.mark.parametrize("name", ["spectrum-tiny", "full-tiny"])
def test_twin_learns(run_recipe: Any, name: str) -> None:
    res = run_recipe(_twin(name, eval_datasets=[], evaluators=[]), steps=12)
    train = res.metrics["train"]
    assert train["final_loss"] < train["first_loss"]


def test_full_twin_freezes_the_tower_and_gives_the_projection_its_rate(run_recipe: Any) -> None:
    res = run_recipe(_twin("full-tiny", eval_datasets=[], evaluators=[]), steps=2)
    rows = _modules(res.run_dir)
    assert rows["vision_encoder"]["trainable"] == 0
    assert rows["connector"]["learning_rate"] == 2e-3 and rows["llm"]["learning_rate"] == 1e-3
    assert all(torch.isfinite(p).all() for p in res.model.connector.parameters())
