"""``messages``: the guide's conversational format -- ``messages`` plus ``images``, JSON or JSONL.

Each record::

    {"messages": [{"role": "user", "content": "<image>\\nWhat is in this image?"},
                  {"role": "assistant", "content": "A cat."}],
     "images": ["cat.jpg"]}

Image paths are relative to the data file (or ``image_root``); ``data:`` base64 URIs work too, and an
image may be an object: ``{"path": ...}``, ``{"url": ...}``, ``{"image": ...}``, ``{"image_url": {"url":
...}}`` (OpenAI chat parts) or ``{"bytes": BASE64}``.
``videos`` (one ``<video>`` in the text each) are video files, frame folders, lists of frame paths
or ``{"frames": [...], "fps": 30}``, relative alike; ``max_num_frames`` / ``frame_sampling`` pick
the frames. Extra fields (``answers``, ``question_type``, ``id``) are kept for evaluators.

The format streams (``streaming: true``): its dataset has ``stream()``, which reads a JSONL file line
by line while training (a ``.json`` list is read whole when each pass starts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class MessagesConfig:
    path: str = field(default="", metadata={"help": "A .json (list of records) or .jsonl file."})
    image_root: str | None = field(
        default=None, metadata={"help": "Folder image paths are relative to (default: the file's)."}
    )
    max_samples: int | None = field(default=None, metadata={"help": "Read at most this many records."})

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path: the messages format needs a file path")


SPEC = ComponentSpec(
    name="messages",
    summary="Conversations as {messages, images} records in JSON or JSONL (the guide's format)",
    factory="vlmplug.plugins.datasets._messages:build",
    config=MessagesConfig,
    test_options={"path": "{messages_jsonl}"},
)


@hookimpl
def register_dataset_formats(register) -> None:
    register(SPEC)


@hookimpl(trylast=True)
def detect_dataset_format(path: str, sample: dict[str, Any] | None) -> str | None:
    if isinstance(sample, dict) and isinstance(sample.get("messages"), list):
        return "messages"
    return None
