"""Docs cannot drift: every hook, recipe key and built-in component is documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from vlmplug import hookspecs
from vlmplug.keys import CORE_KEYS, TRAINING_KEYS
from vlmplug.manager import load

DOCS = Path(__file__).resolve().parents[1] / "docs"


def hook_names() -> list[str]:
    return [n for n, f in vars(hookspecs).items() if inspect.isfunction(f) and hasattr(f, "vlmplug_spec")]


def test_every_hook_has_a_heading_with_its_signature() -> None:
    text = (DOCS / "hooks.md").read_text()
    names = hook_names()
    assert len(names) >= 17
    for name in names:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"### `{name}({params})`" in text, f"docs/hooks.md lacks a heading for {name}({params})"


def test_every_core_and_training_key_is_documented() -> None:
    text = (DOCS / "recipes.md").read_text()
    for key in [*CORE_KEYS, *TRAINING_KEYS]:
        assert re.search(rf"`{re.escape(key)}`", text), f"docs/recipes.md does not mention `{key}`"


def test_every_builtin_component_is_documented() -> None:
    text = (DOCS / "components.md").read_text()
    for spec in load(autoload=False).registry:
        assert f"`{spec.name}`" in text, f"docs/components.md does not list `{spec.name}`"


def test_readme_has_the_two_commands() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    assert "vlmplug train\n" in readme
    assert "python -m pytest -q" in readme
    ci = (DOCS.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci and "torch==2.13.0" in ci
