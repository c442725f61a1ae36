"""``vlmplug eval`` and ``vlmplug chat``: a trained model (a run directory or a saved ``model/`` folder)
answers a dataset scored by evaluators, or a person.

``eval`` reads the dataset through its dataset-format plugin (detected, or ``--format``), generates an
answer for every sample (every evaluator's variants of it) in batches with a progress bar, and writes
``predictions.jsonl`` (one row per answer, with the evaluator's references) and ``metrics.json``;
``vlmplug score`` re-scores such a file without the model. ``chat`` answers one prompt, or holds an
interactive session (``/image PATH`` attaches an image to the next message). Both load torch only when
they run; the evaluators and the dataset are checked before the model loads.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import click

from .data_cli import _detect_format, _file_options, build_format, format_spec, handled, read_context
from .errors import ConfigError

__all__ = ["eval_cmd", "chat_cmd", "build_evaluators", "component_options"]


def _host() -> Any:
    from .cli import _host as host

    return host()


def _console(stderr: bool = False) -> Any:
    from .cli import _console as console

    return console(stderr=stderr)


def component_options(items: Iterable[str], names: list[str], flag: str) -> dict[str, dict[str, Any]]:
    """``NAME.KEY=VALUE`` items (or ``KEY=VALUE`` when there is one name) -> ``{name: {key: value}}``."""
    from .recipe import parse_set

    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in parse_set(items):
        name, dot, option = key.partition(".")
        if not dot:
            if len(names) != 1:
                raise ConfigError(
                    f"{flag} {key}=...: with several evaluators, name the one it is for: {flag} {names[0]}.{key}=...",
                    header="options",
                )
            name, option = names[0], key
        if name not in out:
            raise ConfigError(
                f"{flag} {key}=...: '{name}' is not one of the selected evaluators ({', '.join(names)})",
                header="options",
            )
        out[name][option] = value
    return out


def build_evaluators(host: Any, names: list[str], options: dict[str, dict[str, Any]], flag: str) -> list[Any]:
    """``[(name, evaluator)]``: each an evaluator component built with its options (validated like a
    recipe's); an unknown name or option is a ConfigError with a did-you-mean, before anything loads."""
    from .build import build_component
    from .recipe import Selection, _Resolver
    from .registry import validate_options

    built, problems = [], []
    for name in names:
        spec = host.registry.get(name)
        if spec is None or spec.family != "evaluator":
            problems.append(_Resolver(host.registry, host).unknown_name(name, "evaluator", flag))
            continue
        opts, bad = validate_options(spec, options.get(name, {}), f"evaluator '{name}'")
        problems += bad
        if not bad:
            built.append((name, Selection(spec=spec, options=opts)))
    if problems:
        raise ConfigError(problems, header="evaluators")
    return [(name, build_component(sel, None)) for name, sel in built]


def _split(names: str) -> list[str]:
    return list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))


def _default_out(model: str, data: str) -> Path:
    """``RUN_DIR/eval/<data name>`` (a saved ``model/`` folder: its parent's)."""
    folder = Path(model)
    if folder.name == "model" or (folder / "vlmplug_model.json").is_file():
        folder = folder.parent
    return folder / "eval" / Path(data.rstrip("/")).stem


def _metrics_table(title: str, results: dict[str, dict[str, Any]]) -> Any:
    from rich.table import Table

    from .cli import _flatten

    table = Table(title=title)
    table.add_column("evaluator")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, metrics in results.items():
        for k, v in _flatten(metrics).items():
            table.add_row(name, k, f"{v:.4f}" if isinstance(v, float) else str(v))
    return table


# -- eval --------------------------------------------------------------------------------------------------


@click.command("eval")
@click.argument("model", metavar="RUN_DIR_OR_MODEL", type=click.Path(exists=True, file_okay=False))
@click.option("--evaluators", "-e", "evaluator_names", required=True, help="Comma-separated evaluators, e.g. vqa,pope.")
@click.option("--data", "-d", "dataset", required=True, help="The dataset to answer (a file or folder).")
@click.option("--format", "fmt", help="The dataset's format (default: detected from its first record).")
@click.option("--image-root", help="Folder the dataset's image paths are relative to (default: its folder).")
@click.option(
    "--set", "-s", "sets", multiple=True, metavar="OPTION=VALUE", help="An option of the dataset format (repeatable)."
)
@click.option(
    "--option",
    "-O",
    "options",
    multiple=True,
    metavar="EVALUATOR.KEY=VALUE",
    help="An evaluator option, e.g. vqa.prompt_suffix='Answer in one word.' (repeatable; see `vlmplug info NAME`).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Answer at most this many samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--skip-bad", is_flag=True, help="Count and skip bad samples instead of stopping at the first.")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Output folder (default RUN_DIR/eval/<data>).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@handled
