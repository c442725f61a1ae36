"""Loading a saved model back, through the same plugins that built it (``vlmplug.load``).

A saved model directory (a run's ``model/``; see :mod:`vlmplug.train.vlm` for the layout) records
in ``vlmplug_model.json`` every component with its options and provider; loading rebuilds each
component from its factory, restores the saved weights (vision tower when it was saved, connector,
and the LLM through the PEFT method's ``load_llm``), and returns the model in eval mode with
identical logits and generations. Weights are read with safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from vlmplug.errors import ConfigError

from .assemble import DTYPES, BuildContext, assemble_model, build_component, llm_dtype
from .hardware import Hardware
from .llm import load_llm, reload_llm
from .vlm import MANIFEST, unique_tensors

__all__ = ["load", "find_model_dir", "read_manifest", "selections_from_manifest"]


def find_model_dir(path: str | Path) -> Path:
    """``path`` itself when it holds a saved model, or ``path/model`` for a run directory."""
    p = Path(path)
    for candidate in (p, p / "model"):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise ConfigError(
        f"{path}: no saved vlmplug model here (no {MANIFEST}); give a run directory or its model/ folder", header="load"
    )


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """The manifest, with ``./``-relative paths (core ``model``, component options) made absolute
    against ``model_dir``, so a model directory can hold its own sub-models and still move."""
    try:
        data = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"{model_dir / MANIFEST}: not valid JSON ({e})", header="load") from None
    if not isinstance(data, dict) or "components" not in data or "core" not in data:
        raise ConfigError(
            f"{model_dir / MANIFEST}: not a vlmplug model manifest (written by an older vlmplug?)", header="load"
        )

    def resolve(value: Any) -> Any:
        return str(model_dir.resolve() / value[2:]) if isinstance(value, str) and value.startswith("./") else value

    data["core"] = {k: resolve(v) for k, v in data["core"].items()}
    data["components"] = {
        fam: ({k: resolve(v) for k, v in entry.items()} if isinstance(entry, dict) else entry)
        for fam, entry in data["components"].items()
    }
    return data


def selections_from_manifest(components: dict[str, Any], registry: Any, where: str) -> dict[str, Any]:
    """Rebuild :class:`~vlmplug.recipe.Selection` objects from a manifest's component entries."""
    from vlmplug.recipe import Selection
    from vlmplug.registry import validate_options

    out: dict[str, Any] = {}
    problems = []
    for fam, entry in components.items():
        if entry is None:
            continue
        entry = dict(entry)
        name = entry.pop("name")
        provider = entry.pop("provider", "?")
        entry.pop("version", None)
        entry.pop("label", None)
        spec = registry.get(name)
        if spec is None:
            problems.append(
                f"{where} needs {fam} '{name}' (from {provider}), which no installed plugin provides; "
                f"install it (see `vlmplug list`)"
            )
            continue
        options, errs = validate_options(spec, entry, f"{where}: {fam}")
        problems += errs
        out[fam] = Selection(spec=spec, options=options, source="saved model")
    if problems:
        raise ConfigError(problems, header="the saved model cannot be rebuilt")
    return out


def _load_state(module: Any, path: Path) -> None:
    """Restore weights saved with ``unique_tensors`` (tied duplicates were dropped, so compare with the
    module's de-duplicated names)."""
    state = load_file(str(path))
    expected = set(unique_tensors(module.state_dict()))
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ConfigError(
            f"{path}: weights do not match the rebuilt module (missing {missing[:5]}, unexpected {unexpected[:5]})",
            header="load",
        )
    module.load_state_dict(state, strict=False)


def _same_attention(llm: Any, attn: str) -> None:
    """The attention kernel the model trained with (a saved config does not carry it)."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    if attn != "auto" and hasattr(base, "set_attn_implementation"):
        base.set_attn_implementation(attn)


def load(
    path: str | Path, *, host: Any = None, device: str | None = None, llm_load_kwargs: dict[str, Any] | None = None
) -> Any:
    """Load a saved vlmplug model (a run directory or its ``model/``) for inference.

    Returns the :class:`~vlmplug.train.vlm.VisionLanguageModel` in eval mode, with ``tokenizer``,
    ``tokens_per_image`` and ``manifest`` attached. ``llm_load_kwargs`` (e.g. a quantization config, for
    a next stage under QLoRA): the LLM is merged with its adapters and loaded again with them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vlmplug.manager import load as load_plugins

    model_dir = find_model_dir(path)
    manifest = read_manifest(model_dir)
    host = host or load_plugins()
    single = selections_from_manifest(manifest["components"], host.registry, str(model_dir))
    core = dict(manifest["core"])
    ctx = BuildContext(
        recipe=None,
        torch_dtype=DTYPES[core["dtype"]],
        hub_kwargs={"trust_remote_code": bool(core.get("trust_remote_code"))},
        on_bad_sample="error",
        hardware=Hardware.probe(),
        max_num_frames=int(core.get("max_num_frames") or 8),
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "tokenizer")
    parts = manifest.get("parts", {})
    tower = build_component(single["vision_encoder"], ctx)
    if "vision_encoder" in parts:
        _load_state(tower, model_dir / parts["vision_encoder"])
    files = manifest.get("llm_files", {"llm": "llm"})
    peft = build_component(single["peft"], ctx) if "peft" in single else None

    def load_base() -> Any:
        return load_llm(
            core["model"],
            tokenizer,
            dtype=llm_dtype(core),
            overrides=dict(core.get("model_config") or {}),
            load_kwargs=peft.model_load_kwargs() if peft is not None else {},
            hub_kwargs=ctx.hub_kwargs,
            attn_implementation=core["attn_implementation"],
            image_token=core["image_token"],
        )[0]

    if peft is not None:
        llm = peft.load_llm(str(model_dir), files, load_base)
    else:
        llm = AutoModelForCausalLM.from_pretrained(model_dir / files["llm"], dtype=llm_dtype(core), **ctx.hub_kwargs)
    vlm = _assemble_saved(model_dir, single, core, ctx, tokenizer, tower, llm)
    vlm.peft_method = peft
    if llm_load_kwargs:
        if peft is not None:
            vlm = peft.merge(vlm)
        llm = reload_llm(vlm.llm, llm_load_kwargs, llm_dtype(core))
        vlm = _assemble_saved(model_dir, single, core, ctx, tokenizer, tower, llm)
        vlm.peft_method = None
    vlm.manifest = manifest
    if device is not None:
        vlm.to(device)
    return vlm.eval()


def _assemble_saved(
    model_dir: Path, single: dict[str, Any], core: dict[str, Any], ctx: Any, tokenizer: Any, tower: Any, llm: Any
) -> Any:
    """The model around ``llm`` and ``tower``, with the saved connector and fusion weights."""
    parts = read_manifest(model_dir).get("parts", {})
    _same_attention(llm, core.get("attn_implementation", "auto"))
    fusion = build_component(single["fusion"], ctx)
    vlm = assemble_model(
        single=single, fusion=fusion, tokenizer=tokenizer, core=core, ctx=ctx, load_kwargs={}, llm=llm, tower=tower
    )
    _load_state(vlm.connector, model_dir / parts.get("connector", "connector.safetensors"))
    if "fusion" in parts:
        _load_state(vlm.fusion_modules, model_dir / parts["fusion"])
    return vlm
