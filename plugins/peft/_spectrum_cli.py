"""``vlmplug spectrum scan``: the reference tool's SNR scan as a command (imports torch only when run)."""

from __future__ import annotations

from typing import Any

import click


@click.group(name="spectrum")
def spectrum_group() -> None:
    """Spectrum layer selection by signal-to-noise ratio (Hartford et al. 2024)."""


@spectrum_group.command(name="scan")
@click.argument("model")
@click.option("--top-percent", type=click.FloatRange(0, 100), default=30.0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.option(
    "--connector-top-percent",
    type=click.FloatRange(0, 100),
    default=None,
    help="A saved vlmplug model: also scan the connector with this budget.",
)
@click.option(
    "--vision-top-percent",
    type=click.FloatRange(0, 100),
    default=None,
    help="A saved vlmplug model: also scan the vision tower with this budget.",
)
@click.option("--trust-remote-code", is_flag=True, help="Allow the model repo to run its own code.")
def scan_command(
    model: str,
    top_percent: float,
    out_dir: str,
    connector_top_percent: float | None,
    vision_top_percent: float | None,
    trust_remote_code: bool,
) -> None:
    """Scan MODEL (a causal LM hub id or folder, or a vlmplug run / model directory) and write
    snr_results_<model>.json, its _sorted.json and the unfrozen_parameters YAML for --top-percent,
    in the reference spectrum.py's formats. A recipe uses the YAML as
    `peft: {name: spectrum, unfrozen_parameters: PATH}`."""
    from rich.console import Console
    from rich.progress import Progress

    from . import _spectrum_snr as snr_lib

    console = Console(stderr=True)
    parts = _load_parts(model, trust_remote_code, top_percent, connector_top_percent, vision_top_percent)
    for label, (module, budget) in parts.items():
        with Progress(console=console, transient=True) as progress:
            types = snr_lib.weight_types(module)
            task = progress.add_task(f"SNR of {label}", total=len(types))
            scores = snr_lib.scan(module, types, progress=lambda _t, task=task: progress.advance(task))
        name = model if label == "llm" else f"{model}-{label}"
        paths = snr_lib.write_results(scores, out_dir, name, budget, embeddings=label == "llm")
        kept = sum(len(v) for v in snr_lib.select(scores, budget).values())
        console.print(f"{label}: {len(scores)} layers scanned, {kept} kept at {budget:g}% -> {paths['unfrozen']}")


def _load_parts(
    model: str, trust_remote_code: bool, top: float, connector_top: float | None, vision_top: float | None
) -> dict[str, tuple[Any, float]]:
    """``{part: (module, budget)}``: a plain causal LM is one part; a vlmplug model adds the
    connector and vision tower when their budgets are given."""
    import torch

    from vlmplug.errors import ConfigError
    from vlmplug.train.model_io import find_model_dir

    try:
        model_dir = find_model_dir(model)
    except ConfigError:  # not a vlmplug model: a causal LM id or folder
        model_dir = None
    if model_dir is None:
        from transformers import AutoModelForCausalLM

        llm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, trust_remote_code=trust_remote_code)
        return {"llm": (llm, top)}
    import vlmplug

    vlm = vlmplug.load(model_dir)
    parts: dict[str, tuple[Any, float]] = {"llm": (_base_llm(vlm.llm), top)}
    if connector_top is not None:
        parts["connector"] = (vlm.connector, connector_top)
    if vision_top is not None:
        parts["vision_encoder"] = (vlm.vision_encoder, vision_top)
    return parts


def _base_llm(llm: Any) -> Any:
    """The LLM under a peft wrapper (its names then match the plain model's)."""
    get_base = getattr(llm, "get_base_model", None)
    return get_base() if callable(get_base) else llm
