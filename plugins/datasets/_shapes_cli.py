"""``vlmplug data shapes``: the shapes component's own generator written out as a ``messages`` dataset
(registered by ``vlmplug.plugins.datasets.shapes`` into the core's ``vlmplug data`` group)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from vlmplug.data_cli import MessagesWriter, build_format, clear_images, format_spec, handled, read_context, write_jsonl


def _shapes_dir(out: Path, overwrite: bool) -> None:
    """``out`` may be written: new or empty, or ``--overwrite`` (which replaces what shapes wrote)."""
    from vlmplug.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder", header="output")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"--out {out}: the folder is not empty; choose a new folder, or pass --overwrite to replace "
                f"its data.jsonl and images/",
                header="output",
            )
        (out / "data.jsonl").unlink(missing_ok=True)
        clear_images(out / "images")
    out.mkdir(parents=True, exist_ok=True)


@click.command("shapes")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--num-samples", type=click.IntRange(min=1), help="Rows (default: the shapes component's).")
@click.option("--seed", type=int, help="Generator seed (default 0; another seed gives held-out data).")
@click.option("--image-size", type=click.IntRange(min=32), help="Image side in pixels (default 64).")
@click.option("--blank-images", is_flag=True, help="Blank canvases: same questions, nothing to see.")
@click.option(
    "--set",
    "-s",
    "sets",
    multiple=True,
    metavar="OPTION=VALUE",
    help="Another shapes option, e.g. presence_by=location (see `vlmplug info shapes`; repeatable).",
)
@click.option("--overwrite", is_flag=True, help="Replace DIR/data.jsonl and DIR/images/ if there.")
@handled
def shapes_cmd(
    out_dir: str,
    num_samples: int | None,
    seed: int | None,
    image_size: int | None,
    blank_images: bool,
    sets: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Write the synthetic shapes task as a messages dataset.

    DIR/data.jsonl (messages format) with DIR/images/NNNNNN.png, from the shapes component's own
    generator: `datasets: [{path: DIR/data.jsonl}]` trains on the same samples as `{format: shapes}`
    with these options."""
    from vlmplug.manager import load
    from vlmplug.recipe import parse_set

    host = load()
    spec = format_spec(host, "shapes", "vlmplug data shapes")
    given = {"num_samples": num_samples, "seed": seed, "image_size": image_size, "blank_images": blank_images or None}
    options = {**dict(parse_set(sets)), **{k: v for k, v in given.items() if v is not None}}
    samples = build_format(spec, options, read_context("error"), "vlmplug data shapes")
    out = Path(out_dir)
    _shapes_dir(out, overwrite)
    target = out / "data.jsonl"
    n = write_jsonl(samples, "shapes", MessagesWriter(target, out / "images"), target)
    Console(stderr=True).print(
        f"wrote {n} samples to {target} (images in {out / 'images'}); train with datasets: [{{path: {target}}}]",
        markup=False,
    )
