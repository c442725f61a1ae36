"""Recipes: YAML loading, selection of components, overrides and validation.

Precedence (DESIGN.md §2): component defaults < recipe < ``--plugins`` < ``--set key=value``.
The guide's recipes load as written: flat keys such as ``alignment: mlp`` or
``gradient_checkpointing: true`` select components (each component declares the keys it owns),
and the explicit form names a component and its options (``connector: {name: mlp}``).

:func:`resolve` runs named stages over a :class:`Draft`; each stage appends to one list of
problems, and every problem is raised together in one :class:`~vlmplug.errors.ConfigError`.
The core names no concrete component: defaults, contradictions and roadmap placeholders are
declared by the component specs (``default_when``, ``contradicts``, ``planned``).
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
from .errors import ConfigError, did_you_mean, read_text
from .keys import CORE_KEYS, TRAINING_ALIASES, TRAINING_KEYS, check_bounds
from .modules import llm_method, parse_modules
from .registry import FAMILIES, FAMILY_TITLES, SINGLE_FAMILIES, ComponentSpec, Registry, coerce_value, validate_options

if TYPE_CHECKING:  # pragma: no cover
    from .manager import PluginHost

__all__ = ["Selection", "ResolvedRecipe", "load_recipe", "list_recipes", "resolve", "parse_set", "read_text"]

#: recipe key -> family, for the one-only families (``alignment`` is the guide's name for connector)
SINGLE_KEYS = {
    "vision_encoder": "vision_encoder",
    "connector": "connector",
    "alignment": "connector",
    "fusion": "fusion",
    "peft": "peft",
}
#: recipe key -> family, for the list families
LIST_KEYS = {
    "datasets": "dataset_format",
    "eval_datasets": "dataset_format",
    "optimizer_stack": "optimizer_stack",
    "evaluators": "evaluator",
}
RECIPE_SUFFIXES = (".yaml", ".yml")
ROADMAP = "is on the vlmplug roadmap but not available in vlmplug"


@dataclass
class Selection:
    """A selected component with its validated options (defaults filled in) and where it came from.

    ``label`` names a dataset in reports (``eval_datasets: [{name: blank, format: shapes}]``)."""

    spec: ComponentSpec
    options: dict[str, Any] = field(default_factory=dict)
    source: str = "recipe"
    label: str | None = None
    #: A training dataset's share of the mixture (``datasets: [{path: ..., weight: 2}]``).
    weight: float = 1.0

    @property
    def name(self) -> str:
        return self.spec.name

    def config(self) -> Any:
        return self.spec.make_config(self.options)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.spec.name, "provider": self.spec.provider, "version": self.spec.version}
        if self.label is not None:
            out["label"] = self.label
        if self.weight != 1.0:
            out["weight"] = self.weight
        return {**out, **_plain(self.options)}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class ResolvedRecipe:
    """Everything a run needs, validated. Saved as ``resolved_recipe.yaml`` in the run directory;
    ``runtime`` holds what the run decided (output directory, full TrainingArguments, choices)."""

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
    runtime: dict[str, Any] = field(default_factory=dict)
    #: ``{"format", "model"}`` when ``model:`` names a whole pretrained vision-language model (a saved
    #: vlmplug model, or a foreign checkpoint a plugin imports): the run starts from its weights.
    pretrained: dict[str, Any] | None = None

    def components(self) -> dict[str, Any]:
        formats = list(dict.fromkeys(s.name for s in [*self.datasets, *self.eval_datasets]))
        return {
            **{fam: sel.name for fam, sel in self.single.items()},
            "dataset_format": formats,
            "optimizer_stack": [s.name for s in self.optimizer_stack],
            "evaluator": [s.name for s in self.evaluators],
        }

    def selections(self) -> list[Selection]:
        return [*self.single.values(), *self.datasets, *self.eval_datasets, *self.optimizer_stack, *self.evaluators]

    def to_dict(self) -> dict[str, Any]:
        out = {
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
        if self.pretrained:
            out["pretrained"] = dict(self.pretrained)
        if self.runtime:
            out["runtime"] = dict(self.runtime)
        return out

    def to_yaml(self) -> str:
        """The one serialisation of a resolved recipe (``vlmplug config``, the run directory)."""
        plain = json.loads(json.dumps(_plain(self.to_dict()), default=str))
        return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)


# -- loading ---------------------------------------------------------------------------------------


def _shipped() -> dict[str, Any]:
    root = resources.files("vlmplug.recipes")
    return {p.name.rsplit(".", 1)[0]: p for p in root.iterdir() if p.name.endswith(RECIPE_SUFFIXES)}


def list_recipes() -> list[tuple[str, str]]:
    """``(name, description)`` for every recipe shipped inside the package."""
    out = []
    for name, path in sorted(_shipped().items()):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        out.append((name, str(data.get("description", ""))))
    return out


def load_recipe(recipe: str | os.PathLike | None) -> tuple[dict[str, Any], str]:
    """Read a recipe file or a shipped recipe by name (``None`` = ``quickstart``)."""
    recipe = "quickstart" if recipe is None else str(recipe)
    path = Path(recipe)
    if path.is_file():
        text, source = read_text(path, "recipe"), str(path)
    else:
        shipped = _shipped()
        key = recipe[:-5] if recipe.endswith(".yaml") else recipe
        if key not in shipped:
            names = sorted(shipped)
            raise ConfigError(
                f"no recipe file or shipped recipe named '{recipe}'{did_you_mean(key, names)}; "
                f"shipped recipes: {', '.join(names)} (see `vlmplug recipes`)"
            )
        text, source = shipped[key].read_text(encoding="utf-8"), f"vlmplug:{key}"
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


# -- resolution: the draft and its stages ------------------------------------------------------------


@dataclass
class Entry:
    """A component the recipe chose, before its options are validated."""

    spec: ComponentSpec
    options: dict[str, Any]
    source: str = "recipe"
    label: str | None = None
    weight: float = 1.0


@dataclass
class Draft:
    """The recipe while it resolves: raw values first, then the components chosen stage by stage."""

    core: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    training_args: dict[str, Any] = field(default_factory=dict)
    aliases: dict[str, tuple[Any, str]] = field(default_factory=dict)  # guide spellings of training keys
    single_raw: dict[str, tuple[str | None, dict[str, Any], str]] = field(default_factory=dict)
    lists_raw: dict[str, list[Any]] = field(default_factory=dict)
    flat: dict[str, Any] = field(default_factory=dict)  # top-level keys that belong to components
    explicit: set[str] = field(default_factory=set)  # core keys the recipe (or --set) wrote
    late_sets: list[tuple[str, Any]] = field(default_factory=list)
    pretrained: dict[str, Any] | None = None
    single: dict[str, Entry] = field(default_factory=dict)
    lists: dict[str, list[Entry]] = field(default_factory=lambda: {k: [] for k in LIST_KEYS})
    activated: list[tuple[ComponentSpec, str]] = field(default_factory=list)
    owned: dict[str, Any] = field(default_factory=dict)
    from_cli: dict[str, list[str]] = field(default_factory=dict)

    def chosen(self) -> list[Entry]:
        return [*self.single.values(), *(e for k in LIST_KEYS for e in self.lists[k])]


class _Resolver:
    """Problems and notes of one resolution, and the lookups every stage shares."""

    def __init__(self, registry: Registry, host: PluginHost | None):
        self.registry = registry
        self.host = host
        self.problems: list[str] = []
        self.notes: list[str] = []

    # names ------------------------------------------------------------------------------------
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
        planned = self.registry.planned(name)
        if planned is not None and (family is None or planned.family == family):
            title = FAMILY_TITLES[planned.family]
            avail = ", ".join(self.registry.names(planned.family))
            return f"{where}: '{name}' ({title}) {ROADMAP} {__version__}; available {title}s: {avail}"
        pool = self.registry.names(family)
        what = f"{FAMILY_TITLES[family]} " if family else "component "
        return (
            f"{where}: unknown {what}'{name}'{did_you_mean(name, pool)}; "
            f"choose from: {', '.join(pool)} (run `vlmplug list`)"
        )

    def planned_key(self, key: str, spec: ComponentSpec) -> str:
        return (
            f"{key}: configures '{spec.name}' ({FAMILY_TITLES[spec.family]}), which {ROADMAP} "
            f"{__version__}; remove the key or install a plugin that provides '{spec.name}'"
        )

    def planned_value(self, where: str, value: Any, spec: ComponentSpec) -> str:
        return f"{where}: {value} needs '{spec.name}' ({FAMILY_TITLES[spec.family]}), which {ROADMAP} {__version__}"

    def all_specs(self) -> list[ComponentSpec]:
        return [*self.registry, *self.registry.planned_specs()]

    def claims(self, key: str, value: Any) -> list[ComponentSpec]:
        """Components (real or planned) that ``key: value`` selects."""
        if not isinstance(value, (str, int, float, bool)) or value is None:
            return []
        return [s for s in self.all_specs() if s.activated(key, value)]

    # helpers ---------------------------------------------------------------------------------
    def split_entry(self, value: Any, where: str, name_key: str = "name") -> tuple[str | None, dict[str, Any]]:
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
        config = _local_config(model)
        name = self.host.detect_vision_encoder(model=model, config=config) if self.host else None
        if name and self.registry.get(name) is not None:
            self.notes.append(f"vision_encoder: '{model}' is read by '{name}' (auto-detected)")
            return self.lookup(name, "vision_encoder", where)
        if name:
            self.problems.append(self.unknown_name(name, "vision_encoder", f"{where} '{model}'"))
            return None
        self.problems.append(
            f"{where}: cannot tell which vision encoder reads '{model}'; name it explicitly, e.g. "
            f"vision_encoder: {{name: NAME, model: {model}}} (encoders: "
            f"{', '.join(self.registry.names('vision_encoder'))})"
        )
        return None

    def pretrained(self, model: str) -> dict[str, Any] | None:
        """``{"format", "components"}`` when ``model`` is a whole pretrained VLM: a saved vlmplug model
        (or run directory), or a checkpoint a plugin recognises from its ``config.json``."""
        for candidate in (Path(model), Path(model) / "model"):
            manifest = candidate / "vlmplug_model.json"
            if manifest.is_file():
                try:
                    data = json.loads(manifest.read_text(encoding="utf-8"))
                except ValueError as e:
                    self.problems.append(f"model: {manifest} is not valid JSON ({e})")
                    return None
                comps = {k: v for k, v in (data.get("components") or {}).items() if k != "peft" and v}
                return {"format": "vlmplug", "model": str(candidate), "components": comps}
        if self.host is None:
            return None
        found = self.host.detect_model_format(model=model, config=_local_config(model) or _hub_config(model))
        return {**found, "model": model} if found else None

    def detect_format(self, path: str, where: str) -> str | None:
        readable, sample = _first_record(path, where, self.problems)
        if not readable:
            return None
        try:
            name = self.host.detect_dataset_format(path=path, sample=sample) if self.host else None
        except ConfigError as e:  # several formats recognise it
            self.problems.extend(f"{where}: {p}" for p in e.problems)
            return None
        if name is None:
            self.problems.append(
                f"{where}: no dataset format recognises {path}; name one with 'format' "
                f"({', '.join(self.registry.names('dataset_format'))})"
            )
            return None
        self.notes.append(f"{where}: {path} read as '{name}' (auto-detected)")
        return name

    def finish(self, entry: Entry, where: str) -> Selection:
        opts, problems = validate_options(entry.spec, entry.options, where)
        self.problems.extend(problems)
        if not problems and entry.spec.config:
            opts = dataclasses.asdict(entry.spec.make_config(opts))
        return Selection(spec=entry.spec, options=opts, source=entry.source, label=entry.label, weight=entry.weight)

    # values -------------------------------------------------------------------------------------
    def set_core(self, draft: Draft, key: str, value: Any, where: str) -> None:
        draft.explicit.add(key)
        if self.claims(key, value):  # e.g. attn_implementation: flash_attention_2 -> its component decides
            draft.core[key] = value
            draft.flat[key] = value
            return
        try:
            draft.core[key] = coerce_value(value, CORE_KEYS[key][0], where)
        except ValueError as e:
            self.problems.append(str(e))
            return
        self.check_bounds(key, draft.core[key], where)

    def set_training(self, draft: Draft, key: str, value: Any, where: str) -> None:
        try:
            if key in TRAINING_ALIASES:
                coerced = coerce_value(value, TRAINING_ALIASES[key][0], where)
                draft.aliases[key] = (coerced, where)
            else:
                coerced = draft.training[key] = coerce_value(value, TRAINING_KEYS[key], where)
        except ValueError as e:
            self.problems.append(str(e))
            return
        self.check_bounds(key, coerced, where)

    def check_bounds(self, key: str, value: Any, where: str) -> None:
        problem = check_bounds(key, value, where)
        if problem:
            self.problems.append(problem)


def _local_config(model: str) -> dict[str, Any] | None:
    cfg_path = Path(model) / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _hub_config(model: str) -> dict[str, Any] | None:
    """The ``config.json`` of a hub id (from the local cache, or downloaded when online); ``None`` when
    it cannot be had -- then ``model`` is taken for a plain LLM."""
    if Path(model).exists() or model.count("/") != 1:
        return None
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model, "config.json")
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception:  # offline, gated, missing, not JSON: not a checkpoint we can recognise
        return None
    return data if isinstance(data, dict) else None


def _first_record(path: str, where: str, problems: list[str]) -> tuple[bool, dict[str, Any] | None]:
    """``(readable, first JSON/JSONL record or None)``; a problem is appended when not readable."""
    p = Path(path)
    if not p.exists():
        problems.append(f"{where}: {path} does not exist (paths are relative to where you run vlmplug)")
        return False, None
    if not (p.is_file() and p.suffix in (".json", ".jsonl")):
        return True, None
    try:
        text = read_text(p, "dataset")
        if p.suffix == ".jsonl":
            first = next((ln for ln in text.splitlines() if ln.strip()), "")
            sample = json.loads(first) if first else None
        else:
            data = json.loads(text)
            sample = data[0] if isinstance(data, list) and data else None
    except ConfigError as e:
        problems.append(f"{where}: {e}")
        return False, None
    except ValueError as e:
        problems.append(f"{where}: cannot read {path}: {e}")
        return False, None
    return True, sample if isinstance(sample, dict) else None


def _split_sets(data: Mapping[str, Any], sets: list[tuple[str, Any]], r: _Resolver) -> tuple[dict, list]:
    """``--set`` on a key that selects components acts on the recipe itself (it still wins over the
    file); the other overrides apply after selection."""
    selecting = (
        set(SINGLE_KEYS)
        | set(LIST_KEYS)
        | {"use_peft", "modules", "stage"}
        | {k for s in r.all_specs() for k in s.activated_by}
    )
    data = dict(data)
    late = []
    for key, value in sets:
        head, _, rest = key.partition(".")
        if key in selecting:
            data[key] = value
        elif head == "modules" and rest:  # --set modules.connector.learning_rate=1e-4
            part, _, setting = rest.partition(".")
            modules = dict(data.get("modules") or {})
            current = modules.get(part)
            current = {"train": current} if isinstance(current, str) else dict(current or {})
            current[setting or "train"] = value
            modules[part] = current
            data["modules"] = modules
        else:
            late.append((key, value))
    return data, late


def stage_names() -> list[str]:
    """The stages ``stage:`` accepts: the presets shipped in ``recipes/stages/``."""
    folder = resources.files("vlmplug.recipes").joinpath("stages")
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(RECIPE_SUFFIXES))


def _stage_preset(stage: str) -> dict[str, Any]:
    """``recipes/stages/STAGE.yaml``: the stage's defaults, as a recipe fragment."""
    text = resources.files("vlmplug.recipes").joinpath("stages").joinpath(f"{stage}.yaml").read_text(encoding="utf-8")
    return dict(yaml.safe_load(text) or {})


