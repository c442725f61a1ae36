"""transformers' Trainer, with atomic safetensors checkpoints, a rich progress bar and hook calls."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from safetensors.torch import save_model
from transformers import Trainer, TrainerCallback

__all__ = ["VLMTrainer", "RichProgressCallback", "LifecycleCallback", "CurveCallback", "save_atomically"]


def save_atomically(directory: str | Path, write: Any) -> Path:
    """Call ``write(tmp_dir)`` then rename into place, so a crash never leaves a half-written directory."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


class VLMTrainer(Trainer):
    """Checkpoints hold the whole model as one ``model.safetensors`` (shared tensors de-duplicated),
    which Trainer's own resume path loads; each checkpoint is written to ``*.partial`` and renamed."""

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        save_model(self.model, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
        torch_save_args = os.path.join(output_dir, "training_args.json")
        Path(torch_save_args).write_text(json.dumps(self.args.to_dict(), indent=2, default=str))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        real_root = self.args.output_dir
        staging_root = os.path.join(real_root, ".partial")
        os.makedirs(staging_root, exist_ok=True)
        self.args.output_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = real_root
        for name in os.listdir(staging_root):
            target = os.path.join(real_root, name)
            if os.path.exists(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging_root, name), target)
        shutil.rmtree(staging_root, ignore_errors=True)
        if self.args.save_total_limit:
            self._rotate_checkpoints(use_mtime=False, output_dir=real_root)


class LifecycleCallback(TrainerCallback):
    """Forwards Trainer events to the plugins' lifecycle hooks and appends logs to the run log."""

    def __init__(self, host: Any, log_path: Path):
        self.host = host
        self.log_path = log_path

    def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
        self.host.notify("on_train_start", state=state)

    def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
        logs = dict(logs or {})
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")
        self.host.notify("on_log", state=state, metrics=logs)

    def on_save(self, args, state, control, **kw):  # noqa: ANN001
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        self.host.notify("on_checkpoint_saved", path=path)


class RichProgressCallback(TrainerCallback):
    """One rich progress bar: step, loss, learning rate, samples/s and ETA."""

    def __init__(self, console: Any, samples_per_step: int):
        self.console = console
        self.samples_per_step = samples_per_step
        self.progress = None
        self.task = None
        self.loss = float("nan")
        self.lr = float("nan")
        self.start = 0.0

    def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[sps]:.0f} samples/s"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, loss=float("nan"), lr=0.0, sps=0.0)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
        if self.progress is None:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        sps = state.global_step * self.samples_per_step / elapsed
        self.progress.update(self.task, completed=state.global_step, sps=sps)

    def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.progress.update(self.task, loss=float(logs["loss"]))
        if "learning_rate" in logs:
            self.progress.update(self.task, lr=float(logs["learning_rate"]))

    def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class CurveCallback(TrainerCallback):
    """Evaluates every ``every`` steps and records ``{step, seconds, accuracy, ...}`` points."""

    def __init__(self, every: int, evaluate: Any, console: Any):
        self.every = every
        self.evaluate = evaluate
        self.console = console
        self.points: list[dict[str, Any]] = []
        self.start = time.perf_counter()
        self.eval_time = 0.0

    def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
        if state.global_step % self.every and state.global_step != state.max_steps:
            return
        t0 = time.perf_counter()
        train_seconds = t0 - self.start - self.eval_time  # training time so far, evaluations excluded
        result = self.evaluate()
        self.eval_time += time.perf_counter() - t0
        point = {"step": state.global_step, "train_seconds": round(train_seconds, 1),
                 **{k: v for k, v in result.items() if k in ("accuracy", "yes_ratio", "per_type")}}
        self.points.append(point)
        extra = f", yes ratio {point['yes_ratio']:.2f}" if "yes_ratio" in point else ""
        self.console.print(f"  step {state.global_step}: held-out accuracy {point['accuracy']:.3f}{extra}",
                           highlight=False)
