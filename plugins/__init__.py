"""vlmplug's built-in plugins: one package per family, one light module per component (its spec,
config dataclass and hook implementations), the heavy code in a private sibling module.

:data:`BUILTIN_PLUGINS` lists the modules the plugin manager registers, in order (a built-in keeps
its name when a third-party plugin registers the same one later).
"""

BUILTIN_PLUGINS: tuple[str, ...] = (
    "vlmplug.plugins.encoders.clip",
    "vlmplug.plugins.encoders.siglip",
    "vlmplug.plugins.encoders.eva_clip",
    "vlmplug.plugins.encoders.patches",
    "vlmplug.plugins.connectors.linear",
    "vlmplug.plugins.connectors.mlp",
    "vlmplug.plugins.connectors.perceiver",
    "vlmplug.plugins.connectors.qformer",
    "vlmplug.plugins.connectors.qformer_text",
    "vlmplug.plugins.fusion.interleaved",
    "vlmplug.plugins.fusion.cross_attention",
    "vlmplug.plugins.fusion.modality_experts",
    "vlmplug.plugins.peft.full",
    "vlmplug.plugins.peft.lora",
    "vlmplug.plugins.peft.spectrum",
    "vlmplug.plugins.peft.qlora",
    "vlmplug.plugins.datasets.messages",
    "vlmplug.plugins.datasets.shapes",
    "vlmplug.plugins.datasets.llava",
    "vlmplug.plugins.datasets.sharegpt",
    "vlmplug.plugins.datasets.caption",
    "vlmplug.plugins.datasets.hf",
    "vlmplug.plugins.optim.gradient_checkpointing",
    "vlmplug.plugins.optim.mixed_precision",
    "vlmplug.plugins.optim.flash_attention",
    "vlmplug.plugins.optim.liger",
    "vlmplug.plugins.optim.adamw_8bit",
    "vlmplug.plugins.optim.packing",
    "vlmplug.plugins.optim.deepspeed_zero3",
    "vlmplug.plugins.evaluators.vqa",
    "vlmplug.plugins.interop.llava_hf",
    "vlmplug.plugins.roadmap",
)
