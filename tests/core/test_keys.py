"""The recipe keys the core owns: TRAINING_KEYS must be real ``transformers.TrainingArguments`` fields
(keys.py types them by hand so ``vlmplug config`` needs no transformers import)."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from vlmplug.keys import BOUNDS, CORE_KEYS, TRAINING_ALIASES, TRAINING_KEYS, check_bounds
from vlmplug.registry import coerce_value


@pytest.fixture(scope="module")
def training_fields() -> dict[str, dataclasses.Field]:
    transformers = pytest.importorskip("transformers")
    return {f.name: f for f in dataclasses.fields(transformers.TrainingArguments)}


@pytest.mark.parametrize("key", sorted(TRAINING_KEYS))
def test_training_key_is_a_training_arguments_field(key: str, training_fields: dict) -> None:
    if key not in training_fields:
        pytest.fail(
            f"{key} is not a field of transformers.TrainingArguments (transformers "
            f"{__import__('transformers').__version__}); a recipe setting it would fail when "
            f"training starts",
            pytrace=False,
        )


@pytest.mark.parametrize("key", sorted(TRAINING_KEYS))
def test_training_key_default_passes_our_type(key: str, training_fields: dict) -> None:
    """The transformers default must be a value our declared type accepts (catches a wrong type)."""
    if key not in training_fields:
        pytest.skip(f"{key} is not a TrainingArguments field (reported by the test above)")
    f = training_fields[key]
    if f.default is dataclasses.MISSING:
        pytest.skip("no plain default")
    default = f.default.value if hasattr(f.default, "value") else f.default  # enums
    if default is None and type(None) not in typing.get_args(TRAINING_KEYS[key]):
        pytest.skip("None default means 'unset' here")
    coerce_value(default, TRAINING_KEYS[key], key)


def test_core_keys_have_valid_defaults_and_help() -> None:
    for key, (tp, default, help_) in CORE_KEYS.items():
        assert help_.strip(), key
        if default is not None:
            assert coerce_value(default, tp, key) == default, key


def test_key_tables_do_not_overlap() -> None:
    assert not set(CORE_KEYS) & set(TRAINING_KEYS)


def test_roadmap_placeholders_claim_no_core_key_and_no_builtin_name() -> None:
    from vlmplug.manager import load

    registry = load(autoload=False).registry
    planned = registry.planned_specs()
    assert planned, "the roadmap plugin registers placeholders"
    names = set(registry.names())
    for spec in planned:
        assert spec.name not in names
        assert not set(spec.flat_keys) & (set(CORE_KEYS) | set(TRAINING_KEYS)), spec.name


def test_every_bound_is_a_known_numeric_key() -> None:
    for key in BOUNDS:
        assert key in CORE_KEYS or key in TRAINING_KEYS or key in TRAINING_ALIASES, key


@pytest.mark.parametrize(
    "key, bad, good",
    [
        ("learning_rate", 0, 1e-4),
        ("learning_rate", -1e-4, 1e-4),
        ("per_device_train_batch_size", 0, 1),
        ("gradient_accumulation_steps", 0, 1),
        ("max_steps", -1, 1),
        ("max_steps", 0, 10),
        ("eval_batch_size", 0, 1),
        ("num_train_epochs", 0, 0.5),
        ("adam_beta1", 1.0, 0.9),
        ("warmup_ratio", 1.0, 0.1),
        ("weight_decay", -0.1, 0.0),
    ],
)
def test_bounds(key: str, bad: float, good: float) -> None:
    assert check_bounds(key, good, key) is None
    problem = check_bounds(key, bad, key)
    assert problem and problem.startswith(f"{key}: must be ") and f"got {bad!r}" in problem


def test_max_steps_bound_says_how_to_train_by_epochs() -> None:
    assert check_bounds("max_steps", -1, "max_steps") == (
        "max_steps: must be >= 1, got -1; omit max_steps to train for num_train_epochs"
    )
