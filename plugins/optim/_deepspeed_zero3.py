"""DeepSpeed ZeRO-3: hands the DeepSpeed config to transformers' Trainer after checking it against the
run's training arguments, and keeps the model whole until the Trainer partitions it."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from vlmplug.contracts import OptimizerStackComponent
from vlmplug.errors import ConfigError

from .deepspeed_zero3 import resolve_config, zero_stage

HEADER = "deepspeed-zero3"

#: DeepSpeed config entries that transformers fills from (or checks against) TrainingArguments:
#: (path in the JSON, TrainingArguments field, whether the field's default counts when the run does
#: not set it). bf16 / fp16 count only when set, since mixed-precision may set them later in the stack.
MATCHED: tuple[tuple[tuple[str, ...], str, bool], ...] = (
    (("train_micro_batch_size_per_gpu",), "per_device_train_batch_size", True),
    (("gradient_accumulation_steps",), "gradient_accumulation_steps", True),
    (("gradient_clipping",), "max_grad_norm", True),
    (("optimizer", "params", "lr"), "learning_rate", True),
    (("optimizer", "params", "weight_decay"), "weight_decay", True),
    (("bf16", "enabled"), "bf16", False),
    (("fp16", "enabled"), "fp16", False),
)


def _lookup(config: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return bool(a == b)


def mismatches(config: dict[str, Any], args: dict[str, Any], where: str) -> list[str]:
    """Values the DeepSpeed config hard-codes that differ from the run's training arguments: transformers
    would stop on them only once the Trainer starts, after the model has loaded."""
    from transformers import TrainingArguments

    defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
    problems = []
    for path, arg, use_default in MATCHED:
        value = _lookup(config, path)
        if value is None or value == "auto":
            continue
        if arg in args and args[arg] is not None:
            wanted = args[arg]
        elif use_default:
            wanted = defaults[arg]
        else:
            continue
        if not _same(value, wanted):
            problems.append(
                f"{where}: {'.'.join(path)} is {value!r} but the run's {arg} is {wanted!r}; "
                f'set it to "auto" in the DeepSpeed config (transformers fills it from the recipe) or make them equal'
            )
    return problems


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes", "on")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_setup(hardware: Any, note: Any) -> dict[str, Any]:
    """What a run needs so that transformers really trains with DeepSpeed; returns extra training
    arguments. Nothing here runs for a component built outside a run.

    * No launcher (``vlmplug train`` alone): DeepSpeed reads its process group from the launcher's
      variables (else it looks for MPI), so one process is described to it, as transformers' docs do.
    * Several CPU processes: accelerate hands a model to DeepSpeed only on GPUs and other accelerators.
      A CPU run is launched as CPU data parallelism (``ACCELERATE_USE_CPU``: gloo process group, ranks);
      that state is marked DeepSpeed and reused, so the Trainer gives the model to DeepSpeed (with its
      CPU accelerator) on the same processes instead of wrapping it in DDP.
    """
    launched = "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ
    if not launched:
        env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
        env["MASTER_PORT"] = os.environ.get("MASTER_PORT") or str(_free_port())
        os.environ.update(env)
        note("deepspeed-zero3: no launcher: running as one DeepSpeed process (use accelerate launch for more)")
        return {}
    if not _flag("ACCELERATE_USE_CPU"):
        return {}
    if hardware.cuda:
        raise ConfigError(
            "ACCELERATE_USE_CPU is set (accelerate launch --cpu / use_cpu: true) on a machine with CUDA GPUs, "
            "where DeepSpeed would use the GPUs; unset it, or hide the GPUs with CUDA_VISIBLE_DEVICES=''",
            header=HEADER,
        )
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return {}
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState()
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise ConfigError(
            f"deepspeed-zero3 on CPU: expected accelerate's CPU process group, found {state.distributed_type}; "
            f"launch with ACCELERATE_USE_CPU=true (docs/distributed.md)",
            header=HEADER,
        )
    state.distributed_type = DistributedType.DEEPSPEED  # accelerate's state is shared by every PartialState
    del os.environ["ACCELERATE_USE_CPU"]  # else the Trainer's Accelerator falls back to CPU data parallelism
    if "DS_ACCELERATOR" not in os.environ:
        os.environ["DS_ACCELERATOR"] = "cpu"
    note(f"deepspeed-zero3: DeepSpeed on the CPU over gloo, {state.num_processes} processes")
    return {"accelerator_config": {"use_configured_state": True}}


class DeepSpeedZero3(OptimizerStackComponent):
    def __init__(self, config: Any, in_run: bool):
        self.value = config.deepspeed
        self.ds_config, self.path = resolve_config(config.deepspeed)
        self.where = f"deepspeed: {self.path}" if self.path else "deepspeed (inline mapping)"
        self.stage = zero_stage(self.ds_config, self.path or "the inline config")
        self.in_run = in_run

    def update_training_args(self, args: dict[str, Any], hardware: Any, note: Any) -> dict[str, Any]:
        if args.get("fsdp"):
            raise ConfigError(
                f"deepspeed-zero3 and fsdp (fsdp: {args['fsdp']!r}) both shard the model; keep one of them",
                header=HEADER,
            )
        if args.get("deepspeed") not in (None, self.value, self.path):
            raise ConfigError(
                f"training_args.deepspeed ({args['deepspeed']!r}) and the recipe's deepspeed "
                f"({self.path or 'inline mapping'}) differ; set the DeepSpeed config once, with `deepspeed:`",
                header=HEADER,
            )
        problems = mismatches(self.ds_config, args, self.where)
        if problems:
            raise ConfigError(problems, header="the DeepSpeed config contradicts the recipe")
        what = "ZeRO stage 3" if self.stage == 3 else f"ZeRO stage {self.stage}: parameters stay whole on every process"
        note(
            f"deepspeed-zero3: {self.path or 'inline config'} ({what}; 'auto' values come from the training arguments)"
        )
        extra = launch_setup(hardware, note) if self.in_run else {}
        if "accelerator_config" in extra and args.get("accelerator_config"):
            extra["accelerator_config"] = {**dict(args["accelerator_config"]), **extra["accelerator_config"]}
        # use_cpu would make transformers set up CPU data parallelism and skip DeepSpeed, which picks
        # its own device (its CPU accelerator where there is no GPU)
        return {**args, **extra, "deepspeed": self.path or self.ds_config, "use_cpu": False}

    def model_load_kwargs(self) -> dict[str, Any]:
        """The model is assembled whole on every process and partitioned when the Trainer wraps it.

        transformers builds ``from_pretrained`` models directly partitioned (``deepspeed.zero.Init``)
        whenever ZeRO-3 TrainingArguments exist, which the run creates before loading the model; the
        encoder, connector and fusion code reads the LLM's weights while assembling, so that switch is
        turned off here (the Trainer's DeepSpeed engine does not depend on it)."""
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        return {}


def build(config: Any, ctx: Any) -> DeepSpeedZero3:
    """``ctx.recipe`` is set in a run; the conformance kit builds components without one."""
    return DeepSpeedZero3(config, in_run=getattr(ctx, "recipe", None) is not None)
