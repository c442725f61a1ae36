"""``document``: DocVQA's official JSON and ``{image, question, answers}`` rows become samples whose
target is the first answer and that keep every answer (ANLS); the scan augmentations are
deterministic per seed and index, keep the size, follow their options, happen only when the image is
read and never on an eval set; bad rows are named; detection; and a run trains with augmentation."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from vlmplug.contracts import LazyImage
from vlmplug.errors import DataError
from vlmplug.plugins.datasets import document as document_plugin
from vlmplug.plugins.datasets._document import AugmentedImage, augment, perspective_coeffs
from vlmplug.plugins.datasets.document import Augment
from vlmplug.train.data import check_image, load_image

SUFFIX = "\nAnswer the question using a single word or phrase."


def _load(tiny: Any, path: Path, on_bad_sample: str = "error", **options: Any) -> Any:
    return tiny.build(document_plugin.SPEC, tiny.make_ctx(on_bad_sample), {"path": str(path), **options})


def _page(path: Path, size: tuple[int, int] = (60, 80)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    page = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(page)
    for y in range(8, size[1] - 8, 10):
        draw.rectangle((6, y, size[0] - 6, y + 4), fill=(20, 20, 20))
    page.save(path)


def _docvqa(tmp_path: Path, n: int = 2) -> Path:
    """DocVQA's train_v1.0.json layout, ``n`` questions on one page."""
    _page(tmp_path / "documents" / "xnbl0037_1.png")
    row = {
        "questionId": 337,
        "question": "what is the date mentioned in this letter?",
        "question_types": ["handwritten", "form"],
        "image": "documents/xnbl0037_1.png",
        "docId": 279,
        "ucsf_document_id": "xnbl0037",
        "ucsf_document_page_no": "1",
        "answers": ["1/8/93", "1/8/1993"],
        "data_split": "train",
    }
    rows = [{**row, "questionId": 337 + i} for i in range(n)]
    path = tmp_path / "train_v1.0.json"
    path.write_text(json.dumps({"dataset_name": "docvqa", "dataset_split": "train", "data": rows}))
    return path


def _pixels(image: Any) -> np.ndarray:
    return np.asarray(load_image(image, "test"))


def test_official_docvqa_layout(tiny: Any, tmp_path: Path) -> None:
    path = _docvqa(tmp_path)
    ds = _load(tiny, path)
    assert len(ds) == 2 and ds.skipped == []
    assert ds[0] == {
        "messages": [
            {"role": "user", "content": "<image>\nwhat is the date mentioned in this letter?" + SUFFIX},
            {"role": "assistant", "content": "1/8/93"},
        ],
        "images": [str(tmp_path / "documents" / "xnbl0037_1.png")],
        "answers": ["1/8/93", "1/8/1993"],
        "question_id": 337,
        "question_types": ["handwritten", "form"],
        "docId": 279,
        "ucsf_document_id": "xnbl0037",
        "ucsf_document_page_no": "1",
        "data_split": "train",
        "_where": f"{path} record 0",
    }
    assert ds[0] is ds.samples[0]  # no augmentation: the stored sample, image as a path


