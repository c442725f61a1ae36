"""``lora``: Low-Rank Adaptation of the LLM (Hu et al. 2021) through the ``peft`` library.

The adapters are scoped to the LLM (``all-linear`` never reaches the vision tower or the connector);
the connector trains fully, as in LLaVA's LoRA recipes; the vision tower stays frozen unless
``train_vision_encoder`` is set (or it has no pretrained weights: ``patches``). Saved adapters load
with plain ``peft.PeftModel.from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmplug import ComponentSpec, hookimpl


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    lora_r: int = field(default=16, metadata={"help": "Adapter rank (8-64 typical)."})
    lora_alpha: float = field(default=16, metadata={"help": "Scaling factor (usually = r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapter input."})
    lora_target_modules: str | list[str] = field(
        default="all-linear",
        metadata={
            "help": "'all-linear' (every linear layer of the LLM but the output head) or a list of module names."
        },
    )
    lora_modules_to_save: list[str] = field(
        default_factory=list,
        metadata={
            "help": "LLM modules trained in full and saved with the adapter, "
            "e.g. [lm_head, embed_tokens] to train new tokens."
        },
    )
    train_vision_encoder: bool = field(default=False, metadata={"help": "Also train the vision tower in full."})

    def __post_init__(self) -> None:
        target = self.lora_target_modules
        if isinstance(target, str) and "," in target:  # --set lora_target_modules=q_proj,v_proj
            object.__setattr__(self, "lora_target_modules", [t.strip() for t in target.split(",") if t.strip()])
        if self.lora_r < 1:
            raise ValueError("lora_r must be a positive integer")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError("lora_dropout must be in [0, 1)")


SPEC = ComponentSpec(
    name="lora",
    summary="LoRA adapters on the LLM (peft); the connector trains, the vision tower is frozen",
    factory="vlmplug.plugins.peft._lora:build",
    config=LoraConfig,
    flat_keys=("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save"),
    default_when={"use_peft": True},
    contradicts={"use_peft": False},
)


@hookimpl
def register_peft_methods(register) -> None:
    register(SPEC)
