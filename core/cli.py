"""The ``vlmplug`` command line (click + rich).

``list``, ``info``, ``recipes``, ``config`` and ``score`` never import torch, transformers or peft:
rich is imported inside commands and the training pipeline only by ``train``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from ._version import __version__
from .data_cli import data
from .errors import ConfigError, VlmplugError
from .eval_cli import build_evaluators, chat_cmd, component_options, eval_cmd
from .registry import FAMILIES
from .serve_cli import serve

__all__ = ["cli", "main"]

FAMILY_CHOICES = list(FAMILIES)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _host() -> Any:
    from .manager import load

    return load()


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print vlmplug errors without a traceback (unless --debug) and exit non-zero."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return fn(*args, **kwargs)
        except VlmplugError as e:
            if (ctx.find_root().params or {}).get("debug"):
                raise
            from rich.markup import escape

            _console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}")
            ctx.exit(2 if isinstance(e, ConfigError) else 1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vlmplug")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
def cli(debug: bool) -> None:
    """vlmplug: fine-tune vision-language models from plugins.

    \b
    Quickstart (CPU, a few minutes):  vlmplug train
    See every component:              vlmplug list
    Resolve a recipe without a model: vlmplug config llava --plugins lora
    """


# -- list / info / recipes ----------------------------------------------------------------------------


def _identity(spec: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "family": spec.family,
        "summary": spec.summary,
        "provider": spec.provider,
        "version": spec.version,
        "plugin": spec.plugin,
    }


def _component_rows(host: Any) -> list[dict[str, Any]]:
    from . import deps

    rows = []
    for spec in host.registry:
        missing = deps.missing_extras(spec)
        row: dict[str, Any] = {**_identity(spec), "status": "missing-extra" if missing else "ok"}
        if missing:
            row["extra"] = ",".join(sorted(set(missing.values())))
            row["missing"] = sorted(missing)
            row["install"] = deps.install_hint(missing.values())
        rows.append(row)
    for info in host.broken:
        rows.append(
            {
                "name": info.name,
                "family": None,
                "summary": "",
                "provider": info.provider,
                "version": info.version,
                "plugin": info.name,
                "status": "broken",
                "error": info.error,
            }
        )
    return rows


@cli.command("list")
@click.option("--family", type=click.Choice(FAMILY_CHOICES), help="Only this family.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of objects) for scripts.")
def list_cmd(family: str | None, as_json: bool) -> None:
    """List every component, by family, with provider and status."""
    host = _host()
    rows = [r for r in _component_rows(host) if family is None or r["family"] in (family, None)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from .registry import FAMILY_TITLES

    table = Table(title=f"vlmplug {__version__} components")
    for col in ("family", "name", "summary", "provider", "status"):
        table.add_column(col, overflow="fold")
    for r in rows:
        status = {
            "ok": "[green]ok[/]",
            "broken": f"[red]broken[/]: {escape(r.get('error') or '')}",
            "missing-extra": f"[yellow]missing extra[/] {escape('[' + str(r.get('extra')) + ']')}",
        }[r["status"]]
        table.add_row(
            FAMILY_TITLES.get(r["family"] or "", "?"),
            escape(r["name"]),
            escape(r["summary"]),
            escape(r["provider"]),
            status,
        )
    _console().print(table)
    third = sorted({r["provider"] for r in rows if r["provider"] != "built-in"})
    if third:
        _console().print(f"plugins: {', '.join(third)}")


def _options_of(spec: Any) -> list[dict[str, Any]]:
    """Every option of a component's config: name, type, default and help."""
    import dataclasses
    import typing

    from .registry import config_fields, describe_type

    hints = typing.get_type_hints(spec.config) if spec.config else {}
    options = []
    for f in config_fields(spec.config).values():
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        options.append(
            {
                "name": f.name,
                "type": describe_type(hints.get(f.name)),
                "default": default,
                "help": f.metadata.get("help", ""),
            }
        )
    return options


