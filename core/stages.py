"""Multi-stage recipes: ``stages: [...]`` runs one training run per entry, each starting from the model
the previous one saved (the guide's alignment -> instruction tuning -> task fine-tuning).

The recipe's other keys are shared by every stage; each entry adds or overrides keys (usually
``stage: align | instruct | task`` and its data). Stage *i* > 1 gets ``model: <run directory of stage
i-1>`` unless it names a model itself. Runs go to ``ROOT/1-align``, ``ROOT/2-instruct``, ... under
``ROOT`` = ``--output-dir`` or ``runs/<name>``; a stage whose run directory already holds a finished
run is not trained again, so an interrupted multi-stage run continues where it stopped.

Every stage is resolved before the first one trains (later stages against the shared ``model``, as
the previous stage's output does not exist yet), so a typo in stage 3 stops the run at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["Stage", "plan_stages", "is_multistage", "resolve_stages", "run_stages"]

STAGES_KEY = "stages"


@dataclass
class Stage:
    """One entry of ``stages:``: its merged recipe, its label and its run directory."""

    index: int
    label: str
    data: dict[str, Any]
    run_dir: Path

    def finished(self) -> bool:
        try:
            return json.loads((self.run_dir / "run.json").read_text()).get("status") == "finished"
        except (OSError, ValueError):
            return False


def is_multistage(data: Mapping[str, Any]) -> bool:
    return STAGES_KEY in data


def _label(index: int, entry: Mapping[str, Any]) -> str:
    tag = entry.get("stage") or entry.get("name") or "stage"
    return f"{index}-{tag}"


def plan_stages(data: Mapping[str, Any], output_dir: str | None) -> list[Stage]:
    """The stages of a multi-stage recipe: merged recipes (stage *i* > 1 starting from stage *i-1*'s run
    directory unless it names its own model) and run directories."""
    entries = data.get(STAGES_KEY)
    if not isinstance(entries, list) or not entries or not all(isinstance(e, Mapping) for e in entries):
        raise ConfigError(
            "stages: expected a list of mappings, one per stage, e.g. [{stage: align}, {stage: instruct}]",
            header="stages",
        )
    nested = [i for i, e in enumerate(entries, 1) if STAGES_KEY in e]
    if nested:
        raise ConfigError(f"stages[{nested[0]}]: a stage cannot have stages of its own", header="stages")
    base = {k: v for k, v in data.items() if k != STAGES_KEY}
    name = str(base.get("name", "run"))
    root = Path(output_dir or base.get("output_dir") or Path("runs") / name)
    stages: list[Stage] = []
    for i, entry in enumerate(entries, 1):
        label = _label(i, entry)
        merged = {**base, **entry, "name": f"{name}-{label}"}
        merged.pop("output_dir", None)
        if stages and "model" not in entry:
            merged["model"] = str(stages[-1].run_dir)
        stages.append(Stage(i, label, merged, root / label))
    return stages


def resolve_stages(
    stages: list[Stage], host: Any, plugins: list[str], sets: list[tuple[str, Any]], source: str
) -> list[Any]:
    """Resolve every stage now (all problems at once, each named by its stage); a stage whose input is
    the not-yet-trained previous stage is checked against the shared ``model``."""
    from .recipe import resolve

    resolved: list[Any] = []
    problems: list[str] = []
    for i, stage in enumerate(stages):
        data = dict(stage.data)
        if i > 0 and data.get("model") == str(stages[i - 1].run_dir) and not stages[i - 1].finished():
            data["model"] = stages[0].data.get("model")
        try:
            resolved.append(
                resolve(data, host.registry, host=host, plugins=plugins, sets=sets, source=f"{source} [{stage.label}]")
            )
        except ConfigError as e:
            problems.extend(f"stage {stage.label}: {p}" for p in e.problems)
    if problems:
        raise ConfigError(problems)
    return resolved


def run_stages(
    stages: list[Stage],
    host: Any,
    *,
    plugins: list[str],
    sets: list[tuple[str, Any]],
    source: str,
    console: Any,
    argv: list[str] | None = None,
) -> list[Any]:
    """Train the stages in order (finished ones are skipped); return each stage's run result (``None``
    for a skipped one)."""
    from .recipe import resolve
    from .train.run import run

    resolve_stages(stages, host, plugins, sets, source)
    results: list[Any] = []
    for stage in stages:
        if stage.finished():
            console.print(f"[bold]stage {stage.label}[/]: already finished in {stage.run_dir}; not trained again")
            results.append(None)
            continue
        console.print(f"[bold]stage {stage.label}[/] ({stage.index}/{len(stages)}) -> {stage.run_dir}")
        resolved = resolve(
            stage.data, host.registry, host=host, plugins=plugins, sets=sets, source=f"{source} [{stage.label}]"
        )
        results.append(run(resolved, host, output_dir=str(stage.run_dir), console=console, argv=argv))
    return results
