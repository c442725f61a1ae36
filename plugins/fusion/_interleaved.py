"""Interleaved fusion (LLaVA, Liu et al. 2023): each ``<image>`` placeholder in the text is expanded
to the connector's token budget by the data pipeline, and here those positions of the input
embeddings are overwritten with the vision tokens, in order.

The image token needs no row of its own in the LLM's embedding matrix (its positions are
overwritten), so its id may lie past the vocabulary: ids are masked to 0 before the lookup and the
LLM's embeddings are never resized for it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from vlmplug.train.vlm import VisionLanguageModel


class InterleavedVLM(VisionLanguageModel):
    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        image_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        is_image = input_ids == self.image_token_id
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        n_slots = int(is_image.sum())
        if pixel_values is None or pixel_values.numel() == 0:
            if n_slots:
                raise ValueError(f"the batch has {n_slots} image-token positions but no pixel_values")
            return embeds + self.idle_vision(embeds)  # 0, but every rank runs the vision path
        vision = self.encode_images(pixel_values, instruction_ids, instruction_mask, image_frames)  # [N_img, T, H]
        if vision.shape[0] * vision.shape[1] != n_slots:
            raise ValueError(
                f"the batch has {n_slots} image-token positions but {vision.shape[0]} images x "
                f"{vision.shape[1]} tokens = {vision.shape[0] * vision.shape[1]} vision tokens"
            )
        mask = is_image.unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, vision.to(embeds.dtype).reshape(-1))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        image_frames: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        embeds = self.embed(input_ids, pixel_values, instruction_ids, instruction_mask, image_frames)
        if labels is not None and num_items_in_batch is not None:
            kwargs["num_items_in_batch"] = num_items_in_batch  # the HF causal-LM loss: sum / num_items
        with self._llm_context(input_ids, generating=False):
            return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        image_frames: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        embeds = self.embed(input_ids, pixel_values, instruction_ids, instruction_mask, image_frames)
        with self._llm_context(input_ids, generating=True):
            return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    def _llm_context(self, input_ids: torch.Tensor, generating: bool) -> AbstractContextManager[Any]:
        """What surrounds each call of the LLM; a fusion that steers the LLM through hooks sets their
        per-call context here (modality experts). Plain interleaving: nothing."""
        return nullcontext()


class InterleavedFusion:
    def placeholder_tokens(self, connector: Any) -> int:
        return int(connector.num_tokens)

    def build(self, *, llm: Any, vision_encoder: Any, connector: Any, image_token_id: int) -> InterleavedVLM:
        return InterleavedVLM(vision_encoder, connector, llm, image_token_id)


def build(config: Any, ctx: Any) -> InterleavedFusion:
    return InterleavedFusion()