def _with_stage(data: Mapping[str, Any], r: _Resolver) -> dict[str, Any]:
    """``stage: NAME`` puts the stage's defaults under the recipe: the recipe's own keys win, its
    ``modules`` entries override the preset's part by part, and a recipe that chooses its PEFT method
    keeps it (a preset's ``full_fine_tuning`` values apply when that method is full fine-tuning)."""
    stage = data.get("stage")
    if stage is None:
        return dict(data)
    if stage not in stage_names():
        names = stage_names()
        r.problems.append(
            f"stage: unknown stage {stage!r}{did_you_mean(str(stage), names)}; stages: {', '.join(names)}"
        )
        return dict(data)
    preset = _stage_preset(str(stage))
    for_full = preset.pop("full_fine_tuning", {}) or {}
    modules = dict(data.get("modules") or {})
    chooses = "peft" in data or "use_peft" in data or llm_method(parse_modules(modules, [])[0]) is not None
    if chooses:
        preset.pop("peft", None)
        preset.pop("use_peft", None)
    full = r.registry.default("peft", {"use_peft": False})
    peft_raw = data.get("peft")
    peft_name = peft_raw.get("name") if isinstance(peft_raw, Mapping) else peft_raw
    if data.get("use_peft") is False or (full is not None and peft_name == full.name):
        preset.update(for_full)
    merged = {**preset, **data}
    if "modules" in preset:
        merged["modules"] = {**dict(preset["modules"]), **modules}
    applied = ", ".join(f"{k}: {json.dumps(v)}" for k, v in preset.items() if k not in data or k == "modules")
    r.notes.append(f"stage: {stage} -> {applied}")
    return merged


