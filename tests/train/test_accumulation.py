"""Gradient accumulation and the Trainer's loss normalisation (the HF Trainer is the reference).

Invariant: k micro-steps of batch b give the same logged loss, the same gradient norm and the same
weights after the optimizer step as one step of batch k*b. The samples have different numbers of
target tokens, so a per-micro-batch mean, or a loss not divided over the accumulated batch, breaks it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from vlmplug.testing import tiny

ROOT = Path(__file__).resolve().parents[2]


def _contrib_connector() -> Any:
    sys.path.insert(0, str(ROOT / "contrib" / "vlmplug-pixel-shuffle"))
    try:
        from vlmplug_pixel_shuffle import SPEC
    finally:
        sys.path.pop(0)
    return SPEC


def _dataset(tokenizer: Any, vlm: Any, n: int) -> tuple[Any, Any]:
    from vlmplug.plugins.datasets._shapes import ShapesDataset
    from vlmplug.train.data import EncodedDataset, SampleEncoder, TrainCollator

    shapes = ShapesDataset(n, seed=3, image_size=32)
    samples = []
    for i in range(n):  # answers of 1-3 words: micro-batches hold different numbers of target tokens
        s = shapes[i]
        answer = " ".join([s["messages"][1]["content"]] * (1 + i % 3))
        samples.append({**s, "messages": [s["messages"][0], {"role": "assistant", "content": answer}]})
    encoder = SampleEncoder(tokenizer, tiny.IMAGE_TOKEN, vlm.tokens_per_image, max_seq_length=64)
    data = EncodedDataset(samples, encoder, "shapes", skip_bad=False)
    lengths = {sum(1 for t in data[i]["labels"] if t != -100) for i in range(len(data))}
    assert len(lengths) > 1, "the invariant needs samples with different numbers of target tokens"
    return data, TrainCollator(tokenizer.pad_token_id, vlm.vision_encoder.preprocess)


def _one_step(make: Any, tokenizer: Any, batch: int, accum: int, tmp: Path) -> tuple[float, float, dict]:
    from transformers import Trainer, TrainingArguments

    vlm = make()
    data, collator = _dataset(tokenizer, vlm, 16)
    args = TrainingArguments(
        output_dir=str(tmp),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=1e9,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=vlm, args=args, train_dataset=data, data_collator=collator)
    trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    weights = {n: p.detach().clone() for n, p in vlm.named_parameters() if p.requires_grad}
    return log["loss"], log["grad_norm"], weights


def _full(tokenizer: Any, connector: Any = "mlp") -> Any:
    def make() -> Any:
        return tiny.make_vlm(tokenizer, tiny.make_ctx(), connector=connector)

    return make


def _lora(tokenizer: Any) -> Any:
    from vlmplug.plugins.peft import lora

    def make() -> Any:
        vlm = tiny.make_vlm(tokenizer, tiny.make_ctx())
        method = tiny.build(lora.SPEC, tiny.make_ctx(), {"lora_r": 4, "lora_dropout": 0.0})
        torch.manual_seed(5)
        return method.apply(vlm)

    return make


@pytest.mark.parametrize("case", ["full", "lora", "contrib-pixel-shuffle"])
def test_k_micro_steps_equal_one_big_step(case: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    tokenizer = tiny.make_tokenizer()
    make = {
        "full": lambda: _full(tokenizer),
        "lora": lambda: _lora(tokenizer),
        "contrib-pixel-shuffle": lambda: _full(tokenizer, _contrib_connector()),
    }[case]()
    big_loss, big_norm, big_w = _one_step(make, tokenizer, batch=8, accum=1, tmp=tmp_path / "big")
    acc_loss, acc_norm, acc_w = _one_step(make, tokenizer, batch=2, accum=4, tmp=tmp_path / "acc")
    print(f"{case}: loss {big_loss:.6f} (1x8) vs {acc_loss:.6f} (4x2); grad norm {big_norm:.6f} vs {acc_norm:.6f}")
    assert math.isclose(acc_loss, big_loss, rel_tol=1e-5), (acc_loss, big_loss)
    assert math.isclose(acc_norm, big_norm, rel_tol=1e-4), (acc_norm, big_norm)
    assert big_w.keys() == acc_w.keys() and big_w
    for name in big_w:
        torch.testing.assert_close(acc_w[name], big_w[name], rtol=1e-5, atol=1e-6, msg=name)
