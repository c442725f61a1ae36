"""Videos: which frames are taken (uniform segments, fixed rate), reading them from frame lists,
folders and real video files (PyAV), the missing-extra and bad-file errors, the image slots a video
becomes (one slot of all frames for a connector that takes whole videos, one per frame otherwise),
and the model path: frames batched into one perceiver call per video, equal to calling it by hand."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vlmplug.errors import DataError
from vlmplug.testing.tiny import write_video
from vlmplug.train.data import EncodedDataset, SampleEncoder, TrainCollator, load_media
from vlmplug.train.video import VideoOptions, frame_indices, probe, read_frames

torch.set_num_threads(1)
UNIFORM8 = VideoOptions(max_num_frames=8)


def _levels(frames: list[Image.Image]) -> list[int]:
    return [round(float(np.asarray(f).mean())) for f in frames]


def _video_file(path: Path, n: int = 24, fps: int = 10, size: int = 32) -> str:
    """A real MPEG-4 file whose frame ``i`` is a flat grey of level ``10 * i``."""
    return write_video(path, n=n, fps=fps, size=size, step=10)


def _frames(folder: Path, n: int) -> list[str]:
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        Image.new("RGB", (16, 16), (10 * i,) * 3).save(folder / f"f{i:03d}.png")
        paths.append(str(folder / f"f{i:03d}.png"))
    return paths


# -- which frames ---------------------------------------------------------------------------------


def test_uniform_takes_every_frame_or_the_middle_of_equal_segments():
    assert frame_indices(5, None, UNIFORM8, "x") == [0, 1, 2, 3, 4]
    picked = frame_indices(100, None, UNIFORM8, "x")
    assert picked == [6, 18, 31, 43, 56, 68, 81, 93]  # floor((k + 0.5) * 100 / 8)
    assert all(12 * k <= i < 12.5 * (k + 1) for k, i in enumerate(picked))  # one per segment of 12.5


def test_fps_takes_one_frame_per_period_then_thins_uniformly():
    one_per_second = VideoOptions(max_num_frames=8, frame_sampling="fps", sampling_fps=1.0)
    assert frame_indices(90, 30.0, one_per_second, "x") == [0, 30, 60]
    two_per_second = VideoOptions(max_num_frames=8, frame_sampling="fps", sampling_fps=2.0)
    every_half_second = [15 * k for k in range(20)]  # 10 s at 30 fps -> 20 frames, more than 8
    thinned = frame_indices(300, 30.0, two_per_second, "x")
    assert len(thinned) == 8 and set(thinned) <= set(every_half_second)
    assert thinned == [every_half_second[j] for j in frame_indices(20, None, UNIFORM8, "x")]


def test_fps_without_a_frame_rate_names_the_row_and_fix():
    with pytest.raises(DataError, match=r"train.jsonl:3: frame_sampling: fps needs the video's frame rate"):
        frame_indices(10, None, VideoOptions(frame_sampling="fps"), "train.jsonl:3")


# -- reading --------------------------------------------------------------------------------------


def test_frame_lists_folders_and_fps_objects(tmp_path):
    paths = _frames(tmp_path / "clip", 12)
    four = VideoOptions(max_num_frames=4)
    assert probe(paths, four, "x") == [1, 4, 7, 10]
    assert probe(str(tmp_path / "clip"), four, "x") == [1, 4, 7, 10]  # a folder, in name order
    assert _levels(read_frames(str(tmp_path / "clip"), [1, 4], "x")) == [10, 40]
    by_rate = VideoOptions(max_num_frames=8, frame_sampling="fps", sampling_fps=2.0)
    assert probe({"frames": paths, "fps": 4}, by_rate, "x") == [0, 2, 4, 6, 8, 10]


def test_a_video_file_is_decoded_at_the_sampled_frames(tmp_path):
    video = _video_file(tmp_path / "v.mp4")  # 24 frames at 10 fps
    indices = probe(video, VideoOptions(max_num_frames=4), "x")
    assert indices == [3, 9, 15, 21]
    levels = _levels(read_frames(video, indices, "x"))
    assert all(abs(got - 10 * i) <= 6 for got, i in zip(levels, indices)), levels  # lossy codec
    assert probe(video, VideoOptions(max_num_frames=8, frame_sampling="fps", sampling_fps=2.0), "x") == [
        0,
        5,
        10,
        15,
        20,
    ]


def test_bad_videos_name_the_row_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"row 4: video not found: .*missing.mp4") as e:
        probe(str(tmp_path / "missing.mp4"), UNIFORM8, "row 4")
    assert e.value.reason == "missing-video"
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(DataError, match=r"row 5: cannot read video .*junk.mp4"):
        probe(str(junk), UNIFORM8, "row 5")
    with pytest.raises(DataError, match="row 6: a video must be a list of frames"):
        probe(42, UNIFORM8, "row 6")
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    with pytest.raises(DataError, match=r'row 7: reading video files needs PyAV: pip install "vlmplug\[video\]"'):
        probe(str(video), UNIFORM8, "row 7")


# -- slots ----------------------------------------------------------------------------------------

T = 3  # tokens per slot


@pytest.fixture(scope="module")
def tok():
    from vlmplug.train.llm import build_tiny_tokenizer

    return build_tiny_tokenizer(["What happens in the video?", "a ball rolls", "and here?"], "<image>", 300)


def _sample(video: Any, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": "<image>\nand here?\n<video>\nWhat happens in the video?"},
            {"role": "assistant", "content": "a ball rolls"},
        ],
        "images": [extra.pop("image")],
        "videos": [video],
        **extra,
    }


@pytest.mark.parametrize("per_slot", [True, False], ids=["whole-video", "frame-by-frame"])
def test_a_video_becomes_one_slot_or_one_slot_per_frame(tmp_path, tok, per_slot):
    paths = _frames(tmp_path / "clip", 10)
    image = str(tmp_path / "img.png")
    Image.new("RGB", (16, 16), (255, 0, 0)).save(image)
    enc = SampleEncoder(tok, "<image>", T, 256, video=VideoOptions(max_num_frames=4), video_per_slot=per_slot)
    ids, _labels, slots = enc.encode(_sample(paths, image=image), "row 0")
    frames = [1, 3, 6, 8]
    expected = [["image", 0, [0]]] + ([["frames", 0, frames]] if per_slot else [["frames", 0, [i]] for i in frames])
    assert slots == expected
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ids.count(image_id) == T * len(slots)
    images, counts = load_media(_sample(paths, image=image), slots, "row 0")
    assert _levels(images) == [85, 10, 30, 60, 80]  # the image (mean of pure red), then frames 1, 3, 6, 8
    assert counts == ([1, 4] if per_slot else [1, 1, 1, 1, 1])


def test_placeholder_counts_are_checked_for_videos(tok):
    enc = SampleEncoder(tok, "<image>", T, 256)
    sample = {"messages": [{"role": "user", "content": "<video> <video>"}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(DataError, match=r"row 2: 2 '<video>' placeholder\(s\) in the text but 1 video\(s\)") as e:
        enc.encode({**sample, "videos": [["a.png"]]}, "row 2")
    assert e.value.reason == "video-count"


# -- the model ------------------------------------------------------------------------------------


def _vlm(tiny: Any, tokenizer: Any, ctx: Any, connector: str, **options: Any) -> Any:
    return tiny.make_vlm(tokenizer, ctx, connector=connector, connector_options=options)


def test_whole_videos_reach_the_perceiver_as_frames(tiny, tiny_ctx, tiny_tokenizer, tmp_path):
    """The batch path (collator -> encode_images with image_frames) equals calling the connector on
    ``[1, F, N, D]`` per video by hand, and videos with different frame counts batch together."""
    ctx, tokenizer = tiny_ctx, tiny_tokenizer
    vlm = _vlm(tiny, tokenizer, ctx, "perceiver", max_frames=4).eval()
    images = tiny.random_images(1 + 3 + 2, seed=3)
    collate = TrainCollator(tokenizer.pad_token_id, vlm.vision_encoder.preprocess)
    item = {"input_ids": [5, 6], "labels": [5, 6]}
    batch = collate([{**item, "images": images[:4], "frames": [1, 3]}, {**item, "images": images[4:], "frames": [2]}])
    assert batch["image_frames"].tolist() == [1, 3, 2]
    with torch.no_grad():
        got = vlm.encode_images(batch["pixel_values"], image_frames=batch["image_frames"])
        feats = vlm.vision_encoder(batch["pixel_values"])
        want = torch.cat([vlm.connector(feats[:1]), vlm.connector(feats[1:4][None]), vlm.connector(feats[4:][None])])
    assert got.shape == (3, vlm.connector.num_tokens, vlm.llm.config.hidden_size)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("fusion", ["interleaved", "cross-attention", "modality-experts"])
def test_every_fusion_takes_a_video_slot(tiny, tiny_ctx, tiny_tokenizer, fusion):
    """An image and a 3-frame video in one row: one slot each, whatever the fusion; gradients reach
    the frames' time embeddings through every fusion."""
    vlm = tiny.make_vlm(
        tiny_tokenizer, tiny_ctx, connector="perceiver", connector_options={"max_frames": 4}, fusion=fusion
    )
    per_slot = vlm.tokens_per_image
    image_id = vlm.image_token_id
    ids = [7, *([image_id] * per_slot), 8, *([image_id] * per_slot), 9, 10]
    item = {"input_ids": ids, "labels": ids, "images": tiny.random_images(4, seed=5), "frames": [1, 3]}
    batch = TrainCollator(tiny_tokenizer.pad_token_id, vlm.vision_encoder.preprocess)([item])
    batch.pop("vlmplug_skipped", None)
    batch["labels"][batch["input_ids"] == image_id] = -100
    for p in vlm.parameters():
        p.requires_grad_(True)
    loss = vlm(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    grad = vlm.connector.time_embedding.grad
    assert (grad[:3].abs().sum(dim=1) > 0).all() and grad[3].abs().sum() == 0  # frames 0-2 used, not 3


def test_a_video_sample_trains_end_to_end(tiny, tiny_ctx, tiny_tokenizer, tmp_path):
    """Dataset -> collator -> forward -> backward with a real video file, frames compressed by the
    perceiver: the loss goes down on repeated steps."""
    ctx, tokenizer = tiny_ctx, tiny_tokenizer
    from vlmplug.plugins.peft import full

    vlm = _vlm(tiny, tokenizer, ctx, "perceiver", max_frames=4)
    tiny.build(full.SPEC, ctx, {}).apply(vlm)
    video = _video_file(tmp_path / "v.mp4", n=12)
    image = str(tmp_path / "i.png")
    Image.new("RGB", (32, 32), (0, 255, 0)).save(image)
    enc = SampleEncoder(
        tokenizer, "<image>", vlm.tokens_per_image, 512, video=VideoOptions(max_num_frames=4), video_per_slot=True
    )
    sample = {
        "messages": [
            {"role": "user", "content": "<image> then <video> what is it?"},
            {"role": "assistant", "content": "a red circle"},
        ],
        "images": [image],
        "videos": [video],
    }
    ds = EncodedDataset([sample, sample], enc, "videos", skip_bad=False)
    batch = TrainCollator(tokenizer.pad_token_id, vlm.vision_encoder.preprocess)([ds[0], ds[1]])
    batch.pop("vlmplug_skipped", None)
    assert batch["image_frames"].tolist() == [1, 4, 1, 4]
    opt = torch.optim.Adam([p for p in vlm.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(6):
        loss = vlm(**batch).loss
        loss.backward()
        if step == 0:  # every sampled frame reached the resampler, each with its time embedding
            assert (vlm.connector.time_embedding.grad.abs().sum(dim=1) > 0).all()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(b < a for a, b in itertools.pairwise(losses)) and losses[-1] < losses[0] - 0.5, losses


# -- a run ----------------------------------------------------------------------------------------

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def _video_rows(root: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """Videos of 5 frames, each a flat colour; the question asks for it (frame folders on disk)."""
    import json

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        name = list(COLORS)[int(rng.integers(len(COLORS)))]
        folder = root / f"v{seed}_{i}"
        folder.mkdir()
        for f in range(5):
            Image.new("RGB", (32, 32), COLORS[name]).save(folder / f"{f}.png")
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "<video>\nWhat color is the video?"},
                    {"role": "assistant", "content": name},
                ],
                "videos": [folder.name],
                "answers": [name] * 10,
            }
        )
    path = root / f"videos{seed}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return rows


