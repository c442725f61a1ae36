"""Streaming training data (``streaming: true``): rows are read, checked and tokenised inside the
DataLoader while training, never up front; the stream gives the same batches as the up-front path in
file order; DataLoader workers and processes each read their own rows, every row once per pass; bad
rows follow the same policies; weighted sources are drawn in proportion; missing ``max_steps`` and
formats that cannot stream are named before any model loads."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from vlmplug.errors import ConfigError, DataError
from vlmplug.manager import load
from vlmplug.plugins.datasets import messages as messages_plugin
from vlmplug.plugins.datasets._messages import MessagesDataset
from vlmplug.recipe import parse_set, resolve
from vlmplug.testing import TINY_RECIPE
from vlmplug.train.data import SKIPPED_KEY, SampleEncoder
from vlmplug.train.streaming import Share, StreamingDataset, StreamReport, StreamSources, shuffled

torch.set_num_threads(1)

QUIET = {**TINY_RECIPE, "name": "st", "eval_datasets": [], "evaluators": [], "num_threads": 1}
COLORS = {"red": (200, 10, 10), "blue": (10, 10, 200), "green": (10, 200, 10)}


def _row(color: str, question: str = "Color?", image: str | None = None) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": f"<image>\n{question}"}, {"role": "assistant", "content": color}],
        "images": [image or f"{color}.png"],
    }


def _write(tmp_path: Path, rows: list[Any], name: str = "train.jsonl") -> Path:
    d = tmp_path / "data"
    d.mkdir(parents=True, exist_ok=True)
    for color, rgb in COLORS.items():
        Image.new("RGB", (32, 32), rgb).save(d / f"{color}.png")
    (d / "corrupt.png").write_bytes(b"not a png at all")
    path = d / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _good_rows(n: int) -> list[dict[str, Any]]:
    names = list(COLORS)
    return [_row(names[i % 3], f"Color of shape {i}?") for i in range(n)]


def run(data: dict, tmp_path: Path, *sets: str, out: str = "run") -> Any:
    from rich.console import Console

    from vlmplug.train.run import run as run_training

    host = load(autoload=False)
    recipe = resolve(data, host.registry, host=host, sets=parse_set(sets))
    return run_training(recipe, host, output_dir=str(tmp_path / out), console=Console(quiet=True))


def _streaming(path: Path, **extra: Any) -> dict[str, Any]:
    return {**QUIET, "datasets": [{"path": str(path)}], "streaming": True, **extra}


# -- runs ------------------------------------------------------------------------------------------


def test_a_streaming_run_trains_and_never_reads_the_data_up_front(tmp_path: Path, monkeypatch: Any) -> None:
    from vlmplug.plugins.datasets import _messages
    from vlmplug.train import data as data_module
    from vlmplug.train import run as run_module

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("read up front under streaming")

    monkeypatch.setattr(data_module.EncodedDataset, "__init__", refuse)  # the up-front check and tokenising
    monkeypatch.setattr(run_module, "_encode_or_reuse", refuse)
    monkeypatch.setattr(_messages, "_rows", refuse)  # the messages reader's whole-file read
    path = _write(tmp_path, _good_rows(30))
    result = run(_streaming(path, max_steps=5, per_device_train_batch_size=4), tmp_path)
    train = result.metrics["train"]
    assert train["steps"] == 5
    assert all(math.isfinite(loss) for loss in (train["first_loss"], train["final_loss"], train["train_loss"]))
    assert result.metrics["train_samples"] is None  # nothing counted them up front
    resolved = (result.run_dir / "resolved_recipe.yaml").read_text()
    assert "streaming: training rows are read, checked and tokenised while training" in resolved


def _record_batches(monkeypatch: Any) -> list[dict[str, torch.Tensor]]:
    from vlmplug.train.trainer import VLMTrainer

    seen: list[dict[str, torch.Tensor]] = []
    original = VLMTrainer.compute_loss

    def compute_loss(self: Any, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        seen.append({k: inputs[k].clone() for k in ("input_ids", "labels", "pixel_values")})
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(VLMTrainer, "compute_loss", compute_loss)
    return seen


def test_the_first_batches_equal_the_up_front_ones_in_file_order(tmp_path: Path, monkeypatch: Any) -> None:
    rows = _good_rows(12)
    rows[3] = _row("red", image="missing.png")  # a bad row between good ones: both paths pass it over
    path = _write(tmp_path, rows)
    seen = _record_batches(monkeypatch)
    common = {"max_steps": 2, "per_device_train_batch_size": 4, "on_bad_sample": "skip"}
    up_front = {**QUIET, "datasets": [{"path": str(path)}], "train_sampling_strategy": "sequential", **common}
    run(up_front, tmp_path, out="up_front")
    expected = list(seen)
    seen.clear()
    run(_streaming(path, shuffle_buffer=0, **common), tmp_path, out="streamed")
    assert len(expected) == len(seen) == 2
    for want, got in zip(expected, seen):
        for key in ("input_ids", "labels", "pixel_values"):
            assert torch.equal(want[key], got[key]), key


def _bad_mid_file(tmp_path: Path) -> tuple[Path, list[Any]]:
    rows: list[Any] = _good_rows(8)
    rows[2] = _row("red", image="missing.png")  # line 3
    rows[4] = {"messages": [{"role": "user", "content": "Color?"}, {"role": "assistant", "content": "red"}]}
    rows[4]["images"] = ["red.png"]  # line 5: no <image> for its image
    rows[5] = "{not json"  # line 6
    rows[6] = _row("red", image="corrupt.png")  # line 7
    rows[7] = _row("blue and round and small " * 12)  # line 8: over-long, cut
    rows[7]["images"] = ["blue.png"]
    return _write(tmp_path, rows), rows


def test_bad_rows_mid_file_are_skipped_and_counted_per_reason(tmp_path: Path) -> None:
    path, _ = _bad_mid_file(tmp_path)
    data = _streaming(path, on_bad_sample="skip", shuffle_buffer=0, max_steps=3, per_device_train_batch_size=4)
    result = run(data, tmp_path)  # 12 samples of 4 good rows: every row is read, most more than once
    assert result.metrics["train"]["steps"] == 3
    skipped = result.metrics["skipped"]["train"]
    assert {r: e["count"] for r, e in skipped["reasons"].items()} == {
        "missing-image": 1,
        "image-count": 1,
        "malformed-row": 1,
        "unreadable-image": 1,
    }  # each row once, though met in several passes
    assert skipped["reasons"]["missing-image"]["first"] == [f"{path}:3"]
    assert skipped["reasons"]["malformed-row"]["first"] == [f"{path}:6"]
    assert result.metrics["truncated"] == {"train": 1, "first": [f"{path}:8"]}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_row_mid_file_stops_the_run_naming_its_line(tmp_path: Path, workers: int) -> None:
    path, _ = _bad_mid_file(tmp_path)
    data = _streaming(path, shuffle_buffer=0, max_steps=3, per_device_train_batch_size=2)
    data["dataloader_num_workers"] = workers
    with pytest.raises(DataError, match=rf"{path}:3: image not found: .*missing\.png"):
        run(data, tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed"


def test_streaming_without_max_steps_is_a_config_error(vlmplug_host: Any, tmp_path: Path) -> None:
    path = _write(tmp_path, _good_rows(4))
    data = _streaming(path)
    del data["max_steps"]
    with pytest.raises(ConfigError) as e:
        resolve(data, vlmplug_host.registry, host=vlmplug_host)
    assert any(p.startswith("streaming: true needs max_steps") for p in e.value.problems), e.value.problems
    data = _streaming(path, num_train_epochs=2, group_by_length=True)
    del data["max_steps"]
    with pytest.raises(ConfigError) as e:
        resolve(data, vlmplug_host.registry, host=vlmplug_host)
    assert len(e.value.problems) == 2 and "group_by_length" in e.value.problems[1], e.value.problems


def test_a_format_that_cannot_stream_is_named_before_the_model_loads(tmp_path: Path, monkeypatch: Any) -> None:
    from vlmplug.train import run as run_module

    monkeypatch.setattr(run_module, "_build_model", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(ConfigError) as e:
        run({**QUIET, "streaming": True}, tmp_path)  # TINY's synthetic shapes
    assert e.value.problems[0].startswith("datasets[0]: format 'shapes' cannot stream")
    assert "formats that stream: " in e.value.problems[-1] and "messages" in e.value.problems[-1]


# -- the IterableDataset ---------------------------------------------------------------------------


def _text_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i}?"},
                {"role": "assistant", "content": f"{i} {i % 7} {i * 3}"},
            ]
        }
        for i in range(n)
    ]


def _sources(tmp_path: Path, rows: list[Any], **kwargs: Any) -> StreamSources:
    from vlmplug.testing import tiny

    path = _write(tmp_path, rows)
    ctx = tiny.make_ctx("skip")
    ctx.streaming = True
    ds = tiny.build(messages_plugin.SPEC, ctx, {"path": str(path)})
    return StreamSources([ds], [1.0], ["messages"], **kwargs)


def _encoder() -> SampleEncoder:
    from vlmplug.testing import tiny

    return SampleEncoder(tiny.make_tokenizer(), "<image>", 4, 128)


def _ids_by_row(rows: list[dict[str, Any]], encoder: SampleEncoder) -> dict[tuple[int, ...], int]:
    ids = {tuple(encoder.encode(r, f"row {i}")[0]): i for i, r in enumerate(rows)}
    assert len(ids) == len(rows)  # each row tells itself apart
    return ids


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def test_dataloader_workers_read_every_row_once_per_pass(tmp_path: Path) -> None:
    rows = _text_rows(24)
    encoder = _encoder()
    row_of = _ids_by_row(rows, encoder)
    dataset = StreamingDataset(_sources(tmp_path, rows, seed=3, shuffle_buffer=5), encoder, skip_bad=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=_as_list)
    batches = iter(loader)
    passes = []
    for _ in range(3):  # 8 batches of 3 = 24 items: one pass, 12 rows from each worker
        items = [item for _ in range(8) for item in next(batches)]
        passes.append([row_of[tuple(item["input_ids"])] for item in items])
    for order in passes:
        assert Counter(order) == Counter(range(24))  # every row exactly once per pass
    assert passes[0] != passes[1] != passes[2]  # reshuffled, and dealt out anew, each pass


def test_processes_read_disjoint_rows_through_accelerates_shard(tmp_path: Path) -> None:
    """Under several processes accelerate wraps the dataset in IterableDatasetShard, which keeps one
    batch in every run of processes x batch items: each process fills exactly its positions."""
    from accelerate.data_loader import IterableDatasetShard

    rows = _text_rows(20)
    encoder = _encoder()
    row_of = _ids_by_row(rows, encoder)
    sources = _sources(tmp_path, rows, seed=1, shuffle_buffer=4)
    got: dict[int, list[int]] = {}
    for rank in (0, 1):
        dataset = StreamingDataset(sources, encoder, skip_bad=False, rank=rank, world_size=2, batch_size=5)
        shard = IterableDatasetShard(dataset, batch_size=5, num_processes=2, process_index=rank)
        items = iter(shard)
        taken = [next(items) for _ in range(10)]  # this process's half of one pass
        assert all(isinstance(item, dict) for item in taken)  # no placeholder gets through
        got[rank] = [row_of[tuple(item["input_ids"])] for item in taken]
    assert Counter(got[0] + got[1]) == Counter(range(20))  # every row once, on one process


def test_skips_and_cuts_travel_with_the_next_good_item(tmp_path: Path) -> None:
    rows: list[Any] = _text_rows(4)
    rows.insert(1, "{not json")  # line 2
    rows.insert(3, {"messages": [{"role": "user", "content": "no answer"}]})  # line 4
    dataset = StreamingDataset(_sources(tmp_path, rows, shuffle_buffer=0), _encoder(), skip_bad=True)
    items = dataset.items()
    first, second, third = next(items), next(items), next(items)
    assert first[SKIPPED_KEY] == []
    assert [s["where"].rsplit(":", 1)[1] for s in second[SKIPPED_KEY]] == ["2"]
    assert [s["reason"] for s in third[SKIPPED_KEY]] == ["malformed-row"]
    report = StreamReport()
    report.extend([*second[SKIPPED_KEY], *third[SKIPPED_KEY], *second[SKIPPED_KEY]])
    report.add({"reason": "truncated", "where": "x:9", "message": "cut", "vlmplug_truncated": True})
    assert report.total == 2 and report.truncated == ["x:9"]


def test_a_stream_of_only_bad_rows_is_an_error_not_a_hang(tmp_path: Path) -> None:
    dataset = StreamingDataset(_sources(tmp_path, ["{bad", "{worse"]), _encoder(), skip_bad=True)
    with pytest.raises(
        DataError, match=r"no usable sample in 8 passes in a row: the 16 row\(s\) it read were all bad \(2 skipped"
    ):
        next(dataset.items())


# -- sharing out, shuffling, mixing ----------------------------------------------------------------


def test_a_pass_is_dealt_out_to_the_streams_evenly_and_once() -> None:
    for streams in (1, 2, 3, 8):
        shares = [Share("7:0:2", s, streams) for s in range(streams)]
        owners = [[s for s in range(streams) if shares[s](i)] for i in range(101)]
        assert all(len(o) == 1 for o in owners)
        counts = Counter(o[0] for o in owners)
        assert max(counts.values()) - min(counts.values()) <= 1
    assert [Share("a", 0, 4)(i) for i in range(40)] != [Share("b", 0, 4)(i) for i in range(40)]


def test_the_shuffle_buffer_permutes_and_zero_keeps_file_order() -> None:
    import random

    assert list(shuffled(iter(range(50)), 0, random.Random(0))) == list(range(50))
    out = list(shuffled(iter(range(50)), 8, random.Random(0)))
    assert sorted(out) == list(range(50)) and out != list(range(50))
    assert out == list(shuffled(iter(range(50)), 8, random.Random(0)))


class _Rows:
    """A streaming source of ``n`` tiny samples named ``name:i``."""

    def __init__(self, name: str, n: int):
        self.name, self.n = name, n

    def stream(self, keep: Any = None) -> Any:
        for i in range(self.n):
            if keep is None or keep(i):
                yield i, {"messages": [], "_where": f"{self.name}:{i}"}


@pytest.mark.parametrize("streams", [1, 2])
def test_weighted_sources_are_drawn_in_proportion(streams: int) -> None:
    sources = StreamSources([_Rows("a", 7), _Rows("b", 50)], [1.0, 3.0], ["a", "b"], seed=11, shuffle_buffer=16)
    n = 8000
    drawn: Counter = Counter()
    per_row: Counter = Counter()
    for stream in range(streams):
        samples = sources.samples(stream, streams)
        for _ in range(n // streams):
            k, _, sample = next(samples)
            drawn[k] += 1
            per_row[sample["_where"]] += 1
    share = drawn[1] / n
    assert abs(share - 0.75) < 0.02, share  # 3:1 by weight, not by size (sd 0.005)
    assert {w for w in per_row if w.startswith("a:")} == {f"a:{i}" for i in range(7)}  # the small one repeats
    assert min(per_row[f"a:{i}"] for i in range(7)) >= 0.8 * n * 0.25 / 7  # each of its rows as often


def test_stream_reads_only_the_lines_it_keeps(tmp_path: Path) -> None:
    from vlmplug.testing import tiny

    path = _write(tmp_path, [_row("red"), "{not json", _row("blue"), _row("green", image="../outside.png")])
    ctx = tiny.make_ctx("error")
    ctx.streaming = True
    ds = tiny.build(messages_plugin.SPEC, ctx, {"path": str(path)})
    assert isinstance(ds, MessagesDataset) and ds.samples == []  # nothing read when built
    with pytest.raises(TypeError, match="opened for streaming"):
        len(ds)
    got = list(ds.stream(keep=lambda i: i % 2 == 0))
    assert [i for i, _ in got] == [0, 2] and all(isinstance(s, dict) for _, s in got)  # line 2 never parsed
    everything = dict(ds.stream())
    assert isinstance(everything[1], DataError) and everything[1].where == f"{path}:2"
    assert isinstance(everything[3], DataError) and everything[3].reason == "outside-data"
    eager = tiny.build(messages_plugin.SPEC, tiny.make_ctx("skip"), {"path": str(path)})
    assert [s["_where"] for s in eager] == [everything[0]["_where"], everything[2]["_where"]]  # the same rows


@pytest.mark.parametrize("fmt", ["llava", "sharegpt"])
def test_conversation_formats_stream_without_reading_up_front(tmp_path: Path, fmt: str) -> None:
    import dataclasses

    from vlmplug.testing import tiny

    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    path = tmp_path / "conv.jsonl"
    path.write_text(json.dumps(row) + "\n")
    spec = load().registry.get(fmt)
    ds = tiny.build(spec, dataclasses.replace(tiny.make_ctx(), streaming=True), {"path": str(path)})
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")  # read when streamed, not when built
    with pytest.raises(TypeError):
        len(ds)
    got = [sample for _, sample in ds.stream()]
    assert [s["messages"] for s in got] == [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ] * 2
