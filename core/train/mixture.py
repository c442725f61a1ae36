"""Several training datasets in one run, each with a ``weight``: the run sees ``round(weight x len)``
samples of a dataset per epoch -- every sample ``floor(weight)`` times, plus a seeded random share of
them for the fraction (so ``weight: 0.5`` is a random half, ``2`` every sample twice, ``1.5`` every
sample once and a random half again). The order within the mixture does not matter: the Trainer
shuffles.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

__all__ = ["WeightedMixture", "mixture_indices"]


def mixture_indices(length: int, weight: float, seed: int) -> list[int]:
    """Indices into a dataset of ``length`` samples for ``weight``, reproducible for ``seed``."""
    whole = math.floor(weight)
    extra = round((weight - whole) * length)
    picked = sorted(random.Random(seed).sample(range(length), extra)) if extra else []
    return [i for _ in range(whole) for i in range(length)] + picked


class WeightedMixture(Sequence):
    """The datasets' samples under their weights, as one dataset; ``skipped`` is every dataset's."""

    def __init__(self, sets: Sequence[Any], weights: Sequence[float], seed: int = 0):
        self.sets = list(sets)
        self.skipped = [s for d in self.sets for s in getattr(d, "skipped", [])]
        self.order: list[tuple[int, int]] = []
        #: per dataset: (samples read, samples in the mixture)
        self.counts: list[tuple[int, int]] = []
        for k, (data, weight) in enumerate(zip(self.sets, weights)):
            picked = mixture_indices(len(data), float(weight), seed + k)
            self.order += [(k, i) for i in picked]
            self.counts.append((len(data), len(picked)))

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        k, j = self.order[i]
        return self.sets[k][j]
