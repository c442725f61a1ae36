"""``mixed-precision``: bf16 / fp16 / tf32 mapped onto TrainingArguments after a hardware check."""

from __future__ import annotations

import pytest

from vlmplug.errors import HardwareError
from vlmplug.plugins.optim import mixed_precision as mp_plugin
from vlmplug.train.hardware import Hardware

CPU = Hardware(False, "cpu", False, False)
AMPERE = Hardware(True, "A100", True, True)
TURING = Hardware(True, "Tesla T4", False, False)


def _update(tiny, hardware, **options):
    notes: list[str] = []
    comp = tiny.build(mp_plugin.SPEC, tiny.make_ctx(hardware=hardware), options)
    args = comp.update_training_args({"learning_rate": 1e-3}, hardware, notes.append)
    assert args["learning_rate"] == 1e-3  # other arguments pass through
    return args, notes


def test_tf32_true_on_cpu_raises(tiny):
    with pytest.raises(HardwareError) as err:
        _update(tiny, CPU, tf32=True)
    assert "tf32" in str(err.value)
    assert "cpu" in str(err.value)


def test_tf32_true_without_ampere_raises(tiny):
    with pytest.raises(HardwareError, match="tf32"):
        _update(tiny, TURING, tf32=True)


def test_fp16_on_cpu_raises(tiny):
    with pytest.raises(HardwareError, match="fp16"):
        _update(tiny, CPU, fp16=True, bf16=False)


def test_bf16_true_without_bf16_gpu_raises(tiny):
    with pytest.raises(HardwareError, match="bf16"):
        _update(tiny, TURING, bf16=True)


def test_auto_on_cpu(tiny):
    args, notes = _update(tiny, CPU)
    assert args["bf16"] is False
    assert args["fp16"] is False
    assert args["tf32"] is None  # TrainingArguments rejects tf32 without CUDA; None is dropped by the run
    assert any("bf16 auto -> false" in n for n in notes)
    assert any("tf32 auto -> false" in n for n in notes)


def test_auto_on_ampere(tiny):
    args, notes = _update(tiny, AMPERE)
    assert args["bf16"] is True
    assert args["tf32"] is True
    assert args["fp16"] is False
    assert any("bf16 auto -> true" in n and "A100" in n for n in notes)


def test_fp16_on_gpu_wins_over_auto_bf16(tiny):
    args, _ = _update(tiny, AMPERE, fp16=True)
    assert args["fp16"] is True
    assert args["bf16"] is False


def test_bf16_true_on_cpu_is_allowed_with_a_note(tiny):
    args, notes = _update(tiny, CPU, bf16=True, tf32=False)
    assert args["bf16"] is True
    assert any("CPU autocast" in n for n in notes)


def test_explicit_false(tiny):
    args, notes = _update(tiny, AMPERE, bf16=False, tf32=False)
    assert args["bf16"] is False and args["tf32"] is False
    assert notes == []


def test_bf16_and_fp16_exclusive():
    with pytest.raises(ValueError, match="exclusive"):
        mp_plugin.SPEC.make_config({"bf16": True, "fp16": True})
