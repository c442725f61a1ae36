"""From canonical samples to model inputs: assistant-only labels, image placeholder expansion, row
errors, lazy image loading and the training collator (with the tiny byte-level BPE tokenizer)."""

from __future__ import annotations

import base64
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmplug.errors import DataError
from vlmplug.train.data import (
    IGNORE_INDEX,
    EncodedDataset,
    SampleEncoder,
    TrainCollator,
    check_image,
    load_image,
)
from vlmplug.train.llm import build_tiny_tokenizer

torch.set_num_threads(1)

IMAGE = "<image>"
T = 4  # tokens per image


@pytest.fixture(scope="module")
def tok():
    texts = [
        "What color is the shape?",
        "How many shapes are there?",
        "red",
        "a red circle",
        "circle",
        "You are a helpful assistant.",
        "And which shape is it?",
        "yes",
        "no",
    ]
    return build_tiny_tokenizer(texts, IMAGE, vocab_size=300)


@pytest.fixture
def encoder(tok):
    return SampleEncoder(tok, IMAGE, T, max_seq_length=128)


def _sample(answer="a red circle", question="What color is the shape?", images=("img",), system=None, **extra):
    msgs = [{"role": "system", "content": system}] if system else []
    placeholder = f"{IMAGE}\n" * len(images)
    msgs += [{"role": "user", "content": f"{placeholder}{question}"}, {"role": "assistant", "content": answer}]
    return {"messages": msgs, "images": list(images), **extra}


def _labelled_runs(tok, ids, labels):
    """Decoded runs of consecutive labelled / unlabelled tokens: [(is_labelled, text), ...]."""
    return [
        (k, tok.decode([t for t, _ in g]))
        for k, g in itertools.groupby(zip(ids, labels), key=lambda x: x[1] != IGNORE_INDEX)
    ]


def _png(path, color=(200, 30, 30), size=(8, 8)):
    Image.new("RGB", size, color).save(path)
    return str(path)


# -- labels -------------------------------------------------------------------------------------


def test_labels_cover_exactly_the_assistant_turn(tok, encoder):
    sample = _sample(system="You are a helpful assistant.", images=())
    ids, labels, _ = encoder.encode(sample, "row 0")
    assert len(ids) == len(labels)
    end = tok.convert_tokens_to_ids("<|end|>")
    labelled = [t for t in labels if t != IGNORE_INDEX]
    assert tok.decode(labelled) == "a red circle<|end|>"
    assert labelled[-1] == end
    # labels equal the ids where set, and everything before the answer is ignored
    assert all(lb in (IGNORE_INDEX, t) for t, lb in zip(ids, labels))
    assert _labelled_runs(tok, ids, labels) == [
        (False, "<|system|> You are a helpful assistant.<|end|><|user|> What color is the shape?<|end|><|assistant|>"),
        (True, "a red circle<|end|>"),
    ]
    # the full sequence is the chat template's rendering
    assert tok.decode(ids) == tok.apply_chat_template(sample["messages"], tokenize=False)


