"""``hf``: tables that ``datasets`` reads (parquet with embedded images, imagefolder + metadata.jsonl,
CSV, save_to_disk folders) become canonical samples through the column mapping; images are read
lazily; bad rows are named and follow the skip policy; nothing is downloaded; a run trains on them."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import pytest
import yaml
from PIL import Image

from vlmplug.errors import DataError
from vlmplug.plugins.datasets import hf as hf_plugin
from vlmplug.train.data import load_image

RED, BLUE = (220, 30, 30), (30, 30, 220)
TURN = {"role": datasets.Value("string"), "content": datasets.Value("string")}


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _load(tiny: Any, path: Path | str, on_bad_sample: str = "error", **options: Any) -> Any:
    cache = options.pop("cache_dir", None) or str(Path(str(path)).parent / "hf-cache")
    return tiny.build(hf_plugin.SPEC, tiny.make_ctx(on_bad_sample), {"path": str(path), "cache_dir": cache, **options})


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _parquet(tmp_path: Path, rows: list[dict], features: Any = None, name: str = "train.parquet") -> Path:
    path = tmp_path / name
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def test_parquet_conversations_with_embedded_images(tiny: Any, tmp_path: Path) -> None:
    red, blue = _png(RED), _png(BLUE)
    rows = [
        {
            "messages": _chat("<image>\nWhat colour?", "red"),
            "images": [{"bytes": red, "path": None}],
            "id": "r0",
        },
        {
            "messages": _chat("<image><image>Same colour?", "no"),
            "images": [{"bytes": red, "path": None}, {"bytes": blue, "path": None}],
            "id": "r1",
        },
        {"messages": _chat("Say yes.", "yes"), "images": [], "id": "r2"},
    ]
    for row in rows:
        row["raw"] = b"\x00"  # bytes (like dates) are no JSON: such a column is not kept
    features = datasets.Features(
        {
            "messages": [TURN],
            "images": [datasets.Image()],
            "id": datasets.Value("string"),
            "raw": datasets.Value("binary"),
        }
    )
    path = _parquet(tmp_path, rows, features)
    ds = _load(tiny, path)
    assert len(ds) == 3 and ds.skipped == []
    assert ds[0] == {
        "messages": _chat("<image>\nWhat colour?", "red"),
        "images": [red],
        "id": "r0",
        "_where": f"hf:{path}[train] row 0",
    }
    assert ds[1]["images"] == [red, blue] and ds[2]["images"] == []
    assert load_image(ds[1]["images"][1], "x").getpixel((0, 0)) == BLUE
    assert all(not s.get("images") for s in ds.samples), "images stay in the Arrow table until a sample is used"


def test_multimodal_content_parts_and_sharegpt_turns(tiny: Any, tmp_path: Path) -> None:
    """The layout of e.g. HuggingFaceH4/llava-instruct-mix-vsft: content parts, image parts without text."""
    parts = [
        {"type": "image", "text": None, "index": 0},
        {"type": "text", "text": "What is shown?", "index": None},
    ]
    rows = [
        {
            "messages": [
                {"role": "user", "content": parts},
                {"role": "assistant", "content": [{"type": "text", "text": "A red square.", "index": None}]},
            ],
            "images": [{"bytes": _png(RED), "path": None}],
        }
    ]
    features = datasets.Features(
        {
            "messages": [
                {
                    "role": datasets.Value("string"),
                    "content": [
                        {
                            "type": datasets.Value("string"),
                            "text": datasets.Value("string"),
                            "index": datasets.Value("int64"),
                        }
                    ],
                }
            ],
            "images": [datasets.Image()],
        }
    )
    (sample,) = _load(tiny, _parquet(tmp_path, rows, features))
    assert sample["messages"] == _chat("<image>\nWhat is shown?", "A red square.")
    turns = [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}]
    path = tmp_path / "sg.jsonl"
    path.write_text(json.dumps({"conversations": turns, "pictures": ["a.png"]}) + "\n")
    (sample,) = _load(tiny, path, messages_column="conversations", images_column="pictures")
    assert sample["messages"] == _chat("<image>\nHi", "Hello")
    assert sample["images"] == [str(tmp_path / "a.png")]


def _imagefolder(tmp_path: Path) -> Path:
    folder = tmp_path / "shapes"
    folder.mkdir()
    meta = []
    for i, (name, colour) in enumerate((("red", RED), ("blue", BLUE), ("red", RED))):
        Image.new("RGB", (16, 16), colour).save(folder / f"{i}.png")
        meta.append({"file_name": f"{i}.png", "question": "What colour is it?", "answer": name, "question_id": i})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    return folder


def test_imagefolder_qa_table(tiny: Any, tmp_path: Path) -> None:
    folder = _imagefolder(tmp_path)
    qa = {"question_column": "question", "answer_column": "answer"}
    ctx = tiny.make_ctx()
    ds = tiny.build(hf_plugin.SPEC, ctx, {"path": str(folder), "cache_dir": str(tmp_path / "c"), **qa})
    assert len(ds) == 3
    assert ds[1] == {
        "messages": _chat("<image>\nWhat colour is it?", "blue"),
        "images": [str(folder / "1.png")],
        "question_id": 1,
        "_where": f"hf:{folder}[train] row 1",
    }
    assert any("images from column 'image'" in n for n in ctx.notes), ctx.notes
    # the builder form: path: imagefolder + data_dir
    ds = _load(tiny, "imagefolder", data_dir=str(folder), cache_dir=str(tmp_path / "c2"), **qa)
    assert ds[2]["messages"][1]["content"] == "red" and ds[2]["images"] == [str(folder / "2.png")]


def test_answer_lists_relative_paths_and_text_only_rows(tiny: Any, tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    rows = [
        {"q": "Colour?", "a": ["red", "crimson", "red"], "pic": "img/a.png"},
        {"q": "Two plus two?", "a": ["four", "4", "4"], "pic": None},
        {"q": "Say hi.", "a": ["hi"], "pic": ""},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = _load(tiny, path, question_column="q", answer_column="a", image_column="pic")
    assert ds[0]["messages"] == _chat("<image>\nColour?", "red")  # the most frequent answer
    assert ds[0]["answers"] == ["red", "crimson", "red"]  # all of them, for the vqa evaluator
    assert ds[0]["images"] == [str(tmp_path / "img" / "a.png")]
    assert ds[1]["messages"] == _chat("Two plus two?", "4") and ds[1]["images"] == []
    assert ds[2]["messages"] == _chat("Say hi.", "hi") and ds[2]["images"] == []  # an empty path is no image
    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer\nTwo plus two?,4\n")  # an integer column
    (sample,) = _load(tiny, csv, question_column="question", answer_column="answer")
    assert sample["messages"] == _chat("Two plus two?", "4") and sample["images"] == []


def test_image_paths_outside_the_dataset_folder(tiny: Any, tmp_path: Path) -> None:
    path = tmp_path / "data" / "qa.jsonl"
    path.parent.mkdir()
    rows = [{"q": "In?", "a": "yes", "pic": "in.png"}, {"q": "Out?", "a": "no", "pic": "../out.png"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    qa = {"question_column": "q", "answer_column": "a", "image_column": "pic"}
    with pytest.raises(DataError, match=r"row 1: .*out\.png is outside the dataset folder"):
        _load(tiny, path, **qa)
    ds = _load(tiny, path, on_bad_sample="skip", **qa)
    assert len(ds) == 1 and [(e.reason, e.where) for e in ds.skipped] == [("outside-data", f"hf:{path}[train] row 1")]
    ctx = tiny.make_ctx()
    ctx.allow_paths_outside_data = True
    ds = tiny.build(hf_plugin.SPEC, ctx, {"path": str(path), "cache_dir": str(tmp_path / "c"), **qa})
    assert ds[1]["images"] == [str(path.parent / "../out.png")]


def test_save_to_disk_folder_and_splits(tiny: Any, tmp_path: Path) -> None:
    train = datasets.Dataset.from_list([{"messages": _chat("Hi", "Hello")}])
    test = datasets.Dataset.from_list([{"messages": _chat("Bye", "Goodbye")}])
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "saved"))
    assert _load(tiny, tmp_path / "saved", split="test")[0]["messages"] == _chat("Bye", "Goodbye")
    with pytest.raises(DataError, match=r"no split 'validation' \(splits: train, test\)"):
        _load(tiny, tmp_path / "saved", split="validation")


def test_max_samples(tiny: Any, tmp_path: Path) -> None:
    path = _parquet(tmp_path, [{"messages": _chat(f"Q{i}", f"A{i}")} for i in range(5)])
    ds = _load(tiny, path, max_samples=2)
    assert [s["messages"][1]["content"] for s in ds] == ["A0", "A1"]


def test_bad_rows_are_named_and_follow_the_skip_policy(tiny: Any, tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    rows = [
        {"question": "Colour?", "answer": "red"},
        {"question": "Colour?", "answer": "  "},
        {"question": None, "answer": "blue"},
        {"question": "Shape?", "answer": "square"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as e:
        _load(tiny, path, question_column="question", answer_column="answer")
    text = str(e.value)
    assert f"2 bad record(s) in hf:{path}[train]" in text
    assert f"hf:{path}[train] row 1: empty answer in answer" in text
    assert f"hf:{path}[train] row 2: the question (question) must be a string, got None" in text
    ds = _load(tiny, path, on_bad_sample="skip", question_column="question", answer_column="answer")
    assert [s["messages"][1]["content"] for s in ds] == ["red", "square"]
    assert [(s.reason, s.where) for s in ds.skipped] == [
        ("empty-answer", f"hf:{path}[train] row 1"),
        ("malformed-row", f"hf:{path}[train] row 2"),
    ]
    turns = tmp_path / "chat.jsonl"
    turns.write_text(
        json.dumps({"messages": _chat("Hi", "Hello")}) + "\n" + json.dumps({"messages": [_chat("Hi", "x")[0]]}) + "\n"
    )
    with pytest.raises(DataError, match=rf"hf:{turns}\[train\] row 1: no assistant message"):
        _load(tiny, turns)


def test_missing_columns_and_sources(tiny: Any, tmp_path: Path) -> None:
    path = _parquet(tmp_path, [{"prompt": "Hi", "reply": "Hello"}])
    with pytest.raises(DataError, match=r"no column 'messages' \(columns: \['prompt', 'reply'\]\); set messages_"):
        _load(tiny, path)
    with pytest.raises(DataError, match=r"no column 'pics'"):
        _load(tiny, path, question_column="prompt", answer_column="reply", image_column="pics")
    with pytest.raises(DataError, match=r"missing\.parquet not found"):
        _load(tiny, tmp_path / "missing.parquet")
    with pytest.raises(DataError, match="split"):
        _load(tiny, path, split="validation")
    with pytest.raises(ValueError, match="question_column and answer_column go together"):
        _load(tiny, path, question_column="prompt")


def test_hub_ids_are_never_downloaded_here(tiny: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """A hub id goes to load_dataset as it is, with trust_remote_code only when the run sets it."""
    from vlmplug.plugins.datasets import _hf

    calls: list[tuple[tuple, dict]] = []

    def fake(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return datasets.Dataset.from_list([{"messages": _chat("Hi", "Hello")}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    config = hf_plugin.SPEC.make_config({"path": "someone/vqa-set", "name": "en", "split": "validation"})
    for trust in (False, True):
        ctx = SimpleNamespace(on_bad_sample="error", hub_kwargs={"trust_remote_code": trust}, recipe=None)
        ds = _hf.build(config, ctx)
        assert ds[0]["_where"] == "hf:someone/vqa-set[validation] row 0"
    assert calls[0] == (
        ("someone/vqa-set",),
        {"name": "en", "data_files": None, "data_dir": None, "split": "validation", "cache_dir": None},
    )
    assert calls[1][1]["trust_remote_code"] is True and "trust_remote_code" not in calls[0][1]


def test_detection(vlmplug_host: Any, tmp_path: Path) -> None:
    def detect(path: Path) -> str | None:
        return vlmplug_host.detect_dataset_format(path=str(path), sample=None)

    parquet = _parquet(tmp_path, [{"messages": _chat("Hi", "Hello")}])
    assert detect(parquet) == "hf"
    assert detect(_imagefolder(tmp_path)) == "hf"
    (tmp_path / "shards" / "data").mkdir(parents=True)
    parquet.rename(tmp_path / "shards" / "data" / "train-00000-of-00001.parquet")
    assert detect(tmp_path / "shards") == "hf"
    (tmp_path / "plain").mkdir()
    assert detect(tmp_path / "plain") is None
    (tmp_path / "x.txt").write_text("hi")
    assert detect(tmp_path / "x.txt") is None


def test_a_run_trains_on_a_parquet_table(run_recipe: Any, tmp_path: Path) -> None:
    rows = [
        {
            "question": "What colour is the picture?",
            "answer": "red" if i % 2 else "blue",
            "image": {"bytes": _png(RED if i % 2 else BLUE, (32, 32)), "path": None},
        }
        for i in range(16)
    ]
    features = datasets.Features(
        {"question": datasets.Value("string"), "answer": datasets.Value("string"), "image": datasets.Image()}
    )
    path = _parquet(tmp_path, rows, features)
    entry = {
        "format": "hf",
        "path": str(path),
        "question_column": "question",
        "answer_column": "answer",
        "cache_dir": str(tmp_path / "cache"),
    }
    res = run_recipe(None, steps=2, datasets=[entry], eval_datasets=[], evaluators=[])
    assert res.metrics["train_samples"] == 16 and res.metrics["train"]["steps"] == 2
    saved = yaml.safe_load((res.run_dir / "resolved_recipe.yaml").read_text())
    assert saved["components"]["dataset_format"] == ["hf"]
