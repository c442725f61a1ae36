"""``qlora``: QLoRA (Dettmers et al. 2023) -- the LLM loaded in 4-bit NF4 through bitsandbytes, with
double quantisation and LoRA adapters on top; the connector trains in full, the vision tower stays
frozen. The guide's keys work at top level (``load_in_4bit``, ``bnb_4bit_compute_dtype``,
``bnb_4bit_use_double_quant``, and LoRA's ``lora_r`` ...).

Only the LLM is quantised: the vision tower and the connector are separate modules, never loaded
through the LLM's quantisation config (``llm_int8_skip_modules`` keeps LLM modules, e.g. ``lm_head``,
in full precision; write full module paths, as transformers 5 matches them). bitsandbytes >= 0.45
runs 4-bit layers on CPU as well as CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlmplug import ComponentSpec, hookimpl

from .lora import SPEC as LORA_SPEC
from .lora import LoraConfig


@dataclass(frozen=True, kw_only=True)
class QloraConfig(LoraConfig):
    load_in_4bit: bool = field(default=True, metadata={"help": "Load the LLM's linear layers in 4-bit."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Load them in 8-bit (LLM.int8) instead."})
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = field(
        default="nf4", metadata={"help": "4-bit data type: NormalFloat4 (QLoRA's) or FP4."}
    )
    bnb_4bit_compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="auto",
        metadata={"help": "dtype the 4-bit layers compute in; auto: bfloat16 where the hardware has it, else float32."},
    )
    bnb_4bit_use_double_quant: bool = field(
        default=True, metadata={"help": "Quantise the quantisation constants too (~0.4 bit/parameter saved)."}
    )
    llm_int8_skip_modules: list[str] = field(
        default_factory=list,
        metadata={"help": "LLM modules kept in full precision (full paths, e.g. model.layers.0.mlp.down_proj)."},
    )
    gradient_checkpointing_prep: bool = field(
        default=False,
        metadata={"help": "k-bit preparation also turns on the LLM's gradient checkpointing (peft's default is on)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.load_in_4bit == self.load_in_8bit:
            raise ValueError("set exactly one of load_in_4bit and load_in_8bit")


SPEC = ComponentSpec(
    name="qlora",
    summary="QLoRA: the LLM in 4-bit NF4 (bitsandbytes) with LoRA adapters; the connector trains",
    factory="vlmplug.plugins.peft._qlora:build",
    config=QloraConfig,
    extras={"bitsandbytes": "qlora"},
    activated_by={"load_in_4bit": True, "load_in_8bit": True},
    flat_keys=(
        *LORA_SPEC.flat_keys,
        "load_in_4bit",
        "load_in_8bit",
        "bnb_4bit_compute_dtype",
        "bnb_4bit_use_double_quant",
        "bnb_4bit_quant_type",
        "llm_int8_skip_modules",
    ),
    contradicts={"use_peft": False},
    test_options={"lora_r": 4},
)


@hookimpl
def register_peft_methods(register) -> None:
    register(SPEC)
