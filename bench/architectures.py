"""Every vision encoder x connector x fusion on the quickstart's shapes task, for the same CPU budget.

Each combination trains from scratch (random-init tiny towers, built from configs) for
``--seconds`` of training time (``max_train_seconds``: evaluations excluded) at the quickstart's
settings, then is evaluated on the 400 held-out questions and the same questions on blank images.
The table (written to bench/results/architectures.json and .md) has, per combination: held-out
accuracy overall and per question type, accuracy on blank images (a model that looks falls to the
answer prior there), the answer-prior baseline, trainable parameters, image tokens per image, steps
done and the median step time.

    python bench/architectures.py [--seconds 60] [--only clip+qformer+interleaved] [--threads 2]
        [--only-encoder eva-clip --out architectures-eva-clip]   # e.g. in the venv that has timm

Combinations whose capabilities do not fit (e.g. pixel-shuffle needs a patch grid) are listed with
the reason instead; components with a missing extra are skipped with the install line.
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmplug import deps, hookimpl
from vlmplug.errors import ConfigError
from vlmplug.manager import load
from vlmplug.recipe import load_recipe, parse_set, resolve

RESULTS = Path(__file__).parent / "results"
FAMILIES = ("vision_encoder", "connector", "fusion")
#: Sized for the quickstart's 16 patch tokens and random-init tiny LLM: resamplers compress 16 -> 8
#: tokens (the guide's trade-off: fewer tokens, less detail); Flamingo / CogVLM keep the LLM frozen,
#: which cannot work when it starts random, so here it trains as in every other combination.
#: Encoders without a tiny preset: ``patches`` at the quickstart's 64 px in 16 px patches (16 tokens).
ENCODERS: dict[str, dict[str, Any]] = {"patches": {"patch_size": 16, "max_patches": 16, "hidden_size": 64}}
OPTIONS: dict[str, dict[str, Any]] = {
    "perceiver": {"num_query_tokens": 8, "heads": 4, "head_dim": 32},
    "qformer": {"num_query_tokens": 8},
    "qformer-text": {"num_query_tokens": 8},
    "cross-attention": {"train_llm": True, "every_n_layers": 1},
    "modality-experts": {"train_llm": True},
}


class StepClock:
    """Step times from the run's own lifecycle hooks."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    @hookimpl
    def on_train_start(self, state: Any) -> None:
        self.stamps = [time.perf_counter()]

    @hookimpl
    def on_log(self, state: Any, metrics: dict) -> None:
        if "loss" in metrics:
            self.stamps.append(time.perf_counter())


def combinations(host: Any) -> tuple[list[tuple[Any, ...]], list[dict[str, str]]]:
    usable, skipped = {}, []
    for fam in FAMILIES:
        usable[fam] = []
        for spec in host.registry.family(fam):
            missing = deps.missing_extras(spec)
            if missing:
                skipped.append(
                    {
                        "component": spec.name,
                        "why": f"missing {', '.join(missing)}: {deps.install_hint(missing.values())}",
                    }
                )
            else:
                usable[fam].append(spec)
    return list(itertools.product(*(usable[f] for f in FAMILIES))), skipped


def train_one(
    host: Any, clock: StepClock, combo: tuple[Any, ...], seconds: float, out: Path, extra: list[str]
) -> dict[str, Any]:
    from rich.console import Console

    from vlmplug.train.run import run

    encoder, connector, fusion = combo
    data, source = load_recipe("quickstart")
    data = {**data, "vision_encoder": {**data["vision_encoder"], "name": encoder.name}}
    if encoder.name in ENCODERS:
        data["vision_encoder"] = {"name": encoder.name, **ENCODERS[encoder.name]}
    elif encoder.name != "clip":  # the quickstart's tower options are CLIP's; take the encoder's tiny preset
        data["vision_encoder"] = {
            "name": encoder.name,
            **encoder.test_options,
            "tiny_image_size": 64,
            "tiny_patch_size": 16,
            "tiny_hidden_size": 64,
            "tiny_layers": 3,
            "tiny_heads": 4,
        }
    data.update(
        connector={"name": connector.name, **OPTIONS.get(connector.name, {})},
        fusion={"name": fusion.name, **OPTIONS.get(fusion.name, {})},
    )
    sets = parse_set(
        [
            f"max_train_seconds={seconds}",
            "max_steps=100000",
            "eval_every_steps=null",
            "lr_scheduler_type=constant_with_warmup",
            "logging_steps=1",
            "max_seq_length=96",
            *extra,
        ]
    )
    recipe = resolve(data, host.registry, host=host, sets=sets, source=source)
    result = run(recipe, host, output_dir=str(out), console=Console(quiet=True))
    m = result.metrics
    after = m["after"]["shapes"]["vqa"]
    steps = [b - a for a, b in itertools.pairwise(clock.stamps)]
    trainable, _ = result.model.trainable_parameters()
    return {
        "encoder": encoder.name,
        "connector": connector.name,
        "fusion": fusion.name,
        "accuracy": round(after["accuracy"], 4),
        "per_type": {k: round(v, 3) for k, v in after["per_type"].items()},
        "blank_image_accuracy": round(m["after"]["blank-images"]["vqa"]["accuracy"], 4),
        "answer_prior": round(m["baselines"]["shapes"]["vqa"]["answer_prior"]["accuracy"], 4),
        "trainable_params_M": round(trainable / 1e6, 3),
        "tokens_per_image": int(result.model.connector.num_tokens),
        "steps": m["train"]["steps"],
        "median_step_ms": round(1000 * statistics.median(steps[1:] or steps), 1),
        "train_seconds": m["train"]["wall_time_s"],
    }