def _video_recipe(tmp_path: Path) -> dict[str, Any]:
    from vlmplug.testing import TINY_RECIPE

    _video_rows(tmp_path, 16, 0)
    _video_rows(tmp_path, 4, 1)
    return {
        **TINY_RECIPE,
        "connector": {"name": "perceiver", "num_query_tokens": 4, "depth": 1, "heads": 2, "head_dim": 8},
        "datasets": [{"format": "messages", "path": str(tmp_path / "videos0.jsonl")}],
        "eval_datasets": [{"format": "messages", "path": str(tmp_path / "videos1.jsonl")}],
        "max_num_frames": 3,
    }


def test_a_video_recipe_trains_evaluates_and_reloads(tmp_path, run_recipe):
    import vlmplug

    result = run_recipe(_video_recipe(tmp_path), steps=3)
    assert result.model.connector.max_frames == 3  # the perceiver sized itself by max_num_frames
    (label,) = result.metrics["after"]
    assert "accuracy" in result.metrics["after"][label]["vqa"], result.metrics["after"]
    loaded = vlmplug.load(result.run_dir)
    assert loaded.connector.max_frames == 3
    ref = dict(result.model.connector.state_dict().items())
    assert all(torch.equal(v, ref[k]) for k, v in loaded.connector.state_dict().items())


def test_more_frames_than_the_perceiver_takes_is_refused_before_training(tmp_path, run_recipe):
    from vlmplug.errors import ConfigError

    recipe = _video_recipe(tmp_path)
    recipe["connector"] = {**recipe["connector"], "max_frames": 2}
    with pytest.raises(ConfigError, match=r"max_num_frames 3: connector 'perceiver' takes at most 2 frames"):
        run_recipe(recipe, steps=1)