def _read_keys(data: Mapping[str, Any], r: _Resolver) -> Draft:
    """Sort the recipe's keys: core values, training values, component choices, flat component keys."""
    draft = Draft(core={k: d for k, (_, d, _) in CORE_KEYS.items()})
    for key, value in data.items():
        if key in CORE_KEYS:
            r.set_core(draft, key, value, key)
        elif key in TRAINING_KEYS or key in TRAINING_ALIASES:
            r.set_training(draft, key, value, key)
        elif key == "training_args":
            if isinstance(value, Mapping):
                draft.training_args.update(value)
            else:
                r.problems.append("training_args: expected a mapping of TrainingArguments fields")
        elif key in SINGLE_KEYS:
            fam = SINGLE_KEYS[key]
            if fam in draft.single_raw and draft.single_raw[fam][2] != key:
                r.problems.append(
                    f"{key}: the recipe already chooses the {FAMILY_TITLES[fam]} with "
                    f"'{draft.single_raw[fam][2]}'; keep one of them"
                )
                continue
            name, opts = r.split_entry(value, key)
            draft.single_raw[fam] = (name, opts, key)
        elif key in LIST_KEYS:
            draft.lists_raw[key] = [] if value is None else list(value) if isinstance(value, list) else [value]
        else:
            draft.flat[key] = value
    return draft


