"""A shorter quickstart in the default test run: the real recipe (tiny CLIP + tiny Llama on
synthetic shapes), fewer steps. It must learn well above the answer prior, keep yes/no answers
balanced, and depend on the image (blank images fall back to about the prior)."""

from __future__ import annotations

import json
from pathlib import Path

from vlmplug.manager import load
from vlmplug.recipe import load_recipe, parse_set, resolve


def test_short_quickstart_learns(tmp_path: Path) -> None:
    from rich.console import Console

    from vlmplug.train.run import run

    host = load(autoload=False)
    data, source = load_recipe(None)
    sets = [
        "max_steps=300",
        "datasets.0.num_samples=9600",
        "eval_datasets.0.num_samples=200",
        "eval_datasets.1.num_samples=200",
        "eval_every_steps=null",
        "warmup_steps=30",
    ]
    recipe = resolve(data, host.registry, host=host, sets=parse_set(sets), source=source)
    result = run(recipe, host, output_dir=str(tmp_path / "qs"), console=Console(quiet=True))

    metrics = json.loads((tmp_path / "qs" / "metrics.json").read_text())
    before, after = metrics["before"]["shapes"]["vqa"], metrics["after"]["shapes"]["vqa"]
    blank = metrics["after"]["blank-images"]["vqa"]
    prior = metrics["baselines"]["shapes"]["vqa"]["answer_prior"]["accuracy"]
    assert 0.2 < prior < 0.5  # majority answer per question type
    assert before["accuracy"] < prior + 0.1  # an untrained model knows nothing
    assert after["accuracy"] > prior + 0.3, after  # clearly above chance after 300 steps
    assert 0.3 <= after["yes_ratio"] <= 0.7, after  # no collapse onto one yes/no answer
    assert blank["accuracy"] < after["accuracy"] - 0.2  # it looks at the image
    assert metrics["primary"] == {
        "metric": "shapes/vqa/accuracy",
        "before": before["accuracy"],
        "after": after["accuracy"],
    }
    assert metrics["train"]["final_loss"] < metrics["train"]["first_loss"] / 4
    assert (result.run_dir / "model" / "llm" / "model.safetensors").is_file()
