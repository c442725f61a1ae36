"""``packing``: several samples share one row of at most ``max_seq_length`` tokens, each with its own
position ids (0, 1, ... from its first token) and attending only to itself -- a block-diagonal causal
mask that transformers builds from the restarting position ids (sdpa and eager; FlashAttention's
variable-length kernel with ``flash_attention_2``). The guide's ``packing: true``.

Each batch's samples are packed first-fit into as few rows as fit, so a step sees the same samples and
the same loss as without packing (the sum over target tokens divided by their number), on fewer, fuller
rows: less padding computed. The run reports the packing efficiency (real tokens / row slots) in
``metrics.json``. Images keep their order, so it composes with every fusion that reads vision tokens in
text order (``interleaved``, ``modality-experts``); ``cross-attention`` ties images to whole rows and
conflicts with it.
"""

from __future__ import annotations

from vlmplug import ComponentSpec, hookimpl

SPEC = ComponentSpec(
    name="packing",
    summary="Pack several samples into each max_seq_length row, each attending only to itself",
    factory="vlmplug.plugins.optim._packing:build",
    activated_by={"packing": True},
    conflicts=("cross-attention",),
)


@hookimpl
def register_optimizer_stack(register) -> None:
    register(SPEC)