def _select_from_modules(draft: Draft, r: _Resolver) -> None:
    """``modules:`` is checked; an ``llm.train`` naming a PEFT method selects it (``full`` / ``frozen``:
    the family's default for full fine-tuning, unless the recipe names a method)."""
    plans, problems = parse_modules(draft.core.get("modules"), r.registry.names("peft"))
    r.problems.extend(problems)
    draft.core["modules"] = {part: plan.to_dict() for part, plan in plans.items()}
    train = plans["llm"].train if "llm" in plans else None
    if train is None:
        return
    chosen = draft.single_raw.get("peft")
    if train in ("full", "frozen"):
        if chosen is None and draft.core.get("use_peft") is None:
            draft.core["use_peft"] = False
        return
    if chosen is not None and chosen[0] != train:
        r.problems.append(f"modules.llm.train: '{train}' but the recipe's {chosen[2]} chooses '{chosen[0]}'; keep one")
        return
    draft.single_raw["peft"] = (train, chosen[1] if chosen else {}, chosen[2] if chosen else "modules.llm.train")


def _check_chat_template(draft: Draft, r: _Resolver) -> None:
    """A ``chat_template`` that is a bare word must name a built-in template."""
    from .chat_templates import template_text

    try:
        template_text(draft.core.get("chat_template"))
    except ConfigError as e:
        r.problems.extend(e.problems)


def _check_modules(draft: Draft, r: _Resolver) -> None:
    """A frozen LLM leaves nothing for an adapter method to train there."""
    llm = (draft.core.get("modules") or {}).get("llm", {})
    peft = draft.single.get("peft")
    full = r.registry.default("peft", {"use_peft": False})
    if llm.get("train") == "frozen" and peft is not None and full is not None and peft.spec.name != full.name:
        r.problems.append(
            f"modules.llm.train: frozen, but PEFT method '{peft.spec.name}' trains the LLM; "
            f"use '{full.name}' (modules freeze or train each part) or unfreeze the llm"
        )


