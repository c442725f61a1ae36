"""``packing``: samples share rows but not attention. Against the same samples unpacked: every
sample's logits are its own (to float rounding), and the batch loss -- the target-token-weighted mean
-- is the same (rtol 1e-5), under sdpa and eager, with images in order (interleaved and modality
experts). A run with ``packing: true`` reports its efficiency."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from vlmplug.plugins.optim._packing import PackedCollator, first_fit, position_ids
from vlmplug.testing import tiny
from vlmplug.train.data import IGNORE_INDEX, STATS_KEY, TrainCollator
from vlmplug.train.llm import TINY_SPECIALS

torch.set_num_threads(1)


def test_first_fit() -> None:
    assert first_fit([5, 3, 4, 2, 6], 8) == [[0, 1], [2, 3], [4]]
    assert first_fit([9, 1], 8) == [[0], [1]]  # an over-long item gets its own row; the next one fits nowhere else


def test_position_ids_restart_per_sample_and_for_the_padding() -> None:
    got = position_ids([[3, 2], [4]], width=6)
    assert got.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]


def _items(vlm: Any, tok: Any, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Samples of different lengths: prompt (with 0-2 images) then an answer that is labelled."""
    g = torch.Generator().manual_seed(seed)
    first = len(TINY_SPECIALS) + 1
    items = []
    for i in range(n):
        n_images = i % 3
        prompt = torch.randint(first, len(tok), (3 + i,), generator=g).tolist()
        answer = torch.randint(first, len(tok), (2 + (i * 3) % 5,), generator=g).tolist()
        ids = prompt + [vlm.image_token_id] * vlm.tokens_per_image * n_images + answer
        labels = [IGNORE_INDEX] * (len(ids) - len(answer)) + answer
        items.append(
            {"input_ids": ids, "labels": labels, "images": tiny.random_images(n_images, seed + i), "frames": []}
        )
    return items


def _model(fusion: str, attn: str) -> tuple[Any, Any]:
    tok = tiny.make_tokenizer()
    vlm = tiny.make_vlm(tok, tiny.make_ctx(), fusion=fusion)
    vlm.tokens_per_image = vlm.connector.num_tokens
    vlm.llm.set_attn_implementation(attn)
    return vlm.eval(), tok


def _loss(vlm: Any, batch: dict[str, Any]) -> torch.Tensor:
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return vlm(**batch, num_items_in_batch=n).loss


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("fusion", ["interleaved", "modality-experts"])
def test_packed_loss_and_logits_equal_the_unpacked(fusion: str, attn: str) -> None:
    vlm, tok = _model(fusion, attn)
    items = _items(vlm, tok, 6)
    collate = TrainCollator(tok.pad_token_id, vlm.vision_encoder.preprocess)
    longest = max(len(it["input_ids"]) for it in items)
    packer = PackedCollator(collate, capacity=2 * longest)
    packed, unpacked = packer(items), collate(items)
    counts = packed.pop(STATS_KEY)  # the trainer pops the batch's counts before the model sees it
    assert packed["input_ids"].shape[0] < len(items)  # rows were shared
    with torch.no_grad():
        torch.testing.assert_close(_loss(vlm, packed), _loss(vlm, unpacked), rtol=1e-5, atol=1e-6)
        logits_packed = vlm(**packed).logits
        logits_alone = vlm(**unpacked).logits
    # each sample's logits in its packed row are those it has alone
    groups = first_fit([len(it["input_ids"]) for it in items], 2 * longest)
    for row, group in enumerate(groups):
        start = 0
        for i in group:
            n = len(items[i]["input_ids"])
            torch.testing.assert_close(logits_packed[row, start : start + n], logits_alone[i, :n], rtol=1e-4, atol=1e-4)
            start += n
    stats = packer.summarize(counts)
    assert counts["real_tokens"] == sum(len(it["input_ids"]) for it in items) and counts["rows"] == len(groups)
    assert stats["samples_per_row"] == pytest.approx(6 / len(groups), abs=1e-3)
    assert stats["packing_efficiency"] == pytest.approx(
        counts["real_tokens"] / (len(groups) * packed["input_ids"].shape[1]), abs=1e-4
    )


def test_cross_attention_conflicts(vlmplug_host: Any) -> None:
    import copy

    from vlmplug.errors import ConfigError
    from vlmplug.recipe import resolve
    from vlmplug.testing import TINY_RECIPE

    with pytest.raises(ConfigError, match="packing conflicts with 'cross-attention'"):
        resolve({**copy.deepcopy(TINY_RECIPE), "packing": True, "fusion": "cross-attention"}, vlmplug_host.registry)


def test_a_packed_run_reports_its_efficiency(run_recipe: Any) -> None:
    res = run_recipe(None, steps=3, packing=True, eval_datasets=[], evaluators=[])
    train = res.metrics["train"]
    assert train["samples_per_row"] > 1 and 0.5 < train["packing_efficiency"] <= 1
    assert train["final_loss"] is not None
    # the collator runs in a dataloader worker: the same batches, the same counts
    workers = run_recipe(None, steps=3, packing=True, eval_datasets=[], evaluators=[], dataloader_num_workers=1)
    assert {k: workers.metrics["train"][k] for k in ("packing_efficiency", "samples_per_row", "rows")} == {
        k: train[k] for k in ("packing_efficiency", "samples_per_row", "rows")
    }
