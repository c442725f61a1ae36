"""``vlmplug export``: write a trained model in another format.

``merged`` is vlmplug's own format with adapters folded into the LLM (``vlmplug.load`` reads it,
and ``llm/`` is a plain transformers model). Other formats come from plugins through the
``export_model`` hook (the built-in ``llava-hf`` writes a folder that plain transformers loads as
``LlavaForConditionalGeneration``); ``model_formats`` lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["export_model", "available_formats"]


def available_formats(host: Any) -> list[str]:
    names = ["merged"]
    for found in host.model_formats():
        names += [n for n in found if n not in names]
    return names


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty directory; choose a new one", header="export")


def export_model(source: str | Path, fmt: str, out: str | Path, *, host: Any) -> Path:
    """Load ``source`` (a run directory or its ``model/``) and write it to ``out`` as ``fmt``."""
    formats = available_formats(host)
    if fmt not in formats:
        from .errors import did_you_mean

        raise ConfigError(
            f"--format {fmt}: unknown format{did_you_mean(fmt, formats)}; available: {', '.join(formats)}",
            header="export",
        )
    out = Path(out)
    _check_out(out)
    from .train.model_io import load
    from .train.trainer import save_atomically

    vlm = load(source, host=host)
    if fmt == "merged":
        peft = vlm.peft_method
        vlm = peft.merge(vlm) if peft is not None else vlm
        vlm.peft_method = None
        vlm.manifest = {
            **vlm.manifest,
            "components": {k: v for k, v in vlm.manifest["components"].items() if k != "peft"},
            "merged_from": vlm.manifest["components"].get("peft", {}).get("name"),
        }
        vlm.manifest.pop("parts", None)
        vlm.manifest.pop("llm_files", None)
        save_atomically(out, vlm.save_pretrained)
        return out

    def write(tmp: Path) -> None:
        if not host.export_model(model=vlm, format=fmt, out_dir=str(tmp)):
            raise ConfigError(f"--format {fmt}: no plugin wrote the model", header="export")

    save_atomically(out, write)
    return out
