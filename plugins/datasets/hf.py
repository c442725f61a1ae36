"""``hf``: anything Hugging Face ``datasets.load_dataset`` reads (Lhoest et al. 2021, "Datasets: A
Community Library for Natural Language Processing") -- a local ``.parquet`` / ``.json(l)`` / ``.csv`` /
``.arrow`` file, a folder (parquet shards, an ``imagefolder`` with ``metadata.jsonl``, or a
``save_to_disk`` folder), a builder name with ``data_files`` / ``data_dir``, or a hub id (downloaded by
``datasets`` when online; ``trust_remote_code`` only when the recipe sets it).

Columns map to canonical samples in one of two ways:

* conversations: ``messages_column`` holds ``[{role, content}]`` turns (``content`` a string, or the
  multimodal list ``[{"type": "image"}, {"type": "text", "text": ...}]``, whose image parts become
  ``<image>``; ShareGPT's ``{from, value}`` turns work too) and ``images_column`` their images;
* question-answer tables: ``question_column`` + ``answer_column`` (+ ``image_column``) make a one-turn
  conversation, ``"<image>\\n" + question`` when the row has an image.

Images may be paths (relative to the data file's folder, or ``image_root``) or ``datasets.Image``
values; they are read from the Arrow table when a sample is used, not held in memory. Other columns
are kept for evaluators (``answers``, ``question_id``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmplug import ComponentSpec, hookimpl

#: File suffixes read by a ``datasets`` packaged builder that no other built-in format reads.
HF_SUFFIXES = (".parquet", ".arrow", ".csv", ".tsv")


@dataclass(frozen=True, kw_only=True)
class HfConfig:
    path: str = field(
        default="",
        metadata={"help": "A data file or folder, a builder (imagefolder, parquet, json, csv) or a hub dataset id."},
    )
    name: str | None = field(default=None, metadata={"help": "The dataset configuration (load_dataset's name)."})
    split: str = field(default="train", metadata={"help": "The split to read, e.g. train, validation, train[:1000]."})
    data_files: str | list[str] | dict[str, Any] | None = field(
        default=None, metadata={"help": "load_dataset's data_files: a file, a list, or {split: files}."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "load_dataset's data_dir (e.g. for imagefolder)."})
    messages_column: str = field(
        default="messages", metadata={"help": "Column of [{role, content}] turns (conversation tables)."}
    )
    images_column: str = field(
        default="images", metadata={"help": "Column of the conversations' images (a list, or one image)."}
    )
    question_column: str | None = field(
        default=None, metadata={"help": "QA tables: the question column (set with answer_column)."}
    )
    answer_column: str | None = field(
        default=None,
        metadata={"help": "QA tables: the answer column; a list of answers trains on the most frequent one."},
    )
    image_column: str | None = field(
        default=None, metadata={"help": "QA tables: the image column (default: 'image' when the table has one)."}
    )
    image_root: str | None = field(
        default=None, metadata={"help": "Folder relative image paths are read from (default: the data's folder)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets caches (default: its own)."})
    max_samples: int | None = field(default=None, metadata={"help": "Read at most this many rows."})

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path: the hf format needs a file, folder, builder name or hub id")
        if (self.question_column is None) != (self.answer_column is None):
            raise ValueError("question_column and answer_column go together: a QA table needs both")
        if self.image_column is not None and self.question_column is None:
            raise ValueError("image_column is for QA tables (with question_column / answer_column); use images_column")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError("max_samples must be positive")


SPEC = ComponentSpec(
    name="hf",
    summary="Anything datasets.load_dataset reads: parquet / JSON / CSV, imagefolder, hub ids; column mapping",
    factory="vlmplug.plugins.datasets._hf:build",
    config=HfConfig,
    test_options={"path": "{hf_parquet}", "cache_dir": "{tmp}/hf-cache"},
)


@hookimpl
def register_dataset_formats(register) -> None:
    register(SPEC)


@hookimpl(trylast=True)
def detect_dataset_format(path: str, sample: dict[str, Any] | None) -> str | None:
    """Parquet, Arrow and CSV files; folders of parquet shards, an ``imagefolder`` with metadata, or a
    ``save_to_disk`` folder. JSON stays with the record-based formats (name it with ``format: hf``)."""
    p = Path(path)
    if p.is_file():
        return "hf" if p.suffix.lower() in HF_SUFFIXES else None
    if not p.is_dir():
        return None
    markers = ("state.json", "dataset_dict.json", "metadata.jsonl", "metadata.csv", "metadata.parquet")
    if any((p / m).is_file() for m in markers):
        return "hf"
    if any(p.glob("*.parquet")) or any(p.glob("*/*.parquet")) or any(p.glob("*/metadata.jsonl")):
        return "hf"
    return None
