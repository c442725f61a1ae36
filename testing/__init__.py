"""``vlmplug.testing``: the conformance kit and test helpers for plugin authors.

* :func:`check_component` runs a component's family conformance suite (see
  :mod:`vlmplug.testing.conformance`), :func:`check_combination` one encoder x connector x fusion;
* :func:`run_recipe` trains a tiny run and returns its result;
* :data:`TINY_RECIPE` is a recipe that trains in seconds on a CPU;
* the pytest fixtures of :mod:`vlmplug.testing.plugin` are registered automatically.

Importing this package is cheap; the heavy parts load when a helper is called.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

__all__ = ["TINY_RECIPE", "check_combination", "check_component", "run_recipe"]

#: A complete recipe on tiny random-init models and synthetic shapes data (seconds on a CPU).
TINY_RECIPE: dict[str, Any] = {
    "name": "tiny",
    "model": "tiny-llama",
    "model_config": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 2},
    "vision_encoder": {
        "name": "clip",
        "model": "tiny",
        "tiny_image_size": 32,
        "tiny_hidden_size": 32,
        "tiny_layers": 2,
        "tiny_heads": 2,
        "feature_layer": -1,
    },
    "connector": "mlp",
    "datasets": [{"format": "shapes", "num_samples": 64, "seed": 0, "image_size": 32}],
    "eval_datasets": [{"format": "shapes", "num_samples": 8, "seed": 1, "image_size": 32}],
    "evaluators": ["vqa"],
    "max_seq_length": 48,
    "max_steps": 4,
    "per_device_train_batch_size": 8,
    "learning_rate": 1e-3,
    "logging_steps": 1,
    "eval_max_new_tokens": 3,
    "num_threads": 2,
}


def check_component(spec: Any, **kwargs: Any) -> dict[str, Any]:
    """Run the conformance suite of ``spec``'s family; raise ``AssertionError`` on the first failure.

    Returns what was checked (for reports). See :mod:`vlmplug.testing.conformance`."""
    from .conformance import check_component as _check

    return _check(spec, **kwargs)


def check_combination(encoder: Any, connector: Any, fusion: Any) -> dict[str, Any]:
    """Build one encoder x connector x fusion (specs or names) around the tiny LLM and check forward,
    backward, generate and save -> load. See :func:`vlmplug.testing.conformance.check_combination`."""
    from .conformance import check_combination as _check

    return _check(encoder, connector, fusion)


def run_recipe(
    recipe: Any = None,
    *,
    steps: int = 2,
    plugins: tuple[str, ...] | list[str] = (),
    output_dir: str | Path | None = None,
    host: Any = None,
    **sets: Any,
) -> Any:
    """Resolve ``recipe`` (a mapping, a recipe file or shipped name; default :data:`TINY_RECIPE`)
    with ``--plugins``-style names and ``key=value`` overrides, train ``steps`` steps quietly and
    return the :class:`~vlmplug.train.run.RunResult`."""
    import tempfile

    from rich.console import Console

    from vlmplug.manager import load
    from vlmplug.recipe import load_recipe, resolve
    from vlmplug.train.run import run

    if recipe is None or isinstance(recipe, dict):
        data, source = copy.deepcopy(recipe or TINY_RECIPE), "<test>"
    else:
        data, source = load_recipe(recipe)
    host = host or load()
    resolved = resolve(
        data, host.registry, host=host, plugins=list(plugins), sets=[("max_steps", steps), *sets.items()], source=source
    )
    out = output_dir or tempfile.mkdtemp(prefix="vlmplug-test-")
    return run(resolved, host, output_dir=str(out), console=Console(quiet=True))
