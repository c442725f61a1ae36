"""The per-module spec: how each part of the model trains, in one declarative place.

A recipe's ``modules:`` says, per part -- ``vision_encoder``, ``connector``, ``llm`` and ``fusion`` (the
new modules a fusion adds) -- whether it trains and at which learning rate::

    modules:
      vision_encoder: frozen                          # shorthand for {train: frozen}
      connector: {train: full, learning_rate: 1e-3}
      llm: {train: lora, learning_rate: 2e-4}         # a PEFT method name: selects that method

``train`` is ``frozen`` or ``full`` for every part; for the ``llm`` it may also name a PEFT method
(``lora``, ``qlora``, ``spectrum``, ``full``), which then is the run's PEFT method. A part the spec
leaves out trains as the PEFT method decides (``vlmplug info METHOD``). ``learning_rate`` and
``weight_decay`` become that part's optimizer parameter group (the schedule scales every group alike);
parts without them use the run's values.

This module is light (no torch): the recipe checks the spec when it resolves. Applying it to a built
model and building the parameter groups is :mod:`vlmplug.train.modules`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import did_you_mean

__all__ = ["PARTS", "ModulePlan", "parse_modules", "llm_method"]

#: The parts of a vision-language model, in the order the spec is applied (a fusion's modules may sit
#: inside the LLM, so the fusion's setting comes last and wins for them).
PARTS: tuple[str, ...] = ("llm", "vision_encoder", "connector", "fusion")
#: ``train`` values every part takes.
MODES = ("frozen", "full")
FIELDS = ("train", "learning_rate", "weight_decay")


@dataclass(frozen=True)
class ModulePlan:
    """One part's line of the spec; ``None`` fields follow the PEFT method / the run's values."""

    train: str | None = None
    learning_rate: float | None = None
    weight_decay: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (
                ("train", self.train),
                ("learning_rate", self.learning_rate),
                ("weight_decay", self.weight_decay),
            )
            if v is not None
        }


def _number(value: Any, where: str, problems: list[str], *, positive: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"{where}: expected a number, got {value!r}")
        return None
    if value < 0 or (positive and value == 0):
        problems.append(f"{where}: must be {'> 0' if positive else '>= 0'}, got {value!r}")
        return None
    return float(value)


def parse_modules(
    value: Any, peft_methods: list[str], where: str = "modules"
) -> tuple[dict[str, ModulePlan], list[str]]:
    """``modules:`` -> ``{part: ModulePlan}`` and the problems found (each naming the key and the fix).

    ``peft_methods``: the PEFT method names installed, which the ``llm``'s ``train`` may name."""
    problems: list[str] = []
    if value in (None, {}):
        return {}, problems
    if not isinstance(value, Mapping):
        return {}, [f"{where}: expected a mapping of part -> settings ({', '.join(PARTS)})"]
    plans: dict[str, ModulePlan] = {}
    for part, raw in value.items():
        here = f"{where}.{part}"
        if part not in PARTS:
            problems.append(f"{here}: unknown part{did_you_mean(str(part), PARTS)}; parts: {', '.join(PARTS)}")
            continue
        if isinstance(raw, str):
            raw = {"train": raw}
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            problems.append(f"{here}: expected 'frozen', 'full' or a mapping with {', '.join(FIELDS)}")
            continue
        for key in raw:
            if key not in FIELDS:
                problems.append(
                    f"{here}.{key}: unknown setting{did_you_mean(str(key), FIELDS)}; settings: {', '.join(FIELDS)}"
                )
        train = raw.get("train")
        if train is not None:
            train = str(train)
            allowed = [*MODES, *(m for m in peft_methods if m not in MODES)] if part == "llm" else list(MODES)
            if train not in allowed:
                hint = "" if part == "llm" else " (a PEFT method goes on the llm only)" if train in peft_methods else ""
                problems.append(f"{here}.train: '{train}' is not one of {', '.join(allowed)}{hint}")
                train = None
        plans[part] = ModulePlan(
            train=train,
            learning_rate=_number(raw.get("learning_rate"), f"{here}.learning_rate", problems, positive=True),
            weight_decay=_number(raw.get("weight_decay"), f"{here}.weight_decay", problems, positive=False),
        )
    return plans, problems


def llm_method(plans: Mapping[str, ModulePlan]) -> str | None:
    """The PEFT method the spec's ``llm.train`` names (``full`` for full fine-tuning), or ``None``."""
    plan = plans.get("llm")
    if plan is None or plan.train in (None, "frozen"):
        return None
    return plan.train
