"""The core knows no concrete component: no built-in component name, and none of the built-in
evaluators' metric or data field names, appears as a string in core/ (it calls plugins only through
the family contracts). The roadmap's planned names count too."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

from vlmplug.manager import load

CORE = Path(__file__).resolve().parents[2] / "core"
FIELDS = ("accuracy", "yes_ratio", "question_type", "per_type", "answers")
#: The canonical sample's keys are the core's own data contract, even where a component shares the name;
#: ``full`` (with ``frozen``) is a training mode of the per-module spec (``modules: {connector: full}``),
#: which the core applies itself -- the ``full`` PEFT method is named after it, not the other way round.
CANONICAL = {"messages", "images", "videos", "full"}


def _strings(path: Path) -> list[tuple[int, str]]:
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if tok.type == tokenize.STRING and not tok.string.lstrip("rbfuRBFU").startswith(('"""', "'''")):
            out.append((tok.start[0], tok.string))
    return out


def test_no_component_or_metric_name_in_core_strings() -> None:
    registry = load(autoload=False).registry
    names = {s.name for s in registry} | {s.name for s in registry.planned_specs()}
    words = sorted((names | set(FIELDS)) - CANONICAL, key=len, reverse=True)
    found = []
    for path in sorted(CORE.rglob("*.py")):
        for line, text in _strings(path):
            body = text.strip("rbfu").strip("'\"")
            for word in words:
                if body == word or f"'{word}'" in text or f'"{word}"' in text:
                    found.append(f"{path.relative_to(CORE.parent)}:{line}: {text[:60]}")
    assert not found, "core/ names concrete components or metrics:\n" + "\n".join(found)
