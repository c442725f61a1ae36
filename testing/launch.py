"""``vlmplug train`` in subprocesses, for tests of multi-process runs: one process, or several CPU
processes under ``accelerate launch`` (gloo), with the environment tests need (no autoloaded plugins,
one thread per process, offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["train_subprocess", "logged_losses"]


def train_subprocess(
    recipe: str | Path,
    out: str | Path,
    *,
    processes: int = 1,
    sets: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    """Run ``vlmplug train RECIPE --output-dir OUT --set ...``; several processes run as CPU data
    parallelism under ``accelerate launch``. Fails the test (``AssertionError`` with the end of stderr)
    when the run does not exit 0."""
    full_env = {
        **os.environ,
        "VLMPLUG_LOAD_PLUGINS": "",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    args = ["-m", "vlmplug", "train", str(recipe), "--output-dir", str(out)]
    for item in sets:
        args += ["--set", item]
    cmd = [sys.executable, *args]
    if processes > 1:
        full_env["ACCELERATE_USE_CPU"] = "true"
        launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd = [sys.executable, *launch, "--main_process_port", "0", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def logged_losses(run_dir: str | Path) -> list[tuple[int, float]]:
    """``(step, loss)`` of every logged training loss in a run's ``train.log``."""
    lines = [json.loads(line) for line in (Path(run_dir) / "train.log").read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in lines if "loss" in e]
