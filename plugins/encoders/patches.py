"""``patches``: no vision encoder -- raw image patches, linearly projected (Fuyu, Bavishi et al. 2023),
at a variable resolution and aspect ratio with 2-D positions (Pix2Struct, Lee et al. 2023).

Fuyu feeds each ``p x p`` pixel patch through one linear layer straight into the decoder, at the
image's own resolution and aspect ratio. Here an image is scaled, keeping its aspect ratio, to the
largest ``rows x cols`` patch grid with ``rows * cols <= max_patches`` (Pix2Struct's variable-
resolution rule: a wide receipt becomes a wide grid, a tall page a tall one, nothing is cropped or
distorted), and each patch is projected and tagged with learned row and column embeddings so the
2-D layout survives flattening. The token budget is fixed at ``max_patches`` per image (positions
past the image's grid hold a learned padding token), which keeps every connector and fusion
working unchanged. Nothing is pretrained: the projection always trains, whatever the PEFT method
says about the vision tower.

Token budget: ``max_patches``. Pick ``patch_size`` and ``max_patches`` for the detail you need
(Fuyu: 30 px patches; documents: ~1000-2000 patches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmplug import ComponentSpec, hookimpl

#: Largest ``max_patches``: row / column ids travel in ``pixel_values`` as two base-64 digits, exact
#: in bf16 and fp16 (see ``_patches``).
MAX_PATCHES = 4096


@dataclass(frozen=True, kw_only=True)
class PatchesConfig:
    patch_size: int = field(default=30, metadata={"help": "Patch side in pixels (Fuyu: 30)."})
    max_patches: int = field(
        default=1024,
        metadata={
            "help": "Token budget per image: the image is scaled (aspect ratio kept) to the largest patch "
            "grid with rows x cols <= max_patches."
        },
    )
    hidden_size: int = field(
        default=1024, metadata={"help": "Width of the projected patches (the connector maps it to the LLM's)."}
    )
    layer_norm: bool = field(
        default=True, metadata={"help": "LayerNorm on the projected patches (off: Fuyu's bare projection)."}
    )

    def __post_init__(self) -> None:
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if not 1 <= self.max_patches <= MAX_PATCHES:
            raise ValueError(f"max_patches must be between 1 and {MAX_PATCHES}, got {self.max_patches}")
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")


SPEC = ComponentSpec(
    name="patches",
    summary="no encoder: raw patches -> linear (Fuyu), any aspect ratio, 2-D positions; trains from scratch",
    factory="vlmplug.plugins.encoders._patches:build",
    config=PatchesConfig,
    test_options={"patch_size": 8, "max_patches": 12, "hidden_size": 32},
)


@hookimpl
def register_vision_encoders(register: Any) -> None:
    register(SPEC)
