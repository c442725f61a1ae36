"""The plugin host: built-ins, entry points, broken plugins, check_pending, env controls, the facade,
and a datasette-style meta-test that every hook spec is documented."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pluggy
import pytest

from vlmplug import ComponentSpec, __version__, hookimpl, hookspecs
from vlmplug.errors import ConfigError, PluginError
from vlmplug.manager import load
from vlmplug.plugins import BUILTIN_PLUGINS

BUILTIN_COMPONENTS = {
    "clip": "vision_encoder",
    "siglip": "vision_encoder",
    "patches": "vision_encoder",
    "eva-clip": "vision_encoder",
    "linear": "connector",
    "mlp": "connector",
    "perceiver": "connector",
    "qformer": "connector",
    "qformer-text": "connector",
    "interleaved": "fusion",
    "cross-attention": "fusion",
    "modality-experts": "fusion",
    "full": "peft",
    "lora": "peft",
    "spectrum": "peft",
    "qlora": "peft",
    "messages": "dataset_format",
    "shapes": "dataset_format",
    "llava": "dataset_format",
    "sharegpt": "dataset_format",
    "caption": "dataset_format",
    "hf": "dataset_format",
    "vqa-data": "dataset_format",
    "video": "dataset_format",
    "document": "dataset_format",
    "gradient-checkpointing": "optimizer_stack",
    "mixed-precision": "optimizer_stack",
    "flash-attention": "optimizer_stack",
    "liger": "optimizer_stack",
    "adamw-8bit": "optimizer_stack",
    "packing": "optimizer_stack",
    "deepspeed-zero3": "optimizer_stack",
    "vqa": "evaluator",
    "textvqa": "evaluator",
    "gqa": "evaluator",
    "docvqa": "evaluator",
    "pope": "evaluator",
    "multiple-choice": "evaluator",
    "coco-caption": "evaluator",
    "llm-judge": "evaluator",
}


def spec(name: str, **kw: Any) -> ComponentSpec:
    return ComponentSpec(name=name, summary=f"test {name}", factory="vlmplug.errors:did_you_mean", **kw)


# -- built-ins ------------------------------------------------------------------------------------


def test_load_registers_every_builtin(host: Any) -> None:
    assert {s.name: s.family for s in host.registry} == BUILTIN_COMPONENTS
    assert host.broken == []
    assert host.registry.errors == []
    for s in host.registry:
        assert s.provider == "built-in", s.name
        assert s.plugin in BUILTIN_PLUGINS, s.name
        assert s.version == __version__


def test_builtin_plugins_record_their_components_and_hooks(host: Any) -> None:
    assert set(host.plugins) == set(BUILTIN_PLUGINS)
    lora = host.plugins["vlmplug.plugins.peft.lora"]
    assert lora.status == "ok"
    assert lora.provider == "built-in"
    assert lora.components == ["lora"]
    assert lora.hooks == ["register_peft_methods"]
    messages = host.plugins["vlmplug.plugins.datasets.messages"]
    assert messages.hooks == ["detect_dataset_format", "register_dataset_formats"]


def test_load_builds_a_fresh_host_each_call() -> None:
    a, b = load(), load()
    assert a is not b and a.pm is not b.pm and a.registry is not b.registry


# -- broken plugins are collected, everything else keeps working ---------------------------------


class RaisingPlugin:
    @hookimpl
    def register_connectors(self, register: Any) -> None:
        raise RuntimeError("kaboom")


class MisspelledPlugin:
    @hookimpl
    def register_conectors(self, register: Any) -> None:  # sic
        register(spec("never-registered"))

    @hookimpl
    def register_evaluators(self, register: Any) -> None:
        register(spec("misspelled-eval"))


class DuplicateMlp:
    @hookimpl
    def register_connectors(self, register: Any) -> None:
        register(spec("mlp"))


class WrongFamily:
    @hookimpl
    def register_peft_methods(self, register: Any) -> None:
        register(spec("sneaky", family="connector"))


class NotASpec:
    @hookimpl
    def register_evaluators(self, register: Any) -> None:
        register({"name": "dict-eval"})


class GoodPlugin:
    @hookimpl
    def register_connectors(self, register: Any) -> None:
        register(spec("resampler", aliases=("resampler-v1",)))

    @hookimpl
    def register_evaluators(self, register: Any) -> None:
        register(spec("exact-match"))


def test_plugin_raising_in_register_is_broken_and_others_still_register() -> None:
    h = load(extra_plugins=[(RaisingPlugin(), "raiser"), (GoodPlugin(), "good")])
    assert [p.name for p in h.broken] == ["raiser"]
    info = h.plugins["raiser"]
    assert info.status == "broken"
    assert info.error == "register_connectors raised RuntimeError: kaboom"
    assert set(h.registry.names()) == set(BUILTIN_COMPONENTS) | {"resampler", "exact-match"}
    good = h.registry.get("resampler")
    assert good.family == "connector"
    assert good.provider == "explicit"
    assert good.plugin == "good"
    assert h.registry.get("resampler-v1") is good
    assert h.plugins["good"].components == ["resampler", "exact-match"]


def test_misspelled_hook_is_broken_with_did_you_mean() -> None:
    h = load(extra_plugins=[(MisspelledPlugin(), "typo")])
    assert [p.name for p in h.broken] == ["typo"]
    assert h.plugins["typo"].error == (
        "implements unknown hook 'register_conectors' (did you mean 'register_connectors'?)"
    )
    # the broken plugin is unregistered: none of its hooks run, not even the correctly spelled one
    assert "misspelled-eval" not in h.registry
    assert "never-registered" not in h.registry
    assert h.pm.get_plugin("typo") is None
    assert set(h.registry.names()) == set(BUILTIN_COMPONENTS)


def test_optionalhook_with_unknown_name_is_allowed() -> None:
    class Optional:
        @hookimpl(optionalhook=True)
        def some_future_hook(self) -> None:
            pass

    h = load(extra_plugins=[(Optional(), "optional")])
    assert h.broken == []


def test_duplicate_component_is_an_error_naming_both_providers() -> None:
    h = load(extra_plugins=[(DuplicateMlp(), "dup")])
    assert len(h.registry.errors) == 1
    msg = h.registry.errors[0]
    assert "component name 'mlp' is registered twice" in msg
    assert "built-in (plugin vlmplug.plugins.connectors.mlp)" in msg
    assert "explicit (plugin dup)" in msg
    assert len(h.broken) == 1
    assert "'mlp' is registered twice" in (h.broken[0].error or "")
    # every other built-in is unaffected
    assert set(h.registry.names()) == set(BUILTIN_COMPONENTS)


def test_duplicate_component_first_registered_keeps_the_name() -> None:
    """The built-in was registered first, so it keeps ``mlp``; the newcomer is the broken plugin
    (and the fix in the message is to disable the newcomer, not the built-in)."""
    h = load(extra_plugins=[(DuplicateMlp(), "dup")])
    assert h.registry.get("mlp").provider == "built-in"
    assert h.registry.get("mlp").plugin == "vlmplug.plugins.connectors.mlp"
    assert [p.name for p in h.broken] == ["dup"]
    assert h.plugins["vlmplug.plugins.connectors.mlp"].status == "ok"
    assert "VLMPLUG_DISABLE_PLUGINS=dup" in h.registry.errors[0]


def test_spec_declaring_another_family_is_an_error() -> None:
    h = load(extra_plugins=[(WrongFamily(), "wrongfam")])
    err = h.plugins["wrongfam"].error or ""
    assert err.startswith("register_peft_methods raised TypeError")
    assert "sneaky declares family 'connector'" in err
    assert "register_peft_methods (family 'peft')" in err
    assert "sneaky" not in h.registry


def test_spec_with_matching_family_is_accepted() -> None:
    class RightFamily:
        @hookimpl
        def register_peft_methods(self, register: Any) -> None:
            register(spec("dora", family="peft"))

    h = load(extra_plugins=[(RightFamily(), "rightfam")])
    assert h.broken == []
    assert h.registry.get("dora").family == "peft"


def test_register_takes_only_component_specs() -> None:
    h = load(extra_plugins=[(NotASpec(), "notspec")])
    err = h.plugins["notspec"].error or ""
    assert "register_evaluators" in err and "takes a ComponentSpec" in err


def test_hook_with_a_wrong_argument_is_broken_at_registration() -> None:
    class BadArgs:
        @hookimpl
        def register_connectors(self, registr: Any) -> None:  # sic: not in the spec
            pass

    h = load(extra_plugins=[(BadArgs(), "badargs")])
    err = h.plugins["badargs"].error or ""
    assert err.startswith("PluginValidationError")
    assert set(h.registry.names()) == set(BUILTIN_COMPONENTS)


# -- environment controls ---------------------------------------------------------------------------


def test_disable_hides_a_builtin_plugin_by_short_module_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMPLUG_DISABLE_PLUGINS", "lora")
    h = load()
    assert "lora" not in h.registry
    assert "vlmplug.plugins.peft.lora" not in h.plugins
    assert set(h.registry.names()) == set(BUILTIN_COMPONENTS) - {"lora"}


def test_disable_by_full_module_path_and_component_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMPLUG_DISABLE_PLUGINS", " vlmplug.plugins.connectors.linear , gradient-checkpointing ")
    h = load()
    assert "linear" not in h.registry and "projection" not in h.registry
    assert "vlmplug.plugins.connectors.linear" not in h.plugins
    # a component name hides the component; its plugin still loads
    assert "gradient-checkpointing" not in h.registry
    assert h.plugins["vlmplug.plugins.optim.gradient_checkpointing"].status == "ok"
    assert set(h.registry.names()) == set(BUILTIN_COMPONENTS) - {"linear", "gradient-checkpointing"}


def test_disabled_component_is_unknown_to_recipes(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmplug.errors import ConfigError
    from vlmplug.recipe import load_recipe, resolve

    monkeypatch.setenv("VLMPLUG_DISABLE_PLUGINS", "lora")
    h = load()
    data, _ = load_recipe("quickstart")
    with pytest.raises(ConfigError) as e:
        resolve(data, h.registry, host=h, plugins=["lora"])
    (msg,) = e.value.problems
    prefix, suffix = (
        "--plugins: unknown component 'lora' (did you mean 'qlora'?); choose from: ",
        " (run `vlmplug list`)",
    )
    assert msg.startswith(prefix) and msg.endswith(suffix)
    choices = msg[len(prefix) : -len(suffix)].split(", ")
    assert set(choices) == {s.name for s in h.registry if not s.planned} and "lora" not in choices


def test_explicit_disabled_argument_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMPLUG_DISABLE_PLUGINS", "lora")
    h = load(disabled=["mlp"])
    assert "lora" in h.registry
    assert "mlp" not in h.registry


# -- entry points (faked, so nothing needs installing) --------------------------------------------


class FakeDist:
    def __init__(self, name: str, version: str):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    def __init__(self, name: str, obj: Any = None, dist: FakeDist | None = None, exc: Exception | None = None):
        self.name, self.value, self.group = name, f"{name.replace('-', '_')}_module", "vlmplug"
        self.dist, self._obj, self._exc = dist, obj, exc

    def load(self) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._obj


class PixelShuffle:
    @hookimpl
    def register_connectors(self, register: Any) -> None:
        register(spec("pixel-shuffle"))


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch) -> list[FakeEntryPoint]:
    import importlib.metadata

    eps: list[FakeEntryPoint] = []

    def fake(group: str | None = None, **kw: Any) -> list[FakeEntryPoint]:
        return list(eps) if group == "vlmplug" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    monkeypatch.delenv("VLMPLUG_LOAD_PLUGINS", raising=False)
    return eps


def test_entry_point_plugin_is_loaded_with_its_distribution(entry_points: list) -> None:
    entry_points.append(FakeEntryPoint("pixel-shuffle", PixelShuffle(), FakeDist("vlmplug-pixel-shuffle", "0.3.1")))
    h = load()
    s = h.registry.get("pixel-shuffle")
    assert s.family == "connector"
    assert s.provider == "vlmplug-pixel-shuffle-0.3.1"
    assert s.version == "0.3.1"
    assert s.plugin == "pixel-shuffle"
    assert h.broken == []


@pytest.mark.parametrize(
    "env, loaded",
    [
        ("", False),
        ("something-else", False),
        ("pixel-shuffle", True),
        ("vlmplug-pixel-shuffle", True),  # the distribution name works too
    ],
)
def test_load_plugins_env(entry_points: list, monkeypatch: pytest.MonkeyPatch, env: str, loaded: bool) -> None:
    entry_points.append(FakeEntryPoint("pixel-shuffle", PixelShuffle(), FakeDist("vlmplug-pixel-shuffle", "0.3.1")))
    monkeypatch.setenv("VLMPLUG_LOAD_PLUGINS", env)
    h = load()
    assert ("pixel-shuffle" in h.registry) is loaded
    assert set(BUILTIN_COMPONENTS) <= set(h.registry.names())  # built-ins always load


@pytest.mark.parametrize("disable", ["pixel-shuffle", "vlmplug-pixel-shuffle"])
def test_disable_entry_point_plugin(entry_points: list, monkeypatch: pytest.MonkeyPatch, disable: str) -> None:
    entry_points.append(FakeEntryPoint("pixel-shuffle", PixelShuffle(), FakeDist("vlmplug-pixel-shuffle", "0.3.1")))
    monkeypatch.setenv("VLMPLUG_DISABLE_PLUGINS", disable)
    h = load()
    assert "pixel-shuffle" not in h.registry
    assert "pixel-shuffle" not in h.plugins


def test_entry_point_that_fails_to_import_is_collected(entry_points: list) -> None:
    entry_points.append(
        FakeEntryPoint(
            "broken", dist=FakeDist("vlmplug-broken", "1.0"), exc=ImportError("No module named 'nonexistent'")
        )
    )
    entry_points.append(FakeEntryPoint("pixel-shuffle", PixelShuffle(), FakeDist("vlmplug-pixel-shuffle", "0.3.1")))
    h = load()
    info = h.plugins["broken"]
    assert info.status == "broken"
    assert info.provider == "vlmplug-broken-1.0"
    assert info.error == "import failed: ImportError: No module named 'nonexistent'"
    assert "pixel-shuffle" in h.registry
    assert set(BUILTIN_COMPONENTS) <= set(h.registry.names())


def test_two_distributions_with_one_entry_point_name(entry_points: list) -> None:
    entry_points.append(FakeEntryPoint("pixel-shuffle", PixelShuffle(), FakeDist("vlmplug-pixel-shuffle", "0.3.1")))
    entry_points.append(FakeEntryPoint("pixel-shuffle", PixelShuffle(), FakeDist("pixel-shuffle-fork", "9.9")))
    h = load()
    broken = h.broken
    assert len(broken) == 1
    assert "declared by both vlmplug-pixel-shuffle-0.3.1 and pixel-shuffle-fork-9.9" in (broken[0].error or "")
    assert h.registry.get("pixel-shuffle").provider == "vlmplug-pixel-shuffle-0.3.1"


def test_entry_point_duplicating_a_builtin_names_both(entry_points: list) -> None:
    entry_points.append(FakeEntryPoint("mlp-plus", DuplicateMlp(), FakeDist("vlmplug-mlp-plus", "2.0")))
    h = load()
    assert len(h.registry.errors) == 1
    msg = h.registry.errors[0]
    assert "built-in (plugin vlmplug.plugins.connectors.mlp)" in msg
    assert "vlmplug-mlp-plus-2.0 (plugin mlp-plus)" in msg


# -- the facade -------------------------------------------------------------------------------------


class FailingLogger:
    @hookimpl
    def on_log(self, state: Any, metrics: dict) -> None:
        raise RuntimeError("disk full")


class QuietLogger:
    def __init__(self) -> None:
        self.seen: list[dict] = []

    @hookimpl
    def on_log(self, state: Any, metrics: dict) -> None:
        self.seen.append(metrics)


def test_notify_wraps_plugin_exceptions_naming_the_plugin() -> None:
    h = load(extra_plugins=[(QuietLogger(), "quiet"), (FailingLogger(), "failing-logger")])
    with pytest.raises(PluginError) as e:
        h.notify("on_log", state=None, metrics={"loss": 1.0})
    assert e.value.plugin == "failing-logger"
    assert str(e.value) == "plugin 'failing-logger' failed in hook on_log: RuntimeError: disk full"
    assert isinstance(e.value.original, RuntimeError)


def test_notify_reaches_every_plugin() -> None:
    a, b = QuietLogger(), QuietLogger()
    h = load(extra_plugins=[(a, "a"), (b, "b")])
    h.notify("on_log", state=None, metrics={"loss": 0.5})
    assert a.seen == [{"loss": 0.5}] and b.seen == [{"loss": 0.5}]


def test_notify_only_takes_lifecycle_hooks(host: Any) -> None:
    with pytest.raises(ValueError, match="register_connectors is not a lifecycle hook"):
        host.notify("register_connectors", register=lambda s: None)


def test_detect_dataset_format_through_the_facade(host: Any) -> None:
    sample = {
        "messages": [{"role": "user", "content": "<image>\nhi"}, {"role": "assistant", "content": "a"}],
        "images": ["x.png"],
    }
    assert host.detect_dataset_format(path="train.jsonl", sample=sample) == "messages"
    assert host.detect_dataset_format(path="train.jsonl", sample={"text": "no messages"}) is None
    assert host.detect_dataset_format(path="some/dir", sample=None) is None


def test_a_third_party_detector_and_a_builtin_that_both_answer_are_ambiguous() -> None:
    """Every dataset-format detector is asked; one answer is taken, two different ones name both."""

    class ShapesDetector:
        @hookimpl
        def detect_dataset_format(self, path: str, sample: Any) -> Any:
            return "shapes" if path.endswith(".shapes.jsonl") else None

    h = load(extra_plugins=[(ShapesDetector(), "shapes-detector")])
    sample = {"messages": []}
    with pytest.raises(ConfigError, match=r"x.shapes.jsonl: 2 dataset formats recognise it \(shapes, messages\)"):
        h.detect_dataset_format(path="x.shapes.jsonl", sample=sample)
    assert h.detect_dataset_format(path="x.jsonl", sample=sample) == "messages"
    assert h.detect_dataset_format(path="x.shapes.jsonl", sample=None) == "shapes"


def test_failing_detector_is_a_plugin_error() -> None:
    class BadDetector:
        @hookimpl
        def detect_dataset_format(self, path: str, sample: Any) -> Any:
            raise KeyError("field")

    h = load(extra_plugins=[(BadDetector(), "bad-detector")])
    with pytest.raises(PluginError, match="plugin 'bad-detector' failed in hook detect_dataset_format"):
        h.detect_dataset_format(path="x.jsonl", sample={})


@pytest.mark.parametrize(
    "model, config, expected",
    [
        ("openai/clip-vit-large-patch14-336", None, "clip"),
        ("openai/clip-vit-base-patch32", None, "clip"),
        ("google/siglip-so400m-patch14-384", None, "siglip"),  # named by the roadmap plugin: a planned encoder
        ("BAAI/EVA-CLIP-8B", None, "eva-clip"),
        ("./local-tower", {"model_type": "clip_vision_model"}, "clip"),
        ("./local-clip", {"model_type": "siglip_vision_model"}, "siglip"),
        ("some/unknown-tower", None, None),
    ],
)
def test_detect_vision_encoder(host: Any, model: str, config: Any, expected: Any) -> None:
    assert host.detect_vision_encoder(model=model, config=config) == expected


# -- hook specs: every hook exists, is marked and documented (datasette-style meta-test) ------------

_SPEC_PM = pluggy.PluginManager("vlmplug")
_SPEC_PM.add_hookspecs(hookspecs)
HOOK_NAMES = sorted(n for n in vars(_SPEC_PM.hook) if not n.startswith("_"))

EXPECTED_HOOKS = {
    "register_vision_encoders",
    "register_connectors",
    "register_fusions",
    "register_peft_methods",
    "register_dataset_formats",
    "register_optimizer_stack",
    "register_evaluators",
    "register_commands",
    "detect_dataset_format",
    "detect_vision_encoder",
    "model_formats",
    "export_model",
    "detect_model_format",
    "import_model",
    "on_run_start",
    "on_model_built",
    "on_train_start",
    "on_log",
    "on_checkpoint_saved",
    "on_eval_end",
    "on_run_end",
}


def test_hook_set_is_the_documented_contract() -> None:
    assert set(HOOK_NAMES) == EXPECTED_HOOKS


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_hookspec_exists_and_is_documented(hook: str) -> None:
    fn = getattr(hookspecs, hook, None)
    assert fn is not None and callable(fn), f"{hook} is not defined in vlmplug.hookspecs"
    assert hasattr(fn, "vlmplug_spec"), f"{hook} lacks the @hookspec marker"
    doc = inspect.getdoc(fn) or ""
    assert doc.strip(), f"{hook} has no docstring"
    m = re.search(r"\.\. versionadded:: (\d+)\.(\d+)", doc)
    assert m, f"{hook}'s docstring lacks '.. versionadded::'"
    api = tuple(int(x) for x in hookspecs.HOOK_API_VERSION.split("."))
    assert (int(m.group(1)), int(m.group(2))) <= api, f"{hook} is newer than HOOK_API_VERSION"


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_hookspec_documents_its_parameters(hook: str) -> None:
    fn = getattr(hookspecs, hook)
    params = list(inspect.signature(fn).parameters)
    doc = inspect.getdoc(fn) or ""
    for p in params:
        assert p in doc, f"{hook}: parameter {p!r} is not mentioned in the docstring"


def test_registration_hooks_cover_every_family() -> None:
    from vlmplug.registry import FAMILIES

    assert tuple(hookspecs.REGISTRATION_HOOKS) == FAMILIES
    for hook in hookspecs.REGISTRATION_HOOKS.values():
        assert hook in HOOK_NAMES


def test_detection_hooks_take_the_first_answer_but_dataset_formats_ask_everyone() -> None:
    assert _SPEC_PM.hook.detect_vision_encoder.spec.opts["firstresult"] is True
    assert _SPEC_PM.hook.detect_dataset_format.spec.opts["firstresult"] is False
    assert _SPEC_PM.hook.on_log.spec.opts["firstresult"] is False
