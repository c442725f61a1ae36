"""Component specs, value coercion, option validation and the registry (no plugin host needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import pytest

from vlmplug.errors import ConfigError
from vlmplug.registry import ComponentSpec, Registry, coerce_value, describe_type, validate_options

# -- coerce_value ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("2e-4", 0.0002),  # YAML 1.1 reads 2e-4 (no dot) as a string
        ("1e-3", 0.001),
        ("0.5", 0.5),
        (3, 3.0),
        (0.1, 0.1),
    ],
)
def test_float_accepts_numbers_and_numeric_strings(raw: Any, expected: float) -> None:
    out = coerce_value(raw, float, "learning_rate")
    assert out == pytest.approx(expected)
    assert type(out) is float


@pytest.mark.parametrize("raw", ["fast", True, [1e-4], None])
def test_float_rejects_non_numbers_naming_the_key(raw: Any) -> None:
    with pytest.raises(ValueError, match=r"^learning_rate: expected a number"):
        coerce_value(raw, float, "learning_rate")


@pytest.mark.parametrize(
    "raw, expected",
    [
        (True, True),
        (False, False),
        ("true", True),
        ("True", True),
        ("yes", True),
        ("on", True),
        ("1", True),
        ("false", False),
        ("FALSE", False),
        ("no", False),
        ("off", False),
        ("0", False),
    ],
)
def test_bool_strings(raw: Any, expected: bool) -> None:
    assert coerce_value(raw, bool, "bf16") is expected


@pytest.mark.parametrize("raw", ["maybe", 1, 0, 2.0, None])
def test_bool_rejects_other_values(raw: Any) -> None:
    with pytest.raises(ValueError, match=r"^bf16: expected true or false"):
        coerce_value(raw, bool, "bf16")


def test_int_from_strings_and_integral_floats() -> None:
    assert coerce_value("32", int, "lora_r") == 32
    assert coerce_value(4.0, int, "lora_r") == 4
    assert type(coerce_value(4.0, int, "lora_r")) is int


@pytest.mark.parametrize("raw", ["abc", 4.5, True, "1.5"])
def test_int_rejects_non_integers_naming_the_key(raw: Any) -> None:
    with pytest.raises(ValueError, match=r"^max_steps: expected an integer, got"):
        coerce_value(raw, int, "max_steps")


def test_str_accepts_scalars_only() -> None:
    assert coerce_value("tiny", str, "model") == "tiny"
    assert coerce_value(123, str, "model") == "123"
    with pytest.raises(ValueError, match=r"^model: expected a string"):
        coerce_value(["a"], str, "model")
    with pytest.raises(ValueError, match=r"^model: expected a string"):
        coerce_value(True, str, "model")


def test_literal_accepts_members() -> None:
    assert coerce_value("relu", Literal["gelu", "relu", "silu"], "connector.hidden_act") == "relu"


def test_literal_rejects_with_did_you_mean_and_choices() -> None:
    with pytest.raises(ValueError) as e:
        coerce_value("gleu", Literal["gelu", "relu", "silu"], "connector.hidden_act")
    msg = str(e.value)
    assert msg.startswith("connector.hidden_act: 'gleu' is not one of 'gelu', 'relu', 'silu'")
    assert "(did you mean 'gelu'?)" in msg


def test_literal_without_close_match_has_no_hint() -> None:
    with pytest.raises(ValueError) as e:
        coerce_value("xyzzy", Literal["gelu", "relu", "silu"], "connector.hidden_act")
    assert "did you mean" not in str(e.value)


@pytest.mark.parametrize("tp", [Optional[int], int | None])
def test_optional(tp: Any) -> None:
    assert coerce_value(None, tp, "num_threads") is None
    assert coerce_value("3", tp, "num_threads") == 3
    assert coerce_value(3, tp, "num_threads") == 3
    with pytest.raises(ValueError, match=r"^num_threads: expected an integer, got 'x'"):
        coerce_value("x", tp, "num_threads")


def test_non_optional_rejects_none() -> None:
    with pytest.raises(ValueError, match="max_steps"):
        coerce_value(None, int, "max_steps")


def test_union_of_bool_and_literal_auto() -> None:
    flag = Union[bool, Literal["auto"]]
    assert coerce_value("auto", flag, "tf32") == "auto"
    assert coerce_value("true", flag, "tf32") is True
    assert coerce_value(False, flag, "tf32") is False
    with pytest.raises(ValueError) as e:
        coerce_value("sometimes", flag, "tf32")
    assert str(e.value).startswith("tf32: 'sometimes' is not bool | 'auto'")


def test_union_int_float_keeps_ints_and_takes_ratios() -> None:
    tp = Union[int, float]
    assert coerce_value(50, tp, "warmup_steps") == 50
    assert type(coerce_value(50, tp, "warmup_steps")) is int
    assert coerce_value("0.1", tp, "warmup_steps") == pytest.approx(0.1)


def test_list_from_comma_string() -> None:
    assert coerce_value("q_proj, v_proj,,o_proj ", list[str], "lora_target_modules") == ["q_proj", "v_proj", "o_proj"]


def test_list_items_are_coerced_and_errors_name_the_index() -> None:
    tp = list[Literal["color", "shape", "count", "presence"]]
    assert coerce_value(["color", "count"], tp, "question_types") == ["color", "count"]
    assert coerce_value("color,shape", tp, "question_types") == ["color", "shape"]
    with pytest.raises(ValueError) as e:
        coerce_value(["color", "shap"], tp, "question_types")
    assert str(e.value).startswith("question_types[1]: 'shap' is not one of")
    assert "did you mean 'shape'" in str(e.value)


def test_list_of_numbers_from_strings() -> None:
    assert coerce_value(["1e-4", 2], list[float], "lrs") == [0.0001, 2.0]


def test_tuple_and_bare_list() -> None:
    assert coerce_value("a,b", tuple[str, ...], "names") == ("a", "b")
    assert coerce_value("a,b", list, "names") == ["a", "b"]
    with pytest.raises(ValueError, match=r"^names: expected a list, got 3"):
        coerce_value(3, list[str], "names")


def test_dict() -> None:
    assert coerce_value({"use_reentrant": False}, dict, "kwargs") == {"use_reentrant": False}
    with pytest.raises(ValueError, match=r"^kwargs: expected a mapping"):
        coerce_value("use_reentrant=false", dict, "kwargs")


def test_any_passes_through() -> None:
    marker = object()
    assert coerce_value(marker, Any, "x") is marker


def test_describe_type() -> None:
    assert describe_type(int) == "int"
    assert describe_type(Optional[int]) == "int | None"
    assert describe_type(Union[str, list[str]]) == "str | list[str]"
    assert describe_type(Literal["a", "b"]) == "'a' | 'b'"


# -- validate_options -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ProjConfig:
    depth: int = field(default=2, metadata={"help": "layers"})
    hidden_act: Literal["gelu", "relu", "silu"] = field(default="gelu", metadata={"help": "activation"})
    dropout: float = field(default=0.0, metadata={"help": "dropout"})

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError("depth must be at least 1")


PROJ = ComponentSpec(name="proj", summary="test projector", factory="x:y", config=ProjConfig, family="connector")
NO_CONFIG = ComponentSpec(name="plain", summary="no options", factory="x:y", family="fusion")


def test_validate_options_coerces_values() -> None:
    out, problems = validate_options(PROJ, {"depth": "3", "dropout": "1e-1", "hidden_act": "relu"}, "connector")
    assert problems == []
    assert out == {"depth": 3, "dropout": pytest.approx(0.1), "hidden_act": "relu"}


def test_validate_options_unknown_option_did_you_mean_and_valid_list() -> None:
    _, problems = validate_options(PROJ, {"dept": 3}, "connector")
    assert len(problems) == 1
    msg = problems[0]
    assert msg.startswith("connector: unknown option 'dept' for proj")
    assert "(did you mean 'depth'?)" in msg
    assert "valid options: depth, dropout, hidden_act" in msg
    assert "vlmplug info proj" in msg


def test_validate_options_reports_every_problem() -> None:
    _, problems = validate_options(PROJ, {"dept": 3, "hidden_act": "gleu", "dropout": "lots"}, "connector")
    assert len(problems) == 3
    assert any("unknown option 'dept'" in p for p in problems)
    assert any(p.startswith("connector.hidden_act: 'gleu'") and "did you mean 'gelu'" in p for p in problems)
    assert any(p.startswith("connector.dropout: expected a number") for p in problems)


def test_validate_options_post_init_errors_surface() -> None:
    _out, problems = validate_options(PROJ, {"depth": 0}, "connector")
    assert problems == ["connector: depth must be at least 1"]


def test_validate_options_on_a_component_without_options() -> None:
    _, problems = validate_options(NO_CONFIG, {"size": 3}, "fusion")
    assert len(problems) == 1
    assert "unknown option 'size' for plain" in problems[0]
    assert "valid options: none" in problems[0]


def test_builtin_lora_post_init() -> None:
    from vlmplug.plugins.peft.lora import SPEC

    _, problems = validate_options(SPEC, {"lora_r": 0}, "peft")
    assert problems == ["peft: lora_r must be a positive integer"]
    out, problems = validate_options(SPEC, {"lora_r": "8", "lora_target_modules": ["q_proj", "v_proj"]}, "peft")
    assert problems == []
    assert out == {"lora_r": 8, "lora_target_modules": ["q_proj", "v_proj"]}


def test_make_config_without_config_rejects_options() -> None:
    assert NO_CONFIG.make_config({}) is None
    with pytest.raises(ConfigError, match="plain: takes no options"):
        NO_CONFIG.make_config({"x": 1})


def test_load_factory_is_lazy_and_resolves_dotted_attrs() -> None:
    spec = ComponentSpec(name="j", summary="", factory="json:JSONDecoder.decode")
    import json

    assert spec.load_factory() is json.JSONDecoder.decode


# -- Registry -------------------------------------------------------------------------------------


def _spec(
    name: str, family: str = "connector", provider: str = "built-in", plugin: str = "p", aliases: tuple[str, ...] = ()
) -> ComponentSpec:
    return ComponentSpec(
        name=name, summary=name, factory="x:y", family=family, provider=provider, plugin=plugin, aliases=aliases
    )


def test_registry_duplicate_names_both_providers_and_plugins() -> None:
    reg = Registry()
    reg.add(_spec("mlp", provider="built-in", plugin="vlmplug.plugins.connectors.mlp"))
    with pytest.raises(ConfigError) as e:
        reg.add(_spec("mlp", provider="vlmplug-extra-1.0", plugin="extra"))
    msg = str(e.value)
    assert "component name 'mlp' is registered twice" in msg
    assert "built-in (plugin vlmplug.plugins.connectors.mlp)" in msg
    assert "vlmplug-extra-1.0 (plugin extra)" in msg
    assert "VLMPLUG_DISABLE_PLUGINS=extra" in msg
    # the first registration is kept untouched
    assert reg.get("mlp").provider == "built-in"
    assert len(reg) == 1


def test_registry_alias_clashing_with_a_name_is_a_duplicate() -> None:
    reg = Registry()
    reg.add(_spec("linear", aliases=("projection",), plugin="a"))
    with pytest.raises(ConfigError, match="'projection' is registered twice"):
        reg.add(_spec("projection", plugin="b"))
    with pytest.raises(ConfigError, match="'linear' is registered twice"):
        reg.add(_spec("other", aliases=("linear",), plugin="c"))
    assert reg.names() == ["linear"]


def test_registry_alias_lookup() -> None:
    reg = Registry()
    reg.add(_spec("linear", aliases=("projection",)))
    assert reg.get("projection") is reg.get("linear")
    assert reg.get("projection").name == "linear"
    assert "projection" in reg
    assert "nope" not in reg
    assert reg.get("nope") is None
    assert reg.names() == ["linear"]  # aliases are not listed as components


def test_registry_iterates_in_family_then_name_order() -> None:
    reg = Registry()
    reg.add(_spec("vqa", family="evaluator"))
    reg.add(_spec("mlp", family="connector"))
    reg.add(_spec("clip", family="vision_encoder"))
    reg.add(_spec("linear", family="connector"))
    assert reg.names() == ["clip", "linear", "mlp", "vqa"]
    assert reg.names("connector") == ["linear", "mlp"]
    assert [s.name for s in reg.family("evaluator")] == ["vqa"]


def test_builtin_linear_alias_through_a_loaded_host(host: Any) -> None:
    assert host.registry.get("projection").name == "linear"
