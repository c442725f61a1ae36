"""One training run, end to end (DESIGN.md §4), as named stages.

session (run directory, resume point, log) -> light components and TrainingArguments (every
argument and hardware problem surfaces before any model loads) -> datasets -> tokenizer -> model
(encoder, LLM, connector, fusion, PEFT, stack patches) -> encoded training data -> evaluation before
-> Trainer -> atomic save -> evaluation after -> metrics.json, resolved_recipe.yaml, train.log.

The core calls components only through their family contracts (:mod:`vlmplug.contracts`). Under
``accelerate launch`` every process runs this; the main process alone writes outputs and evaluates,
and tokenises once for everyone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlmplug.chat_templates import template_text
from vlmplug.errors import ConfigError, SkipReport, did_you_mean
from vlmplug.modules import ModulePlan
from vlmplug.recipe import ResolvedRecipe

from .assemble import (
    DTYPES,
    BuildContext,
    assemble_model,
    build_component,
    llm_load_kwargs,
    make_sample_encoder,
)
from .data import EncodedDataset, SampleEncoder, TrainCollator, sample_texts
from .evaluate import EvalSet, Evaluation, flatten_metrics
from .hardware import Hardware
from .llm import PRESETS, build_tiny_tokenizer, load_tokenizer
from .mixture import WeightedMixture
from .modules import apply_module_plan, module_table
from .session import Session, open_session
from .streaming import STREAM_HEAD, StreamingDataset, StreamReport, StreamSources, require_streams

__all__ = ["BuildContext", "RunResult", "run", "build_component"]

log = logging.getLogger("vlmplug")
CACHE = ".cache"


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    model: Any = None
    tokenizer: Any = None


@dataclass
class Parts:
    """The light components, built before any model loads."""

    peft: Any
    fusion: Any
    stack: list[Any]
    evaluators: list[tuple[str, Any]]
    train_args: Any


@dataclass
class Data:
    #: The training samples (one dataset, or a :class:`WeightedMixture`); under streaming the
    #: :class:`StreamSources`, which nothing reads before training but :attr:`view`.
    train: Any
    eval_sets: list[EvalSet]

    @property
    def view(self) -> Any:
        """Training samples with random access, for what needs them before training (a preset LLM's
        tokenizer, evaluator baselines): all of them, or under streaming the first STREAM_HEAD good ones."""
        return self.train.head(STREAM_HEAD) if isinstance(self.train, StreamSources) else self.train


@dataclass
class Training:
    """What the training stage needs and produces."""

    dataset: EncodedDataset | StreamingDataset
    collator: Any
    encoder: SampleEncoder
    skips: SkipReport = field(default_factory=SkipReport)
    #: ``where`` of each training sample cut to max_seq_length (on_overlength: truncate-text)
    truncated: list[str] = field(default_factory=list)
    encoded_here: bool = True  # this process tokenised the data (only the main one does)


def run(
    recipe: ResolvedRecipe,
    host: Any,
    *,
    output_dir: str | None = None,
    console: Any = None,
    argv: list[str] | None = None,
) -> RunResult:
    """Train ``recipe``; return the run directory, the metrics and the trained model."""
    from rich.console import Console

    console = console or Console(stderr=True)
    if recipe.core.get("num_threads"):
        torch.set_num_threads(int(recipe.core["num_threads"]))
    session = open_session(recipe, output_dir, console, argv)
    try:
        return _run(recipe, host, session)
    finally:
        session.close()


def _run(recipe: ResolvedRecipe, host: Any, s: Session) -> RunResult:
    t_start = time.perf_counter()
    ctx = _context(recipe)
    _announce(recipe, host, s, ctx)
    parts = _build_parts(recipe, ctx, s)
    seen = len(ctx.notes)
    data = _load_data(recipe, ctx, host)
    for note in ctx.notes[seen:]:  # e.g. how a mixture of datasets was weighted
        s.say(f"  note: {note}")
    pretrained = _pretrained_dir(recipe, ctx, s, host)
    tokenizer = _tokenizer(recipe, data, ctx, s, pretrained)
    vlm = _build_model(recipe, parts, tokenizer, ctx, s, host, pretrained)
    training = _training_data(recipe, vlm, tokenizer, parts, data, s)
    evaluation = _evaluation(recipe, vlm, tokenizer, parts, data, training, s, host)
    metrics: dict[str, Any] = {"recipe": recipe.name, "run_dir": str(s.run_dir), "train_samples": _size(training)}
    status = "failed"
    try:
        _evaluate_before(recipe, evaluation, data, metrics, s)
        _train(recipe, parts, vlm, training, evaluation, s, host, metrics)
        _save_model(vlm, s, host)
        if evaluation.enabled and s.is_main:
            metrics["after"] = evaluation.run("after")
            _finish_curve(metrics, evaluation)
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        _say_how_to_resume(recipe, s)
        raise
    finally:
        _write_outputs(recipe, metrics, evaluation, training, s, ctx, status, t_start)
    host.notify("on_run_end", run_dir=str(s.run_dir), metrics=metrics)
    return RunResult(run_dir=s.run_dir, metrics=metrics, model=vlm, tokenizer=tokenizer)


def inspect_model(recipe: ResolvedRecipe, host: Any) -> list[dict[str, Any]]:
    """Build the model as :func:`run` would -- PEFT method, module spec and stack patches applied --
    without training or writing a run, and return the per-module table (``vlmplug config --params``)."""
    import contextlib
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vlmplug-inspect-") as tmp:
        s = _QuietSession(Path(tmp))
        ctx = _context(recipe)
        parts = _build_parts(recipe, ctx, s)  # type: ignore[arg-type]
        data = _load_data(recipe, ctx, host)
        pretrained = _pretrained_dir(recipe, ctx, s, host)  # type: ignore[arg-type]
        tokenizer = _tokenizer(recipe, data, ctx, s, pretrained)  # type: ignore[arg-type]
        with contextlib.redirect_stdout(None):
            _build_model(recipe, parts, tokenizer, ctx, s, host, pretrained)  # type: ignore[arg-type]
    return list(recipe.runtime["modules"])


@dataclass
class _QuietSession:
    """What the model-building stages read from a :class:`Session`, for a build that is not a run."""

    run_dir: Path
    is_main: bool = True
    world_size: int = 1

    def say(self, message: str) -> None:
        log.debug(message)

    def wait(self) -> None:
        return None

    def main_first(self) -> Any:
        import contextlib

        return contextlib.nullcontext()


# -- stages ----------------------------------------------------------------------------------------


def _context(recipe: ResolvedRecipe) -> BuildContext:
    core = recipe.core
    return BuildContext(
        recipe=recipe,
        torch_dtype=DTYPES[core["dtype"]],
        hub_kwargs={"trust_remote_code": bool(core["trust_remote_code"])},
        on_bad_sample=core["on_bad_sample"],
        hardware=Hardware.probe(),
        max_num_frames=int(core["max_num_frames"]),
        allow_paths_outside_data=bool(core["allow_paths_outside_data"]),
    )


def _announce(recipe: ResolvedRecipe, host: Any, s: Session, ctx: BuildContext) -> None:
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    set_seed(int(recipe.training.get("seed", 42)))
    recipe.core["output_dir"] = str(s.run_dir)
    recipe.runtime.update(world_size=s.world_size, resumed_from=str(s.resume) if s.resume else None, machine=_machine())
    if s.is_main:
        (s.run_dir / "resolved_recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    host.notify("on_run_start", recipe=recipe, run_dir=str(s.run_dir))
    procs = f", {s.world_size} processes" if s.world_size > 1 else ""
    s.say(f"[bold]vlmplug[/] run [cyan]{recipe.name}[/] -> {s.run_dir}  ({ctx.hardware.device_name}{procs})")
    if s.resume:
        s.say(f"  resuming from {s.resume}")
    for note in recipe.notes:
        s.say(f"  note: {note}")
    machine = recipe.runtime["machine"]
    if not ctx.hardware.cuda and machine["load_average"] >= machine["cpus"]:
        s.say(
            f"  [yellow]note[/]: the CPU is busy (load {machine['load_average']:.1f} on {machine['cpus']} cores): "
            f"torch's {machine['torch_threads']} threads will wait on each other and training can be several "
            f"times slower; set num_threads: 1 or OMP_WAIT_POLICY=PASSIVE, or free the CPU"
        )


def _machine() -> dict[str, Any]:
    """Threads, cores and load at the start (a busy CPU slows torch's threaded kernels several times)."""
    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return {"cpus": os.cpu_count() or 1, "torch_threads": torch.get_num_threads(), "load_average": round(load, 2)}


def _build_parts(recipe: ResolvedRecipe, ctx: BuildContext, s: Session) -> Parts:
    """The light components and TrainingArguments: hardware / argument problems surface here."""
    single = recipe.single
    peft = build_component(single["peft"], ctx)
    fusion = build_component(single["fusion"], ctx)
    stack = [build_component(sel, ctx) for sel in recipe.optimizer_stack]
    evaluators = [(sel.name, build_component(sel, ctx)) for sel in recipe.evaluators]
    return Parts(peft, fusion, stack, evaluators, _training_args(recipe, s, ctx, stack))


def _training_args(recipe: ResolvedRecipe, s: Session, ctx: BuildContext, stack: list[Any]) -> Any:
    from transformers import TrainingArguments

    from .trainer import report_targets

    args: dict[str, Any] = {
        "output_dir": str(s.run_dir / "checkpoints"),
        "report_to": "none",
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "save_strategy": "no",
        "logging_steps": 10,
        "use_cpu": not ctx.hardware.cuda,
        "dataloader_num_workers": 0,
        "per_device_train_batch_size": 8,
        "learning_rate": 2e-4,
        "log_level": "warning",
        "include_num_input_tokens_seen": "non_padding",  # tokens/s: the attention mask's ones
        "run_name": s.run_dir.name,  # the trackers' name for the run
    }
    args.update(recipe.training)
    valid = {f.name for f in dataclasses.fields(TrainingArguments)}
    unknown = [k for k in recipe.training_args if k not in valid]
    if unknown:
        raise ConfigError(
            [f"training_args.{k}: not a TrainingArguments field{did_you_mean(k, valid)}" for k in unknown],
            header="training arguments are invalid",
        )
    args.update(recipe.training_args)
    for comp in stack:
        args = comp.update_training_args(args, ctx.hardware, ctx.note)
    args["report_to"] = report_targets(args.get("report_to")) or "none"  # a missing tracker fails here
    try:
        built = TrainingArguments(**{k: v for k, v in args.items() if v is not None})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"training arguments: {e}", header="training arguments are invalid") from e
    recipe.runtime["training_args_full"] = {k: v for k, v in built.to_dict().items() if not k.startswith("_")}
    return built


