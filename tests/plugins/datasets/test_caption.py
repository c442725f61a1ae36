"""``caption``: COCO captions files and ``{image, caption(s)}`` records become prompt + caption samples
that keep every reference caption; the prompt choice is reproducible; bad records are named and
follow the skip policy; detection; and a run trains on COCO-style data."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from PIL import Image

from vlmplug.errors import DataError
from vlmplug.plugins.datasets import caption as caption_plugin
from vlmplug.plugins.datasets.caption import DEFAULT_PROMPTS

PROMPT = "<image>\nCaption:"

#: The layout of captions_train2017.json (ids and captions as COCO writes them, trailing space included).
COCO = {
    "info": {"description": "COCO 2017 Dataset"},
    "images": [
        {"id": 391895, "file_name": "000000391895.jpg", "height": 360, "width": 640},
        {"id": 522418, "file_name": "000000522418.jpg", "height": 480, "width": 640},
    ],
    "annotations": [
        {"image_id": 391895, "id": 770337, "caption": "A man with a red helmet on a small moped on a dirt road. "},
        {"image_id": 522418, "id": 771687, "caption": "A woman wearing a net on her head cutting a cake. "},
        {"image_id": 391895, "id": 771687, "caption": "Man riding a motor bike on a dirt road on the countryside."},
    ],
}


def _load(tiny: Any, path: Path, on_bad_sample: str = "error", **options: Any) -> Any:
    return tiny.build(caption_plugin.SPEC, tiny.make_ctx(on_bad_sample), {"path": str(path), **options})


def _coco(tmp_path: Path, data: dict | None = None) -> Path:
    path = tmp_path / "annotations" / "captions_train2017.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data or COCO))
    return path


def test_coco_captions_one_sample_per_caption(tiny: Any, tmp_path: Path) -> None:
    images = tmp_path / "train2017"
    ds = _load(tiny, _coco(tmp_path), image_root=str(images), prompts=[PROMPT])
    bike = [
        "A man with a red helmet on a small moped on a dirt road.",
        "Man riding a motor bike on a dirt road on the countryside.",
    ]
    assert len(ds) == 3 and ds.skipped == []
    assert ds[0] == {
        "messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": bike[0]}],
        "images": [str(images / "000000391895.jpg")],
        "captions": bike,
        "image_id": 391895,
        "_where": f"{tmp_path / 'annotations' / 'captions_train2017.json'} annotation 0",
    }
    assert ds[1]["messages"][1]["content"] == "A woman wearing a net on her head cutting a cake."
    assert ds[1]["captions"] == ["A woman wearing a net on her head cutting a cake."]
    assert ds[2]["messages"][1]["content"] == bike[1] and ds[2]["captions"] == bike


def test_one_per_image_keeps_every_caption(tiny: Any, tmp_path: Path) -> None:
    path = _coco(tmp_path)
    ds = _load(tiny, path, one_per_image=True, prompts=[PROMPT])
    assert [s["image_id"] for s in ds] == [391895, 522418]
    assert ds[0]["messages"][1]["content"] == "A man with a red helmet on a small moped on a dirt road."
    assert len(ds[0]["captions"]) == 2
    assert ds[0]["images"] == [str(path.parent / "000000391895.jpg")]  # default root: the JSON's folder
    assert ds[0]["_where"] == f"{path} image 391895"


def test_simple_records_jsonl_and_json(tiny: Any, tmp_path: Path) -> None:
    rows = [
        {"image": "a.png", "caption": "A red square.", "source": "synthetic"},
        {"image": "b.png", "captions": ["A blue circle.", "Blue disc on white."], "image_id": 7},
        {"image": "a.png", "caption": "Red, filling the frame."},
    ]
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "caps.json").write_text(json.dumps(rows))
    for name, where in (("caps.jsonl", ":1"), ("caps.json", " record 0")):
        ds = _load(tiny, tmp_path / name, prompts=[PROMPT])
        assert [s["messages"][1]["content"] for s in ds] == [
            "A red square.",
            "A blue circle.",
            "Blue disc on white.",
            "Red, filling the frame.",
        ]
        assert ds[0] == {
            "messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "A red square."}],
            "images": [str(tmp_path / "a.png")],
            "captions": ["A red square.", "Red, filling the frame."],  # every caption of a.png
            "image_id": "a.png",
            "source": "synthetic",
            "_where": f"{tmp_path / name}{where}",
        }
        assert ds[1]["image_id"] == 7 and ds[1]["captions"] == ["A blue circle.", "Blue disc on white."]
    ds = _load(tiny, tmp_path / "caps.jsonl", one_per_image=True, max_samples=1, prompts=[PROMPT])
    assert len(ds) == 1 and ds[0]["captions"] == ["A red square.", "Red, filling the frame."]


def test_prompt_choice_is_seeded_and_stable(tiny: Any, tmp_path: Path) -> None:
    annotations = [{"image_id": i % 10, "id": i, "caption": f"caption {i}"} for i in range(60)]
    data = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(10)], "annotations": annotations}
    path = _coco(tmp_path, data)

    def prompts(**options: Any) -> list[str]:
        return [s["messages"][0]["content"] for s in _load(tiny, path, **options)]

    first = prompts()
    assert first == prompts(), "the same seed gives the same prompts"
    assert set(first) == set(DEFAULT_PROMPTS), "every default prompt is used on 60 captions"
    assert first != prompts(seed=1)
    # a sample's prompt depends on its record, not on which samples come before it
    assert prompts(max_samples=5) == first[:5]
    data["annotations"][0]["caption"] = ""
    path.write_text(json.dumps(data))
    assert prompts(on_bad_sample="skip") == first[1:]


def test_the_runs_image_token_replaces_the_placeholder(tmp_path: Path) -> None:
    from vlmplug.plugins.datasets._caption import build

    path = _coco(tmp_path)
    ctx = SimpleNamespace(on_bad_sample="error", recipe=SimpleNamespace(core={"image_token": "<img>"}))
    ds = build(caption_plugin.SPEC.make_config({"path": str(path), "prompts": [PROMPT]}), ctx)
    assert ds[0]["messages"][0]["content"] == "<img>\nCaption:"


@pytest.mark.parametrize(
    "prompts",
    [["Describe the image."], ["<image>\nDescribe.", "<image><image> Compare."], []],
)
def test_prompts_need_one_image_placeholder(tiny: Any, tmp_path: Path, prompts: list[str]) -> None:
    with pytest.raises(ValueError, match=r"prompts(\[\d\]: .* must contain exactly one <image>|: give at least one)"):
        _load(tiny, _coco(tmp_path), prompts=prompts)


def test_a_prompt_without_image_is_a_recipe_error(vlmplug_host: Any, tmp_path: Path) -> None:
    from vlmplug.errors import ConfigError
    from vlmplug.recipe import resolve
    from vlmplug.testing import TINY_RECIPE

    recipe = {**TINY_RECIPE, "datasets": [{"format": "caption", "path": str(_coco(tmp_path)), "prompts": ["Hi"]}]}
    with pytest.raises(ConfigError, match=r"datasets\[0\]: prompts\[0\]: 'Hi' must contain exactly one <image>"):
        resolve(recipe, vlmplug_host.registry, host=vlmplug_host)


def test_bad_annotations_are_named_and_follow_the_skip_policy(tiny: Any, tmp_path: Path) -> None:
    data = json.loads(json.dumps(COCO))
    data["annotations"] += [
        {"image_id": 999, "id": 5, "caption": "An orphan caption."},
        {"image_id": 522418, "id": 6, "caption": "   "},
        {"image_id": 522418, "id": 8, "caption": None},
    ]
    path = _coco(tmp_path, data)
    with pytest.raises(DataError) as e:
        _load(tiny, path)
    text = str(e.value)
    assert f"3 bad record(s) in {path}" in text
    assert f"{path} annotation 3 (id 5): image_id 999 is not in 'images'" in text
    assert f"{path} annotation 4 (id 6): empty caption" in text
    assert f"{path} annotation 5 (id 8): the caption must be a string, got None" in text
    ds = _load(tiny, path, on_bad_sample="skip")
    assert len(ds) == 3
    assert [(s.reason, s.where) for s in ds.skipped] == [
        ("unknown-image", f"{path} annotation 3"),
        ("empty-caption", f"{path} annotation 4"),
        ("malformed-row", f"{path} annotation 5"),
    ]
    assert ds[1]["captions"] == ["A woman wearing a net on her head cutting a cake."]


def test_images_outside_the_dataset_folder(tiny: Any, tmp_path: Path) -> None:
    data = json.loads(json.dumps(COCO))
    data["images"][1]["file_name"] = "../../elsewhere/000000522418.jpg"
    path = _coco(tmp_path, data)
    images = tmp_path / "train2017"
    with pytest.raises(DataError, match=r"annotation 1: .*elsewhere/000000522418.jpg is outside the dataset folder"):
        _load(tiny, path, image_root=str(images))
    ds = _load(tiny, path, on_bad_sample="skip", image_root=str(images))
    assert len(ds) == 2 and [(e.reason, e.where) for e in ds.skipped] == [("outside-data", f"{path} annotation 1")]
    ctx = tiny.make_ctx()
    ctx.allow_paths_outside_data = True
    ds = tiny.build(caption_plugin.SPEC, ctx, {"path": str(path), "image_root": str(images)})
    assert ds[1]["images"] == [str(images / "../../elsewhere/000000522418.jpg")]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"caption": "No image."}, "'image' must be an image path"),
        ({"image": "a.png"}, "no 'caption' (or 'captions')"),
        ({"image": "a.png", "caption": "x", "captions": ["y"]}, "give 'caption' (one string) or 'captions'"),
        ({"image": "a.png", "captions": []}, "'captions' must be a non-empty list"),
        ({"image": "a.png", "captions": ["ok", ""]}, "captions[1]: empty caption"),
    ],
)
def test_bad_simple_records_are_named(tiny: Any, tmp_path: Path, row: dict, expected: str) -> None:
    path = tmp_path / "caps.jsonl"
    path.write_text(json.dumps({"image": "a.png", "caption": "fine"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        _load(tiny, path)
    assert f"{path}:2" in str(e.value) and expected in str(e.value)
    ds = _load(tiny, path, on_bad_sample="skip")
    assert len(ds) == 1 and len(ds.skipped) == 1 and ds.skipped[0].where == f"{path}:2"


def test_unreadable_files(tiny: Any, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        _load(tiny, tmp_path / "nope.json")
    (tmp_path / "x.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="needs the lists 'images'"):
        _load(tiny, tmp_path / "x.json")


def test_detection(vlmplug_host: Any, tmp_path: Path) -> None:
    def detect(path: str, sample: dict | None) -> str | None:
        return vlmplug_host.detect_dataset_format(path=path, sample=sample)

    assert detect("c.jsonl", {"image": "a.png", "caption": "x"}) == "caption"
    assert detect("c.json", {"image": "a.png", "captions": ["x"]}) == "caption"
    assert detect("coco/annotations/captions_val2014.json", None) == "caption"
    assert detect("c.json", {"image": "a.png", "conversations": [{"from": "human", "value": "x"}]}) == "llava"
    assert detect("instances_train2017.json", None) is None


def test_a_run_trains_on_coco_captions(run_recipe: Any, tmp_path: Path) -> None:
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    images, annotations = [], []
    for i in range(8):
        name = "red" if i % 2 else "blue"
        Image.new("RGB", (32, 32), colours[name]).save(tmp_path / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png"})
        annotations += [
            {"id": 2 * i, "image_id": i, "caption": f"A {name} square."},
            {"id": 2 * i + 1, "image_id": i, "caption": f"All {name}."},
        ]
    path = tmp_path / "captions_train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    res = run_recipe(
        None, steps=2, datasets=[{"format": "caption", "path": str(path)}], eval_datasets=[], evaluators=[]
    )
    assert res.metrics["train_samples"] == 16 and res.metrics["train"]["steps"] == 2
    saved = yaml.safe_load((res.run_dir / "resolved_recipe.yaml").read_text())
    assert saved["components"]["dataset_format"] == ["caption"]
