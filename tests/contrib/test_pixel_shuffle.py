"""The third-party path for real: pip-install contrib/vlmplug-pixel-shuffle, find it through its
entry point in `vlmplug list --json`, select it with --plugins, train with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "contrib" / "vlmplug-pixel-shuffle"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(PKG),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def vlmplug(site: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    full_env = {**os.environ, "PYTHONPATH": str(site), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "vlmplug", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600
    )


def test_installed_plugin_is_listed(site: Path) -> None:
    out = vlmplug(site, "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    row = rows["pixel-shuffle"]
    assert row["family"] == "connector"
    assert row["provider"] == "vlmplug-pixel-shuffle-0.1.0"
    assert row["version"] == "0.1.0"
    assert row["status"] == "ok"
    assert rows["mlp"]["provider"] == "built-in"


def test_selected_with_plugins_flag(site: Path) -> None:
    out = vlmplug(site, "config", "--plugins", "pixel-shuffle", "--set", "pixel-shuffle.scale_factor=4", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["components"]["connector"] == "pixel-shuffle"
    assert plan["connector"]["provider"] == "vlmplug-pixel-shuffle-0.1.0"
    assert plan["connector"]["scale_factor"] == 4


def test_disabled_and_not_loaded(site: Path) -> None:
    for env in ({"VLMPLUG_DISABLE_PLUGINS": "pixel-shuffle"}, {"VLMPLUG_LOAD_PLUGINS": ""}):
        out = vlmplug(site, "list", "--json", env=env)
        assert out.returncode == 0, out.stderr
        assert "pixel-shuffle" not in {r["name"] for r in json.loads(out.stdout)}
    out = vlmplug(site, "config", "--plugins", "pixel-shuffle", env={"VLMPLUG_LOAD_PLUGINS": ""})
    assert out.returncode == 2
    assert "unknown component 'pixel-shuffle'" in out.stderr


def test_trains_with_the_plugin(site: Path, tmp_path: Path) -> None:
    out = vlmplug(
        site,
        "train",
        "--plugins",
        "pixel-shuffle",
        "--output-dir",
        str(tmp_path / "run"),
        "--set",
        "max_steps=3",
        "--set",
        "datasets.0.num_samples=64",
        "--set",
        "eval_datasets.0.num_samples=8",
        "--set",
        "eval_datasets.1.num_samples=8",
        "--set",
        "eval_before_training=false",
        "--set",
        "per_device_train_batch_size=4",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 tokens/image" in out.stderr  # 4x4 patch grid folded 2x2 -> 4 tokens
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 3
    manifest = json.loads((tmp_path / "run" / "model" / "vlmplug_model.json").read_text())
    assert manifest["components"]["connector"]["name"] == "pixel-shuffle"
    assert manifest["components"]["connector"]["provider"] == "vlmplug-pixel-shuffle-0.1.0"


def test_pixel_shuffle_layout(site: Path) -> None:
    sys.path.insert(0, str(site))
    try:
        import torch
        from vlmplug_pixel_shuffle._impl import PixelShuffleConnector
    finally:
        sys.path.remove(str(site))
    conn = PixelShuffleConnector(in_dim=2, out_dim=3, num_input_tokens=16, scale=2)
    assert conn.num_tokens == 4
    feats = torch.arange(16 * 2, dtype=torch.float32).reshape(1, 16, 2)
    with torch.no_grad():
        conn.proj.weight.zero_()
        conn.proj.bias.zero_()
        conn.proj.weight[0, :] = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])  # picks feature 0 of the block's 1st patch
    out = conn(feats)
    assert out.shape == (1, 4, 3)
    # block (0,0) starts at patch 0, block (0,1) at patch 2, block (1,0) at patch 8, block (1,1) at patch 10
    assert out[0, :, 0].tolist() == [0.0, 4.0, 16.0, 20.0]
    with pytest.raises(ValueError, match="does not divide"):
        PixelShuffleConnector(in_dim=2, out_dim=3, num_input_tokens=9, scale=2)
