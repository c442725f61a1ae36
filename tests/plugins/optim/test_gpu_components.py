"""GPU-only optimizer-stack components on a machine without CUDA: ``flash-attention`` and ``liger``
list with their missing extra, ``vlmplug config`` names the pip fix, and with the package present
but no GPU the run stops before any model loads. ``adamw-8bit`` runs here for real (bitsandbytes on
CPU): its step matches 32-bit AdamW's, its states are 8-bit, and a run learns."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch

from vlmplug.errors import ConfigError, HardwareError
from vlmplug.recipe import resolve
from vlmplug.testing import TINY_RECIPE


def _resolve(host: Any, **keys: Any) -> Any:
    return resolve({**copy.deepcopy(TINY_RECIPE), **keys}, host.registry, host=host)


@pytest.mark.parametrize(
    ("keys", "name", "extra"),
    [
        ({"attn_implementation": "flash_attention_2"}, "flash-attention", "flash"),
        ({"use_liger": True}, "liger", "liger"),
    ],
)
def test_missing_package_is_named_with_the_fix(
    vlmplug_host: Any, monkeypatch: Any, keys: dict, name: str, extra: str
) -> None:
    from vlmplug import deps

    monkeypatch.setattr(deps, "is_installed", lambda module: False)
    with pytest.raises(ConfigError) as e:
        _resolve(vlmplug_host, **keys)
    assert any(p.startswith(f"{name} needs ") and f'pip install "vlmplug[{extra}]"' in p for p in e.value.problems)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"attn_implementation": "flash_attention_2"}, "flash-attention (flash_attention_2) needs a CUDA GPU"),
        ({"use_liger": True}, "liger (Triton kernels) needs a CUDA GPU"),
        ({"optimizer_stack": [{"name": "adamw-8bit", "paged": True}]}, "adamw-8bit with paged: true needs a CUDA"),
    ],
)
def test_no_gpu_stops_before_any_model_loads(
    vlmplug_host: Any, monkeypatch: Any, tmp_path: Any, keys: dict, message: str
) -> None:
    from vlmplug import deps
    from vlmplug.train import assemble, run

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(deps, "is_installed", lambda module: True)  # the package is there; the GPU is not
    resolved = _resolve(vlmplug_host, **keys)

    def no_model(**kw: Any) -> Any:
        raise AssertionError("a model was built before the hardware check")

    monkeypatch.setattr(run, "assemble_model", no_model)
    monkeypatch.setattr(assemble, "assemble_model", no_model)
    from rich.console import Console

    with pytest.raises(HardwareError, match=re.escape(message)):
        run.run(resolved, vlmplug_host, output_dir=str(tmp_path / "run"), console=Console(quiet=True))


def test_flash_attention_sets_the_llms_kernel(tiny: Any) -> None:
    from vlmplug.plugins.optim import flash_attention
    from vlmplug.plugins.optim._flash_attention import FlashAttention

    config = flash_attention.FlashAttentionConfig(attn_implementation="flash_attention_3")
    assert FlashAttention(config).model_load_kwargs() == {"attn_implementation": "flash_attention_3"}


# -- adamw-8bit -----------------------------------------------------------------------------------------

bnb = pytest.importorskip("bitsandbytes")


def _args(**kw: Any) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to="none", **kw)


def test_one_step_matches_32_bit_adamw(tiny: Any) -> None:
    from vlmplug.plugins.optim import adamw_8bit
    from vlmplug.train.modules import build_optimizer

    tok = tiny.make_tokenizer()
    ours = tiny.make_vlm(tok, tiny.make_ctx())
    reference = tiny.make_vlm(tok, tiny.make_ctx())
    args = _args(learning_rate=1e-3, weight_decay=0.01)
    opt8 = tiny.build(adamw_8bit.SPEC, tiny.make_ctx(), {"min_8bit_size": 1024}).create_optimizer(ours, args)
    opt32 = build_optimizer(reference, args)
    batch = tiny.make_batch(ours, tok)
    for model, opt in ((ours, opt8), (reference, opt32)):
        model(**batch).loss.backward()
        opt.step()
    big = [(n, p) for n, p in ours.named_parameters() if p.numel() >= 1024]
    state = opt8.state[big[0][1]]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8
    for (name, p8), p32 in zip(ours.named_parameters(), reference.parameters()):
        # the first Adam step is about lr x sign(grad); 8-bit moments shift it by a few percent of lr
        torch.testing.assert_close(p8.detach(), p32.detach(), rtol=0, atol=2e-4, msg=name)


def test_a_run_with_it_learns(run_recipe: Any) -> None:
    res = run_recipe(
        None,
        steps=12,
        plugins=("adamw-8bit",),
        eval_datasets=[],
        evaluators=[],
        modules={"connector": {"learning_rate": 3e-3}},
    )
    train = res.metrics["train"]
    assert train["final_loss"] < train["first_loss"] - 0.5