def _load_data(recipe: ResolvedRecipe, ctx: BuildContext, host: Any = None) -> Data:
    streaming = bool(recipe.core.get("streaming"))  # only the training sets stream (the notes list is shared)
    train_ctx = dataclasses.replace(ctx, streaming=True) if streaming else ctx
    train_sets = [build_component(sel, train_ctx) for sel in recipe.datasets]
    eval_sets = [EvalSet(str(sel.label or sel.name), build_component(sel, ctx)) for sel in recipe.eval_datasets]
    weights = [sel.weight for sel in recipe.datasets]
    if streaming:
        return Data(train=_stream_sources(recipe, ctx, host, train_sets), eval_sets=eval_sets)
    if len(train_sets) == 1 and weights == [1.0]:
        return Data(train=train_sets[0], eval_sets=eval_sets)
    mixture = WeightedMixture(train_sets, weights, seed=int(recipe.training.get("seed", 42)))
    for sel, (read, used) in zip(recipe.datasets, mixture.counts):
        ctx.note(f"datasets: {sel.name} ({sel.options.get('path', '')}): {read} samples x {sel.weight:g} -> {used}")
    return Data(train=mixture, eval_sets=eval_sets)


def _stream_sources(recipe: ResolvedRecipe, ctx: BuildContext, host: Any, train_sets: list[Any]) -> StreamSources:
    """The training datasets to stream (each must have ``stream()``), with the run's notes on it."""
    require_streams(recipe.datasets, train_sets, lambda: _streaming_formats(host))
    core, training = recipe.core, recipe.training
    seed = training.get("data_seed")
    seed = int(training.get("seed", 42) if seed is None else seed)
    names = [f"{sel.name} ({sel.options.get('path', '')})" for sel in recipe.datasets]
    weights = [float(sel.weight) for sel in recipe.datasets]
    sources = StreamSources(train_sets, weights, names, seed, int(core["shuffle_buffer"]))
    order = f"a shuffle buffer of {core['shuffle_buffer']} rows" if core["shuffle_buffer"] else "file order"
    ctx.note(
        f"streaming: training rows are read, checked and tokenised while training ({order}, seed {seed}; "
        f"the data repeats, reshuffled, until max_steps); not used: the tokenised-data cache, "
        f"group_by_length, up-front counts (train_samples; skips and cuts count the rows read)"
    )
    if len(train_sets) > 1:
        for name, weight in zip(names, weights):
            ctx.note(f"datasets: {name}: weight {weight:g} -> {100 * weight / sum(weights):.1f}% of the rows drawn")
    return sources


