"""GPU check: training throughput, MFU and peak memory of a ~1B LLaVA-style model built by vlmplug.

Everything is built from configs with random weights (nothing is downloaded, no dataset is read):

* **1B VLM** -- a CLIP ViT-L/14-336-shaped tower (vlmplug's ``clip`` encoder, ``model: tiny`` with
  ViT-L's sizes: 336 px, patch 14, width 1024, 24 layers, 16 heads, feature layer -2, so 576 patch
  tokens per image), vlmplug's ``mlp`` connector (LLaVA-1.5, 1024 -> 2048 -> 2048) and
  ``interleaved`` fusion into a Llama-architecture LLM built with ``AutoModelForCausalLM.from_config``
  (hidden 2048, 16 layers, 32 heads, intermediate 5632, vocab 32000: ~0.95B parameters). The PEFT
  method (``lora`` r16 / ``qlora`` NF4 + r16 / ``full``) and the optimizer-stack plugins
  (``flash-attention``, ``liger``, ``gradient-checkpointing``) are vlmplug's own components, built
  through their factories and applied in the order ``vlmplug.train.run`` applies them: LLM load
  kwargs from the method and the stack, PEFT ``apply``, module plan, stack ``patch_model``. QLoRA
  quantises the from-config LLM through ``vlmplug.train.llm.reload_llm`` (save to a temporary folder,
  reload with the ``BitsAndBytesConfig``), which is how vlmplug quantises an LLM built from a config.
* **8B QLoRA memory** -- the same tower and connector on a Llama-3.1-8B-shaped LLM (hidden 4096,
  32 layers, 32 heads, 8 KV heads, intermediate 14336, vocab 128256) with QLoRA and gradient
  checkpointing, batch 1, sequence 1024: is the peak under 24 GiB (the guide's "QLoRA 8B fits a 24 GB
  L4")? The bf16 LLM is built directly on the GPU (``torch.device`` context, ~16 GB, seconds), moved to
  host memory, and only then is the peak counter reset and the model quantised through ``reload_llm``
  (save ~16 GB to local disk, reload 4-bit), so the loading peak is that of a hub load on a small GPU.

Each configuration: build, a few warm-up steps, then timed steps, each step being forward + backward +
optimizer step (``torch.optim`` AdamW as ``vlmplug.train.modules.build_optimizer`` builds it from
``TrainingArguments`` defaults) under ``torch.autocast(bfloat16)`` with TF32 on, as vlmplug's Trainer
runs with ``bf16: auto`` / ``tf32: auto`` on an H100/H200. The batch is synthetic: per sample one
random image (``[3, 336, 336]``) and a sequence of ``seq_len`` tokens: a short text prefix, the 576
image placeholders, then random text; labels on the text after the image.

Measured per configuration (fields of each ``results`` row of the JSON):

* ``tokens_per_s`` = batch * seq_len * timed_steps / wall time of the timed steps (CUDA synchronised
  before and after): LLM sequence tokens, image placeholders included; the tower's own 577 tokens per
  image are not counted here (they are in the FLOPs).
* ``mfu`` = training FLOPs per step / step time / peak FLOP/s (H200 dense bf16: 989 TFLOP/s; set
  another with ``--peak-tflops``). Training FLOPs are counted per matmul weight ``W`` (every
  ``nn.Linear`` / ``nn.Conv2d``, 4-bit layers at their logical shape, LoRA adapters included; embedding
  lookups excluded) applied to ``n`` tokens: ``2*|W|*n`` forward, ``+2*|W|*n`` for the input gradient
  when the backward pass reaches the layer (the LLM always: the connector below it trains; the tower
  only when it trains), ``+2*|W|*n`` for the weight gradient when ``W`` trains. So full fine-tuning is
  the usual ``6*N`` per token, and a frozen (LoRA/QLoRA) base ``4*N`` plus ``6*N_adapter``. Attention
  scores add ``4*L*d*S`` per token forward (QK^T and AV; ``d`` = heads * head_dim, ``S`` = sequence
  length, no causal halving: PaLM's convention), times 3 when the backward pass reaches them -- i.e.
  ``12*L*d*S`` per training token in the LLM. Gradient-checkpointing recomputation is not counted
  (model FLOPs, not hardware FLOPs). Tower layers past the feature layer run forward only.
* ``peak_alloc_gib`` / ``peak_reserved_gib`` = ``torch.cuda.max_memory_allocated`` /
  ``max_memory_reserved`` from the end of the build (counter reset there) through the last timed step:
  weights, gradients, optimizer state and activations. ``build_peak_alloc_gib``: during the build.

Packing (several samples per sequence) is not implemented in vlmplug yet; the JSON says so.

    python bench/gpu_check.py --out bench/results/gpu_check.json [--quick] [--only sdpa-lora ...]
    python bench/gpu_check.py --cpu-dry-run --out /tmp/gpu_check_dry.json   # tiny shapes, on CPU

Every configuration runs in its own ``try``: a missing package or a failure is recorded (``status``,
``error``) and the next one runs. The JSON is rewritten after every configuration, and once
``--budget-s`` seconds (default 420) have passed the remaining ones are recorded as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from torch import nn

GIB = 1024**3
SCHEMA = "vlmplug-gpu-check/1"
#: Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by a substring of the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0}
#: The guide's budget for the 8B QLoRA claim, and an L4's memory as nvidia-smi reports it (23034 MiB).
CLAIM_GIB = 24.0
L4_TOTAL_GIB = 23034 / 1024
PACKING = "not available: vlmplug has no sequence packing yet (one sample per row, no padding here)"


# -- what is measured --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmShape:
    """A Llama-architecture LLM's sizes (``LlamaConfig`` fields)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = 4096


