"""Building a selected component: call its plugin's factory, check the product against the family
contract, and report a plugin's failure as an error naming the plugin (light: no torch here, so
``vlmplug score`` builds evaluators without it)."""

from __future__ import annotations

from typing import Any

from vlmplug.contracts import check
from vlmplug.errors import PluginError, VlmplugError

__all__ = ["build_component", "check_product", "needs"]


def _plugin(sel: Any) -> str:
    return f"{sel.spec.plugin} ({sel.spec.provider})"


def _what(sel: Any) -> str:
    from vlmplug.registry import FAMILY_TITLES

    return f"building {FAMILY_TITLES.get(sel.spec.family, sel.spec.family)} '{sel.name}'"


def check_product(sel: Any, obj: Any, family: str | None = None) -> Any:
    """Check ``obj`` (built by ``sel``'s plugin) against the family contract; PluginError if it fails."""
    try:
        check(obj, family or sel.spec.family)
    except TypeError as exc:
        raise PluginError(_plugin(sel), _what(sel), exc) from None
    return obj


def build_component(sel: Any, ctx: Any, **kwargs: Any) -> Any:
    """Call a selected component's factory and check what it returns; errors name the plugin."""
    factory = sel.spec.load_factory()
    try:
        obj = factory(sel.config(), ctx, **kwargs)
    except VlmplugError:
        raise
    except Exception as exc:
        raise PluginError(_plugin(sel), _what(sel), exc) from exc
    return check_product(sel, obj)


def needs(sel: Any, capability: str) -> bool:
    """Whether the selected component needs ``capability`` with its options."""
    try:
        config = sel.config()
    except (TypeError, ValueError):
        config = None
    return capability in sel.spec.needs_and_offers(config)[0]