def _check_streaming(draft: Draft, r: _Resolver) -> None:
    """``streaming: true`` needs ``max_steps`` (a stream has no length to count epochs in), cannot group
    batches by length (that needs every sample's length before step 1), and needs each process to load
    its own batches (accelerate's ``dispatch_batches`` would have the main process read for all)."""
    if not draft.core.get("streaming"):
        return
    args = draft.training_args
    steps = args.get("max_steps", draft.training.get("max_steps"))
    try:
        steps = int(steps) if steps is not None else None
    except (TypeError, ValueError):
        steps = None  # reported when TrainingArguments are built
    if steps is None or steps <= 0:
        r.problems.append(
            "streaming: true needs max_steps: a stream has no length, so the run cannot count its steps in "
            "epochs; set max_steps: N (the data repeats, reshuffled each pass, until then)"
        )
    strategy = args.get("train_sampling_strategy", draft.training.get("train_sampling_strategy"))
    if draft.aliases.get("group_by_length", (False,))[0] or strategy == "group_by_length":
        r.problems.append(
            "streaming: true and group_by_length: length-grouped batches need every sample's length before "
            "step 1, which a stream does not read; drop one of them"
        )
    accelerator = args.get("accelerator_config")
    if isinstance(accelerator, Mapping) and accelerator.get("dispatch_batches"):
        r.problems.append(
            "streaming: true and training_args.accelerator_config.dispatch_batches: true: under streaming each "
            "process reads its own share of the rows (batches of varying shapes cannot be dispatched); drop it"
        )


def _select_single(draft: Draft, r: _Resolver) -> None:
    """The one-only families the recipe names (an encoder may be named by its hub id or path)."""
    for fam, (name, opts, key) in draft.single_raw.items():
        if name is None and fam == "vision_encoder" and "model" in opts:
            spec = r.detect_encoder(str(opts["model"]), key)
        elif name is None:
            r.problems.append(f"{key}: a mapping needs 'name' (one of {', '.join(r.registry.names(fam))})")
            continue
        elif (
            fam == "vision_encoder"
            and name not in r.registry
            and r.registry.planned(name) is None
            and ("/" in name or Path(name).exists())
        ):
            spec = r.detect_encoder(name, key)
            opts = {"model": name, **opts}
        else:
            spec = r.lookup(name, fam, key)
        if spec is not None:
            draft.single[fam] = Entry(spec, opts)


def _select_from_pretrained(draft: Draft, r: _Resolver) -> None:
    """``model:`` naming a whole pretrained VLM fixes the encoder, connector and fusion to the ones its
    weights belong to; the recipe may restate them (options merge) but not choose others."""
    model = draft.core.get("model")
    found = r.pretrained(str(model)) if model else None
    if not found:
        return
    draft.pretrained = {"format": found["format"], "model": found["model"]}
    r.notes.append(f"model: {model} is a {found['format']} checkpoint: the run starts from its weights")
    for fam, raw in found["components"].items():
        name, opts = r.split_entry(raw, f"model ({fam})")
        for recorded in ("provider", "version", "label"):  # what the manifest records beside the options
            opts.pop(recorded, None)
        spec = r.lookup(name, fam, f"model: {model} ({found['format']})") if name else None
        if spec is None:
            continue
        chosen = draft.single.get(fam)
        if chosen is not None and chosen.spec.name != spec.name:
            r.problems.append(
                f"model: {model} is a {found['format']} checkpoint whose {FAMILY_TITLES[fam]} is "
                f"'{spec.name}', but the recipe chooses '{chosen.spec.name}'; drop the recipe's choice"
            )
            continue
        draft.single[fam] = Entry(spec, {**opts, **(chosen.options if chosen else {})}, "model")


def _activate_flat_keys(draft: Draft, r: _Resolver) -> None:
    """Flat keys either select a component (``activated_by``), configure one (``flat_keys``), name a
    roadmap component, or are unknown."""
    for key, value in draft.flat.items():
        consumed = False
        for spec in r.all_specs():
            if key in spec.activated_by:
                consumed = True
                if spec.activated(key, value):
                    if spec.planned:
                        r.problems.append(
                            r.planned_value(key, value, spec) if key in CORE_KEYS else r.planned_key(key, spec)
                        )
                    else:
                        draft.activated.append((spec, key))
            if key in spec.flat_keys:
                consumed = True
                if spec.planned:
                    r.problems.append(r.planned_key(key, spec))
                else:
                    draft.owned[key] = value
        if not consumed and key not in CORE_KEYS:
            known = [
                *CORE_KEYS,
                *TRAINING_KEYS,
                *TRAINING_ALIASES,
                *SINGLE_KEYS,
                *LIST_KEYS,
                "training_args",
                *{k for s in r.registry for k in (*s.activated_by, *s.flat_keys)},
            ]
            r.problems.append(
                f"{key}: unknown recipe key{did_you_mean(key, known)} "
                f"(recipe keys are listed in docs/recipes.md; component options in `vlmplug info NAME`)"
            )
    for spec, key in draft.activated:
        fam = spec.family
        if fam in SINGLE_FAMILIES:
            if fam in draft.single and draft.single[fam].spec.name != spec.name:
                r.problems.append(
                    f"{key}: selects {FAMILY_TITLES[fam]} '{spec.name}' but the recipe also chooses "
                    f"'{draft.single[fam].spec.name}'; keep one"
                )
            else:
                draft.single.setdefault(fam, Entry(spec, {}))
        elif fam in ("optimizer_stack", "evaluator"):
            draft.lists[_list_key(fam)].append(Entry(spec, {}))


