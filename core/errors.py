"""Exception classes, one per category of problem.

Every message names the thing at fault (component, plugin, key, file, row) and the fix. The CLI prints
them without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "VlmplugError",
    "ConfigError",
    "UnknownComponentError",
    "MissingExtraError",
    "PluginLoadError",
    "PluginError",
    "DataError",
    "SkipReport",
    "HardwareError",
    "did_you_mean",
    "read_text",
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
    """Bad training or evaluation data: names the file, the row and the fix.

    :param reason: a short category (``missing-image``, ``unreadable-image``, ``image-count``,
        ``too-long``, ``malformed-row``, ``no-target``, ...) that groups skips in the skip report.
    :param where: the row (``train.jsonl:12``) when known.
    """

    def __init__(self, message: str, *, reason: str = "bad-sample", where: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.where = where


class SkipReport:
    """Samples skipped under ``on_bad_sample: skip``: every reason with its count and first rows.

    A row met twice (two epochs, two processes) counts once."""

    FIRST = 5

    def __init__(self) -> None:
        self.items: list[dict] = []
        self._seen: set[tuple[object, str]] = set()

    def add(self, error: DataError | dict) -> None:
        item = (
            error
            if isinstance(error, dict)
            else {
                "reason": getattr(error, "reason", "bad-sample"),
                "where": getattr(error, "where", None),
                "message": str(error),
            }
        )
        if item.get("where"):
            key = (item["reason"], str(item["where"]))
            if key in self._seen:
                return
            self._seen.add(key)
        self.items.append(item)

    def extend(self, errors: Iterable[DataError | dict]) -> None:
        for e in errors:
            self.add(e)

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def reasons(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for item in self.items:
            entry = out.setdefault(item["reason"], {"count": 0, "first": [], "example": item["message"]})
            entry["count"] += 1
            if len(entry["first"]) < self.FIRST:
                entry["first"].append(item.get("where") or item["message"][:200])
        return out

    def to_dict(self) -> dict:
        return {"total": self.total, "reasons": self.reasons}

    def lines(self) -> list[str]:
        return [
            f"{reason}: {e['count']} (first: {', '.join(map(str, e['first']))}) -- {e['example']}"
            for reason, e in sorted(self.reasons.items(), key=lambda kv: -kv[1]["count"])
        ]


class HardwareError(VlmplugError):
    """A requested feature the hardware here cannot provide (e.g. tf32 without an NVIDIA GPU)."""


def read_text(path: str | os.PathLike[str], what: str = "file", error: type[VlmplugError] | None = None) -> str:
    """Read a UTF-8 text file; a decoding error names the file, the line and the fix (raised as
    ``error``, default :class:`ConfigError`)."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        message = (
            f"{path}:{line}: the {what} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            f"save it as UTF-8"
        )
        if error is None or error is ConfigError:
            raise ConfigError(message, header="encoding") from None
        if error is DataError:
            raise DataError(message, reason="encoding", where=f"{path}:{line}") from None
        raise error(message) from None
