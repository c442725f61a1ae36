"""``vlmplug serve RUN_DIR_OR_MODEL``: a trained model behind an OpenAI-compatible HTTP API.

The command checks what it can before the model loads: the ``serve`` extra (fastapi, uvicorn) is
installed, and the API key's environment variable (``--api-key-env VAR``) is set. Then it loads the
model with :class:`~vlmplug.train.predict.Predictor` and runs :func:`vlmplug.serve.serve`. Light at
import (click only): torch, FastAPI and uvicorn load inside the command, so ``vlmplug --help`` stays
fast. The API itself is described in :mod:`vlmplug.serve` and ``docs/serving.md``.
"""

from __future__ import annotations

import os

import click

from .data_cli import handled
from .errors import ConfigError, MissingExtraError

__all__ = ["serve", "SERVE_MODULES"]

#: The modules of the ``serve`` extra.
SERVE_MODULES = ("fastapi", "uvicorn")


def check_serve_extra() -> None:
    """Raise a clear error naming the pip line when the ``serve`` extra is missing."""
    from .deps import install_hint, is_installed

    missing = [m for m in SERVE_MODULES if not is_installed(m)]
    if missing:
        raise MissingExtraError(
            f"vlmplug serve needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed: {install_hint(['serve'])}",
            header="serve",
        )


def read_api_key(var: str | None) -> str | None:
    """The API key from environment variable ``var`` (None: no key); unset or empty is an error."""
    if var is None:
        return None
    key = os.environ.get(var, "").strip()
    if not key:
        raise ConfigError(
            f"--api-key-env {var}: the environment variable {var} is not set (or empty); set it to the key "
            f"clients must send (e.g. export {var}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))'))",
            header="serve",
        )
    return key


@click.command("serve")
@click.argument("model", metavar="RUN_DIR_OR_MODEL", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. The default answers this machine only; another address without --api-key-env warns.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--api-key-env",
    metavar="VAR",
    help="Require 'Authorization: Bearer <key>', the key read from environment variable VAR at start.",
)
@click.option(
    "--allow-remote-images",
    is_flag=True,
    help="Fetch http(s) image URLs (timeout and size limit apply); by default only data: URLs are accepted.",
)
@click.option(
    "--max-image-bytes",
    type=click.IntRange(min=1),
    default=20 * 1024 * 1024,
    show_default=True,
    help="Largest image a request may carry (decoded); larger ones are a 413.",
)
@click.option("--model-name", help="The model's name in the API (default: the run directory's name).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1, max=4096),
    default=256,
    show_default=True,
    help="max_tokens for requests that give none.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, max=2),
    default=0.0,
    show_default=True,
    help="temperature for requests that give none (0 = greedy).",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Waiting non-streamed requests with the same decoding settings are generated together, this many at most.",
)
@handled
def serve(
    model: str,
    host: str,
    port: int,
    api_key_env: str | None,
    allow_remote_images: bool,
    max_image_bytes: int,
    model_name: str | None,
    device: str,
    max_tokens: int,
    temperature: float,
    max_batch_size: int,
) -> None:
    """Serve a trained model (a run directory or its model/) with an OpenAI-compatible API:
    /v1/models and /v1/chat/completions, with images as data: URLs and streaming. See docs/serving.md."""
    check_serve_extra()
    api_key = read_api_key(api_key_env)
    from .serve import serve as run_server
    from .train.predict import Predictor

    predictor = Predictor.load(model, device=device, name=model_name)
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"serving '{predictor.name}' at http://{shown}:{port}/v1 "
        f"({'API key required' if api_key else 'no API key'}; Ctrl-C stops)",
        err=True,
    )
    run_server(
        predictor,
        host=host,
        port=port,
        api_key=api_key,
        allow_remote_images=allow_remote_images,
        max_image_bytes=max_image_bytes,
        max_tokens=max_tokens,
        temperature=temperature,
        max_batch_size=max_batch_size,
    )
