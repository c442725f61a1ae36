"""Pins the transformers Trainer behaviour vlmplug relies on where no public extension point exists
(see core/train/trainer.py). If a transformers release changes any of it, these fail first."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments

from vlmplug.testing import tiny
from vlmplug.train.vlm import trainable_state_dict


class Rows(torch.utils.data.Dataset):
    def __init__(self, batch: dict[str, torch.Tensor]):
        self.batch = batch

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i % 2] for k, v in self.batch.items() if k != "pixel_values"} | {
            "pixel_values": self.batch["pixel_values"][i % 2]
        }


class NoModelFiles(Trainer):
    """The Trainer itself, minus the model file (our model is saved by VLMTrainer.save_model)."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        Path(output_dir or self.args.output_dir).mkdir(parents=True, exist_ok=True)


def _trainer(tmp: Path, **args: Any) -> tuple[Trainer, Any]:
    from vlmplug.plugins.peft import lora

    tok = tiny.make_tokenizer()
    vlm = tiny.make_vlm(tok, tiny.make_ctx())
    vlm = tiny.build(lora.SPEC, tiny.make_ctx(), {"lora_r": 2, "lora_dropout": 0.0}).apply(vlm)
    batch = tiny.make_batch(vlm, tok, (1, 1))
    targs = TrainingArguments(
        output_dir=str(tmp),
        per_device_train_batch_size=2,
        max_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        **args,
    )
    return NoModelFiles(model=vlm, args=targs, train_dataset=Rows(batch)), vlm


def test_save_checkpoint_writes_under_args_output_dir(tmp_path: Path) -> None:
    """VLMTrainer stages a checkpoint by pointing ``args.output_dir`` elsewhere during the call."""
    trainer, _ = _trainer(tmp_path / "real")
    trainer.train()
    trainer.args.output_dir = str(tmp_path / "staging")
    trainer._save_checkpoint(trainer.model, trial=None)
    assert (tmp_path / "staging" / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (tmp_path / "real" / "checkpoint-1").exists()


def test_resume_loads_a_partial_state_dict_and_keeps_the_frozen_weights(tmp_path: Path, caplog: Any) -> None:
    trainer, vlm = _trainer(tmp_path)
    saved = trainable_state_dict(vlm)
    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    save_file(saved, str(ckpt / "model.safetensors"))
    vlm._keys_to_ignore_on_save = [k for k in vlm.state_dict() if k not in saved]
    frozen = {k: v.clone() for k, v in vlm.state_dict().items() if k not in saved}
    with torch.no_grad():
        for p in vlm.parameters():
            p.add_(1.0)  # every weight moves: the trainable ones must come back, the frozen ones stay moved
    moved = {k: v.clone() for k, v in vlm.state_dict().items() if k not in saved}
    with caplog.at_level(logging.WARNING):
        trainer._load_from_checkpoint(str(ckpt))
    state = vlm.state_dict()
    for k, v in saved.items():
        assert torch.equal(state[k], v), k
    for k in frozen:
        assert torch.equal(state[k], moved[k]), k
    assert "missing keys" not in caplog.text  # missing == _keys_to_ignore_on_save: no warning, tie_weights()
