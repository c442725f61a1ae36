"""``vlmplug data negatives`` and ``vlmplug data synth``: datasets made from other data.

``negatives`` writes POPE hallucination probes and "object does not exist" training rows from
per-image object lists (COCO instances, object records, or captions); ``synth`` asks an
OpenAI-compatible endpoint to caption images or write question/answer pairs about them. This plugin
registers no component, only the two commands (in the core's ``vlmplug data`` group); their code
loads when the CLI starts (click and the standard library only, nothing heavy).
"""

from __future__ import annotations

from typing import Any

from vlmplug import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    """``vlmplug data negatives`` and ``vlmplug data synth``."""
    from ._negatives_cli import negatives_cmd
    from ._synth_cli import synth_cmd

    data = cli.commands.get("data")
    if data is not None:
        data.add_command(negatives_cmd)
        data.add_command(synth_cmd)