def _info_data(spec: Any) -> dict[str, Any]:
    from . import deps

    missing = deps.missing_extras(spec)
    return {
        **_identity(spec),
        "factory": spec.factory,
        "options": _options_of(spec),
        "flat_keys": list(spec.flat_keys),
        "activated_by": dict(spec.activated_by),
        "aliases": list(spec.aliases),
        "requires": list(spec.requires),
        "conflicts": list(spec.conflicts),
        "extras": dict(spec.extras),
        "missing": sorted(missing),
        "install": deps.install_hint(missing.values()) if missing else None,
    }


def _print_info(spec: Any, data: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from .registry import FAMILY_TITLES

    con = _console()
    con.print(f"[bold]{spec.name}[/] -- {FAMILY_TITLES[spec.family]} ({spec.provider}, plugin {spec.plugin})")
    con.print(spec.summary)
    if spec.aliases:
        con.print(f"aliases: {', '.join(spec.aliases)}")
    if spec.activated_by:
        keys = ", ".join(f"{k}: {json.dumps(v)}" for k, v in spec.activated_by.items())
        con.print(f"selected by recipe keys: {keys}")
    if spec.requires or spec.conflicts:
        con.print(f"requires: {', '.join(spec.requires) or '-'}; conflicts: {', '.join(spec.conflicts) or '-'}")
    if data["options"]:
        table = Table(title="options")
        for col in ("option", "type", "default", "help"):
            table.add_column(col, overflow="fold")
        for o in data["options"]:
            flat = " (top-level key)" if o["name"] in spec.flat_keys else ""
            table.add_row(
                escape(o["name"] + flat),
                escape(o["type"]),
                escape(json.dumps(o["default"], default=str)),
                escape(o["help"]),
            )
        con.print(table)
    else:
        con.print("options: none")
    for mod, extra in spec.extras.items():
        state = "[red]missing[/]" if mod in data["missing"] else "[green]installed[/]"
        con.print(f"needs {escape(mod)} ({state}) from extra {escape(f'[{extra}]')}")
    if data["install"]:
        con.print(f"fix: {escape(data['install'])}")


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def info(name: str, as_json: bool) -> None:
    """Show a component: family, provider, options (type, default, help), missing extras."""
    host = _host()
    spec = host.registry.get(name)
    if spec is None:
        from .recipe import _Resolver

        raise ConfigError(_Resolver(host.registry, host).unknown_name(name, None, "info"), header="unknown component")
    data = _info_data(spec)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        _print_info(spec, data)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def recipes(as_json: bool) -> None:
    """List the recipes shipped with vlmplug."""
    from .recipe import list_recipes

    items = list_recipes()
    if as_json:
        click.echo(json.dumps([{"name": n, "description": d} for n, d in items], indent=2))
        return
    from rich.table import Table

    table = Table(title="shipped recipes (use a name or a path: vlmplug config NAME)")
    table.add_column("recipe")
    table.add_column("description")
    for n, d in items:
        table.add_row(n, d)
    _console().print(table)


# -- config / train ---------------------------------------------------------------------------------

_recipe_arg = click.argument("recipe", required=False)
_plugins_opt = click.option(
    "--plugins",
    "-p",
    "plugins",
    default="",
    help="Comma-separated component names, e.g. --plugins lora,gradient-checkpointing.",
)
_set_opt = click.option(
    "--set",
    "-s",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a value: a recipe key, COMPONENT.OPTION or FAMILY.OPTION (repeatable).",
)


def _resolve(recipe: str | None, plugins: str, sets: tuple[str, ...], host: Any = None) -> Any:
    from .recipe import load_recipe, parse_set, resolve

    host = host or _host()
    data, source = load_recipe(recipe)
    names = [p.strip() for p in plugins.split(",") if p.strip()]
    return resolve(data, host.registry, host=host, plugins=names, sets=parse_set(sets), source=source), host


@cli.command()
@_recipe_arg
@_plugins_opt
@_set_opt
@click.option("--json", "as_json", is_flag=True, help="Print the resolved recipe as JSON.")
@click.option("--params", is_flag=True, help="Build the model and print its parameters, trainable, per module.")
@handle_errors
def config(recipe: str | None, plugins: str, sets: tuple[str, ...], as_json: bool, params: bool) -> None:
    """Resolve a recipe and print the plan, without loading any model (``--params``: build it, and
    print each part's parameters, what trains and at which learning rate)."""
    from .recipe import load_recipe, parse_set
    from .stages import is_multistage, plan_stages, resolve_stages

    host = _host()
    data, source = load_recipe(recipe)
    names = [p.strip() for p in plugins.split(",") if p.strip()]
    if is_multistage(data):
        stages = plan_stages(data, None)
        plans = resolve_stages(stages, host, names, parse_set(sets), source)
    else:
        plans = [_resolve(recipe, plugins, sets, host)[0]]
    if as_json:
        out = [r.to_dict() for r in plans]
        click.echo(json.dumps(out if len(out) > 1 else out[0], indent=2, default=str))
        return
    for resolved in plans:
        _print_plan(resolved)
        if params:
            _print_parameters(resolved, host)


def _print_parameters(resolved: Any, host: Any) -> None:
    """Build the model as a run would (weights load; data is read only for a preset's tokenizer) and
    print the per-module table."""
    from rich.table import Table

    from .train.run import inspect_model

    rows = inspect_model(resolved, host)
    table = Table(title="parameters per module")
    for col in ("part", "parameters", "trainable", "train", "learning rate", "set by"):
        table.add_column(col, justify="left" if col in ("part", "train", "set by") else "right")
    for r in rows:
        lr = "-" if r["learning_rate"] is None else f"{r['learning_rate']:g}"
        table.add_row(r["part"], f"{r['parameters']:,}", f"{r['trainable']:,}", r["train"], lr, r["set_by"])
    total = sum(r["parameters"] for r in rows)
    trainable = sum(r["trainable"] for r in rows)
    table.add_row("all", f"{total:,}", f"{trainable:,} ({100 * trainable / max(total, 1):.1f}%)", "", "", "")
    _console().print(table)


def _print_plan(resolved: Any) -> None:
    from rich.table import Table

    from .registry import FAMILY_TITLES

    con = _console()
    con.print(f"[bold]{resolved.name}[/] ({resolved.source}) {resolved.description}")
    table = Table(title="components")
    for col in ("family", "component", "provider", "options"):
        table.add_column(col, overflow="fold")
    for sel in resolved.selections():
        opts = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in sel.options.items())
        table.add_row(FAMILY_TITLES[sel.spec.family], sel.name, f"{sel.spec.provider}", opts)
    con.print(table)
    core = {k: v for k, v in resolved.core.items() if v not in (None, "", {}) and k not in ("name", "description")}
    con.print("model: " + ", ".join(f"{k}={v}" for k, v in core.items()))
    if resolved.training:
        con.print("training: " + ", ".join(f"{k}={v}" for k, v in resolved.training.items()))
    for note in resolved.notes:
        con.print(f"note: {note}")


