"""Shared test set-up: few CPU threads (2-core CI machines), no network, no trackers."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_configure(config) -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def saved_run(tmp_path_factory: pytest.TempPathFactory):
    """A tiny model trained 30 steps (it answers in words), saved: its run directory (eval, chat, serve)."""
    from vlmplug.testing import run_recipe

    return run_recipe(
        steps=30, output_dir=tmp_path_factory.mktemp("saved") / "run", eval_before_training=False, learning_rate=1e-2
    ).run_dir