def _streaming_formats(host: Any) -> list[str]:
    """The registered dataset formats whose factory is declared to return a dataset with ``stream()``."""
    import typing

    out = []
    for spec in getattr(host, "registry", None) or []:
        if spec.family != "dataset_format":
            continue
        try:
            made = typing.get_type_hints(spec.load_factory()).get("return")
        except Exception:  # a factory without resolvable hints: not known to stream
            continue
        if callable(getattr(made, "stream", None)):
            out.append(spec.name)
    return out


def _pretrained_dir(recipe: ResolvedRecipe, ctx: BuildContext, s: Session, host: Any) -> Path | None:
    """The saved vlmplug model the run starts from: ``model:`` itself, or a foreign checkpoint
    converted once (by the main process) into ``imported/`` in the run directory."""
    found = recipe.pretrained
    if not found:
        return None
    if found["format"] == "vlmplug":
        return Path(found["model"])
    target = s.run_dir / "imported"
    if s.is_main and not (target / "vlmplug_model.json").is_file():
        from .trainer import save_atomically

        s.say(f"  importing {found['model']} ({found['format']}) into {target}")

        def write(tmp: Path) -> None:
            if not host.import_model(
                model=found["model"], format=found["format"], out_dir=str(tmp), hub_kwargs=ctx.hub_kwargs
            ):
                raise ConfigError(f"model: no plugin imports the {found['format']} format", header="import")

        save_atomically(target, write)
    s.wait()
    return target


