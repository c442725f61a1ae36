"""``llava`` and ``sharegpt``: LLaVA-Instruct / ShareGPT records become the same canonical samples as
the equivalent ``messages`` records; detection; every malformed row named; and a run trains on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vlmplug.errors import DataError
from vlmplug.plugins.datasets import llava as llava_plugin
from vlmplug.plugins.datasets import messages as messages_plugin
from vlmplug.plugins.datasets import sharegpt as sharegpt_plugin

#: A record as llava_instruct_150k.json writes it (two rounds about one COCO image).
LLAVA_ROW = {
    "id": "000000033471",
    "image": "000000033471.jpg",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "The back of the bus features an advertisement."},
    ],
}
#: The same conversation as the messages format writes it.
MESSAGES_ROW = {
    "id": "000000033471",
    "images": ["000000033471.jpg"],
    "messages": [
        {"role": "user", "content": "<image>\nWhat are the colors of the bus in the image?"},
        {"role": "assistant", "content": "The bus in the image is white and red."},
        {"role": "user", "content": "What feature can be seen on the back of the bus?"},
        {"role": "assistant", "content": "The back of the bus features an advertisement."},
    ],
}


def _load(tiny: Any, spec: Any, path: Path, on_bad_sample: str = "error", **options: Any) -> Any:
    return tiny.build(spec, tiny.make_ctx(on_bad_sample), {"path": str(path), **options})


def _strip(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sample.items() if k != "_where"}


def test_llava_records_equal_their_messages_form(tiny: Any, tmp_path: Path) -> None:
    (tmp_path / "llava.json").write_text(json.dumps([LLAVA_ROW]))
    (tmp_path / "messages.jsonl").write_text(json.dumps(MESSAGES_ROW) + "\n")
    got = _load(tiny, llava_plugin.SPEC, tmp_path / "llava.json", image_root=str(tmp_path / "coco"))
    want = _load(tiny, messages_plugin.SPEC, tmp_path / "messages.jsonl", image_root=str(tmp_path / "coco"))
    assert _strip(got[0]) == _strip(want[0])
    assert got[0]["images"] == [str(tmp_path / "coco" / "000000033471.jpg")]
    assert got[0]["_where"] == f"{tmp_path / 'llava.json'} record 0"


def test_sharegpt_system_prompt_images_and_roles(tiny: Any, tmp_path: Path) -> None:
    row = {
        "system": "You are a careful assistant.",
        "conversations": [
            {"from": "user", "value": "<image><image>Which picture is brighter?"},
            {"from": "assistant", "value": "The second."},
        ],
        "images": ["a.png", "b.png"],
    }
    (tmp_path / "sg.jsonl").write_text(json.dumps(row) + "\n")
    (sample,) = _load(tiny, sharegpt_plugin.SPEC, tmp_path / "sg.jsonl")
    assert sample["messages"] == [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "<image><image>Which picture is brighter?"},
        {"role": "assistant", "content": "The second."},
    ]
    assert sample["images"] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]


def test_text_only_record(tiny: Any, tmp_path: Path) -> None:
    row = {"id": "t1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    (tmp_path / "d.json").write_text(json.dumps([row]))
    (sample,) = _load(tiny, llava_plugin.SPEC, tmp_path / "d.json")
    assert sample["images"] == [] and sample["id"] == "t1"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"conversation": []}, "record 1: 'conversations' must be a non-empty list of {from, value}"),
        (
            {"conversations": [{"from": "function_call", "value": "x"}]},
            "record 1: conversations[0] has from: 'function_call'; expected one of human, user, gpt",
        ),
        ({"conversations": [{"from": "human", "value": 3}]}, "record 1: conversations[0] must be {from, value}"),
        (
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "  "}]},
            "record 1: messages[1] is an empty assistant turn",
        ),
        ({"conversations": [{"from": "human", "value": "Hi"}]}, "record 1: no assistant message"),
    ],
)
def test_malformed_records_are_named(tiny: Any, tmp_path: Path, row: dict, expected: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([LLAVA_ROW, row]))
    with pytest.raises(DataError) as e:
        _load(tiny, llava_plugin.SPEC, path)
    assert f"{path} {expected}" in str(e.value)
    skipped = _load(tiny, llava_plugin.SPEC, path, on_bad_sample="skip")
    assert len(skipped) == 1 and len(skipped.skipped) == 1


def test_detection(vlmplug_host: Any, tmp_path: Path) -> None:
    def detect(sample: dict) -> str | None:
        return vlmplug_host.detect_dataset_format(path="x.json", sample=sample)

    assert detect(LLAVA_ROW) == "llava"
    assert detect({"conversations": LLAVA_ROW["conversations"], "images": ["a.png"]}) == "sharegpt"
    assert detect(MESSAGES_ROW) == "messages"


def test_a_run_trains_on_llava_data(run_recipe: Any, tmp_path: Path) -> None:
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    rows = []
    for i in range(16):
        name = "red" if i % 2 else "blue"
        Image.new("RGB", (32, 32), colours[name]).save(tmp_path / f"{i}.png")
        rows.append(
            {
                "id": str(i),
                "image": f"{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is the picture?"},
                    {"from": "gpt", "value": name},
                ],
            }
        )
    (tmp_path / "train.json").write_text(json.dumps(rows))
    res = run_recipe(None, steps=4, datasets=[{"path": str(tmp_path / "train.json")}], eval_datasets=[], evaluators=[])
    import yaml

    assert res.metrics["train_samples"] == 16 and res.metrics["train"]["steps"] == 4
    saved = yaml.safe_load((res.run_dir / "resolved_recipe.yaml").read_text())
    assert saved["components"]["dataset_format"] == ["llava"]
    assert any("read as 'llava' (auto-detected)" in n for n in saved["notes"]), saved["notes"]
