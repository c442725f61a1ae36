"""``deepspeed-zero3``: DeepSpeed ZeRO stage 3 (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations
Toward Training Trillion Parameter Models") through transformers' Trainer: parameters, gradients and
optimizer states are partitioned across the processes of an ``accelerate launch`` / ``torchrun`` /
``deepspeed`` run.

The recipe key is the guide's and transformers': ``deepspeed:`` names a DeepSpeed JSON file (a path,
relative to where you run vlmplug), holds the config inline as a mapping, or is ``zero3`` / ``true``
for the shipped ``recipes/deepspeed/zero3.json`` (the guide's ZeRO-3 settings with the batch size,
accumulation, clipping and precision left ``auto``, so the recipe's training values fill them). A
missing or malformed file, a value hard-coded in the JSON that contradicts the recipe, and ``fsdp``
in the same run are errors before anything loads. The model is saved whole: the run gathers the
shards on every process and the main one writes them (docs/distributed.md).

DeepSpeed is an optional dependency (``pip install "vlmplug[deepspeed]"``); without it the component
lists as missing its extra and a recipe selecting it fails at ``vlmplug config`` time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmplug import ComponentSpec, hookimpl

#: The value that names the shipped config (``true`` does too).
SHIPPED = "zero3"


def shipped_config() -> Path:
    """The shipped ZeRO-3 config, ``recipes/deepspeed/zero3.json`` (packaged as ``vlmplug.recipes``)."""
    from importlib.resources import files

    return Path(str(files("vlmplug.recipes").joinpath("deepspeed", "zero3.json")))


def resolve_config(value: bool | str | dict) -> tuple[dict[str, Any], str | None]:
    """``(config, path)`` for a ``deepspeed:`` value; ``path`` is None for an inline mapping.
    Raises ``ValueError`` naming the file when it is missing or not a JSON object."""
    if isinstance(value, dict):
        return dict(value), None
    if value is False:
        raise ValueError(
            "deepspeed: false, but deepspeed-zero3 is selected; give a DeepSpeed JSON path, a mapping, "
            f"or '{SHIPPED}' (the shipped ZeRO-3 config), or drop deepspeed-zero3"
        )
    path = shipped_config() if value is True or value == SHIPPED else Path(str(value)).expanduser()
    if not path.is_file():
        what = "is a directory, not a DeepSpeed JSON file" if path.is_dir() else "does not exist"
        raise ValueError(
            f"deepspeed: {path} {what} (paths are relative to where you run vlmplug; "
            f"'{SHIPPED}' names the shipped ZeRO-3 config)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"deepspeed: {path} is not a text file: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"deepspeed: {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(config, dict):
        raise ValueError(f"deepspeed: {path} must hold a JSON object, not {type(config).__name__}")
    return config, str(path.resolve())


def zero_stage(config: dict[str, Any], where: str) -> int:
    """The ZeRO stage the config asks for (0 when it has no ``zero_optimization``)."""
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ValueError(f"deepspeed: {where}: zero_optimization must be a mapping")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool):
        raise ValueError(f"deepspeed: {where}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    return int(stage)


@dataclass(frozen=True, kw_only=True)
class DeepSpeedZero3Config:
    deepspeed: bool | str | dict = field(
        default=SHIPPED,
        metadata={
            "help": "DeepSpeed config: a JSON path (relative to where you run vlmplug), an inline mapping, "
            f"or '{SHIPPED}' / true for the shipped recipes/deepspeed/zero3.json ('auto' batch size, "
            "accumulation, clipping and precision, filled from the training arguments)."
        },
    )

    def __post_init__(self) -> None:
        config, path = resolve_config(self.deepspeed)
        zero_stage(config, path or "the inline config")


SPEC = ComponentSpec(
    name="deepspeed-zero3",
    summary="DeepSpeed ZeRO-3: parameters, gradients and optimizer states sharded across processes",
    factory="vlmplug.plugins.optim._deepspeed_zero3:build",
    config=DeepSpeedZero3Config,
    extras={"deepspeed": "deepspeed"},
    conflicts=("fsdp",),
    activated_by={"deepspeed": True},
    flat_keys=("deepspeed",),
)


@hookimpl
def register_optimizer_stack(register: Any) -> None:
    register(SPEC)
