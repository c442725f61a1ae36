"""Every registered component -- built-in and installed third-party -- passes its family's
conformance suite (``vlmplug.testing.check_component``): a plugin joins this test by being installed."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from vlmplug import deps
from vlmplug.manager import load
from vlmplug.testing import check_component

HOST = load()
SPECS = list(HOST.registry)


@pytest.mark.parametrize("spec", SPECS, ids=[f"{s.family}:{s.name}" for s in SPECS])
def test_component_conforms(spec: Any) -> None:
    if deps.missing_extras(spec):  # its lane installs the extra (e.g. eva-clip: .ci/run's timm venv)
        pytest.skip(f"{spec.name}: {deps.install_hint(deps.missing_extras(spec).values())} to run it")
    module = HOST.plugins[spec.plugin].module.split(":")[0]
    report = check_component(spec, module=module, host=HOST)
    assert report["family"] == spec.family


def test_every_family_is_covered() -> None:
    assert {s.family for s in SPECS} == {
        "vision_encoder",
        "connector",
        "fusion",
        "peft",
        "dataset_format",
        "optimizer_stack",
        "evaluator",
    }


def test_a_broken_component_fails_naming_the_member(tmp_path: Any) -> None:
    """The kit is not a rubber stamp: a connector whose output ignores its declared budget fails."""
    from vlmplug import ComponentSpec

    spec = ComponentSpec(name="bad-budget", summary="x", factory=f"{__name__}:build_bad_connector", family="connector")
    with pytest.raises(AssertionError, match="declared budget 4"):
        check_component(spec)


class BadConnector(nn.Module):
    """Declares 4 tokens but returns every input token."""

    num_tokens = 4

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: Any) -> Any:
        return self.proj(x)


def build_bad_connector(config: Any, ctx: Any, *, in_dim: int, out_dim: int, num_input_tokens: int) -> BadConnector:
    return BadConnector(in_dim, out_dim)
