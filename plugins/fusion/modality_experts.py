"""``modality-experts``: CogVLM's visual expert (Wang et al. 2023, "CogVLM: Visual Expert for Pretrained
Language Models").

Vision tokens sit in the sequence as with ``interleaved``; at image-token positions the attention
projections and MLP of every decoder layer use their own copies of the weights (initialised from the
LLM's), text positions the original ones. By default the experts and the connector train, the LLM
stays frozen, so text-only behaviour is the base LLM's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmplug import ComponentSpec, hookimpl

LLAMA_EXPERT_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, kw_only=True)
class ModalityExpertsConfig:
    expert_modules: list[str] = field(
        default_factory=lambda: list(LLAMA_EXPERT_MODULES),
        metadata={
            "help": "Name suffixes of the position-wise modules inside each decoder layer that get an image "
            "expert (default: the Llama / Mistral / Qwen2 attention projections and MLP; GPT-2: c_attn, "
            "c_proj, c_fc)."
        },
    )
    train_llm: bool = field(
        default=False,
        metadata={"help": "Also train the LLM (CogVLM keeps it frozen and trains the experts)."},
    )

    def __post_init__(self) -> None:
        if not self.expert_modules or not all(isinstance(m, str) and m.strip() for m in self.expert_modules):
            raise ValueError("expert_modules must name at least one module suffix")


SPEC = ComponentSpec(
    name="modality-experts",
    summary="Image positions use their own copies of the attention and MLP weights (CogVLM visual expert)",
    factory="vlmplug.plugins.fusion._modality_experts:build",
    config=ModalityExpertsConfig,
    offers=("instruction",),
)


@hookimpl
def register_fusions(register) -> None:
    register(SPEC)
