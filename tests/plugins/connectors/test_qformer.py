"""The ``qformer`` (BLIP-2) and ``qformer-text`` (InstructBLIP) connectors: a fixed query budget,
cross-attention to the features, and for ``qformer-text`` the instruction in the queries' self-attention."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from transformers import Blip2QFormerConfig, Blip2QFormerModel, InstructBlipQFormerModel

from vlmplug.manager import load
from vlmplug.plugins.connectors import qformer, qformer_text
from vlmplug.plugins.connectors._qformer import InstructionQFormer, QFormer
from vlmplug.recipe import resolve
from vlmplug.testing import TINY_RECIPE, check_component

B, N, D, H, VOCAB = 2, 16, 32, 48, 60
SMALL = {"num_query_tokens": 6, "num_layers": 3, "hidden_size": 16, "heads": 2}


def _build(tiny, ctx, spec, options=None, n=N, seed=0):
    torch.manual_seed(seed)
    extra = {"vocab_size": VOCAB} if spec is qformer_text.SPEC else {}
    conn = tiny.build(spec, ctx, {**SMALL, **(options or {})}, in_dim=D, out_dim=H, num_input_tokens=n, **extra)
    return conn.eval()


def _text(tiny, ctx, **options):
    return _build(tiny, ctx, qformer_text.SPEC, options)


def test_defaults(tiny, ctx):
    config = qformer.QFormerConfig()
    assert config.num_query_tokens == 32  # BLIP-2 / InstructBLIP
    assert (config.num_layers, config.hidden_size, config.heads, config.cross_attention_frequency) == (4, 256, 4, 2)
    conn = tiny.build(qformer.SPEC, ctx, in_dim=D, out_dim=H, num_input_tokens=N)
    assert isinstance(conn.qformer, Blip2QFormerModel)
    assert conn.num_tokens == 32
    assert conn.query_tokens.shape == (1, 32, 256)
    assert [layer.has_cross_attention for layer in conn.qformer.encoder.layer] == [True, False, True, False]
    assert conn.qformer.encoder.layer[0].crossattention.attention.key.in_features == D  # encoder_hidden_size
    assert (conn.language_projection.in_features, conn.language_projection.out_features) == (256, H)


@pytest.mark.parametrize("spec", [qformer.SPEC, qformer_text.SPEC], ids=["qformer", "qformer-text"])
@pytest.mark.parametrize("n", [16, 10, 1, 50])  # 10 and 50 are not squares
@pytest.mark.parametrize("b", [1, 3])
def test_output_length_is_the_declared_query_count(tiny, ctx, spec, n, b):
    conn = _build(tiny, ctx, spec, n=n)
    assert conn.num_tokens == 6 == conn.query_tokens.shape[1]
    x = torch.randn(b, n, D)
    assert conn(x).shape == (b, 6, H)
    if spec is qformer_text.SPEC:
        ids = torch.randint(0, VOCAB, (b, 7))
        assert conn(x, instruction_ids=ids, instruction_mask=torch.ones_like(ids)).shape == (b, 6, H)


def test_qformer_is_the_blip2_composition(tiny, ctx):
    """query tokens -> transformers' Blip2QFormerModel cross-attending to the features -> language projection."""
    conn = _build(tiny, ctx, qformer.SPEC)
    x = torch.randn(B, N, D)
    hidden = conn.qformer(query_embeds=conn.query_tokens.expand(B, -1, -1), encoder_hidden_states=x).last_hidden_state
    torch.testing.assert_close(conn(x), conn.language_projection(hidden))


def test_queries_are_distinct_and_the_image_matters(tiny, ctx):
    conn = _build(tiny, ctx, qformer.SPEC)
    x = torch.randn(1, N, D)
    out = conn(x)[0]
    assert not torch.allclose(out[0], out[1], atol=1e-3)
    assert not torch.allclose(conn(x), conn(torch.randn(1, N, D)), atol=1e-4)


