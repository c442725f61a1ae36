"""Watching a run: the progress line, metrics.jsonl (one record per logging step, tokens counted from
the batches' attention masks, resume without duplicates), report_to checks before any model loads,
and the loss curve (PNG with matplotlib, a text chart without)."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from vlmplug import hookimpl
from vlmplug.errors import ConfigError
from vlmplug.manager import load
from vlmplug.recipe import parse_set, resolve
from vlmplug.testing import TINY_RECIPE
from vlmplug.train.curves import eval_series, text_curve, write_curves
from vlmplug.train.trainer import MetricsFile, RichProgressCallback, TrainClock, read_metrics_lines, report_targets

#: The tiny recipe without held-out evaluation: only training is watched here.
QUIET = {**TINY_RECIPE, "name": "mon", "eval_datasets": [], "evaluators": []}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def go(out: Path, *sets: str, data: dict | None = None, console: Console | None = None, extra: tuple = ()) -> Any:
    from vlmplug.train.run import run

    host = load(autoload=False, extra_plugins=extra)
    recipe = resolve(data or QUIET, host.registry, host=host, sets=parse_set(sets))
    return run(recipe, host, output_dir=str(out), console=console or Console(quiet=True))


def train_records(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics_lines(run_dir / "metrics.jsonl") if r["type"] == "train"]


# -- metrics.jsonl, end to end ----------------------------------------------------------------------


def test_metrics_jsonl_has_the_trainers_losses_and_the_counted_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmplug.train.data import TrainCollator

    batches: list[int] = []  # the attention mask's ones of every batch the collator builds, in order
    collate = TrainCollator.__call__

    def counting(self: Any, batch: list[dict[str, Any]]) -> Any:
        out = collate(self, batch)
        batches.append(int(out["attention_mask"].sum()))
        return out

    monkeypatch.setattr(TrainCollator, "__call__", counting)
    out = io.StringIO()
    result = go(tmp_path / "run", console=Console(file=out, width=200))
    d = result.run_dir

    records = train_records(d)
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # logging_steps: 1
    logged = [json.loads(line) for line in (d / "train.log").read_text().splitlines()]
    trainer_losses = [e["loss"] for e in logged if "loss" in e]  # the Trainer's logged values
    assert [r["loss"] for r in records] == trainer_losses
    metrics = json.loads((d / "metrics.json").read_text())
    assert records[0]["loss"] == metrics["train"]["first_loss"]
    assert records[-1]["loss"] == metrics["train"]["final_loss"]
    for r in records:
        assert r["learning_rate"] > 0 and r["grad_norm"] > 0 and r["epoch"] > 0
        assert set(r) >= {"tokens", "tokens_per_s", "samples_per_s", "elapsed_s"}

    # tokens: the running sum of the batches' attention masks (image tokens are in input_ids)
    seen = 0
    prev = {"tokens": 0, "elapsed_s": 0.0, "step": 0}
    for k, r in enumerate(records):
        seen += batches[k]
        assert r["tokens"] == seen
        dt = r["elapsed_s"] - prev["elapsed_s"]
        # from the second line on, the rates are over the interval between two lines; the first line's
        # starts when training starts, a moment after the clock's zero
        rel = 1e-2 + 2e-6 / dt if k else 0.1
        assert r["tokens_per_s"] == pytest.approx((r["tokens"] - prev["tokens"]) / dt, rel=rel)
        assert r["samples_per_s"] == pytest.approx((r["step"] - prev["step"]) * 8 / dt, rel=rel)
        assert r["elapsed_s"] > prev["elapsed_s"]
        prev = r

    said = out.getvalue()  # not a terminal: one plain line per logging step, no live bar
    lines = [line for line in said.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert f"loss {records[-1]['loss']:.4f}" in lines[-1] and "tok/s" in lines[-1] and "samples/s" in lines[-1]
    curve = "loss_curve.png" if importlib.util.find_spec("matplotlib") else "loss_curve.txt"
    assert (d / curve).is_file()
    assert "metrics.jsonl" in said and curve in said  # named in the "saved to" line


def test_resume_keeps_one_record_per_step(tmp_path: Path) -> None:
    save = ("save_strategy=steps", "save_steps=2")
    go(tmp_path / "whole", *save)
    whole = train_records(tmp_path / "whole")
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "whole", partial)  # as if it stopped after checkpoint-2 (records 3, 4 written)
    shutil.rmtree(partial / "checkpoints" / "checkpoint-4")
    shutil.rmtree(partial / "model")
    go(partial, *save, "resume_from_checkpoint=last")
    resumed = train_records(partial)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]  # 3 and 4 were redone: written once, by the resumed run
    assert resumed[:2] == whole[:2]  # the records before the checkpoint are kept as they were
    for a, b in zip(resumed, whole):
        assert a["tokens"] == b["tokens"]  # the token count is restored with the checkpoint
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert resumed[2]["elapsed_s"] >= resumed[1]["elapsed_s"]  # training time carries on from the checkpoint


def test_metrics_file_drops_what_the_resumed_run_redoes(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"type": "train", "step": s, "loss": 1.0}) for s in (1, 2, 3, 4)]
    lines.insert(2, json.dumps({"type": "eval", "step": 2, "metrics": {}}))
    path.write_text("\n".join(lines) + '\n{"type": "train", "st', encoding="utf-8")  # cut short by a crash
    monitor = MetricsFile(path, TrainClock(8), 8)
    monitor.open(2)
    monitor.write({"type": "train", "step": 3, "loss": 0.5})
    monitor.close()
    assert [(r["type"], r["step"]) for r in read_metrics_lines(path)] == [
        ("train", 1),
        ("train", 2),
        ("eval", 2),
        ("train", 3),
    ]
    MetricsFile(path, TrainClock(8), 8).open(0)  # a fresh run starts a fresh file
    assert path.read_text() == ""


# -- the progress line ------------------------------------------------------------------------------


def _state(step: int, tokens: int) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, max_steps=10, num_input_tokens_seen=tokens, epoch=None)


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_shows_loss_lr_rates_and_eta(terminal: bool) -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=terminal, force_interactive=terminal)
    clock = TrainClock(samples_per_step=8)
    bar = RichProgressCallback(console, clock)
    assert bar.live is terminal
    args = SimpleNamespace(include_num_input_tokens_seen="non_padding")
    clock.on_train_begin(args, _state(0, 0), None)
    bar.on_train_begin(args, _state(0, 0), None)
    for step in (1, 2):
        bar.on_step_end(args, _state(step, 100 * step), None)
        bar.on_log(args, _state(step, 100 * step), None, logs={"loss": 2.0 / step, "learning_rate": 1e-3})
    bar.on_train_end(args, _state(2, 200), None)
    text = out.getvalue()
    assert "loss 1.0000" in text and "lr 1.00e-03" in text and "tok/s" in text and "samples/s" in text
    assert " < 0:00:" in text  # elapsed < ETA
    if not terminal:
        assert [line.split()[1] for line in text.splitlines()] == ["1/10", "2/10"]


# -- report_to --------------------------------------------------------------------------------------


def _without(monkeypatch: pytest.MonkeyPatch, *missing: str) -> None:
    find = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name in missing else find(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_report_to_names() -> None:
    assert report_targets("none") == [] and report_targets(None) == [] and report_targets(["none"]) == []
    assert report_targets("all") == ["all"]
    with pytest.raises(ConfigError, match=r"'tensorbord' is not a tracker.*did you mean 'tensorboard'"):
        report_targets("tensorbord")


def test_report_to_a_missing_tracker_fails_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = []

    class Spy:
        @hookimpl
        def on_model_built(self, model: Any, recipe: Any) -> None:
            built.append(model)

    _without(monkeypatch, "tensorboard", "tensorboardX", "wandb")
    with pytest.raises(ConfigError) as err:
        go(tmp_path / "run", "report_to=[tensorboard, wandb]", extra=((Spy(), "spy"),))
    message = str(err.value)
    assert "tensorboard needs the 'tensorboard' package" in message and "pip install tensorboard" in message
    assert "wandb needs the 'wandb' package" in message and "pip install wandb" in message
    assert not built and not (tmp_path / "run" / "model").exists()


def test_report_to_an_installed_tracker_is_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    find = importlib.util.find_spec
    found = {"wandb", "tensorboardX"}  # tensorboardX alone is enough for transformers' TensorBoardCallback

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "tensorboard":
            return None
        return object() if name in found else find(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert report_targets("wandb") == ["wandb"]
    assert report_targets("tensorboard, wandb") == ["tensorboard", "wandb"]
    assert report_targets(["wandb"]) == ["wandb"]


def test_report_to_tensorboard_writes_into_the_run_directory(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    result = go(tmp_path / "run", "report_to=tensorboard", "max_steps=2")
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))


# -- the curve --------------------------------------------------------------------------------------


def test_text_curve_places_min_and_max() -> None:
    chart = text_curve([(0, 1.0), (10, 3.0), (20, 2.0)], width=3, height=3)
    assert chart.splitlines() == [
        "3 | *",  # the max (3.0, step 10) in the top row, middle column
        "  |  *",
        "1 |*",  # the min (1.0, step 0) in the bottom row, first column
        "  +---",
        "   0 20",
    ]
    big = text_curve([(s, 11.0 - s) for s in range(1, 11)], width=60, height=15)
    rows = big.splitlines()
    assert len(rows) == 15 + 2 and all(len(r) <= len("10 |") + 60 for r in rows[:15])
    assert rows[0] == "10 |*" and rows[14].endswith("*") and rows[14].startswith(" 1 |")
    assert text_curve([]) == "(no points)"
    assert text_curve([(1, float("nan")), (2, 1.0)], 4, 3).splitlines()[1] == "1 |*"


def test_eval_series_picks_float_metrics_or_the_keys_given() -> None:
    points = [{"step": 2, "metrics": {"vqa": {"accuracy": 0.5, "count": 8, "per_type": {"color": 1.0}}}}]
    assert eval_series(points) == {"vqa/accuracy": [(2.0, 0.5)], "vqa/count": [(2.0, 8.0)]}
    assert eval_series(points, ["vqa/accuracy"]) == {"vqa/accuracy": [(2.0, 0.5)]}


HISTORY = [{"type": "train", "step": s, "loss": 3.0 / s} for s in range(1, 9)]
POINTS = [{"step": s, "metrics": {"vqa": {"accuracy": s / 10}}} for s in (4, 8)]


def test_loss_curve_png_with_matplotlib(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = write_curves(tmp_path, HISTORY, POINTS)
    assert path == tmp_path / "loss_curve.png"
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_loss_curve_text_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any import of it fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    path = write_curves(tmp_path, HISTORY, POINTS)
    assert path == tmp_path / "loss_curve.txt"
    text = path.read_text()
    assert "min 0.375 at step 8, max 3 at step 1" in text
    assert text_curve([(h["step"], h["loss"]) for h in HISTORY]) in text
    assert "vqa/accuracy" in text and "0.8" in text
