"""``qformer``: the BLIP-2 Querying Transformer (Li et al. 2023).

``num_query_tokens`` learned queries self-attend and cross-attend to the vision features (every
``cross_attention_frequency``-th layer), then a linear layer (BLIP-2's language projection) maps them
to the LLM width: a fixed budget of ``num_query_tokens`` LLM tokens per image, whatever the number of
vision features. The Q-Former is transformers' own ``Blip2QFormerModel``; see
:mod:`vlmplug.plugins.connectors._qformer`.

The defaults are a small Q-Former (4 layers of width 256, 4 heads) rather than BLIP-2's BERT-base
sized one (12 layers of width 768, initialised from BERT and pre-trained in two stages): vlmplug
trains the connector from scratch on a fine-tuning budget, so the default keeps it to a few million
parameters (5.5M for D = 1024, H = 4096); raise ``num_layers`` / ``hidden_size`` for BLIP-2's size.
:class:`QFormerConfig` is shared with ``qformer-text`` (:mod:`vlmplug.plugins.connectors.qformer_text`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class QFormerConfig:
    num_query_tokens: int = field(
        default=32, metadata={"help": "Learned queries = LLM tokens per image (BLIP-2 and InstructBLIP: 32)."}
    )
    num_layers: int = field(default=4, metadata={"help": "Q-Former layers (BLIP-2: 12; small by default)."})
    hidden_size: int = field(default=256, metadata={"help": "Q-Former width (BLIP-2: 768); MLP width is 4x this."})
    heads: int = field(default=4, metadata={"help": "Attention heads; must divide hidden_size (BLIP-2: 12)."})
    cross_attention_frequency: int = field(
        default=2,
        metadata={"help": "Layers 0, k, 2k, ... cross-attend to the vision features (BLIP-2: k = 2)."},
    )
    dropout: float = field(
        default=0.0, metadata={"help": "Dropout on hidden states and attention probabilities (BLIP-2: 0.1)."}
    )

    def __post_init__(self) -> None:
        for name in ("num_query_tokens", "num_layers", "hidden_size", "heads", "cross_attention_frequency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.hidden_size % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide hidden_size ({self.hidden_size})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")


#: Tiny, fast options for the conformance kit and the architecture matrix.
TEST_OPTIONS = {"num_query_tokens": 5, "num_layers": 2, "hidden_size": 16, "heads": 2, "cross_attention_frequency": 2}

SPEC = ComponentSpec(
    name="qformer",
    summary="BLIP-2 Q-Former: num_query_tokens learned queries cross-attend to the features, projected to the LLM",
    factory="vlmplug.plugins.connectors._qformer:build_qformer",
    config=QFormerConfig,
    flat_keys=("num_query_tokens",),
    test_options=TEST_OPTIONS,
)


@hookimpl
def register_connectors(register) -> None:
    register(SPEC)