@pytest.mark.parametrize("spec", [qformer.SPEC, qformer_text.SPEC], ids=["qformer", "qformer-text"])
def test_gradients_reach_every_trainable_parameter(tiny, ctx, spec):
    conn = _build(tiny, ctx, spec).train()
    x = torch.randn(B, N, D)
    if spec is qformer_text.SPEC:
        ids = torch.randint(0, VOCAB, (B, 7))
        out = conn(x, instruction_ids=ids, instruction_mask=torch.ones_like(ids))
    else:
        out = conn(x)
    out.pow(2).mean().backward()
    for name, p in conn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_text_qformer_has_no_dead_parameters(tiny, ctx):
    """The last layer's text feed-forward outputs are never read: that block is not built."""
    conn = _text(tiny, ctx)
    assert isinstance(conn.qformer, InstructBlipQFormerModel)
    last = len(conn.qformer.encoder.layer) - 1
    names = [n for n, _ in conn.named_parameters()]
    assert not [n for n in names if n.startswith(f"qformer.encoder.layer.{last}.intermediate.")]
    assert not [n for n in names if n.startswith(f"qformer.encoder.layer.{last}.output.")]
    assert any(n.startswith("qformer.encoder.layer.0.intermediate.") for n in names)  # earlier layers keep theirs
    assert conn.qformer.embeddings.word_embeddings.num_embeddings == VOCAB