@dataclass(frozen=True)
class TowerShape:
    """A CLIP ViT's sizes, as the options of vlmplug's ``clip`` encoder (``model: tiny``)."""

    image_size: int
    patch_size: int
    hidden_size: int
    layers: int
    heads: int

    def clip_options(self) -> dict[str, Any]:
        return {
            "model": "tiny",
            "tiny_image_size": self.image_size,
            "tiny_patch_size": self.patch_size,
            "tiny_hidden_size": self.hidden_size,
            "tiny_layers": self.layers,
            "tiny_heads": self.heads,
            "feature_layer": -2,
        }


@dataclass(frozen=True)
class Case:
    """One configuration: LLM attention kernel, Liger on/off, PEFT method, shapes and step counts."""

    name: str
    attention: str  # eager | sdpa | flash_attention_2
    liger: bool
    method: str  # lora | qlora | full
    llm: LlmShape
    tower: TowerShape
    batch_size: int
    seq_len: int
    warmup: int
    steps: int
    gradient_checkpointing: bool = False
    kind: str = "throughput"  # throughput | memory (the 8B QLoRA check)
    min_budget_s: float = 0.0  # skipped when less than this is left of the time budget


LLM_1B = LlmShape(2048, 16, 32, 32, 5632, 32000, 4096)
LLM_8B = LlmShape(4096, 32, 32, 8, 14336, 128256, 8192)
VIT_L_336 = TowerShape(336, 14, 1024, 24, 16)
LLM_TINY = LlmShape(64, 2, 4, 4, 128, 512, 256)
LLM_TINY_8B_SHAPED = LlmShape(64, 2, 4, 2, 160, 1024, 256)  # grouped-query attention, like the 8B
VIT_TINY = TowerShape(32, 8, 32, 2, 2)

