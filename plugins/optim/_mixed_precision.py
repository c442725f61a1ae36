"""Mixed precision: maps bf16/fp16/tf32 onto TrainingArguments after checking the hardware."""

from __future__ import annotations

from typing import Any

from vlmplug.contracts import OptimizerStackComponent
from vlmplug.errors import HardwareError


class MixedPrecision(OptimizerStackComponent):
    def __init__(self, config: Any):
        self.config = config

    def update_training_args(self, args: dict[str, Any], hardware: Any, note: Any) -> dict[str, Any]:
        c = self.config
        if c.bf16 is True and not hardware.bf16 and hardware.cuda:
            raise HardwareError(
                f"bf16: true, but {hardware.device_name} has no bfloat16 support; "
                f"set bf16: false (or auto), or fp16: true"
            )
        if c.bf16 is True and not hardware.cuda:
            note("mixed-precision: bf16 on CPU uses CPU autocast (fast only on CPUs with AVX512-BF16/AMX)")
        if c.fp16 and not hardware.cuda:
            raise HardwareError("fp16: true needs a CUDA GPU (none found); set fp16: false")
        if c.tf32 is True and not hardware.tf32:
            raise HardwareError(
                f"tf32: true needs an NVIDIA Ampere or newer GPU ({hardware.device_name} found); "
                f"set tf32: auto (on where supported) or false"
            )
        bf16 = hardware.bf16 if c.bf16 == "auto" else bool(c.bf16)
        tf32 = hardware.tf32 if c.tf32 == "auto" else bool(c.tf32)
        if c.bf16 == "auto":
            note(f"mixed-precision: bf16 auto -> {str(bf16).lower()} ({hardware.device_name})")
        if c.tf32 == "auto":
            note(f"mixed-precision: tf32 auto -> {str(tf32).lower()} ({hardware.device_name})")
        return {**args, "bf16": bf16 and not c.fp16, "fp16": bool(c.fp16), "tf32": tf32 if hardware.cuda else None}


def build(config: Any, ctx: Any) -> MixedPrecision:
    return MixedPrecision(config)
