"""The architecture matrix: every installed vision encoder x connector x fusion builds around the
tiny LLM, runs forward, backward and generate, and saves and loads back with identical logits
(``vlmplug.testing.check_combination``); a combination whose capabilities do not fit is rejected
when the recipe resolves, naming both components. A plugin joins the matrix by being installed."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from vlmplug import deps
from vlmplug.errors import ConfigError
from vlmplug.manager import load
from vlmplug.recipe import resolve
from vlmplug.testing import TINY_RECIPE, check_combination

HOST = load()
FAMILIES = ("vision_encoder", "connector", "fusion")
USABLE = {fam: [s for s in HOST.registry.family(fam) if not deps.missing_extras(s)] for fam in FAMILIES}
COMBOS = list(itertools.product(*(USABLE[f] for f in FAMILIES)))


def _resolves(encoder: Any, connector: Any, fusion: Any) -> ConfigError | None:
    recipe = {
        **TINY_RECIPE,
        "vision_encoder": {"name": encoder.name, **encoder.test_options},
        "connector": {"name": connector.name, **connector.test_options},
        "fusion": {"name": fusion.name, **fusion.test_options},
    }
    try:
        resolve(recipe, HOST.registry, host=HOST)
    except ConfigError as e:
        return e
    return None


@pytest.mark.parametrize("encoder, connector, fusion", COMBOS, ids=["+".join(s.name for s in c) for c in COMBOS])
def test_combination(encoder: Any, connector: Any, fusion: Any) -> None:
    error = _resolves(encoder, connector, fusion)
    if error is not None:  # capabilities that do not fit: named before anything loads, never a crash later
        assert any(
            "needs" in p and (encoder.name in p or connector.name in p or fusion.name in p) for p in error.problems
        ), error.problems
        return
    report = check_combination(encoder, connector, fusion)
    assert report["tokens_per_image"] >= 1
