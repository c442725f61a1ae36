"""Recipes: YAML loading, selection of components, overrides and validation.

Precedence (DESIGN.md §2): component defaults < recipe < ``--plugins`` < ``--set key=value``.
The guide's recipes load as written: flat keys such as ``alignment: mlp`` or
``gradient_checkpointing: true`` select components (each component declares the keys it owns),
and the explicit form names a component and its options (``connector: {name: mlp}``).
Every problem is collected and raised together in one :class:`~vlmplug.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import deps
from ._version import __version__
from .errors import ConfigError, did_you_mean
from .keys import CORE_KEYS, PLANNED_COMPONENTS, PLANNED_KEYS, PLANNED_VALUES, TRAINING_ALIASES, TRAINING_KEYS
from .registry import FAMILY_TITLES, SINGLE_FAMILIES, ComponentSpec, Registry, coerce_value, validate_options

if TYPE_CHECKING:  # pragma: no cover
    from .manager import PluginHost

__all__ = ["Selection", "ResolvedRecipe", "load_recipe", "list_recipes", "resolve", "parse_set"]

#: recipe key -> family, for the one-only families (``alignment`` is the guide's name for connector)
SINGLE_KEYS = {"vision_encoder": "vision_encoder", "connector": "connector", "alignment": "connector",
               "fusion": "fusion", "peft": "peft"}
#: recipe key -> family, for the list families
LIST_KEYS = {"datasets": "dataset_format", "eval_datasets": "dataset_format",
             "optimizer_stack": "optimizer_stack", "evaluators": "evaluator"}
DEFAULTS = {"fusion": "interleaved"}
RECIPE_SUFFIXES = (".yaml", ".yml")


@dataclass
class Selection:
    """A selected component with its validated options (defaults filled in) and where it came from."""

    spec: ComponentSpec
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "recipe"

    @property
    def name(self) -> str:
        return self.spec.name

    def config(self) -> Any:
        return self.spec.make_config(self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.spec.name, "provider": self.spec.provider, "version": self.spec.version,
                **_plain(self.options)}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class ResolvedRecipe:
    """Everything a run needs, validated. Saved as ``resolved_recipe.yaml`` in the run directory."""

    name: str
    description: str
    source: str
    core: dict[str, Any]
    training: dict[str, Any]
    training_args: dict[str, Any]
    single: dict[str, Selection]
    datasets: list[Selection]
    eval_datasets: list[Selection]
    optimizer_stack: list[Selection]
    evaluators: list[Selection]
    notes: list[str] = field(default_factory=list)

    def components(self) -> dict[str, Any]:
        formats = list(dict.fromkeys(s.name for s in [*self.datasets, *self.eval_datasets]))
        return {
            **{fam: sel.name for fam, sel in self.single.items()},
            "dataset_format": formats,
            "optimizer_stack": [s.name for s in self.optimizer_stack],
            "evaluator": [s.name for s in self.evaluators],
        }

    def selections(self) -> list[Selection]:
        return [*self.single.values(), *self.datasets, *self.eval_datasets, *self.optimizer_stack,
                *self.evaluators]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "vlmplug_version": __version__,
            "components": self.components(),
            **{k: v for k, v in self.core.items() if k not in ("name", "description")},
            **{fam: sel.to_dict() for fam, sel in self.single.items()},
            "datasets": [s.to_dict() for s in self.datasets],
            "eval_datasets": [s.to_dict() for s in self.eval_datasets],
            "optimizer_stack": [s.to_dict() for s in self.optimizer_stack],
            "evaluators": [s.to_dict() for s in self.evaluators],
            "training": dict(self.training),
            "training_args": dict(self.training_args),
            "notes": list(self.notes),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False, allow_unicode=True)


# -- loading ---------------------------------------------------------------------------------------

def _shipped() -> dict[str, Any]:
    root = resources.files("vlmplug.recipes")
    return {p.name.rsplit(".", 1)[0]: p for p in root.iterdir() if p.name.endswith(RECIPE_SUFFIXES)}


def list_recipes() -> list[tuple[str, str]]:
    """``(name, description)`` for every recipe shipped inside the package."""
    out = []
    for name, path in sorted(_shipped().items()):
        data = yaml.safe_load(path.read_text()) or {}
        out.append((name, str(data.get("description", ""))))
    return out


def load_recipe(recipe: str | os.PathLike | None) -> tuple[dict[str, Any], str]:
    """Read a recipe file or a shipped recipe by name (``None`` = ``quickstart``)."""
    recipe = "quickstart" if recipe is None else str(recipe)
    path = Path(recipe)
    if path.is_file():
        text, source = path.read_text(), str(path)
    else:
        shipped = _shipped()
        key = recipe[:-5] if recipe.endswith(".yaml") else recipe
        if key not in shipped:
            names = sorted(shipped)
            raise ConfigError(
                f"no recipe file or shipped recipe named '{recipe}'{did_you_mean(key, names)}; "
                f"shipped recipes: {', '.join(names)} (see `vlmplug recipes`)"
            )
        text, source = shipped[key].read_text(), f"vlmplug:{key}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a mapping of keys to values, got {type(data).__name__}")
    return data, source


def parse_set(items: Iterable[str]) -> list[tuple[str, Any]]:
    """Parse ``--set key=value`` items; values are read as YAML (``1e-4``, ``true``, ``[a, b]``)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set learning_rate=1e-4")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        out.append((key.strip(), parsed))
    return out


