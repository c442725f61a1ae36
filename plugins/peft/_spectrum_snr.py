"""Spectrum's layer signal-to-noise ratios and selection (Hartford et al. 2024, "Spectrum: Targeted
Training on Signal to Noise Ratio"), computed and written exactly as the reference tool
(``spectrum.py`` of cognitivecomputations/spectrum) does, so its files and ours are interchangeable.

* **Weight types.** A module name's type is what follows its first all-digit part
  (``model.layers.3.self_attn.q_proj`` -> ``self_attn.q_proj``), or the whole name when it has none
  (``lm_head``, ``model.embed_tokens``, ``model.norm``). Types are scanned grouped by their first
  dotted part, groups and members in sorted order; a type's layers are the modules with a ``weight``
  whose name *contains* the type.
* **SNR.** ``S`` = singular values of the weight (a 1-D weight is read as one row). The noise level
  is estimated from their interquartile range, ``sigma = (q75 - q25) / 1.349`` (torch's linear
  quantiles), and the Marchenko-Pastur bulk edge for an ``n x m`` matrix is ``sigma * (1 +
  sqrt(beta))`` with ``beta = min(n, m) / max(n, m)``. Singular values above the edge are signal,
  the rest noise (an empty noise set counts as 1); the reported value is ``(signal / noise) / S[0]``.
  A weight of more than 2 dimensions (a conv patch embedding) gets NaN, as in the reference.
* **Selection.** Per type, layers sorted by that value (highest first, NaN last), the first
  ``int(count * top_percent / 100)`` kept.
* **Files.** ``snr_results_<slug>.json`` (``{layer: {"snr", "type"}}`` in scan order),
  ``snr_results_<slug>_sorted.json`` (``{type: {layer: snr}}``, highest first) and
  ``snr_results_<slug>_unfrozenparameters_<N>percent.yaml`` (``unfrozen_parameters:`` regexes:
  ``^lm_head.weight$`` and ``^model.embed_tokens.weight$`` first, then the kept layers per type),
  where ``<slug>`` is the model id with ``/`` and ``_`` replaced by ``-``. The YAML's entries are
  regular expressions matched (``re.match``) against parameter names, as trainers read it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "EMBEDDING_PATTERNS",
    "weight_type",
    "weight_types",
    "layer_snr",
    "scan",
    "select",
    "slug",
    "unfrozen_yaml",
    "write_results",
    "read_patterns",
    "read_snr",
]

#: The reference YAML always unfreezes the output head and the token embeddings first.
EMBEDDING_PATTERNS = ("^lm_head.weight$", "^model.embed_tokens.weight$")


def weight_type(name: str) -> str:
    """``model.layers.3.mlp.down_proj`` -> ``mlp.down_proj``; a name without a layer index is its own type."""
    parts = name.split(".")
    index = next((i for i, part in enumerate(parts) if part.isdigit()), -1)
    return ".".join(parts[index + 1 :]) if index != -1 else name


def weight_types(model: nn.Module) -> list[str]:
    """Every type of a module with a ``weight``, ``bias`` or ``inv_freq``, in the reference's scan order."""
    found = {
        weight_type(name)
        for name, module in model.named_modules()
        if any(hasattr(module, attr) for attr in ("weight", "bias", "inv_freq"))
    }
    groups: dict[str, list[str]] = {}
    for t in found:
        groups.setdefault(t.split(".")[0], []).append(t)
    return [t for key in sorted(groups) for t in sorted(groups[key])]


def layer_snr(weight: torch.Tensor) -> float:
    """The reference's SNR of one weight matrix (see the module docstring), in float32."""
    w = weight.detach().float()
    if w.ndim > 2:  # e.g. a conv patch embedding: the reference's computation fails there and records NaN
        return float("nan")
    if w.ndim < 2:
        w = w.unsqueeze(0)
    s = torch.linalg.svdvals(w)
    sigma = (torch.quantile(s, 0.75) - torch.quantile(s, 0.25)) / 1.349
    n, m = w.shape[-2:]
    beta = n / m if n < m else m / n
    threshold = sigma * math.sqrt((1 + math.sqrt(beta)) ** 2)
    signal_mask = s > threshold
    signal = s[signal_mask].sum() if bool(signal_mask.any()) else torch.tensor(0.0)
    noise = s[~signal_mask].sum() if bool((~signal_mask).any()) else torch.tensor(1.0)
    snr = signal / noise if float(noise) != 0 else torch.tensor(float("inf"))
    return float(snr / s[0])