ATTENTION_SHORT = {"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "fa2"}
#: 1B configurations in priority order (the time budget cuts the tail): the PEFT methods at the
#: default kernel first, then the kernels at LoRA, then the rest of the grid.
GRID_ORDER: list[tuple[str, bool, str]] = [
    ("sdpa", False, "lora"),
    ("sdpa", False, "qlora"),
    ("sdpa", False, "full"),
    ("eager", False, "lora"),
    ("flash_attention_2", False, "lora"),
    ("sdpa", True, "lora"),
    ("flash_attention_2", True, "lora"),
    ("eager", True, "lora"),
    ("flash_attention_2", False, "qlora"),
    ("flash_attention_2", False, "full"),
    ("flash_attention_2", True, "qlora"),
    ("flash_attention_2", True, "full"),
    ("sdpa", True, "qlora"),
    ("sdpa", True, "full"),
    ("eager", False, "qlora"),
    ("eager", False, "full"),
    ("eager", True, "qlora"),
    ("eager", True, "full"),
]
QUICK_COUNT = 8  # --quick: the first 8 of GRID_ORDER (+ the 8B check), fewer steps
MEMORY_8B = "qlora8b-memory"


def case_name(attention: str, liger: bool, method: str) -> str:
    return f"{ATTENTION_SHORT[attention]}{'-liger' if liger else ''}-{method}"


def build_cases(dry_run: bool, quick: bool) -> list[Case]:
    """The configurations, in run order; the 8B memory check comes after the three PEFT methods."""
    llm, tower = (LLM_TINY, VIT_TINY) if dry_run else (LLM_1B, VIT_L_336)
    batch, seq = (2, 40) if dry_run else (8, 1024)
    warmup, steps = (0, 1) if dry_run else (1, 3) if quick else (3, 10)
    grid = GRID_ORDER[:QUICK_COUNT] if quick else GRID_ORDER
    cases = [Case(case_name(a, lg, m), a, lg, m, llm, tower, batch, seq, warmup, steps) for a, lg, m in grid]
    memory = Case(
        MEMORY_8B,
        "sdpa",
        False,
        "qlora",
        LLM_TINY_8B_SHAPED if dry_run else LLM_8B,
        tower,
        1,
        seq,
        warmup=1,  # peak of a steady step: the optimizer state from step 1 is alive in step 2
        steps=1,
        gradient_checkpointing=True,
        kind="memory",
        min_budget_s=0.0 if dry_run else 150.0,
    )
    return [*cases[:3], memory, *cases[3:]]


# -- environment -------------------------------------------------------------------------------------


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def environment() -> dict[str, Any]:
    """GPU, CUDA and the versions of every package the numbers depend on."""
    cuda = torch.cuda.is_available()
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
    }
    for dist in (
        "vlmplug",
        "transformers",
        "peft",
        "accelerate",
        "bitsandbytes",
        "flash-attn",
        "liger-kernel",
        "triton",
    ):
        env[dist.replace("-", "_")] = package_version(dist)
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu_name=props.name,
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / GIB, 2),
            gpu_capability=f"{props.major}.{props.minor}",
        )
    return env


def peak_tflops(device_name: str | None, override: float | None) -> float | None:
    """The dense bf16 peak used for MFU: ``--peak-tflops``, else a known GPU's, else unknown."""
    if override is not None:
        return override
    for key, value in PEAK_BF16_TFLOPS.items():
        if device_name and key in device_name:
            return value
    return None


def missing_requirement(case: Case, cuda: bool) -> str | None:
    """Why ``case`` cannot run here (``skipped: ...``), or ``None``."""
    kernels = case.attention == "flash_attention_2" or case.liger
    if kernels and not cuda:
        return "skipped: needs CUDA"
    if case.attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        return "skipped: pip install flash-attn"
    if case.liger and importlib.util.find_spec("liger_kernel") is None:
        return "skipped: pip install liger-kernel"
    if case.method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return "skipped: pip install bitsandbytes"
    return None


# -- building the model through vlmplug --------------------------------------------------------------


@functools.cache
def registry() -> Any:
    """vlmplug's component registry (built-in plugins only)."""
    from vlmplug.manager import load

    return load(autoload=False).registry


