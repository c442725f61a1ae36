"""LLaVA-Instruct and ShareGPT records -> canonical ``messages`` samples.

Both write a conversation as ``conversations: [{"from": ..., "value": ...}]``; LLaVA names its image
in ``image`` (one path, relative to the image folder), ShareGPT-style data in ``images`` (a list) or
``image``, and may give a ``system`` prompt at top level. Every other field is kept (``id``,
``answers``, ...). The ``<image>`` placeholders stay where the data puts them; the pipeline checks
their count against the images.
"""

from __future__ import annotations

from typing import Any

from ._messages import MessagesDataset

#: ``from`` values -> roles; LLaVA writes human / gpt, ShareGPT variants also user / assistant / system.
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def to_messages(row: Any, where: str) -> tuple[dict[str, Any] | None, str | None]:
    """One record -> ``({messages, images, ...}, None)``, or ``(None, problem naming the row)``."""
    if not isinstance(row, dict):
        return None, f"{where}: expected an object with 'conversations', got {type(row).__name__}"
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        return None, f"{where}: 'conversations' must be a non-empty list of {{from, value}}"
    messages = []
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages.append({"role": "system", "content": row["system"]})
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return None, f"{where}: conversations[{j}] must be {{from, value}} with string value, got {turn!r:.80}"
        role = ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            return None, (
                f"{where}: conversations[{j}] has from: {turn.get('from')!r}; expected one of "
                f"{', '.join(ROLES)} (tool and function turns are not supported)"
            )
        messages.append({"role": role, "content": turn["value"]})
    images = row.get("images", row.get("image", []))
    images = [images] if isinstance(images, str) else images
    rest = {k: v for k, v in row.items() if k not in ("conversations", "image", "images", "system")}
    return {**rest, "messages": messages, "images": images}, None


def build(config: Any, ctx: Any) -> MessagesDataset:
    return MessagesDataset(
        config,
        skip_bad=ctx.on_bad_sample == "skip",
        convert=to_messages,
        allow_outside=bool(getattr(ctx, "allow_paths_outside_data", False)),
        streaming=bool(getattr(ctx, "streaming", False)),
    )


def is_conversation(sample: Any) -> bool:
    """Whether a record looks like LLaVA / ShareGPT data (``conversations`` of ``from`` / ``value``)."""
    turns = sample.get("conversations") if isinstance(sample, dict) else None
    return isinstance(turns, list) and bool(turns) and all(isinstance(t, dict) and "from" in t for t in turns)