def _tokenizer(recipe: ResolvedRecipe, data: Data, ctx: BuildContext, s: Session, pretrained: Path | None) -> Any:
    """The LLM's tokenizer (with the image token), or for a preset LLM a small BPE trained on the
    run's own texts -- trained once, by the main process, and shared through the run directory."""
    core = recipe.core
    if pretrained is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(pretrained / "tokenizer")
        if core.get("chat_template"):
            tokenizer.chat_template = template_text(core["chat_template"])
        return tokenizer
    if core.get("tokenizer") is not None or core["model"] not in PRESETS:
        return load_tokenizer(
            core.get("tokenizer") or core["model"], core["image_token"], ctx.hub_kwargs, core.get("chat_template")
        )
    cache = s.run_dir / CACHE / "tokenizer"
    with s.main_first():
        if s.is_main:
            tokenizer = build_tiny_tokenizer(sample_texts(data.view), core["image_token"])
            if s.world_size > 1:
                tokenizer.save_pretrained(cache)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(cache)
    if core.get("chat_template"):
        tokenizer.chat_template = template_text(core["chat_template"])
    ctx.note(f"tokenizer: BPE with {len(tokenizer)} tokens trained on the run's texts ({core['model']})")
    return tokenizer


def _build_model(
    recipe: ResolvedRecipe,
    parts: Parts,
    tokenizer: Any,
    ctx: BuildContext,
    s: Session,
    host: Any,
    pretrained: Path | None,
) -> Any:
    if pretrained is None:
        vlm = assemble_model(
            single=recipe.single,
            fusion=parts.fusion,
            tokenizer=tokenizer,
            core=recipe.core,
            ctx=ctx,
            load_kwargs=llm_load_kwargs([parts.peft, *parts.stack]),
        )
    else:
        vlm = _load_pretrained(recipe, pretrained, host, llm_load_kwargs([parts.peft, *parts.stack]))
    seen = len(ctx.notes)
    vlm = parts.peft.apply(vlm)
    for note in ctx.notes[seen:]:  # what the method chose or found (e.g. spectrum's selection)
        s.say(f"  note: {note}")
    vlm = apply_module_plan(vlm, module_plans(recipe))
    for comp in parts.stack:
        vlm = comp.patch_model(vlm)
    trainable, total = vlm.trainable_parameters()
    s.say(
        f"  model: {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable "
        f"({100 * trainable / max(total, 1):.1f}%), {vlm.tokens_per_image} tokens/image"
    )
    rows = module_table(vlm, parts.train_args.learning_rate, recipe.single["peft"].name)
    recipe.runtime["modules"] = rows
    s.say("  " + "; ".join(f"{r['part']}: {_row_text(r)}" for r in rows))
    host.notify("on_model_built", model=vlm, recipe=recipe)
    return vlm


def module_plans(recipe: ResolvedRecipe) -> dict[str, ModulePlan]:
    """The recipe's resolved ``modules:`` spec as plans."""
    return {part: ModulePlan(**plan) for part, plan in (recipe.core.get("modules") or {}).items()}


def _row_text(row: dict[str, Any]) -> str:
    if not row["trainable"]:
        return "frozen"
    what = "full" if row["train"] == "full" else f"{row['train']} ({row['trainable'] / 1e6:.2f}M)"
    return f"{what} @ lr {row['learning_rate']:g}"


def _load_pretrained(recipe: ResolvedRecipe, pretrained: Path, host: Any, load_kwargs: dict[str, Any]) -> Any:
    """The saved model, adapters merged, ready for the recipe's PEFT method (its LLM loaded again with
    ``load_kwargs``, e.g. quantised for QLoRA); it will be saved self-contained (tower and base LLM
    included), since its weights are no hub checkpoint's."""
    from .assemble import model_manifest
    from .model_io import load, selections_from_manifest

    vlm = load(pretrained, host=host, llm_load_kwargs=load_kwargs).train()
    if vlm.peft_method is not None:
        vlm = vlm.peft_method.merge(vlm)
    vlm.peft_method = None
    saved = vlm.manifest
    single = {
        **selections_from_manifest(
            {k: v for k, v in saved["components"].items() if k != "peft"}, host.registry, str(pretrained)
        ),
        "peft": recipe.single["peft"],
    }
    core = {
        **saved["core"],
        "max_seq_length": recipe.core["max_seq_length"],
        "chat_template": recipe.core.get("chat_template"),
    }
    vlm.manifest = {
        **model_manifest(single, core, True, vlm.tokens_per_image),
        "save_vision_encoder": True,
        "initialised_from": str(recipe.pretrained["model"]) if recipe.pretrained else str(pretrained),
    }
    return vlm


def sample_encoder(recipe: ResolvedRecipe, vlm: Any, tokenizer: Any) -> SampleEncoder:
    """The tokenizer side of the data pipeline for this run's model (see :func:`.assemble.make_sample_encoder`)."""
    return make_sample_encoder(recipe.core, recipe.single, vlm, tokenizer)


