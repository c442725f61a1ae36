"""``group_by_length``: the sampler groups by the lengths known from tokenising and never loads an item
(which would decode every image before step 1), and a run with it trains on every sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from vlmplug.testing import TINY_RECIPE, tiny
from vlmplug.train.trainer import TrainClock, VLMTrainer


class KnownLengths(torch.utils.data.Dataset):
    """Lengths without loading: ``__getitem__`` must not be reached while sampling."""

    def __init__(self, lengths: list[int]):
        self._lengths = lengths

    def __len__(self) -> int:
        return len(self._lengths)

    def lengths(self) -> list[int]:
        return list(self._lengths)

    def __getitem__(self, i: int) -> Any:
        raise AssertionError(f"item {i} was loaded to learn its length")


def _sampler(tmp_path: Path, lengths: list[int], **args: Any) -> Any:
    tok = tiny.make_tokenizer()
    targs = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        **args,
    )
    vlm = tiny.make_vlm(tok, tiny.make_ctx())
    trainer = VLMTrainer(
        model=vlm, args=targs, train_dataset=KnownLengths(lengths), clock=TrainClock(2), on_skipped=lambda s: None
    )
    return trainer._get_train_sampler()


def test_group_by_length_uses_the_dataset_lengths(tmp_path: Path) -> None:
    lengths = [((i * 37) % 101) + 5 for i in range(300)]
    sampler = _sampler(tmp_path, lengths, train_sampling_strategy="group_by_length", gradient_accumulation_steps=3)
    assert isinstance(sampler, LengthGroupedSampler)
    assert sampler.batch_size == 2 * 3
    order = list(iter(sampler))
    assert sorted(order) == list(range(300))  # every sample once
    assert lengths[order[0]] == max(lengths)  # the longest batch first (an early out-of-memory, not a late one)
    # within each mega-batch (50 optimizer batches) samples come longest first
    mega = 50 * 6
    for lo in range(0, len(order), mega):
        chunk = [lengths[i] for i in order[lo : lo + mega]]
        assert chunk[1:] == sorted(chunk[1:], reverse=True) or lo == 0


def test_random_sampling_is_left_to_the_trainer(tmp_path: Path) -> None:
    sampler = _sampler(tmp_path, [3, 1, 2])
    assert not isinstance(sampler, LengthGroupedSampler)
    assert sorted(iter(sampler)) == [0, 1, 2]


def test_a_run_with_group_by_length_trains_on_every_sample(tmp_path: Path) -> None:
    from rich.console import Console

    from vlmplug.manager import load
    from vlmplug.recipe import parse_set, resolve
    from vlmplug.train.data import EncodedDataset
    from vlmplug.train.run import run as run_training

    loads = []
    original = EncodedDataset._load

    def counting(self: Any, k: int) -> Any:
        loads.append(k)
        return original(self, k)

    host = load(autoload=False)
    data = {**TINY_RECIPE, "name": "g", "eval_datasets": [], "group_by_length": True, "max_steps": 2}
    recipe = resolve(data, host.registry, host=host, sets=parse_set(()))
    EncodedDataset._load = counting  # type: ignore[method-assign]
    try:
        result = run_training(recipe, host, output_dir=str(tmp_path / "run"), console=Console(quiet=True))
    finally:
        EncodedDataset._load = original  # type: ignore[method-assign]
    assert result.metrics["train"]["steps"] == 2
    batch = recipe.training["per_device_train_batch_size"] * recipe.training.get("gradient_accumulation_steps", 1)
    # only the batches trained on were loaded (and the one the data loader reads ahead), not every sample
    assert len(loads) <= 3 * batch < result.metrics["train_samples"]
