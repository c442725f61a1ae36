"""``qformer-text``: InstructBLIP's instruction-aware Q-Former (Dai et al. 2023).

As ``qformer`` (BLIP-2), but the tokens of the message each image appears in (``<image>`` removed)
join the learned queries' self-attention, so what the queries extract from the image depends on the
question. Only the queries cross-attend to the image, and only the query positions become LLM tokens
(``num_query_tokens`` per image). The instruction ids are the LLM tokenizer's; the Q-Former embeds
them with its own word embeddings (``vocab_size`` x ``hidden_size``). Called without instruction
ids, it computes exactly what a BLIP-2 Q-Former does. The Q-Former is transformers' own
``InstructBlipQFormerModel``; see :mod:`vlmplug.plugins.connectors._qformer`.
"""

from __future__ import annotations

from vlmplug import ComponentSpec, hookimpl

from .qformer import TEST_OPTIONS, QFormerConfig

SPEC = ComponentSpec(
    name="qformer-text",
    summary="InstructBLIP Q-Former: the instruction joins the queries' self-attention (text-conditioned)",
    factory="vlmplug.plugins.connectors._qformer:build_qformer_text",
    config=QFormerConfig,
    aliases=("qformer_text",),
    flat_keys=("num_query_tokens",),
    needs=("instruction",),
    test_options=TEST_OPTIONS,
)


@hookimpl
def register_connectors(register) -> None:
    register(SPEC)
