"""Recipe loading and resolution (DESIGN.md §2): selection, precedence, flat guide keys, roadmap
errors, and all problems reported together."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vlmplug import __version__
from vlmplug.errors import ConfigError
from vlmplug.recipe import list_recipes, load_recipe, parse_set, resolve

ROADMAP = "on the vlmplug roadmap"


def run(host: Any, data: dict[str, Any], plugins: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> Any:
    return resolve(data, host.registry, host=host, plugins=list(plugins), sets=parse_set(sets))


def problems(host: Any, data: dict[str, Any], plugins: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as e:
        run(host, data, plugins, sets)
    return e.value.problems


# -- shipped recipes ------------------------------------------------------------------------------


def test_list_recipes_has_quickstart_with_a_description() -> None:
    recipes = dict(list_recipes())
    assert "quickstart" in recipes
    assert recipes["quickstart"]
    assert all(desc for desc in recipes.values()), "every shipped recipe needs a description"


def _write_placeholder_data(data: Any) -> None:
    """One valid messages row in every ``path:`` a recipe (or its stages) reads, under the cwd."""
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    for entry in [data, *data.get("stages", [])]:
        for ds in [*entry.get("datasets", []), *entry.get("eval_datasets", [])]:
            if isinstance(ds, dict) and "path" in ds:
                Path(ds["path"]).parent.mkdir(parents=True, exist_ok=True)
                Path(ds["path"]).write_text(json.dumps(row) + "\n")


@pytest.mark.parametrize("name", [n for n, _ in list_recipes()])
def test_every_shipped_recipe_resolves_or_names_only_roadmap_components(
    host: Any, name: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """With its data files in place, each shipped recipe resolves (every stage of a multi-stage one),
    or fails only on roadmap components; one that starts from another recipe's run names a shipped
    recipe (the chain is trained in tests/test_recipes_train.py)."""
    from vlmplug.stages import is_multistage, plan_stages, resolve_stages

    data, source = load_recipe(name)
    assert source == f"vlmplug:{name}"
    monkeypatch.chdir(tmp_path)
    _write_placeholder_data(data)
    start = str(data.get("model", ""))
    if start.startswith("runs/"):
        assert start.removeprefix("runs/") in dict(list_recipes()), f"{name} starts from an unknown recipe's run"
        return
    try:
        if is_multistage(data):
            plans = resolve_stages(plan_stages(data, None), host, [], [], source)
        else:
            plans = [resolve(data, host.registry, host=host, source=source)]
    except ConfigError as e:
        assert e.problems, name
        off_roadmap = [p for p in e.problems if ROADMAP not in p and 'pip install "vlmplug[' not in p]
        assert off_roadmap == [], f"{name}: problems other than roadmap components and extras: {off_roadmap}"
        return
    for resolved in plans:
        comps = resolved.components()
        for fam in ("vision_encoder", "connector", "fusion", "peft"):
            assert comps[fam] in host.registry.names(fam)
        assert comps["dataset_format"]
        assert resolved.source.startswith(source)


def test_load_recipe_default_is_quickstart() -> None:
    data, source = load_recipe(None)
    assert source == "vlmplug:quickstart"
    assert data["name"] == "quickstart"
    assert load_recipe("quickstart.yaml")[1] == "vlmplug:quickstart"


def test_unknown_recipe_name_did_you_mean() -> None:
    with pytest.raises(ConfigError) as e:
        load_recipe("quickstrat")
    (msg,) = e.value.problems
    assert "no recipe file or shipped recipe named 'quickstrat'" in msg
    assert "(did you mean 'quickstart'?)" in msg
    assert "quickstart" in msg.split("shipped recipes:")[1]


def test_recipe_from_a_file(tmp_path: Path) -> None:
    p = tmp_path / "mine.yaml"
    p.write_text("name: mine\nconnector: linear\n")
    data, source = load_recipe(p)
    assert data == {"name": "mine", "connector": "linear"}
    assert source == str(p)


def test_recipe_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a recipe is a mapping of keys to values, got list"):
        load_recipe(p)


def test_recipe_file_with_bad_yaml(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(p)


# -- quickstart and --plugins -------------------------------------------------------------------------


def test_quickstart_components(host: Any, quickstart: dict) -> None:
    r = run(host, quickstart)
    assert r.components() == {
        "vision_encoder": "clip",
        "connector": "mlp",
        "fusion": "interleaved",
        "peft": "full",
        "dataset_format": ["shapes"],
        "optimizer_stack": [],
        "evaluator": ["vqa"],
    }
    assert r.name == "quickstart"
    assert r.single["vision_encoder"].options["model"] == "tiny"
    assert r.single["connector"].options == {"depth": 2, "hidden_act": "gelu"}  # defaults filled in
    assert r.datasets[0].options["num_samples"] == quickstart["datasets"][0]["num_samples"]
    assert r.eval_datasets[0].options["seed"] == quickstart["eval_datasets"][0]["seed"]
    assert r.training["max_steps"] == quickstart["max_steps"]
    assert r.training["learning_rate"] == pytest.approx(float(quickstart["learning_rate"]))
    assert isinstance(r.training["learning_rate"], float)
    assert r.notes == []


def test_plugins_replaces_a_one_only_family_and_notes_it(host: Any, quickstart: dict) -> None:
    r = run(host, quickstart, plugins=("lora",))
    assert r.components()["peft"] == "lora"
    assert r.single["peft"].source == "--plugins"
    assert "peft: full -> lora (from --plugins)" in r.notes
    assert r.single["peft"].options["lora_r"] == 16  # component default


def test_plugins_alias(host: Any, quickstart: dict) -> None:
    r = run(host, quickstart, plugins=("projection",))
    assert r.components()["connector"] == "linear"


def test_plugins_same_as_recipe_adds_no_note(host: Any, quickstart: dict) -> None:
    r = run(host, quickstart, plugins=("mlp",))
    assert r.components()["connector"] == "mlp"
    assert r.notes == []


def test_plugins_two_names_for_one_family(host: Any, quickstart: dict) -> None:
    assert problems(host, quickstart, plugins=("linear", "mlp")) == ["--plugins: connector: choose one of linear, mlp"]


def test_plugins_appends_to_a_list_family(host: Any, quickstart: dict) -> None:
    r = run(host, quickstart, plugins=("gradient-checkpointing",))
    assert r.components()["optimizer_stack"] == ["gradient-checkpointing"]
    r = run(host, quickstart, plugins=("gradient-checkpointing", "mixed-precision"))
    assert r.components()["optimizer_stack"] == ["gradient-checkpointing", "mixed-precision"]
    assert r.optimizer_stack[1].options == {"bf16": "auto", "fp16": False, "tf32": "auto"}


def test_plugins_does_not_duplicate_a_list_entry(host: Any, quickstart: dict) -> None:
    r = run(host, {**quickstart, "gradient_checkpointing": True}, plugins=("gradient-checkpointing",))
    assert r.components()["optimizer_stack"] == ["gradient-checkpointing"]
    r = run(host, quickstart, plugins=("vqa",))
    assert r.components()["evaluator"] == ["vqa"]


def test_plugins_unknown_name_did_you_mean(host: Any, quickstart: dict) -> None:
    (msg,) = problems(host, quickstart, plugins=("mpl",))
    assert msg.startswith("--plugins: unknown component 'mpl' (did you mean 'mlp'?)")
    assert "choose from: clip, eva-clip, patches, siglip, linear, mlp" in msg


@pytest.mark.parametrize(
    "name, family, available",
    [
        (
            "fsdp",
            "optimizer stack",
            "adamw-8bit, deepspeed-zero3, flash-attention, gradient-checkpointing, liger, mixed-precision, packing",
        ),
    ],
)
def test_plugins_roadmap_name(host: Any, quickstart: dict, name: str, family: str, available: str) -> None:
    (msg,) = problems(host, quickstart, plugins=(name,))
    assert msg == (
        f"--plugins: '{name}' ({family}) is on the vlmplug roadmap but not available in "
        f"vlmplug {__version__}; available {family}s: {available}"
    )


def test_every_problem_is_reported_together(host: Any, quickstart: dict) -> None:
    got = problems(host, quickstart, plugins=("linear", "mlp", "mpl", "fsdp"), sets=("max_steps=abc",))
    assert len(got) == 4
    assert "--plugins: connector: choose one of linear, mlp" in got
    assert any("unknown component 'mpl'" in p for p in got)
    assert any("'fsdp' (optimizer stack) is on the vlmplug roadmap" in p for p in got)
    assert "--set max_steps: expected an integer, got 'abc'" in got


def test_config_error_message_lists_every_problem(host: Any, quickstart: dict) -> None:
    with pytest.raises(ConfigError) as e:
        run(host, quickstart, plugins=("linear", "mlp", "mpl"))
    text = str(e.value)
    assert "(2 problems)" in text
    assert "\n  - --plugins: connector: choose one of linear, mlp" in text
    assert "\n  - --plugins: unknown component 'mpl'" in text


# -- recipe-level selection errors --------------------------------------------------------------------


def test_component_of_the_wrong_family(host: Any, quickstart: dict) -> None:
    assert problems(host, {**quickstart, "connector": "clip"}) == [
        "connector: 'clip' is a vision encoder, not a connector; connectors: linear, mlp, perceiver, qformer, "
        "qformer-text"
    ]


def test_alignment_is_the_guides_name_for_connector(host: Any, quickstart: dict) -> None:
    data = {k: v for k, v in quickstart.items() if k != "connector"}
    assert run(host, {**data, "alignment": "linear"}).components()["connector"] == "linear"
    (msg,) = problems(host, {**quickstart, "alignment": "linear"})
    assert "already chooses the connector with 'connector'" in msg


def test_no_connector_and_no_model(host: Any, quickstart: dict) -> None:
    data = {k: v for k, v in quickstart.items() if k not in ("connector", "model")}
    got = problems(host, data)
    want = "the recipe chooses no connector: add `connector: NAME` (linear, mlp, perceiver, qformer, qformer-text)"
    assert any(p.startswith(want) for p in got)
    assert any(p.startswith("model: the recipe names no LLM") for p in got)


def test_explicit_options_are_validated(host: Any, quickstart: dict) -> None:
    got = problems(host, {**quickstart, "connector": {"name": "mlp", "dept": 3, "hidden_act": "gleu"}})
    assert len(got) == 2
    assert any("connector: unknown option 'dept' for mlp (did you mean 'depth'?)" in p for p in got)
    assert any(p.startswith("connector.hidden_act: 'gleu'") and "did you mean 'gelu'" in p for p in got)


def test_use_peft_contradictions(host: Any, quickstart: dict) -> None:
    assert problems(host, {**quickstart, "use_peft": True}) == [
        "use_peft: true contradicts PEFT method 'full'; drop one"
    ]
    assert problems(host, {**quickstart, "use_peft": False}, plugins=("lora",)) == [
        "use_peft: false contradicts PEFT method 'lora'; drop one"
    ]


def test_use_peft_without_a_method_selects_lora(host: Any, quickstart: dict) -> None:
    data = {k: v for k, v in quickstart.items() if k != "peft"}
    assert run(host, data).components()["peft"] == "full"
    r = run(host, {**data, "use_peft": True})
    assert r.components()["peft"] == "lora"
    assert "peft: no PEFT method named; using 'lora' (the default for use_peft: true)" in r.notes


def test_set_use_peft_acts_like_the_recipe_key(host: Any, quickstart: dict) -> None:
    """--set wins over the recipe, so `--set use_peft=true` must select (or contradict) exactly as
    `use_peft: true` written in the recipe does."""
    data = {k: v for k, v in quickstart.items() if k != "peft"}
    r = run(host, data, sets=("use_peft=true",))
    assert r.components()["peft"] == "lora"
    assert problems(host, quickstart, sets=("use_peft=true",)) == [
        "use_peft: true contradicts PEFT method 'full'; drop one"
    ]


def test_unknown_recipe_key_did_you_mean(host: Any, quickstart: dict) -> None:
    (msg,) = problems(host, {**quickstart, "learning_rat": 1e-4})
    assert msg.startswith("learning_rat: unknown recipe key (did you mean 'learning_rate'?)")


def test_flat_key_of_an_unselected_component(host: Any, quickstart: dict) -> None:
    assert problems(host, {**quickstart, "lora_r": 8}) == [
        "lora_r: belongs to lora / qlora, which the recipe does not select (add --plugins lora)"
    ]


def test_flat_key_and_nested_option_disagree(host: Any, quickstart: dict) -> None:
    (msg,) = problems(host, {**quickstart, "lora_r": 8, "peft": {"name": "lora", "lora_r": 4}})
    assert msg == "lora_r: set to 8 at top level and 4 under PEFT method 'lora'; keep one"


# -- precedence: component defaults < recipe < --plugins < --set --------------------------------


def test_flat_key_reaches_a_component_selected_by_plugins(host: Any, quickstart: dict) -> None:
    r = run(host, {**quickstart, "lora_r": 8}, plugins=("lora",))
    assert r.single["peft"].options["lora_r"] == 8


def test_precedence_defaults_recipe_set(host: Any, quickstart: dict) -> None:
    data = {**quickstart, "peft": "lora"}
    assert run(host, data).single["peft"].options["lora_r"] == 16  # component default
    data["lora_r"] = 8
    assert run(host, data).single["peft"].options["lora_r"] == 8  # recipe flat key
    r = run(host, data, sets=("lora_r=32",))
    assert r.single["peft"].options["lora_r"] == 32  # --set wins
    assert r.single["peft"].options["lora_alpha"] == 16  # others keep defaults


@pytest.mark.parametrize("key", ["peft.lora_r", "lora.lora_r", "lora_r"])
def test_set_component_family_or_flat_option(host: Any, quickstart: dict, key: str) -> None:
    r = run(host, {**quickstart, "peft": "lora", "lora_r": 8}, sets=(f"{key}=4",))
    assert r.single["peft"].options["lora_r"] == 4


def test_set_option_on_an_unselected_component(host: Any, quickstart: dict) -> None:
    (msg,) = problems(host, quickstart, sets=("linear.bias=false",))
    assert msg.startswith("--set linear.bias: 'linear' is not a selected component or family")


def test_set_option_is_validated_naming_the_key(host: Any, quickstart: dict) -> None:
    assert problems(host, quickstart, plugins=("lora",), sets=("peft.lora_r=abc",)) == [
        "peft.lora_r: expected an integer, got 'abc'"
    ]
    assert problems(host, quickstart, sets=("mlp.depth=0",)) == ["connector: depth must be at least 1"]


def test_set_learning_rate_is_a_float(host: Any, quickstart: dict) -> None:
    r = run(host, quickstart, sets=("learning_rate=1e-4",))
    assert r.training["learning_rate"] == 0.0001
    assert type(r.training["learning_rate"]) is float


def test_recipe_learning_rate_string_from_yaml(host: Any, quickstart: dict) -> None:
    r = run(host, {**quickstart, "learning_rate": "2e-4"})
    assert r.training["learning_rate"] == pytest.approx(2e-4)
    assert type(r.training["learning_rate"]) is float


def test_set_max_steps_not_an_integer(host: Any, quickstart: dict) -> None:
    assert problems(host, quickstart, sets=("max_steps=abc",)) == ["--set max_steps: expected an integer, got 'abc'"]


def test_set_unknown_key_did_you_mean(host: Any, quickstart: dict) -> None:
    (msg,) = problems(host, quickstart, sets=("learning_rat=1e-4",))
    assert msg.startswith("--set learning_rat: unknown key (did you mean 'learning_rate'?)")


def test_set_selecting_keys_act_on_the_recipe(host: Any, quickstart: dict) -> None:
    assert run(host, quickstart, sets=("connector=linear",)).components()["connector"] == "linear"
    r = run(host, quickstart, sets=("gradient_checkpointing=true",))
    assert r.components()["optimizer_stack"] == ["gradient-checkpointing"]
    r = run(host, {**quickstart, "bf16": True}, sets=("bf16=false",))
    assert r.components()["optimizer_stack"] == []


def test_set_training_args_and_dataset_options(host: Any, quickstart: dict) -> None:
    r = run(host, quickstart, sets=("training_args.eval_strategy=steps", "datasets.0.num_samples=10"))
    assert r.training_args == {"eval_strategy": "steps"}
    assert r.datasets[0].options["num_samples"] == 10
    (msg,) = problems(host, quickstart, sets=("datasets.3.num_samples=10",))
    assert msg == "--set datasets.3.num_samples: expected datasets.INDEX.OPTION with INDEX < 1"


def test_set_roadmap_key_says_roadmap(host: Any, quickstart: dict) -> None:
    """A guide key whose component is planned gives the same roadmap message from --set as from the
    recipe file, not 'unknown key'."""
    (msg,) = problems(host, quickstart, sets=("fsdp=full_shard",))
    assert msg.startswith("fsdp:") and "'fsdp'" in msg and ROADMAP in msg


def test_set_value_selects_its_component(host: Any, quickstart: dict) -> None:
    """``attn_implementation: flash_attention_2`` selects flash-attention, from --set as from the file."""
    r = resolve(
        quickstart,
        host.registry,
        host=host,
        sets=parse_set(["attn_implementation=flash_attention_2"]),
        check_deps=False,
    )
    (sel,) = r.optimizer_stack
    assert (sel.name, sel.options["attn_implementation"]) == ("flash-attention", "flash_attention_2")


@pytest.mark.parametrize("item", ["learning_rate", "=3", " =3"])
def test_parse_set_needs_key_value(item: str) -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set([item])


def test_parse_set_reads_yaml_values() -> None:
    assert parse_set(["a=1", "b=true", "c=[x, y]", "d=", "e=text", "f=1e-4", "g=a=b"]) == [
        ("a", 1),
        ("b", True),
        ("c", ["x", "y"]),
        ("d", ""),
        ("e", "text"),
        ("f", "1e-4"),
        ("g", "a=b"),
    ]


# -- the guide's LLaVA recipe block ------------------------------------------------------------------

LLAVA = {
    "model": "Meta-Llama/Meta-Llama-3.1-8B",
    "tokenizer": "Meta-Llama/Meta-Llama-3.1-8B-Instruct",
    "vision_encoder": "openai/clip-vit-large-patch14-336",
    "alignment": "mlp",
    "use_peft": True,
    "load_in_4bit": True,
    "lora_r": 16,
    "lora_alpha": 16,
    "lora_target_modules": "all-linear",
    "lora_modules_to_save": ["lm_head", "embed_tokens"],
    "num_train_epochs": 1,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 2,
    "learning_rate": "2e-4",  # YAML 1.1 reads the guide's 2e-4 as a string
    "lr_scheduler_type": "constant",
    "warmup_ratio": 0.1,
    "max_seq_length": 1024,
    "packing": True,
    "attn_implementation": "flash_attention_2",
    "use_liger": True,
    "bf16": True,
    "gradient_checkpointing": True,
    "datasets": [{"format": "shapes"}],
}
#: Keys left out where a test needs the block to resolve on this machine: the GPU kernels, and packing
#: (tested on its own in tests/plugins/optim/test_packing.py).
LEFT_OUT_OF_LLAVA = ("packing", "use_liger", "attn_implementation")


def test_llava_block_reports_every_missing_piece_in_one_error(host: Any, monkeypatch: Any) -> None:
    """The GPU kernels' packages are missing (as on a CPU machine): both named, with their extras."""
    from vlmplug import deps

    monkeypatch.setattr(deps, "is_installed", lambda module: module not in ("flash_attn", "liger_kernel"))
    got = problems(host, LLAVA)
    assert len(got) == 2, got

    def one(*words: str) -> str:
        hits = [p for p in got if all(w in p for w in words)]
        assert len(hits) == 1, (words, got)
        return hits[0]

    assert one("liger needs liger_kernel", 'pip install "vlmplug[liger]"')
    assert one("flash-attention needs flash_attn", 'pip install "vlmplug[flash]"')


