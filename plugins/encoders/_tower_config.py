"""The options every ViT tower here shares (``clip``, ``siglip``, ``eva-clip``): where the weights come
from, the feature layer, the guide's document keys (``image_resolution``, ``patch_pooling``,
``pooled_grid``) and the ``tiny`` preset's shape, with their checks. Each encoder subclasses
:class:`TowerConfig`, redeclaring ``model`` and ``feature_layer`` with its own default (a redeclared
field keeps its place, so ``vlmplug info`` lists the options in the same order for every tower).

Light: no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ._pooling import POOLED_GRID_HELP, POOLING_HELP, RESOLUTION_HELP, check_grid_options


@dataclass(frozen=True, kw_only=True)
class TowerConfig:
    model: str = field(default="tiny", metadata={"help": "Hub id or local path, or 'tiny' for the preset."})
    feature_layer: int = field(default=-1, metadata={"help": "Hidden layer the features come from (-1 = last)."})
    image_resolution: int | None = field(default=None, metadata={"help": RESOLUTION_HELP})
    patch_pooling: Literal["none", "adaptive"] = field(default="none", metadata={"help": POOLING_HELP})
    pooled_grid: int | None = field(default=None, metadata={"help": POOLED_GRID_HELP})
    tiny_image_size: int = field(default=64, metadata={"help": "tiny preset: input resolution in pixels."})
    tiny_patch_size: int = field(default=16, metadata={"help": "tiny preset: patch size in pixels."})
    tiny_hidden_size: int = field(default=64, metadata={"help": "tiny preset: transformer width."})
    tiny_layers: int = field(default=3, metadata={"help": "tiny preset: number of transformer layers."})
    tiny_heads: int = field(default=4, metadata={"help": "tiny preset: attention heads."})

    def __post_init__(self) -> None:
        if self.feature_layer == 0:
            raise ValueError("feature_layer: 0 is the patch embedding, not a transformer layer; use -1 or -2")
        tiny = self.model == "tiny"
        if tiny:
            if self.tiny_image_size % self.tiny_patch_size:
                raise ValueError("tiny_image_size must be a multiple of tiny_patch_size")
            if abs(self.feature_layer) > self.tiny_layers:
                raise ValueError(
                    f"feature_layer {self.feature_layer} is out of range for tiny_layers {self.tiny_layers}"
                )
        check_grid_options(
            self.image_resolution,
            self.patch_pooling,
            self.pooled_grid,
            patch_size=self.tiny_patch_size if tiny else None,
            pretrained_size=self.tiny_image_size if tiny else None,
        )
