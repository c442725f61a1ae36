"""The vlmplug hook specifications: the contract between the core and every plugin.

Three kinds of hooks (pluggy markers are namespaced to ``"vlmplug"``):

* **registration** (collecting, one per family, llm-style): the plugin calls ``register(spec)``
  with a :class:`vlmplug.registry.ComponentSpec` for each component it provides;
* **detection** (``firstresult``; ``None`` means "not mine"): choose a component for a source;
* **lifecycle** (collecting, return ``None``): notifications broadcast to every active plugin.

The family contracts -- what a component's factory returns -- are documented in
:mod:`vlmplug.contracts`. Call hooks only through the facade in :mod:`vlmplug.manager`.

Heavy types appear only under ``TYPE_CHECKING`` so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from .recipe import ResolvedRecipe
    from .registry import ComponentSpec

__all__ = ["hookspec", "hookimpl", "HOOK_API_VERSION", "REGISTRATION_HOOKS"]

#: Bumped when a hook is added (minor) or changed incompatibly (major). Plugins declare the lowest
#: ``vlmplug`` version whose hook API they use. 1.1: model-format hooks (``model_formats``,
#: ``export_model``, ``detect_model_format``, ``import_model``); evaluators declare
#: ``primary_metric``; PEFT methods ``load_llm`` / ``merge``.
HOOK_API_VERSION = "1.1"

hookspec = pluggy.HookspecMarker("vlmplug")
hookimpl = pluggy.HookimplMarker("vlmplug")

Register = Callable[["ComponentSpec"], None]

# ---------------------------------------------------------------------------------------------
# Registration: one collecting hook per family.
# ---------------------------------------------------------------------------------------------


@hookspec
def register_vision_encoders(register: Register) -> None:
    """Register vision encoders.

    :param register: call ``register(ComponentSpec(...))`` once per encoder. The factory returns a
        vision tower (``torch.nn.Module``) mapping ``pixel_values [B, 3, H, W]`` to features
        ``[B, N, D]`` and carrying ``hidden_size`` (D), ``num_patches`` (N), ``image_processor``
        and ``preprocess(images) -> pixel_values``.

    .. versionadded:: 1.0
    """


@hookspec
def register_connectors(register: Register) -> None:
    """Register connectors (projectors / resamplers).

    :param register: call ``register(ComponentSpec(...))``. The factory takes
        ``(config, ctx, in_dim=D, out_dim=H, num_input_tokens=N)`` and returns a module mapping
        ``[B, N, D]`` to LLM-width tokens ``[B, T, H]``, with ``num_tokens`` (T, the token budget).

    .. versionadded:: 1.0
    """


@hookspec
def register_fusions(register: Register) -> None:
    """Register fusion strategies: how vision tokens reach the LLM.

    :param register: call ``register(ComponentSpec(...))``. The factory returns an object with
        ``placeholder_tokens(connector) -> int`` (image tokens the data pipeline inserts per image)
        and ``build(llm=, vision_encoder=, connector=, image_token_id=) -> VisionLanguageModel``.

    .. versionadded:: 1.0
    """


@hookspec
def register_peft_methods(register: Register) -> None:
    """Register PEFT methods (full, LoRA, QLoRA, Spectrum, ...).

    :param register: call ``register(ComponentSpec(...))``. The factory returns an object with
        ``model_load_kwargs() -> dict``, ``apply(vlm) -> vlm`` (freeze / wrap) and
        ``save(vlm, directory) -> dict`` (what it wrote).

    .. versionadded:: 1.0
    """


@hookspec
def register_dataset_formats(register: Register) -> None:
    """Register dataset formats.

    :param register: call ``register(ComponentSpec(...))``. The factory returns an object with
        ``load() -> Sequence[dict]`` of canonical samples
        ``{"messages": [{"role", "content"}], "images": [...], ...}`` (the guide's format).

    .. versionadded:: 1.0
    """


@hookspec
def register_optimizer_stack(register: Register) -> None:
    """Register optimizer-stack components (composable, applied in recipe order).

    :param register: call ``register(ComponentSpec(...))``. The factory returns an object with any
        of ``model_load_kwargs()``, ``patch_model(vlm)``, ``wrap_collator(collator)``,
        ``update_training_args(args: dict, hardware, note) -> dict`` and ``create_optimizer(model, args)``.

    .. versionadded:: 1.0
    """


@hookspec
def register_evaluators(register: Register) -> None:
    """Register evaluators.

    :param register: call ``register(ComponentSpec(...))``. The factory returns an object with
        ``reference_key`` (the field holding references), ``parse(text) -> str`` and
        ``score(records) -> (metrics: dict[str, float], per_sample: list[float])``. Scoring is pure,
        so ``vlmplug score`` works on a predictions file without a model.

    .. versionadded:: 1.0
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``vlmplug`` CLI (llm-style).

    :param cli: the root click group; decorate functions with ``@cli.command()``.

    .. versionadded:: 1.0
    """


REGISTRATION_HOOKS: dict[str, str] = {
    "vision_encoder": "register_vision_encoders",
    "connector": "register_connectors",
    "fusion": "register_fusions",
    "peft": "register_peft_methods",
    "dataset_format": "register_dataset_formats",
    "optimizer_stack": "register_optimizer_stack",
    "evaluator": "register_evaluators",
}

# ---------------------------------------------------------------------------------------------
# Detection: None means "not mine"; vision encoders and model formats take the first answer, dataset
# formats ask everyone (ambiguity is an error).
# ---------------------------------------------------------------------------------------------


@hookspec
def detect_dataset_format(path: str, sample: dict[str, Any] | None) -> str | None:
    """Name the dataset format that reads ``path``.

    :param path: the dataset source as written in the recipe.
    :param sample: the first record when the file is JSON/JSONL, else ``None``.
    :return: a component name, or ``None`` if this plugin does not recognise it.

    Every plugin is asked: one name is the answer; two or more different names are an error that
    lists them, so that the recipe names the format (``format: NAME``) instead of a silent guess.

    .. versionadded:: 1.0
    .. versionchanged:: 1.1 all plugins answer; ambiguity is an error (was: the first answer won).
    """


@hookspec(firstresult=True)
def detect_vision_encoder(model: str, config: dict[str, Any] | None) -> str | None:
    """Name the vision-encoder component for a hub id or local path (``vision_encoder: ID``).

    :param model: the hub id or path.
    :param config: the parsed local ``config.json`` when ``model`` is a local directory, else ``None``
        (nothing is downloaded to decide).
    :return: a component name, or ``None``.

    Stops at first non-None result.

    .. versionadded:: 1.0
    """


# ---------------------------------------------------------------------------------------------
# Model formats: export to and import from other checkpoints' layouts.
# ---------------------------------------------------------------------------------------------


@hookspec
def model_formats() -> list[str]:
    """Name the model formats this plugin can export (``vlmplug export --format NAME``).

    .. versionadded:: 1.1
    """


@hookspec(firstresult=True)
def export_model(model: Any, format: str, out_dir: str) -> bool | None:
    """Write ``model`` (a loaded :class:`vlmplug.train.vlm.VisionLanguageModel`, with ``tokenizer`` and
    ``manifest``) to the empty directory ``out_dir`` in ``format``.

    :return: ``True`` when this plugin wrote it, ``None`` when ``format`` is not its own. Raise a
        :class:`~vlmplug.errors.ConfigError` naming the component when the model cannot be expressed.

    .. versionadded:: 1.1
    """


@hookspec(firstresult=True)
def detect_model_format(model: str, config: dict[str, Any] | None) -> dict[str, Any] | None:
    """Recognise a recipe's ``model:`` as a whole vision-language checkpoint in a foreign format.

    :param model: the hub id or path, as written in the recipe.
    :param config: its ``config.json`` (read locally, or the hub's cached copy), or ``None``.
    :return: ``None`` if not yours, else ``{"format": NAME, "components": {family: name or
        {name, **options}}}`` -- the components it maps onto (they become the recipe's choices; options
        such as paths are filled in by :func:`import_model`).

    .. versionadded:: 1.1
    """


@hookspec(firstresult=True)
def import_model(model: str, format: str, out_dir: str, hub_kwargs: dict[str, Any]) -> bool | None:
    """Convert the checkpoint ``model`` (``format`` as detected) into a saved vlmplug model directory
    at ``out_dir`` (the layout of :mod:`vlmplug.train.vlm`), which the run then fine-tunes.

    :param hub_kwargs: keyword arguments for ``from_pretrained`` (``trust_remote_code`` as the recipe sets it).
    :return: ``True`` when written, ``None`` when the format is not yours.

    .. versionadded:: 1.1
    """


# ---------------------------------------------------------------------------------------------
# Lifecycle notifications: collecting, return None.
# ---------------------------------------------------------------------------------------------


@hookspec
def on_run_start(recipe: ResolvedRecipe, run_dir: str) -> None:
    """A run is starting; ``recipe`` is fully resolved and ``run_dir`` exists.

    .. versionadded:: 1.0
    """


@hookspec
def on_model_built(model: Any, recipe: ResolvedRecipe) -> None:
    """The vision-language model is assembled (after PEFT and stack patches).

    :param model: the :class:`vlmplug.train.vlm.VisionLanguageModel`.
    :param recipe: the resolved recipe of the run.

    .. versionadded:: 1.0
    """


@hookspec
def on_train_start(state: Any) -> None:
    """Training begins. ``state`` is transformers' ``TrainerState``.

    .. versionadded:: 1.0
    """


@hookspec
def on_log(state: Any, metrics: dict[str, float]) -> None:
    """Called at the logging interval (never per micro-step) with the logged metrics.

    :param state: transformers' ``TrainerState``.
    :param metrics: the logged values (``loss``, ``learning_rate``, ``grad_norm``, ...).

    .. versionadded:: 1.0
    """


@hookspec
def on_checkpoint_saved(path: str) -> None:
    """A checkpoint or the final model was written completely to ``path``.

    .. versionadded:: 1.0
    """


@hookspec
def on_eval_end(results: dict[str, Any]) -> None:
    """An evaluation finished; ``results`` maps metric names to values.

    .. versionadded:: 1.0
    """


@hookspec
def on_run_end(run_dir: str, metrics: dict[str, Any]) -> None:
    """The run finished and everything is saved.

    :param run_dir: the run directory.
    :param metrics: what ``metrics.json`` holds.

    .. versionadded:: 1.0
    """
