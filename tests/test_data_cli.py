"""``vlmplug data shapes|convert|check``: the shapes files train and hold the shapes plugin's samples;
a converted dataset reads as the original; check counts every kind of bad row, names each, measures
token lengths as the pipeline's SampleEncoder does; exit codes; ``--help`` stays free of torch."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image, ImageChops

from vlmplug.cli import cli
from vlmplug.plugins.datasets import llava as llava_plugin
from vlmplug.plugins.datasets import messages as messages_plugin
from vlmplug.plugins.datasets import shapes as shapes_plugin
from vlmplug.testing import TINY_RECIPE


@pytest.fixture(autouse=True)
def plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built-ins only, whatever is installed in the dev environment; rich does not wrap lines."""
    monkeypatch.delenv("VLMPLUG_DISABLE_PLUGINS", raising=False)
    monkeypatch.setenv("VLMPLUG_LOAD_PLUGINS", "")
    monkeypatch.setenv("COLUMNS", "1000")


def invoke(*args: Any) -> Any:
    from vlmplug.manager import load

    load().register_commands(cli=cli)  # plugin commands (data shapes), as the console entry point does
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def read(tiny: Any, spec: Any, path: Path, **options: Any) -> Any:
    return tiny.build(spec, tiny.make_ctx(), {"path": str(path), **options})


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox() is None


def row(
    question: str = "<image>\nWhat color is it?", answer: str = "red", images: tuple[str, ...] = ("ok.png",)
) -> dict:
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "images": list(images),
    }


# -- data shapes -------------------------------------------------------------------------------------------


def test_shapes_files_hold_the_shapes_plugins_samples(tiny: Any, tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    res = invoke("data", "shapes", "--out", out, "--num-samples", 12, "--seed", 3, "--image-size", 32)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(12)]
    got = read(tiny, messages_plugin.SPEC, out / "data.jsonl")
    want = tiny.build(shapes_plugin.SPEC, tiny.make_ctx(), {"num_samples": 12, "seed": 3, "image_size": 32})
    assert len(got) == len(want) == 12
    for i in range(12):
        g, w = got[i], want[i]
        assert {k: v for k, v in g.items() if k not in ("images", "_where")} == {
            k: v for k, v in w.items() if k != "images"
        }
        assert g["images"] == [str(out / "images" / f"{i:06d}.png")]
        assert same_pixels(Image.open(g["images"][0]), w["images"][0])


def test_shapes_blank_images_and_other_options(tiny: Any, tmp_path: Path) -> None:
    out = tmp_path / "blank"
    res = invoke("data", "shapes", "--out", out, "--num-samples", 4, "--blank-images", "--set", "presence_by=location")
    assert res.exit_code == 0, res.output
    got = read(tiny, messages_plugin.SPEC, out / "data.jsonl")
    want = tiny.build(
        shapes_plugin.SPEC, tiny.make_ctx(), {"num_samples": 4, "blank_images": True, "presence_by": "location"}
    )
    assert [s["messages"] for s in got] == [want[i]["messages"] for i in range(4)]
    assert all(same_pixels(Image.open(g["images"][0]), want[i]["images"][0]) for i, g in enumerate(got))


