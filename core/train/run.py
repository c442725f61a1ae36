"""One training run, end to end (DESIGN.md §4).

recipe -> components -> tokenizer + image processor -> encoder, LLM, connector, fusion -> PEFT ->
stack patches -> datasets (format -> canonical -> tokens) -> eval before -> Trainer -> atomic save ->
eval after -> metrics.json, resolved_recipe.yaml, train.log and a summary table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from vlmplug.errors import ConfigError, PluginError, VlmplugError, did_you_mean
from vlmplug.recipe import ResolvedRecipe, Selection

from .data import EncodedDataset, SampleEncoder, TrainCollator, spread_indices
from .evaluate import generate_records, prior_answers, score_records
from .hardware import Hardware
from .llm import PRESETS, build_tiny_tokenizer, load_llm, load_tokenizer

__all__ = ["BuildContext", "RunResult", "run", "pick_run_dir"]

log = logging.getLogger("vlmplug")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


@dataclass
class BuildContext:
    """What component factories receive besides their own config."""

    recipe: ResolvedRecipe
    torch_dtype: Any
    hub_kwargs: dict[str, Any]
    on_bad_sample: str
    hardware: Hardware
    notes: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        self.notes.append(message)
        log.info(message)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    model: Any = None
    tokenizer: Any = None


def build_component(sel: Selection, ctx: BuildContext, **kwargs: Any) -> Any:
    """Call a selected component's factory; errors name the plugin and the component."""
    factory = sel.spec.load_factory()
    try:
        return factory(sel.config(), ctx, **kwargs)
    except VlmplugError:
        raise
    except Exception as exc:
        raise PluginError(f"{sel.spec.plugin} ({sel.spec.provider})",
                          f"building {sel.spec.family} '{sel.name}'", exc) from exc


def pick_run_dir(recipe: ResolvedRecipe, output_dir: str | None) -> Path:
    explicit = output_dir or recipe.core.get("output_dir")
    resume = recipe.core.get("resume_from_checkpoint")
    if explicit:
        path = Path(explicit)
        if path.exists() and any(path.iterdir()) and not recipe.core["overwrite_output_dir"] and not resume:
            raise ConfigError(f"output_dir {path} is not empty; choose another, or set overwrite_output_dir: true",
                              header="output directory")
        return path
    base = Path("runs") / recipe.name
    path, n = base, 1
    while path.exists() and any(path.iterdir()) and not resume:
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _texts(samples: Any, limit: int = 5000) -> list[str]:
    return [m["content"] for i in spread_indices(len(samples), limit) for m in samples[i]["messages"]]


def _training_args(recipe: ResolvedRecipe, run_dir: Path, hardware: Hardware, stack: list[Any],
                   ctx: BuildContext) -> Any:
    from transformers import TrainingArguments

    args: dict[str, Any] = {
        "output_dir": str(run_dir / "checkpoints"), "report_to": "none", "disable_tqdm": True,
        "remove_unused_columns": False, "save_strategy": "no", "logging_steps": 10, "use_cpu": not hardware.cuda,
        "dataloader_num_workers": 0, "per_device_train_batch_size": 8, "learning_rate": 2e-4,
    }
    args.update(recipe.training)
    valid = {f.name for f in dataclasses.fields(TrainingArguments)}
    unknown = [k for k in recipe.training_args if k not in valid]
    if unknown:
        raise ConfigError([f"training_args.{k}: not a TrainingArguments field{did_you_mean(k, valid)}" for k in unknown],
                          header="training arguments are invalid")
    args.update(recipe.training_args)
    for comp in stack:
        if hasattr(comp, "update_training_args"):
            args = comp.update_training_args(args, hardware, ctx.note)
    args = {k: v for k, v in args.items() if v is not None}
    try:
        return TrainingArguments(**args)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"training arguments: {e}", header="training arguments are invalid") from e


