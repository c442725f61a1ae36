"""Tokenised training data kept between runs: a re-run of the same data with the same tokenizer and
encoder settings reads the encoded samples instead of tokenising again.

The cache is a Hugging Face ``datasets`` Arrow folder (``save_to_disk`` / ``load_from_disk``) under
``<runs folder>/.tokenized/<key>``, plus the rows skipped or cut while encoding. The key is a hash of
everything the encoding depends on: the dataset selections and their options, the size and
modification time of every data file they name, the tokenizer (its full serialisation and chat
template), the encoder's settings (image token, tokens per image, ``max_seq_length``,
``on_overlength``, video sampling, instructions), ``on_bad_sample`` and the mixture seed. Images are
read when training, not here, so an image replaced under the same name is not a reason to
re-tokenise (and is not detected); ``cache_tokenized: false`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlmplug._version import __version__

__all__ = ["cache_key", "load_items", "save_items"]


def _file_stats(value: Any) -> Any:
    """``[size, mtime_ns]`` of a data file an option names (folders and other values: as they are)."""
    if isinstance(value, str) and len(value) < 4096:
        p = Path(value)
        if p.is_file():
            st = p.stat()
            return [str(p.resolve()), st.st_size, st.st_mtime_ns]
    if isinstance(value, dict):
        return {k: _file_stats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_file_stats(v) for v in value]
    return value


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256((text + str(getattr(tokenizer, "chat_template", ""))).encode()).hexdigest()


def cache_key(recipe: Any, tokenizer: Any, encoder: Any) -> str:
    """The hash naming the cached encoding of ``recipe``'s training data (see the module docstring)."""
    video = encoder.video
    parts = {
        "version": __version__,
        "datasets": [_file_stats(sel.to_dict()) for sel in recipe.datasets],
        "seed": recipe.training.get("seed", 42),
        "on_bad_sample": recipe.core["on_bad_sample"],
        "tokenizer": _tokenizer_fingerprint(tokenizer),
        "encoder": [
            encoder.image_token,
            encoder.tokens_per_image,
            encoder.max_seq_length,
            encoder.on_overlength,
            encoder.with_instructions,
            encoder.max_instruction_tokens,
            encoder.video_per_slot,
            [video.max_num_frames, video.frame_sampling, video.sampling_fps],
        ],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """``datasets``' own progress bars off while the cache is read or written (the run has its own)."""
    import datasets

    was_off = datasets.is_progress_bar_enabled() is False
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


def load_items(folder: Path) -> tuple[list[tuple[Any, ...]], list[dict], list[str]] | None:
    """``(items, skipped, truncated)`` from a cache folder, or ``None`` when there is none (or it is
    incomplete: ``done.json`` is written last)."""
    if not (folder / "done.json").is_file():
        return None
    from datasets import load_from_disk

    with _quiet_datasets():
        table = load_from_disk(str(folder / "items"))
    columns = table.to_dict()
    items = [
        (i, ids, labels, json.loads(slots))
        for i, ids, labels, slots in zip(columns["index"], columns["input_ids"], columns["labels"], columns["slots"])
    ]
    meta = json.loads((folder / "done.json").read_text())
    return items, meta["skipped"], meta["truncated"]


def save_items(folder: Path, items: list[tuple[Any, ...]], skipped: list[dict], truncated: list[str]) -> None:
    """Write a cache folder atomically (a ``.partial`` sibling renamed into place)."""
    from datasets import Dataset

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    table = Dataset.from_dict(
        {
            "index": [it[0] for it in items],
            "input_ids": [it[1] for it in items],
            "labels": [it[2] for it in items],
            "slots": [json.dumps(it[3]) for it in items],
        }
    )
    with _quiet_datasets():
        table.save_to_disk(str(tmp / "items"))
    (tmp / "done.json").write_text(json.dumps({"skipped": skipped, "truncated": truncated}, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