def test_a_different_instruction_changes_the_output(tiny, ctx):
    conn = _text(tiny, ctx)
    x = torch.randn(B, N, D)
    a = torch.randint(0, VOCAB, (B, 6))
    b = (a + 1) % VOCAB
    ones = torch.ones_like(a)
    with torch.no_grad():
        out_a = conn(x, instruction_ids=a, instruction_mask=ones)
        out_b = conn(x, instruction_ids=b, instruction_mask=ones)
    assert not torch.allclose(out_a, out_b, atol=1e-4)
    # per image: only the row whose instruction changed moves
    c = a.clone()
    c[1] = b[1]
    with torch.no_grad():
        out_c = conn(x, instruction_ids=c, instruction_mask=ones)
    torch.testing.assert_close(out_c[0], out_a[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out_c[1], out_a[1], atol=1e-4)


def test_masked_right_padding_does_not_change_the_output(tiny, ctx):
    conn = _text(tiny, ctx)
    x = torch.randn(B, N, D)
    ids = torch.randint(1, VOCAB, (B, 5))
    padded = torch.cat([ids, torch.zeros(B, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(B, 5), torch.zeros(B, 4)], dim=1).long()
    with torch.no_grad():
        ref = conn(x, instruction_ids=ids, instruction_mask=torch.ones_like(ids))
        torch.testing.assert_close(conn(x, instruction_ids=padded, instruction_mask=mask), ref, atol=1e-5, rtol=1e-5)
        # the mask is what hides the pads: unmasked, they are attended to
        unmasked = conn(x, instruction_ids=padded, instruction_mask=torch.ones_like(padded))
    assert not torch.allclose(unmasked, ref, atol=1e-4)


def test_rows_of_different_lengths_match_their_own_unpadded_runs(tiny, ctx):
    """What the collator builds: right-padded instructions of different lengths in one batch."""
    from vlmplug.train.data import pad_instructions

    conn = _text(tiny, ctx)
    x = torch.randn(B, N, D)
    rows = [[5, 6, 7, 8, 9, 10], [11, 12]]
    ids, mask = pad_instructions(rows, pad=0)
    with torch.no_grad():
        batched = conn(x, instruction_ids=ids, instruction_mask=mask)
        for i, row in enumerate(rows):
            one = torch.tensor([row])
            alone = conn(x[i : i + 1], instruction_ids=one, instruction_mask=torch.ones_like(one))
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_without_instruction_it_is_a_blip2_qformer(tiny, ctx):
    """``instruction_ids=None``: the same computation as transformers' BLIP-2 Q-Former with the same weights
    (InstructBLIP's text-only parts -- word and position embeddings, text feed-forward blocks -- left out)."""
    conn = _text(tiny, ctx)
    text_only = re.compile(r"^(embeddings\.(word|position)_embeddings\.|encoder\.layer\.\d+\.(intermediate|output)\.)")
    mapped = {
        k.replace("embeddings.layernorm.", "layernorm."): v
        for k, v in conn.qformer.state_dict().items()
        if not text_only.match(k)
    }
    config = conn.qformer.config
    blip2 = Blip2QFormerModel(
        Blip2QFormerConfig(
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            cross_attention_frequency=config.cross_attention_frequency,
            encoder_hidden_size=config.encoder_hidden_size,
            layer_norm_eps=config.layer_norm_eps,
        )
    ).eval()
    blip2.load_state_dict(mapped, strict=True)
    x = torch.randn(B, N, D)
    with torch.no_grad():
        hidden = blip2(query_embeds=conn.query_tokens.expand(B, -1, -1), encoder_hidden_states=x).last_hidden_state
        torch.testing.assert_close(conn(x), conn.language_projection(hidden), atol=1e-5, rtol=1e-5)


def test_one_instruction_per_image(tiny, ctx):
    conn = _text(tiny, ctx)
    ids = torch.randint(0, VOCAB, (3, 4))
    with pytest.raises(ValueError, match="one instruction per image"):
        conn(torch.randn(B, N, D), instruction_ids=ids, instruction_mask=torch.ones_like(ids))


def test_options_are_validated():
    with pytest.raises(ValueError, match="must divide hidden_size"):
        qformer.SPEC.make_config({"hidden_size": 30, "heads": 4})
    for key in ("num_query_tokens", "num_layers", "cross_attention_frequency"):
        with pytest.raises(ValueError, match=key):
            qformer.SPEC.make_config({key: 0})


def test_specs():
    assert qformer.SPEC.flat_keys == qformer_text.SPEC.flat_keys == ("num_query_tokens",)
    assert qformer_text.SPEC.needs == ("instruction",)
    assert qformer.SPEC.needs == ()


@pytest.mark.parametrize("spec", [qformer.SPEC, qformer_text.SPEC], ids=["qformer", "qformer-text"])
def test_conformance(spec):
    assert check_component(spec)["num_tokens"] == spec.test_options["num_query_tokens"]


@pytest.mark.parametrize("name", ["qformer", "qformer-text"])
def test_flat_num_query_tokens_resolves(name):
    host = load()
    data = {**copy.deepcopy(TINY_RECIPE), "connector": name, "num_query_tokens": 16}
    sel = resolve(data, host.registry, host=host).single["connector"]
    assert sel.name == name
    assert sel.config().num_query_tokens == 16


def test_qformer_trains_end_to_end(run_recipe):
    import vlmplug

    result = run_recipe(steps=3, plugins=("qformer",))
    assert result.metrics["status"] == "finished" and result.metrics["train"]["steps"] == 3
    assert isinstance(result.model.connector, QFormer) and result.model.connector.num_tokens == 32
    loaded = vlmplug.load(result.run_dir)
    result.model.eval()
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(pixels), result.model.encode_images(pixels))


def test_qformer_text_trains_end_to_end_on_the_instructions(run_recipe, monkeypatch):
    """The data pipeline hands every image's instruction to the connector, in training and in evaluation."""
    import vlmplug

    seen: list[tuple[int, int] | None] = []
    forward = InstructionQFormer.forward

    def spy(self, features, instruction_ids=None, instruction_mask=None):
        seen.append(None if instruction_ids is None else (features.shape[0], instruction_ids.shape[0]))
        if instruction_ids is not None:
            assert instruction_mask is not None and instruction_mask.shape == instruction_ids.shape
            assert int(instruction_mask.sum(1).min()) >= 1
        return forward(self, features, instruction_ids, instruction_mask)

    monkeypatch.setattr(InstructionQFormer, "forward", spy)
    result = run_recipe(steps=3, plugins=("qformer-text",), num_query_tokens=16)
    assert result.metrics["status"] == "finished" and result.metrics["train"]["steps"] == 3
    assert torch.isfinite(torch.tensor(result.metrics["train"]["final_loss"]))
    assert seen and all(s is not None and s[0] == s[1] for s in seen), seen[:5]
    conn = result.model.connector
    assert isinstance(conn, InstructionQFormer) and conn.num_tokens == 16
    assert conn.qformer.embeddings.word_embeddings.num_embeddings == len(result.tokenizer)
    loaded = vlmplug.load(result.run_dir)
    result.model.eval()
    pixels = torch.rand(2, 3, 32, 32)
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.encode_images(pixels, ids, mask), result.model.encode_images(pixels, ids, mask)
        )
