"""The synthetic ``shapes`` VQA dataset: determinism, balance, and answers that match the pixels.

Shapes are drawn without anti-aliasing on a uniform light background, one per image quadrant, with
fills within +-20 per channel of a nominal colour (nominal colours are > 40 apart in some channel),
so each quadrant can be read back from the image: its colour by the nearest nominal colour, its kind
by how much of its bounding box it fills (square 1.0, circle ~0.78, triangle ~0.5).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from vlmplug.plugins.datasets import shapes as shapes_plugin
from vlmplug.plugins.datasets._shapes import COLORS, QUADRANTS, SHAPES, ShapesDataset

JITTER = 20


def _build(tiny, **options):
    return tiny.build(shapes_plugin.SPEC, tiny.make_ctx(), {"num_samples": 80, "image_size": 32, **options})


def _read_image(img: Image.Image) -> list[tuple[str, str, int]]:
    """(kind, colour, quadrant) of the shape in each non-empty quadrant, read from the pixels."""
    a = np.asarray(img).astype(int)
    bg = a[0, 0]  # shapes start at least one pixel into their quadrant
    half = a.shape[0] // 2
    found = []
    for cell in range(4):
        y0, x0 = (cell // 2) * half, (cell % 2) * half
        q = a[y0 : y0 + half, x0 : x0 + half]
        fg = np.abs(q - bg).max(-1) > 0
        if not fg.any():
            continue
        ys, xs = np.nonzero(fg)
        fill = fg.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        kind = (
            "square"
            if fill > 0.99
            else "circle"
            if 0.65 < fill < 0.9
            else "triangle"
            if 0.4 < fill < 0.62
            else f"unknown(fill={fill:.2f})"
        )
        pixels = q[fg]
        assert (pixels == pixels[0]).all(), "a shape has one flat fill colour"
        color = min(COLORS, key=lambda c: np.abs(pixels[0] - np.array(COLORS[c])).max())
        assert np.abs(pixels[0] - np.array(COLORS[color])).max() <= JITTER
        found.append((kind, color, cell))
    return found


def _has_colour(img: Image.Image, color: str) -> bool:
    a = np.asarray(img).astype(int)
    return bool((np.abs(a - np.array(COLORS[color])).max(-1) <= JITTER).any())


def _target(question: str, names) -> str:
    hits = [n for n in names if n in question]
    assert len(hits) == 1, question
    return hits[0]


def _same(a: dict, b: dict) -> bool:
    return (
        a["messages"] == b["messages"]
        and a["answers"] == b["answers"]
        and a["id"] == b["id"]
        and a["question_type"] == b["question_type"]
        and all(x.tobytes() == y.tobytes() for x, y in zip(a["images"], b["images"]))
    )


def test_sample_layout(tiny):
    ds = _build(tiny)
    assert isinstance(ds, ShapesDataset) and len(ds) == 80
    s = ds[5]
    assert s["messages"][0]["role"] == "user" and s["messages"][0]["content"].startswith("<image>\n")
    assert s["messages"][1] == {"role": "assistant", "content": s["answers"][0]}
    assert len(s["images"]) == 1
    assert s["id"] == "shapes-0-5"
    with pytest.raises(IndexError):
        ds[80]


@pytest.mark.parametrize("size", [32, 64])
def test_images_are_square_rgb_of_image_size(tiny, size):
    ds = _build(tiny, image_size=size, num_samples=8)
    for i in range(len(ds)):
        img = ds[i]["images"][0]
        assert img.mode == "RGB"
        assert img.size == (size, size)


def test_deterministic_for_a_seed(tiny):
    a, b = _build(tiny, seed=3), _build(tiny, seed=3)
    for i in (0, 1, 7, 42):
        assert _same(a[i], a[i])  # the same index twice
        assert _same(a[i], b[i])  # a second dataset with the same seed
        assert a.sample_spec(i) == b.sample_spec(i)


def test_different_seeds_differ(tiny):
    a, b = _build(tiny, seed=0), _build(tiny, seed=1)
    different = [i for i in range(20) if not _same(a[i], b[i])]
    assert len(different) == 20
    images_differ = [i for i in range(20) if a[i]["images"][0].tobytes() != b[i]["images"][0].tobytes()]
    assert len(images_differ) == 20


def test_question_types_uniform(tiny):
    ds = _build(tiny)
    assert Counter(ds[i]["question_type"] for i in range(len(ds))) == {
        "color": 20,
        "shape": 20,
        "count": 20,
        "presence": 20,
    }
    two = _build(tiny, question_types=["count", "color"], num_samples=10)
    assert [two[i]["question_type"] for i in range(10)] == ["count", "color"] * 5


def test_presence_yes_no_exactly_balanced(tiny):
    ds = _build(tiny, num_samples=200)
    answers = Counter(ds.sample_spec(i)[3] for i in range(len(ds)) if ds.sample_spec(i)[0] == "presence")
    assert answers == {"yes": 25, "no": 25}
    only = _build(tiny, question_types=["presence"], num_samples=30)
    assert Counter(only[i]["answers"][0] for i in range(30)) == {"yes": 15, "no": 15}


def test_spec_matches_item(tiny):
    ds = _build(tiny)
    for i in range(12):
        qtype, question, shapes, answer = ds.sample_spec(i)
        s = ds[i]
        assert s["question_type"] == qtype
        assert s["messages"][0]["content"] == f"<image>\n{question}"
        assert s["answers"] == [answer]
        assert sorted(_read_image(s["images"][0])) == sorted(shapes)


@pytest.mark.parametrize("presence_by", ["any", "location", "attribute"])
def test_answers_match_the_drawn_image(tiny, presence_by):
    ds = _build(tiny, num_samples=120, seed=7, presence_by=presence_by)
    seen = Counter()
    for i in range(len(ds)):
        qtype, question, shapes, answer = ds.sample_spec(i)
        img = ds[i]["images"][0]
        drawn = _read_image(img)
        assert sorted(drawn) == sorted(shapes), (i, question)
        kinds, colours, cells = {k for k, _, _ in drawn}, {c for _, c, _ in drawn}, {q for _, _, q in drawn}
        if qtype == "color":
            assert len(drawn) == 1 and answer == drawn[0][1]
            assert _has_colour(img, answer)
            assert not any(_has_colour(img, c) for c in COLORS if c != answer)
        elif qtype == "shape":
            assert len(drawn) == 1 and answer == drawn[0][0]
        elif qtype == "count":
            assert answer == str(len(drawn)) == str(len(shapes))
            assert 1 <= len(drawn) <= 3
        else:
            assert answer in ("yes", "no")
            if presence_by == "any":
                assert (len(drawn) > 0) == (answer == "yes"), (i, question)
                seen["presence_any"] += 1
            elif presence_by == "location":
                target = QUADRANTS.index(_target(question, QUADRANTS))
                assert (target in cells) == (answer == "yes"), (i, question)
                seen["presence_location"] += 1
            elif any(c in question for c in COLORS):
                target = _target(question, COLORS)
                assert _has_colour(img, target) == (answer == "yes"), (i, question)
                assert (target in colours) == (answer == "yes")
                seen["presence_color"] += 1
            else:
                target = _target(question, SHAPES)
                assert (target in kinds) == (answer == "yes"), (i, question)
                seen["presence_shape"] += 1
        seen[qtype] += 1
    if presence_by in ("any", "location"):
        assert seen[f"presence_{presence_by}"] == seen["presence"] > 0
    else:
        assert seen["presence_color"] and seen["presence_shape"]


def test_max_shapes_respected(tiny):
    ds = _build(tiny, question_types=["count"], max_shapes=4, num_samples=60)
    counts = Counter(int(ds[i]["answers"][0]) for i in range(60))
    assert set(counts) <= {1, 2, 3, 4} and 4 in counts
    for i in range(10):
        assert len(_read_image(ds[i]["images"][0])) == int(ds[i]["answers"][0])


@pytest.mark.parametrize(
    "options, match",
    [
        ({"max_shapes": 5}, "max_shapes"),
        ({"image_size": 16}, "image_size"),
        ({"num_samples": 0}, "num_samples"),
        ({"question_types": []}, "question_types"),
    ],
)
def test_config_validation(options, match):
    with pytest.raises(ValueError, match=match):
        shapes_plugin.SPEC.make_config(options)
