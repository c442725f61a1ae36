"""Benchmark the quickstart and the CLI start-up; run by hand, results go to bench/results/.

    python bench/quickstart.py            # full quickstart (about 5 minutes on 2 cores)
    python bench/quickstart.py --set max_steps=300

Measures: held-out accuracy before/after and along training (the curve), yes-ratio of yes/no
answers, accuracy with blank images against the answer-prior baseline, wall times, and the wall
time of `vlmplug list` / `vlmplug --help` (median of 5). Targets (issue 2): accuracy >= 0.90 within
5 minutes of training on 2 CPU cores, yes-ratio in [0.4, 0.6], blank-image accuracy no more than
10 points above the prior.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return round(statistics.median(times), 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[], help="passed to vlmplug train --set")
    ap.add_argument("--out", default=str(HERE / "results" / "quickstart.json"))
    args = ap.parse_args()
    exe = [sys.executable, "-m", "vlmplug"]
    result: dict = {"machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()}}
    result["cli_seconds"] = {
        "list": timed([*exe, "list"]),
        "help": timed([*exe, "--help"]),
        "config": timed([*exe, "config"]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [*exe, "train", "--output-dir", str(run_dir)]
        for s in args.set:
            cmd += ["--set", s]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        result["train_command_seconds"] = round(time.perf_counter() - t, 1)
        metrics = json.loads((run_dir / "metrics.json").read_text())
    after = metrics["after"]["shapes"]["vqa"]
    before = metrics.get("before", {}).get("shapes", {}).get("vqa", {})
    blank = metrics["after"]["blank-images"]["vqa"]["accuracy"]
    prior = metrics["baselines"]["shapes"]["vqa"]["answer_prior"]["accuracy"]
    result.update(
        overrides=args.set,
        accuracy_before=before.get("accuracy"),
        accuracy_after=after["accuracy"],
        per_type_after=after.get("per_type"),
        yes_ratio_after=after.get("yes_ratio"),
        blank_image_accuracy_after=blank,
        prior_accuracy=prior,
        train=metrics["train"],
        curve=[
            {
                "step": p["step"],
                "train_seconds": p["train_seconds"],
                "samples": p["samples"],
                "accuracy": p["metrics"]["vqa"]["accuracy"],
                "yes_ratio": p["metrics"]["vqa"].get("yes_ratio"),
            }
            for p in metrics.get("curve", [])
        ],
        run_wall_seconds=metrics.get("wall_time_s"),
    )
    result["targets"] = {  # train wall_time_s excludes the curve's evaluations
        "accuracy>=0.90": after["accuracy"] >= 0.90,
        "train_seconds<=300": metrics["train"]["wall_time_s"] <= 300,
        "yes_ratio in [0.4,0.6]": 0.4 <= (after.get("yes_ratio") or 0) <= 0.6,
        "blank <= prior+0.10": blank <= prior + 0.10,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