def test_two_turn_conversation_labels_both_assistant_turns(tok, encoder):
    msgs = [
        {"role": "user", "content": f"{IMAGE}\nWhat color is the shape?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "And which shape is it?"},
        {"role": "assistant", "content": "circle"},
    ]
    ids, labels, _ = encoder.encode({"messages": msgs, "images": ["x"]}, "row 3")
    runs = _labelled_runs(tok, ids, labels)
    assert [text for lab, text in runs if lab] == ["red<|end|>", "circle<|end|>"]
    assert [lab for lab, _ in runs] == [False, True, False, True]
    assert "And which shape is it?" in runs[2][1]


@pytest.mark.parametrize("answer", ["naïve café 🐱", " leading space", "two\nlines"])
def test_labels_with_unusual_text(tok, encoder, answer):
    _ids, labels, _ = encoder.encode(_sample(answer=answer, images=()), "row")
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == f"{answer}<|end|>"


# -- image placeholders -------------------------------------------------------------------------


def test_image_placeholder_expands_with_ignored_labels(tok, encoder):
    image_id = tok.convert_tokens_to_ids(IMAGE)
    ids, labels, _ = encoder.encode(_sample(images=("a", "b")), "row 0")
    positions = [i for i, t in enumerate(ids) if t == image_id]
    assert len(positions) == 2 * T
    # each placeholder becomes T consecutive image tokens
    first = positions[:T]
    assert first == list(range(first[0], first[0] + T))
    assert all(labels[i] == IGNORE_INDEX for i in positions)
    # the unexpanded rendering has exactly one image token per image
    plain = tok(
        tok.apply_chat_template(_sample(images=("a", "b"))["messages"], tokenize=False), add_special_tokens=False
    )["input_ids"]
    assert plain.count(image_id) == 2
    assert len(ids) == len(plain) + 2 * (T - 1)


@pytest.mark.parametrize("n_placeholders, n_images", [(1, 0), (0, 1), (2, 1), (1, 2)])
def test_wrong_placeholder_count_names_row_and_fix(encoder, n_placeholders, n_images):
    sample = _sample(images=())
    sample["messages"][0]["content"] = f"{IMAGE}\n" * n_placeholders + "What color is the shape?"
    sample["images"] = [f"i{k}.png" for k in range(n_images)]
    with pytest.raises(DataError) as err:
        encoder.encode(sample, "data/train.jsonl:17")
    msg = str(err.value)
    assert msg.startswith("data/train.jsonl:17:")
    assert f"{n_placeholders} '{IMAGE}' placeholder(s) in the text but {n_images} image(s)" in msg
    assert f"put one '{IMAGE}' in a message for each image" in msg


def test_too_long_sample_mentions_max_seq_length(tok):
    enc = SampleEncoder(tok, IMAGE, tokens_per_image=64, max_seq_length=40)
    with pytest.raises(DataError) as err:
        enc.encode(_sample(), "train.jsonl:2")
    msg = str(err.value)
    assert msg.startswith("train.jsonl:2:")
    assert "max_seq_length 40" in msg
    assert "set on_overlength: truncate-text (or skip)" in msg
    # the same sample fits with a larger budget
    ids, _, _ = SampleEncoder(tok, IMAGE, tokens_per_image=64, max_seq_length=200).encode(_sample(), "x")
    assert 40 < len(ids) <= 200


def test_encode_prompt_ends_with_generation_prompt(tok, encoder):
    msgs = _sample()["messages"][:1]
    ids, slots = encoder.encode_prompt(msgs, {"images": ["x"]}, "eval 0")
    assert slots == [["image", 0, [0]]]
    assert tok.decode(ids).endswith("What color is the shape?<|end|><|assistant|>")
    assert ids.count(tok.convert_tokens_to_ids(IMAGE)) == T


# -- EncodedDataset ------------------------------------------------------------------------------


def test_encoded_dataset_reads_images_lazily(tok, encoder, tmp_path):
    a, b = _png(tmp_path / "a.png", (255, 0, 0)), _png(tmp_path / "b.png", (0, 0, 255), (10, 6))
    samples = [_sample(images=(a,)), _sample(images=(a, b), answer="yes"), _sample(images=(), answer="no")]
    ds = EncodedDataset(samples, encoder, "train", skip_bad=False)
    assert len(ds) == 3 and ds.skipped == []
    item = ds[1]
    assert set(item) == {"input_ids", "labels", "images", "frames", "vlmplug_skipped"}
    assert item["vlmplug_skipped"] == []
    assert [im.size for im in item["images"]] == [(8, 8), (10, 6)]
    assert all(im.mode == "RGB" for im in item["images"])
    assert item["images"][1].getpixel((0, 0)) == (0, 0, 255)
    assert (item["input_ids"], item["labels"]) == tuple(encoder.encode(samples[1], "x")[:2])
    assert ds[2]["images"] == []


def test_missing_image_names_the_file(encoder, tmp_path):
    good = _png(tmp_path / "a.png")
    missing = str(tmp_path / "nope" / "missing.png")
    samples = [_sample(images=(good,)), _sample(images=(missing,), _where="train.jsonl:2")]
    with pytest.raises(DataError) as err:
        EncodedDataset(samples, encoder, "train", skip_bad=False)
    msg = str(err.value)
    assert "train.jsonl:2" in msg
    assert missing in msg
    assert "not found" in msg


def test_bad_samples_skipped_and_counted(encoder, tmp_path):
    good = _png(tmp_path / "a.png")
    samples = [
        _sample(images=(good,)),
        _sample(images=(str(tmp_path / "missing.png"),)),  # missing file
        {**_sample(images=(good,)), "images": []},  # placeholder without image
        _sample(images=(good,), answer="yes"),
    ]

    class WithSkips(list):  # rows the format reader already dropped are counted too
        skipped = [DataError("reader: bad row 9", reason="malformed-row", where="data.jsonl:9")]

    ds = EncodedDataset(WithSkips(samples), encoder, "train", skip_bad=True)
    assert len(ds) == 2
    assert [(s["reason"], s["where"]) for s in ds.skipped] == [
        ("malformed-row", "data.jsonl:9"),
        ("missing-image", "train sample 1"),
        ("image-count", "train sample 2"),
    ]
    assert "missing.png" in ds.skipped[1]["message"]
    assert "placeholder" in ds.skipped[2]["message"]
    assert ds[1]["labels"] == encoder.encode(samples[3], "x")[1]


def test_all_samples_bad(encoder, tmp_path):
    with pytest.raises(DataError, match="no usable samples"):
        EncodedDataset([_sample(images=(str(tmp_path / "x.png"),))], encoder, "train", skip_bad=True)


def test_corrupt_image_file(encoder, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as err:
        EncodedDataset([_sample(images=(str(bad),))], encoder, "train", skip_bad=False)
    assert str(bad) in str(err.value)
    assert "not a readable image" in str(err.value)
    with pytest.raises(DataError, match="cannot read image"):
        load_image(str(bad), "row 1")


def test_truncated_image_file_is_a_data_error(encoder, tmp_path):
    # the header parses, so the cheap up-front check may pass; decoding must still fail as a DataError
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "truncated.png"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError) as err:
        ds = EncodedDataset([_sample(images=(str(bad),), _where="train.jsonl:5")], encoder, "train", False)
        ds[0]
    assert "train.jsonl:5" in str(err.value)
    assert str(bad) in str(err.value)


def test_load_image_sources(tmp_path):
    path = _png(tmp_path / "a.png", (1, 2, 3))
    raw = (tmp_path / "a.png").read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    grey = Image.new("L", (4, 4), 7)
    for ref in (path, raw, uri):
        img = load_image(ref, "row")
        assert img.mode == "RGB" and img.getpixel((0, 0)) == (1, 2, 3)
    assert load_image(grey, "row").getpixel((0, 0)) == (7, 7, 7)
    check_image(uri, "row")  # no error
    with pytest.raises(DataError, match="download images first"):
        check_image("https://example.com/cat.jpg", "row 4")
    with pytest.raises(DataError, match="row 4: image not found"):
        load_image(str(tmp_path / "nope.png"), "row 4")


# -- TrainCollator -------------------------------------------------------------------------------


def test_collator_pads_right_and_stacks_pixels(tok):
    pad = tok.pad_token_id
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    seen = []

    def preprocess(images):
        seen.extend(images)
        return torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32).transpose(2, 0, 1)) for im in images])

    batch = [
        {"input_ids": [11, 12, 13], "labels": [IGNORE_INDEX, 12, 13], "images": [red]},
        {"input_ids": [21, 22, 23, 24, 25], "labels": [IGNORE_INDEX, IGNORE_INDEX, 23, 24, 25], "images": []},
        {"input_ids": [31], "labels": [31], "images": [blue, red]},
    ]
    out = TrainCollator(pad, preprocess)(batch)
    assert set(out) == {"input_ids", "attention_mask", "labels", "pixel_values"}
    assert out["input_ids"].tolist() == [[11, 12, 13, pad, pad], [21, 22, 23, 24, 25], [31, pad, pad, pad, pad]]
    assert out["labels"].tolist() == [
        [-100, 12, 13, -100, -100],
        [-100, -100, 23, 24, 25],
        [31, -100, -100, -100, -100],
    ]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert out["input_ids"].dtype == out["labels"].dtype == out["attention_mask"].dtype == torch.long
    assert seen == [red, blue, red]  # images in batch order
    assert out["pixel_values"].shape == (3, 3, 8, 8)
    assert out["pixel_values"][1, 2, 0, 0] == 255 and out["pixel_values"][1, 0, 0, 0] == 0


