"""Runs that never lose work: slim atomic checkpoints, resume = the uninterrupted run, run identity,
finished runs, whole-run metrics, Ctrl-C, and errors before anything loads.

The reference for a resumed run is the same run without the interruption."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from vlmplug import hookimpl
from vlmplug.errors import ConfigError
from vlmplug.manager import load
from vlmplug.recipe import parse_set, resolve
from vlmplug.testing import TINY_RECIPE
from vlmplug.train.run import run as run_training

SAVE = ("save_strategy=steps", "save_steps=2", "eval_before_training=false")


def go(
    tmp: Path | None,
    *sets: str,
    plugins: tuple[str, ...] = ("lora",),
    extra: tuple = (),
    console: Console | None = None,
    data: dict | None = None,
) -> Any:
    host = load(autoload=False, extra_plugins=extra)
    recipe = resolve(data or TINY_RECIPE, host.registry, host=host, plugins=plugins, sets=parse_set(sets))
    return run_training(recipe, host, output_dir=str(tmp) if tmp else None, console=console or Console(quiet=True))


class Interrupt:
    """A plugin that presses Ctrl-C when the run logs step ``at``."""

    def __init__(self, at: int):
        self.at = at

    @hookimpl
    def on_log(self, state: Any, metrics: dict) -> None:
        if state.global_step == self.at and "loss" in metrics:
            raise KeyboardInterrupt


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {f"connector.{k}": v for k, v in load_file(str(model_dir / "connector.safetensors")).items()}
    adapter = model_dir / "adapter" / "adapter_model.safetensors"
    out.update({f"adapter.{k}": v for k, v in load_file(str(adapter)).items()})
    return out


def test_adapter_checkpoint_holds_trainable_weights_optimizer_and_rng_not_the_base(tmp_path: Path) -> None:
    result = go(tmp_path / "run", *SAVE)
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-4"
    for name in (
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "vlmplug_state.json",
    ):
        assert (ckpt / name).is_file(), name
    vlm = result.model
    trainable = {n for n, p in vlm.named_parameters() if p.requires_grad}
    saved = load_file(str(ckpt / "model.safetensors"))
    assert set(saved) == trainable  # adapters + connector, nothing frozen
    n_trainable = sum(p.numel() for p in vlm.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in vlm.parameters())
    full_bytes = 4 * n_total
    ratio = (ckpt / "model.safetensors").stat().st_size / full_bytes
    print(f"LoRA checkpoint model file: {ratio:.3f} of the full model (trainable fraction {n_trainable / n_total:.3f})")
    assert ratio == pytest.approx(n_trainable / n_total, abs=0.02)
    assert ratio < 0.5


def test_resumed_run_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    whole = go(tmp_path / "whole", *SAVE)
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "whole", partial)  # then pretend it stopped after checkpoint-2
    shutil.rmtree(partial / "checkpoints" / "checkpoint-4")
    shutil.rmtree(partial / "model")
    resumed = go(partial, *SAVE, "resume_from_checkpoint=last")
    assert resumed.metrics["train"]["steps"] == 4
    a, b = _weights(tmp_path / "whole" / "model"), _weights(partial / "model")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    logs = [json.loads(line) for line in (partial / "train.log").read_text().splitlines()]
    assert [e["step"] for e in logs if "loss" in e] == [1, 2, 3, 4, 3, 4]  # appended: 3, 4 again after resume
    # metrics describe the whole run, not the resumed part
    for key in ("steps", "train_loss", "first_loss", "final_loss", "samples"):
        assert resumed.metrics["train"][key] == pytest.approx(whole.metrics["train"][key], rel=1e-5), key


def test_resuming_a_finished_run_takes_no_extra_step(tmp_path: Path) -> None:
    first = go(tmp_path / "run", *SAVE)
    again = go(tmp_path / "run", *SAVE, "resume_from_checkpoint=last")
    assert again.metrics["train"]["steps"] == 4
    assert again.metrics["train"]["train_loss"] == pytest.approx(first.metrics["train"]["train_loss"])
    a = dict(first.model.state_dict().items())
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, a[k]), k


def test_resume_last_finds_the_interrupted_run_and_never_a_finished_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    console = Console(record=True, width=300)
    with pytest.raises(KeyboardInterrupt):
        go(None, *SAVE, extra=((Interrupt(3), "interrupt"),), console=console)
    said = console.export_text()
    assert "interrupted: last checkpoint runs/tiny/checkpoints/checkpoint-2" in said.replace(str(tmp_path) + "/", "")
    assert (
        "vlmplug train RECIPE (plus your --plugins / --set options) --output-dir runs/tiny --set "
        "resume_from_checkpoint=last" in said
    )
    assert json.loads(Path("runs/tiny/run.json").read_text())["status"] == "interrupted"
    assert Path("runs/tiny/metrics.json").is_file()  # written even though the run stopped
    go(None, *SAVE)  # another run of the same recipe finishes in runs/tiny-2
    assert json.loads(Path("runs/tiny-2/run.json").read_text())["status"] == "finished"
    resumed = go(None, *SAVE, "resume_from_checkpoint=last")
    assert resumed.run_dir == Path("runs/tiny")
    assert resumed.metrics["train"]["steps"] == 4
    with pytest.raises(ConfigError, match="no unfinished run of recipe 'tiny' with a checkpoint"):
        go(None, *SAVE, "resume_from_checkpoint=last")  # both finished now: nothing is resumed implicitly


@pytest.mark.parametrize(
    "sets, message",
    [
        (("resume_from_checkpoint=nowhere/checkpoint-9",), "nowhere/checkpoint-9 does not exist"),
        (("resume_from_checkpoint=last",), "no complete checkpoint"),
    ],
)
def test_bad_resume_is_an_error_before_any_model_loads(tmp_path: Path, sets: tuple, message: str) -> None:
    go(tmp_path / "run", "eval_before_training=false")  # a run without checkpoints
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(ConfigError, match=message):
        go(tmp_path / "run", *sets)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_output_dir_that_is_a_file_or_under_a_file(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ConfigError) as e:
        go(f)
    assert str(e.value) == f"--output-dir {f} is a file; choose a directory"
    with pytest.raises(ConfigError, match=f"cannot be created: {f} is a file"):
        go(f / "sub")


def test_incomplete_checkpoint_is_not_resumed(tmp_path: Path) -> None:
    go(tmp_path / "run", *SAVE)
    (tmp_path / "run" / "checkpoints" / "checkpoint-4" / "vlmplug_state.json").unlink()  # as if killed mid-save
    resumed = go(tmp_path / "run", *SAVE, "resume_from_checkpoint=last", "max_steps=6")
    assert resumed.metrics["train"]["steps"] == 6
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"
    logs = [json.loads(line) for line in (tmp_path / "run" / "train.log").read_text().splitlines()]
    assert [e["step"] for e in logs if "loss" in e][-4:] == [3, 4, 5, 6]  # from checkpoint-2


def test_the_resume_command_is_the_users_own() -> None:
    from vlmplug.train.run import resume_command

    recipe = resolve(TINY_RECIPE, load(autoload=False).registry)
    argv = [
        "vlmplug",
        "train",
        "my.yaml",
        "--plugins",
        "lora",
        "-o",
        "old",
        "--set",
        "lora_r=8",
        "--set",
        "resume_from_checkpoint=old/checkpoints/checkpoint-2",
    ]
    assert resume_command(recipe, Path("runs/x"), argv) == (
        "vlmplug train my.yaml --plugins lora --set lora_r=8 --output-dir runs/x --set resume_from_checkpoint=last"
    )
