"""Optional-dependency checks that import nothing.

``importlib.util.find_spec`` tells whether a module is installed without running it, so
``vlmplug list`` and ``vlmplug config`` can say what is missing in milliseconds, before any heavy
library loads.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from .registry import ComponentSpec

__all__ = ["is_installed", "missing_extras", "install_hint", "check"]


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_extras(spec: ComponentSpec) -> dict[str, str]:
    """``{import name: extra}`` for each optional import of ``spec`` that is not installed."""
    return {mod: extra for mod, extra in spec.extras.items() if not is_installed(mod)}


def install_hint(extras: Iterable[str]) -> str:
    names = ",".join(sorted(set(extras)))
    return f'pip install "vlmplug[{names}]"'


def check(specs: Iterable[ComponentSpec]) -> list[str]:
    """One problem line per selected component with missing optional dependencies."""
    problems = []
    for spec in specs:
        missing = missing_extras(spec)
        if missing:
            problems.append(
                f"{spec.name} needs {', '.join(sorted(missing))}, which is not installed: "
                f"{install_hint(missing.values())}"
            )
    return problems