def eval_cmd(
    model: str,
    evaluator_names: str,
    dataset: str,
    fmt: str | None,
    image_root: str | None,
    sets: tuple[str, ...],
    options: tuple[str, ...],
    limit: int | None,
    batch_size: int,
    max_new_tokens: int,
    skip_bad: bool,
    out: str | None,
    device: str,
    as_json: bool,
) -> None:
    """Answer DATA with a trained model and score the answers with each evaluator.

    Writes predictions.jsonl (one row per answer, with its references: `vlmplug score` re-scores it)
    and metrics.json to --out, and prints a metrics table."""
    from .errors import SkipReport

    host = _host()
    names = _split(evaluator_names)
    if not names:
        raise ConfigError("--evaluators: give at least one evaluator, e.g. --evaluators vqa", header="evaluators")
    evaluators = build_evaluators(host, names, component_options(options, names, "--option"), "--evaluators")
    fmt = fmt or _detect_format(host, dataset, "--format")
    spec = format_spec(host, fmt, "--format")
    samples = build_format(
        spec, _file_options(dataset, image_root, sets), read_context("skip" if skip_bad else "error"), "--data"
    )
    n = len(samples) if limit is None else min(limit, len(samples))
    err = _console(stderr=True)
    err.print(f"[dim]{dataset}: {len(samples)} samples ({fmt}); answering {n} with {', '.join(names)}[/]")

    from .train.evaluate import generate_records
    from .train.predict import Predictor

    predictor = Predictor.load(model, device=device, host=host)
    skips = SkipReport() if skip_bad else None
    results: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    from rich.progress import Progress

    with Progress(console=err, transient=True) as progress:
        for name, evaluator in evaluators:
            task = progress.add_task(f"eval {name}", total=n)
            records = generate_records(
                predictor.vlm,
                samples,
                evaluator=evaluator,
                encoder=predictor.encoder,
                tokenizer=predictor.tokenizer,
                preprocess=predictor.preprocess,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                limit=limit,
                skips=skips,
                progress=partial(progress.advance, task),
            )
            if not records:
                raise ConfigError(f"{dataset}: no sample could be evaluated (all skipped)", header="eval")
            results[name] = evaluator.score(records)[0]
            rows += [{"evaluator": name, **r} for r in records]
    target = Path(out) if out else _default_out(model, dataset)
    target.mkdir(parents=True, exist_ok=True)
    with (target / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=str) + "\n")
    summary: dict[str, Any] = {
        "model": str(Path(model).resolve()),
        "data": str(Path(dataset).resolve()),
        "format": fmt,
        "samples": n,
        "metrics": results,
    }
    skipped = list(getattr(samples, "skipped", []))
    if skips is not None or skipped:
        report = skips or SkipReport()
        report.extend(skipped)
        summary["skipped"] = report.to_dict()
        if report.total:
            err.print(f"[yellow]skipped {report.total} bad sample(s)[/]; reasons in {target / 'metrics.json'}")
    (target / "metrics.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(results, default=str))
    else:
        _console().print(_metrics_table(f"{predictor.name} on {dataset}", results))
        err.print(f"[dim]wrote {target / 'predictions.jsonl'} and {target / 'metrics.json'}[/]")


# -- chat --------------------------------------------------------------------------------------------------

CHAT_HELP = (
    "commands: /image PATH (attach an image to your next message), /reset (forget the conversation), /exit (or Ctrl-D)"
)


def _user_turn(text: str, images: list[str], image_token: str) -> dict[str, str]:
    """A user message; images without a placeholder in ``text`` get one each, in front."""
    missing = len(images) - text.count(image_token)
    if missing > 0:
        text = f"{image_token}\n" * missing + text
    return {"role": "user", "content": text}


@click.command("chat")
@click.argument("model", metavar="RUN_DIR_OR_MODEL", type=click.Path(exists=True, file_okay=False))
@click.argument("prompt", required=False)
@click.option(
    "--image",
    "-i",
    "images",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="An image (repeatable).",
)
@click.option("--system", help="A system message.")
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=0.2,
    show_default=True,
    help="0 = greedy; the guide suggests 0.2-0.5 to curb hallucination.",
)
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=0.9, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--seed", type=int, help="Seed for sampling (reproducible answers).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
@handled
def chat_cmd(
    model: str,
    prompt: str | None,
    images: tuple[str, ...],
    system: str | None,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int | None,
    device: str,
) -> None:
    """Talk to a trained model: answer PROMPT (with --image files), or, with no PROMPT, an interactive
    session in which `/image PATH` attaches an image to the next message."""
    from .train.predict import Predictor, Sampling

    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    predictor = Predictor.load(model, device=device)
    token = predictor.encoder.image_token
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        sample = {"messages": [*history, _user_turn(prompt, list(images), token)], "images": list(images)}
        for piece in predictor.stream(predictor.prepare(sample), sampling):
            click.echo(piece, nl=False)
        click.echo()
        return
    _interactive(predictor, sampling, history, list(images), token)


def _interactive(predictor: Any, sampling: Any, history: list[dict[str, str]], pending: list[str], token: str) -> None:
    from .errors import DataError

    err = _console(stderr=True)
    err.print(f"[dim]chatting with {predictor.name}; {CHAT_HELP}[/]")
    first = list(history)
    shown: list[str] = []  # every image of the conversation so far, in order
    while True:
        try:
            line = input(f"you{' [' + str(len(pending)) + ' image(s)]' if pending else ''}> ").strip()
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            history, shown, pending = list(first), [], []
            err.print("[dim]conversation cleared[/]")
            continue
        if line.startswith("/image"):
            path = line[len("/image") :].strip()
            if not Path(path).is_file():
                err.print(f"[red]no such image file: {path}[/]")
            else:
                pending.append(path)
            continue
        if line.startswith("/"):
            err.print(f"[dim]{CHAT_HELP}[/]")
            continue
        turn = _user_turn(line, pending, token)
        sample = {"messages": [*history, turn], "images": [*shown, *pending], "_where": "your message"}
        try:
            prepared = predictor.prepare(sample)
        except DataError as e:
            err.print(f"[red]{e}[/]")
            continue
        answer = []
        for piece in predictor.stream(prepared, sampling):
            answer.append(piece)
            click.echo(piece, nl=False)
            sys.stdout.flush()
        click.echo()
        history += [turn, {"role": "assistant", "content": "".join(answer)}]
        shown += pending
        pending = []
