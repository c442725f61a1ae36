"""Several training datasets with weights: each contributes round(weight x len) samples per epoch --
every sample floor(weight) times and a seeded share of them once more -- reproducibly; bad weights are
named when the recipe resolves."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest

from vlmplug.errors import ConfigError
from vlmplug.recipe import resolve
from vlmplug.testing import TINY_RECIPE
from vlmplug.train.mixture import WeightedMixture, mixture_indices


@pytest.mark.parametrize("weight", [0.1, 0.5, 1.0, 1.5, 2.0, 3.25])
def test_each_sample_floor_weight_times_and_a_share_once_more(weight: float) -> None:
    n = 40
    picked = mixture_indices(n, weight, seed=7)
    assert len(picked) == round(weight * n)
    counts = Counter(picked)
    whole = int(weight)
    assert set(counts.values()) <= {whole, whole + 1} - ({0} if whole == 0 else set())
    assert sum(1 for c in counts.values() if c == whole + 1) == round((weight - whole) * n)
    assert mixture_indices(n, weight, seed=7) == picked
    if weight % 1:
        assert mixture_indices(n, weight, seed=8) != picked  # another seed, another share


def test_mixture_reads_the_right_samples() -> None:
    a, b = [f"a{i}" for i in range(10)], [f"b{i}" for i in range(4)]
    mix = WeightedMixture([a, b], [0.5, 2.0], seed=0)
    got = [mix[i] for i in range(len(mix))]
    assert len(mix) == 5 + 8 and mix.counts == [(10, 5), (4, 8)]
    assert Counter(x for x in got if x.startswith("b")) == {f"b{i}": 2 for i in range(4)}
    assert len({x for x in got if x.startswith("a")}) == 5


@pytest.mark.parametrize(
    ("entry", "key", "expected"),
    [
        ({"format": "shapes", "weight": 0}, "datasets", "datasets[0].weight: must be a number > 0"),
        ({"format": "shapes", "weight": "lots"}, "datasets", "datasets[0].weight: must be a number > 0"),
        ({"format": "shapes", "weight": 2}, "eval_datasets", "eval_datasets[0].weight: weights mix training"),
    ],
)
def test_bad_weights_are_named(vlmplug_host: Any, entry: dict, key: str, expected: str) -> None:
    data = {**copy.deepcopy(TINY_RECIPE), key: [entry]}
    with pytest.raises(ConfigError) as e:
        resolve(data, vlmplug_host.registry, host=vlmplug_host)
    assert any(p.startswith(expected) for p in e.value.problems), e.value.problems


def test_a_run_mixes_two_datasets_by_weight(run_recipe: Any) -> None:
    datasets = [
        {"format": "shapes", "num_samples": 40, "seed": 0, "image_size": 32, "weight": 0.25},
        {"format": "shapes", "num_samples": 12, "seed": 3, "image_size": 32, "weight": 2},
    ]
    res = run_recipe(None, steps=1, datasets=datasets, eval_datasets=[], evaluators=[])
    assert res.metrics["train_samples"] == 10 + 24