def test_collator_without_images_has_no_pixel_values(tok):
    out = TrainCollator(tok.pad_token_id, lambda ims: pytest.fail("preprocess called"))(
        [{"input_ids": [5], "labels": [5], "images": []}]
    )
    assert "pixel_values" not in out


def test_collator_with_clip_pipeline(tok, encoder, tmp_path):
    from transformers import CLIPImageProcessorPil

    from vlmplug.plugins.encoders._clip import ImagePipeline

    pipeline = ImagePipeline(CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}))
    a = _png(tmp_path / "a.png", size=(20, 16))
    ds = EncodedDataset([_sample(images=(a,)), _sample(images=(a, a), answer="no")], encoder, "train", False)
    out = TrainCollator(tok.pad_token_id, pipeline)([ds[0], ds[1]])
    assert out["pixel_values"].shape == (3, 3, 16, 16)
    assert out["pixel_values"].dtype == torch.float32
    n_image_tokens = int((out["input_ids"] == tok.convert_tokens_to_ids(IMAGE)).sum())
    assert n_image_tokens == 3 * T
    assert bool((out["labels"][out["input_ids"] == tok.convert_tokens_to_ids(IMAGE)] == IGNORE_INDEX).all())


# -- over-long samples (on_overlength) -------------------------------------------------------------------


