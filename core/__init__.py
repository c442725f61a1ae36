"""vlmplug: a plugin-based framework for fine-tuning vision-language models.

Plugin authors need only::

    from vlmplug import ComponentSpec, hookimpl

Importing this package is cheap: no torch, transformers or peft (``vlmplug list`` stays fast).
"""

from __future__ import annotations

from ._version import __version__
from .hookspecs import HOOK_API_VERSION, hookimpl, hookspec
from .registry import ComponentSpec

__all__ = ["__version__", "HOOK_API_VERSION", "hookimpl", "hookspec", "ComponentSpec"]