@cli.command()
@_recipe_arg
@_plugins_opt
@_set_opt
@click.option("--output-dir", "-o", default=None, help="Run directory (default runs/<name>, numbered if taken).")
@handle_errors
def train(recipe: str | None, plugins: str, sets: tuple[str, ...], output_dir: str | None) -> None:
    """Train a model. With no RECIPE, runs the CPU quickstart (recipes/quickstart.yaml). A recipe with
    ``stages:`` trains each stage in turn, from the previous stage's model."""
    from .recipe import load_recipe, parse_set
    from .stages import is_multistage, plan_stages, run_stages

    data, source = load_recipe(recipe)
    argv = ["vlmplug", *sys.argv[1:]]
    try:
        if is_multistage(data):
            names = [p.strip() for p in plugins.split(",") if p.strip()]
            stages = plan_stages(data, output_dir)
            run_stages(
                stages,
                _host(),
                plugins=names,
                sets=parse_set(sets),
                source=source,
                console=_console(stderr=True),
                argv=argv,
            )
            return
        resolved, host = _resolve(recipe, plugins, sets)
        from .train.run import run

        run(resolved, host, output_dir=output_dir, console=_console(stderr=True), argv=argv)
    except KeyboardInterrupt:
        click.get_current_context().exit(130)


# -- score ---------------------------------------------------------------------------------------------