def run(recipe: ResolvedRecipe, host: Any, *, output_dir: str | None = None, console: Any = None) -> RunResult:
    from rich.console import Console

    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    core = recipe.core
    if core.get("num_threads"):
        torch.set_num_threads(int(core["num_threads"]))
    hardware = Hardware.probe()
    run_dir = pick_run_dir(recipe, output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "train.log"
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    ctx = BuildContext(recipe=recipe, torch_dtype=DTYPES[core["dtype"]],
                       hub_kwargs={"trust_remote_code": bool(core["trust_remote_code"])},
                       on_bad_sample=core["on_bad_sample"], hardware=hardware)
    try:
        return _run(recipe, host, run_dir, log_path, console, ctx, hardware, t_start)
    finally:
        log.removeHandler(handler)
        handler.close()


def _say(console: Any, ctx: BuildContext, message: str) -> None:
    from rich.text import Text

    console.print(message, highlight=False)
    log.info(Text.from_markup(message).plain)


def _run(recipe: ResolvedRecipe, host: Any, run_dir: Path, log_path: Path, console: Any, ctx: BuildContext,
         hardware: Hardware, t_start: float) -> RunResult:
    from rich.progress import Progress
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    core = recipe.core
    seed = int(recipe.training.get("seed", 42))
    set_seed(seed)
    (run_dir / "resolved_recipe.yaml").write_text(recipe.to_yaml())
    host.notify("on_run_start", recipe=recipe, run_dir=str(run_dir))
    _say(console, ctx, f"[bold]vlmplug[/] run [cyan]{recipe.name}[/] -> {run_dir}  ({hardware.device_name})")
    for note in recipe.notes:
        _say(console, ctx, f"  note: {note}")

    # light component objects first: hardware / argument problems surface before any model loads
    single = recipe.single
    peft = build_component(single["peft"], ctx)
    fusion = build_component(single["fusion"], ctx)
    stack = [build_component(s, ctx) for s in recipe.optimizer_stack]
    evaluators = [(s.name, build_component(s, ctx)) for s in recipe.evaluators]
    train_args = _training_args(recipe, run_dir, hardware, stack, ctx)

    # data
    train_sets = [build_component(s, ctx) for s in recipe.datasets]
    eval_sets = [build_component(s, ctx) for s in recipe.eval_datasets]
    train_samples = _concat(train_sets)
    eval_samples = _concat(eval_sets) if eval_sets else None

    # tokenizer, vision tower, connector, LLM, fusion
    model_name = core["model"]
    image_token = core["image_token"]
    if core.get("tokenizer") is None and model_name in PRESETS:
        tokenizer = build_tiny_tokenizer(_texts(train_samples), image_token)
        ctx.note(f"tokenizer: BPE with {len(tokenizer)} tokens trained on the run's texts ({model_name})")
    else:
        tokenizer = load_tokenizer(core.get("tokenizer") or model_name, image_token, ctx.hub_kwargs,
                                   core.get("chat_template"))
    if core.get("chat_template") and model_name in PRESETS:
        tokenizer.chat_template = core["chat_template"]
    encoder_tower = build_component(single["vision_encoder"], ctx)
    load_kwargs: dict[str, Any] = {}
    for comp in [peft, *stack]:
        if hasattr(comp, "model_load_kwargs"):
            load_kwargs.update(comp.model_load_kwargs())
    llm, from_preset = load_llm(model_name, tokenizer, dtype=ctx.torch_dtype if model_name not in PRESETS
                                else (torch.float32 if ctx.torch_dtype == "auto" else ctx.torch_dtype),
                                overrides=dict(core.get("model_config") or {}), load_kwargs=load_kwargs,
                                hub_kwargs=ctx.hub_kwargs, attn_implementation=core["attn_implementation"])
    hidden = llm.get_input_embeddings().weight.shape[1]
    connector = build_component(single["connector"], ctx, in_dim=encoder_tower.hidden_size, out_dim=hidden,
                                num_input_tokens=encoder_tower.num_patches)
    connector.to(next(llm.parameters()).dtype)
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    vlm = fusion.build(llm=llm, vision_encoder=encoder_tower, connector=connector, image_token_id=image_token_id)
    vlm.manifest = {"components": recipe.components(), "llm_preset": model_name if from_preset else None,
                    "model": model_name}
    vlm = peft.apply(vlm)
    for comp in stack:
        if hasattr(comp, "patch_model"):
            vlm = comp.patch_model(vlm)
    trainable, total = vlm.trainable_parameters()
    _say(console, ctx, f"  model: {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable "
                       f"({100 * trainable / max(total, 1):.1f}%), {fusion.placeholder_tokens(connector)} tokens/image")
    host.notify("on_model_built", model=vlm, recipe=recipe)

    encoder = SampleEncoder(tokenizer, image_token, fusion.placeholder_tokens(connector), core["max_seq_length"])
    skip = core["on_bad_sample"] == "skip"
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("tokenizing", total=len(train_samples))
        train_data = EncodedDataset(train_samples, encoder, "datasets", skip,
                                    progress=lambda k: progress.advance(task, k))
    if train_data.skipped:
        _say(console, ctx, f"  [yellow]skipped {len(train_data.skipped)} bad training sample(s)[/] "
                           f"(on_bad_sample: skip); first: {train_data.skipped[0]}")
    collator = TrainCollator(tokenizer.pad_token_id, encoder_tower.preprocess)
    for comp in stack:
        if hasattr(comp, "wrap_collator"):
            collator = comp.wrap_collator(collator)

    metrics: dict[str, Any] = {"recipe": recipe.name, "train_samples": len(train_data),
                               "skipped_samples": len(train_data.skipped)}
    do_eval = eval_samples is not None and evaluators
    if not do_eval:
        ctx.note("no eval_datasets or evaluators: skipping held-out evaluation")

    def evaluate(label: str, limit: int | None = None, blank: bool | None = None, save: bool = True) -> dict[str, Any]:
        name, ev = evaluators[0]
        limit = core.get("eval_max_samples") if limit is None else limit
        n = len(eval_samples) if limit is None else min(limit, len(eval_samples))
        kw = dict(evaluator=ev, encoder=encoder, tokenizer=tokenizer, preprocess=encoder_tower.preprocess,
                  batch_size=core["eval_batch_size"], max_new_tokens=core["eval_max_new_tokens"], limit=limit)
        blank = core["eval_blank_images"] if blank is None else blank
        passes = 2 if blank else 1
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"eval {label}", total=n * passes)
            records = generate_records(vlm, eval_samples, progress=lambda k: progress.advance(task, k), **kw)
            result = score_records(ev, records)
            if blank:
                blank = generate_records(vlm, eval_samples, blank_images=True,
                                         progress=lambda k: progress.advance(task, k), **kw)
                result["blank_image_accuracy"] = score_records(ev, blank)["accuracy"]
        others = {}
        for other_name, other in evaluators[1:]:
            others[other_name] = score_records(other, records)
        if others:
            result["evaluators"] = {name: {k: v for k, v in result.items()}, **others}
        if save:
            with (run_dir / f"predictions_{label}.jsonl").open("w", encoding="utf-8") as fh:
                for rec in records:
                    fh.write(json.dumps(rec) + "\n")
        host.notify("on_eval_end", results={"label": label, **result})
        return result

    if do_eval:
        name, ev = evaluators[0]
        prior = prior_answers(train_samples, ev)
        prior_records = [{"prediction": prior.get(s.get("question_type"), next(iter(prior.values()))),
                          ev.reference_key: ev.references(s),
                          **({"question_type": s["question_type"]} if "question_type" in s else {})}
                         for s in (eval_samples[i] for i in range(min(len(eval_samples),
                                                                       core.get("eval_max_samples") or 10**9)))]
        metrics["prior_accuracy"] = score_records(ev, prior_records)["accuracy"]
        if core["eval_before_training"]:
            metrics["before"] = evaluate("before")

    # train
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .trainer import CurveCallback, LifecycleCallback, RichProgressCallback, VLMTrainer, save_atomically

    samples_per_step = train_args.per_device_train_batch_size * train_args.gradient_accumulation_steps
    callbacks = [LifecycleCallback(host, log_path), RichProgressCallback(console, samples_per_step)]
    curve = None
    if do_eval and core.get("eval_every_steps"):
        curve = CurveCallback(core["eval_every_steps"], lambda: evaluate(
            "curve", limit=core["eval_curve_samples"], blank=False, save=False), console)
        callbacks.append(curve)
    builders = [(sel.name, comp) for sel, comp in zip(recipe.optimizer_stack, stack) if hasattr(comp, "create_optimizer")]
    if len(builders) > 1:
        raise ConfigError(f"optimizer stack: {', '.join(n for n, _ in builders)} each build the optimizer; keep one",
                          header="optimizer stack")
    optimizer = builders[0][1].create_optimizer(vlm, train_args) if builders else None
    trainer = VLMTrainer(model=vlm, args=train_args, train_dataset=train_data, data_collator=collator,
                         callbacks=callbacks, optimizers=(optimizer, None))
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    resume = core.get("resume_from_checkpoint")
    t0 = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=True if resume == "last" else resume)
    train_time = time.perf_counter() - t0
    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics["train"] = {
        "steps": trainer.state.global_step, "wall_time_s": round(train_time, 2),
        "samples_per_s": round(trainer.state.global_step * samples_per_step / max(train_time, 1e-9), 2),
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "train_loss": out.training_loss,
    }
    if curve is not None:
        metrics["train"]["eval_seconds_during_training"] = round(curve.eval_time, 1)
        metrics["curve"] = curve.points

    # save (atomic), then evaluate the trained model
    def write(tmp: Path) -> None:
        vlm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp / "tokenizer")
        encoder_tower.image_processor.save_pretrained(tmp / "processor")

    model_dir = save_atomically(run_dir / "model", write)
    host.notify("on_checkpoint_saved", path=str(model_dir))
    if do_eval:
        metrics["after"] = evaluate("after")
    metrics["wall_time_s"] = round(time.perf_counter() - t_start, 2)
    recipe.notes.extend(n for n in ctx.notes if n not in recipe.notes)
    resolved = recipe.to_dict()
    resolved["training_args_full"] = {k: v for k, v in train_args.to_dict().items() if not k.startswith("_")}
    (run_dir / "resolved_recipe.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(resolved, default=str)),
                                                                 sort_keys=False))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _summary(console, metrics)
    _say(console, ctx, f"saved to {run_dir} (model/, metrics.json, resolved_recipe.yaml, train.log) "
                       f"in {metrics['wall_time_s']:.0f}s")
    host.notify("on_run_end", run_dir=str(run_dir), metrics=metrics)
    return RunResult(run_dir=run_dir, metrics=metrics, model=vlm, tokenizer=tokenizer)


