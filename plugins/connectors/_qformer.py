"""Q-Former connectors: BLIP-2 (Li et al. 2023) and InstructBLIP's text-conditioned one (Dai et al. 2023).

The Q-Formers are transformers' own ``Blip2QFormerModel`` and ``InstructBlipQFormerModel``, used as
they are rather than re-written; this module adds what BLIP-2's ``Blip2Model`` puts around them --
the learned ``query_tokens`` and the ``language_projection`` to the LLM width -- under the same
attribute names, so BLIP-2 / InstructBLIP weights map by name.

One departure: the queries are drawn from N(0, 0.02), as in the original BLIP-2 code, instead of
transformers' zeros (which it overwrites with trained weights when loading a checkpoint): zero
queries are all identical and give ``num_query_tokens`` identical tokens.

InstructBLIP (``qformer-text``): the instruction tokens get the Q-Former's own word and position
embeddings (``vocab_size`` = the LLM tokenizer's, so the ids need no re-tokenising), join the
queries' self-attention, and only the queries cross-attend to the image; the output is the query
positions. The text positions' outputs of the last layer are never used, so that layer's text
feed-forward block (``intermediate`` / ``output``) is replaced by a pass-through: a parameter that
cannot get a gradient is dead weight in every optimizer and checkpoint. Instructions longer than
the position table (512, as BERT's) keep their first 512 tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel, InstructBlipQFormerConfig, InstructBlipQFormerModel

#: Instruction positions the text-conditioned Q-Former embeds (BERT's, as InstructBLIP's).
MAX_INSTRUCTION_TOKENS = 512


def _qformer_kwargs(config: Any, in_dim: int) -> dict[str, Any]:
    return {
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.heads,
        "intermediate_size": 4 * config.hidden_size,
        "cross_attention_frequency": config.cross_attention_frequency,
        "encoder_hidden_size": in_dim,
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.dropout,
    }


class QFormer(nn.Module):
    """BLIP-2: ``[B, N, D]`` -> ``[B, num_tokens, H]`` for any ``N``."""

    def __init__(self, qformer: nn.Module, *, num_query_tokens: int, out_dim: int):
        super().__init__()
        hidden = qformer.config.hidden_size
        self.query_tokens = nn.Parameter(torch.randn(1, num_query_tokens, hidden) * qformer.config.initializer_range)
        self.qformer = qformer
        self.language_projection = nn.Linear(hidden, out_dim)
        self.num_tokens = num_query_tokens

    def _queries(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 3:
            raise ValueError(f"qformer: expected features [B, N, D], got {tuple(features.shape)}")
        return self.query_tokens.expand(features.shape[0], -1, -1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.qformer(query_embeds=self._queries(features), encoder_hidden_states=features).last_hidden_state
        return self.language_projection(out.to(self.language_projection.weight.dtype))


class _Passthrough(nn.Module):
    """Stands in for a Q-Former layer's text ``output`` block: returns the attention output unchanged."""

    def forward(self, intermediate_output: torch.Tensor, attention_output: torch.Tensor) -> torch.Tensor:
        return attention_output


class InstructionQFormer(QFormer):
    """InstructBLIP: ``forward(features [B, N, D], instruction_ids [B, L], instruction_mask [B, L])``.

    Without ``instruction_ids`` the queries attend to nothing but each other and the image: the same
    computation as BLIP-2's Q-Former (the text parameters are then unused)."""

    def forward(
        self,
        features: torch.Tensor,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        queries = self._queries(features)
        if instruction_ids is None:
            out = self.qformer(input_ids=None, query_embeds=queries, encoder_hidden_states=features)
            return self.language_projection(out.last_hidden_state.to(self.language_projection.weight.dtype))
        if instruction_ids.shape[0] != features.shape[0]:
            raise ValueError(
                f"qformer-text: {instruction_ids.shape[0]} instructions for {features.shape[0]} images; "
                "pass one instruction per image"
            )
        ids = instruction_ids[:, :MAX_INSTRUCTION_TOKENS].to(queries.device)
        if instruction_mask is None:
            text_mask = torch.ones_like(ids)
        else:
            text_mask = instruction_mask[:, :MAX_INSTRUCTION_TOKENS].to(device=ids.device, dtype=torch.long)
        query_mask = torch.ones(queries.shape[:2], dtype=torch.long, device=ids.device)
        out = self.qformer(
            input_ids=ids,
            attention_mask=torch.cat([query_mask, text_mask], dim=1),
            query_embeds=queries,
            encoder_hidden_states=features,
        ).last_hidden_state[:, : self.num_tokens]
        return self.language_projection(out.to(self.language_projection.weight.dtype))


def build_qformer(config: Any, ctx: Any, *, in_dim: int, out_dim: int, num_input_tokens: int) -> QFormer:
    qformer = Blip2QFormerModel(Blip2QFormerConfig(**_qformer_kwargs(config, in_dim)))
    return QFormer(qformer, num_query_tokens=config.num_query_tokens, out_dim=out_dim)


def build_qformer_text(
    config: Any, ctx: Any, *, in_dim: int, out_dim: int, num_input_tokens: int, vocab_size: int
) -> InstructionQFormer:
    qformer = InstructBlipQFormerModel(
        InstructBlipQFormerConfig(
            **_qformer_kwargs(config, in_dim),
            vocab_size=vocab_size,
            max_position_embeddings=MAX_INSTRUCTION_TOKENS,
            pad_token_id=None,  # padding is masked, not looked up: every embedding row trains
        )
    )
    last = qformer.encoder.layer[-1]
    last.intermediate = nn.Identity()
    last.output = _Passthrough()
    return InstructionQFormer(qformer, num_query_tokens=config.num_query_tokens, out_dim=out_dim)
