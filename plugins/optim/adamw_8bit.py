"""``adamw-8bit``: AdamW with 8-bit optimizer states (Dettmers et al. 2022, bitsandbytes): the two
moment estimates are kept block-wise quantised, about 6 bytes per trained parameter less than
32-bit AdamW. Built through the optimizer stack's ``create_optimizer`` over the run's parameter groups
(per-module learning rates included). Runs on CUDA and, with bitsandbytes >= 0.45, on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class Adamw8bitConfig:
    min_8bit_size: int = field(
        default=4096, metadata={"help": "Tensors with fewer elements keep 32-bit states (bitsandbytes' default)."}
    )
    paged: bool = field(default=False, metadata={"help": "Paged states that spill to CPU memory (CUDA only)."})

    def __post_init__(self) -> None:
        if self.min_8bit_size < 1:
            raise ValueError("min_8bit_size must be a positive integer")


SPEC = ComponentSpec(
    name="adamw-8bit",
    summary="AdamW with 8-bit optimizer states (bitsandbytes): ~75% less optimizer memory",
    factory="vlmplug.plugins.optim._adamw_8bit:build",
    config=Adamw8bitConfig,
    extras={"bitsandbytes": "bnb"},
)


@hookimpl
def register_optimizer_stack(register) -> None:
    register(SPEC)
