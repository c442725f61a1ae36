"""transformers' Trainer, with slim atomic checkpoints, a rich progress bar and the plugins' hooks.

What this relies on from the Trainer, and where (each pinned by ``tests/train/test_trainer_contract.py``):

* public ``save_model(output_dir)`` is how every checkpoint writes the model: we write only the
  parameters that train (adapters, connector, ...), so an adapter run's checkpoint does not carry the
  frozen base; optimizer, scheduler, RNG and trainer state are the Trainer's own files;
* resuming loads ``model.safetensors`` with ``load_state_dict(strict=False)`` and, when the missing
  keys equal ``model._keys_to_ignore_on_save``, calls ``model.tie_weights()``: the frozen weights are
  already in the model we rebuilt, so restoring the trainable ones is a full restore;
* private ``_save_checkpoint`` writes everything under ``args.output_dir/checkpoint-N``: we point
  ``output_dir`` at a staging folder for the call and rename the finished folder into place, so a
  crash never leaves a half-written checkpoint (no public hook exists for that);
* public ``compute_loss`` sees every batch first: it takes the batch's skipped-sample records out
  before the model is called.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import rotate_checkpoints

from .data import SKIPPED_KEY
from .vlm import trainable_state_dict

__all__ = [
    "TimeBudget",
    "VLMTrainer",
    "RichProgressCallback",
    "LifecycleCallback",
    "CurveCallback",
    "TrainClock",
    "save_atomically",
    "CHECKPOINT_STATE",
    "complete_checkpoints",
]

log = logging.getLogger("vlmplug")
CHECKPOINT_STATE = "vlmplug_state.json"  # written last: a checkpoint is complete when it exists


def save_atomically(directory: str | Path, write: Callable[[Path], None]) -> Path:
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


def complete_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders that were written completely, oldest first."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-")[-1].isdigit() and (p / CHECKPOINT_STATE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


class TrainClock(TrainerCallback):
    """Training seconds (evaluations excluded) and samples, carried across resumes in checkpoints."""

    def __init__(self, samples_per_step: int, earlier_seconds: float = 0.0):
        self.samples_per_step = samples_per_step
        self.earlier_seconds = earlier_seconds  # from the checkpoint this run resumed
        self.paused = 0.0
        self.start = time.perf_counter()
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kw):
        self.start = time.perf_counter()
        self.start_step = state.global_step

    def pause(self, seconds: float) -> None:
        """Exclude ``seconds`` (an evaluation during training) from the training time."""
        self.paused += seconds

    @property
    def seconds_this_run(self) -> float:
        return max(time.perf_counter() - self.start - self.paused, 1e-9)

    @property
    def seconds(self) -> float:
        return self.earlier_seconds + self.seconds_this_run

    def samples_per_second(self, step: int) -> float:
        return (step - self.start_step) * self.samples_per_step / self.seconds_this_run


class TimeBudget(TrainerCallback):
    """Stops training once ``seconds`` of training time (the clock's: evaluations excluded) have passed."""

    def __init__(self, seconds: float, clock: TrainClock):
        self.seconds = seconds
        self.clock = clock
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kw):
        if self.clock.seconds >= self.seconds and not control.should_training_stop:
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


class VLMTrainer(Trainer):
    """Slim atomic checkpoints (see the module docstring) and the run's skip report."""

    def __init__(self, *args: Any, clock: TrainClock, on_skipped: Callable[[list[dict]], None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.clock = clock
        self.on_skipped = on_skipped

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        skipped = inputs.pop(SKIPPED_KEY, None)
        if skipped:
            self.on_skipped(skipped)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            super().save_model(output_dir, _internal_call)
            return
        output_dir = str(output_dir or self.args.output_dir)
        model = self.accelerator.unwrap_model(self.model)
        state = trainable_state_dict(model)
        model._keys_to_ignore_on_save = [k for k in model.state_dict() if k not in state]
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_file(state, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
        Path(output_dir, "training_args.json").write_text(json.dumps(self.args.to_dict(), indent=2, default=str))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        real_root = str(self.args.output_dir)
        staging_root = os.path.join(real_root, ".partial")
        if self.args.should_save:
            os.makedirs(staging_root, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self.args.output_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = real_root
        self.accelerator.wait_for_everyone()  # every rank wrote its RNG state
        if self.args.should_save:
            for name in os.listdir(staging_root):
                Path(staging_root, name, CHECKPOINT_STATE).write_text(
                    json.dumps({"step": self.state.global_step, "train_seconds": self.clock.seconds})
                )
                target = os.path.join(real_root, name)
                if os.path.exists(target):
                    shutil.rmtree(target)
                os.replace(os.path.join(staging_root, name), target)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                real_root,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()


class LifecycleCallback(TrainerCallback):
    """Forwards Trainer events to the plugins' lifecycle hooks and the trainer's logs to the run log."""

    def __init__(self, host: Any, clock: TrainClock, is_main: bool):
        self.host = host
        self.clock = clock
        self.is_main = is_main

    def on_train_begin(self, args, state, control, **kw):
        self.host.notify("on_train_start", state=state)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        if self.is_main:
            log.info(
                "train",
                extra={"vlmplug": {"step": state.global_step, **logs, "train_seconds": round(self.clock.seconds, 2)}},
            )
        self.host.notify("on_log", state=state, metrics=logs)

    def on_save(self, args, state, control, **kw):
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        self.host.notify("on_checkpoint_saved", path=path)


class RichProgressCallback(TrainerCallback):
    """One rich progress bar: step, loss, learning rate, samples/s (all processes) and ETA."""

    def __init__(self, console: Any, clock: TrainClock):
        self.console = console
        self.clock = clock
        self.progress: Any = None
        self.task: Any = None

    def on_train_begin(self, args, state, control, **kw):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[sps]:.1f} samples/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=state.max_steps, completed=state.global_step, loss=float("nan"), lr=0.0, sps=0.0
        )

    def on_step_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.update(
                self.task, completed=state.global_step, sps=self.clock.samples_per_second(state.global_step)
            )

    def on_log(self, args, state, control, logs=None, **kw):
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.progress.update(self.task, loss=float(logs["loss"]))
        if "learning_rate" in logs:
            self.progress.update(self.task, lr=float(logs["learning_rate"]))

    def on_train_end(self, args, state, control, **kw):
        self.stop()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class CurveCallback(TrainerCallback):
    """Evaluates every ``every`` steps before the last (the last point is the final evaluation) and
    records ``{step, train_seconds, samples, metrics}`` points; evaluation time is not training time."""

    def __init__(
        self,
        every: int,
        evaluate: Callable[[], tuple[int, dict[str, Any], str]],
        clock: TrainClock,
        say: Callable[[str], None],
    ):
        self.every = every
        self.evaluate = evaluate
        self.clock = clock
        self.say = say
        self.points: list[dict[str, Any]] = []
        self.eval_seconds = 0.0

    def on_step_end(self, args, state, control, **kw):
        if state.global_step % self.every or state.global_step >= state.max_steps:
            return
        t0 = time.perf_counter()
        train_seconds = self.clock.seconds
        samples, metrics, summary = self.evaluate()
        spent = time.perf_counter() - t0
        self.clock.pause(spent)
        self.eval_seconds += spent
        self.add(state.global_step, train_seconds, samples, metrics, summary)

    def add(self, step: int, train_seconds: float, samples: int, metrics: dict[str, Any], summary: str) -> None:
        self.points.append(
            {"step": step, "train_seconds": round(train_seconds, 1), "samples": samples, "metrics": metrics}
        )
        self.say(f"  step {step}: {summary}")