def test_llava_block_resolves_without_the_roadmap_keys(host: Any) -> None:
    data = {k: v for k, v in LLAVA.items() if k not in LEFT_OUT_OF_LLAVA}
    r = run(host, data)
    comps = r.components()
    assert comps["vision_encoder"] == "clip"
    assert comps["connector"] == "mlp"
    assert comps["fusion"] == "interleaved"
    assert comps["peft"] == "qlora"  # load_in_4bit
    assert comps["dataset_format"] == ["shapes"]
    assert set(comps["optimizer_stack"]) == {"mixed-precision", "gradient-checkpointing"}
    assert "vision_encoder: 'openai/clip-vit-large-patch14-336' is read by 'clip' (auto-detected)" in r.notes
    assert r.single["vision_encoder"].options["model"] == "openai/clip-vit-large-patch14-336"
    lora = r.single["peft"].options
    assert lora["lora_r"] == 16
    assert lora["lora_alpha"] == 16.0
    assert lora["lora_target_modules"] == "all-linear"
    assert lora["lora_modules_to_save"] == ["lm_head", "embed_tokens"]
    mp = next(s for s in r.optimizer_stack if s.name == "mixed-precision")
    assert mp.options["bf16"] is True
    assert r.core["model"] == "Meta-Llama/Meta-Llama-3.1-8B"
    assert r.core["tokenizer"] == "Meta-Llama/Meta-Llama-3.1-8B-Instruct"
    assert r.core["max_seq_length"] == 1024
    assert r.training["learning_rate"] == pytest.approx(2e-4)
    assert type(r.training["learning_rate"]) is float
    assert r.training["num_train_epochs"] == 1.0
    assert r.training["gradient_accumulation_steps"] == 2
    assert r.training["lr_scheduler_type"] == "constant"


