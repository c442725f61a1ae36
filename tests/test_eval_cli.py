"""``vlmplug eval`` and ``vlmplug chat`` on a saved tiny model: the answers are the Predictor's greedy
ones, the metrics are what ``vlmplug score`` computes from the written predictions, and bad input
(unknown evaluator or option, bad rows) is a clear error or a counted skip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vlmplug.cli import cli
from vlmplug.train.predict import Predictor, Sampling


@pytest.fixture(scope="module")
def shapes_cli() -> None:
    from vlmplug.cli import _host

    _host().register_commands(cli=cli)  # `data shapes` comes from the shapes plugin, as in `vlmplug`


@pytest.fixture(scope="module")
def shapes(shapes_cli: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    res = CliRunner().invoke(
        cli, ["data", "shapes", "--out", str(out), "--num-samples", "6", "--seed", "5", "--image-size", "32"]
    )
    assert res.exit_code == 0, res.output
    return out / "data.jsonl"


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_writes_predictions_and_metrics_that_score_reproduces(
    saved_run: Path, shapes: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ev"
    res = _invoke(
        "eval", str(saved_run), "-e", "vqa", "--data", str(shapes), "--out", str(out), "--max-new-tokens", "4"
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    rows = _rows(out / "predictions.jsonl")
    assert metrics["samples"] == len(rows) == 6 and metrics["format"] == "messages"
    rescored = _invoke("score", "-e", "vqa", str(out / "predictions.jsonl"), "--json")
    assert json.loads(rescored.stdout)["accuracy"] == metrics["metrics"]["vqa"]["accuracy"]
    # the answers are the Predictor's greedy answers to the same prompts
    predictor = Predictor.load(str(saved_run))
    samples = [json.loads(line) for line in shapes.read_text().splitlines()]
    for sample, row in zip(samples, rows):
        sample["images"] = [str(shapes.parent / p) for p in sample["images"]]
        prompt = sample["messages"][: max(i for i, m in enumerate(sample["messages"]) if m["role"] == "assistant")]
        done = predictor.complete([predictor.prepare(sample, prompt)], Sampling(max_new_tokens=4))[0]
        expected = done.text.strip().splitlines()[0].strip() if done.text.strip() else ""
        assert row["prediction"] == expected


def test_eval_limit_several_evaluators_and_default_out(saved_run: Path, shapes: Path) -> None:
    res = _invoke("eval", str(saved_run), "-e", "vqa,vqa", "--data", str(shapes), "--limit", "2", "--json")
    assert res.exit_code == 0, res.output
    out = saved_run / "eval" / "data"
    assert len(_rows(out / "predictions.jsonl")) == 2
    assert set(json.loads(res.stdout)) == {"vqa"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["-e", "vqaa"], "unknown evaluator 'vqaa'.*did you mean 'vqa'"),
        (["-e", "vqa", "-O", "vqa.no_such=1"], "no_such"),
        (["-e", "vqa", "-O", "pope.x=1"], "'pope' is not one of the selected evaluators"),
        (["-e", "vqa", "--format", "llavaa"], "did you mean 'llava'"),
    ],
)
def test_eval_bad_arguments_fail_before_the_model_loads(
    saved_run: Path, shapes: Path, args: list, message: str
) -> None:
    res = CliRunner().invoke(cli, ["eval", str(saved_run), "--data", str(shapes), *args])
    assert res.exit_code == 2, res.output
    assert __import__("re").search(message, res.output.replace("\n", " ")), res.output


def test_eval_bad_rows_stop_or_are_counted(saved_run: Path, shapes: Path, tmp_path: Path) -> None:
    rows = shapes.read_text().splitlines()
    bad = json.loads(rows[1])
    bad["images"] = ["images/missing.png"]
    data = shapes.parent / "with_bad.jsonl"
    data.write_text("\n".join([rows[0], json.dumps(bad), rows[2]]) + "\n")
    res = CliRunner().invoke(cli, ["eval", str(saved_run), "-e", "vqa", "--data", str(data), "--out", str(tmp_path)])
    assert res.exit_code == 1 and "with_bad.jsonl:2" in res.output and "missing.png" in res.output
    res = _invoke("eval", str(saved_run), "-e", "vqa", "--data", str(data), "--out", str(tmp_path), "--skip-bad")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["skipped"]["total"] == 1
    assert len(_rows(tmp_path / "predictions.jsonl")) == 2


def test_chat_one_shot_is_the_greedy_answer(saved_run: Path, shapes: Path) -> None:
    sample = json.loads(shapes.read_text().splitlines()[0])
    image = str(shapes.parent / sample["images"][0])
    question = sample["messages"][0]["content"].replace("<image>", "").strip()
    res = _invoke("chat", str(saved_run), "--image", image, "--temperature", "0", "--max-new-tokens", "5", question)
    assert res.exit_code == 0, res.output
    predictor = Predictor.load(str(saved_run))
    expected = predictor.complete(
        [predictor.prepare({"messages": [{"role": "user", "content": f"<image>\n{question}"}], "images": [image]})],
        Sampling(max_new_tokens=5),
    )[0].text
    assert res.output.strip() == expected.strip() and expected.strip()


def test_chat_session_attaches_images_and_keeps_the_conversation(saved_run: Path, shapes: Path) -> None:
    sample = json.loads(shapes.read_text().splitlines()[0])
    image = str(shapes.parent / sample["images"][0])
    session = f"/image {image}\nWhat color is the shape?\nAnd its shape?\n/image nope.png\n/reset\n/exit\n"
    res = CliRunner().invoke(
        cli, ["chat", str(saved_run), "--temperature", "0", "--max-new-tokens", "4"], input=session
    )
    assert res.exit_code == 0, res.output
    assert "no such image file: nope.png" in res.output
    assert "conversation cleared" in res.output
    predictor = Predictor.load(str(saved_run))
    first = {"messages": [{"role": "user", "content": "<image>\nWhat color is the shape?"}], "images": [image]}
    answer = predictor.complete([predictor.prepare(first)], Sampling(max_new_tokens=4))[0].text
    assert f"> {answer}" in res.output


def test_circular_multiple_choice_asks_every_rotation(saved_run: Path, shapes: Path, tmp_path: Path) -> None:
    rows = []
    for line in shapes.read_text().splitlines()[:2]:
        row = json.loads(line)
        row["options"] = {"A": "red", "B": "green", "C": "blue"}
        row["answer"] = "A"
        rows.append(row)
    data = shapes.parent / "mc.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = _invoke("eval", str(saved_run), "-e", "multiple-choice", "--data", str(data), "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    written = _rows(tmp_path / "o" / "predictions.jsonl")
    assert len(written) == 2 * 3  # one answer per rotation of the three options
    assert sorted(r["rotation"] for r in written) == [0, 0, 1, 1, 2, 2]
    assert len({r["circular_id"] for r in written}) == 2
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())["metrics"]["multiple-choice"]
    assert 0.0 <= metrics["accuracy"] <= metrics["vanilla_accuracy"] <= 1.0


def test_eval_gives_what_the_run_itself_measured_after_training(
    saved_run: Path, shapes_cli: None, tmp_path: Path
) -> None:
    # the run's eval set is {format: shapes, num_samples: 8, seed: 1, image_size: 32}; `data shapes` writes
    # the same samples as messages rows
    res = _invoke(
        "data", "shapes", "--out", str(tmp_path / "d"), "--num-samples", "8", "--seed", "1", "--image-size", "32"
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "ev"
    res = _invoke(
        "eval",
        str(saved_run),
        "-e",
        "vqa",
        "--data",
        str(tmp_path / "d" / "data.jsonl"),
        "--out",
        str(out),
        "--max-new-tokens",
        "3",
    )
    assert res.exit_code == 0, res.output
    run_metrics = json.loads((saved_run / "metrics.json").read_text())
    (label,) = [k for k in run_metrics["after"] if k != "label"]
    mine = json.loads((out / "metrics.json").read_text())["metrics"]["vqa"]
    assert mine["accuracy"] == run_metrics["after"][label]["vqa"]["accuracy"]
    theirs = [r["prediction"] for r in _rows(saved_run / "predictions_after.jsonl")]
    assert [r["prediction"] for r in _rows(out / "predictions.jsonl")] == theirs