def test_shapes_output_trains(run_recipe: Any, tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    assert invoke("data", "shapes", "--out", out, "--num-samples", 16, "--image-size", 32).exit_code == 0
    result = run_recipe(steps=2, datasets=[{"path": str(out / "data.jsonl")}])
    assert result.metrics["train_samples"] == 16
    assert result.metrics["train"]["steps"] == 2


def test_shapes_refuses_a_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    assert invoke("data", "shapes", "--out", out, "--num-samples", 3, "--image-size", 32).exit_code == 0
    res = invoke("data", "shapes", "--out", out, "--num-samples", 2, "--image-size", 32)
    assert res.exit_code == 2
    assert "not empty" in res.output and "--overwrite" in res.output
    res = invoke("data", "shapes", "--out", out, "--num-samples", 2, "--image-size", 32, "--overwrite")
    assert res.exit_code == 0, res.output
    assert len((out / "data.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png"]
    bad = invoke("data", "shapes", "--out", tmp_path / "x", "--set", "max_shapes=9")
    assert bad.exit_code == 2 and "max_shapes must be between 1 and 4" in bad.output


# -- data convert ------------------------------------------------------------------------------------------

LLAVA_ROWS = [
    {
        "id": "r1",
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"},
            {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Sure?"},
            {"from": "gpt", "value": "Yes."},
        ],
    },
    {
        "id": "r2",
        "image": "b.png",
        "source": "coco",
        "conversations": [{"from": "human", "value": "Describe <image>"}, {"from": "gpt", "value": "Blue."}],
    },
    {"id": "r3", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
]


def write_llava(folder: Path) -> Path:
    (folder / "imgs").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 20, 20)).save(folder / "imgs" / "a.png")
    Image.new("RGB", (8, 8), (20, 20, 200)).save(folder / "imgs" / "b.png")
    path = folder / "llava.json"
    path.write_text(json.dumps(LLAVA_ROWS))
    return path


def canonical(sample: dict) -> dict:
    """A sample without its row label, image paths in one form."""
    out = {k: v for k, v in sample.items() if k != "_where"}
    return {**out, "images": [os.path.realpath(p) for p in out["images"]]}


def test_convert_llava_to_messages_reads_as_the_llava_file(tiny: Any, tmp_path: Path) -> None:
    source = write_llava(tmp_path / "src")
    out = tmp_path / "conv.jsonl"
    imgs = source.parent / "imgs"
    res = invoke("data", "convert", source, "--from", "llava", "--to", "messages", "--out", out, "--image-root", imgs)
    assert res.exit_code == 0, res.output
    assert "outside" not in res.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["images"] for r in records] == [["src/imgs/a.png"], ["src/imgs/b.png"], []]
    assert records[1]["source"] == "coco" and "_where" not in records[1]
    converted = read(tiny, messages_plugin.SPEC, out)
    original = read(tiny, llava_plugin.SPEC, source, image_root=str(imgs))
    assert [canonical(s) for s in converted] == [canonical(s) for s in original]


def test_convert_writes_paths_relative_to_the_output_and_says_when_they_leave_it(tmp_path: Path) -> None:
    source = write_llava(tmp_path / "src")
    out = tmp_path / "out" / "conv.jsonl"
    res = invoke("data", "convert", source, "--out", out, "--image-root", source.parent / "imgs")
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["images"] for r in records] == [["../src/imgs/a.png"], ["../src/imgs/b.png"], []]
    assert "2 image/video path(s)" in res.output and "outside its folder" in res.output


def test_convert_detects_the_format_and_refuses_to_overwrite(tmp_path: Path) -> None:
    source = write_llava(tmp_path / "src")
    out = tmp_path / "conv.jsonl"
    assert invoke("data", "convert", source, "--out", out, "--image-root", source.parent / "imgs").exit_code == 0
    again = invoke("data", "convert", source, "--out", out)
    assert again.exit_code == 2 and "already there" in again.output and "--overwrite" in again.output
    assert invoke("data", "convert", source, "--out", out, "--overwrite").exit_code == 0
    to = invoke("data", "convert", source, "--to", "llava", "--out", tmp_path / "x.jsonl")
    assert to.exit_code == 2 and "writes only the 'messages' format" in to.output
    typo = invoke("data", "convert", source, "--from", "lava", "--out", tmp_path / "x.jsonl")
    assert typo.exit_code == 2 and "did you mean 'llava'" in typo.output
    suffix = invoke("data", "convert", source, "--out", tmp_path / "x.json")
    assert suffix.exit_code == 2 and "must end in .jsonl" in suffix.output


