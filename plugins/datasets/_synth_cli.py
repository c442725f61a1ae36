"""``vlmplug data synth``: captions or question/answer pairs for a folder of images, written by an
OpenAI-compatible chat-completions endpoint (the guide's "synthetic generation with LLMs"; registered
by ``vlmplug.plugins.datasets.negatives`` into the core's ``vlmplug data`` group).

Each image is sent once, as a ``data:`` URI, in ``POST {base_url}/chat/completions``; each reply becomes
one ``messages`` row, appended to the output file as soon as it arrives, so an interrupted run resumes
where it stopped (images already in the file are not asked again). Connection errors, HTTP 429 and 5xx
are retried with capped, jittered exponential backoff (``Retry-After`` honoured); any other HTTP error,
or a reply that cannot be used, fails that image only (counted; the next run asks again).

Standard library only: the HTTP client (endpoint, retries, backoff, reply reading) is the one in
:mod:`vlmplug.plugins._openai_http`, shared with the ``llm-judge`` evaluator. Nothing is called but
``--base-url``: redirects are refused and proxy environment variables are not used.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from vlmplug.data_cli import MessagesWriter, handled

from .._openai_http import Backoff, Endpoint, Transient, chat_completions_url, reply_text
from .._openai_http import RequestFailed as ImageFailed  # this image gets no row this time
from .._openai_http import with_retries as _with_retries

__all__ = ["Backoff", "Endpoint", "ImageFailed", "Transient", "reply_text", "synth_cmd", "with_retries"]

#: Image files asked about, by suffix (any case), with the MIME type their data URI declares.
MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
#: The built-in prompts (``--prompt caption`` / ``--prompt qa``).
PROMPTS = {
    "caption": (
        "Describe this image in one or two sentences: the main objects, what they are doing and the setting. "
        "Mention only what is clearly visible."
    ),
    "qa": (
        "Write 3 to 5 question-answer pairs about this image. Each question must be answerable by looking at "
        "the image; answers are short and factual, and mention only what is clearly visible. Reply with only a "
        'JSON array, no other text: [{"question": "...", "answer": "..."}, ...]'
    ),
}
#: The user turn of a caption row written for the built-in caption prompt.
CAPTION_INSTRUCTION = "Describe this image."
IMAGE = "<image>"
FENCE = re.compile(r"```[\w-]*\s*\n?(.*?)```", re.DOTALL)


def _sleep(seconds: float) -> None:
    """Wait between attempts (tests replace it to record the delays)."""
    time.sleep(seconds)


def with_retries(send: Callable[[], bytes], retries: int, backoff: Backoff) -> tuple[bytes, int]:
    """``send()``'s result and how many retries it took; after ``retries`` retries the image fails
    (waits with this module's ``_sleep``)."""
    return _with_retries(send, retries, backoff, sleep=lambda seconds: _sleep(seconds))


# -- replies ----------------------------------------------------------------------------------------------


def first_json_array(text: str) -> list[Any] | None:
    """The first JSON array in ``text`` that holds an object (else the first array at all)."""
    decoder = json.JSONDecoder()
    first: list[Any] | None = None
    for m in re.finditer(r"\[", text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(value, list):
            if any(isinstance(item, dict) for item in value):
                return value
            first = value if first is None else first
    return first


def parse_qa(text: str) -> tuple[list[tuple[str, str]], int]:
    """``[(question, answer), ...]`` from a reply holding a JSON array (code fences and prose around it
    ignored), and the number of items skipped as malformed; ImageFailed when nothing usable is there."""
    chunks = [m.group(1) for m in FENCE.finditer(text)] + [text]
    items = next((found for found in map(first_json_array, chunks) if found is not None), None)
    if items is None:
        raise ImageFailed(
            "malformed-reply", f'no JSON array of {{"question", "answer"}} objects in the reply: {text[:120]!r}'
        )
    pairs = []
    for item in items:
        question = item.get("question") if isinstance(item, dict) else None
        answer = item.get("answer") if isinstance(item, dict) else None
        if isinstance(question, str) and question.strip() and isinstance(answer, str) and answer.strip():
            pairs.append((question.strip(), answer.strip()))
    if not pairs:
        raise ImageFailed(
            "malformed-reply", f"no item of the reply's JSON array has a question and an answer: {text[:120]!r}"
        )
    return pairs, len(items) - len(pairs)


# -- rows and the output file -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """What is asked (``text``), how the reply is read (``parse``: caption or qa), the user turn of a
    caption row (``instruction``) and the name the rows record (``name``)."""

    name: str
    text: str
    parse: str
    instruction: str


def caption_messages(instruction: str, caption: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{IMAGE}\n{instruction}"}, {"role": "assistant", "content": caption}]


def qa_messages(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    """One conversation: the image with the first question, then the other questions in turn."""
    messages = []
    for i, (question, answer) in enumerate(pairs):
        messages.append({"role": "user", "content": f"{IMAGE}\n{question}" if i == 0 else question})
        messages.append({"role": "assistant", "content": answer})
    return messages


def list_images(folder: Path) -> list[Path]:
    """The folder's image files (not its subfolders), sorted by name."""
    from vlmplug.errors import ConfigError

    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder; give the folder that holds the images", header="images")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MIME_TYPES)
    if not images:
        raise ConfigError(f"{folder}: no {'/'.join(s[1:] for s in MIME_TYPES)} files in it", header="images")
    return images


def done_images(out: Path) -> tuple[set[str], bool]:
    """The images (absolute paths) the rows already in ``out`` hold, and whether a cut-off last line
    (an interrupted write) was removed."""
    from vlmplug.errors import DataError

    if not out.exists():
        return set(), False
    text = out.read_text(encoding="utf-8")
    dropped = False
    if text and not text.endswith("\n"):
        head, _, tail = text.rpartition("\n")
        try:
            json.loads(tail)
        except ValueError:  # cut off mid-write: drop it, that image is asked again
            text = head + "\n" if head else ""
            out.write_text(text, encoding="utf-8")
            dropped = True
    folder = out.parent.absolute()
    done = set()
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(
                f"{out}:{n}: not valid JSON ({e}); fix or delete that line and run again (the other rows are kept)",
                reason="malformed-row",
                where=f"{out}:{n}",
            ) from None
        images = row.get("images") if isinstance(row, dict) else None
        if isinstance(images, list) and images and isinstance(images[0], str):
            done.add(os.path.normpath(folder / images[0]))
    return done, dropped


def data_uri(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:{MIME_TYPES[path.suffix.lower()]};base64,{encoded}"


@dataclass
class Outcome:
    """One image's result: its row, or why it has none."""

    image: Path
    row: dict[str, Any] | None = None
    reason: str = ""
    message: str = ""
    retries: int = 0
    skipped_items: int = 0


@dataclass
class Job:
    """Everything one image's request needs."""

    endpoint: Endpoint
    prompt: Prompt
    retries: int
    backoff: Backoff
    writer: MessagesWriter

    def payload(self, image: Path) -> dict[str, Any]:
        content = [
            {"type": "text", "text": self.prompt.text},
            {"type": "image_url", "image_url": {"url": data_uri(image)}},
        ]
        return {"model": self.endpoint.model, "messages": [{"role": "user", "content": content}]}

    def run(self, image: Path) -> Outcome:
        outcome = Outcome(image)
        try:
            payload = self.payload(image)
        except OSError as e:
            outcome.reason, outcome.message = "unreadable-image", f"cannot read the file: {e}"
            return outcome
        try:
            body, outcome.retries = with_retries(lambda: self.endpoint.post(payload), self.retries, self.backoff)
            outcome.row = self.row(image, reply_text(body), outcome)
        except ImageFailed as e:
            outcome.reason, outcome.message = e.reason, str(e)
        return outcome

    def row(self, image: Path, text: str, outcome: Outcome) -> dict[str, Any]:
        if self.prompt.parse == "qa":
            pairs, outcome.skipped_items = parse_qa(text)
            messages = qa_messages(pairs)
        else:
            messages = caption_messages(self.prompt.instruction, text)
        return {
            "messages": messages,
            "images": [self.writer.path(str(image))],
            "generator": {"model": self.endpoint.model, "prompt": self.prompt.name},
        }


# -- the command ------------------------------------------------------------------------------------------


def endpoint_url(base_url: str) -> str:
    """``{base_url}/chat/completions``, after checking ``base_url`` is an http(s) URL."""
    from vlmplug.errors import ConfigError

    url = chat_completions_url(base_url)
    if url is None:
        raise ConfigError(
            f"--base-url {base_url}: not an http(s) URL; give the API root, e.g. http://127.0.0.1:8000/v1",
            header="endpoint",
        )
    return url


def api_key(env_var: str | None) -> str | None:
    from vlmplug.errors import ConfigError

    if env_var is None:
        return None
    value = os.environ.get(env_var)
    if not value:
        raise ConfigError(
            f"--api-key-env {env_var}: that environment variable is not set (or empty); export it first",
            header="endpoint",
        )
    return value


def read_prompt(value: str, parse: str | None) -> Prompt:
    """``caption`` / ``qa`` (the built-in prompts) or a text file holding the prompt."""
    from vlmplug.errors import ConfigError

    if value in PROMPTS:
        return Prompt(value, PROMPTS[value], parse or value, CAPTION_INSTRUCTION)
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"--prompt {value}: neither 'caption', 'qa' nor a file; give one of them", header="prompt")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ConfigError(f"--prompt {value}: the file is empty; write the instruction in it", header="prompt")
    return Prompt(path.name, text, parse or "caption", text)


@dataclass
class Tally:
    """What a run did."""

    images: int = 0
    already_done: int = 0
    written: int = 0
    retries: int = 0
    skipped_items: int = 0
    dropped_partial_line: bool = False
    failures: list[dict[str, str]] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.retries += outcome.retries
        self.skipped_items += outcome.skipped_items
        if outcome.row is not None:
            self.written += 1
        else:
            self.failures.append({"image": str(outcome.image), "reason": outcome.reason, "message": outcome.message})

    def to_dict(self, out: Path) -> dict[str, Any]:
        return {
            "out": str(out),
            "images": self.images,
            "already_done": self.already_done,
            "requested": self.images - self.already_done,
            "written": self.written,
            "failed": len(self.failures),
            "errors": dict(Counter(f["reason"] for f in self.failures)),
            "retries": self.retries,
            "qa_items_skipped": self.skipped_items,
            "dropped_partial_line": self.dropped_partial_line,
            "failures": self.failures,
        }


def generate(
    todo: list[Path], job: Job, out: Path, concurrency: int, tally: Tally, report: Callable[[Outcome], None]
) -> None:
    """Ask about every image of ``todo``, ``concurrency`` at a time, appending each row to ``out`` as it comes."""
    with out.open("a", encoding="utf-8") as fh, ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(job.run, image) for image in todo]
        try:
            for future in as_completed(futures):
                outcome = future.result()
                if outcome.row is not None:
                    fh.write(json.dumps(outcome.row, ensure_ascii=False) + "\n")
                    fh.flush()
                tally.add(outcome)
                report(outcome)
        except KeyboardInterrupt:
            for f in futures:
                f.cancel()
            raise


def print_tally(info: dict[str, Any]) -> None:
    from rich.console import Console

    con = Console()
    con.print(
        f"wrote {info['written']} row(s) to {info['out']}: {info['images']} image(s), {info['already_done']} there "
        f"already, {info['requested']} requested, {info['failed']} failed, {info['retries']} retried request(s)",
        markup=False,
    )
    if info["dropped_partial_line"]:
        con.print("  removed a cut-off last line (an interrupted write); its image was asked again", markup=False)
    if info["qa_items_skipped"]:
        con.print(f"  skipped {info['qa_items_skipped']} malformed question/answer item(s)", markup=False)
    for reason, n in info["errors"].items():
        con.print(f"  {reason}: {n} image(s)", markup=False)
    if info["failed"]:
        con.print("run the same command again to retry the failed images (rows already written are kept)", markup=False)


@click.command("synth")
@click.argument("images_dir", metavar="IMAGES_DIR", type=click.Path(file_okay=False))
@click.option(
    "--base-url", required=True, help="The API root of an OpenAI-compatible server, e.g. http://host:8000/v1."
)
@click.option("--model", required=True, help="The model name the server knows.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="The .jsonl file to append to.")
@click.option("--api-key-env", metavar="VAR", help="Environment variable holding the API key (sent as a bearer token).")
@click.option(
    "--prompt",
    "prompt_name",
    default="caption",
    show_default=True,
    metavar="caption|qa|FILE",
    help="A caption, question/answer pairs as JSON, or the instruction in FILE.",
)
@click.option(
    "--parse",
    type=click.Choice(["caption", "qa"]),
    help="Read replies as a caption or a JSON Q/A array (default: the prompt's kind; caption for a FILE).",
)
@click.option("--concurrency", type=click.IntRange(1, 64), default=1, show_default=True, help="Requests in flight.")
@click.option("--max-retries", type=click.IntRange(min=0), default=5, show_default=True, help="Retries per image.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds per request.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead.")
@handled
def synth_cmd(
    images_dir: str,
    base_url: str,
    model: str,
    out_file: str,
    api_key_env: str | None,
    prompt_name: str,
    parse: str | None,
    concurrency: int,
    max_retries: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Caption images, or write question/answer pairs about them, with an OpenAI-compatible endpoint.

    Every png/jpg/jpeg/webp file of IMAGES_DIR (sorted) is sent to POST BASE_URL/chat/completions;
    each reply becomes one messages row appended to FILE (image paths relative to FILE's folder).
    Images already in FILE are skipped, so running again resumes. Exit status 1 when an image failed."""
    from vlmplug.errors import ConfigError

    out = Path(out_file)
    if out.suffix != ".jsonl":
        raise ConfigError(f"--out {out}: must end in .jsonl (the messages format reads JSON Lines by that suffix)")
    endpoint = Endpoint(endpoint_url(base_url), model, api_key(api_key_env), timeout, flags=True)
    prompt = read_prompt(prompt_name, parse)
    images = list_images(Path(images_dir))
    done, dropped = done_images(out)
    todo = [p for p in images if os.path.normpath(p.absolute()) not in done]
    tally = Tally(images=len(images), already_done=len(images) - len(todo), dropped_partial_line=dropped)
    out.parent.mkdir(parents=True, exist_ok=True)
    job = Job(endpoint, prompt, max_retries, Backoff(), MessagesWriter(out, out.with_name(out.name + ".images")))

    def report(outcome: Outcome) -> None:
        if outcome.row is None and not as_json:
            click.echo(f"{outcome.image}: {outcome.reason}: {outcome.message}", err=True)

    generate(todo, job, out, concurrency, tally, report)
    info = tally.to_dict(out)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        print_tally(info)
    if tally.failures:
        click.get_current_context().exit(1)
