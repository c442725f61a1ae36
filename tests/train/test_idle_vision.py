"""A training batch without images still runs the vision path when several processes train (ZeRO-3
would otherwise hang in the tower's parameter gather, DDP would leave the tower without gradients):
the loss is unchanged to the bit, and the tower and connector take part in backward."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from vlmplug.testing import tiny

torch.set_num_threads(1)


def _text_only(vlm: Any, tok: Any) -> dict[str, Any]:
    batch = tiny.make_batch(vlm, tok, (0, 0), seed=4)
    return {k: v for k, v in batch.items() if v is not None and k != "pixel_values"}


@pytest.mark.parametrize(
    ("fusion", "connector"),
    [("interleaved", "mlp"), ("modality-experts", "mlp"), ("cross-attention", "mlp"), ("interleaved", "qformer-text")],
)
def test_idle_vision_changes_no_value_and_reaches_the_tower(fusion: str, connector: str) -> None:
    """With it, a text-only batch reaches exactly the vision parameters an image batch reaches (with zero
    gradients), and its loss is bit for bit the loss without it."""
    tok = tiny.make_tokenizer()
    vlm = tiny.make_vlm(tok, tiny.make_ctx(), fusion=fusion, connector=connector).train()
    for p in vlm.parameters():
        p.requires_grad_(True)
    vision = {f"vision_encoder.{n}": p for n, p in vlm.vision_encoder.named_parameters()}
    vision |= {f"connector.{n}": p for n, p in vlm.connector.named_parameters()}

    def reached(batch: dict[str, Any], run: bool) -> tuple[torch.Tensor, set[str]]:
        vlm.zero_grad(set_to_none=True)
        vlm.run_idle_vision = run
        loss = vlm(**batch).loss
        loss.backward()
        return loss.detach(), {n for n, p in vision.items() if p.grad is not None}

    _, by_images = reached(tiny.make_batch(vlm, tok, (1, 1), seed=4), run=False)
    text = _text_only(vlm, tok)
    plain_loss, plain = reached(text, run=False)
    idle_loss, idle = reached(text, run=True)
    assert plain == set() and idle == by_images and idle
    assert torch.equal(idle_loss, plain_loss)
    assert all(bool((vision[n].grad == 0).all()) for n in idle)


def test_a_single_process_skips_it() -> None:
    tok = tiny.make_tokenizer()
    vlm = tiny.make_vlm(tok, tiny.make_ctx()).train()
    assert vlm.run_idle_vision is None
    embeds = torch.zeros(2, 3)
    assert vlm.idle_vision(embeds).grad_fn is None  # a plain zero: no vision forward here
