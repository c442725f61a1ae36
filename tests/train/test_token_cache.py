"""The tokenised-data cache: a second run of the same data reads the first run's encoding -- exactly the
same samples, skips and cuts -- without tokenising; any change the encoding depends on (a data file,
max_seq_length, the chat template) is a new key."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlmplug.train.data import EncodedDataset


def _rows(path: Path, n: int) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(n)
    ]
    rows.append({"messages": [{"role": "user", "content": "no answer"}]})  # a bad row: skipped, counted
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_a_rerun_reads_the_cache_and_a_change_misses_it(run_recipe: Any, tmp_path: Path, monkeypatch: Any) -> None:
    data = _rows(tmp_path / "d.jsonl", 12)
    recipe = {"datasets": [{"path": str(data)}], "eval_datasets": [], "evaluators": [], "on_bad_sample": "skip"}
    encoded: list[int] = []
    original = EncodedDataset._encode

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        encoded.append(len(self.samples))
        original(self, *args, **kwargs)

    monkeypatch.setattr(EncodedDataset, "_encode", counting)
    root = tmp_path / "runs"
    first = run_recipe(None, steps=1, output_dir=root / "a", **recipe)
    second = run_recipe(None, steps=1, output_dir=root / "b", **recipe)
    assert encoded == [12]  # the second run tokenised nothing
    caches = list((root / ".tokenized").iterdir())
    assert len(caches) == 1 and (caches[0] / "done.json").is_file()
    for res in (first, second):
        assert res.metrics["train_samples"] == 12
        assert res.metrics["skipped"]["train"]["total"] == 1
    assert first.metrics["train"]["first_loss"] == second.metrics["train"]["first_loss"]

    run_recipe(None, steps=1, output_dir=root / "c", max_seq_length=40, **recipe)
    assert encoded == [12, 12]  # another max_seq_length: another key
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    run_recipe(None, steps=1, output_dir=root / "d", **recipe)
    assert encoded == [12, 12, 12]  # the data file changed
    run_recipe(None, steps=1, output_dir=root / "e", cache_tokenized=False, **recipe)
    assert encoded == [12, 12, 12, 12] and len(list((root / ".tokenized").iterdir())) == 3
