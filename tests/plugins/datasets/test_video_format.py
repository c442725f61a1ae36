"""``video``: video QA and caption rows (a video file, frame folder, frame list or ``{frames, fps}``)
become samples with one ``<video>`` and the resolved video; conversation rows are read too; bad rows
are named and follow the skip policy; detection; and runs train on frame lists and an MPEG-4 file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from vlmplug.errors import DataError
from vlmplug.plugins.datasets import video as video_plugin
from vlmplug.testing.tiny import write_video


def _load(tiny: Any, path: Path, on_bad_sample: str = "error", **options: Any) -> Any:
    return tiny.build(video_plugin.SPEC, tiny.make_ctx(on_bad_sample), {"path": str(path), **options})


def _frames(folder: Path, n: int = 4, base: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (32, 32), (base + 40 * i, 100, 100)).save(folder / f"{i:03d}.png")
    return [f"{folder.name}/{i:03d}.png" for i in range(n)]


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _mp4(path: Path, n: int = 6, size: int = 32) -> bool:
    """A tiny MPEG-4 written with PyAV; False when PyAV cannot write one here."""
    try:
        write_video(path, n=n, fps=5, size=size, step=20)
    except Exception:
        return False
    return True


def test_qa_and_caption_rows(tiny: Any, tmp_path: Path) -> None:
    frames = _frames(tmp_path / "clip1")
    rows = [
        {"video": frames, "question": "What color?", "answer": "red", "id": "q1"},
        {"video": {"frames": frames, "fps": 30}, "caption": "A slow fade."},
        {"video": "clip1", "question": "Is it moving?", "answer": "no"},
        {"video": "clips/v.mp4", "question": "What happens?", "answer": "nothing"},
    ]
    path = _jsonl(tmp_path / "video.jsonl", rows)
    ds = _load(tiny, path)
    assert len(ds) == 4 and ds.skipped == []
    full = [str(tmp_path / f) for f in frames]
    assert ds[0] == {
        "messages": [
            {"role": "user", "content": "<video>\nWhat color?"},
            {"role": "assistant", "content": "red"},
        ],
        "images": [],
        "videos": [full],
        "id": "q1",
        "_where": f"{path}:1",
    }
    assert ds[1] == {
        "messages": [
            {"role": "user", "content": "<video>\nDescribe what happens in the video."},
            {"role": "assistant", "content": "A slow fade."},
        ],
        "images": [],
        "videos": [{"frames": full, "fps": 30}],
        "captions": ["A slow fade."],
        "_where": f"{path}:2",
    }
    assert ds[2]["videos"] == [str(tmp_path / "clip1")]
    assert ds[3]["videos"] == [str(tmp_path / "clips" / "v.mp4")]
    ds = _load(tiny, path, prompt="Question: {question}\n<video>", video_root=str(tmp_path), max_samples=1)
    assert len(ds) == 1 and ds[0]["messages"][0]["content"] == "Question: What color?\n<video>"


def test_conversation_and_messages_rows(tiny: Any, tmp_path: Path) -> None:
    frames = _frames(tmp_path / "f")
    rows = [
        {  # Video-LLaVA / Video-ChatGPT style
            "id": "v1",
            "video": frames,
            "conversations": [
                {"from": "human", "value": "<video>\nWhat is shown?"},
                {"from": "gpt", "value": "Colours."},
            ],
        },
        {
            "video": "f",
            "messages": [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": "Grey."}],
        },
    ]
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(rows))
    ds = _load(tiny, path)
    assert ds[0]["messages"] == [
        {"role": "user", "content": "<video>\nWhat is shown?"},
        {"role": "assistant", "content": "Colours."},
    ]
    assert ds[0]["id"] == "v1" and ds[0]["_where"] == f"{path} record 0"
    assert ds[1]["messages"][0] == {"role": "user", "content": "<video>\nDescribe."}  # placed before the text
    assert ds[1]["videos"] == [str(tmp_path / "f")]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"question": "q?", "answer": "a"}, "no 'video'"),
        ({"video": 3, "question": "q?", "answer": "a"}, "'video' must be a video file"),
        ({"video": "v.mp4", "question": "q?"}, "'answer' must be a non-empty string"),
        ({"video": "v.mp4", "question": "  ", "answer": "a"}, "'question' must be a non-empty string"),
        ({"video": "v.mp4", "caption": ""}, "'caption' must be a non-empty string"),
        ({"video": "v.mp4", "text": "x"}, "no 'question' + 'answer' or 'caption'"),
        (
            {
                "video": "v.mp4",
                "messages": [{"role": "user", "content": "<video><video>"}, {"role": "assistant", "content": "a"}],
            },
            "2 '<video>' placeholders for one video",
        ),
        ({"video": "../v.mp4", "caption": "c"}, "is outside the dataset folder"),
    ],
)
def test_bad_rows_are_named_and_follow_the_skip_policy(tiny: Any, tmp_path: Path, row: dict, expected: str) -> None:
    path = _jsonl(tmp_path / "v.jsonl", [{"video": "v.mp4", "caption": "fine"}, row])
    with pytest.raises(DataError) as e:
        _load(tiny, path)
    assert f"{path}:2" in str(e.value) and expected in str(e.value)
    ds = _load(tiny, path, on_bad_sample="skip")
    assert len(ds) == 1 and [s.where for s in ds.skipped] == [f"{path}:2"]


def test_prompts_are_checked(tiny: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"prompt: .* must contain exactly one <video> and"):
        _load(tiny, tmp_path / "v.jsonl", prompt="{question}")
    with pytest.raises(ValueError, match=r"caption_prompt: .* must contain exactly one <video>"):
        _load(tiny, tmp_path / "v.jsonl", caption_prompt="Describe.")


def test_detection(vlmplug_host: Any) -> None:
    def detect(sample: dict) -> str | None:
        return vlmplug_host.detect_dataset_format(path="v.jsonl", sample=sample)

    assert detect({"video": "a.mp4", "question": "q", "answer": "a"}) == "video"
    assert detect({"video": ["f0.png"], "caption": "c"}) == "video"
    assert detect({"image": "a.png", "caption": "c"}) == "caption"
    assert detect({"video": "a.mp4"}) is None


def test_a_run_trains_on_frame_lists(run_recipe: Any, tmp_path: Path) -> None:
    rows = []
    for k in range(4):
        frames = _frames(tmp_path / f"clip{k}", n=3, base=60 * (k % 2))
        rows.append({"video": frames, "question": "Is it bright?", "answer": "yes" if k % 2 else "no"})
    path = _jsonl(tmp_path / "train.jsonl", rows)
    res = run_recipe(None, steps=2, datasets=[str(path)], eval_datasets=[], evaluators=[], max_num_frames=2)
    assert res.metrics["train_samples"] == 4 and res.metrics["train"]["steps"] == 2
    saved = yaml.safe_load((res.run_dir / "resolved_recipe.yaml").read_text())
    assert saved["components"]["dataset_format"] == ["video"]  # detected from the rows


def test_a_run_trains_on_an_mpeg4_file(run_recipe: Any, tmp_path: Path) -> None:
    pytest.importorskip("av")
    if not _mp4(tmp_path / "clip.mp4"):
        pytest.skip("PyAV cannot write MPEG-4 here")
    rows = [
        {"video": "clip.mp4", "caption": "It brightens."},
        {"video": "clip.mp4", "question": "Dark?", "answer": "no"},
    ]
    path = _jsonl(tmp_path / "train.jsonl", rows)
    res = run_recipe(
        None,
        steps=1,
        datasets=[{"format": "video", "path": str(path)}],
        eval_datasets=[],
        evaluators=[],
        max_num_frames=2,
    )
    assert res.metrics["train_samples"] == 2 and res.metrics["train"]["steps"] == 1