def _long_sample(n_images=2):
    """Two images between long texts, and a long answer."""
    text = " ".join(["What color is the shape?"] * 6)
    content = "".join(f"{text} {IMAGE}\n" for _ in range(n_images)) + text
    msgs = [{"role": "user", "content": content}, {"role": "assistant", "content": " ".join(["a red circle"] * 8)}]
    return {"messages": msgs, "images": [f"img{k}" for k in range(n_images)]}


def _full(tok, sample):
    return SampleEncoder(tok, IMAGE, T, max_seq_length=10_000).encode(sample, "x")


@pytest.mark.parametrize("limit", range(20, 134))  # every cut point: before, inside and after each image
def test_truncation_is_a_prefix_that_never_splits_an_image(tok, limit):
    """The cut encoding is a prefix of the whole one (same ids, same labels); an image's T tokens are all
    kept or all dropped, with its slot; and it is as long as it can be without splitting an image."""
    sample = _long_sample()
    ids, labels, slots = _full(tok, sample)
    assert len(ids) > limit
    enc = SampleEncoder(tok, IMAGE, T, max_seq_length=limit, on_overlength="truncate-text")
    try:
        cut_ids, cut_labels, cut_slots = enc.encode(sample, "x")
    except DataError as e:  # the cut left no answer token: counted as too long
        assert e.reason == "too-long" and "after cutting it to max_seq_length" in str(e)
        assert all(lb == IGNORE_INDEX for lb in labels[:limit])
        return
    n = len(cut_ids)
    assert n <= limit and cut_ids == ids[:n] and cut_labels == labels[:n]
    n_image_tokens = sum(t == enc.image_token_id for t in cut_ids)
    assert n_image_tokens == T * len(cut_slots) and cut_slots == slots[: len(cut_slots)]
    assert n == limit or ids[n] == enc.image_token_id  # only an image stops the cut short
    assert enc.last_truncated == len(ids) - n


