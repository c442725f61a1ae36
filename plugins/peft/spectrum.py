"""``spectrum``: train only the most informative layers, chosen by their signal-to-noise ratio
(Hartford et al. 2024, "Spectrum: Targeted Training on Signal to Noise Ratio"); nothing quantised,
no adapters -- the selected weights train in place and the model saves as a plain one.

The LLM's selection is exactly the reference tool's (``_spectrum_snr``): a per-type top
``top_percent`` by SNR, plus the token embeddings and output head, or a ``unfrozen_parameters``
YAML from ``vlmplug spectrum scan`` / the reference ``spectrum.py`` / axolotl. Beyond the reference
(which reads text LLMs only), the vision tower and the connector get their own budgets, scanned the
same way: ``vision_top_percent`` (0: frozen) and ``connector_top_percent`` (100: all of it, as a
freshly initialised connector needs). Modules a fusion adds always train.

``vlmplug spectrum scan MODEL_OR_RUN --top-percent 30 [--out DIR]`` writes the reference's files
(see ``vlmplug spectrum scan --help``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmplug import ComponentSpec, hookimpl


def _percent(value: float, name: str) -> None:
    if not 0 <= value <= 100:
        raise ValueError(f"{name} must be between 0 and 100, got {value}")


@dataclass(frozen=True, kw_only=True)
class SpectrumConfig:
    top_percent: float = field(
        default=30.0,
        metadata={"help": "LLM layers kept trainable per weight type, by SNR, in percent (the guide: 30)."},
    )
    unfrozen_parameters: str | None = field(
        default=None,
        metadata={
            "help": "An unfrozen_parameters YAML (from `vlmplug spectrum scan` or the reference spectrum.py) "
            "to use for the LLM instead of scanning at start."
        },
    )
    snr_results: str | None = field(
        default=None,
        metadata={"help": "An snr_results_*.json to select top_percent from, instead of scanning at start."},
    )
    train_embeddings: bool = field(
        default=True,
        metadata={"help": "Also train the token embeddings and output head (the reference YAML always does)."},
    )
    connector_top_percent: float = field(
        default=100.0, metadata={"help": "Connector layers kept trainable per weight type, by SNR (100: all)."}
    )
    vision_top_percent: float = field(
        default=0.0, metadata={"help": "Vision-tower layers kept trainable per weight type, by SNR (0: frozen)."}
    )

    def __post_init__(self) -> None:
        for name in ("top_percent", "connector_top_percent", "vision_top_percent"):
            _percent(getattr(self, name), name)
        if self.unfrozen_parameters and self.snr_results:
            raise ValueError("set unfrozen_parameters or snr_results, not both")


SPEC = ComponentSpec(
    name="spectrum",
    summary="Spectrum: train only the top-SNR layers per type (LLM, and optionally connector / vision)",
    factory="vlmplug.plugins.peft._spectrum:build",
    config=SpectrumConfig,
    test_options={"top_percent": 50.0},
)


@hookimpl
def register_peft_methods(register: Any) -> None:
    register(SPEC)


@hookimpl
def register_commands(cli: Any) -> None:
    from ._spectrum_cli import spectrum_group

    cli.add_command(spectrum_group)
