"""``cross-attention``: Flamingo-style gated cross-attention from the LLM's text hidden states to the
vision tokens, which stay out of the text stream (Alayrac et al. 2022, "Flamingo"; Idefics1).

Each ``<image>`` becomes one marker token (a learned embedding); a tanh-gated block (cross-attention,
then a feed-forward layer, gates initialised at 0) runs before every ``every_n_layers``-th decoder
layer of any transformers decoder LLM. By default only the new blocks and the connector train.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class CrossAttentionConfig:
    every_n_layers: int = field(
        default=4,
        metadata={
            "help": "A gated cross-attention block runs before decoder layers 0, n, 2n, ... (Flamingo: 1 for "
            "3B, 4 for 9B, 7 for 80B). Each block adds about one decoder layer's parameters; 4 keeps the "
            "trainable share near a quarter of the LLM. A block always precedes the first layer."
        },
    )
    num_heads: int = field(
        default=0,
        metadata={"help": "Attention heads of each cross-attention block (0: the LLM's num_attention_heads)."},
    )
    ffw_mult: int = field(
        default=4, metadata={"help": "Width of each block's feed-forward layer, in multiples of the LLM width."}
    )
    gate_init: float = field(
        default=0.0,
        metadata={
            "help": "Initial value of every tanh gate (Flamingo: 0, so the model starts exactly as the LLM and "
            "vision enters as the gates open; Idefics' alpha_initializer allows others). With 0 no gradient "
            "reaches the connector until the gates have moved, one step later."
        },
    )
    train_llm: bool = field(
        default=False,
        metadata={"help": "Also train the LLM (Flamingo keeps it frozen: only the new blocks and connector train)."},
    )

    def __post_init__(self) -> None:
        if self.every_n_layers < 1:
            raise ValueError("every_n_layers must be at least 1")
        if self.num_heads < 0:
            raise ValueError("num_heads must be 0 (the LLM's) or positive")
        if self.ffw_mult < 1:
            raise ValueError("ffw_mult must be at least 1")


SPEC = ComponentSpec(
    name="cross-attention",
    summary="Gated cross-attention blocks from text to vision tokens, gates at 0, LLM frozen (Flamingo)",
    factory="vlmplug.plugins.fusion._cross_attention:build",
    config=CrossAttentionConfig,
    offers=("instruction",),
    # gates slightly open, so the conformance kit's gradient and reload checks see vision at work
    test_options={"every_n_layers": 1, "gate_init": 0.1},
)


@hookimpl
def register_fusions(register) -> None:
    register(SPEC)