def _concat(sets: list[Any]) -> Any:
    if len(sets) == 1:
        return sets[0]
    return _Concat(sets)


class _Concat:
    def __init__(self, sets: list[Any]):
        self.sets = sets
        self.skipped = [s for d in sets for s in getattr(d, "skipped", [])]
        self.offsets = []
        total = 0
        for d in sets:
            self.offsets.append(total)
            total += len(d)
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int) -> Any:
        for d, off in zip(reversed(self.sets), reversed(self.offsets)):
            if i >= off:
                return d[i - off]
        raise IndexError(i)


def _summary(console: Any, metrics: dict[str, Any]) -> None:
    from rich.table import Table

    if "after" not in metrics:
        return
    before, after = metrics.get("before", {}), metrics["after"]
    table = Table(title="held-out evaluation")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.1f}%" if isinstance(v, float) else str(v)

    table.add_row("accuracy", fmt(before.get("accuracy")), fmt(after.get("accuracy")))
    for t in after.get("per_type", {}):
        table.add_row(f"  {t}", fmt(before.get("per_type", {}).get(t)), fmt(after["per_type"][t]))
    if "yes_ratio" in after:
        table.add_row("yes ratio (yes/no questions)", fmt(before.get("yes_ratio")), fmt(after["yes_ratio"]))
    if "blank_image_accuracy" in after:
        table.add_row("accuracy with blank images", fmt(before.get("blank_image_accuracy")),
                      fmt(after["blank_image_accuracy"]))
    if "prior_accuracy" in metrics:
        table.add_row("answer-prior baseline", fmt(metrics["prior_accuracy"]), fmt(metrics["prior_accuracy"]))
    console.print(table)
