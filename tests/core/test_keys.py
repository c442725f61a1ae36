"""The recipe keys the core owns: TRAINING_KEYS must be real ``transformers.TrainingArguments`` fields
(keys.py types them by hand so ``vlmplug config`` needs no transformers import)."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from vlmplug.keys import CORE_KEYS, PLANNED_COMPONENTS, PLANNED_KEYS, PLANNED_VALUES, TRAINING_KEYS
from vlmplug.registry import FAMILIES, coerce_value


@pytest.fixture(scope="module")
def training_fields() -> dict[str, dataclasses.Field]:
    transformers = pytest.importorskip("transformers")
    return {f.name: f for f in dataclasses.fields(transformers.TrainingArguments)}


@pytest.mark.parametrize("key", sorted(TRAINING_KEYS))
def test_training_key_is_a_training_arguments_field(key: str, training_fields: dict) -> None:
    if key not in training_fields:
        pytest.fail(f"{key} is not a field of transformers.TrainingArguments (transformers "
                    f"{__import__('transformers').__version__}); a recipe setting it would fail when "
                    f"training starts", pytrace=False)


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
    assert not set(PLANNED_KEYS) & (set(CORE_KEYS) | set(TRAINING_KEYS))


def test_planned_entries_name_roadmap_components_and_families() -> None:
    for comp, fam in PLANNED_COMPONENTS.items():
        assert fam in FAMILIES, comp
    for key, (comp, fam) in PLANNED_KEYS.items():
        assert PLANNED_COMPONENTS.get(comp) == fam, key
    for (key, _value), (comp, fam) in PLANNED_VALUES.items():
        assert key in CORE_KEYS
        assert PLANNED_COMPONENTS.get(comp) == fam


def test_planned_components_are_not_builtins() -> None:
    from vlmplug.manager import load

    names = set(load(autoload=False).registry.names())
    assert not names & set(PLANNED_COMPONENTS)