# -- resolution ------------------------------------------------------------------------------------

class _Resolver:
    def __init__(self, registry: Registry, host: PluginHost | None):
        self.registry = registry
        self.host = host
        self.problems: list[str] = []
        self.notes: list[str] = []

    # names -----------------------------------------------------------------------------------
    def lookup(self, name: str, family: str | None, where: str) -> ComponentSpec | None:
        spec = self.registry.get(str(name))
        if spec is not None:
            if family and spec.family != family:
                self.problems.append(
                    f"{where}: '{name}' is a {FAMILY_TITLES[spec.family]}, not a {FAMILY_TITLES[family]}; "
                    f"{FAMILY_TITLES[family]}s: {', '.join(self.registry.names(family))}"
                )
                return None
            return spec
        self.problems.append(self.unknown_name(str(name), family, where))
        return None

    def unknown_name(self, name: str, family: str | None, where: str) -> str:
        planned = PLANNED_COMPONENTS.get(name)
        if planned and (family is None or planned == family):
            avail = ", ".join(self.registry.names(planned))
            return (f"{where}: '{name}' ({FAMILY_TITLES[planned]}) is on the vlmplug roadmap but not "
                    f"available in vlmplug {__version__}; available {FAMILY_TITLES[planned]}s: {avail}")
        pool = self.registry.names(family)
        hint = did_you_mean(name, pool)
        what = f"{FAMILY_TITLES[family]} " if family else "component "
        return (f"{where}: unknown {what}'{name}'{hint}; "
                f"choose from: {', '.join(pool)} (run `vlmplug list`)")

    # helpers --------------------------------------------------------------------------------
    def split_entry(self, value: Any, family: str, where: str, name_key: str = "name") -> tuple[str | None, dict]:
        if value is None:
            return None, {}
        if isinstance(value, str):
            return value, {}
        if isinstance(value, Mapping):
            opts = dict(value)
            name = opts.pop(name_key, None)
            return (str(name) if name is not None else None), opts
        self.problems.append(f"{where}: expected a component name or a mapping with '{name_key}', got {value!r}")
        return None, {}

    def detect_encoder(self, model: str, where: str) -> ComponentSpec | None:
        config = None
        cfg_path = Path(model) / "config.json"
        if cfg_path.is_file():
            try:
                config = json.loads(cfg_path.read_text())
            except (OSError, ValueError):
                config = None
        name = self.host.detect_vision_encoder(model=model, config=config) if self.host else None
        if name:
            self.notes.append(f"vision_encoder: '{model}' is read by '{name}' (auto-detected)")
            return self.lookup(name, "vision_encoder", where)
        lowered = model.lower()
        for planned in ("siglip", "eva-clip"):
            if planned.replace("-", "") in lowered.replace("-", "").replace("_", ""):
                self.problems.append(self.unknown_name(planned, "vision_encoder", f"{where} '{model}'"))
                return None
        self.problems.append(
            f"{where}: cannot tell which vision encoder reads '{model}'; name it explicitly, e.g. "
            f"vision_encoder: {{name: clip, model: {model}}} (encoders: "
            f"{', '.join(self.registry.names('vision_encoder'))})"
        )
        return None

    def finish(self, spec: ComponentSpec, options: dict, where: str, source: str) -> Selection:
        opts, problems = validate_options(spec, options, where)
        self.problems.extend(problems)
        full = dataclasses.asdict(spec.make_config(opts)) if not problems and spec.config else dict(opts)
        return Selection(spec=spec, options=full, source=source)