def test_llava_block_use_peft_alone_selects_lora(host: Any) -> None:
    data = {
        k: v for k, v in LLAVA.items() if k not in (*LEFT_OUT_OF_LLAVA, "load_in_4bit") and not k.startswith("lora_")
    }
    r = run(host, data)
    assert r.components()["peft"] == "lora"
    assert "peft: no PEFT method named; using 'lora' (the default for use_peft: true)" in r.notes


def test_llava_block_with_bf16_false_does_not_select_mixed_precision(host: Any) -> None:
    data = {k: v for k, v in LLAVA.items() if k not in LEFT_OUT_OF_LLAVA}
    r = run(host, {**data, "bf16": False})
    assert r.components()["optimizer_stack"] == ["gradient-checkpointing"]


def test_resolved_recipe_round_trips_to_yaml(host: Any) -> None:
    import yaml

    data = {k: v for k, v in LLAVA.items() if k not in LEFT_OUT_OF_LLAVA}
    r = run(host, data)
    dumped = yaml.safe_load(r.to_yaml())
    assert dumped["components"] == r.components()
    assert dumped["peft"]["name"] == "qlora" and dumped["peft"]["provider"] == "built-in"
    assert dumped["vlmplug_version"] == __version__
    assert json.loads(json.dumps(r.to_dict(), default=str))["training"]["learning_rate"] == pytest.approx(2e-4)