def test_skip_and_error_policies(tok, tmp_path):
    sample = _long_sample()
    for policy, skip_bad in (("skip", False), ("error", True)):
        enc = SampleEncoder(tok, IMAGE, T, max_seq_length=30, on_overlength=policy)
        with pytest.raises(DataError) as err:
            enc.encode(sample, "train.jsonl:3")
        assert err.value.reason == "too-long"
        png = str(_png(tmp_path / "a.png"))
        samples = [_sample(images=[png]), {**sample, "images": [png] * len(sample["images"])}]
        if policy == "skip":  # skipped and counted even under on_bad_sample: error
            ds = EncodedDataset(samples, SampleEncoder(tok, IMAGE, T, 60, on_overlength="skip"), "d", skip_bad)
            assert len(ds) == 1 and [x["reason"] for x in ds.skipped] == ["too-long"]
        else:  # stops the run even under on_bad_sample: skip
            with pytest.raises(DataError, match="exceed max_seq_length 60"):
                EncodedDataset(samples, SampleEncoder(tok, IMAGE, T, 60, on_overlength="error"), "d", skip_bad)


def test_a_run_counts_and_reports_what_it_cut(run_recipe, tmp_path):
    """Samples whose answers run past max_seq_length are cut, not dropped: the run trains on them and
    reports how many it cut and which, in metrics.json."""
    import json

    png = _png(tmp_path / "a.png")
    long = {
        "messages": [
            {"role": "user", "content": f"{IMAGE}\nDescribe the shape."},
            {"role": "assistant", "content": " ".join(["a red circle on a white ground"] * 12)},
        ],
        "images": [Path(png).name],
    }
    short = {**long, "messages": [long["messages"][0], {"role": "assistant", "content": "a red circle"}]}
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in [long, short] * 4) + "\n")
    res = run_recipe(None, steps=2, datasets=[{"path": str(tmp_path / "d.jsonl")}], eval_datasets=[], evaluators=[])
    cut = res.metrics["truncated"]
    assert cut["train"] == 4 and cut["first"][0] == f"{tmp_path / 'd.jsonl'}:1"
    assert res.metrics["train_samples"] == 8 and res.metrics["train"]["steps"] == 2


def test_decompression_bombs_are_refused_before_decoding(tmp_path, monkeypatch):
    """An image whose header declares more pixels than PIL's limit is a bad row (reason
    decompression-bomb), up front and at load time, for files and in-memory bytes alike."""
    import io as io_

    path = _png(tmp_path / "big.png", size=(40, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 x 30 = 1200 pixels
    for call in (check_image, load_image):
        with pytest.raises(DataError) as err:
            call(path, "d.jsonl:4")
        assert err.value.reason == "decompression-bomb" and "40 x 30 pixels" in str(err.value)
        assert str(err.value).startswith("d.jsonl:4:")
    buf = io_.BytesIO()
    Image.new("RGB", (40, 30)).save(buf, format="PNG")
    with pytest.raises(DataError, match="decompression-bomb limit"):
        load_image(buf.getvalue(), "d.jsonl:5")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1200)
    assert load_image(path, "x").size == (40, 30)


def test_a_truncated_file_passes_the_cheap_check_and_fails_when_loaded(tmp_path):
    """Up front only the header is read; the full decode names the row when the file is cut short."""
    path = str(tmp_path / "cut.png")
    Image.effect_noise((64, 64), 50).convert("RGB").save(path)  # noise: the pixel data is most of the file
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    check_image(path, "d.jsonl:7")
    with pytest.raises(DataError) as err:
        load_image(path, "d.jsonl:7")
    assert err.value.reason == "unreadable-image" and str(err.value).startswith("d.jsonl:7: cannot read image")