def markdown(rows: list[dict[str, Any]], rejected: list[dict[str, str]], seconds: float, sets: list[str]) -> str:
    lines = [
        f"Quickstart shapes task, {seconds:g} s of training each (2 CPU cores); held-out accuracy "
        "(400 questions), per type, on blank images, and the answer prior."
        + (f" Overrides: {', '.join(sets)}." if sets else ""),
        "",
        "| encoder | connector | fusion | accuracy | colour | shape | count | presence | blank | prior | "
        "trainable (M) | tokens/image | steps | step (ms) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r["per_type"]
        lines.append(
            f"| {r['encoder']} | {r['connector']} | {r['fusion']} | {100 * r['accuracy']:.1f}% | "
            f"{100 * t.get('color', 0):.0f}% | {100 * t.get('shape', 0):.0f}% | "
            f"{100 * t.get('count', 0):.0f}% | {100 * t.get('presence', 0):.0f}% | "
            f"{100 * r['blank_image_accuracy']:.1f}% | {100 * r['answer_prior']:.1f}% | "
            f"{r['trainable_params_M']} | {r['tokens_per_image']} | {r['steps']} | {r['median_step_ms']} |"
        )
    for r in rejected:
        lines.append(f"\n- not combined: {r['combination']}: {r['why']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--only", action="append", default=[], help="encoder+connector+fusion (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only-encoder", action="append", default=[], help="run these encoders only (repeatable)")
    parser.add_argument("--out", default="architectures", help="results name under bench/results/")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE recipe override")
    parser.add_argument("--only-connector", action="append", default=[], help="run these connectors only")
    parser.add_argument("--only-fusion", action="append", default=[], help="run these fusions only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = StepClock()
    host = load(extra_plugins=[(clock, "step-clock")])
    combos, skipped = combinations(host)
    rows, rejected = [], []
    for combo in combos:
        name = "+".join(s.name for s in combo)
        picked = [(args.only_encoder, combo[0]), (args.only_connector, combo[1]), (args.only_fusion, combo[2])]
        if (args.only and name not in args.only) or any(names and spec.name not in names for names, spec in picked):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                row = train_one(host, clock, combo, args.seconds, Path(tmp) / "run", args.sets)
            except ConfigError as e:
                rejected.append({"combination": name, "why": "; ".join(e.problems)})
                print(f"{name}: not combined ({e.problems[0][:120]})")
                continue
        rows.append(row)
        write_results(args, rows, rejected, skipped)  # after every combination: a stopped run keeps its rows
        print(
            f"{name}: accuracy {row['accuracy']:.3f} (prior {row['answer_prior']:.3f}, blank "
            f"{row['blank_image_accuracy']:.3f}) in {row['steps']} steps",
            flush=True,
        )
    write_results(args, rows, rejected, skipped)
    print(f"-> {RESULTS / args.out}.md")


def write_results(args: Any, rows: list[dict], rejected: list[dict], skipped: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "seconds": args.seconds,
        "threads": args.threads,
        "sets": args.sets,
        "rows": rows,
        "rejected": rejected,
        "skipped": skipped,
    }
    (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(rows, rejected, args.seconds, args.sets))


if __name__ == "__main__":
    main()
