"""Multi-process training under ``accelerate launch`` (2 CPU processes, gloo): one set of outputs,
written by the main process; tokenised once; samples/s for the world; and the loss curve of the
single-process run with the same global batch (the reference), step for step.

accelerate seeds the same sampler on every rank and deals whole per-device batches round-robin, so
global step k holds exactly the samples of single-process step k with batch 2b."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from vlmplug.testing import TINY_RECIPE
from vlmplug.testing.launch import logged_losses, train_subprocess

pytestmark = pytest.mark.slow

STEPS = 6


def _train(recipe: Path, out: Path, batch: int, processes: int) -> subprocess.CompletedProcess:
    return train_subprocess(recipe, out, processes=processes, sets=[f"per_device_train_batch_size={batch}"])


_losses = logged_losses


def test_two_processes_give_the_single_process_curve_and_one_set_of_outputs(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                **TINY_RECIPE,
                "max_steps": STEPS,
                "learning_rate": 5e-3,
                "max_grad_norm": 0.0,
                "eval_before_training": False,
            }
        )
    )
    one = tmp_path / "one"
    two = tmp_path / "two"
    _train(recipe, one, batch=8, processes=1)
    launched = _train(recipe, two, batch=4, processes=2)

    a, b = _losses(one), _losses(two)
    print("1 process (batch 8):  ", [round(x, 6) for _, x in a])
    print("2 processes (batch 4):", [round(x, 6) for _, x in b])
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, STEPS + 1))
    for (_, x), (_, y) in zip(a, b):
        assert y == pytest.approx(x, rel=1e-5, abs=1e-6)

    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["tokenized_on_processes"] == [0]  # the other process read the main one's result
    assert metrics["train"]["samples"] == STEPS * 8  # the world's samples, not one process's
    assert metrics["train"]["samples_per_s"] > 0
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
    assert (two / "model" / "vlmplug_model.json").is_file()
    # one set of outputs: every log line and prediction once
    assert len(_losses(two)) == STEPS
    preds = (two / "predictions_after.jsonl").read_text().splitlines()
    assert len(preds) == TINY_RECIPE["eval_datasets"][0]["num_samples"]
    assert launched.stderr.count("vlmplug run tiny") == 1  # only the main process talks
