"""Plugin discovery and the typed facade through which the core calls hooks.

Built-in plugins come from ``vlmplug.plugins.BUILTIN_PLUGINS`` (module paths, as pytest and llm do); third-party
plugins from the entry-point group ``vlmplug``. Both go through the same ``pm.register``, hook
validation and registry; only discovery differs, and no plugin takes both routes.

Nothing happens at import time: :func:`load` builds a fresh host each call, so tests need no flags.
A plugin that fails to import, validate or register is *collected* (``vlmplug list`` shows it as
broken) and every other command keeps working.

Environment controls:

* ``VLMPLUG_DISABLE_PLUGINS=a,b`` -- skip these plugins (entry-point or built-in module names) or
  hide these components;
* ``VLMPLUG_LOAD_PLUGINS=a,b`` -- load only these third-party plugins (empty: built-ins only);
* ``VLMPLUG_TRACE_PLUGINS=1`` -- print every hook call.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pluggy

from . import hookspecs
from ._version import __version__
from .errors import ConfigError, PluginError, VlmplugError, did_you_mean
from .registry import FAMILIES, ComponentSpec, Registry

__all__ = ["PluginInfo", "PluginHost", "load", "builtin_plugins"]


@dataclass
class PluginInfo:
    """One plugin (module or object registered with pluggy) and where it came from."""

    name: str
    provider: str  # "built-in" or "<distribution>-<version>"
    version: str
    module: str = ""
    error: str | None = None
    components: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "broken" if self.error else "ok"


def builtin_plugins() -> tuple[str, ...]:
    """The built-in plugin modules, as ``vlmplug.plugins.BUILTIN_PLUGINS`` declares them (the core
    names no component)."""
    from vlmplug.plugins import BUILTIN_PLUGINS

    return tuple(BUILTIN_PLUGINS)


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


class PluginHost:
    """The plugin manager, what it loaded, and the component registry built from it."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("vlmplug")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.registry = Registry()
        self.disabled_components: set[str] = set()

    # -- loading ---------------------------------------------------------------------------
    def _register(self, obj: Any, info: PluginInfo) -> None:
        try:
            self.pm.register(obj, name=info.name)
        except Exception as exc:  # PluginValidationError, ValueError (already registered)
            info.error = f"{type(exc).__name__}: {exc}"
        self.plugins[info.name] = info

    def load_builtins(self, disabled: Iterable[str] = ()) -> None:
        disabled = set(disabled)
        for path in builtin_plugins():
            short = path.rsplit(".", 1)[-1]
            if path in disabled or short in disabled:
                continue
            info = PluginInfo(name=path, provider="built-in", version=__version__, module=path)
            try:
                module = importlib.import_module(path)
            except Exception as exc:
                info.error = f"import failed: {type(exc).__name__}: {exc}"
                self.plugins[path] = info
                continue
            self._register(module, info)

    def load_entrypoints(self, disabled: Iterable[str] = (), only: list[str] | None = None) -> None:
        from importlib.metadata import entry_points

        disabled = set(disabled)
        seen: dict[str, str] = {}
        for ep in entry_points(group="vlmplug"):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "?"
            version = dist.version if dist is not None else "?"
            provider = f"{dist_name}-{version}"
            if ep.name in disabled or dist_name in disabled:
                continue
            if only is not None and ep.name not in only and dist_name not in only:
                continue
            info = PluginInfo(name=ep.name, provider=provider, version=version, module=ep.value)
            if ep.name in seen:
                info.error = (
                    f"entry point name '{ep.name}' is declared by both {seen[ep.name]} and "
                    f"{provider}; uninstall one of them"
                )
                self.plugins[f"{ep.name} ({provider})"] = info
                continue
            seen[ep.name] = provider
            try:
                obj = ep.load()
            except Exception as exc:
                info.error = f"import failed: {type(exc).__name__}: {exc}"
                self.plugins[ep.name] = info
                continue
            self._register(obj, info)

    def register_plugin(self, obj: Any, name: str, provider: str = "explicit") -> PluginInfo:
        """Register an object or module directly (tests, recipe-level plugins)."""
        info = PluginInfo(name=name, provider=provider, version="", module=getattr(obj, "__name__", ""))
        self._register(obj, info)
        return info

    def check_pending(self) -> None:
        """Mark plugins implementing an unknown hook as broken (a misspelled hook is a bug)."""
        known = [n for n, f in vars(hookspecs).items() if hasattr(f, "vlmplug_spec")]
        for name in list(vars(self.pm.hook)):
            caller = getattr(self.pm.hook, name)
            if not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.opts.get("optionalhook"):
                    continue
                info = self.plugins.get(impl.plugin_name)
                if info is not None and info.error is None:
                    info.error = f"implements unknown hook '{name}'{did_you_mean(name, known)}"
                self.pm.unregister(name=impl.plugin_name)
        self.pm.check_pending()

    def build_registry(self, disabled: Iterable[str] = ()) -> None:
        """Call the registration hooks plugin by plugin, so each spec knows its provider."""
        self.disabled_components = set(disabled)
        for family in FAMILIES:
            hook_name = hookspecs.REGISTRATION_HOOKS[family]
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():  # registration order: built-ins first keep their names
                info = self.plugins.get(impl.plugin_name)
                if info is None or info.error:
                    continue
                hook_name_local = hook_name

                def register(
                    spec: ComponentSpec,
                    _info: PluginInfo = info,
                    _family: str = family,
                    hook_name_local: str = hook_name_local,
                ) -> None:
                    if not isinstance(spec, ComponentSpec):
                        raise TypeError(f"{hook_name_local}: register() takes a ComponentSpec, got {spec!r}")
                    if spec.family and spec.family != _family:
                        raise TypeError(
                            f"{spec.name} declares family '{spec.family}' but was registered through "
                            f"{hook_name_local} (family '{_family}')"
                        )
                    spec = replace(
                        spec, family=_family, provider=_info.provider, version=_info.version, plugin=_info.name
                    )
                    if spec.name in self.disabled_components:
                        return
                    self.registry.add(spec)
                    if not spec.planned:
                        _info.components.append(spec.name)

                try:
                    impl.function(**dict.fromkeys(impl.argnames, register))
                except ConfigError as exc:  # duplicate name: keep the first, report the clash
                    self.registry.errors.append(str(exc))
                    info.error = info.error or str(exc)
                except Exception as exc:
                    info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"

    def _hooks_of(self) -> None:
        for info in self.plugins.values():
            plugin = self.pm.get_plugin(info.name)
            if plugin is not None:
                info.hooks = sorted(c.name for c in (self.pm.get_hookcallers(plugin) or []))

    # -- facade: typed calls into plugins ----------------------------------------------------
    def _call(self, hook: str, **kwargs: Any) -> Any:
        caller = getattr(self.pm.hook, hook)
        try:
            return caller(**kwargs)
        except VlmplugError:  # a plugin's deliberate, user-facing error (it names what to fix)
            raise
        except Exception as exc:
            raise PluginError(self._culprit(exc, caller), f"hook {hook}", exc) from exc

    @staticmethod
    def _culprit(exc: BaseException, caller: pluggy.HookCaller) -> str:
        codes = {
            impl.function.__code__: impl.plugin_name
            for impl in caller.get_hookimpls()
            if hasattr(impl.function, "__code__")
        }
        tb = exc.__traceback__
        found = "?"
        while tb is not None:
            if tb.tb_frame.f_code in codes:
                found = codes[tb.tb_frame.f_code]
            tb = tb.tb_next
        return found

    def detect_dataset_format(self, *, path: str, sample: dict[str, Any] | None) -> str | None:
        """The one format that recognises ``path`` (``None``: none does); several are a ConfigError
        listing them."""
        found = list(dict.fromkeys(self._call("detect_dataset_format", path=path, sample=sample) or []))
        if len(found) > 1:
            raise ConfigError(
                f"{path}: {len(found)} dataset formats recognise it ({', '.join(found)}); name one with `format: NAME`",
                header="dataset format",
            )
        return found[0] if found else None

    def detect_vision_encoder(self, *, model: str, config: dict[str, Any] | None) -> str | None:
        return self._call("detect_vision_encoder", model=model, config=config)

    def model_formats(self) -> list[list[str]]:
        return self._call("model_formats")

    def export_model(self, *, model: Any, format: str, out_dir: str) -> bool | None:
        return self._call("export_model", model=model, format=format, out_dir=out_dir)

    def detect_model_format(self, *, model: str, config: dict[str, Any] | None) -> dict[str, Any] | None:
        return self._call("detect_model_format", model=model, config=config)

    def import_model(self, *, model: str, format: str, out_dir: str, hub_kwargs: dict[str, Any]) -> bool | None:
        return self._call("import_model", model=model, format=format, out_dir=out_dir, hub_kwargs=hub_kwargs)

    def register_commands(self, *, cli: Any) -> None:
        self._call("register_commands", cli=cli)

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Broadcast a lifecycle notification (``on_*`` hooks) to every active plugin."""
        if not hook.startswith("on_"):
            raise ValueError(f"{hook} is not a lifecycle hook")
        self._call(hook, **kwargs)

    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]


def load(
    *,
    autoload: bool | None = None,
    disabled: Iterable[str] | None = None,
    extra_plugins: Iterable[tuple[Any, str]] = (),
) -> PluginHost:
    """Build a fresh :class:`PluginHost`: built-ins, entry points, extra plugins, checks, registry.

    :param autoload: load third-party entry points (default: yes unless ``VLMPLUG_LOAD_PLUGINS`` is
        set to an empty string).
    :param disabled: plugin or component names to skip (default: ``VLMPLUG_DISABLE_PLUGINS``).
    :param extra_plugins: ``(object, name)`` pairs registered after the entry points.
    """
    host = PluginHost()
    disabled = list(disabled if disabled is not None else (_env_list("VLMPLUG_DISABLE_PLUGINS") or []))
    only = _env_list("VLMPLUG_LOAD_PLUGINS")
    host.load_builtins(disabled)
    if autoload is None:
        autoload = only != []
    if autoload:
        host.load_entrypoints(disabled, only)
    for obj, name in extra_plugins:
        host.register_plugin(obj, name)
    host.check_pending()
    host.build_registry(disabled)
    host._hooks_of()
    if os.environ.get("VLMPLUG_TRACE_PLUGINS"):
        host.pm.trace.root.setwriter(lambda s: sys.stderr.write(s))
        host.pm.enable_tracing()
    return host