def _list_key(family: str) -> str:
    return "optimizer_stack" if family == "optimizer_stack" else "evaluators"


def _select_lists(draft: Draft, r: _Resolver) -> None:
    """``optimizer_stack:`` and ``evaluators:`` entries, merged with components a flat key activated."""
    for key in ("optimizer_stack", "evaluators"):
        for i, raw in enumerate(draft.lists_raw.get(key, [])):
            name, opts = r.split_entry(raw, f"{key}[{i}]")
            spec = r.lookup(name, LIST_KEYS[key], f"{key}[{i}]") if name is not None else None
            if spec is None:
                continue
            same = [e for e in draft.lists[key] if e.spec.name == spec.name]
            if same:  # a flat key activated it too: merge the options
                same[0].options.update(opts)
            else:
                draft.lists[key].append(Entry(spec, opts))


def _apply_plugins(draft: Draft, plugins: Iterable[str], r: _Resolver) -> None:
    """``--plugins``: replaces the choice of a one-only family, appends to a list family."""
    for name in plugins:
        spec = r.registry.get(name)
        if spec is None:
            r.problems.append(r.unknown_name(name, None, "--plugins"))
            continue
        fam = spec.family
        if fam in SINGLE_FAMILIES:
            draft.from_cli.setdefault(fam, []).append(spec.name)
            before = draft.single.get(fam)
            if len(draft.from_cli[fam]) > 1 or (before is not None and before.spec.name == spec.name):
                continue
            if before is not None:
                r.notes.append(f"{fam}: {before.spec.name} -> {spec.name} (from --plugins)")
            draft.single[fam] = Entry(spec, {}, "--plugins")
        elif fam == "dataset_format":
            draft.lists_raw.setdefault("datasets", []).append({"format": spec.name})
        elif all(e.spec.name != spec.name for e in draft.lists[_list_key(fam)]):
            draft.lists[_list_key(fam)].append(Entry(spec, {}, "--plugins"))
    for fam, names in draft.from_cli.items():
        if len(names) > 1:
            r.problems.append(f"--plugins: {FAMILY_TITLES[fam]}: choose one of {', '.join(names)}")


def _apply_defaults(draft: Draft, r: _Resolver) -> None:
    """Owners of flat keys, then each one-only family's declared default; then what is still missing."""
    for key in draft.owned:  # a flat key owned by one component of an empty family selects it (lora_r -> lora)
        owners = [s for s in r.registry if key in s.flat_keys]
        if len(owners) == 1 and owners[0].family in SINGLE_FAMILIES and owners[0].family not in draft.single:
            draft.single[owners[0].family] = Entry(owners[0], {})
            r.notes.append(f"{owners[0].family}: '{key}' is an option of '{owners[0].name}': selecting it")
    for fam in FAMILIES:
        if fam not in SINGLE_FAMILIES or fam in draft.single:
            continue
        spec = r.registry.default(fam, draft.core)
        if spec is not None:
            draft.single[fam] = Entry(spec, {}, "default")
            if spec.default_when and set(spec.default_when) <= draft.explicit:
                why = ", ".join(f"{k}: {json.dumps(v)}" for k, v in spec.default_when.items())
                r.notes.append(f"{fam}: no {FAMILY_TITLES[fam]} named; using '{spec.name}' (the default for {why})")
    for entry in draft.single.values():
        for key, value in entry.spec.contradicts.items():
            if key in draft.explicit and draft.core.get(key) is not None and bool(draft.core[key]) == bool(value):
                r.problems.append(
                    f"{key}: {json.dumps(draft.core[key])} contradicts {FAMILY_TITLES[entry.spec.family]} "
                    f"'{entry.spec.name}'; drop one"
                )
    for fam in ("vision_encoder", "connector"):
        if fam not in draft.single and not any(fam in p for p in r.problems):
            r.problems.append(
                f"the recipe chooses no {FAMILY_TITLES[fam]}: add `{fam}: NAME` ({', '.join(r.registry.names(fam))})"
            )
    if not draft.core.get("model"):
        r.problems.append("model: the recipe names no LLM; set `model: HUB_ID_OR_PATH` (or 'tiny-llama')")