@cli.command()
@click.option("--evaluator", "-e", "evaluator_name", required=True, help="Evaluator component, e.g. vqa.")
@click.argument("predictions", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--option",
    "-O",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An option of the evaluator, e.g. base_url=http://127.0.0.1:8000/v1 (repeatable; `vlmplug info NAME`).",
)
@click.option("--per-sample", type=click.Path(dir_okay=False), help="Write per-sample scores (JSONL) here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of metric -> value.")
@handle_errors
def score(
    evaluator_name: str, predictions: str, options: tuple[str, ...], per_sample: str | None, as_json: bool
) -> None:
    """Score a predictions file (JSONL with 'prediction' and the references) without any model.

    The predictions.jsonl that `vlmplug eval` writes holds rows of several evaluators: only the rows of
    --evaluator are scored."""
    from .errors import DataError, read_text

    host = _host()
    [(_, evaluator)] = build_evaluators(
        host, [evaluator_name], component_options(options, [evaluator_name], "--option"), "--evaluator"
    )
    rows = []
    for n, line in enumerate(read_text(predictions, "predictions file", DataError).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{predictions}:{n}: not valid JSON ({e.msg})") from None
        if row.get("evaluator", evaluator_name) == evaluator_name:
            rows.append(row)
    if not rows:
        raise DataError(f"{predictions}: no predictions for {evaluator_name} (expected JSONL lines with 'prediction')")
    try:
        metrics, scores = evaluator.score(rows)
    except ValueError as e:
        raise DataError(f"{predictions}: {e}") from None
    if per_sample:
        with open(per_sample, "w", encoding="utf-8") as fh:
            for row, s in zip(rows, scores):
                fh.write(json.dumps({**row, "score": s}) + "\n")
    if as_json:
        click.echo(json.dumps(metrics))
        return
    from rich.table import Table

    table = Table(title=f"{evaluator_name}: {predictions}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in _flatten(metrics).items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    _console().print(table)


def _flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# -- export ----------------------------------------------------------------------------------------------


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--format",
    "fmt",
    default="merged",
    show_default=True,
    help="merged: vlmplug's own format with adapters folded in; other formats come from plugins "
    "(llava-hf: loads with plain transformers).",
)
@click.option("--out", "out", required=True, type=click.Path(), help="Directory to write (must not exist or be empty).")
@handle_errors
def export(run_dir: str, fmt: str, out: str) -> None:
    """Export a trained model (a run directory or its model/) to another format."""
    from .export import export_model

    host = _host()
    path = export_model(run_dir, fmt, out, host=host)
    _console().print(f"exported {run_dir} as {fmt} -> {path}")


cli.add_command(data)
cli.add_command(eval_cmd)
cli.add_command(chat_cmd)
cli.add_command(serve)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: adds plugin commands (``register_commands``), then runs the CLI."""
    try:
        host = _host()
        host.register_commands(cli=cli)
    except VlmplugError as e:  # a broken command plugin must not stop the CLI
        print(f"warning: {e}", file=sys.stderr)
    cli.main(args=argv, prog_name="vlmplug")


if __name__ == "__main__":  # pragma: no cover
    main()
