"""transformers' Trainer, with slim atomic checkpoints, a progress bar, metrics.jsonl and the plugins' hooks.

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
  before the model is called;
* ``state.num_input_tokens_seen`` is the Trainer's own token count: with
  ``include_num_input_tokens_seen: non_padding`` (the run's default) it adds each micro-batch's
  ``attention_mask`` sum (image tokens included), gathered over the processes, and restores it on
  resume; the progress bar and ``metrics.jsonl`` read it, so nothing is counted twice (pinned by
  ``tests/train/test_monitor.py``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import rotate_checkpoints

from vlmplug.errors import ConfigError, did_you_mean

from .data import SKIPPED_KEY, STATS_KEY
from .vlm import trainable_state_dict

__all__ = [
    "TimeBudget",
    "VLMTrainer",
    "report_targets",
    "RichProgressCallback",
    "LifecycleCallback",
    "CurveCallback",
    "MetricsFile",
    "METRICS_FILE",
    "read_metrics_lines",
    "append_metrics_line",
    "eval_record",
    "TrainClock",
    "save_atomically",
    "CHECKPOINT_STATE",
    "complete_checkpoints",
]

log = logging.getLogger("vlmplug")
CHECKPOINT_STATE = "vlmplug_state.json"  # written last: a checkpoint is complete when it exists
METRICS_FILE = "metrics.jsonl"


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


#: report_to name -> the packages it needs: (modules, any one of which will do; what to pip install).
TRACKER_PACKAGES: dict[str, tuple[tuple[tuple[str, ...], str], ...]] = {
    "tensorboard": ((("tensorboard", "tensorboardX"), "tensorboard"),),
    "wandb": ((("wandb",), "wandb"),),
    "mlflow": ((("mlflow",), "mlflow"),),
    "comet_ml": ((("comet_ml",), "comet_ml"),),
    "neptune": ((("neptune",), "neptune"),),
    "clearml": ((("clearml",), "clearml"),),
    "trackio": ((("trackio",), "trackio"),),
    "dvclive": ((("dvclive",), "dvclive"),),
    "swanlab": ((("swanlab",), "swanlab"),),
    "codecarbon": ((("codecarbon",), "codecarbon"),),
    "dagshub": ((("dagshub",), "dagshub"), (("mlflow",), "mlflow")),
    "azure_ml": ((("azureml",), "azureml-core"),),
}


def report_targets(report_to: Any) -> list[str]:
    """``report_to`` (``none``, ``all``, a name, ``"a,b"`` or a list) as a list of tracker names, checked
    without importing any tracker: an unknown name or a tracker whose package is not installed is a
    :class:`ConfigError` naming the package to install. ``[]`` means none."""
    import importlib.util

    if report_to is None:
        return []
    raw = report_to if isinstance(report_to, (list, tuple)) else str(report_to).split(",")
    names = [str(n).strip() for n in raw if str(n).strip() and str(n).strip() != "none"]
    if names == ["all"]:
        return names
    try:
        from transformers.integrations import INTEGRATION_TO_CALLBACK

        known = set(INTEGRATION_TO_CALLBACK)
    except ImportError:  # pragma: no cover - an older layout of transformers
        known = set(TRACKER_PACKAGES)
    problems = []
    for name in names:
        if name not in known:
            problems.append(
                f"report_to: '{name}' is not a tracker transformers knows{did_you_mean(name, known)}; "
                f"use one of {', '.join(sorted(known))}, 'all' or 'none'"
            )
            continue
        for modules, package in TRACKER_PACKAGES.get(name, ()):
            if not any(importlib.util.find_spec(m) is not None for m in modules):
                problems.append(
                    f"report_to: {name} needs the '{package}' package, which is not installed: "
                    f"pip install {package} (or drop {name} from report_to)"
                )
    if problems:
        raise ConfigError(problems, header="report_to")
    return names


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
        #: The collator's per-batch counts (``STATS_KEY``), summed over the batches trained on.
        self.batch_totals: dict[str, float] = {}

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        skipped = inputs.pop(SKIPPED_KEY, None)
        if skipped:
            self.on_skipped(skipped)
        for name, value in (inputs.pop(STATS_KEY, None) or {}).items():
            self.batch_totals[name] = self.batch_totals.get(name, 0) + value
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """``group_by_length`` from the lengths the dataset knows (``lengths()``), not from loading every
        item as the Trainer would (that decodes every image of the training set before step 1)."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        lengths = getattr(dataset, "lengths", None)
        if self.args.train_sampling_strategy == "group_by_length" and callable(lengths):
            from transformers.trainer_pt_utils import LengthGroupedSampler

            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=lengths()
            )
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model: Any = None) -> Any:
        """With per-module learning rates (``modules:``), the optimizer ``optim`` names over the parts'
        parameter groups; else the Trainer's own. Here rather than passed in, so that DeepSpeed and
        FSDP, which build the optimizer themselves, get the groups too."""
        from .modules import build_optimizer, has_own_rates

        target = self.model if model is None else model
        if self.optimizer is None and has_own_rates(self.accelerator.unwrap_model(target)):
            self.optimizer = build_optimizer(target, self.args, owner=self.accelerator.unwrap_model(target))
            return self.optimizer
        return super().create_optimizer(model)

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