def _select_datasets(draft: Draft, r: _Resolver) -> None:
    """``datasets:`` / ``eval_datasets:``: a format name, a path (format detected), or a mapping
    with ``format`` / ``path`` / ``name`` (the label in reports) and the format's options."""
    for key in ("datasets", "eval_datasets"):
        for i, raw in enumerate(draft.lists_raw.get(key, [])):
            where = f"{key}[{i}]"
            if isinstance(raw, str):
                raw = {"format": raw} if raw in r.registry else {"path": raw}
            if not isinstance(raw, Mapping):
                r.problems.append(f"{where}: expected a format name, a path, or a mapping with 'format'/'path'")
                continue
            opts = dict(raw)
            label = opts.pop("name", None)
            weight = _dataset_weight(opts.pop("weight", 1.0), key, where, r)
            name = opts.pop("format", None)
            if name is None and "path" not in opts:
                r.problems.append(
                    f"{where}: give 'path' (and optionally 'format': {', '.join(r.registry.names('dataset_format'))})"
                )
                continue
            name = name if name is not None else r.detect_format(str(opts["path"]), where)
            spec = r.lookup(str(name), "dataset_format", where) if name is not None else None
            if spec is not None:
                draft.lists[key].append(
                    Entry(spec, opts, label=str(label) if label is not None else None, weight=weight)
                )
    if not draft.lists["datasets"]:
        r.problems.append("datasets: the recipe has no training data; add `datasets: [{path: train.jsonl}]`")
    _label_eval_sets(draft.lists["eval_datasets"], r)


def _dataset_weight(value: Any, key: str, where: str, r: _Resolver) -> float:
    """A training dataset's ``weight`` (a number > 0); eval sets take none."""
    if key == "eval_datasets" and value != 1.0:
        r.problems.append(f"{where}.weight: weights mix training datasets; an eval set is read whole")
        return 1.0
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = float("nan")
    if not weight > 0:
        r.problems.append(f"{where}.weight: must be a number > 0 (1 = every sample once), got {value!r}")
        return 1.0
    return weight


def _label_eval_sets(entries: list[Entry], r: _Resolver) -> None:
    """Every eval set gets a unique label (its ``name``, else its format, numbered when repeated)."""
    seen: set[str] = set()
    for entry in entries:
        base = entry.label or entry.spec.name
        label, n = base, 1
        while label in seen:
            n += 1
            label = f"{base}-{n}"
        if entry.label and entry.label in seen:
            r.problems.append(f"eval_datasets: two sets are named '{entry.label}'; names must be unique")
        seen.add(label)
        entry.label = label


def _distribute_owned_keys(draft: Draft, r: _Resolver) -> None:
    """Top-level keys owned by selected components become those components' options."""
    chosen = draft.chosen()
    for key, value in draft.owned.items():
        owners = [e for e in chosen if key in e.spec.flat_keys]
        if not owners:
            if value in (False, None) and any(key in s.activated_by for s in r.registry):
                continue  # e.g. `bf16: false`: the component that key would select stays off
            candidates = [s.name for s in r.registry if key in s.flat_keys]
            r.problems.append(
                f"{key}: belongs to {' / '.join(candidates)}, which the recipe does not select "
                f"(add --plugins {candidates[0]})"
            )
            continue
        for e in owners:
            if key in e.options and e.options[key] != value:
                r.problems.append(
                    f"{key}: set to {value!r} at top level and {e.options[key]!r} under "
                    f"{FAMILY_TITLES[e.spec.family]} '{e.spec.name}'; keep one"
                )
            e.options.setdefault(key, value)


def _apply_late_sets(draft: Draft, r: _Resolver) -> None:
    """``--set`` (highest precedence): core and training keys, ``COMPONENT.OPTION``, ``FAMILY.OPTION``,
    ``datasets.INDEX.OPTION``, ``training_args.FIELD`` and component flat keys."""
    chosen = draft.chosen()
    for key, value in draft.late_sets:
        where = f"--set {key}"
        head, _, rest = key.partition(".")
        if key in CORE_KEYS:
            r.set_core(draft, key, value, where)
        elif key in TRAINING_KEYS or key in TRAINING_ALIASES:
            r.set_training(draft, key, value, where)
        elif rest and head in ("datasets", "eval_datasets"):
            idx, _, opt = rest.partition(".")
            if not idx.isdigit() or not opt or int(idx) >= len(draft.lists[head]):
                r.problems.append(f"{where}: expected {head}.INDEX.OPTION with INDEX < {len(draft.lists[head])}")
            else:
                draft.lists[head][int(idx)].options[opt] = value
        elif rest and head == "training_args":
            draft.training_args[rest] = value
        elif rest:
            targets = [e for e in chosen if head in (e.spec.name, e.spec.family)]
            if not targets:
                r.problems.append(
                    f"{where}: '{head}' is not a selected component or family "
                    f"(selected: {', '.join(dict.fromkeys(e.spec.name for e in chosen))})"
                )
            for e in targets:
                e.options[rest] = value
        else:
            _set_flat_key(key, value, where, chosen, r)


def _set_flat_key(key: str, value: Any, where: str, chosen: list[Entry], r: _Resolver) -> None:
    owners = [e for e in chosen if key in e.spec.flat_keys]
    for e in owners:
        e.options[key] = value
    if owners:
        return
    planned = [s for s in r.registry.planned_specs() if key in s.flat_keys]
    if planned:
        r.problems.append(r.planned_key(key, planned[0]))
        return
    known = [*CORE_KEYS, *TRAINING_KEYS, *TRAINING_ALIASES, *{k for e in chosen for k in e.spec.flat_keys}]
    r.problems.append(
        f"{where}: unknown key{did_you_mean(key, known)}; use a recipe key, "
        f"COMPONENT.OPTION or FAMILY.OPTION (see `vlmplug info NAME`)"
    )