def resolve(
    data: Mapping[str, Any],
    registry: Registry,
    *,
    host: PluginHost | None = None,
    plugins: Iterable[str] = (),
    sets: Iterable[tuple[str, Any]] = (),
    source: str = "<recipe>",
    check_deps: bool = True,
) -> ResolvedRecipe:
    """Resolve a recipe mapping into a :class:`ResolvedRecipe`, or raise one ConfigError with all problems."""
    r = _Resolver(registry, host)
    data = dict(data)
    sets = list(sets)

    # --set on a key that selects components acts on the recipe itself (it still wins over the file)
    selecting = set(SINGLE_KEYS) | set(LIST_KEYS) | {"use_peft"} | {k for s in registry for k in s.activated_by}
    late_sets: list[tuple[str, Any]] = []
    for key, value in sets:
        if key in selecting:
            data[key] = value
        else:
            late_sets.append((key, value))

    core: dict[str, Any] = {k: d for k, (_, d, _) in CORE_KEYS.items()}
    training: dict[str, Any] = {}
    training_args: dict[str, Any] = {}
    single_raw: dict[str, tuple[str | None, dict, str]] = {}
    lists_raw: dict[str, list] = {}
    flat: dict[str, Any] = {}

    def set_core(key: str, value: Any, where: str) -> None:
        tp = CORE_KEYS[key][0]
        planned = PLANNED_VALUES.get((key, value)) if isinstance(value, (str, int, float, bool)) else None
        if planned:
            comp, fam = planned
            r.problems.append(f"{where}: {value} needs '{comp}' ({FAMILY_TITLES[fam]}), which is on the "
                              f"vlmplug roadmap but not available in vlmplug {__version__}")
            return
        try:
            core[key] = coerce_value(value, tp, where)
        except ValueError as e:
            r.problems.append(str(e))

    aliases: dict[str, tuple[Any, str]] = {}  # transformers-4 / guide spellings, translated below

    def set_training(key: str, value: Any, where: str) -> None:
        try:
            if key in TRAINING_ALIASES:
                aliases[key] = (coerce_value(value, TRAINING_ALIASES[key][0], where), where)
            else:
                training[key] = coerce_value(value, TRAINING_KEYS[key], where)
        except ValueError as e:
            r.problems.append(str(e))

    for key, value in data.items():
        where = key
        if key in CORE_KEYS:
            set_core(key, value, where)
        elif key in TRAINING_KEYS or key in TRAINING_ALIASES:
            set_training(key, value, where)
        elif key == "training_args":
            if isinstance(value, Mapping):
                training_args.update(value)
            else:
                r.problems.append("training_args: expected a mapping of TrainingArguments fields")
        elif key in SINGLE_KEYS:
            fam = SINGLE_KEYS[key]
            if fam in single_raw and single_raw[fam][2] != key:
                r.problems.append(f"{key}: the recipe already chooses the {FAMILY_TITLES[fam]} with "
                                  f"'{single_raw[fam][2]}'; keep one of them")
                continue
            name, opts = r.split_entry(value, fam, key)
            single_raw[fam] = (name, opts, key)
        elif key in LIST_KEYS:
            if value is None:
                value = []
            if not isinstance(value, list):
                value = [value]
            lists_raw[key] = list(value)
        else:
            flat[key] = value

    # -- one-only families from the recipe ---------------------------------------------------
    single: dict[str, tuple[ComponentSpec, dict, str]] = {}
    for fam, (name, opts, key) in single_raw.items():
        if name is None and fam == "vision_encoder" and "model" in opts:
            spec = r.detect_encoder(str(opts["model"]), key)
        elif name is None:
            r.problems.append(f"{key}: a mapping needs 'name' (one of {', '.join(registry.names(fam))})")
            continue
        elif fam == "vision_encoder" and registry.get(name) is None and ("/" in name or Path(name).exists()):
            spec = r.detect_encoder(name, key)
            opts = {"model": name, **opts}
        else:
            spec = r.lookup(name, fam, key)
        if spec is not None:
            single[fam] = (spec, opts, "recipe")

    # -- flat keys: activation, ownership, planned, unknown ------------------------------------
    activated: list[tuple[ComponentSpec, str]] = []
    owned: dict[str, Any] = {}
    for key, value in flat.items():
        consumed = False
        for spec in registry:
            if key in spec.activated_by:
                consumed = True
                if value == spec.activated_by[key] or (spec.activated_by[key] is True and value not in (False, None)):
                    activated.append((spec, key))
            if key in spec.flat_keys:
                consumed = True
                owned[key] = value
        if consumed:
            continue
        if key in PLANNED_KEYS and registry.get(PLANNED_KEYS[key][0]) is None:
            r.problems.append(_planned_key_problem(key))
            continue
        known = [*CORE_KEYS, *TRAINING_KEYS, *TRAINING_ALIASES, *SINGLE_KEYS, *LIST_KEYS, "training_args",
                 *{k for s in registry for k in (*s.activated_by, *s.flat_keys)}]
        r.problems.append(f"{key}: unknown recipe key{did_you_mean(key, known)} "
                          f"(recipe keys are listed in docs/recipes.md; component options in `vlmplug info NAME`)")

    lists: dict[str, list[tuple[ComponentSpec, dict, str]]] = {"optimizer_stack": [], "evaluators": []}
    for spec, key in activated:
        fam = spec.family
        if fam in SINGLE_FAMILIES:
            if fam in single and single[fam][0].name != spec.name:
                r.problems.append(f"{key}: selects {FAMILY_TITLES[fam]} '{spec.name}' but the recipe also chooses "
                                  f"'{single[fam][0].name}'; keep one")
            else:
                single.setdefault(fam, (spec, {}, "recipe"))
        elif fam == "optimizer_stack":
            lists["optimizer_stack"].append((spec, {}, "recipe"))
        elif fam == "evaluator":
            lists["evaluators"].append((spec, {}, "recipe"))

    for key in ("optimizer_stack", "evaluators"):
        fam = LIST_KEYS[key]
        for i, entry in enumerate(lists_raw.get(key, [])):
            name, opts = r.split_entry(entry, fam, f"{key}[{i}]")
            if name is None:
                continue
            spec = r.lookup(name, fam, f"{key}[{i}]")
            if spec is None:
                continue
            existing = [j for j, (s, _, _) in enumerate(lists[key]) if s.name == spec.name]
            if existing:  # a flat key activated it too: merge the options
                lists[key][existing[0]] = (spec, {**lists[key][existing[0]][1], **opts}, "recipe")
            else:
                lists[key].append((spec, opts, "recipe"))

    # -- --plugins ----------------------------------------------------------------------------
    from_cli: dict[str, list[str]] = {}
    for name in plugins:
        spec = registry.get(name)
        if spec is None:
            r.problems.append(r.unknown_name(name, None, "--plugins"))
            continue
        fam = spec.family
        if fam in SINGLE_FAMILIES:
            from_cli.setdefault(fam, []).append(spec.name)
            if len(from_cli[fam]) > 1:
                continue
            before = single.get(fam)
            if before is not None and before[0].name != spec.name:
                r.notes.append(f"{fam}: {before[0].name} -> {spec.name} (from --plugins)")
            if before is None or before[0].name != spec.name:
                single[fam] = (spec, {}, "--plugins")
        elif fam == "dataset_format":
            lists_raw.setdefault("datasets", []).append({"format": spec.name})
        else:
            key = "optimizer_stack" if fam == "optimizer_stack" else "evaluators"
            if all(s.name != spec.name for s, _, _ in lists[key]):
                lists[key].append((spec, {}, "--plugins"))
    for fam, names in from_cli.items():
        if len(names) > 1:
            r.problems.append(f"--plugins: {FAMILY_TITLES[fam]}: choose one of {', '.join(names)}")

    # -- a flat key owned by one component of an empty one-only family selects it (lora_r -> lora)
    for key in owned:
        owners = [s for s in registry if key in s.flat_keys]
        fams = {s.family for s in owners}
        if len(owners) == 1 and fams <= SINGLE_FAMILIES and owners[0].family not in single:
            single[owners[0].family] = (owners[0], {}, "recipe")
            r.notes.append(f"{owners[0].family}: '{key}' is an option of '{owners[0].name}': selecting it")

    # -- defaults -----------------------------------------------------------------------------
    use_peft = core.get("use_peft")
    if "peft" not in single:
        default_peft = "lora" if use_peft else "full"
        spec = registry.get(default_peft)
        if spec is not None:
            single["peft"] = (spec, {}, "default")
            if use_peft:
                r.notes.append("peft: use_peft is true and no method is named: using 'lora'")
    elif use_peft is False and single["peft"][0].name != "full":
        r.problems.append(f"use_peft: false contradicts peft method '{single['peft'][0].name}'; drop one")
    elif use_peft and single["peft"][0].name == "full":
        r.problems.append("use_peft: true contradicts peft method 'full'; choose an adapter method (lora)")
    for fam, name in DEFAULTS.items():
        if fam not in single and registry.get(name) is not None:
            single[fam] = (registry.get(name), {}, "default")
    for fam in ("vision_encoder", "connector"):
        if fam not in single and not any(fam in p for p in r.problems):
            r.problems.append(f"the recipe chooses no {FAMILY_TITLES[fam]}: add `{fam}: NAME` "
                              f"({', '.join(registry.names(fam))})")
    if not core.get("model"):
        r.problems.append("model: the recipe names no LLM; set `model: HUB_ID_OR_PATH` (or 'tiny-llama')")

    # -- datasets -----------------------------------------------------------------------------
    ds_lists: dict[str, list[tuple[ComponentSpec, dict, str]]] = {"datasets": [], "eval_datasets": []}
    for key in ("datasets", "eval_datasets"):
        for i, entry in enumerate(lists_raw.get(key, [])):
            where = f"{key}[{i}]"
            if isinstance(entry, str):
                entry = {"format": entry} if registry.get(entry) else {"path": entry}
            if not isinstance(entry, Mapping):
                r.problems.append(f"{where}: expected a format name, a path, or a mapping with 'format'/'path'")
                continue
            opts = dict(entry)
            name = opts.pop("format", None)
            if name is None:
                if "path" not in opts:
                    r.problems.append(f"{where}: give 'path' (and optionally 'format': "
                                      f"{', '.join(registry.names('dataset_format'))})")
                    continue
                name = _detect_format(r, str(opts["path"]), where)
                if name is None:
                    continue
            spec = r.lookup(str(name), "dataset_format", where)
            if spec is not None:
                ds_lists[key].append((spec, opts, "recipe"))
    if not ds_lists["datasets"]:
        r.problems.append("datasets: the recipe has no training data; add `datasets: [{path: train.jsonl}]`")

    # -- flat keys owned by selected components -------------------------------------------------
    all_sel: list[tuple[ComponentSpec, dict, str]] = [
        *single.values(), *lists["optimizer_stack"], *lists["evaluators"], *ds_lists["datasets"],
        *ds_lists["eval_datasets"],
    ]
    for key, value in owned.items():
        owners = [(s, o) for s, o, _ in all_sel if key in s.flat_keys]
        if not owners:
            if value in (False, None) and any(key in s.activated_by for s in registry):
                continue  # e.g. `bf16: false`: the component that key would select stays off
            candidates = [s.name for s in registry if key in s.flat_keys]
            r.problems.append(f"{key}: belongs to {' / '.join(candidates)}, which the recipe does not select "
                              f"(add --plugins {candidates[0]})")
            continue
        for spec, opts in owners:
            if key in opts and opts[key] != value:
                r.problems.append(f"{key}: set to {value!r} at top level and {opts[key]!r} under "
                                  f"{FAMILY_TITLES[spec.family]} '{spec.name}'; keep one")
            opts.setdefault(key, value)

    # -- --set (highest precedence) -----------------------------------------------------------
    for key, value in late_sets:
        where = f"--set {key}"
        if key in CORE_KEYS:
            set_core(key, value, where)
            continue
        if key in TRAINING_KEYS or key in TRAINING_ALIASES:
            set_training(key, value, where)
            continue
        head, _, rest = key.partition(".")
        if rest and head in ("datasets", "eval_datasets"):
            idx, _, opt = rest.partition(".")
            if not idx.isdigit() or not opt or int(idx) >= len(ds_lists[head]):
                r.problems.append(f"{where}: expected {head}.INDEX.OPTION with INDEX < {len(ds_lists[head])}")
            else:
                ds_lists[head][int(idx)][1][opt] = value
            continue
        if rest and head == "training_args":
            training_args[rest] = value
            continue
        if rest:
            targets = [o for s, o, _ in all_sel if head in (s.name, s.family)]
            if not targets:
                r.problems.append(f"{where}: '{head}' is not a selected component or family "
                                  f"(selected: {', '.join(dict.fromkeys(s.name for s, _, _ in all_sel))})")
            for o in targets:
                o[rest] = value
            continue
        owners = [o for s, o, _ in all_sel if key in s.flat_keys]
        if owners:
            for o in owners:
                o[key] = value
            continue
        if key in PLANNED_KEYS and registry.get(PLANNED_KEYS[key][0]) is None:
            r.problems.append(_planned_key_problem(key))
            continue
        known = [*CORE_KEYS, *TRAINING_KEYS, *TRAINING_ALIASES, *{k for s, _, _ in all_sel for k in s.flat_keys}]
        r.problems.append(f"{where}: unknown key{did_you_mean(key, known)}; use a recipe key, "
                          f"COMPONENT.OPTION or FAMILY.OPTION (see `vlmplug info NAME`)")

    # -- validate options -----------------------------------------------------------------------
    resolved_single = {fam: r.finish(spec, opts, fam, src) for fam, (spec, opts, src) in single.items()}
    resolved_single = {fam: resolved_single[fam] for fam in ("vision_encoder", "connector", "fusion", "peft")
                       if fam in resolved_single}
    datasets = [r.finish(s, o, f"datasets[{i}]", src) for i, (s, o, src) in enumerate(ds_lists["datasets"])]
    eval_datasets = [r.finish(s, o, f"eval_datasets[{i}]", src)
                     for i, (s, o, src) in enumerate(ds_lists["eval_datasets"])]
    stack = [r.finish(s, o, f"optimizer_stack[{s.name}]", src) for s, o, src in lists["optimizer_stack"]]
    evaluators = [r.finish(s, o, f"evaluators[{s.name}]", src) for s, o, src in lists["evaluators"]]

    # -- requires / conflicts / extras ----------------------------------------------------------
    chosen = [*resolved_single.values(), *datasets, *eval_datasets, *stack, *evaluators]
    names = {s.name for s in chosen}
    for sel in chosen:
        for req in sel.spec.requires:
            if req not in names:
                r.problems.append(f"{sel.name} requires '{req}'; add --plugins {req}")
        for con in sel.spec.conflicts:
            if con in names:
                r.problems.append(f"{sel.name} conflicts with '{con}'; remove one of them")
    if check_deps:
        seen: dict[str, ComponentSpec] = {s.name: s.spec for s in chosen}
        r.problems.extend(deps.check(seen.values()))

    _translate_aliases(aliases, training, r)
    if r.problems:
        raise ConfigError(list(dict.fromkeys(r.problems)))
    return ResolvedRecipe(
        name=str(core["name"]), description=str(core["description"]), source=source, core=core,
        training=training, training_args=training_args, single=resolved_single, datasets=datasets,
        eval_datasets=eval_datasets, optimizer_stack=stack, evaluators=evaluators, notes=r.notes,
    )


