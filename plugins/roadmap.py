"""Roadmap placeholders: the guide's components and keys that this release does not provide yet.

Each is registered as a ``planned`` spec, so a guide recipe naming one (``alignment:
perceiver_resampler``, ``load_in_4bit: true``, ``attn_implementation: flash_attention_2``) gets one
clear error naming the missing component instead of "unknown key". A real component of the same name
-- a later release, or an installed plugin -- replaces the placeholder. Nothing here is listed by
``vlmplug list``.
"""

from __future__ import annotations

from typing import Any

from vlmplug import ComponentSpec, hookimpl


def _planned(
    name: str,
    *,
    aliases: tuple[str, ...] = (),
    flat_keys: tuple[str, ...] = (),
    activated_by: dict[str, Any] | None = None,
) -> ComponentSpec:
    return ComponentSpec(
        name=name,
        summary="(on the roadmap)",
        factory="",
        aliases=aliases,
        flat_keys=flat_keys,
        activated_by=activated_by or {},
        planned=True,
    )


PLANNED: dict[str, tuple[ComponentSpec, ...]] = {
    "vision_encoder": (),
    "connector": (),
    "fusion": (),
    "peft": (),
    "dataset_format": (),
    "optimizer_stack": (_planned("fsdp", flat_keys=("fsdp", "fsdp_config")),),
    "evaluator": (),
}


def _register(family: str, register: Any) -> None:
    for spec in PLANNED[family]:
        register(spec)


@hookimpl(trylast=True)
def register_vision_encoders(register: Any) -> None:
    _register("vision_encoder", register)


@hookimpl(trylast=True)
def register_connectors(register: Any) -> None:
    _register("connector", register)


@hookimpl(trylast=True)
def register_fusions(register: Any) -> None:
    _register("fusion", register)


@hookimpl(trylast=True)
def register_peft_methods(register: Any) -> None:
    _register("peft", register)


@hookimpl(trylast=True)
def register_dataset_formats(register: Any) -> None:
    _register("dataset_format", register)


@hookimpl(trylast=True)
def register_optimizer_stack(register: Any) -> None:
    _register("optimizer_stack", register)


@hookimpl(trylast=True)
def register_evaluators(register: Any) -> None:
    _register("evaluator", register)