def _finish(draft: Draft, r: _Resolver, source: str, check_deps: bool) -> ResolvedRecipe:
    """Validate every component's options, requires / conflicts / extras; translate guide spellings."""
    single = {fam: r.finish(draft.single[fam], fam) for fam in FAMILIES if fam in draft.single}
    datasets = [r.finish(e, f"datasets[{i}]") for i, e in enumerate(draft.lists["datasets"])]
    eval_datasets = [r.finish(e, f"eval_datasets[{i}]") for i, e in enumerate(draft.lists["eval_datasets"])]
    stack = [r.finish(e, f"optimizer_stack[{e.spec.name}]") for e in draft.lists["optimizer_stack"]]
    evaluators = [r.finish(e, f"evaluators[{e.spec.name}]") for e in draft.lists["evaluators"]]
    _check_capabilities(single, r)
    chosen = [*single.values(), *datasets, *eval_datasets, *stack, *evaluators]
    names = {s.name for s in chosen}
    for sel in chosen:
        r.problems.extend(
            f"{sel.name} requires '{req}'; add --plugins {req}" for req in sel.spec.requires if req not in names
        )
        r.problems.extend(
            f"{sel.name} conflicts with '{con}'; remove one of them" for con in sel.spec.conflicts if con in names
        )
    if check_deps:
        r.problems.extend(deps.check({s.name: s.spec for s in chosen}.values()))
    _translate_aliases(draft, r)
    if r.problems:
        raise ConfigError(list(dict.fromkeys(r.problems)))
    core = draft.core
    return ResolvedRecipe(
        name=str(core["name"]),
        description=str(core["description"]),
        source=source,
        core=core,
        training=draft.training,
        training_args=draft.training_args,
        single=single,
        datasets=datasets,
        eval_datasets=eval_datasets,
        optimizer_stack=stack,
        evaluators=evaluators,
        notes=r.notes,
        pretrained=draft.pretrained,
    )


def _capabilities(spec: ComponentSpec, options: Mapping[str, Any] | None) -> tuple[set[str], set[str]]:
    try:
        config = spec.make_config(dict(options or {})) if spec.config is not None else None
    except (TypeError, ValueError):
        config = None
    return spec.needs_and_offers(config)


def _check_capabilities(single: Mapping[str, Selection], r: _Resolver) -> None:
    """What an encoder, connector or fusion needs (``ComponentSpec.needs``) must be offered by one of
    the others; otherwise name both sides and a component that offers it."""
    from .contracts import CAPABILITIES

    parts = {fam: sel for fam, sel in single.items() if fam in ("vision_encoder", "connector", "fusion")}
    caps = {fam: _capabilities(sel.spec, sel.options) for fam, sel in parts.items()}
    for fam, sel in parts.items():
        for need in sorted(caps[fam][0]):
            if any(need in caps[other][1] for other in parts if other != fam):
                continue
            others = " nor ".join(f"{FAMILY_TITLES[o]} '{parts[o].name}'" for o in parts if o != fam)
            providers = [s for s in r.registry if s.family != fam and need in _capabilities(s, None)[1]]
            fix = ""
            if providers:
                p = providers[0]
                same = parts.get(p.family) is not None and parts[p.family].name == p.name
                fix = (
                    f"; {FAMILY_TITLES[p.family]} '{p.name}' offers it with other options (`vlmplug info {p.name}`)"
                    if same
                    else f"; choose e.g. {FAMILY_TITLES[p.family]} '{p.name}'"
                )
            r.problems.append(
                f"{FAMILY_TITLES[fam]} '{sel.name}' needs {need} -- {CAPABILITIES.get(need, need)} -- "
                f"which neither {others} offers with the options set{fix}"
            )


def _translate_aliases(draft: Draft, r: _Resolver) -> None:
    """``warmup_ratio`` -> ``warmup_steps`` (a float below 1 is a fraction in transformers 5);
    ``group_by_length: true`` -> ``train_sampling_strategy: group_by_length``."""
    if "warmup_ratio" in draft.aliases:
        value, where = draft.aliases["warmup_ratio"]
        if "warmup_steps" in draft.training:
            r.problems.append(f"{where}: set warmup_ratio or warmup_steps, not both")
        elif 0 <= value < 1:
            draft.training["warmup_steps"] = value
            r.notes.append(
                f"warmup_ratio {value} -> warmup_steps {value} (transformers 5 reads a float "
                f"below 1 as a fraction of the total steps)"
            )
    if draft.aliases.get("group_by_length", (False,))[0]:
        draft.training["train_sampling_strategy"] = "group_by_length"


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
    data, late_sets = _split_sets(data, list(sets), r)
    draft = _read_keys(_with_stage(data, r), r)
    draft.late_sets = late_sets
    _select_from_modules(draft, r)
    _select_single(draft, r)
    _select_from_pretrained(draft, r)
    _activate_flat_keys(draft, r)
    _select_lists(draft, r)
    _apply_plugins(draft, plugins, r)
    _apply_defaults(draft, r)
    _select_datasets(draft, r)
    _distribute_owned_keys(draft, r)
    _apply_late_sets(draft, r)
    _check_modules(draft, r)
    _check_chat_template(draft, r)
    _check_streaming(draft, r)
    return _finish(draft, r, source, check_deps)