def _training_data(recipe: ResolvedRecipe, vlm: Any, tokenizer: Any, parts: Parts, data: Data, s: Session) -> Training:
    """Check and tokenise the training set once (main process; the others read its result); under
    streaming, the IterableDataset that does it while training, in every process."""
    if isinstance(data.train, StreamSources):
        return _streaming_data(recipe, vlm, tokenizer, parts, data.train, s)
    core = recipe.core
    encoder = sample_encoder(recipe, vlm, tokenizer)
    skip = core["on_bad_sample"] == "skip"
    cache = s.run_dir / CACHE / "train_encoded.json"
    with s.main_first():
        if s.is_main:
            dataset = _encode_or_reuse(recipe, data, encoder, tokenizer, skip, s)
            if s.world_size > 1:
                cache.parent.mkdir(parents=True, exist_ok=True)  # a preset's tokenizer made it; a hub LLM's did not
                cache.write_text(
                    json.dumps({"items": dataset.items, "skipped": dataset.skipped, "truncated": dataset.truncated})
                )
        else:
            cached = json.loads(cache.read_text())
            dataset = EncodedDataset(
                data.train,
                encoder,
                "datasets",
                skip,
                items=[tuple(i) for i in cached["items"]],
                skipped=cached["skipped"],
                truncated=cached["truncated"],
            )
    training = Training(
        dataset, TrainCollator(tokenizer.pad_token_id, vlm.vision_encoder.preprocess), encoder, encoded_here=s.is_main
    )
    for comp in parts.stack:
        training.collator = comp.wrap_collator(training.collator)
    training.skips.extend(dataset.skipped)
    training.truncated = list(dataset.truncated)
    if dataset.truncated:
        s.say(
            f"  [yellow]cut {len(dataset.truncated)} over-long training sample(s) to max_seq_length "
            f"{recipe.core['max_seq_length']}[/] (on_overlength: truncate-text; first: {dataset.truncated[0]})"
        )
    if dataset.skipped:
        s.say(
            f"  [yellow]skipped {len(dataset.skipped)} bad training sample(s)[/] (on_bad_sample: skip); "
            f"reasons in metrics.json"
        )
    return training


def _streaming_data(
    recipe: ResolvedRecipe, vlm: Any, tokenizer: Any, parts: Parts, sources: StreamSources, s: Session
) -> Training:
    """The streaming training set (:mod:`.streaming`): each process reads its own share of the rows, so
    accelerate must not dispatch batches from the main process (see the docstring there)."""
    from vlmplug.errors import DataError

    encoder = sample_encoder(recipe, vlm, tokenizer)
    if not sources.head(1):
        raise DataError("datasets: no usable samples: the training files hold no good row", reason="empty")
    args = parts.train_args
    args.accelerator_config.dispatch_batches = False
    full = recipe.runtime.get("training_args_full")
    if isinstance(full, dict) and isinstance(full.get("accelerator_config"), dict):
        full["accelerator_config"]["dispatch_batches"] = False
    dataset = StreamingDataset(
        sources,
        encoder,
        skip_bad=recipe.core["on_bad_sample"] == "skip",
        rank=args.process_index,
        world_size=args.world_size,
        batch_size=args.train_batch_size,
        split_batches=bool(args.accelerator_config.split_batches),
    )
    report = StreamReport()
    training = Training(dataset, TrainCollator(tokenizer.pad_token_id, vlm.vision_encoder.preprocess), encoder)
    training.skips, training.truncated = report, report.truncated  # filled while training
    for comp in parts.stack:
        training.collator = comp.wrap_collator(training.collator)
    workers = args.dataloader_num_workers
    where = f"{workers} DataLoader worker(s)" if workers else "the training process"
    s.say(f"  streaming: rows are read and encoded by {where} in each of {s.world_size} process(es)")
    return training


def _size(training: Training) -> int | None:
    """How many training samples there are; ``None`` under streaming (nothing counts them up front)."""
    return None if isinstance(training.dataset, StreamingDataset) else len(training.dataset)


def _encode_or_reuse(
    recipe: ResolvedRecipe, data: Data, encoder: SampleEncoder, tokenizer: Any, skip: bool, s: Session
) -> EncodedDataset:
    """The encoded training set: from the tokenised-data cache when an earlier run encoded the same data
    the same way (``cache_tokenized``), else tokenised now (and cached)."""
    from rich.progress import Progress

    from .token_cache import cache_key, load_items, save_items

    folder = None
    if recipe.core["cache_tokenized"]:
        folder = s.run_dir.resolve().parent / ".tokenized" / cache_key(recipe, tokenizer, encoder)
        cached = load_items(folder)
        if cached is not None:
            items, skipped, truncated = cached
            s.say(f"  tokenised data: {len(items)} samples from the cache ({folder})")
            return EncodedDataset(
                data.train, encoder, "datasets", skip, items=items, skipped=skipped, truncated=truncated
            )
    with Progress(console=s.console, transient=True) as progress:
        task = progress.add_task("tokenizing", total=len(data.train))
        dataset = EncodedDataset(data.train, encoder, "datasets", skip, progress=lambda k: progress.advance(task, k))
    if folder is not None:
        save_items(folder, dataset.items, dataset.skipped, dataset.truncated)
    return dataset


