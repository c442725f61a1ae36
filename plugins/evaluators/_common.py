"""What several evaluators share: the conversation to generate from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlmplug.errors import DataError

__all__ = ["conversation"]


def conversation(sample: Mapping[str, Any], suffix: str) -> list[dict[str, str]]:
    """The conversation up to (not including) the last assistant turn (all of it when there is no
    assistant turn), with ``suffix`` appended to the final turn on a new line."""
    msgs = list(sample["messages"])
    assistant = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    msgs = [dict(m) for m in (msgs[: assistant[-1]] if assistant else msgs)]
    if not msgs or msgs[-1]["role"] != "user":
        raise DataError(
            "evaluation sample: the conversation before the last assistant turn must end with a user turn",
            reason="malformed-row",
            where=sample.get("_where"),
        )
    if suffix:
        msgs[-1]["content"] = f"{msgs[-1]['content']}\n{suffix}"
    return msgs
