"""Interleaved fusion: vision tokens overwrite the ``<image>`` positions of the LLM input embeddings."""

from __future__ import annotations

import pytest
import torch

from vlmplug.plugins.fusion._interleaved import InterleavedFusion, InterleavedVLM


def _manual_embeds(vlm, input_ids, pixel_values):
    """The fused input built by hand: token embeddings, with image positions replaced in order."""
    embeds = vlm.llm.get_input_embeddings()(input_ids).clone()
    vision = vlm.connector(vlm.vision_encoder(pixel_values))  # [N_img, T, H]
    flat = vision.reshape(-1, vision.shape[-1])
    k = 0
    for r in range(input_ids.shape[0]):
        for c in range(input_ids.shape[1]):
            if input_ids[r, c] == vlm.image_token_id:
                embeds[r, c] = flat[k]
                k += 1
    assert k == flat.shape[0]
    return embeds


def _capture_llm_inputs(vlm):
    seen = {}

    def hook(module, args, kwargs):
        seen.update(kwargs)

    handle = vlm.llm.register_forward_pre_hook(hook, with_kwargs=True)
    return seen, handle


def test_build_and_placeholder_tokens(vlm):
    assert isinstance(vlm, InterleavedVLM)
    assert isinstance(vlm.fusion, InterleavedFusion)
    assert vlm.fusion.placeholder_tokens(vlm.connector) == vlm.vision_encoder.num_patches == 16


def test_embeddings_fed_to_llm(tiny, tokenizer, vlm):
    vlm.eval()
    batch = tiny.make_batch(vlm, tokenizer, (1, 2))  # 3 images over 2 rows, row 0 right-padded
    seen, handle = _capture_llm_inputs(vlm)
    with torch.no_grad():
        vlm(**batch)
        manual = _manual_embeds(vlm, batch["input_ids"], batch["pixel_values"])
        token_embeds = vlm.llm.get_input_embeddings()(batch["input_ids"])
        vision = vlm.encode_images(batch["pixel_values"])
    handle.remove()
    fed = seen["inputs_embeds"]
    assert "input_ids" not in seen or seen["input_ids"] is None
    assert fed.shape == manual.shape
    torch.testing.assert_close(fed, manual, rtol=0, atol=0)

    is_image = batch["input_ids"] == vlm.image_token_id
    torch.testing.assert_close(fed[~is_image], token_embeds[~is_image], rtol=0, atol=0)
    # row 0 holds image 0; row 1 holds images 1 and 2, in order
    torch.testing.assert_close(fed[0][is_image[0]], vision[0], rtol=0, atol=0)
    torch.testing.assert_close(fed[1][is_image[1]], vision[1:].reshape(-1, vision.shape[-1]), rtol=0, atol=0)
    assert not torch.allclose(fed[is_image], token_embeds[is_image])


def test_forward_loss_equals_llm_on_manual_embeddings(tiny, tokenizer, vlm):
    vlm.eval()
    batch = tiny.make_batch(vlm, tokenizer, (2, 1), seed=1)
    with torch.no_grad():
        out = vlm(**batch)
        manual = _manual_embeds(vlm, batch["input_ids"], batch["pixel_values"])
        ref = vlm.llm(inputs_embeds=manual, attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, ref.loss)
    torch.testing.assert_close(out.logits, ref.logits)


def test_loss_is_token_sum_over_num_items_in_batch(tiny, tokenizer, vlm):
    """The Trainer's contract (accepts_loss_kwargs): with num_items_in_batch the loss is the sum of the
    token losses divided by it, so micro-batches of an accumulated step add up; without it, the mean."""
    vlm.eval()
    batch = tiny.make_batch(vlm, tokenizer, (1, 2), seed=3)
    with torch.no_grad():
        logits = vlm(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).logits
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            batch["labels"][:, 1:].reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        n = int((batch["labels"][:, 1:] != -100).sum())
        mean = vlm(**batch).loss
        summed = vlm(**batch, num_items_in_batch=torch.tensor(7 * n)).loss
    assert vlm.accepts_loss_kwargs is True
    torch.testing.assert_close(mean, per_token / n)
    torch.testing.assert_close(summed, per_token / (7 * n))


def test_text_only_batch_is_plain_llm(tiny, tokenizer, vlm):
    vlm.eval()
    batch = tiny.make_batch(vlm, tokenizer, (0, 0))
    with torch.no_grad():
        out = vlm(batch["input_ids"], batch["attention_mask"], None, batch["labels"])
        ref = vlm.llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    torch.testing.assert_close(out.loss, ref.loss)


def test_gradients_reach_connector_and_llm(tiny, tokenizer, vlm):
    batch = tiny.make_batch(vlm, tokenizer, (1, 1))
    vlm(**batch).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vlm.connector.parameters())
    assert vlm.llm.get_input_embeddings().weight.grad is not None


@pytest.mark.parametrize("n_pixels", [1, 3])
def test_image_count_mismatch_raises(tiny, tokenizer, vlm, n_pixels):
    batch = tiny.make_batch(vlm, tokenizer, (1, 1))  # 2 images' worth of placeholders = 32 positions
    batch["pixel_values"] = batch["pixel_values"][:1].repeat(n_pixels, 1, 1, 1)
    with pytest.raises(ValueError) as err:
        vlm(**batch)
    msg = str(err.value)
    assert "32 image-token positions" in msg
    assert f"{n_pixels} images x 16 tokens = {16 * n_pixels} vision tokens" in msg


def test_placeholders_without_pixels_raise(tiny, tokenizer, vlm):
    batch = tiny.make_batch(vlm, tokenizer, (1,))
    batch["pixel_values"] = None
    with pytest.raises(ValueError, match="16 image-token positions but no pixel_values"):
        vlm(**batch)


def test_generate_returns_new_tokens(tiny, tokenizer, vlm):
    vlm.eval()
    batch = tiny.make_batch(vlm, tokenizer, (1,), seed=2)
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    out = vlm.generate(
        ids, mask, pixels, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=None
    )
    assert out.dtype == torch.long
    assert out.shape == (1, 4)  # with inputs_embeds only, the LLM returns just the new tokens
    assert int(out.min()) >= 0 and int(out.max()) < len(tokenizer)
    # greedy: the first new token is the argmax of the forward pass at the last position
    with torch.no_grad():
        logits = vlm(ids, mask, pixels).logits
    assert int(out[0, 0]) == int(logits[0, -1].argmax())
    # and the rest continue greedily from the fused prompt
    with torch.no_grad():
        emb = vlm.embed(ids, pixels)
        step2 = vlm.llm(inputs_embeds=torch.cat([emb, vlm.llm.get_input_embeddings()(out[:, :1])], 1)).logits
    assert int(out[0, 1]) == int(step2[0, -1].argmax())
