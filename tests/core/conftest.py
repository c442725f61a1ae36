"""Shared fixtures for the core tests: a clean plugin environment and a fresh built-ins-only host."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No user plugin settings leak in, and third-party plugins installed in the dev environment stay
    out (``VLMPLUG_LOAD_PLUGINS=""``: built-ins only). Tests that exercise entry points change this."""
    monkeypatch.delenv("VLMPLUG_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("VLMPLUG_TRACE_PLUGINS", raising=False)
    monkeypatch.setenv("VLMPLUG_LOAD_PLUGINS", "")


@pytest.fixture
def host() -> Any:
    from vlmplug.manager import load

    return load()


@pytest.fixture
def quickstart() -> dict[str, Any]:
    from vlmplug.recipe import load_recipe

    data, source = load_recipe("quickstart")
    assert source == "vlmplug:quickstart"
    return data
