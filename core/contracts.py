"""The family contracts: what each family's factory returns, and every member the core uses.

This module is the source of truth for plugin authors (``docs/hooks.md`` renders it). Each family
has a :class:`typing.Protocol` that lists every attribute and method the core reads or calls,
with shapes and dtypes; :func:`check` verifies an object built by a factory against its family's
contract, and :func:`vlmplug.train.run.build_component` calls it, so a plugin that misses a member
fails at build time with a :class:`~vlmplug.errors.PluginError` naming the plugin and the member,
not later inside training.

Two families have members that most components leave alone; for those, a base class with no-op
defaults is provided (:class:`OptimizerStackComponent`, :class:`EvaluatorBase`). Subclassing is a
convenience, not a requirement: any object with the members passes.

Factories are called as ``factory(config, ctx, **extra)`` where ``config`` is the component's
config dataclass instance (or ``None``) and ``ctx`` a :class:`vlmplug.train.run.BuildContext`
(``None`` under ``vlmplug score``). Connectors get ``extra = {in_dim, out_dim, num_input_tokens}``.

Importing this module is cheap: torch types appear only under ``TYPE_CHECKING``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

__all__ = [
    "CAPABILITIES",
    "Member",
    "CONTRACTS",
    "VisionEncoder",
    "Connector",
    "Fusion",
    "VisionLanguageModelContract",
    "PeftMethod",
    "DatasetFormat",
    "OptimizerStack",
    "OptimizerStackComponent",
    "Evaluator",
    "LazyImage",
    "EvaluatorBase",
    "check",
    "missing_members",
]


#: What an encoder, connector or fusion may need from, or offer to, the others (``ComponentSpec.needs``
#: / ``offers``); a recipe whose components need what none offers is rejected before anything loads.
CAPABILITIES: dict[str, str] = {
    "patch-grid": "features that are a square grid of patches and nothing else (no CLS token)",
    "instruction": "the instruction tokens of each image's message, passed to the connector",
}


@runtime_checkable
class VisionEncoder(Protocol):
    """A vision tower (a ``torch.nn.Module``) and its image pipeline.

    ``forward(pixel_values: float [B, ...]) -> features: float [B, N, D]`` in the tower's dtype. Only
    the tower reads ``pixel_values`` beyond its first (image) dimension: ViTs take ``[B, 3, S, S]``,
    the ``patches`` encoder packed patches ``[B, max_patches, 4 + 3 p^2]``.

    Optional: ``trains_from_scratch = True`` tells the PEFT methods there is nothing pretrained to keep
    frozen (the tower trains like the connector unless the user freezes it by name).
    """

    #: D, the width of each feature vector.
    hidden_size: int
    #: N, feature vectors per image (CLS included when the tower keeps it).
    num_patches: int
    #: The transformers image processor with the tower's settings, saved with the model
    #: (``save_pretrained(dir)``); ``None`` when the tower has none.
    image_processor: Any
    #: Where the weights come from (hub id or path), or ``None`` for a randomly initialised tower,
    #: whose weights are then always saved with the model.
    weights_source: str | None

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB PIL images -> ``pixel_values`` ``float32 [B, ...]`` (e.g. resize, crop, normalise to
        ``[B, 3, S, S]``); images of any size and aspect ratio."""
        ...

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Connector(Protocol):
    """Maps vision features to LLM-width tokens (a ``torch.nn.Module``).

    Built as ``factory(config, ctx, in_dim=D, out_dim=H, num_input_tokens=N)``;
    ``forward(features: [B, N, D]) -> tokens: [B, T, H]`` with ``T == num_tokens`` for every input.

    A connector whose spec ``needs`` ``"instruction"`` (text-conditioned, e.g. InstructBLIP's
    Q-Former) is built with an extra ``vocab_size`` (the LLM tokenizer's) and called as
    ``forward(features, instruction_ids=[B, L] long, instruction_mask=[B, L])``: the tokens of the
    message each image belongs to, ``<image>`` removed, in the LLM tokenizer's ids.

    Optional: ``max_frames`` > 1 says the connector takes a whole video, ``forward([B, F, N, D])``
    with ``F <= max_frames`` frames, and returns its ``T`` tokens for all of them (the perceiver's
    time embeddings); a video then fills one image slot. Without it, each frame is its own slot.
    """

    #: T, the token budget per image slot (LLM positions each image, or whole video, occupies).
    num_tokens: int

    def __call__(self, features: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class VisionLanguageModelContract(Protocol):
    """What a fusion's ``build`` returns: the assembled model (a ``torch.nn.Module``).

    Subclass :class:`vlmplug.train.vlm.VisionLanguageModel`, which provides saving, the loss
    contract flags and parameter counting.

    ``forward(input_ids [B, L] long, attention_mask [B, L] long, pixel_values [N_img, ...] |
    None, labels [B, L] long | None, num_items_in_batch: int | Tensor | None, image_frames [N_slots]
    long | None)`` returns an object with ``loss`` (scalar) and ``logits [B, L, V]``; ``image_frames``
    (frames per image slot, when a slot holds a video's frames) goes to ``encode_images``. The loss
    is the causal-LM cross-entropy over labels shifted by one, ignoring ``-100``: its **sum divided
    by** ``num_items_in_batch`` when that is given (the Trainer passes the number of target tokens in
    the whole accumulated batch, so k micro-steps add up to one big step), else the mean.

    ``generate(input_ids, attention_mask, pixel_values, **generation_kwargs) -> [B, new]``
    returns only the generated token ids (left-padded prompts).
    """

    vision_encoder: Any
    connector: Any
    llm: Any
    image_token_id: int
    #: Must be ``True``: read by transformers' Trainer, which then passes ``num_items_in_batch``.
    accepts_loss_kwargs: bool
    #: Set by the run / loader: the tokenizer, the PEFT method that saves the LLM (``None``: a plain
    #: LLM) and the manifest ``save_pretrained`` writes; ``device`` of the parameters.
    tokenizer: Any
    peft_method: Any
    manifest: dict[str, Any]
    device: Any
    #: New modules the fusion adds (trained like the connector), or ``None``; and the parts
    #: (``"vision_encoder"``, ``"llm"``) the fusion wants frozen unless the PEFT method is told otherwise.
    fusion_modules: Any
    keep_frozen: set[str]

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor: ...

    def trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts."""
        ...

    def save_pretrained(self, directory: Any) -> None:
        """Write the model directory (every part with safetensors, the LLM through the PEFT method)."""
        ...


@runtime_checkable
class Fusion(Protocol):
    """How vision tokens reach the LLM."""

    def placeholder_tokens(self, connector: Connector) -> int:
        """Image-token positions the data pipeline inserts per ``<image>``: the connector's token
        budget when the vision tokens enter the text stream (interleaved, modality experts), 1 for a
        marker when they stay beside it (cross-attention)."""
        ...

    def build(
        self, *, llm: Any, vision_encoder: VisionEncoder, connector: Connector, image_token_id: int
    ) -> VisionLanguageModelContract: ...


@runtime_checkable
class PeftMethod(Protocol):
    """Which parameters train, and how the LLM is saved, reloaded and merged."""

    def model_load_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` keyword arguments for the LLM (e.g. a quantization config)."""
        ...

    def apply(self, vlm: Any) -> Any:
        """Freeze / wrap the model in place and return it; sets ``requires_grad`` on every part."""
        ...

    def save_llm(self, vlm: Any, directory: str) -> dict[str, str]:
        """Write the LLM part under ``directory``; return ``{role: relative path}`` of what it wrote.
        The saved form must load with plain transformers / peft."""
        ...

    def load_llm(self, directory: str, files: Mapping[str, str], load_base: Callable[[], Any]) -> Any:
        """Rebuild the trained LLM from what :meth:`save_llm` wrote (``files``); ``load_base()``
        loads the untrained base LLM the run started from, when the saved files need it."""
        ...

    def merge(self, vlm: Any) -> Any:
        """Fold adapters into the base weights (no-op for full fine-tuning); return the model."""
        ...


@runtime_checkable
class LazyImage(Protocol):
    """An image a dataset format makes only when the pixels are needed (e.g. a random augmentation
    of a file): the pipeline checks ``path`` up front like an image path and calls ``open()`` -- a PIL
    image -- when it loads the sample, in a DataLoader worker when there are some (so it must pickle)."""

    path: str

    def open(self) -> Any: ...


@runtime_checkable
class DatasetFormat(Protocol):
    """A source of canonical samples: ``len(ds)`` and ``ds[i]``.

    A sample is ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}],
    "images": [path | data URI | bytes | PIL.Image | LazyImage, ...], "videos": [video, ...], ...}`` with
    one ``<image>`` in the text per image and one ``<video>`` per video, in order (a video: a list of
    frames, ``{"frames": [...], "fps": N}``, a frame folder or a video file; see
    :mod:`vlmplug.train.video`); extra fields (``answers``, ``id``, ...) are kept for evaluators; ``_where``
    (e.g. ``"train.jsonl:12"``) names the row in error messages.

    Optional: ``stream()``, which lets a run stream the format (:class:`StreamingDatasetFormat`).
    """

    #: Rows dropped while reading under ``on_bad_sample: skip``, as
    #: :class:`~vlmplug.errors.DataError` objects (their ``reason`` groups the skip report).
    skipped: list[Any]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


@runtime_checkable
class StreamingDatasetFormat(Protocol):
    """The optional streaming capability of a dataset format (``streaming: true``; see docs/data.md).

    A run that streams builds its training datasets with ``ctx.streaming = True``: the factory must
    then not read the whole source (check that it exists, open nothing more), and ``len`` /
    ``ds[i]`` need not work. The run calls ``stream()`` once per pass, in every DataLoader worker of
    every process, each with its own ``keep``. A format without ``stream`` cannot be streamed: the run
    stops with a ConfigError naming it (no silent fallback to reading it whole).
    """

    def stream(self, keep: Callable[[int], bool] | None = None) -> Any:
        """An iterator of ``(record index, sample)`` for every record of the source, in its order, read lazily (a
        new read per call): ``sample`` a canonical sample (as :class:`DatasetFormat` gives them, with
        ``_where``), or for a bad row a :class:`~vlmplug.errors.DataError` carrying ``reason`` and
        ``where`` -- the run applies ``on_bad_sample`` to it, so the format raises only for a problem
        of the whole source (a missing or unreadable file). ``index`` counts records from 0 in source
        order, the same on every call. ``keep(index)``, when given, says which records the caller
        wants (its share across workers and processes): the format should skip the others without
        parsing them; what it yields anyway is dropped by the run."""
        ...


@runtime_checkable
class OptimizerStack(Protocol):
    """Composable training tweaks, applied in recipe order (see :class:`OptimizerStackComponent`)."""

    def model_load_kwargs(self) -> dict[str, Any]: ...

    def patch_model(self, vlm: Any) -> Any: ...

    def wrap_collator(self, collator: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> Any: ...

    def update_training_args(
        self, args: dict[str, Any], hardware: Any, note: Callable[[str], None]
    ) -> dict[str, Any]: ...

    def create_optimizer(self, model: Any, args: Any) -> Any: ...


class OptimizerStackComponent:
    """No-op defaults for every optimizer-stack member; override what the component changes."""

    def model_load_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` keyword arguments for the LLM (e.g. ``attn_implementation``)."""
        return {}

    def patch_model(self, vlm: Any) -> Any:
        """Patch the assembled model (after PEFT) and return it."""
        return vlm

    def wrap_collator(self, collator: Any) -> Any:
        """Wrap the training collator (e.g. packing) and return the new one. A collator that counts
        something per batch puts ``{name: number}`` under ``vlmplug.train.data.STATS_KEY`` in the batch
        and has ``summarize(totals) -> metrics``: the run sums the counts over the batches trained on (in
        every process, whatever runs the collator) and adds the summary to ``metrics.json``."""
        return collator

    def update_training_args(self, args: dict[str, Any], hardware: Any, note: Callable[[str], None]) -> dict[str, Any]:
        """Return updated ``TrainingArguments`` keyword arguments; ``note(msg)`` logs a choice."""
        return args

    def create_optimizer(self, model: Any, args: Any) -> Any:
        """Return a ``torch.optim.Optimizer`` to use instead of the Trainer's, or ``None``."""
        return None


@runtime_checkable
class Evaluator(Protocol):
    """Prompting, answer parsing and pure scoring (``vlmplug score`` works on a file)."""

    #: The metric ``score`` always returns that summarises the result (headline, curve).
    primary_metric: str

    def prompt(self, sample: Mapping[str, Any]) -> list[dict[str, str]]:
        """The conversation to generate from (usually up to the last assistant turn)."""
        ...

    def references(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """The fields a predictions record carries for scoring (references and anything the
        metric groups by); JSON-serialisable."""
        ...

    def parse(self, text: str) -> str:
        """The answer in a generated text."""
        ...

    def score(self, records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[float]]:
        """``records``: ``{"prediction": str, **references(sample)}``. Returns (metrics, a score
        per record); ``metrics[primary_metric]`` is a float."""
        ...

    def baselines(
        self, train: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """Reference points computed without the model, e.g. ``{"answer_prior": metrics}``."""
        ...


class EvaluatorBase:
    """Defaults for the optional evaluator members."""

    def variants(self, sample: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The samples to generate for ``sample``: itself, or several (e.g. one per rotation of a
        multiple-choice question's options, for circular evaluation); each becomes one record."""
        return [sample]

    def baselines(
        self, train: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        return {}


@dataclass(frozen=True)
class Member:
    """One contract member: ``name``, whether it must be callable, and its declared type."""

    name: str
    callable: bool
    kind: type | None = None


def _members(protocol: type, module: bool) -> tuple[Member, ...]:
    names: list[Member] = []
    for klass in reversed(protocol.__mro__):
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        for name in getattr(klass, "__annotations__", {}):
            names.append(Member(name, callable=False))
        for name, value in vars(klass).items():
            if callable(value) and not name.startswith("_"):
                names.append(Member(name, callable=True))
    if module:
        names.append(Member("__call__", callable=True))
    return tuple(dict.fromkeys(names))


#: family -> (protocol, whether the object must be a torch.nn.Module, members)
CONTRACTS: dict[str, tuple[type, bool, tuple[Member, ...]]] = {
    "vision_encoder": (VisionEncoder, True, _members(VisionEncoder, True)),
    "connector": (Connector, True, _members(Connector, True)),
    "fusion": (Fusion, False, _members(Fusion, False)),
    "peft": (PeftMethod, False, _members(PeftMethod, False)),
    "dataset_format": (
        DatasetFormat,
        False,
        (Member("skipped", False), Member("__len__", True), Member("__getitem__", True)),
    ),
    "optimizer_stack": (OptimizerStack, False, _members(OptimizerStack, False)),
    "evaluator": (Evaluator, False, _members(Evaluator, False)),
    "model": (VisionLanguageModelContract, True, (*_members(VisionLanguageModelContract, True),)),
}


def missing_members(obj: Any, family: str) -> list[str]:
    """Names of the contract members ``obj`` lacks (or has but cannot call), in contract order."""
    _, must_be_module, members = CONTRACTS[family]
    missing = []
    if must_be_module:
        import torch

        if not isinstance(obj, torch.nn.Module):
            missing.append("torch.nn.Module (base class)")
    for member in members:
        value = (
            getattr(type(obj), member.name, None) if member.name.startswith("__") else getattr(obj, member.name, None)
        )
        if value is None and not hasattr(obj, member.name):
            missing.append(member.name)
        elif member.callable and not callable(value):
            missing.append(f"{member.name} (not callable)")
    if family == "model" and getattr(obj, "accepts_loss_kwargs", None) is not True:
        missing.append("accepts_loss_kwargs = True")
    return missing


def check(obj: Any, family: str) -> None:
    """Raise ``TypeError`` naming every contract member ``obj`` lacks."""
    missing = missing_members(obj, family)
    if missing:
        raise TypeError(
            f"{type(obj).__name__} does not fulfil the {family} contract "
            f"(vlmplug.contracts.{CONTRACTS[family][0].__name__}): missing {', '.join(missing)}"
        )
