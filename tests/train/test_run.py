"""End-to-end runs through `vlmplug.train.run` on tiny models: LoRA adapters that load with plain
peft, atomic checkpoints and resume, messages data from disk, early hardware errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image

from vlmplug import hookimpl
from vlmplug.errors import DataError, HardwareError
from vlmplug.manager import load
from vlmplug.recipe import parse_set, resolve
from vlmplug.testing import TINY_RECIPE

TINY = {**TINY_RECIPE, "name": "t"}


def run(data: dict, tmp_path: Path, *sets: str, plugins: tuple[str, ...] = ()):
    from rich.console import Console

    from vlmplug.train.run import run as run_training

    host = load(autoload=False)
    recipe = resolve(data, host.registry, host=host, plugins=plugins, sets=parse_set(sets))
    return run_training(recipe, host, output_dir=str(tmp_path / "run"), console=Console(quiet=True))


BLANK = {"name": "blank", "format": "shapes", "num_samples": 8, "seed": 1, "image_size": 32, "blank_images": True}


def test_full_run_writes_everything(tmp_path: Path) -> None:
    result = run({**TINY, "eval_datasets": [*TINY["eval_datasets"], BLANK]}, tmp_path)
    d = result.run_dir
    for name in (
        "resolved_recipe.yaml",
        "metrics.json",
        "train.log",
        "run.json",
        "predictions_after.jsonl",
        "model/connector.safetensors",
        "model/llm/model.safetensors",
        "model/llm/config.json",
        "model/vision_encoder.safetensors",
        "model/tokenizer/tokenizer.json",
        "model/processor/preprocessor_config.json",
        "model/vlmplug_model.json",
    ):
        assert (d / name).is_file(), name
    assert not list(d.glob("*.partial"))
    assert not (d / "run.log").exists()  # one log file
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert metrics["train"]["steps"] == 4
    for key in ("before", "after"):
        assert set(metrics[key]) == {"shapes", "blank"}
        for label in ("shapes", "blank"):
            vqa = metrics[key][label]["vqa"]
            assert {"accuracy", "per_type", "yes_ratio", "count"} <= set(vqa)
            assert set(vqa["per_type"]) == {"color", "shape", "count", "presence"}
    assert metrics["primary"]["metric"] == "shapes/vqa/accuracy"
    assert metrics["primary"]["after"] == metrics["after"]["shapes"]["vqa"]["accuracy"]
    assert set(metrics["baselines"]["shapes"]["vqa"]) == {"answer_prior"}
    logs = [json.loads(line) for line in (d / "train.log").read_text().splitlines()]
    assert [entry["step"] for entry in logs if "loss" in entry] == [1, 2, 3, 4]
    resolved = yaml.safe_load((d / "resolved_recipe.yaml").read_text())
    assert resolved["peft"]["provider"] == "built-in" and "training_args_full" in resolved["runtime"]
    assert resolved["output_dir"] == str(d)
    assert json.loads((d / "run.json").read_text())["status"] == "finished"


def test_lora_adapter_loads_with_plain_peft(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = run(TINY, tmp_path, "eval_before_training=false", "lora_modules_to_save=[lm_head]", plugins=("lora",))
    model_dir = result.run_dir / "model"
    assert (model_dir / "adapter" / "adapter_config.json").is_file()
    assert (model_dir / "adapter" / "adapter_model.safetensors").is_file()
    config = json.loads((model_dir / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 16
    # the tiny LLM ties lm_head to embed_tokens: peft keeps that one matrix (under either name), not two
    assert len(config["modules_to_save"]) == 1
    assert config["modules_to_save"][0].split(".")[-1] in ("lm_head", "embed_tokens")
    assert not any("vision" in m or "proj.0" in m for m in config["target_modules"])
    base = AutoModelForCausalLM.from_pretrained(model_dir / "llm_base")
    reloaded = PeftModel.from_pretrained(base, model_dir / "adapter").eval()
    trained = result.model.llm.eval()
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-5)


def test_atomic_checkpoints_and_resume(tmp_path: Path) -> None:
    run(TINY, tmp_path, "save_strategy=steps", "save_steps=2", "eval_before_training=false")
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (ckpts / "checkpoint-4" / "model.safetensors").is_file()
    assert (ckpts / "checkpoint-4" / "optimizer.pt").is_file()
    result = run(
        TINY,
        tmp_path,
        "save_strategy=steps",
        "save_steps=2",
        "eval_before_training=false",
        "max_steps=6",
        "resume_from_checkpoint=last",
    )
    assert result.metrics["train"]["steps"] == 6
    logs = [json.loads(line) for line in (tmp_path / "run" / "train.log").read_text().splitlines()]
    assert [e["step"] for e in logs if "loss" in e][-2:] == [5, 6]  # resumed at 4, not from 0


def test_tf32_on_cpu_fails_before_any_model_loads(tmp_path: Path) -> None:
    with pytest.raises(HardwareError, match="tf32: true needs an NVIDIA Ampere"):
        run({**TINY, "tf32": True}, tmp_path)
    assert not (tmp_path / "run" / "model").exists()


def _write_messages(tmp_path: Path) -> Path:
    img_dir = tmp_path / "data" / "img"
    img_dir.mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(img_dir / "red.png")
    Image.new("RGB", (40, 30), (10, 10, 200)).save(img_dir / "blue.png")
    (img_dir / "corrupt.png").write_bytes(b"not a png at all")
    rows = [
        {
            "messages": [{"role": "user", "content": "<image>\nColor?"}, {"role": "assistant", "content": "red"}],
            "images": ["img/red.png"],
        },
        {
            "messages": [{"role": "user", "content": "<image>\nColor?"}, {"role": "assistant", "content": "blue"}],
            "images": ["img/blue.png"],
        },
        {
            "messages": [{"role": "user", "content": "<image>\nColor?"}, {"role": "assistant", "content": "x"}],
            "images": ["img/missing.png"],
        },
        {
            "messages": [{"role": "user", "content": "Color?"}, {"role": "assistant", "content": "red"}],
            "images": ["img/red.png"],
        },
        {
            "messages": [{"role": "user", "content": "<image>\nColor?"}, {"role": "assistant", "content": "x"}],
            "images": ["img/corrupt.png"],
        },
    ]
    path = tmp_path / "data" / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_bad_rows_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write_messages(tmp_path)
    data = {**TINY, "datasets": [{"path": str(path)}], "eval_datasets": []}
    with pytest.raises(DataError, match=r"train\.jsonl:3: image not found: .*missing\.png"):
        run(data, tmp_path)


def test_bad_rows_skipped_and_counted(tmp_path: Path) -> None:
    path = _write_messages(tmp_path)
    data = {**TINY, "datasets": [{"path": str(path)}], "eval_datasets": [], "on_bad_sample": "skip", "max_steps": 1}
    result = run(data, tmp_path)
    assert result.metrics["train_samples"] == 2
    skipped = result.metrics["skipped"]["train"]
    assert skipped["total"] == 3
    assert {r: e["count"] for r, e in skipped["reasons"].items()} == {
        "missing-image": 1,
        "image-count": 1,
        "unreadable-image": 1,
    }
    assert skipped["reasons"]["missing-image"]["first"] == [f"{path}:3"]


def test_model_config_typo_is_an_error(tmp_path: Path) -> None:
    from vlmplug.errors import ConfigError

    data = {**TINY, "model_config": {"hidden_sise": 64}}
    with pytest.raises(ConfigError, match=r"model_config\.hidden_sise: not a field of LlamaConfig.*'hidden_size'"):
        run(data, tmp_path)


def test_an_image_budget_past_max_seq_length_is_refused_before_tokenizing(tmp_path: Path) -> None:
    """Not one 'too long' error per sample: the run stops once, naming the components and the fix."""
    from vlmplug.errors import ConfigError

    data = {**TINY, "vision_encoder": {"name": "patches", "patch_size": 8, "max_patches": 64, "hidden_size": 32}}
    with pytest.raises(ConfigError) as e:
        run(data, tmp_path)
    assert str(e.value) == (
        "max_seq_length 48: one image alone takes 64 tokens (vision encoder 'patches', connector 'mlp'); "
        "raise max_seq_length or lower the image token budget (`vlmplug info` on them)"
    )


def _truncated_jpeg(path: Path) -> None:
    """A JPEG whose header parses (the up-front check passes) but whose data is cut off."""
    import io

    import numpy as np

    noise = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def _rows_with_truncated(tmp_path: Path, n_good: int = 6) -> Path:
    d = tmp_path / "data"
    d.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(d / "red.png")
    _truncated_jpeg(d / "cut.jpg")
    row = {
        "messages": [{"role": "user", "content": "<image>\nColor?"}, {"role": "assistant", "content": "red"}],
        "images": ["red.png"],
    }
    rows = [row] * n_good + [{**row, "images": ["cut.jpg"]}]
    path = d / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_image_that_fails_only_when_decoded_is_skipped_and_counted(tmp_path: Path) -> None:
    path = _rows_with_truncated(tmp_path)
    with Image.open(path.parent / "cut.jpg") as im:
        im.size  # noqa: B018 - the header is fine: only decoding fails
    data = {
        **TINY,
        "datasets": [{"path": str(path)}],
        "eval_datasets": [],
        "on_bad_sample": "skip",
        "max_steps": 3,
        "per_device_train_batch_size": 7,
    }
    result = run(data, tmp_path)
    assert result.metrics["train"]["steps"] == 3
    assert result.metrics["train_samples"] == 7  # it passed the up-front checks
    skipped = result.metrics["skipped"]["train"]
    assert skipped["reasons"]["unreadable-image"]["count"] == 1  # met in every step, counted once
    assert skipped["reasons"]["unreadable-image"]["first"] == [f"{path}:7"]


def test_image_that_fails_only_when_decoded_stops_the_run_naming_the_row(tmp_path: Path) -> None:
    from vlmplug.errors import DataError

    path = _rows_with_truncated(tmp_path)
    data = {
        **TINY,
        "datasets": [{"path": str(path)}],
        "eval_datasets": [],
        "max_steps": 2,
        "per_device_train_batch_size": 7,
    }
    with pytest.raises(DataError, match=rf"{path}:7: cannot read image .*cut\.jpg"):
        run(data, tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed"


def test_bad_eval_rows_follow_the_same_policy(tmp_path: Path) -> None:
    from vlmplug.errors import DataError

    path = _rows_with_truncated(tmp_path, n_good=3)
    base = {**TINY, "eval_datasets": [{"path": str(path)}], "max_steps": 1, "eval_before_training": False}
    result = run({**base, "on_bad_sample": "skip"}, tmp_path)
    assert result.metrics["after"]["messages"]["vqa"]["count"] == 3
    assert result.metrics["skipped"]["eval"]["reasons"]["unreadable-image"]["first"] == [f"{path}:4"]
    with pytest.raises(DataError, match=rf"{path}:4: cannot read image"):
        run(base, tmp_path / "again")


class CiderOnly:
    """A third-party evaluator whose metrics share no name with the built-ins."""

    primary_metric = "cider"

    def prompt(self, sample: dict) -> list:
        return sample["messages"][:-1]

    def references(self, sample: dict) -> dict:
        return {"refs": [sample["messages"][-1]["content"]]}

    def parse(self, text: str) -> str:
        return text.strip()

    def score(self, records: list) -> tuple:
        hits = [float(r["prediction"] in r["refs"]) for r in records]
        return {"cider": sum(hits) / len(hits)}, hits

    def baselines(self, train: list, records: list) -> dict:
        return {}


class CiderPlugin:
    @hookimpl
    def register_evaluators(self, register: Any) -> None:
        from vlmplug import ComponentSpec

        register(ComponentSpec(name="cider-only", summary="test", factory=f"{__name__}:build_cider"))


def build_cider(config: Any, ctx: Any) -> CiderOnly:
    return CiderOnly()


def test_an_evaluator_with_its_own_metrics_works_end_to_end(tmp_path: Path) -> None:
    from rich.console import Console

    from vlmplug.train.run import run as run_training

    host = load(autoload=False, extra_plugins=[(CiderPlugin(), "cider-plugin")])
    recipe = resolve({**TINY, "evaluators": ["cider-only"], "eval_every_steps": 2}, host.registry, host=host)
    result = run_training(recipe, host, output_dir=str(tmp_path / "run"), console=Console(quiet=True))
    m = result.metrics
    assert set(m["after"]["shapes"]["cider-only"]) == {"cider"}
    assert m["primary"]["metric"] == "shapes/cider-only/cider"
    assert [p["step"] for p in m["curve"]] == [2, 4]
    assert m["curve"][-1]["metrics"] == m["after"]["shapes"]  # the last point is the final evaluation
    assert "baselines" in m and m["baselines"] == {}


def test_curve_is_skipped_past_max_steps_and_respects_eval_max_samples(tmp_path: Path) -> None:
    result = run({**TINY, "eval_every_steps": 100, "eval_max_samples": 3}, tmp_path)
    m = result.metrics
    assert [p["step"] for p in m["curve"]] == [4]  # only the final evaluation, no extra pass
    assert m["curve"][0]["metrics"] == m["after"]["shapes"] and m["curve"][0]["samples"] == 3
    assert m["after"]["shapes"]["vqa"]["count"] == 3
    short = run(
        {**TINY, "eval_every_steps": 2, "eval_max_samples": 3, "eval_curve_samples": 50}, tmp_path / "b"
    ).metrics
    assert [(p["step"], p["samples"]) for p in short["curve"]] == [(2, 3), (4, 3)]


def test_a_crash_after_training_still_writes_metrics(tmp_path: Path) -> None:
    class Boom:
        @hookimpl
        def on_checkpoint_saved(self, path: str) -> None:
            raise RuntimeError("disk full")

    from rich.console import Console

    from vlmplug.errors import PluginError
    from vlmplug.train.run import run as run_training

    host = load(autoload=False, extra_plugins=[(Boom(), "boom")])
    recipe = resolve(TINY, host.registry, host=host)
    with pytest.raises(PluginError, match="disk full"):
        run_training(recipe, host, output_dir=str(tmp_path / "run"), console=Console(quiet=True))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["train"]["steps"] == 4
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_time_budget_stops_training_and_the_run_ends_normally(tmp_path: Path) -> None:
    result = run({**TINY, "max_steps": 10_000, "max_train_seconds": 1.0, "eval_before_training": False}, tmp_path)
    train = result.metrics["train"]
    assert train["stopped_by_time_budget"] is True
    assert 1 <= train["steps"] < 10_000
    assert 1.0 <= train["wall_time_s"] < 30
    assert result.metrics["status"] == "finished" and "after" in result.metrics
    assert (tmp_path / "run" / "model" / "vlmplug_model.json").is_file()