def _hms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _tokens_tracked(args: Any) -> bool:
    """Whether the Trainer counts input tokens (``include_num_input_tokens_seen``; the run sets
    ``non_padding``: the attention mask's ones, image tokens included, summed over all processes)."""
    return getattr(args, "include_num_input_tokens_seen", "no") not in ("no", False, None)


class RichProgressCallback(TrainerCallback):
    """Step/total, the latest logged loss, learning rate, tokens/s and samples/s (all processes, this
    run so far), elapsed training time and ETA. A live rich bar when the console is interactive; on
    anything else (CI logs, a file, tests) one plain line per logging step instead."""

    def __init__(self, console: Any, clock: TrainClock, live: bool | None = None):
        self.console = console
        self.clock = clock
        self.live = bool(console.is_interactive or console.is_jupyter) if live is None else live
        self.progress: Any = None
        self.task: Any = None
        self.loss: float | None = None
        self.lr: float | None = None
        self.total = 0
        self.start_tokens = 0
        self.count_tokens = False

    def on_train_begin(self, args, state, control, **kw):
        self.total = state.max_steps
        self.start_tokens = state.num_input_tokens_seen
        self.count_tokens = _tokens_tracked(args)
        if not self.live:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}", markup=False),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, stats="")

    def stats(self, state: Any) -> str:
        """``loss 1.2345  lr 2.00e-04  1,234 tok/s  56.7 samples/s  0:01:02 < 0:10:00`` (elapsed < ETA)."""
        seconds = self.clock.seconds_this_run
        done = state.global_step - self.clock.start_step
        parts = [
            f"loss {self.loss:.4f}" if self.loss is not None else "loss -",
            f"lr {self.lr:.2e}" if self.lr is not None else "lr -",
        ]
        if self.count_tokens:
            parts.append(f"{(state.num_input_tokens_seen - self.start_tokens) / seconds:,.0f} tok/s")
        parts.append(f"{self.clock.samples_per_second(state.global_step):.1f} samples/s")
        eta = (self.total - state.global_step) * seconds / done if done > 0 else None
        parts.append(f"{_hms(self.clock.seconds)} < {_hms(eta)}")
        return "  ".join(parts)

    def on_step_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, stats=self.stats(state))

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs:
            return
        if "loss" in logs:
            self.loss = float(logs["loss"])
        if "learning_rate" in logs:
            self.lr = float(logs["learning_rate"])
        if self.progress is not None:
            self.progress.update(self.task, stats=self.stats(state))
        elif not self.live and "loss" in logs:
            width = len(str(self.total))
            self.console.print(
                f"step {state.global_step:>{width}}/{self.total}  {self.stats(state)}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    def on_train_end(self, args, state, control, **kw):
        self.stop()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def read_metrics_lines(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a line cut short by a crash is left out."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _scalars(metrics: dict[str, Any], prefix: str, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_scalars(value, name + ("/" if depth < 1 else "."), depth + 1))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value
    return out


def eval_record(
    step: int, elapsed: float, by_set: dict[str, Any], samples: int | None = None, final: bool = False
) -> dict[str, Any]:
    """A ``metrics.jsonl`` eval record; ``by_set`` is ``{eval set: {evaluator: metrics}}``, written flat
    as ``"set/evaluator/metric"`` (nested breakdowns as ``metric.key``), scalars only."""
    record: dict[str, Any] = {"type": "eval", "step": step, "elapsed_s": round(elapsed, 3)}
    if samples is not None:
        record["samples"] = samples
    if final:
        record["final"] = True
    record["metrics"] = _scalars(by_set, "", -1)
    return record


def append_metrics_line(path: str | Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")


class MetricsFile(TrainerCallback):
    """``metrics.jsonl`` (main process): one ``{"type": "train", ...}`` line per logging step -- step,
    epoch, loss, learning_rate, grad_norm, tokens (seen so far, all processes), tokens_per_s and
    samples_per_s (since the previous line), elapsed_s (training seconds, evaluations excluded, carried
    across resumes) -- plus ``{"type": "eval", ...}`` lines for evaluations during training. Each line
    is flushed as written. On resume, the lines after the checkpoint's step (work the resumed run
    redoes) are dropped first, so every step appears once."""

    def __init__(self, path: str | Path, clock: TrainClock, samples_per_step: int):
        self.path = Path(path)
        self.clock = clock
        self.samples_per_step = samples_per_step
        self.file: Any = None
        self.count_tokens = False
        self.last: tuple[int, int, float] = (0, 0, 0.0)

    def on_train_begin(self, args, state, control, **kw):
        self.count_tokens = _tokens_tracked(args)
        self.open(state.global_step, state.num_input_tokens_seen)

    def open(self, step: int, tokens: int = 0) -> None:
        """Start writing at ``step`` (0: a new file; else keep the records up to ``step``)."""
        kept = [r for r in read_metrics_lines(self.path) if isinstance(r.get("step"), int) and r["step"] <= step]
        if step == 0:
            kept = []
        tmp = self.path.with_name(self.path.name + ".partial")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run; close() ends it
        self.last = (step, tokens, self.clock.seconds)

    def write(self, record: dict[str, Any]) -> None:
        if self.file is None:
            append_metrics_line(self.path, record)
            return
        self.file.write(json.dumps(record, default=str) + "\n")
        self.file.flush()

    def on_log(self, args, state, control, logs=None, **kw):
        if self.file is None or not logs or "loss" not in logs:
            return
        now, step, tokens = self.clock.seconds, state.global_step, state.num_input_tokens_seen
        last_step, last_tokens, last_time = self.last
        dt = max(now - last_time, 1e-9)
        self.write(
            {
                "type": "train",
                "step": step,
                "epoch": logs.get("epoch", state.epoch),
                "loss": logs["loss"],
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "tokens": tokens if self.count_tokens else None,
                "tokens_per_s": round((tokens - last_tokens) / dt, 1) if self.count_tokens else None,
                "samples_per_s": round((step - last_step) * self.samples_per_step / dt, 2),
                "elapsed_s": round(now, 6),
            }
        )
        self.last = (step, tokens, now)

    def on_train_end(self, args, state, control, **kw):
        self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class CurveCallback(TrainerCallback):
    """Evaluates every ``every`` steps before the last (the last point is the final evaluation) and
    records ``{step, train_seconds, samples, metrics}`` points; evaluation time is not training time."""

    def __init__(
        self,
        every: int,
        evaluate: Callable[[], tuple[int, dict[str, Any], str]],
        clock: TrainClock,
        say: Callable[[str], None],
        on_point: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.every = every
        self.on_point = on_point
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
        point = {"step": step, "train_seconds": round(train_seconds, 1), "samples": samples, "metrics": metrics}
        self.points.append(point)
        if self.on_point is not None:
            self.on_point(point)
        self.say(f"  step {step}: {summary}")
