"""Component specs and the registry.

A **component** is one named option a plugin registers (``clip``, ``mlp``, ``lora``). Its spec is
light: strings and a config dataclass. The heavy object is built by ``factory`` (a ``"module:attr"``
string) only when the component is selected.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, did_you_mean

__all__ = [
    "FAMILIES",
    "FAMILY_TITLES",
    "SINGLE_FAMILIES",
    "ComponentSpec",
    "Registry",
    "config_fields",
    "coerce_value",
]

#: Family ids, in pipeline order.
FAMILIES: tuple[str, ...] = (
    "vision_encoder",
    "connector",
    "fusion",
    "peft",
    "dataset_format",
    "optimizer_stack",
    "evaluator",
)
FAMILY_TITLES = {
    "vision_encoder": "vision encoder",
    "connector": "connector",
    "fusion": "fusion",
    "peft": "PEFT method",
    "dataset_format": "dataset format",
    "optimizer_stack": "optimizer stack",
    "evaluator": "evaluator",
}
#: Families where a run uses exactly one component; the others take any number, in order.
SINGLE_FAMILIES = frozenset({"vision_encoder", "connector", "fusion", "peft"})


@dataclass(frozen=True)
class ComponentSpec:
    """What a plugin declares for one component.

    :param name: kebab-case, unique across all families (``--plugins NAME`` needs no family).
    :param summary: one line for ``vlmplug list``.
    :param factory: ``"module:attr"`` of the callable building the component, imported lazily.
    :param config: a dataclass whose fields all have defaults and ``metadata={"help": ...}``.
    :param extras: import name -> pip extra, for optional dependencies (``{"flash_attn": "flash"}``).
    :param requires: other component names that must be selected too.
    :param conflicts: component names that cannot be selected together with this one.
    :param aliases: other names accepted for this component (e.g. the guide's ``perceiver_resampler``).
    :param activated_by: recipe flat keys that select this component: ``{"use_liger": True}``.
    :param flat_keys: config fields that may also be written at the top level of a recipe, as
        the guide does (``lora_r: 16``).
    :param default_when: makes this the family's default when a recipe names no component of a
        one-only family and the recipe's values match: ``{}`` always, ``{"use_peft": True}`` when
        ``use_peft`` is true (booleans compare by truthiness, so an unset key counts as false).
    :param contradicts: recipe values that cannot go with this component, e.g. ``{"use_peft": True}``
        for full fine-tuning; checked only when the recipe sets the key.
    :param planned: a roadmap placeholder, not a component: names and keys that a later release (or
        an installed plugin) provides. A real component of the same name replaces it.
    :param needs: capabilities (``vlmplug.contracts.CAPABILITIES``) this component needs from the
        other selected encoder / connector / fusion, e.g. ``("patch-grid",)``.
    :param offers: capabilities it provides to them.
    :param capabilities: for capabilities that depend on options: ``fn(config) -> {"needs": [...],
        "offers": [...]}`` (light code: it runs when a recipe resolves); overrides ``needs``/``offers``.
    :param test_options: options that build a tiny, offline instance for the conformance kit
        (``vlmplug.testing.check_component``); ``"{messages_jsonl}"`` and ``"{tmp}"`` in a string value
        become a small canonical JSONL file the kit writes, and a temporary directory
        (``"{llava_json}"``: the same rows in LLaVA-Instruct's layout; ``"{caption_json}"``: a COCO
        captions file; ``"{hf_parquet}"``: a parquet table with embedded images).
    :param family: set by the registry from the hook that registered the spec.
    """

    name: str
    summary: str
    factory: str
    config: type | None = None
    extras: Mapping[str, str] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    activated_by: Mapping[str, Any] = field(default_factory=dict)
    flat_keys: tuple[str, ...] = ()
    default_when: Mapping[str, Any] | None = None
    contradicts: Mapping[str, Any] = field(default_factory=dict)
    planned: bool = False
    test_options: Mapping[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    offers: tuple[str, ...] = ()
    capabilities: Callable[[Any], Mapping[str, Any]] | None = None
    since: str = "0.1"
    family: str = ""
    provider: str = "built-in"
    version: str = ""
    plugin: str = ""

    def activated(self, key: str, value: Any) -> bool:
        """Whether ``key: value`` in a recipe selects this component (``activated_by``)."""
        if key not in self.activated_by:
            return False
        want = self.activated_by[key]
        if isinstance(want, (tuple, list, frozenset, set)):
            return value in want
        if want is True:
            return value not in (False, None)
        return bool(value == want)

    def needs_and_offers(self, config: Any) -> tuple[set[str], set[str]]:
        """The capabilities this component needs and offers with ``config`` (its validated options)."""
        if self.capabilities is not None and config is not None:
            found = self.capabilities(config)
            return set(found.get("needs", ())), set(found.get("offers", ()))
        return set(self.needs), set(self.offers)

    def is_default(self, values: Mapping[str, Any]) -> bool:
        """Whether this component is the family default for the recipe ``values``."""
        if self.default_when is None:
            return False
        return all(_matches(values.get(k), v) for k, v in self.default_when.items())

    def load_factory(self) -> Callable[..., Any]:
        """Import and return the factory (the only place a component's heavy code loads)."""
        module, _, attr = self.factory.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def default_config(self) -> Any:
        return self.config() if self.config is not None else None

    def make_config(self, options: Mapping[str, Any]) -> Any:
        if self.config is None:
            if options:
                raise ConfigError(f"{self.name}: takes no options, got {sorted(options)}")
            return None
        return self.config(**options)


def _matches(value: Any, want: Any) -> bool:
    return bool(value) == want if isinstance(want, bool) else bool(value == want)


def config_fields(config: type | None) -> dict[str, dataclasses.Field]:
    """The dataclass fields of a component config, by name (empty when there is no config)."""
    if config is None:
        return {}
    return {f.name: f for f in dataclasses.fields(config)}


def _type_hints(config: type) -> dict[str, Any]:
    return typing.get_type_hints(config)


def describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe_type(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(describe_type(a) for a in typing.get_args(tp) if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (*_TRUE, *_FALSE):
        return value.lower() in _TRUE
    raise ValueError(f"{where}: expected true or false, got {value!r}")


def _to_number(value: Any, kind: type, where: str) -> Any:
    """``int`` or ``float``; YAML 1.1 reads ``2e-4`` as a string, so numbers in strings count."""
    what = "an integer" if kind is int else "a number"
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected {what}, got {value!r}")
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) or (kind is float and isinstance(value, float)):
        return kind(value)
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ValueError(f"{where}: expected {what}, got {value!r}")


def _to_str(value: Any, where: str) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where}: expected a string, got {value!r}")


def _to_union(value: Any, tp: Any, args: tuple[Any, ...], where: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return coerce_value(value, a, where)
        except ValueError as e:
            errors.append(str(e))
    raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not {describe_type(tp)}")


def _to_sequence(value: Any, tp: Any, origin: Any, args: tuple[Any, ...], where: str) -> Any:
    if isinstance(value, str):  # --set lora_target_modules=q_proj,v_proj
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected a list, got {value!r}")
    inner = args[0] if args else Any
    out = [coerce_value(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(out) if (origin is tuple or tp is tuple) else out


def coerce_value(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the annotated type ``tp``; raise ``ValueError`` naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:
        if value in args:
            return value
        raise ValueError(
            f"{where}: {value!r} is not one of {', '.join(map(repr, args))}"
            f"{did_you_mean(str(value), [str(a) for a in args])}"
        )
    if origin in (typing.Union, types.UnionType):
        return _to_union(value, tp, args, where)
    if tp is bool:
        return _to_bool(value, where)
    if tp in (int, float):
        return _to_number(value, tp, where)
    if tp is str:
        return _to_str(value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        return _to_sequence(value, tp, origin, args, where)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def validate_options(spec: ComponentSpec, options: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """Check ``options`` against ``spec.config``: unknown keys and bad values become problems."""
    fields = config_fields(spec.config)
    hints = _type_hints(spec.config) if spec.config is not None else {}
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in options.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            problems.append(
                f"{where}: unknown option '{key}' for {spec.name}{did_you_mean(key, fields)}; "
                f"valid options: {valid} (see `vlmplug info {spec.name}`)"
            )
            continue
        try:
            out[key] = coerce_value(value, hints.get(key, Any), f"{where}.{key}")
        except ValueError as e:
            problems.append(str(e))
    if not problems and spec.config is not None:
        try:
            spec.config(**out)  # runs __post_init__ validation
        except (ValueError, TypeError) as e:
            problems.append(f"{where}: {e}")
    return out, problems


class Registry:
    """All registered components by name, with alias lookup and duplicate detection.

    Roadmap placeholders (``planned=True``) are kept apart: they never appear in listings or
    lookups of real components, and a real component of the same name replaces them."""

    def __init__(self) -> None:
        self._by_name: dict[str, ComponentSpec] = {}
        self._aliases: dict[str, str] = {}
        self._planned: dict[str, ComponentSpec] = {}
        self.errors: list[str] = []

    def add(self, spec: ComponentSpec) -> None:
        names = (spec.name, *spec.aliases)
        if spec.planned:
            if not any(n in self for n in names):
                for name in names:
                    self._planned[name] = spec
            return
        for name in names:
            self._planned.pop(name, None)
        for name in names:
            owner = self._by_name.get(name) or self._by_name.get(self._aliases.get(name, ""))
            if owner is not None:
                raise ConfigError(
                    f"component name '{name}' is registered twice: by {owner.provider} "
                    f"(plugin {owner.plugin}) and by {spec.provider} (plugin {spec.plugin}); "
                    f"uninstall one, or disable it with VLMPLUG_DISABLE_PLUGINS={spec.plugin}",
                    header="plugin conflict",
                )
        self._by_name[spec.name] = spec
        for alias in spec.aliases:
            self._aliases[alias] = spec.name

    def get(self, name: str) -> ComponentSpec | None:
        name = self._aliases.get(name, name)
        return self._by_name.get(name)

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __iter__(self) -> Iterator[ComponentSpec]:
        return iter(sorted(self._by_name.values(), key=lambda s: (FAMILIES.index(s.family), s.name)))

    def __len__(self) -> int:
        return len(self._by_name)

    def planned(self, name: str) -> ComponentSpec | None:
        """The roadmap placeholder named ``name`` (or aliased so), if no real component took it."""
        return self._planned.get(name)

    def planned_specs(self) -> list[ComponentSpec]:
        return list({id(s): s for s in self._planned.values()}.values())

    def default(self, family: str, values: Mapping[str, Any]) -> ComponentSpec | None:
        """The first registered component of ``family`` that is the default for ``values``
        (more specific ``default_when`` first)."""
        candidates = [s for s in self._by_name.values() if s.family == family and s.is_default(values)]
        candidates.sort(key=lambda s: -len(s.default_when or {}))
        return candidates[0] if candidates else None

    def names(self, family: str | None = None) -> list[str]:
        return [s.name for s in self if family is None or s.family == family]

    def family(self, family: str) -> list[ComponentSpec]:
        return [s for s in self if s.family == family]
