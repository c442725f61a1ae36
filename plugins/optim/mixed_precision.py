"""``mixed-precision``: bfloat16 / float16 autocast and TF32 matmuls where the hardware has them.

``auto`` turns a feature on when the hardware supports it, and the choice is logged and saved in
the run's resolved recipe. Asking for ``tf32: true`` without an NVIDIA Ampere+ GPU, or
``bf16: true`` on hardware without bfloat16, stops with a clear message before training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlmplug import ComponentSpec, hookimpl

Flag = bool | Literal["auto"]


@dataclass(frozen=True, kw_only=True)
class MixedPrecisionConfig:
    bf16: Flag = field(default="auto", metadata={"help": "bfloat16 autocast (true / false / auto)."})
    fp16: bool = field(default=False, metadata={"help": "float16 autocast with loss scaling (CUDA only)."})
    tf32: Flag = field(default="auto", metadata={"help": "TF32 matmuls on Ampere+ NVIDIA GPUs (true / false / auto)."})

    def __post_init__(self) -> None:
        if self.fp16 and self.bf16 is True:
            raise ValueError("bf16 and fp16 are exclusive; choose one")


SPEC = ComponentSpec(
    name="mixed-precision",
    summary="bf16/fp16 autocast and tf32 where the hardware supports them",
    factory="vlmplug.plugins.optim._mixed_precision:build",
    config=MixedPrecisionConfig,
    activated_by={"bf16": True, "tf32": True, "fp16": True},
    flat_keys=("bf16", "tf32", "fp16"),
)


@hookimpl
def register_optimizer_stack(register) -> None:
    register(SPEC)
