"""``pixel-shuffle`` connector: space-to-depth token compression, then a linear projection.

Follows the modality projector of nanoVLM (HuggingFace, 2025) and Idefics3 (Laurençon et al. 2024):
``[B, g*g, D] -> [B, (g/r)^2, D*r^2] -> [B, (g/r)^2, H]``. This module stays light (no torch); the
layer lives in ``_impl.py`` and is imported only when the connector is selected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class PixelShuffleConfig:
    scale_factor: int = field(default=2, metadata={"help": "Fold r x r neighbouring patches into one token."})

    def __post_init__(self) -> None:
        if self.scale_factor < 1:
            raise ValueError("scale_factor must be a positive integer")


SPEC = ComponentSpec(
    name="pixel-shuffle",
    summary="Pixel-shuffle (space-to-depth) then linear: r^2 fewer image tokens (nanoVLM, Idefics3)",
    factory="vlmplug_pixel_shuffle._impl:build",
    config=PixelShuffleConfig,
    needs=("patch-grid",),  # folds a square grid of patch features: no CLS token
)


@hookimpl
def register_connectors(register) -> None:
    register(SPEC)
