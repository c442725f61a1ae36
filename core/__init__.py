"""vlmplug: a plugin-based framework for fine-tuning vision-language models.

Plugin authors need only::

    from vlmplug import ComponentSpec, hookimpl

and users load a trained model with ``vlmplug.load("runs/quickstart")``.

Importing this package is cheap: no torch, transformers or peft (``vlmplug list`` stays fast).
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .hookspecs import HOOK_API_VERSION, hookimpl, hookspec
from .registry import ComponentSpec

__all__ = ["__version__", "HOOK_API_VERSION", "hookimpl", "hookspec", "ComponentSpec", "load"]


def load(path: Any, **kwargs: Any) -> Any:
    """Load a trained model (a run directory or its ``model/``) through the plugins that built it:
    see :func:`vlmplug.train.model_io.load`. Imports torch on first use."""
    from .train.model_io import load as _load

    return _load(path, **kwargs)