def _evaluation(
    recipe: ResolvedRecipe,
    vlm: Any,
    tokenizer: Any,
    parts: Parts,
    data: Data,
    training: Training,
    s: Session,
    host: Any,
) -> Evaluation:
    evaluation = Evaluation(
        vlm=vlm,
        sets=data.eval_sets,
        evaluators=parts.evaluators,
        encoder=training.encoder,
        tokenizer=tokenizer,
        preprocess=vlm.vision_encoder.preprocess,
        core=recipe.core,
        skip_bad=recipe.core["on_bad_sample"] == "skip",
        console=s.console,
        run_dir=s.run_dir,
        notify=host.notify,
    )
    if not evaluation.enabled:
        s.say("  note: no eval_datasets or evaluators: skipping held-out evaluation")
    return evaluation


def _evaluate_before(
    recipe: ResolvedRecipe, evaluation: Evaluation, data: Data, metrics: dict[str, Any], s: Session
) -> None:
    if evaluation.enabled and s.is_main:
        metrics["baselines"] = evaluation.baselines(data.view)
        if recipe.core["eval_before_training"]:
            metrics["before"] = evaluation.run("before")
    s.wait()


def _train(
    recipe: ResolvedRecipe,
    parts: Parts,
    vlm: Any,
    training: Training,
    evaluation: Evaluation,
    s: Session,
    host: Any,
    metrics: dict[str, Any],
) -> None:
    import os

    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .trainer import (
        METRICS_FILE,
        CurveCallback,
        LifecycleCallback,
        MetricsFile,
        RichProgressCallback,
        TimeBudget,
        TrainClock,
        VLMTrainer,
        eval_record,
    )

    args = parts.train_args
    samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * s.world_size
    clock = TrainClock(samples_per_step, _checkpoint_state(s.resume).get("train_seconds", 0.0))
    if s.resume is not None and _finished(s.resume, args, _size(training) or 0, s.world_size, vlm, s):
        from transformers import TrainerState

        state = TrainerState.load_from_json(str(s.resume / "trainer_state.json"))
        clock.start_step = state.global_step
        metrics["train"] = _train_metrics(state, clock, samples_per_step)
        return
    progress = RichProgressCallback(s.console, clock)
    callbacks: list[Any] = [clock, LifecycleCallback(host, clock, s.is_main)]
    monitor = MetricsFile(s.run_dir / METRICS_FILE, clock, samples_per_step) if s.is_main else None
    if monitor is not None:
        callbacks += [monitor, progress]
    budget = TimeBudget(recipe.core["max_train_seconds"], clock) if recipe.core.get("max_train_seconds") else None
    if budget is not None:
        callbacks.append(budget)
    curve = None
    if evaluation.enabled and monitor is not None and recipe.core.get("eval_every_steps"):
        label, write = evaluation.sets[0].label, monitor.write
        curve = CurveCallback(
            recipe.core["eval_every_steps"],
            evaluation.curve_point,
            clock,
            s.say,
            on_point=lambda p: write(eval_record(p["step"], p["train_seconds"], {label: p["metrics"]}, p["samples"])),
        )
        callbacks.append(curve)
    tb_env = "TENSORBOARD_LOGGING_DIR"  # read when the Trainer builds its TensorBoardCallback
    tb_here = "tensorboard" in args.report_to and not os.environ.get(tb_env)
    if tb_here:
        os.environ[tb_env] = str(s.run_dir / "tensorboard")
    try:
        trainer = VLMTrainer(
            model=vlm,
            args=args,
            train_dataset=training.dataset,
            data_collator=training.collator,
            callbacks=callbacks,
            optimizers=(_optimizer(recipe, parts, vlm, args), None),
            clock=clock,
            on_skipped=training.skips.extend,
        )
    finally:
        if tb_here:
            os.environ.pop(tb_env, None)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    try:
        trainer.train(resume_from_checkpoint=str(s.resume) if s.resume else None)
    finally:
        progress.stop()
        if monitor is not None:
            monitor.close()
        _drop_wrappers(trainer)
    metrics["train"] = _train_metrics(trainer.state, clock, samples_per_step)
    summarize = getattr(training.collator, "summarize", None)  # e.g. packing efficiency
    if callable(summarize):
        totals: dict[str, float] = {}
        for part in _gather(s, trainer.batch_totals):  # every process's batches
            for name, value in part.items():
                totals[name] = totals.get(name, 0) + value
        if totals:
            metrics["train"].update(summarize(totals))
            s.say("  " + ", ".join(f"{k} {v}" for k, v in summarize(totals).items()))
    if budget is not None and budget.stopped_at is not None:
        metrics["train"]["stopped_by_time_budget"] = True
        s.say(
            f"  stopped after {recipe.core['max_train_seconds']:g} s of training (max_train_seconds), "
            f"at step {budget.stopped_at}"
        )
    if curve is not None:
        metrics["train"]["eval_seconds_during_training"] = round(curve.eval_seconds, 1)
        metrics["curve"] = curve.points


def _drop_wrappers(trainer: Any) -> None:
    """Release the DDP / accelerate wrappers of the model, so the process group can end cleanly."""
    trainer.accelerator.free_memory()
    trainer.model_wrapped = trainer.model