def test_simple_rows(tiny: Any, tmp_path: Path) -> None:
    _page(tmp_path / "p.png")
    rows = [
        {"image": "p.png", "question": "Title?", "answers": ["Report", "report"], "page": 1},
        {"image": "p.png", "question": "Year?", "answer": "1993"},
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = _load(tiny, path, prompt="<image>{question}")
    assert ds[0] == {
        "messages": [{"role": "user", "content": "<image>Title?"}, {"role": "assistant", "content": "Report"}],
        "images": [str(tmp_path / "p.png")],
        "answers": ["Report", "report"],
        "page": 1,
        "_where": f"{path}:1",
    }
    assert ds[1]["answers"] == ["1993"] and ds[1]["messages"][1]["content"] == "1993"


def test_augmentation_is_seeded_by_index_and_keeps_the_size(tiny: Any, tmp_path: Path) -> None:
    path = _docvqa(tmp_path, n=3)
    original = _pixels(str(tmp_path / "documents" / "xnbl0037_1.png"))
    ds = _load(tiny, path, augmentation=True)
    first = _pixels(ds[0]["images"][0])
    assert first.shape == original.shape  # same size
    assert not np.array_equal(first, original)
    assert np.array_equal(first, _pixels(_load(tiny, path, augmentation=True)[0]["images"][0]))  # same seed
    assert np.array_equal(first, _pixels(ds[0]["images"][0]))  # every read: no epoch dependence
    assert not np.array_equal(first, _pixels(ds[1]["images"][0]))  # another index, the same page
    assert not np.array_equal(first, _pixels(_load(tiny, path, augmentation=True, seed=1)[0]["images"][0]))
    off = _load(tiny, path, augmentation=False)
    assert off[0]["images"] == [str(tmp_path / "documents" / "xnbl0037_1.png")]
    assert np.array_equal(_pixels(off[0]["images"][0]), original)
    assert ds.samples[0]["images"] == off[0]["images"]  # the stored sample keeps the path


def test_the_augmented_image_is_read_lazily(tiny: Any, tmp_path: Path) -> None:
    ds = _load(tiny, _docvqa(tmp_path), augmentation=True)
    image = ds[0]["images"][0]
    assert isinstance(image, AugmentedImage) and isinstance(image, LazyImage)
    opened = []
    original = AugmentedImage.open

    def counting(self: AugmentedImage) -> Any:
        opened.append(self.key)
        return original(self)

    AugmentedImage.open = counting  # type: ignore[method-assign]
    try:
        check_image(image, "test")  # the pipeline's up-front check decodes nothing
        assert opened == []
        loaded = load_image(image, "test")
        assert len(opened) == 1
    finally:
        AugmentedImage.open = original  # type: ignore[method-assign]
    assert loaded.size == (60, 80) and loaded.mode == "RGB"
    copy = pickle.loads(pickle.dumps(ds[0]["images"][0]))  # DataLoader workers get the recipe
    assert np.array_equal(_pixels(copy), np.asarray(loaded))


def test_each_option_changes_the_pixels(tmp_path: Path) -> None:
    _page(tmp_path / "p.png", (90, 120))
    page = Image.open(tmp_path / "p.png").convert("RGB")

    def run(rotation=(0.0, 0.0), perspective=0.0, quality=(100, 100)) -> np.ndarray:
        import random

        return np.asarray(augment(page, random.Random("k"), Augment(rotation, perspective, quality)))

    plain = run()
    assert np.abs(plain.astype(int) - np.asarray(page).astype(int)).max() < 40  # JPEG 100: close to the page
    assert not np.array_equal(run(rotation=(5.0, 5.0)), plain)
    warped = run(perspective=0.3)
    assert not np.array_equal(warped, plain) and warped.shape == plain.shape
    assert (warped[0, 0] > 240).all()  # the corner moved inwards: white fill
    low, high = run(quality=(10, 10)), run(quality=(95, 95))
    assert not np.array_equal(low, high)

    def jpeg_size(q: int) -> int:
        import random

        img = augment(page, random.Random("k"), Augment((0.0, 0.0), 0.0, (q, q)))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return len(buf.getvalue())

    assert jpeg_size(10) != jpeg_size(95)


def test_perspective_coefficients_map_the_corners() -> None:
    out = [(3.0, 2.0), (97.0, 5.0), (95.0, 118.0), (1.0, 115.0)]
    src = [(0.0, 0.0), (99.0, 0.0), (99.0, 119.0), (0.0, 119.0)]
    a, b, c, d, e, f, g, h = perspective_coeffs(out, src)
    for (x, y), (u, v) in zip(out, src):
        w = g * x + h * y + 1
        assert (a * x + b * y + c) / w == pytest.approx(u) and (d * x + e * y + f) / w == pytest.approx(v)


def test_the_guides_list_form_and_checks() -> None:
    config = document_plugin.SPEC.make_config(
        {"path": "d.json", "augmentation": [{"rotation": [-5, 5]}, {"perspective": 0.1}, {"jpeg_quality": [80, 100]}]}
    )
    assert config.augment() == Augment((-5.0, 5.0), 0.1, (80, 100))
    defaults = document_plugin.SPEC.make_config({"path": "d.json", "augmentation": True}).augment()
    assert defaults == Augment((-3.0, 3.0), 0.05, (60, 95))
    assert document_plugin.SPEC.make_config({"path": "d.json"}).augment() is None
    assert document_plugin.SPEC.flat_keys == ("augmentation",)
    for bad, match in [
        ({"augmentation": [{"blur": 2}]}, "is not one of"),
        ({"augmentation": True, "jpeg_quality": [90, 80]}, r"jpeg_quality: expected \[low, high\]"),
        ({"augmentation": True, "perspective": 1.5}, r"perspective: 1.5 must be in \[0, 1\)"),
        ({"prompt": "{question}"}, "must contain exactly one <image>"),
    ]:
        with pytest.raises(ValueError, match=match):
            document_plugin.SPEC.make_config({"path": "d.json", **bad})


def test_an_eval_set_is_not_augmented(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from vlmplug.plugins.datasets._document import build

    path = _docvqa(tmp_path)
    options = {"path": str(path), "augmentation": True}
    config = document_plugin.SPEC.make_config(options)
    sel = SimpleNamespace(name="document", config=lambda: document_plugin.SPEC.make_config(options))

    def ctx(train: list, evals: list) -> Any:
        return SimpleNamespace(
            on_bad_sample="error", recipe=SimpleNamespace(core={}, datasets=train, eval_datasets=evals)
        )

    assert build(config, ctx([], [sel])).augment is None
    assert build(config, ctx([sel], [])).augment is not None
    assert build(config, ctx([sel], [sel])).augment is not None  # the same options in both: training


def test_bad_rows_are_named_and_follow_the_skip_policy(tiny: Any, tmp_path: Path) -> None:
    _page(tmp_path / "p.png")
    rows = [
        {"image": "p.png", "question": "Fine?", "answers": ["yes"]},
        {"image": "p.png", "question": "Unanswered?", "answers": []},
        {"question": "Where?", "answers": ["x"]},
        {"image": "missing.png", "question": "Gone?", "answers": ["x"]},
    ]
    path = tmp_path / "docs.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError) as e:
        _load(tiny, path, augmentation=True)
    text = str(e.value)
    assert f"{path} record 1: no answers" in text and f"{path} record 2: 'image' must be an image path" in text
    assert f"{path} record 3: image not found" in text
    ds = _load(tiny, path, on_bad_sample="skip", augmentation=True)
    assert len(ds) == 1
    assert [(s.reason, s.where) for s in ds.skipped] == [
        ("no-answers", f"{path} record 1"),
        ("malformed-row", f"{path} record 2"),
        ("missing-image", f"{path} record 3"),
    ]
    assert len(_load(tiny, path, on_bad_sample="skip").skipped) == 2  # without augmentation the pipeline checks files


def test_detection(vlmplug_host: Any) -> None:
    def detect(sample: dict) -> str | None:
        return vlmplug_host.detect_dataset_format(path="d.jsonl", sample=sample)

    assert detect({"image": "p.png", "question": "q", "answers": ["a"]}) == "document"
    assert detect({"image": "p.png", "caption": "c"}) == "caption"


def test_a_run_trains_with_augmentation(run_recipe: Any, tmp_path: Path) -> None:
    for i in range(4):
        _page(tmp_path / "documents" / f"d{i}.png", (40 + 8 * i, 56))
    rows = [
        {"questionId": i, "question": "How many lines?", "image": f"documents/d{i}.png", "answers": [str(4 + i)]}
        for i in range(4)
    ]
    path = tmp_path / "train_v1.0.json"
    path.write_text(json.dumps({"data": rows}))
    res = run_recipe(
        None,
        steps=2,
        datasets=[{"format": "document", "path": str(path)}],
        eval_datasets=[],
        evaluators=[],
        augmentation=True,  # the guide's flat key
    )
    assert res.metrics["train_samples"] == 4 and res.metrics["train"]["steps"] == 2
    saved = yaml.safe_load((res.run_dir / "resolved_recipe.yaml").read_text())
    assert saved["components"]["dataset_format"] == ["document"]
    assert saved["datasets"][0]["augmentation"] is True
