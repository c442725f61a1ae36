"""Exception classes, one per category of problem.

Every message names the thing at fault (component, plugin, key, file, row) and the fix. The CLI prints
them without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "VlmplugError",
    "ConfigError",
    "UnknownComponentError",
    "MissingExtraError",
    "PluginLoadError",
    "PluginError",
    "DataError",
    "HardwareError",
    "did_you_mean",
]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class VlmplugError(Exception):
    """Base class of every error vlmplug raises on purpose."""


class ConfigError(VlmplugError):
    """A recipe, ``--plugins`` or ``--set`` problem. Carries *all* problems found, each with its fix."""

    def __init__(self, problems: list[str] | str, header: str = "the recipe does not resolve"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        n = len(self.problems)
        if n == 1 and header != "the recipe does not resolve":
            super().__init__(self.problems[0])
            return
        lines = [f"{header} ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class UnknownComponentError(ConfigError):
    """A component name that no installed plugin registers."""


class MissingExtraError(ConfigError):
    """A selected component needs an optional dependency that is not installed."""


class PluginLoadError(VlmplugError):
    """A plugin module or entry point failed to import or validate."""


class PluginError(VlmplugError):
    """An exception raised inside a plugin's hook or component, re-raised naming both."""

    def __init__(self, plugin: str, where: str, exc: BaseException):
        self.plugin, self.where, self.original = plugin, where, exc
        super().__init__(f"plugin '{plugin}' failed in {where}: {type(exc).__name__}: {exc}")


class DataError(VlmplugError):
    """Bad training or evaluation data: names the file, the row and the fix."""


class HardwareError(VlmplugError):
    """A requested feature the hardware here cannot provide (e.g. tf32 without an NVIDIA GPU)."""
