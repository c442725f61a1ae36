"""The ``vlmplug`` command line, driven in-process with click's CliRunner, plus the startup guard:
``list``, ``--help``, ``config`` (and the other model-free commands) never import torch,
transformers or peft."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vlmplug import __version__
from vlmplug.cli import cli

BUILTINS = {
    "clip",
    "siglip",
    "eva-clip",
    "patches",
    "cross-attention",
    "modality-experts",
    "linear",
    "mlp",
    "perceiver",
    "qformer",
    "qformer-text",
    "interleaved",
    "full",
    "lora",
    "spectrum",
    "messages",
    "shapes",
    "llava",
    "sharegpt",
    "caption",
    "hf",
    "vqa-data",
    "video",
    "document",
    "gradient-checkpointing",
    "mixed-precision",
    "qlora",
    "flash-attention",
    "liger",
    "adamw-8bit",
    "packing",
    "deepspeed-zero3",
    "vqa",
    "textvqa",
    "gqa",
    "docvqa",
    "pope",
    "multiple-choice",
    "coco-caption",
    "llm-judge",
}


@pytest.fixture(autouse=True)
def plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built-ins only, whatever is installed in the dev environment."""
    monkeypatch.delenv("VLMPLUG_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("VLMPLUG_TRACE_PLUGINS", raising=False)
    monkeypatch.setenv("VLMPLUG_LOAD_PLUGINS", "")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def flat(text: str) -> str:
    """rich wraps long lines at the console width: compare with whitespace collapsed."""
    return " ".join(text.split())


def test_version() -> None:
    res = invoke("--version")
    assert res.exit_code == 0
    assert res.output.strip() == f"vlmplug, version {__version__}"


def test_help_lists_commands() -> None:
    res = invoke("--help")
    assert res.exit_code == 0
    for cmd in ("list", "info", "recipes", "config", "train", "score"):
        assert cmd in res.output


# -- list / info / recipes ------------------------------------------------------------------------


def test_list_json() -> None:
    res = invoke("list", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {r["name"] for r in rows} == BUILTINS
    for r in rows:
        assert {"name", "family", "summary", "provider", "version", "status"} <= set(r), r
        assert r["summary"]
        assert r["provider"] == "built-in"
        assert r["version"] == __version__
        assert r["status"] in ("ok", "missing-extra")
    assert {r["name"]: r["family"] for r in rows}["lora"] == "peft"


def test_list_family_json() -> None:
    res = invoke("list", "--family", "connector", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {r["name"] for r in rows} == {"linear", "mlp", "perceiver", "qformer", "qformer-text"}
    assert {r["family"] for r in rows} == {"connector"}


def test_list_rejects_an_unknown_family() -> None:
    res = invoke("list", "--family", "connectors")
    assert res.exit_code != 0
    assert "connector" in res.output


def test_list_table() -> None:
    res = invoke("list")
    assert res.exit_code == 0
    for name in ("clip", "mlp", "lora", "vqa"):
        assert name in res.output


def test_list_shows_a_broken_plugin_and_keeps_working(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    class Dist:
        metadata = {"Name": "vlmplug-broken"}
        version = "0.0.1"

    class EP:
        name, value, group, dist = "broken", "vlmplug_broken", "vlmplug", Dist()

        def load(self) -> Any:
            raise SyntaxError("invalid syntax (plugin.py, line 3)")

    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group=None, **kw: [EP()] if group == "vlmplug" else []
    )
    monkeypatch.delenv("VLMPLUG_LOAD_PLUGINS")
    res = invoke("list", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["broken"]["status"] == "broken"
    assert rows["broken"]["provider"] == "vlmplug-broken-0.0.1"
    assert "SyntaxError" in rows["broken"]["error"]
    assert set(rows) >= BUILTINS
    assert invoke("config", "--json").exit_code == 0


def test_info_shows_options() -> None:
    res = invoke("info", "lora")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "lora" in out and "PEFT method" in out
    for opt in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save"):
        assert opt in out


def test_info_json() -> None:
    res = invoke("info", "lora", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["name"] == "lora" and data["family"] == "peft" and data["provider"] == "built-in"
    opts = {o["name"]: o for o in data["options"]}
    assert opts["lora_r"]["default"] == 16
    assert opts["lora_r"]["type"] == "int"
    assert opts["lora_r"]["help"]
    assert opts["lora_modules_to_save"]["default"] == []
    assert "lora_r" in data["flat_keys"]


def test_info_by_alias() -> None:
    res = invoke("info", "projection", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["name"] == "linear"


def test_info_unknown_component() -> None:
    res = invoke("info", "nope")
    assert res.exit_code != 0
    assert "unknown component 'nope'" in flat(res.output)
    assert "Traceback" not in res.output


def test_info_unknown_component_did_you_mean() -> None:
    res = invoke("info", "lroa")
    assert res.exit_code != 0
    assert "unknown component 'lroa' (did you mean 'lora'?)" in flat(res.output)


def test_info_roadmap_component() -> None:
    res = invoke("info", "fsdp")
    assert res.exit_code != 0
    assert "'fsdp' (optimizer stack) is on the vlmplug roadmap" in flat(res.output)


def test_recipes() -> None:
    res = invoke("recipes")
    assert res.exit_code == 0
    assert "quickstart" in res.output
    res = invoke("recipes", "--json")
    items = {r["name"]: r["description"] for r in json.loads(res.stdout)}
    assert items.get("quickstart")


# -- config -------------------------------------------------------------------------------------------


def test_config_json() -> None:
    res = invoke("config", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["name"] == "quickstart"
    assert data["components"]["connector"] == "mlp"
    assert data["components"]["peft"] == "full"
    assert data["peft"]["name"] == "full"


def test_config_plugins_and_set() -> None:
    res = invoke(
        "config",
        "quickstart",
        "--plugins",
        "lora,gradient-checkpointing",
        "--set",
        "lora_r=32",
        "-s",
        "learning_rate=1e-4",
        "--json",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["components"]["peft"] == "lora"
    assert data["components"]["optimizer_stack"] == ["gradient-checkpointing"]
    assert data["peft"]["lora_r"] == 32
    assert data["training"]["learning_rate"] == 0.0001
    assert "peft: full -> lora (from --plugins)" in data["notes"]


def test_config_plan_table() -> None:
    res = invoke("config", "--plugins", "lora")
    assert res.exit_code == 0, res.output
    out = flat(res.output)
    assert "quickstart" in out and "lora" in out
    assert "note: peft: full -> lora (from --plugins)" in out


def test_config_two_connectors_is_an_error() -> None:
    res = invoke("config", "--plugins", "linear,mlp")
    assert res.exit_code == 2
    assert "--plugins: connector: choose one of linear, mlp" in flat(res.output)
    assert "Traceback" not in res.output


def test_config_unknown_recipe() -> None:
    res = invoke("config", "quickstrat")
    assert res.exit_code == 2
    assert "(did you mean 'quickstart'?)" in flat(res.output)


def test_config_bad_set() -> None:
    res = invoke("config", "--set", "max_steps=abc")
    assert res.exit_code == 2
    assert "--set max_steps: expected an integer, got 'abc'" in flat(res.output)


def test_debug_shows_the_exception() -> None:
    from vlmplug.errors import ConfigError

    with pytest.raises(ConfigError):
        CliRunner().invoke(cli, ["--debug", "config", "--plugins", "linear,mlp"], catch_exceptions=False)


# -- score --------------------------------------------------------------------------------------------

ROWS = [
    {"id": "a", "prediction": "Red", "answers": ["red"], "question_type": "color"},  # exact match: 1.0
    {"id": "b", "prediction": "two", "answers": ["3"], "question_type": "count"},  # wrong: 0.0
    # VQAv2 10-answer row, prediction given by 2 annotators: each leave-one-out subset of 9 holds
    # 1 match (2 subsets) or 2 matches (8 subsets): (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    {"id": "c", "prediction": "dog", "answers": ["dog", "dog"] + ["cat"] * 8, "question_type": "what"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_vqa(tmp_path: Path) -> None:
    preds = write_jsonl(tmp_path / "preds.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    res = invoke("score", "--evaluator", "vqa", str(preds), "--json", "--per-sample", str(out))
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["accuracy"] == pytest.approx((1.0 + 0.0 + 0.6) / 3)
    assert metrics["count"] == 3
    assert metrics["per_type"]["color"] == pytest.approx(1.0)
    assert metrics["per_type"]["count"] == pytest.approx(0.0)
    assert metrics["per_type"]["what"] == pytest.approx(0.6)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 3
    for row, w in zip(ROWS, written):
        assert {k: w[k] for k in row} == row  # every input field kept
    assert [w["score"] for w in written] == pytest.approx([1.0, 0.0, 0.6])


def test_score_table(tmp_path: Path) -> None:
    preds = write_jsonl(tmp_path / "preds.jsonl", ROWS)
    res = invoke("score", "-e", "vqa", str(preds))
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output and "0.5333" in res.output


def test_score_row_missing_answers(tmp_path: Path) -> None:
    rows = [ROWS[0], {"id": "b", "prediction": "blue"}, ROWS[2]]
    preds = write_jsonl(tmp_path / "preds.jsonl", rows)
    out = tmp_path / "out.jsonl"
    res = invoke("score", "--evaluator", "vqa", str(preds), "--per-sample", str(out))
    assert res.exit_code != 0
    msg = flat(res.output)
    assert "preds.jsonl" in msg
    assert "row 1" in msg and "missing 'answers'" in msg
    assert not out.exists()


def test_score_bad_json_line_names_the_line(tmp_path: Path) -> None:
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps(ROWS[0]) + "\n{oops\n")
    res = invoke("score", "--evaluator", "vqa", str(preds))
    assert res.exit_code == 1
    assert "preds.jsonl:2: not valid JSON" in flat(res.output)


def test_score_empty_file(tmp_path: Path) -> None:
    preds = tmp_path / "preds.jsonl"
    preds.write_text("\n")
    res = invoke("score", "--evaluator", "vqa", str(preds))
    assert res.exit_code == 1
    assert "no predictions" in flat(res.output)


def test_score_needs_an_evaluator(tmp_path: Path) -> None:
    preds = write_jsonl(tmp_path / "preds.jsonl", ROWS)
    res = invoke("score", "--evaluator", "lora", str(preds))
    assert res.exit_code == 2
    assert "unknown evaluator 'lora'" in flat(res.output)
    res = invoke("score", "--evaluator", "vqq", str(preds))
    assert "(did you mean 'vqa'?)" in flat(res.output)


# -- the startup guard: model-free commands never import torch, transformers or peft -------------------

GUARD = """
import json, sys
from vlmplug.cli import main
try:
    main(json.loads(sys.argv[1]))
except SystemExit:
    pass
HEAVY = ("torch", "transformers", "peft", "fastapi", "uvicorn")
print("HEAVY=" + json.dumps(sorted(m for m in HEAVY if m in sys.modules)))
"""

GUARDED = {
    "list": ["list"],
    "list --json": ["list", "--json"],
    "--help": ["--help"],
    "config": ["config"],
    "config --plugins --json": ["config", "--plugins", "lora,gradient-checkpointing,mixed-precision", "--json"],
    "info": ["info", "lora"],
    "recipes": ["recipes"],
    "score": ["score", "-e", "vqa", "{preds}", "--json"],
    "data --help": ["data", "--help"],
    "data shapes --help": ["data", "shapes", "--help"],
    "data convert --help": ["data", "convert", "--help"],
    "data check --help": ["data", "check", "--help"],
    "eval --help": ["eval", "--help"],
    "chat --help": ["chat", "--help"],
    "serve --help": ["serve", "--help"],
}


@pytest.fixture(scope="module")
def guard_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[str] | None, str]]:
    """Run every guarded command in its own fresh interpreter, all at once (isolation without the
    wait): name -> (heavy modules imported, output)."""
    import os

    cwd = tmp_path_factory.mktemp("guard")
    preds = write_jsonl(cwd / "preds.jsonl", ROWS)
    env = {**os.environ, "VLMPLUG_LOAD_PLUGINS": ""}
    env.pop("VLMPLUG_DISABLE_PLUGINS", None)
    procs = {}
    for name, args in GUARDED.items():
        argv = [a.replace("{preds}", str(preds)) for a in args]
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", GUARD, json.dumps(argv)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        lines = [ln for ln in out.splitlines() if ln.startswith("HEAVY=")]
        heavy = json.loads(lines[-1][len("HEAVY=") :]) if lines else None
        results[name] = (heavy, out + err)
    return results


@pytest.mark.parametrize("name", list(GUARDED))
def test_startup_guard(name: str, guard_runs: dict) -> None:
    heavy, output = guard_runs[name]
    assert heavy is not None, output
    assert heavy == [], f"vlmplug {' '.join(GUARDED[name])} imported {heavy}"
    assert "Traceback" not in output, output
    if "--help" in GUARDED[name]:
        assert "Usage:" in output and "No such command" not in output, output


def test_startup_guard_commands_really_ran(guard_runs: dict) -> None:
    assert '"accuracy"' in guard_runs["score"][1]
    assert '"components"' in guard_runs["config --plugins --json"][1]
    assert "Usage:" in guard_runs["--help"][1]


# -- numbers, encodings, output directories ---------------------------------------------------------


def test_config_rejects_every_bad_number_at_once() -> None:
    res = invoke(
        "config",
        "--set",
        "learning_rate=0",
        "--set",
        "per_device_train_batch_size=0",
        "--set",
        "max_steps=-1",
        "--set",
        "eval_batch_size=0",
        "--set",
        "gradient_accumulation_steps=0",
    )
    assert res.exit_code == 2
    out = flat(res.output)
    assert "(5 problems)" in out
    for line in (
        "--set learning_rate: must be > 0, got 0",
        "--set per_device_train_batch_size: must be >= 1, got 0",
        "--set max_steps: must be >= 1, got -1; omit max_steps to train for num_train_epochs",
        "--set eval_batch_size: must be >= 1, got 0",
        "--set gradient_accumulation_steps: must be >= 1, got 0",
    ):
        assert line in out, line


def test_non_utf8_recipe_names_file_and_line(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"name: x\nmodel: tiny-llama\ndescription: caf\xe9\n")
    res = invoke("config", str(recipe))
    assert res.exit_code == 2
    assert f"{recipe}:3: the recipe is not UTF-8 text (byte 0xe9 at offset" in flat(res.output)


def test_non_utf8_data_and_predictions_name_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"messages": []}\n{"messages": "\xff"}\n')
    res = invoke("config", "--set", f"datasets=[{{path: {data}}}]")
    assert res.exit_code == 2
    assert f"{data}:2: the dataset is not UTF-8 text" in flat(res.output)
    preds = tmp_path / "preds.jsonl"
    preds.write_bytes(b'{"prediction": "a", "answers": ["a"]}\n\xff\n')
    res = invoke("score", "-e", "vqa", str(preds))
    assert res.exit_code == 1
    assert f"{preds}:2: the predictions file is not UTF-8 text" in flat(res.output)


def test_train_into_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("x")
    res = invoke("train", "--output-dir", str(target))
    assert res.exit_code == 2
    assert flat(res.output) == f"error: --output-dir {target} is a file; choose a directory"  # one line, wrapped


def test_export_unknown_format_lists_the_formats(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    res = invoke("export", str(run), "--format", "llava", "--out", str(tmp_path / "out"))
    assert res.exit_code == 2
    assert "--format llava: unknown format (did you mean 'llava-hf'?); available: merged, llava-hf" in flat(res.output)


def test_library_warnings_stay_off_the_console_and_go_to_the_log(tmp_path: Path) -> None:
    """A LoRA run on tied embeddings makes peft warn; the user sees vlmplug's output only, and the
    warning is kept in train.log."""
    import os

    import yaml

    from vlmplug.testing import TINY_RECIPE

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {**TINY_RECIPE, "max_steps": 1, "eval_before_training": False, "lora_modules_to_save": ["lm_head"]}
        )
    )
    env = {**os.environ, "VLMPLUG_LOAD_PLUGINS": "", "PYTHONWARNINGS": ""}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlmplug",
            "train",
            str(recipe),
            "--plugins",
            "lora",
            "--output-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    console = out.stdout + out.stderr
    assert "Warning" not in console and "warn(" not in console, console[-3000:]
    log = [json.loads(line) for line in (tmp_path / "run" / "train.log").read_text().splitlines()]
    assert any(e["logger"] == "py.warnings" for e in log), "no library warning reached the log"


def test_config_params_prints_the_table_per_module() -> None:
    res = invoke("config", "full-tiny", "--params", "--set", "datasets.0.num_samples=64")
    assert res.exit_code == 0, res.output
    out = flat(res.output)
    assert "parameters per module" in out
    for row in ("vision_encoder", "connector", "llm", "all"):
        assert row in out
    assert "frozen" in out and "0.002" in out  # the tower frozen, the projection at its own rate


def test_config_of_a_multi_stage_recipe_prints_every_stage() -> None:
    res = invoke("config", "stages-tiny")
    assert res.exit_code == 0, res.output
    out = flat(res.output)
    for label in ("stages-tiny-1-align", "stages-tiny-2-instruct", "stages-tiny-3-task"):
        assert label in out
    assert "qlora" in out and "stage: align ->" in out


def test_config_of_a_multi_stage_recipe_names_the_stage_of_a_problem() -> None:
    res = CliRunner().invoke(cli, ["config", "stages-tiny", "--set", "learning_rat=1"])
    assert res.exit_code != 0
    assert "stage 1-align: --set learning_rat: unknown key" in flat(res.output)