def make_component(name: str, ctx: Any, options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """The installed component ``name`` built as the pipeline builds it: its factory on its config
    (``options`` over the defaults), checked against its family's contract."""
    from vlmplug.contracts import check

    spec = registry().get(name)
    if spec is None:
        raise KeyError(f"vlmplug has no component '{name}'")
    component = spec.load_factory()(spec.make_config(options or {}), ctx, **kwargs)
    check(component, spec.family)
    return component


def build_context(dtype: torch.dtype) -> Any:
    from vlmplug.train.assemble import BuildContext
    from vlmplug.train.hardware import Hardware

    return BuildContext(recipe=None, torch_dtype=dtype, hub_kwargs={}, on_bad_sample="error", hardware=Hardware.probe())


def peft_component(method: str, ctx: Any) -> Any:
    options = {"lora": {"lora_r": 16}, "qlora": {"lora_r": 16}, "full": {}}
    return make_component(method, ctx, options[method])


def stack_components(case: Case, ctx: Any) -> list[Any]:
    """The optimizer-stack plugins the case selects, in the order a recipe lists them."""
    stack = []
    if case.attention == "flash_attention_2":
        stack.append(make_component("flash-attention", ctx, {"attn_implementation": "flash_attention_2"}))
    if case.liger:
        stack.append(make_component("liger", ctx))
    if case.gradient_checkpointing:
        stack.append(make_component("gradient-checkpointing", ctx))
    return stack


def build_llm(shape: LlmShape, attention: str, dtype: torch.dtype, device: torch.device) -> Any:
    """A random-init Llama built from its config directly on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**asdict(shape), tie_word_embeddings=False)
    with torch.device(device):
        llm = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
    return llm.to(device)


def quantize_llm(llm: Any, load_kwargs: dict[str, Any], dtype: torch.dtype, device: torch.device) -> tuple[Any, dict]:
    """The LLM reloaded through vlmplug's ``reload_llm`` with the QLoRA quantisation config. The full-
    precision model is moved to host memory first and the peak counter reset, so ``load_peak`` is the
    peak of a quantised load (as from the hub on a small GPU), not of holding both copies."""
    from vlmplug.train.llm import reload_llm

    timings: dict[str, Any] = {"bf16_build_peak_alloc_gib": peak_gib(device, reserved=False)}
    t0 = time.perf_counter()
    llm = llm.to("cpu")
    free_memory()
    reset_peak(device)
    timings["offload_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    quantized = reload_llm(llm, load_kwargs, dtype)
    sync(device)
    timings["quantize_reload_s"] = round(time.perf_counter() - t0, 2)
    timings["load_peak_alloc_gib"] = peak_gib(device, reserved=False)
    return quantized, timings


def build_vlm(case: Case, ctx: Any, dtype: torch.dtype, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """Tower -> mlp -> interleaved fusion into the LLM, then the PEFT method and the stack, in
    ``vlmplug.train.run``'s order. Returns the model and build timings."""
    from vlmplug.train.assemble import llm_load_kwargs
    from vlmplug.train.modules import apply_module_plan

    info: dict[str, Any] = {}
    peft = peft_component(case.method, ctx)
    stack = stack_components(case, ctx)
    load_kwargs = llm_load_kwargs([peft, *stack])
    attention = load_kwargs.setdefault("attn_implementation", case.attention)
    t0 = time.perf_counter()
    with torch.device(device):
        tower = make_component("clip", ctx, case.tower.clip_options())
    tower = tower.to(device=device, dtype=dtype)
    llm = build_llm(case.llm, attention, dtype, device)
    sync(device)
    info["build_llm_s"] = round(time.perf_counter() - t0, 2)
    if "quantization_config" in load_kwargs:
        llm, timings = quantize_llm(llm, load_kwargs, dtype, device)
        info.update(timings)
    hidden = llm.get_input_embeddings().weight.shape[1]
    with torch.device(device):
        connector = make_component(
            "mlp", ctx, in_dim=tower.hidden_size, out_dim=hidden, num_input_tokens=tower.num_patches
        )
    connector.to(device=device, dtype=dtype)
    fusion = make_component("interleaved", ctx)
    vlm = fusion.build(llm=llm, vision_encoder=tower, connector=connector, image_token_id=case.llm.vocab_size)
    vlm.manifest = {"save_llm_base": False}  # as for a hub LLM: LoRA keeps no copy of the base
    vlm.tokens_per_image = int(fusion.placeholder_tokens(connector))
    vlm = peft.apply(vlm)
    vlm = apply_module_plan(vlm, {})
    for component in stack:
        vlm = component.patch_model(vlm)
    info["attn_implementation"] = getattr(vlm.llm.config, "_attn_implementation", None)
    info["tower_attn_implementation"] = getattr(tower.model.config, "_attn_implementation", None)
    info["llm_checkpointing"] = any(getattr(m, "gradient_checkpointing", False) is True for m in vlm.llm.modules())
    if info["attn_implementation"] != attention:
        raise RuntimeError(f"the LLM runs {info['attn_implementation']} attention, not {attention}")
    if info["llm_checkpointing"] != case.gradient_checkpointing:
        wanted = case.gradient_checkpointing
        raise RuntimeError(f"LLM gradient checkpointing is {info['llm_checkpointing']}, wanted {wanted}")
    return vlm, info


def synthetic_batch(vlm: Any, case: Case, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """``batch_size`` rows of ``[text prefix, image placeholders, text]`` of ``seq_len`` tokens, one
    random image per row; labels on the text after the image."""
    image_tokens = int(vlm.tokens_per_image)
    prefix = max(1, (case.seq_len - image_tokens) // 8)
    if prefix + image_tokens >= case.seq_len:
        raise ValueError(f"seq_len {case.seq_len} leaves no text after {image_tokens} image tokens")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, case.llm.vocab_size, (case.batch_size, case.seq_len), generator=g)
    ids[:, prefix : prefix + image_tokens] = vlm.image_token_id
    labels = ids.clone()
    labels[:, : prefix + image_tokens] = -100
    size = vlm.vision_encoder.image_size
    pixels = torch.randn(case.batch_size, 3, size, size, generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "pixel_values": pixels}
    return {k: v.to(device) for k, v in batch.items()}


def make_optimizer(vlm: Any, cuda: bool) -> torch.optim.Optimizer:
    """The optimizer vlmplug builds from ``TrainingArguments`` defaults (AdamW, fused where possible)."""
    from transformers import TrainingArguments

    from vlmplug.train.modules import build_optimizer

    args = TrainingArguments(output_dir=tempfile.gettempdir(), report_to="none", learning_rate=1e-5, use_cpu=not cuda)
    return build_optimizer(vlm, args)


# -- counting FLOPs and parameters ------------------------------------------------------------------


def logical_numel(module: nn.Module) -> int:
    """Parameters of a matmul layer at their logical shape (4-bit weights are stored packed)."""
    if isinstance(module, nn.Linear):
        return int(module.in_features) * int(module.out_features)
    return int(module.weight.numel())


def used_tower_layers(tower: Any) -> int:
    """Layers of the tower whose output reaches the features (``feature_layer`` -2: all but the last)."""
    layers = int(tower.model.config.num_hidden_layers)
    fl = int(tower.feature_layer)
    return layers + fl + 1 if fl < 0 else fl


def matmul_flops(
    part: nn.Module,
    tokens: float,
    backward: bool,
    backward_layers: int | None = None,
    patches: float | None = None,
) -> float:
    """Training FLOPs of every Linear / Conv2d in ``part`` (see the module docstring). Linear layers
    see ``tokens`` tokens; a Conv2d (the patch embedding) sees ``patches`` and needs no input gradient
    (its input is pixels). ``backward_layers``: only ``encoder.layers.<i>`` with ``i`` below it get a
    backward pass (tower layers past the feature layer do not reach the loss)."""
    total = 0.0
    for name, module in part.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        conv = isinstance(module, nn.Conv2d)
        match = re.search(r"encoder\.layers\.(\d+)\.", name)
        reached = backward and (backward_layers is None or match is None or int(match.group(1)) < backward_layers)
        passes = 2.0
        if reached:
            passes += (0.0 if conv else 2.0) + (2.0 if module.weight.requires_grad else 0.0)
        seen = patches if conv and patches is not None else tokens
        total += passes * logical_numel(module) * seen
    return total


def trains(module: nn.Module | None) -> bool:
    return module is not None and any(p.requires_grad for p in module.parameters())


def training_flops(vlm: Any, case: Case) -> dict[str, float]:
    """Model FLOPs of one training step, by part (vision tower, connector, LLM)."""
    tower = vlm.vision_encoder
    images = case.batch_size
    per_image = tower.grid_size**2 + tower.prefix_tokens  # the tower's sequence: CLS + patches
    tower_trains = trains(tower)
    vcfg = tower.model.config
    used = used_tower_layers(tower)
    tower_attn = 4.0 * vcfg.hidden_size * per_image * images * per_image * vcfg.num_hidden_layers
    if tower_trains:
        tower_attn += 8.0 * vcfg.hidden_size * per_image * images * per_image * used
    tower_mm = matmul_flops(tower, images * per_image, tower_trains, used, patches=images * tower.grid_size**2)
    llm_tokens = case.batch_size * case.seq_len
    cfg = case.llm
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    llm_attn = 12.0 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * case.seq_len * llm_tokens
    flops = {
        "vision_tower": tower_mm + tower_attn,
        "connector": connector_flops(vlm.connector, images * vlm.tokens_per_image, tower_trains),
        "llm": matmul_flops(vlm.llm, llm_tokens, True) + llm_attn,
    }
    flops["total"] = sum(flops.values())
    return flops


def connector_flops(connector: nn.Module, tokens: float, tower_trains: bool) -> float:
    """The connector trains in every method: forward + weight gradients everywhere, input gradients
    of its layers but the first (which only the trained tower needs)."""
    layers = [m for m in connector.modules() if isinstance(m, nn.Linear)]
    total = 0.0
    for i, layer in enumerate(layers):
        needs_input_grad = i > 0 or tower_trains
        total += (2.0 + 2.0 * needs_input_grad + 2.0 * layer.weight.requires_grad) * logical_numel(layer) * tokens
    return total


def parameter_counts(vlm: Any) -> dict[str, int]:
    """Logical parameter counts (4-bit weights unpacked) per part, and how many train."""
    counts: dict[str, int] = {}
    for part in ("vision_encoder", "connector", "llm"):
        module = getattr(vlm, part)
        total = trainable = 0
        seen: set[int] = set()
        for sub in module.modules():
            for pname, p in sub.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                n = logical_numel(sub) if pname == "weight" and isinstance(sub, nn.Linear) else p.numel()
                total += n
                trainable += n if p.requires_grad else 0
        counts[f"{part}_params"] = total
        counts[f"{part}_trainable"] = trainable
    counts["total_params"] = sum(v for k, v in counts.items() if k.endswith("_params"))
    counts["trainable_params"] = sum(v for k, v in counts.items() if k.endswith("_trainable"))
    return counts


# -- running and timing ------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device, reserved: bool) -> float | None:
    if device.type != "cuda":
        return None
    value = torch.cuda.max_memory_reserved(device) if reserved else torch.cuda.max_memory_allocated(device)
    return round(value / GIB, 3)


def allocated_gib(device: torch.device) -> float | None:
    return round(torch.cuda.memory_allocated(device) / GIB, 3) if device.type == "cuda" else None


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_step(vlm: Any, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], device: torch.device) -> Any:
    """Forward (bf16 autocast on CUDA) + backward + optimizer step; returns the loss tensor."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with autocast:
        loss = vlm(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def timed_steps(vlm: Any, optimizer: Any, batch: dict[str, torch.Tensor], case: Case, device: torch.device) -> dict:
    """``warmup`` untimed steps, then ``steps`` steps timed between two CUDA synchronisations."""
    vlm.train()
    losses = [train_step(vlm, optimizer, batch, device) for _ in range(case.warmup)]
    sync(device)
    t0 = time.perf_counter()
    losses += [train_step(vlm, optimizer, batch, device) for _ in range(case.steps)]
    sync(device)
    elapsed = time.perf_counter() - t0
    values = [float(v) for v in losses]
    return {"elapsed_s": elapsed, "loss_first": values[0], "loss_last": values[-1]}


@contextlib.contextmanager
def undo_llama_patches() -> Iterator[None]:
    """Restore transformers' Llama module afterwards: Liger patches some of it globally (its RoPE
    function), which would otherwise leak into the configurations after a Liger one."""
    from transformers.models.llama import modeling_llama as module

    saved = dict(vars(module))
    classes = {c: dict(vars(c)) for c in saved.values() if isinstance(c, type) and c.__module__ == module.__name__}
    try:
        yield
    finally:
        for key in set(vars(module)) - set(saved):
            delattr(module, key)
        for key, value in saved.items():
            if vars(module).get(key) is not value:
                setattr(module, key, value)
        for cls, attrs in classes.items():
            for key in set(vars(cls)) - set(attrs):
                delattr(cls, key)
            for key, value in attrs.items():
                if vars(cls).get(key) is not value:
                    setattr(cls, key, value)


def measure(case: Case, ctx: Any, dtype: torch.dtype, device: torch.device, peak: float | None) -> dict[str, Any]:
    """Build the case's model, train it for warmup + timed steps, return the row's measurements."""
    reset_peak(device)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    vlm, info = build_vlm(case, ctx, dtype, device)
    optimizer = make_optimizer(vlm, device.type == "cuda")
    batch = synthetic_batch(vlm, case, device)
    sync(device)
    row: dict[str, Any] = {"build_s": round(time.perf_counter() - t0, 2), **info}
    row["build_peak_alloc_gib"] = peak_gib(device, reserved=False)
    row["weights_alloc_gib"] = allocated_gib(device)
    row.update(parameter_counts(vlm))
    row["optimizer"] = type(optimizer).__name__
    flops = training_flops(vlm, case)
    reset_peak(device)
    timing = timed_steps(vlm, optimizer, batch, case, device)
    step_s = timing["elapsed_s"] / case.steps
    row.update(
        step_ms=round(1000 * step_s, 2),
        tokens_per_s=round(case.batch_size * case.seq_len / step_s, 1),
        samples_per_s=round(case.batch_size / step_s, 3),
        train_flops_per_step=flops["total"],
        train_flops_by_part={k: v for k, v in flops.items() if k != "total"},
        achieved_tflops=round(flops["total"] / step_s / 1e12, 2),
        mfu=round(flops["total"] / step_s / (peak * 1e12), 4) if peak else None,
        peak_alloc_gib=peak_gib(device, reserved=False),
        peak_reserved_gib=peak_gib(device, reserved=True),
        loss_first=round(timing["loss_first"], 4),
        loss_last=round(timing["loss_last"], 4),
        loss_finite=math.isfinite(timing["loss_last"]),
    )
    if case.kind == "memory":
        row.update(memory_verdict(row))
    return row


def memory_verdict(row: dict[str, Any]) -> dict[str, Any]:
    """The 8B claim: the peak over the quantised load and the training steps, against 24 GiB."""
    peaks = [v for v in (row.get("load_peak_alloc_gib"), row.get("peak_alloc_gib")) if v is not None]
    if not peaks:
        return {"claim_peak_alloc_gib": None, "fits_24_gib": None, "fits_l4_reserved": None}
    worst = max(peaks)
    return {
        "claim_peak_alloc_gib": worst,
        "fits_24_gib": worst < CLAIM_GIB,
        # stricter: what the allocator holds, against the 22.49 GiB an L4 reports (CUDA context excluded)
        "fits_l4_reserved": (row.get("peak_reserved_gib") or 0.0) < L4_TOTAL_GIB,
    }


def case_header(case: Case) -> dict[str, Any]:
    return {
        "name": case.name,
        "kind": case.kind,
        "attention": case.attention,
        "liger": case.liger,
        "method": case.method,
        "gradient_checkpointing": case.gradient_checkpointing,
        "batch_size": case.batch_size,
        "seq_len": case.seq_len,
        "warmup_steps": case.warmup,
        "timed_steps": case.steps,
        "llm_shape": asdict(case.llm),
        "tower_shape": asdict(case.tower),
        "packing": PACKING,
    }


def error_text(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:500]


def run_case(case: Case, ctx: Any, dtype: torch.dtype, device: torch.device, peak: float | None) -> dict[str, Any]:
    """One configuration in its own ``try``; the row says ``ok``, ``skipped`` or ``error``."""
    row = case_header(case)
    problem = missing_requirement(case, device.type == "cuda")
    if problem:
        return {**row, "status": "skipped", "error": problem}
    t0 = time.perf_counter()
    try:
        with undo_llama_patches():
            row.update(measure(case, ctx, dtype, device, peak))
        row["status"] = "ok"
    except Exception as exc:  # recorded, and the next configuration runs
        row.update(status="error", error=error_text(exc), traceback=traceback.format_exc().splitlines()[-12:])
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            row["peak_alloc_gib"] = peak_gib(device, reserved=False)
    finally:
        free_memory()
    row["case_s"] = round(time.perf_counter() - t0, 2)
    return row


# -- output ------------------------------------------------------------------------------------------

COLUMNS = [("name", 20), ("status", 7), ("tok/s", 10), ("step ms", 9), ("MFU", 6), ("peak GiB", 9), ("train M", 8)]


def table_header() -> str:
    head = " ".join(f"{title:>{w}}" if i else f"{title:<{w}}" for i, (title, w) in enumerate(COLUMNS))
    return f"{head}  note\n{'-' * (len(head) + 6)}"


def table_row(row: dict[str, Any]) -> str:
    def num(key: str, fmt: str) -> str:
        value = row.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    mfu = f"{100 * row['mfu']:.1f}%" if isinstance(row.get("mfu"), float) else "-"
    trainable = f"{row['trainable_params'] / 1e6:.1f}" if "trainable_params" in row else "-"
    cells = [
        row["name"],
        row.get("status", "?"),
        num("tokens_per_s", ",.0f"),
        num("step_ms", ".1f"),
        mfu,
        num("peak_alloc_gib", ".2f"),
        trainable,
    ]
    line = " ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS)))
    note = row.get("error") or ""
    if row.get("kind") == "memory" and row.get("status") == "ok" and row.get("claim_peak_alloc_gib") is None:
        note = "8B-shaped (tiny here): no CUDA memory counters"
    elif row.get("kind") == "memory" and row.get("status") == "ok":
        note = (
            f"8B QLoRA: peak {row['claim_peak_alloc_gib']} GiB (load {row.get('load_peak_alloc_gib')}), "
            f"< 24 GiB: {row['fits_24_gib']}; quantise+reload {row.get('quantize_reload_s')} s"
        )
    elif row.get("status") == "ok":
        note = f"build {row['build_s']} s, {row['attn_implementation']}"
    return f"{line}  {note}"


def method_notes(peak: float | None) -> dict[str, Any]:
    """What the numbers mean, written into the JSON."""
    return {
        "tokens_per_s": "batch_size * seq_len * timed_steps / wall seconds of the timed steps (CUDA-synchronised); "
        "LLM sequence tokens incl. the image placeholders",
        "step": "forward + backward + optimizer.step + zero_grad; bf16 autocast and TF32 on CUDA; synthetic batch",
        "training_flops": "per matmul weight W over n tokens: 2|W|n forward, +2|W|n input gradient where the "
        "backward pass reaches it, +2|W|n weight gradient if W trains (full FT: 6N per token; frozen LoRA/QLoRA "
        "base: 4N + 6N_adapter); attention scores 4*L*d*S per token forward, x3 with backward (12*L*d*S per LLM "
        "training token, d = heads*head_dim, no causal halving); embeddings and recomputation not counted",
        "mfu": "training_flops_per_step / step_seconds / (peak_tflops * 1e12)",
        "peak_tflops": peak,
        "peak_tflops_source": "H200 SXM dense bf16 (989 TFLOP/s) unless --peak-tflops" if peak else "unknown GPU",
        "peak_alloc_gib": "torch.cuda.max_memory_allocated, counter reset after the build, over all steps",
        "peak_reserved_gib": "torch.cuda.max_memory_reserved over the same window (what the allocator holds)",
        "load_peak_alloc_gib": "qlora only: peak while reload_llm quantises the LLM (bf16 copy already on the host)",
        "qlora8b": f"fits_24_gib: max(load_peak_alloc_gib, peak_alloc_gib) < {CLAIM_GIB} GiB; fits_l4_reserved: "
        f"peak_reserved_gib < {L4_TOTAL_GIB:.2f} GiB (an L4's 23034 MiB; CUDA context not counted)",
        "packing": PACKING,
    }


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write atomically, so an interrupted run leaves the last complete report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- main --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="JSON report (rewritten after every configuration)")
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_COUNT} configurations + 8B, 1+3 steps")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these configurations (see --list)")
    parser.add_argument("--list", action="store_true", help="print the configuration names and exit")
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny shapes on CPU, 1 step each (tests the script)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what is left after this many seconds")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (H200: 989)")
    return parser.parse_args(argv)


def select_cases(cases: list[Case], only: list[str] | None) -> list[Case]:
    if not only:
        return cases
    names = {c.name for c in cases}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}; choose from: {', '.join(c.name for c in cases)}")
    return [c for c in cases if c.name in only]


def setup_torch(device: torch.device) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 deprecation notes
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()
    args = parse_args(argv)
    cases = select_cases(build_cases(args.cpu_dry_run, args.quick), args.only)
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_dry_run:
        raise SystemExit("no CUDA GPU here: run with --cpu-dry-run to test the script on CPU")
    device = torch.device("cpu" if args.cpu_dry_run else "cuda")
    dtype = torch.float32 if args.cpu_dry_run else torch.bfloat16
    setup_torch(device)
    env = environment()
    peak = None if args.cpu_dry_run else peak_tflops(env.get("gpu_name"), args.peak_tflops)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finished": None,
        "argv": sys.argv[1:] if argv is None else argv,
        "mode": "cpu-dry-run" if args.cpu_dry_run else "quick" if args.quick else "full",
        "device": str(device),
        "weights_dtype": str(dtype).replace("torch.", ""),
        "budget_s": args.budget_s,
        "environment": env,
        "method": method_notes(peak),
        "packing": PACKING,
        "qlora_8b_fits_24_gib": None,
        "results": [],
    }
    ctx = build_context(dtype)
    print(f"vlmplug GPU check on {env.get('gpu_name', 'cpu')} ({report['mode']}), {len(cases)} configurations")
    print(table_header(), flush=True)
    for case in cases:
        left = args.budget_s - (time.monotonic() - start)
        if left <= 0 or left < case.min_budget_s:
            need = f" (needs ~{case.min_budget_s:.0f} s, {max(left, 0):.0f} s left)" if left > 0 else ""
            row = {**case_header(case), "status": "skipped", "error": f"skipped: time budget{need}"}
        else:
            row = run_case(case, ctx, dtype, device, peak)
        report["results"].append(row)
        if case.kind == "memory" and row.get("status") == "ok":
            report["qlora_8b_fits_24_gib"] = row["fits_24_gib"]
        report["elapsed_s"] = round(time.monotonic() - start, 1)
        write_json(args.out, report)
        print(table_row(row), flush=True)
    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(args.out, report)
    print(f"done in {report['elapsed_s']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
