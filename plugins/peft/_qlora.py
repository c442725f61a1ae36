"""QLoRA: LoRA (``_lora``) on an LLM whose linear layers bitsandbytes holds in 4-bit (or 8-bit).

* Loading: ``model_load_kwargs`` gives the LLM's ``from_pretrained`` a ``BitsAndBytesConfig``, so a hub
  model is quantised as it loads and never sits in memory at full precision. A preset or a model
  taken from a finished stage is saved and reloaded through the same path by the core.
* Training: peft's k-bit preparation (norms and embeddings in float32, inputs that carry gradients),
  then LoRA; the quantised weights are frozen.
* Saving: the adapter (``adapter/``), and -- when no hub id reproduces the base -- the base at full
  precision (``llm_base/``), which loading quantises again with the same settings: NF4 quantisation
  is deterministic, so the reloaded model computes what the trained one did.
* Merging (``merge``): the 4-bit weights are dequantised and the adapters folded in at full precision,
  which is the function the trained model computes; re-quantising the merged weights would add a
  second rounding, so the merged LLM stays at full precision.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ._lora import LoraMethod

#: ``bnb_4bit_compute_dtype`` values -> torch dtypes.
COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class QloraMethod(LoraMethod):
    def __init__(self, config: Any, hardware: Any):
        super().__init__(config)
        self.compute_dtype = self._compute_dtype(config.bnb_4bit_compute_dtype, hardware)

    @staticmethod
    def _compute_dtype(name: str, hardware: Any) -> torch.dtype:
        if name == "auto":
            return torch.bfloat16 if hardware is not None and hardware.bf16 else torch.float32
        return COMPUTE_DTYPES[name]

    def quantization_config(self) -> Any:
        from transformers import BitsAndBytesConfig

        c = self.config
        return BitsAndBytesConfig(
            load_in_4bit=c.load_in_4bit,
            load_in_8bit=c.load_in_8bit,
            bnb_4bit_quant_type=c.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=self.compute_dtype,
            bnb_4bit_use_double_quant=c.bnb_4bit_use_double_quant,
            llm_int8_skip_modules=list(c.llm_int8_skip_modules) or None,
        )

    def model_load_kwargs(self) -> dict[str, Any]:
        return {"quantization_config": self.quantization_config()}

    def apply(self, vlm: Any) -> Any:
        from peft import prepare_model_for_kbit_training

        if not is_quantized(vlm.llm):
            raise ValueError(
                "qlora: the LLM was not loaded quantised (its from_pretrained did not receive the "
                "quantization config); load it through vlmplug's model loading"
            )
        keep_cpu_weights_exact(vlm.llm)
        vlm.llm = prepare_model_for_kbit_training(
            vlm.llm, use_gradient_checkpointing=self.config.gradient_checkpointing_prep
        )
        return super().apply(vlm)

    def _capture_base(self, vlm: Any) -> None:
        """The base is kept on disk at full precision (where the core saved it before quantising)."""
        source = Path(str(vlm.llm.config._name_or_path))
        if not (source / "config.json").is_file():
            raise ValueError(
                f"qlora: the full-precision weights of the base LLM ({source}) are gone, so the base "
                "cannot be saved with the adapter"
            )
        self._base_dir = source

    def save_base(self, vlm: Any, directory: Path) -> None:
        """Copy the full-precision base the LLM was quantised from (safetensors and config only)."""
        target = directory / "llm_base"
        target.mkdir(parents=True, exist_ok=True)
        for f in self._base_dir.iterdir():
            if f.suffix in (".safetensors", ".json") and f.is_file():
                shutil.copy2(f, target / f.name)

    def load_llm(self, directory: str, files: Mapping[str, str], load_base: Callable[[], Any]) -> Any:
        """The base quantised as in training (``llm_base/`` or the start model), with the adapter."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        root = Path(directory)
        if "llm_base" in files:
            base = AutoModelForCausalLM.from_pretrained(
                root / files["llm_base"], dtype=self.compute_dtype, **self.model_load_kwargs()
            )
        else:
            base = load_base()
        keep_cpu_weights_exact(base)
        return PeftModel.from_pretrained(base, root / files["adapter"])

    def merge(self, vlm: Any) -> Any:
        """Dequantise the base, fold the adapters in at full precision (see the module docstring)."""
        from peft import get_peft_model
        from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

        model = vlm.llm
        adapter = get_peft_model_state_dict(model)
        config = model.peft_config["default"]
        base = model.unload().dequantize()
        restored = get_peft_model(base, config)
        set_peft_model_state_dict(restored, adapter)
        vlm.llm = restored.merge_and_unload()
        vlm.peft_method = None
        return vlm


def keep_cpu_weights_exact(llm: Any) -> None:
    """Turn off bitsandbytes' CPU inference repacking (on AVX512-BF16 CPUs a 4-bit layer called without
    gradients rewrites its weight into a packed layout with bfloat16 scales and drops double
    quantisation): lossy, and the model would train on other weights after its first evaluation than
    it saves."""
    for module in llm.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def is_quantized(llm: Any) -> bool:
    return bool(getattr(llm, "is_loaded_in_4bit", False) or getattr(llm, "is_loaded_in_8bit", False))


def build(config: Any, ctx: Any) -> QloraMethod:
    return QloraMethod(config, getattr(ctx, "hardware", None))
