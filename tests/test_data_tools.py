"""``vlmplug data negatives`` (POPE probes, "object does not exist" rows) and ``vlmplug data synth``
(an OpenAI-compatible endpoint, here a local stub server): the probes match the annotations, the
samplings pick what POPE's definitions pick on hand-computed data, retries back off and resume asks
only for what is missing."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vlmplug.cli import cli
from vlmplug.plugins import BUILTIN_PLUGINS
from vlmplug.plugins.datasets import _negatives_cli as negatives_cli
from vlmplug.plugins.datasets import _synth_cli as synth_cli
from vlmplug.plugins.datasets import negatives as negatives_plugin
from vlmplug.testing.chat_stub import ChatStub

PLUGIN = "vlmplug.plugins.datasets.negatives"


@pytest.fixture(autouse=True)
def plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLMPLUG_DISABLE_PLUGINS", raising=False)
    monkeypatch.setenv("VLMPLUG_LOAD_PLUGINS", "")
    monkeypatch.setenv("COLUMNS", "1000")


def host() -> Any:
    """Built-ins, plus this plugin until it is listed in BUILTIN_PLUGINS."""
    from vlmplug.manager import load

    extra = [] if PLUGIN in BUILTIN_PLUGINS else [(negatives_plugin, PLUGIN)]
    return load(extra_plugins=extra)


@pytest.fixture
def commands() -> None:
    host().register_commands(cli=cli)


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_a_plugin_with_only_commands_loads_and_adds_both() -> None:
    h = host()
    info = h.plugins[PLUGIN]
    assert info.status == "ok", info.error
    assert info.components == [] and info.hooks == ["register_commands"]
    assert h.broken == []
    h.register_commands(cli=cli)
    assert {"negatives", "synth"} <= set(cli.commands["data"].commands)


# -- negatives / POPE -------------------------------------------------------------------------------------

#: image -> objects. Frequencies (images): person 4, car 3, bicycle 2, dog 2, kite 2, umbrella 2, bench 1
#: (three annotations, one image), cat 1. With 3 per image: a, b, c, e, f qualify; d (2), g (0) do not.
OBJECTS = {
    "a.jpg": ["person", "car", "bicycle"],
    "b.jpg": ["person", "car", "dog"],
    "c.jpg": ["person", "bicycle", "dog"],
    "d.jpg": ["person", "car"],
    "e.jpg": ["umbrella", "kite", "cat"],
    "f.jpg": ["umbrella", "kite", "bench", "bench", "bench"],
    "g.jpg": [],
}
CATEGORIES = ["person", "car", "bicycle", "dog", "cat", "umbrella", "kite", "bench"]
#: Popular order: person, car, bicycle, dog, kite, umbrella (2 each, by name), bench, cat (1 each).
POPULAR = {
    "a.jpg": ["dog", "kite", "umbrella"],
    "b.jpg": ["bicycle", "kite", "umbrella"],
    "c.jpg": ["car", "kite", "umbrella"],
    "e.jpg": ["person", "car", "bicycle"],
    "f.jpg": ["person", "car", "bicycle"],
}
#: Co-occurrence: a: dog 2+1+1; b: bicycle 2+1+1; c: car 3+1+1; e: bench (with umbrella, kite) 2;
#: f: cat (with umbrella, kite) 2; the rest 0, then by frequency.
ADVERSARIAL = {
    "a.jpg": ["dog", "kite", "umbrella"],
    "b.jpg": ["bicycle", "kite", "umbrella"],
    "c.jpg": ["car", "kite", "umbrella"],
    "e.jpg": ["bench", "person", "car"],
    "f.jpg": ["cat", "person", "car"],
}


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    """A COCO instances file in annotations/, images in images/ (the COCO layout)."""
    images = [{"id": i + 1, "file_name": name} for i, name in enumerate(OBJECTS)]
    categories = [{"id": 10 + i, "name": name, "supercategory": "x"} for i, name in enumerate(CATEGORIES)]
    annotations = [
        {"id": len(images) * 10 + n, "image_id": i + 1, "category_id": 10 + CATEGORIES.index(obj), "bbox": [0, 0, 1, 1]}
        for i, objs in enumerate(OBJECTS.values())
        for n, obj in enumerate(objs)
    ]
    (tmp_path / "images").mkdir()
    for name in OBJECTS:
        (tmp_path / "images" / name).write_bytes(b"jpeg")
    path = tmp_path / "annotations" / "instances_tiny.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def pope(coco: Path, out: Path, *extra: Any) -> list[dict[str, Any]]:
    res = invoke("data", "negatives", coco, "--image-root", coco.parent.parent / "images", "--out", out, *extra)
    assert res.exit_code == 0, res.output
    return rows_of(out)


def by_image(rows: list[dict[str, Any]], label: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in rows:
        if r["label"] == label:
            out.setdefault(Path(r["images"][0]).name, []).append(r["object"])
    return out


@pytest.mark.parametrize("sampling", ["random", "popular", "adversarial"])
def test_pope_is_balanced_and_true_to_the_annotations(
    commands: None, coco: Path, tmp_path: Path, sampling: str
) -> None:
    out = tmp_path / "pope" / f"{sampling}.jsonl"
    rows = pope(coco, out, "--sampling", sampling)
    assert Counter(r["label"] for r in rows) == {"yes": 15, "no": 15}
    for r in rows:
        name = Path(r["images"][0]).name
        assert r["images"][0] == f"../images/{name}"  # relative to the output file
        assert r["messages"] == [
            {"role": "user", "content": f"<image>\nIs there a {r['object']} in the image?"},
            {"role": "assistant", "content": r["label"]},
        ]
        assert r["sampling"] == sampling and r["image_id"] == list(OBJECTS).index(name) + 1
        assert (r["object"] in OBJECTS[name]) == (r["label"] == "yes")
    yes, no = by_image(rows, "yes"), by_image(rows, "no")
    assert set(yes) == set(no) == {"a.jpg", "b.jpg", "c.jpg", "e.jpg", "f.jpg"}
    for name in yes:
        assert sorted(yes[name]) == sorted(set(OBJECTS[name]))  # each has exactly 3 objects
        assert len(set(no[name])) == 3
    if sampling != "random":
        assert no == {"popular": POPULAR, "adversarial": ADVERSARIAL}[sampling]


def test_pope_is_deterministic_per_seed(commands: None, coco: Path, tmp_path: Path) -> None:
    first = pope(coco, tmp_path / "1.jsonl", "--seed", 7, "--images", 3)
    again = pope(coco, tmp_path / "2.jsonl", "--seed", 7, "--images", 3)
    other = pope(coco, tmp_path / "3.jsonl", "--seed", 8, "--images", 3)
    assert first == again
    assert first != other
    assert len({r["images"][0] for r in first}) == 3


def test_pope_json_summary_counts(commands: None, coco: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    res = invoke("data", "negatives", coco, "--out", out, "--sampling", "popular", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["rows"] == 30 and info["yes"] == info["no"] == 15
    assert info["images_read"] == 7 and info["images_used"] == 5
    assert info["images_skipped"] == {"fewer than 3 objects": 1, "no known objects": 1}
    assert info["input"] == "coco-instances" and info["vocabulary"] == 8
    assert info["missing_images"] == 5  # no --image-root: the JSON's folder holds no images
    assert info["images_outside_out_folder"] == 0  # annotations/ lies under the output's folder


def test_negatives_mode_writes_sentences_at_the_ratio(commands: None, coco: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    rows = pope(coco, out, "--mode", "negatives", "--per-image", 1, "--negative-ratio", 2, "--sampling", "popular")
    assert Counter(r["label"] for r in rows) == {"yes": 6, "no": 12}  # every image with an object: a-f
    for r in rows:
        name, obj = Path(r["images"][0]).name, r["object"]
        answer = r["messages"][1]["content"]
        if r["label"] == "no":
            assert obj not in OBJECTS[name]
            assert answer == f"No, there is no {obj} in the image."
        else:
            assert obj in OBJECTS[name]
            assert answer.startswith("Yes, there is a")
    assert by_image(rows, "no")["a.jpg"] == ["dog", "kite"]


def test_option_errors(commands: None, coco: Path, tmp_path: Path) -> None:
    res = invoke("data", "negatives", coco, "--out", tmp_path / "x.jsonl", "--images", 9)
    assert res.exit_code == 2 and "only 5 image(s) can give rows" in res.output
    res = invoke("data", "negatives", coco, "--out", tmp_path / "x.jsonl", "--negative-ratio", 2)
    assert res.exit_code == 2 and "--mode negatives" in res.output
    (tmp_path / "there.jsonl").write_text("")
    res = invoke("data", "negatives", coco, "--out", tmp_path / "there.jsonl")
    assert res.exit_code == 2 and "--overwrite" in res.output


def test_object_records_and_bad_rows(commands: None, tmp_path: Path) -> None:
    src = tmp_path / "objects.jsonl"
    objects = {"a.png": ["Dog", "cat", "bird"], "b.png": ["car", "bus", "dog"], "c.png": ["tree", "sky", "road"]}
    lines = [json.dumps({"image": image, "objects": objs}) for image, objs in objects.items()]
    lines.append(json.dumps({"image": "d.png", "objects": "dog"}))
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.jsonl"
    res = invoke("data", "negatives", src, "--out", out)
    assert res.exit_code == 1 and f"{src}:4: 'objects' must be a list" in res.output and "--skip-bad" in res.output
    res = invoke("data", "negatives", src, "--out", out, "--skip-bad", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["bad_records"] == 1 and info["vocabulary"] == 8 and info["yes"] == info["no"] == 9
    for r in rows_of(out):
        present = [o.lower() for o in objects[r["images"][0]]]
        assert (r["object"] in present) == (r["label"] == "yes")


def test_caption_objects_are_vocabulary_words() -> None:
    patterns = negatives_cli.name_patterns(negatives_cli.COCO_CATEGORIES)
    found = negatives_cli.objects_in(
        "Two dogs and three people next to a hot dog stand, a Teddy Bear on a bench.", patterns
    )
    assert found == {"dog", "person", "hot dog", "teddy bear", "bench"}
    assert negatives_cli.objects_in("A catalogue of carpets.", patterns) == set()
    assert len(negatives_cli.COCO_CATEGORIES) == len(set(negatives_cli.COCO_CATEGORIES)) == 80


def test_captions_with_a_vocabulary(commands: None, tmp_path: Path) -> None:
    src = tmp_path / "caps.jsonl"
    src.write_text(
        json.dumps({"image": "a.png", "captions": ["A cat on a sofa.", "A lamp and a cat."]})
        + "\n"
        + json.dumps({"image": "b.png", "caption": "Two dogs near a lamp."})
        + "\n"
    )
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("# things\ncat\ndog\nlamp\nsofa\ntable\n")
    out = tmp_path / "c.jsonl"
    res = invoke("data", "negatives", src, "--out", out, "--vocabulary", vocab, "--per-image", 2, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["input"] == "captions"
    yes, no = by_image(rows_of(out), "yes"), by_image(rows_of(out), "no")
    assert len(yes["a.png"]) == 2 and set(yes["a.png"]) <= {"cat", "lamp", "sofa"}  # "A cat on a sofa." ...
    assert sorted(no["a.png"]) == ["dog", "table"]
    assert sorted(yes["b.png"]) == ["dog", "lamp"]  # "dogs" is a dog


# -- synth ------------------------------------------------------------------------------------------------


class Stub(ChatStub):
    """A captioner: a canned caption (or Q/A array) per image, unless a script says otherwise for that
    image: a list of ``(status, headers, body)`` answers, used in turn."""

    def __init__(self) -> None:
        self.script: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
        self.replies: dict[str, str] = {}
        super().__init__(self._answer)

    def _answer(self, request: dict[str, Any]) -> Any:
        url = request["body"]["messages"][0]["content"][1]["image_url"]["url"]
        request["image"] = name = base64.b64decode(url.split(",", 1)[1]).decode()  # the images hold their names
        with self.lock:
            scripted = self.script.get(name)
            return scripted.pop(0) if scripted else self.replies.get(name, f"A caption of {name}.")

    def asked(self) -> list[str]:
        return [r["image"] for r in self.requests]


@pytest.fixture
def stub() -> Iterator[Stub]:
    with Stub() as server:
        yield server


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(synth_cli, "_sleep", waited.append)
    return waited


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.jpg", "c.jpeg", "d.webp"):
        (folder / name).write_bytes(name.encode())
    (folder / "notes.txt").write_text("not an image")
    return folder


def synth(stub: Stub, images: Path, out: Path, *extra: Any) -> Any:
    return invoke("data", "synth", images, "--base-url", stub.url, "--model", "m", "--out", out, "--json", *extra)


def test_synth_captions_with_retries_and_backoff(
    commands: None, stub: Stub, images: Path, tmp_path: Path, delays: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.script["a.png"] = [(503, {}, b"busy")]
    stub.script["b.jpg"] = [(429, {"Retry-After": "7"}, b"slow down")]
    monkeypatch.setenv("STUB_KEY", "sk-test")
    out = tmp_path / "out" / "caps.jsonl"
    res = synth(stub, images, out, "--api-key-env", "STUB_KEY")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["written"] == 4 and info["failed"] == 0 and info["retries"] == 2
    assert stub.asked() == ["a.png", "a.png", "b.jpg", "b.jpg", "c.jpeg", "d.webp"]
    assert 0.5 <= delays[0] <= 1.0 and delays[1] == 7.0  # jittered first backoff; Retry-After honoured
    assert {r["path"] for r in stub.requests} == {"/v1/chat/completions"}
    assert {r["auth"] for r in stub.requests} == {"Bearer sk-test"}
    first = stub.requests[0]["body"]
    assert first["model"] == "m" and first["messages"][0]["content"][0]["text"] == synth_cli.PROMPTS["caption"]
    assert first["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert stub.requests[-1]["body"]["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/webp;")
    rows = rows_of(out)
    assert rows[0] == {
        "messages": [
            {"role": "user", "content": "<image>\nDescribe this image."},
            {"role": "assistant", "content": "A caption of a.png."},
        ],
        "images": ["../imgs/a.png"],
        "generator": {"model": "m", "prompt": "caption"},
    }


def test_backoff_grows_is_capped_and_gives_up(delays: list[float]) -> None:
    backoff = synth_cli.Backoff(base=1.0, cap=5.0)

    def down() -> bytes:
        raise synth_cli.Transient("connection error")

    with pytest.raises(synth_cli.ImageFailed, match="gave up after 5 attempt"):
        synth_cli.with_retries(down, 4, backoff)
    for attempt, d in enumerate(delays):
        full = min(5.0, 2.0**attempt)
        assert full / 2 <= d <= full
    assert len(delays) == 4


def test_synth_counts_malformed_replies_and_skipped_items(
    commands: None, stub: Stub, images: Path, tmp_path: Path, delays: list[float]
) -> None:
    stub.replies = {
        "a.png": 'Sure!\n```json\n[{"question": "What is it?", "answer": "A cat."}, {"question": "x"}, '
        '{"question": "Where?", "answer": "Indoors."}]\n```',
        "b.jpg": '[{"question": "Colour?", "answer": "Red."}]',
        "c.jpeg": "Here you go: [{'question': 'broken'",
        "d.webp": '{"question": "not", "answer": "an array"}',
    }
    out = tmp_path / "qa.jsonl"
    res = synth(stub, images, out, "--prompt", "qa")
    assert res.exit_code == 1
    info = json.loads(res.output)
    assert info["written"] == 2 and info["failed"] == 2 and info["errors"] == {"malformed-reply": 2}
    assert info["qa_items_skipped"] == 1 and delays == []
    rows = rows_of(out)
    assert rows[0]["messages"] == [
        {"role": "user", "content": "<image>\nWhat is it?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Where?"},
        {"role": "assistant", "content": "Indoors."},
    ]
    assert rows[1]["images"] == ["imgs/b.jpg"]


def test_synth_resumes_with_only_the_missing_images(
    commands: None, stub: Stub, images: Path, tmp_path: Path, delays: list[float]
) -> None:
    stub.script["c.jpeg"] = [(400, {}, b'{"error": "bad image"}')]
    out = tmp_path / "r.jsonl"
    res = synth(stub, images, out)
    assert res.exit_code == 1
    info = json.loads(res.output)
    assert info["written"] == 3 and info["errors"] == {"http-400": 1} and delays == []
    assert "bad image" in info["failures"][0]["message"]
    # killed after 2 images, in the middle of writing the third row
    out.write_text("".join(out.read_text().splitlines(keepends=True)[:2]) + '{"messages": [{"role": "us')
    stub.requests.clear()
    res = synth(stub, images, out)
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert stub.asked() == ["c.jpeg", "d.webp"]
    assert info["already_done"] == 2 and info["written"] == 2 and info["dropped_partial_line"] is True
    assert [r["images"][0] for r in rows_of(out)] == ["imgs/a.png", "imgs/b.jpg", "imgs/c.jpeg", "imgs/d.webp"]
    stub.requests.clear()
    assert synth(stub, images, out).exit_code == 0 and stub.requests == []


def test_synth_concurrent_requests_write_every_image_once(
    commands: None, stub: Stub, images: Path, tmp_path: Path, delays: list[float]
) -> None:
    out = tmp_path / "many.jsonl"
    res = synth(stub, images, out, "--concurrency", 3)
    assert res.exit_code == 0, res.output
    assert sorted(stub.asked()) == ["a.png", "b.jpg", "c.jpeg", "d.webp"]
    assert sorted(r["images"][0] for r in rows_of(out)) == ["imgs/a.png", "imgs/b.jpg", "imgs/c.jpeg", "imgs/d.webp"]


def test_synth_option_errors(commands: None, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.jsonl"
    res = invoke("data", "synth", images, "--base-url", "127.0.0.1:9/v1", "--model", "m", "--out", out)
    assert res.exit_code == 2 and "not an http(s) URL" in res.output
    res = invoke(
        "data",
        "synth",
        images,
        "--base-url",
        "http://127.0.0.1:9",
        "--model",
        "m",
        "--out",
        out,
        "--api-key-env",
        "NO_SUCH_VAR_X",
    )
    assert res.exit_code == 2 and "NO_SUCH_VAR_X" in res.output
    res = invoke("data", "synth", tmp_path / "none", "--base-url", "http://127.0.0.1:9", "--model", "m", "--out", out)
    assert res.exit_code == 2 and "not a folder" in res.output