def _optimizer(recipe: ResolvedRecipe, parts: Parts, vlm: Any, args: Any) -> Any:
    """The optimizer one stack component builds (``None``: the Trainer's own); two is an error."""
    built = [(sel.name, comp.create_optimizer(vlm, args)) for sel, comp in zip(recipe.optimizer_stack, parts.stack)]
    built = [(name, opt) for name, opt in built if opt is not None]
    if len(built) > 1:
        raise ConfigError(
            f"optimizer stack: {', '.join(n for n, _ in built)} each build the optimizer; keep one",
            header="optimizer stack",
        )
    return built[0][1] if built else None  # None: VLMTrainer.create_optimizer (per-module groups)


def _checkpoint_state(checkpoint: Path | None) -> dict[str, Any]:
    from .trainer import CHECKPOINT_STATE

    if checkpoint is None:
        return {}
    try:
        return json.loads((checkpoint / CHECKPOINT_STATE).read_text())
    except (OSError, ValueError):
        return {}


def planned_steps(args: Any, n_samples: int, world_size: int) -> int:
    """The optimizer steps a run makes, as transformers' Trainer counts them."""
    if args.max_steps > 0:
        return int(args.max_steps)
    per_step = args.per_device_train_batch_size * world_size
    batches = n_samples // per_step if args.dataloader_drop_last else math.ceil(n_samples / per_step)
    per_epoch = batches // args.gradient_accumulation_steps + int(batches % args.gradient_accumulation_steps > 0)
    return math.ceil(args.num_train_epochs * per_epoch)


def _finished(checkpoint: Path, args: Any, n_samples: int, world_size: int, vlm: Any, s: Session) -> bool:
    """Whether ``checkpoint`` already reached the planned steps; if so its weights are loaded, so that
    resuming a finished run changes nothing (the Trainer would take one more step)."""
    from safetensors.torch import load_file

    done = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    planned = planned_steps(args, n_samples, world_size)
    if done < planned:
        return False
    vlm.load_state_dict(load_file(str(checkpoint / "model.safetensors")), strict=False)
    s.say(f"  {checkpoint} is at step {done} of {planned}: nothing left to train")
    return True


def _train_metrics(state: Any, clock: Any, samples_per_step: int) -> dict[str, Any]:
    """Whole-run figures, also after a resume (the log history is restored from the checkpoint)."""
    history = [h for h in state.log_history if "loss" in h and "step" in h]
    weighted, prev = 0.0, 0
    for h in history:  # each logged loss is the mean since the previous log
        weighted += h["loss"] * (h["step"] - prev)
        prev = h["step"]
    steps = state.global_step
    return {
        "steps": steps,
        "wall_time_s": round(clock.seconds, 2),
        "samples": steps * samples_per_step,
        "samples_per_s": round(steps * samples_per_step / max(clock.seconds, 1e-9), 2),
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "train_loss": weighted / prev if prev else None,
    }


def _save_model(vlm: Any, s: Session, host: Any) -> None:
    """The main process writes the model, after every process made a sharded one whole again."""
    from .distributed import gather_sharded_parameters
    from .trainer import save_atomically

    gather_sharded_parameters(vlm, s.say)
    if s.is_main:
        model_dir = save_atomically(s.run_dir / "model", vlm.save_pretrained)
        host.notify("on_checkpoint_saved", path=str(model_dir))
    s.wait()


def _finish_curve(metrics: dict[str, Any], evaluation: Evaluation) -> None:
    """The curve's last point is the final evaluation itself (first eval set), so they agree."""
    if "curve" not in metrics:
        return
    first = evaluation.sets[0].label
    after = metrics["after"][first]
    n = min(len(evaluation.sets[0].samples), evaluation.max_samples or len(evaluation.sets[0].samples))
    train = metrics["train"]
    metrics["curve"].append(
        {"step": train["steps"], "train_seconds": train["wall_time_s"], "samples": n, "metrics": after}
    )


def resume_command(recipe: ResolvedRecipe, run_dir: Path, argv: list[str] | None) -> str:
    """The command that resumes this run: the user's own ``vlmplug train ...`` when known (its
    ``--output-dir`` replaced), with ``--output-dir RUN --set resume_from_checkpoint=last``."""
    import shlex

    args = list(argv or [])
    if len(args) >= 2 and args[0] == "vlmplug" and args[1] == "train":
        kept, rest = [], args[2:]
        while rest:
            a, *rest = rest
            if a in ("-o", "--output-dir") or a.startswith("--output-dir="):
                rest = rest[1:] if "=" not in a else rest
            elif a in ("-s", "--set") and rest and rest[0].startswith("resume_from_checkpoint="):
                rest = rest[1:]
            else:
                kept.append(a)
        base = shlex.join(["vlmplug", "train", *kept])
    else:
        source = recipe.source.removeprefix("vlmplug:") if not recipe.source.startswith("<") else "RECIPE"
        base = f"vlmplug train {source} (plus your --plugins / --set options)"
    return f"{base} --output-dir {shlex.quote(str(run_dir))} --set resume_from_checkpoint=last"


def _say_how_to_resume(recipe: ResolvedRecipe, s: Session) -> None:
    from .trainer import complete_checkpoints

    found = complete_checkpoints(s.run_dir / "checkpoints")
    if found:
        command = resume_command(recipe, s.run_dir, s.info.get("command"))
        s.say(f"[yellow]interrupted[/]: last checkpoint {found[-1]}\nresume with:  {command}")
    else:
        s.say(
            "[yellow]interrupted[/]: no checkpoint was saved (save_strategy: steps with save_steps: N keeps them); "
            "the run has to start again"
        )