def scan(
    model: nn.Module,
    types: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{module name: {"snr": float, "type": str}}`` for every module with a weight, type by type
    (all of :func:`weight_types` by default); ``progress(type)`` after each type."""
    modules = [(name, module) for name, module in model.named_modules() if hasattr(module, "weight")]
    results: dict[str, dict[str, Any]] = {}
    for t in weight_types(model) if types is None else types:
        for name, module in modules:
            weight = getattr(module, "weight", None)
            if t in name and isinstance(weight, torch.Tensor) and weight.device.type != "meta":
                results[name] = {"snr": layer_snr(weight), "type": t}
        if progress is not None:
            progress(t)
    return results


def select(snr: Mapping[str, Mapping[str, Any]], top_percent: float) -> dict[str, list[str]]:
    """``{type: [layer, ...]}``: per type, the top ``int(count * top_percent / 100)`` layers by SNR."""
    by_type: dict[str, list[tuple[str, float]]] = {}
    for name, info in snr.items():
        by_type.setdefault(str(info["type"]), []).append((name, float(info["snr"])))
    kept: dict[str, list[str]] = {}
    for t, layers in by_type.items():
        ranked = sorted(layers, key=lambda x: -math.inf if math.isnan(x[1]) else x[1], reverse=True)  # NaN last
        kept[t] = [name for name, _ in ranked[: int(len(layers) * top_percent / 100)]]
    return kept


def slug(model_name: str) -> str:
    return model_name.replace("/", "-").replace("_", "-")


def _percent(top_percent: float) -> str:
    return str(int(top_percent)) if float(top_percent).is_integer() else str(top_percent)


def unfrozen_yaml(selection: Mapping[str, list[str]], embeddings: bool = True) -> str:
    """The reference's ``unfrozen_parameters`` YAML text for a selection."""
    lines = ["unfrozen_parameters:", *(f"- {p}" for p in (EMBEDDING_PATTERNS if embeddings else ()))]
    for t, names in selection.items():
        lines.append(f"# {t} layers")
        lines += [f"- {name}" for name in names]
    return "\n".join(lines) + "\n"


def write_results(
    snr: Mapping[str, Mapping[str, Any]],
    out_dir: str | Path,
    model_name: str,
    top_percent: float,
    embeddings: bool = True,
) -> dict[str, Path]:
    """Write the three reference files for ``model_name`` into ``out_dir``; return their paths.
    ``embeddings``: the YAML starts with the LLM's embedding and head patterns, as the reference's
    does (``False`` for a connector or vision tower, which have neither)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = f"snr_results_{slug(model_name)}"
    paths = {
        "snr": out / f"{base}.json",
        "sorted": out / f"{base}_sorted.json",
        "unfrozen": out / f"{base}_unfrozenparameters_{_percent(top_percent)}percent.yaml",
    }
    plain = {name: {"snr": float(info["snr"]), "type": str(info["type"])} for name, info in snr.items()}
    paths["snr"].write_text(json.dumps(plain, indent=4))
    by_type: dict[str, list[tuple[str, float]]] = {}
    for name, info in plain.items():
        by_type.setdefault(info["type"], []).append((name, info["snr"]))
    ordered = {t: dict(sorted(layers, key=lambda x: x[1], reverse=True)) for t, layers in by_type.items()}
    paths["sorted"].write_text(json.dumps(ordered, indent=4))
    paths["unfrozen"].write_text(unfrozen_yaml(select(plain, top_percent), embeddings))
    return paths


def read_snr(path: str | Path) -> dict[str, dict[str, Any]]:
    """An ``snr_results_*.json`` file (ours or the reference tool's)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not all(isinstance(v, dict) and {"snr", "type"} <= set(v) for v in data.values()):
        raise ValueError(f"{path}: not an SNR results file (expected {{layer: {{snr, type}}}})")
    return data


def read_patterns(path: str | Path) -> list[str]:
    """The ``unfrozen_parameters`` regexes of a YAML file (ours, the reference tool's, axolotl's)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    patterns = data.get("unfrozen_parameters") if isinstance(data, dict) else None
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{path}: expected 'unfrozen_parameters:' followed by a list of patterns")
    return patterns
