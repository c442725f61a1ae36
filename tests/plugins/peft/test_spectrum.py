"""``spectrum``: the reference tool's weight types, SNR (against a numpy computation of its formula),
per-type selection and files (exact text); the method freezes all but the selection in every part;
a YAML written by the scan selects the same weights; ``vlmplug spectrum scan``; training with it
learns, leaves the rest untouched and saves a model that reloads."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vlmplug.plugins.peft import _spectrum_snr as snr_lib
from vlmplug.plugins.peft import spectrum as spectrum_plugin
from vlmplug.plugins.peft._spectrum import SpectrumMethod


def _method(tiny: Any, ctx: Any, **options: Any) -> SpectrumMethod:
    method = tiny.build(spectrum_plugin.SPEC, ctx, options)
    assert isinstance(method, SpectrumMethod)
    return method


# -- the reference's definitions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("model.layers.3.self_attn.q_proj", "self_attn.q_proj"),
        ("model.layers.12.mlp.down_proj", "mlp.down_proj"),
        ("model.layers.0.input_layernorm", "input_layernorm"),
        ("lm_head", "lm_head"),
        ("model.embed_tokens", "model.embed_tokens"),
    ],
)
def test_weight_type_is_what_follows_the_layer_index(name, kind):
    assert snr_lib.weight_type(name) == kind


def test_weight_types_are_grouped_and_sorted_like_the_reference(tiny_llm):
    assert snr_lib.weight_types(tiny_llm) == [
        "input_layernorm",
        "lm_head",
        "mlp.down_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "model.embed_tokens",
        "model.norm",
        "model.rotary_emb",  # has inv_freq: listed, never scanned (no weight)
        "post_attention_layernorm",
        "self_attn.k_proj",
        "self_attn.o_proj",
        "self_attn.q_proj",
        "self_attn.v_proj",
    ]


def _reference_snr(w: np.ndarray) -> float:
    """The reference formula, step by step in numpy."""
    s = np.linalg.svd(w, compute_uv=False)
    sigma = (np.quantile(s, 0.75) - np.quantile(s, 0.25)) / 1.349
    n, m = w.shape
    beta = min(n, m) / max(n, m)
    threshold = sigma * np.sqrt((1 + np.sqrt(beta)) ** 2)
    signal = s[s > threshold].sum() if (s > threshold).any() else 0.0
    noise = s[s <= threshold].sum() if (s <= threshold).any() else 1.0
    return float(signal / noise / s[0])


@pytest.mark.parametrize("shape", [(48, 32), (32, 48), (40, 40)])
def test_layer_snr_is_the_reference_formula(shape):
    rng = np.random.default_rng(0)
    n, m = shape
    low_rank = rng.normal(size=(n, 3)) @ rng.normal(size=(3, m))
    w = (low_rank + 0.3 * rng.normal(size=shape)).astype(np.float32)
    assert snr_lib.layer_snr(torch.from_numpy(w)) == pytest.approx(_reference_snr(w.astype(np.float64)), rel=1e-4)


def test_a_vector_weight_has_snr_one():
    """One singular value, zero spread: all signal, an empty noise set counts as 1, divided by S[0]."""
    assert snr_lib.layer_snr(torch.full((16,), 2.0)) == pytest.approx(1.0)


def test_selection_is_the_top_int_share_per_type():
    scores = {
        "a.0.x": {"snr": 0.1, "type": "x"},
        "a.1.x": {"snr": 0.9, "type": "x"},
        "a.2.x": {"snr": 0.5, "type": "x"},
        "a.0.y": {"snr": 0.2, "type": "y"},
    }
    assert snr_lib.select(scores, 50) == {"x": ["a.1.x"], "y": []}  # int(3 * 0.5) = 1, int(1 * 0.5) = 0
    assert snr_lib.select(scores, 100) == {"x": ["a.1.x", "a.2.x", "a.0.x"], "y": ["a.0.y"]}


def test_files_are_the_reference_formats(tmp_path):
    scores = {
        "model.layers.0.mlp.up_proj": {"snr": 0.2, "type": "mlp.up_proj"},
        "model.layers.1.mlp.up_proj": {"snr": 0.4, "type": "mlp.up_proj"},
        "model.layers.0.self_attn.q_proj": {"snr": 0.3, "type": "self_attn.q_proj"},
        "model.layers.1.self_attn.q_proj": {"snr": 0.1, "type": "self_attn.q_proj"},
    }
    paths = snr_lib.write_results(scores, tmp_path, "org/My_Model", 50)
    assert {k: p.name for k, p in paths.items()} == {
        "snr": "snr_results_org-My-Model.json",
        "sorted": "snr_results_org-My-Model_sorted.json",
        "unfrozen": "snr_results_org-My-Model_unfrozenparameters_50percent.yaml",
    }
    assert json.loads(paths["snr"].read_text()) == scores
    assert list(json.loads(paths["sorted"].read_text())["mlp.up_proj"]) == [
        "model.layers.1.mlp.up_proj",
        "model.layers.0.mlp.up_proj",
    ]
    assert paths["unfrozen"].read_text() == (
        "unfrozen_parameters:\n"
        "- ^lm_head.weight$\n"
        "- ^model.embed_tokens.weight$\n"
        "# mlp.up_proj layers\n"
        "- model.layers.1.mlp.up_proj\n"
        "# self_attn.q_proj layers\n"
        "- model.layers.0.self_attn.q_proj\n"
    )
    assert snr_lib.read_patterns(paths["unfrozen"])[2:] == [
        "model.layers.1.mlp.up_proj",
        "model.layers.0.self_attn.q_proj",
    ]
    assert snr_lib.read_snr(paths["snr"]) == scores
    (tmp_path / "bad.yaml").write_text("something: else\n")
    with pytest.raises(ValueError, match="expected 'unfrozen_parameters:'"):
        snr_lib.read_patterns(tmp_path / "bad.yaml")


# -- the method -----------------------------------------------------------------------------------


def _trainable(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_only_the_selection_trains(tiny, tiny_ctx, tiny_tokenizer):
    vlm = tiny.make_vlm(tiny_tokenizer, tiny_ctx)
    method = _method(tiny, tiny_ctx, top_percent=50)
    method.apply(vlm)
    kept = snr_lib.select(snr_lib.scan(vlm.llm), 50)
    expected = {"model.embed_tokens.weight"} | {
        n for n, _ in vlm.llm.named_parameters() if any(n.startswith(f"{name}.") for v in kept.values() for name in v)
    }
    assert _trainable(vlm.llm) == expected
    assert 0 < len(expected) < len(list(vlm.llm.parameters()))
    assert _trainable(vlm.connector) == {n for n, _ in vlm.connector.named_parameters()}  # 100% by default
    assert _trainable(vlm.vision_encoder) == set()  # 0% by default


def test_part_budgets_scan_connector_and_vision(tiny, tiny_ctx, tiny_tokenizer):
    vlm = tiny.make_vlm(tiny_tokenizer, tiny_ctx)
    _method(
        tiny, tiny_ctx, top_percent=0, train_embeddings=False, vision_top_percent=50, connector_top_percent=50
    ).apply(vlm)
    assert _trainable(vlm.llm) == set()
    vision = _trainable(vlm.vision_encoder)
    assert vision and vision != {n for n, _ in vlm.vision_encoder.named_parameters()}
    assert len(_trainable(vlm.connector)) < len(list(vlm.connector.parameters()))


def test_a_scanned_yaml_selects_the_same_weights(tiny, tiny_ctx, tiny_tokenizer, tmp_path):
    vlm = tiny.make_vlm(tiny_tokenizer, tiny_ctx)
    paths = snr_lib.write_results(snr_lib.scan(vlm.llm), tmp_path, "tiny", 50)
    _method(tiny, tiny_ctx, top_percent=50).apply(vlm)
    scanned = _trainable(vlm.llm)
    other = tiny.make_vlm(tiny_tokenizer, tiny_ctx)
    _method(tiny, tiny_ctx, unfrozen_parameters=str(paths["unfrozen"])).apply(other)
    assert _trainable(other.llm) == scanned
    from_json = tiny.make_vlm(tiny_tokenizer, tiny_ctx)
    _method(tiny, tiny_ctx, snr_results=str(paths["snr"]), top_percent=50).apply(from_json)
    assert _trainable(from_json.llm) == scanned


def test_patterns_for_another_model_are_an_error(tiny, tiny_ctx, tiny_tokenizer, tmp_path):
    (tmp_path / "u.yaml").write_text("unfrozen_parameters:\n- ^transformer.h.0.attn.c_attn\n")
    vlm = tiny.make_vlm(tiny_tokenizer, tiny_ctx)
    with pytest.raises(ValueError, match="no LLM parameter matches the unfrozen_parameters patterns"):
        _method(tiny, tiny_ctx, unfrozen_parameters=str(tmp_path / "u.yaml")).apply(vlm)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_percent": 120}, "top_percent must be between 0 and 100"),
        ({"unfrozen_parameters": "a.yaml", "snr_results": "b.json"}, "not both"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        spectrum_plugin.SPEC.make_config(options)


# -- command and training -------------------------------------------------------------------------


def test_scan_command_on_a_causal_lm_folder(tiny_llm, tmp_path):
    from vlmplug.cli import cli
    from vlmplug.manager import load

    load().register_commands(cli=cli)  # what the console entry point does before running
    tiny_llm.save_pretrained(tmp_path / "llm")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["spectrum", "scan", str(tmp_path / "llm"), "--top-percent", "50", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    base = f"snr_results_{snr_lib.slug(str(tmp_path / 'llm'))}"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{base}.json", f"{base}_sorted.json", f"{base}_unfrozenparameters_50percent.yaml"]
    )
    assert json.loads((out / f"{base}.json").read_text()) == snr_lib.scan(tiny_llm)


def test_training_moves_exactly_the_selection(tiny, tiny_ctx, tiny_tokenizer):
    vlm = tiny.make_vlm(tiny_tokenizer, tiny_ctx)
    _method(tiny, tiny_ctx, top_percent=50).apply(vlm)
    before = {n: p.detach().clone() for n, p in vlm.named_parameters()}
    batch = tiny.make_batch(vlm, tiny_tokenizer)
    opt = torch.optim.Adam([p for p in vlm.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = vlm(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for name, p in vlm.named_parameters():
        assert torch.equal(p, before[name]) != p.requires_grad, name


def test_a_run_saves_the_selection_and_reloads(run_recipe):
    import vlmplug

    result = run_recipe(plugins=("qformer", "spectrum"), steps=3)
    selection = result.run_dir / "model" / "spectrum"
    assert (selection / "snr_results_llm_unfrozenparameters_30percent.yaml").is_file()
    patterns = snr_lib.read_patterns(selection / "llm_unfrozen_parameters.yaml")
    trainable = _trainable(result.model.llm)
    assert trainable == {n for n, _ in result.model.llm.named_parameters() if any(re.match(p, n) for p in patterns)}
    loaded = vlmplug.load(result.run_dir)
    for (name, a), (_, b) in zip(result.model.llm.state_dict().items(), loaded.llm.state_dict().items()):
        assert torch.equal(a, b), name


def test_scan_command_on_a_run_writes_each_parts_own_selection(run_recipe, tmp_path):
    """The connector's and vision tower's YAMLs select only their own layers (the embedding and head
    patterns belong to the LLM's file alone), and applying each YAML matches parameters of that part."""
    from vlmplug.cli import cli
    from vlmplug.manager import load

    load().register_commands(cli=cli)
    result = run_recipe(steps=1, eval_datasets=[], evaluators=[])
    out = tmp_path / "scan"
    budgets = ["--top-percent", "50", "--connector-top-percent", "50", "--vision-top-percent", "50"]
    res = CliRunner().invoke(cli, ["spectrum", "scan", str(result.run_dir), *budgets, "--out", str(out)])
    assert res.exit_code == 0, res.output
    yamls = {p.name: snr_lib.read_patterns(p) for p in out.glob("*_unfrozenparameters_50percent.yaml")}
    assert len(yamls) == 3
    modules = {"-connector_": result.model.connector, "-vision-encoder_": result.model.vision_encoder}
    for name, patterns in yamls.items():
        part = next((m for key, m in modules.items() if key in name), result.model.llm)
        has_head = any("lm_head" in p for p in patterns)
        assert has_head == (part is result.model.llm), name
        names = [n for n, _ in part.named_parameters(remove_duplicate=False)]  # lm_head is tied
        assert patterns and all(any(re.match(p, n) for n in names) for p in patterns), (name, patterns)