def _write_outputs(
    recipe: ResolvedRecipe,
    metrics: dict[str, Any],
    evaluation: Evaluation,
    training: Training,
    s: Session,
    ctx: BuildContext,
    status: str,
    t_start: float,
) -> None:
    """metrics.json, resolved_recipe.yaml and run.json -- also when the run failed part-way -- then the
    final evaluation's line in metrics.jsonl and the loss curve drawn from it."""
    from .curves import write_curves
    from .trainer import METRICS_FILE, append_metrics_line, eval_record, read_metrics_lines

    skips = _gather_skips(training.skips, s)
    tokenized_on = _gather(s, training.encoded_here)
    truncated = training.truncated
    if isinstance(training.dataset, StreamingDataset) and s.world_size > 1:  # each process met its own cuts
        truncated = list(dict.fromkeys(w for part in _gather(s, training.truncated) for w in part))
    if not s.is_main:
        return
    metrics["status"] = status
    metrics["world_size"] = s.world_size
    metrics["tokenized_on_processes"] = [rank for rank, here in enumerate(tokenized_on) if here]
    metrics["skipped"] = {"train": skips.to_dict(), "eval": evaluation.skips.to_dict()}
    metrics["truncated"] = {"train": len(truncated), "first": truncated[:5]}
    if "after" in metrics:
        name, value = evaluation.primary(metrics["after"])
        before = evaluation.primary(metrics["before"])[1] if "before" in metrics else None
        metrics["primary"] = {"metric": name, "before": before, "after": value}
    metrics["wall_time_s"] = round(time.perf_counter() - t_start, 2)
    recipe.notes.extend(n for n in ctx.notes if n not in recipe.notes)
    (s.run_dir / "resolved_recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    (s.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
    s.mark(status)
    records = read_metrics_lines(s.run_dir / METRICS_FILE)
    train_records = [r for r in records if r.get("type") == "train"]
    if "after" in metrics and "train" in metrics:
        step = metrics["train"]["steps"]
        if not any(r.get("type") == "eval" and r.get("final") and r.get("step") == step for r in records):
            final = eval_record(step, metrics["train"]["wall_time_s"], metrics["after"], final=True)
            append_metrics_line(s.run_dir / METRICS_FILE, final)
    files = ["model/", "metrics.json"] + ([METRICS_FILE] if records else [])
    if train_records:
        try:
            keys = [f"{name}/{ev.primary_metric}" for name, ev in evaluation.evaluators]
            files.append(write_curves(s.run_dir, train_records, metrics.get("curve", []), keys).name)
        except Exception as e:  # a drawing problem must not hide the run's outcome
            log.warning("loss curve not written: %s: %s", type(e).__name__, e)
    files += ["resolved_recipe.yaml", "train.log"] + (["tensorboard/"] if (s.run_dir / "tensorboard").is_dir() else [])
    if status == "finished":
        _summary(s, metrics, evaluation)
        for line in skips.lines() + evaluation.skips.lines():
            s.say(f"  [yellow]skipped[/] {line}")
        s.say(f"saved to {s.run_dir} ({', '.join(files)}) in {metrics['wall_time_s']:.0f}s")


def _gather(s: Session, value: Any) -> list[Any]:
    """``value`` of every process, in rank order (a collective: every process calls it)."""
    if s.world_size == 1:
        return [value]
    from accelerate.utils import gather_object

    return list(gather_object([value]))


def _gather_skips(local: SkipReport, s: Session) -> SkipReport:
    """The skip reports of every process, merged on the main process."""
    if s.world_size == 1:
        return local
    from accelerate.utils import gather_object

    merged = SkipReport()
    merged.extend(gather_object(local.items))
    return merged


def _summary(s: Session, metrics: dict[str, Any], evaluation: Evaluation) -> None:
    """One table: every scalar metric of every eval set and evaluator, before and after, and baselines."""
    from rich.table import Table

    if "after" not in metrics:
        return
    table = Table(title="held-out evaluation")
    for col, justify in (("eval set / evaluator / metric", "left"), ("before", "right"), ("after", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    before = metrics.get("before", {})
    for label, per_ev in metrics["after"].items():
        for name, after in per_ev.items():
            flat_after = flatten_metrics(after)
            flat_before = flatten_metrics(before.get(label, {}).get(name, {}))
            for key, value in flat_after.items():
                table.add_row(f"{label} / {name} / {key}", _fmt(flat_before.get(key)), _fmt(value))
            for base, values in metrics.get("baselines", {}).get(label, {}).get(name, {}).items():
                primary = next(ev.primary_metric for n, ev in evaluation.evaluators if n == name)
                value = values.get(primary)
                table.add_row(f"{label} / {name} / {primary} ({base} baseline)", _fmt(value), _fmt(value))
    s.console.print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}" if abs(v) > 1 else f"{100 * v:.1f}%"
    return str(v)