def test_convert_stops_at_bad_rows_unless_skip_bad(tmp_path: Path) -> None:
    source = write_llava(tmp_path / "src")
    source.write_text(json.dumps([*LLAVA_ROWS, {"id": "bad", "conversations": []}]))
    out = tmp_path / "conv.jsonl"
    res = invoke("data", "convert", source, "--out", out)
    assert res.exit_code == 1 and f"{source} record 3" in res.output and "--skip-bad" in res.output
    assert not out.exists()
    res = invoke("data", "convert", source, "--out", out, "--skip-bad")
    assert res.exit_code == 0 and "left out 1 bad row" in res.output
    assert len(out.read_text().splitlines()) == 3


def test_writer_saves_in_memory_images_as_png(tmp_path: Path) -> None:
    import io

    from vlmplug.data_cli import MessagesWriter

    pil = Image.new("RGB", (6, 4), (10, 200, 30))
    buf = io.BytesIO()
    Image.new("RGB", (5, 5), (1, 2, 3)).save(buf, format="PNG")
    out = tmp_path / "d" / "conv.jsonl"
    writer = MessagesWriter(out, out.with_name("conv.jsonl.images"))
    sample = {**row(question="<image><image>?"), "images": [pil, buf.getvalue()], "_where": "x:1", "id": 7}
    record = writer.record(sample, 12, "x:1")
    assert record["images"] == ["conv.jsonl.images/000012.png", "conv.jsonl.images/000012-1.png"]
    assert record["id"] == 7 and "_where" not in record
    assert same_pixels(Image.open(out.parent / record["images"][0]), pil)
    assert same_pixels(Image.open(out.parent / record["images"][1]), Image.open(buf))
    assert writer.saved == 2


# -- data check --------------------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path: Path) -> Path:
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"these bytes are not a PNG")
    return tmp_path


def test_check_counts_every_kind_of_bad_row_and_names_it(images: Path) -> None:
    lines = [
        json.dumps(row()),  # 1 good
        json.dumps(row(images=("missing.png",))),  # 2 missing image
        json.dumps(row(images=("corrupt.png",))),  # 3 corrupt image
        json.dumps(row(question="<image><image>\nTwo?")),  # 4 two placeholders, one image
        '{"messages": [oops',  # 5 not JSON
        json.dumps(row(answer="  ")),  # 6 empty assistant turn
    ]
    path = images / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    res = invoke("data", "check", path, "--json")
    assert res.exit_code == 1, res.output
    report = json.loads(res.stdout)
    assert report["format"] == "messages" and report["format_detected"] is True
    assert (report["rows"], report["good_rows"], report["problems"]) == (6, 1, 5)
    assert report["by_reason"] == {"malformed-row": 2, "missing-image": 1, "unreadable-image": 1, "image-count": 1}
    assert report["images"] == {"total": 4, "ok": 2, "missing": 1, "corrupt": 1, "unusable": 0}
    assert report["placeholder_mismatches"] == 1
    assert report["lengths"] is None and report["ok"] is False
    named = sorted((p["where"], p["reason"]) for p in report["bad_rows"])
    assert named == [
        (f"{path}:2", "missing-image"),
        (f"{path}:3", "unreadable-image"),
        (f"{path}:4", "image-count"),
        (f"{path}:5", "malformed-row"),
        (f"{path}:6", "malformed-row"),
    ]
    messages = {p["where"]: p["message"] for p in report["bad_rows"]}
    assert "not valid JSON" in messages[f"{path}:5"]
    assert "empty assistant turn" in messages[f"{path}:6"]
    assert all(m.startswith(f"{w}: ") for w, m in messages.items())
    text = invoke("data", "check", path)
    assert text.exit_code == 1
    assert "rows: 6, 1 good, 5 with problems" in text.output and "5 problem(s)" in text.output


