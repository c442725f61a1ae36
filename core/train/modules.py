"""The per-module spec on a built model (see :mod:`vlmplug.modules`): freezing, parameter groups with
per-part learning rates, and the trainable-parameter table.

A parameter belongs to the first part that holds it, in the order fusion, connector, vision encoder,
LLM: a fusion's new modules may sit inside the LLM's layers (modality experts), and they are the
fusion's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from vlmplug.modules import PARTS, ModulePlan

__all__ = ["part_module", "parameter_parts", "apply_module_plan", "parameter_groups", "build_optimizer", "module_table"]

#: Which part a parameter belongs to when several hold it (see the module docstring).
OWNERSHIP = ("fusion", "connector", "vision_encoder", "llm")


def part_module(vlm: Any, part: str) -> nn.Module | None:
    """The module of a part (``fusion``: the modules a fusion adds, or ``None``)."""
    return vlm.fusion_modules if part == "fusion" else getattr(vlm, part)


def parameter_parts(vlm: Any) -> dict[int, str]:
    """``id(parameter) -> part`` for every parameter of the model."""
    owner: dict[int, str] = {}
    for part in OWNERSHIP:
        module = part_module(vlm, part)
        for p in module.parameters() if module is not None else ():
            owner.setdefault(id(p), part)
    return owner


def plans_of(vlm: Any) -> dict[str, ModulePlan]:
    return dict(getattr(vlm, "module_plan", None) or {})


def apply_module_plan(vlm: Any, plans: Mapping[str, ModulePlan]) -> Any:
    """Freeze (``frozen``) or train in full (``full``) the parts the spec names, after the PEFT method
    ran; an ``llm`` given a PEFT method was that method's to set up. The plan is kept on the model
    (``vlm.module_plan``) for the optimizer's parameter groups."""
    owner = parameter_parts(vlm)
    for part in PARTS:
        plan = plans.get(part)
        if plan is None or plan.train not in ("frozen", "full") or (part == "llm" and plan.train == "full"):
            continue
        module = part_module(vlm, part)
        if module is None:  # a fusion that adds no modules (interleaved): nothing to freeze or train
            continue
        for p in module.parameters():
            if owner[id(p)] == part:
                p.requires_grad_(plan.train == "full")
    vlm.module_plan = dict(plans)
    return vlm


def _decay_names(model: nn.Module) -> set[str]:
    """Parameters that take weight decay, as transformers' Trainer decides (no biases, no norms)."""
    from transformers.trainer_pt_utils import get_parameter_names

    forbidden = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    return set(get_parameter_names(model, [nn.LayerNorm], forbidden))


def parameter_groups(model: Any, args: Any, owner: Any = None) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups: per part, with and without weight decay (the
    Trainer's split), each with the part's ``learning_rate`` / ``weight_decay`` from the model's
    ``module_plan`` or the run's ``args``. Empty groups are left out. ``owner``: the unwrapped
    vision-language model when ``model`` is a wrapper around it (DDP, FSDP)."""
    vlm = owner if owner is not None else model
    plans = plans_of(vlm)
    parts = parameter_parts(vlm)
    decay = _decay_names(model)
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = parts.get(id(p), "llm")
        plan = plans.get(part, ModulePlan())
        key = (part, name in decay)
        if key not in groups:
            wd = plan.weight_decay if plan.weight_decay is not None else args.weight_decay
            groups[key] = {
                "params": [],
                "lr": plan.learning_rate if plan.learning_rate is not None else args.learning_rate,
                "weight_decay": wd if key[1] else 0.0,
                "part": part,
            }
        groups[key]["params"].append(p)
    return list(groups.values())


def has_own_rates(model: Any) -> bool:
    """Whether the spec gives any part its own learning rate or weight decay."""
    return any(p.learning_rate is not None or p.weight_decay is not None for p in plans_of(model).values())


def build_optimizer(model: Any, args: Any, owner: Any = None) -> Any:
    """The optimizer ``args.optim`` names (the Trainer's choice of class and arguments), over
    :func:`parameter_groups`."""
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("params", "model")}
    groups = [{k: v for k, v in g.items() if k != "part"} for g in parameter_groups(model, args, owner)]
    return cls(groups, **kwargs)


def module_table(vlm: Any, learning_rate: float | None, method: str | None) -> list[dict[str, Any]]:
    """One row per part: parameters, trainable parameters, how it trains (``frozen``, ``full``,
    ``partial``, or the PEFT ``method`` for the LLM) and its learning rate."""
    owner = parameter_parts(vlm)
    plans = plans_of(vlm)
    rows = []
    for part in ("vision_encoder", "connector", "llm", "fusion"):
        module = part_module(vlm, part)
        if module is None:
            continue
        params = [p for p in module.parameters() if owner[id(p)] == part]
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        plan = plans.get(part, ModulePlan())
        how = "frozen" if trainable == 0 else "full" if trainable == total else "partial"
        if part == "llm" and trainable and method:
            how = method
        lr = plan.learning_rate if plan.learning_rate is not None else learning_rate
        rows.append(
            {
                "part": part,
                "parameters": total,
                "trainable": trainable,
                "train": how,
                "learning_rate": lr if trainable else None,
                "set_by": "modules" if part in plans else "method",
            }
        )
    return rows