def _translate_aliases(aliases: dict[str, tuple[Any, str]], training: dict[str, Any], r: _Resolver) -> None:
    """``warmup_ratio`` -> ``warmup_steps`` (a float below 1 is a fraction in transformers 5);
    ``group_by_length: true`` -> ``train_sampling_strategy: group_by_length``."""
    if "warmup_ratio" in aliases:
        value, where = aliases["warmup_ratio"]
        if not 0 <= value < 1:
            r.problems.append(f"{where}: warmup_ratio must be in [0, 1), got {value}")
        elif "warmup_steps" in training:
            r.problems.append(f"{where}: set warmup_ratio or warmup_steps, not both")
        else:
            training["warmup_steps"] = value
            r.notes.append(f"warmup_ratio {value} -> warmup_steps {value} (transformers 5 reads a float "
                           f"below 1 as a fraction of the total steps)")
    if aliases.get("group_by_length", (False,))[0]:
        training["train_sampling_strategy"] = "group_by_length"


def _planned_key_problem(key: str) -> str:
    comp, fam = PLANNED_KEYS[key]
    return (f"{key}: configures '{comp}' ({FAMILY_TITLES[fam]}), which is on the vlmplug roadmap but not "
            f"available in vlmplug {__version__}; remove the key or install a plugin that provides '{comp}'")


def _detect_format(r: _Resolver, path: str, where: str) -> str | None:
    sample = None
    p = Path(path)
    if p.is_file() and p.suffix in (".json", ".jsonl"):
        try:
            with p.open(encoding="utf-8") as fh:
                if p.suffix == ".jsonl":
                    first = next((ln for ln in fh if ln.strip()), "")
                    sample = json.loads(first) if first else None
                else:
                    data = json.load(fh)
                    sample = data[0] if isinstance(data, list) and data else None
        except (OSError, ValueError) as e:
            r.problems.append(f"{where}: cannot read {path}: {e}")
            return None
    elif not p.exists():
        r.problems.append(f"{where}: {path} does not exist (paths are relative to where you run vlmplug)")
        return None
    name = r.host.detect_dataset_format(path=path, sample=sample) if r.host else None
    if name is None:
        r.problems.append(f"{where}: no dataset format recognises {path}; name one with 'format' "
                          f"({', '.join(r.registry.names('dataset_format'))})")
        return None
    r.notes.append(f"{where}: {path} read as '{name}' (auto-detected)")
    return name
