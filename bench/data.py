"""The data pipeline at scale, on CPU: time to first step on a large synthetic dataset (cold, with the
tokenised-data cache, and streaming), and the training loader's throughput (samples/s and images/s:
images decoded, preprocessed and collated as the Trainer's dataloader does) with 0, 1 and 2 workers.

The bench writes ``--rows`` (default 100,000) ``messages`` rows about ``--images`` (default 2,000)
generated PNG files -- each row one question about one image, the questions varied so tokenisation
cannot be served from repeats -- then:

* runs ``vlmplug train`` on them twice with the tiny model (one step): the first run checks and
  tokenises every row and saves the encoding, the second reads it back; a third streams
  (``streaming: true``: nothing is read up front); each reports the seconds from the start of the run
  to the end of its first optimizer step;
* iterates the training loader (``EncodedDataset`` + ``TrainCollator``) for ``--batches`` batches of
  32 with each of ``--workers`` dataloader worker counts.

    python bench/data.py [--rows 100000] [--images 2000] [--workers 0,1,2] [--out bench/results/data.json]

Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def write_dataset(root: Path, rows: int, images: int) -> Path:
    """``images`` PNGs and ``rows`` messages rows about them; returns the JSONL path."""
    import random

    from PIL import Image

    rng = random.Random(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rgb = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (230, 220, 40)}
    for k in range(images):
        colour = COLOURS[k % 4]
        Image.new("RGB", (64, 64), rgb[colour]).save(root / "img" / f"{k}.png")
    path = root / "train.jsonl"
    with path.open("w") as f:
        for i in range(rows):
            k = rng.randrange(images)
            question = f"Question {i}: which colour fills picture number {k}?"
            row = {
                "messages": [
                    {"role": "user", "content": f"<image>\n{question}"},
                    {"role": "assistant", "content": COLOURS[k % 4]},
                ],
                "images": [f"img/{k}.png"],
            }
            f.write(json.dumps(row) + "\n")
    return path


def time_to_first_step(data: Path, out: Path, **extra: Any) -> dict[str, Any]:
    """Seconds from the start of a one-step run to the end of its first optimizer step, and the
    tokenised-data line the run printed."""
    from rich.console import Console
    from transformers import TrainerCallback

    import vlmplug.train.trainer as trainer_mod  # first: it quiets optional backends' start-up messages
    from vlmplug.manager import load
    from vlmplug.recipe import resolve
    from vlmplug.testing import TINY_RECIPE
    from vlmplug.train.run import run

    marks: dict[str, float] = {}

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            marks.setdefault("first_step", time.perf_counter())

    original = trainer_mod.VLMTrainer.__init__

    def with_mark(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), FirstStep()]
        original(self, *args, **kwargs)

    trainer_mod.VLMTrainer.__init__ = with_mark  # type: ignore[method-assign]
    host = load(autoload=False)
    recipe = {
        **TINY_RECIPE,
        "datasets": [{"path": str(data)}],
        "eval_datasets": [],
        "evaluators": [],
        "max_steps": 1,
        "max_seq_length": 64,
        **extra,
    }
    resolved = resolve(recipe, host.registry, host=host)
    t0 = time.perf_counter()
    result = run(resolved, host, output_dir=str(out), console=Console(quiet=True))
    trainer_mod.VLMTrainer.__init__ = original  # type: ignore[method-assign]
    return {
        "seconds_to_first_step": round(marks["first_step"] - t0, 2),
        "train_samples": result.metrics["train_samples"],
    }


def loader_throughput(data: Path, batches: int, workers: int) -> dict[str, Any]:
    """samples/s and images/s of the training loader (decode, preprocess, collate)."""
    import torch

    from vlmplug.plugins.datasets._messages import MessagesDataset
    from vlmplug.testing import tiny
    from vlmplug.train.data import EncodedDataset, SampleEncoder, TrainCollator

    class Config:
        path = str(data)
        image_root = None
        max_samples = batches * 32

    samples = MessagesDataset(Config())
    tok = tiny.make_tokenizer()
    tower = tiny.make_clip(tiny.make_ctx())
    encoder = SampleEncoder(tok, tiny.IMAGE_TOKEN, 16, 128)
    dataset = EncodedDataset(samples, encoder, "bench", skip_bad=False)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=32, num_workers=workers, collate_fn=TrainCollator(tok.pad_token_id, tower.preprocess)
    )
    n = images = 0
    t0 = time.perf_counter()
    for batch in loader:
        n += batch["input_ids"].shape[0]
        images += batch["pixel_values"].shape[0]
    seconds = time.perf_counter() - t0
    return {"samples_per_s": round(n / seconds, 1), "images_per_s": round(images / seconds, 1), "samples": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=2_000)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--workers", default="0,1,2", help="Comma-separated dataloader worker counts.")
    parser.add_argument("--out", default="bench/results/data.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vlmplug-bench-data-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        data = write_dataset(root, args.rows, args.images)
        written = round(time.perf_counter() - t0, 1)
        print(f"wrote {args.rows} rows about {args.images} images in {written}s")
        cold = time_to_first_step(data, root / "runs" / "cold")
        print(f"cold run: first step after {cold['seconds_to_first_step']}s")
        warm = time_to_first_step(data, root / "runs" / "warm")
        print(f"warm run (tokenised-data cache): first step after {warm['seconds_to_first_step']}s")
        streamed = time_to_first_step(data, root / "runs" / "stream", streaming=True)
        print(f"streaming run: first step after {streamed['seconds_to_first_step']}s")
        loaders = []
        for workers in [int(w) for w in args.workers.split(",")]:
            loader = {**loader_throughput(data, args.batches, workers), "workers": workers, "batch": 32}
            print(f"loader, {workers} workers: {loader['samples_per_s']} samples/s, {loader['images_per_s']} images/s")
            loaders.append(loader)
    result = {
        "rows": args.rows,
        "images": args.images,
        "dataset_write_s": written,
        "cold": cold,
        "warm": warm,
        "streaming": streamed,
        "loader": loaders,
        "model": "vlmplug.testing.TINY_RECIPE (tiny CLIP 32 px, tiny Llama), max_seq_length 64",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