# -- datasets -------------------------------------------------------------------------------------


def _messages_file(tmp_path: Path) -> Path:
    p = tmp_path / "train.jsonl"
    rows = [
        {
            "messages": [{"role": "user", "content": "<image>\nWhat colour?"}, {"role": "assistant", "content": "red"}],
            "images": ["a.png"],
        },
        {
            "messages": [
                {"role": "user", "content": "<image>\nWhat shape?"},
                {"role": "assistant", "content": "circle"},
            ],
            "images": ["b.png"],
        },
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


@pytest.mark.parametrize("as_mapping", [True, False])
def test_dataset_path_is_auto_detected(host: Any, quickstart: dict, tmp_path: Path, as_mapping: bool) -> None:
    p = _messages_file(tmp_path)
    entry: Any = {"path": str(p)} if as_mapping else str(p)
    r = run(host, {**quickstart, "datasets": [entry]})
    assert [s.name for s in r.datasets] == ["messages"]
    assert r.datasets[0].options["path"] == str(p)
    assert f"datasets[0]: {p} read as 'messages' (auto-detected)" in r.notes


def test_dataset_json_list_is_auto_detected(host: Any, quickstart: dict, tmp_path: Path) -> None:
    p = tmp_path / "train.json"
    p.write_text(json.dumps([{"messages": [{"role": "user", "content": "hi"}], "images": []}]))
    r = run(host, {**quickstart, "datasets": [{"path": str(p)}]})
    assert [s.name for s in r.datasets] == ["messages"]


def test_dataset_missing_path_is_named(host: Any, quickstart: dict, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "train.jsonl"
    got = problems(host, {**quickstart, "datasets": [{"path": str(missing)}]})
    assert f"datasets[0]: {missing} does not exist (paths are relative to where you run vlmplug)" in got


def test_dataset_unrecognised_format(host: Any, quickstart: dict, tmp_path: Path) -> None:
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps({"text": "no messages here"}) + "\n")
    got = problems(host, {**quickstart, "datasets": [{"path": str(p)}]})
    assert any(f"datasets[0]: no dataset format recognises {p}" in g and "messages, shapes" in g for g in got)


def test_dataset_unreadable_json(host: Any, quickstart: dict, tmp_path: Path) -> None:
    p = tmp_path / "broken.jsonl"
    p.write_text("{not json\n")
    got = problems(host, {**quickstart, "datasets": [{"path": str(p)}]})
    assert any(g.startswith(f"datasets[0]: cannot read {p}") for g in got)


def test_no_training_data(host: Any, quickstart: dict) -> None:
    data = {k: v for k, v in quickstart.items() if k != "datasets"}
    assert problems(host, data) == ["datasets: the recipe has no training data; add `datasets: [{path: train.jsonl}]`"]


def test_a_file_two_formats_recognise_is_an_error_listing_them(tmp_path: Path) -> None:
    """Detection asks every plugin; two answers are not a silent guess."""
    from vlmplug import ComponentSpec, hookimpl
    from vlmplug.manager import load

    class Rival:
        @hookimpl
        def register_dataset_formats(self, register: Any) -> None:
            register(ComponentSpec(name="rival-messages", summary="test", factory="vlmplug.errors:did_you_mean"))

        @hookimpl
        def detect_dataset_format(self, path: str, sample: Any) -> str | None:
            return "rival-messages" if isinstance(sample, dict) and "messages" in sample else None

    h = load(autoload=False, extra_plugins=[(Rival(), "rival")])
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    recipe = {"model": "tiny-llama", "vision_encoder": {"name": "clip", "model": "tiny"}, "connector": "mlp"}
    with pytest.raises(ConfigError) as e:
        resolve({**recipe, "datasets": [{"path": str(data)}]}, h.registry, host=h)
    (problem,) = [p for p in e.value.problems if "recognise" in p]
    assert problem == (
        f"datasets[0]: {data}: 2 dataset formats recognise it (rival-messages, messages); name one with `format: NAME`"
    )
    ok = resolve({**recipe, "datasets": [{"path": str(data), "format": "messages"}]}, h.registry, host=h)
    assert ok.datasets[0].name == "messages"