def test_check_a_clean_dataset_exits_0(images: Path) -> None:
    path = images / "clean.jsonl"
    path.write_text(json.dumps(row()) + "\n" + json.dumps(row(answer="blue")) + "\n")
    res = invoke("data", "check", path, "--format", "messages")
    assert res.exit_code == 0, res.output
    assert "no problems" in res.output and "(format messages, --format)" in res.output
    first = invoke("data", "check", path, "--set", "max_samples=1", "--json")  # the format's own options
    assert first.exit_code == 0 and json.loads(first.stdout)["rows"] == 1


def test_check_lengths_equal_the_sample_encoders(tiny: Any, images: Path, run_recipe: Any) -> None:
    from vlmplug.train.data import SampleEncoder

    rows = [
        row(),
        row(question="<image>\nWhat colour is the big shape in the top left corner of this picture?"),
        row(question="Say hi.", answer="Hi there, this answer is rather long for the tiny tokenizer.", images=()),
    ]
    path = images / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = images / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    res = invoke("data", "check", path, "--recipe", recipe, "--json")
    assert res.exit_code == 0, res.output
    lengths = json.loads(res.stdout)["lengths"]
    # what a run on this data tokenizes with: its tokenizer and its model's image token budget
    result = run_recipe(steps=1, datasets=[{"path": str(path)}])
    encoder = SampleEncoder(result.tokenizer, "<image>", result.model.tokens_per_image, 10_000)
    want = {s["_where"]: len(encoder.encode(s, s["_where"])[0]) for s in read(tiny, messages_plugin.SPEC, path)}
    assert {r["where"]: r["tokens"] for r in lengths["rows"]} == want
    assert lengths["tokens_per_image"] == result.model.tokens_per_image
    assert lengths["max_seq_length"] == TINY_RECIPE["max_seq_length"] and lengths["over_length"] == 0
    assert sum(b["count"] for b in lengths["histogram"]) == 3 and len(lengths["histogram"]) <= 10
    limit = sorted(want.values())[1]  # one row is longer
    over = sorted(w for w, n in want.items() if n > limit)
    # the recipe's default (truncate-text) cuts an over-long row: listed, not a problem
    cut = invoke("data", "check", path, "--recipe", recipe, "--max-seq-length", limit, "--json")
    assert cut.exit_code == 0, cut.output
    report = json.loads(cut.stdout)
    assert report["lengths"]["over_length"] == len(over) == 1 and report["lengths"]["over_length_rows"] == over
    assert report["bad_rows"] == [] and report["lengths"]["overlength_action"] == "truncate-text"
    text = invoke("data", "check", path, "--recipe", recipe, "--max-seq-length", limit)
    said = " ".join(text.output.split())
    assert f"over max_seq_length {limit}: 1 (a run cuts them: on_overlength truncate-text)" in said
    # a recipe that stops on them: a problem naming the row
    strict = images / "strict.yaml"
    strict.write_text(yaml.safe_dump({**TINY_RECIPE, "on_overlength": "error"}))
    short = invoke("data", "check", path, "--recipe", strict, "--max-seq-length", limit, "--json")
    assert short.exit_code == 1
    report = json.loads(short.stdout)
    assert [(p["where"], p["reason"]) for p in report["bad_rows"]] == [(w, "too-long") for w in over]


def test_check_usage_errors_exit_2(images: Path) -> None:
    path = images / "clean.jsonl"
    path.write_text(json.dumps(row()) + "\n")
    res = invoke("data", "check", path, "--max-seq-length", 10)
    assert res.exit_code == 2 and "--max-seq-length needs --recipe" in res.output
    res = invoke("data", "check", path, "--format", "mesages")
    assert res.exit_code == 2 and "did you mean 'messages'" in res.output
    res = invoke("data", "check", images / "nope.jsonl")
    assert res.exit_code == 2 and "no such file" in res.output
    (images / "notes.txt").write_text("hello")
    res = invoke("data", "check", images / "notes.txt")
    assert res.exit_code == 2 and "no dataset format recognises it" in res.output
