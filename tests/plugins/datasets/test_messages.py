"""The ``messages`` dataset format: JSON and JSONL files, path resolution, row validation."""

from __future__ import annotations

import json

import pytest

from vlmplug.errors import DataError
from vlmplug.plugins.datasets import messages as messages_plugin
from vlmplug.plugins.datasets._messages import MessagesDataset


def _row(question="What color is the shape?", answer="red", images=("img.png",), **extra):
    return {
        "messages": [{"role": "user", "content": f"<image>\n{question}"}, {"role": "assistant", "content": answer}],
        "images": list(images),
        **extra,
    }


def _write_json(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _write_jsonl(path, rows, blank_after_first=False):
    lines = [json.dumps(r) for r in rows]
    if blank_after_first:
        lines.insert(1, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _load(tiny, path, on_bad_sample="error", allow_outside=False, **options):
    ctx = tiny.make_ctx(on_bad_sample)
    ctx.allow_paths_outside_data = allow_outside
    return tiny.build(messages_plugin.SPEC, ctx, {"path": str(path), **options})


def test_json_list_and_jsonl_load_the_same(tiny, tmp_path):
    rows = [_row(answer="red"), _row(question="What shape is this?", answer="circle", images=["b.png"])]
    a = _load(tiny, _write_json(tmp_path / "data.json", rows))
    b = _load(tiny, _write_jsonl(tmp_path / "data.jsonl", rows))
    assert isinstance(a, MessagesDataset) and isinstance(b, MessagesDataset)
    assert len(a) == len(b) == 2
    for x, y, row in zip(a, b, rows):
        assert x["messages"] == y["messages"] == row["messages"]
        assert x["images"] == y["images"]
    assert a.skipped == b.skipped == []


def test_image_paths_resolved_relative_to_the_file(tiny, tmp_path):
    sub = tmp_path / "data"
    sub.mkdir()
    absolute = str(sub / "elsewhere" / "abs.png")  # absolute, inside the data folder
    uri = "data:image/png;base64,AAAA"
    rows = [
        _row(images=["img.png"]),
        _row(images=["pics/x.jpg", absolute, uri]),
        {**_row(), "images": "single.png"},
        {"messages": _row()["messages"]},
    ]
    ds = _load(tiny, _write_jsonl(sub / "train.jsonl", rows))
    assert ds[0]["images"] == [str(sub / "img.png")]
    assert ds[1]["images"] == [str(sub / "pics" / "x.jpg"), absolute, uri]
    assert ds[2]["images"] == [str(sub / "single.png")]  # a single string is one image
    assert ds[3]["images"] == []


def test_image_root_option(tiny, tmp_path):
    ds = _load(tiny, _write_json(tmp_path / "d.json", [_row()]), image_root=str(tmp_path / "imgs"))
    assert ds[0]["images"] == [str(tmp_path / "imgs" / "img.png")]


def test_extra_fields_are_kept(tiny, tmp_path):
    rows = [_row(answers=["red", "dark red"], question_type="color", id="q-1")]
    ds = _load(tiny, _write_json(tmp_path / "d.json", rows))
    assert ds[0]["answers"] == ["red", "dark red"]
    assert ds[0]["question_type"] == "color"
    assert ds[0]["id"] == "q-1"
    assert ds[0]["_where"] == f"{tmp_path / 'd.json'} record 0"


def test_max_samples(tiny, tmp_path):
    ds = _load(tiny, _write_jsonl(tmp_path / "d.jsonl", [_row(answer=str(i)) for i in range(5)]), max_samples=3)
    assert [s["messages"][1]["content"] for s in ds] == ["0", "1", "2"]


BAD_ROWS = {
    "missing messages": ({"images": ["a.png"]}, "'messages' must be a non-empty list"),
    "empty messages": ({"messages": []}, "'messages' must be a non-empty list"),
    "bad role": (
        {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        "messages[0] must have role in",
    ),
    "non-string content": (
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
        "messages[0] must have role in",
    ),
    "no assistant": ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
    "bad images": ({**_row(), "images": [1, 2]}, "images[0] must be a path, a data URI, or an object"),
    "not an object": (["a", "b"], "expected an object"),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_malformed_jsonl_row_names_file_and_line(tiny, tmp_path, kind):
    bad, reason = BAD_ROWS[kind]
    path = _write_jsonl(tmp_path / "train.jsonl", [_row(), _row(), bad], blank_after_first=True)
    with pytest.raises(DataError) as err:
        _load(tiny, path)
    msg = str(err.value)
    assert f"{path}:4:" in msg  # 1-based line numbers, counting the blank line
    assert reason in msg
    assert "on_bad_sample: skip" in msg


def test_malformed_json_record_names_file_and_record(tiny, tmp_path):
    path = _write_json(tmp_path / "train.json", [_row(), {"messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(DataError) as err:
        _load(tiny, path)
    assert f"{path} record 1" in str(err.value)
    assert "no assistant message" in str(err.value)


def test_all_problems_counted_first_five_listed(tiny, tmp_path):
    rows = [_row()] + [{"messages": []}] * 7
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as err:
        _load(tiny, path)
    msg = str(err.value)
    assert msg.startswith(f"7 malformed row(s) in {path} (and 2 more)")
    assert f"{path}:6:" in msg and f"{path}:7:" not in msg


def test_skip_mode_skips_and_lists_bad_rows(tiny, tmp_path):
    rows = [
        _row(answer="a"),
        {"images": []},
        _row(answer="b"),
        {"messages": [{"role": "user", "content": "q"}]},
        _row(answer="c"),
    ]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    ds = _load(tiny, path, on_bad_sample="skip")
    assert [s["messages"][1]["content"] for s in ds] == ["a", "b", "c"]
    assert len(ds.skipped) == 2
    assert str(ds.skipped[0]).startswith(f"{path}:2:")
    assert str(ds.skipped[1]).startswith(f"{path}:4:")
    assert [(e.reason, e.where) for e in ds.skipped[:2]] == [
        ("malformed-row", f"{path}:2"),
        ("malformed-row", f"{path}:4"),
    ]
    assert [s["_where"] for s in ds] == [f"{path}:1", f"{path}:3", f"{path}:5"]


def test_invalid_json_line(tiny, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(_row()) + "\n{not json\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        _load(tiny, path)


def test_missing_file(tiny, tmp_path):
    with pytest.raises(DataError, match="file not found"):
        _load(tiny, tmp_path / "nope.json")


def test_json_must_be_a_list(tiny, tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_row()))
    with pytest.raises(DataError, match="expected a JSON list"):
        _load(tiny, path)


def test_path_is_required():
    with pytest.raises(ValueError, match="path"):
        messages_plugin.SPEC.make_config({})


def test_detect_dataset_format():
    assert messages_plugin.detect_dataset_format(path="x.jsonl", sample=_row()) == "messages"
    assert messages_plugin.detect_dataset_format(path="x.jsonl", sample={"conversations": []}) is None
    assert messages_plugin.detect_dataset_format(path="x.jsonl", sample=None) is None


def test_an_empty_assistant_turn_is_a_bad_row_not_silent_training(tiny, tmp_path):
    rows = [_row(answer="red"), _row(answer=" \n")]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as e:
        _load(tiny, path)
    assert f"{path}:2: messages[1] is an empty assistant turn" in str(e.value)
    ds = _load(tiny, path, on_bad_sample="skip")
    assert len(ds) == 1 and [s.where for s in ds.skipped] == [f"{path}:2"]


@pytest.mark.parametrize(
    "ref",
    ["../secret.png", "pics/../../secret.png", "{tmp}/elsewhere/a.png", {"frames": ["../f0.png"]}, "../clips"],
)
def test_paths_outside_the_data_folder_are_refused_unless_allowed(tiny, tmp_path, ref):
    sub = tmp_path / "data"
    sub.mkdir()
    if isinstance(ref, str):
        ref = ref.replace("{tmp}", str(tmp_path))
    video = isinstance(ref, dict) or ref == "../clips"
    row = _row(images=[]) if video else _row(images=[ref])
    if video:
        row["messages"][0]["content"] = "<video>\nWhat happens?"
        row["videos"] = [ref]
    path = _write_jsonl(sub / "d.jsonl", [_row(images=["ok.png"]), row])
    with pytest.raises(DataError) as e:
        _load(tiny, path)
    assert f"{path}:2: " in str(e.value) and "is outside the dataset folder" in str(e.value)
    assert "allow_paths_outside_data: true" in str(e.value)
    skipped = _load(tiny, path, on_bad_sample="skip")
    assert len(skipped) == 1 and [x.reason for x in skipped.skipped] == ["outside-data"]
    assert len(_load(tiny, path, allow_outside=True)) == 2


def test_images_as_objects_and_base64(tiny, tmp_path):
    """An image object names its source by path / url / image / image_url.url, or carries base64 bytes;
    the sample then reads exactly as with the plain path or data URI, pixels included."""
    import base64
    import io

    from PIL import Image

    from vlmplug.train.data import load_image

    Image.new("RGB", (6, 4), (10, 200, 30)).save(tmp_path / "g.png")
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), (10, 200, 30)).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    entries = [
        {"path": "g.png"},
        {"url": "g.png"},
        {"type": "image", "image": "g.png"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
        {"bytes": b64},
    ]
    rows = [_row(images=[e]) for e in entries]
    ds = _load(tiny, _write_jsonl(tmp_path / "d.jsonl", rows))
    refs = [s["images"][0] for s in ds]
    assert refs[:3] == [str(tmp_path / "g.png")] * 3
    assert refs[3] == f"data:image/png;base64,{b64}" and refs[4] == f"data:image;base64,{b64}"
    pixels = {load_image(r, "x").tobytes() for r in refs}
    assert len(pixels) == 1


def test_a_bad_image_object_is_named(tiny, tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [_row(), _row(images=[{"file": "g.png"}])])
    with pytest.raises(DataError, match=r"d.jsonl:2: images\[0\] must be a path, a data URI, or an object with"):
        _load(tiny, path)
