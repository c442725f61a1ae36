"""The recipe keys the core owns, and the guide keys whose components come in later releases.

Component keys live with their components (each spec's config dataclass, ``flat_keys`` and
``activated_by``); this module lists only what belongs to no component: the model, tokenizer,
data-pipeline and evaluation settings, and the subset of ``transformers.TrainingArguments`` a recipe
may set at top level (types given here so that ``vlmplug config`` needs no transformers import;
``tests/core/test_keys.py`` checks them against the real dataclass). Any other TrainingArguments
field goes under ``training_args:`` and is validated when training starts.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

__all__ = ["CORE_KEYS", "TRAINING_KEYS", "TRAINING_ALIASES", "PLANNED_KEYS", "PLANNED_COMPONENTS",
           "PLANNED_VALUES"]

# name -> (type, default, help)
CORE_KEYS: dict[str, tuple[Any, Any, str]] = {
    "name": (str, "run", "Run name; outputs go to runs/<name>/ unless output_dir is set."),
    "description": (str, "", "One line shown by `vlmplug recipes`."),
    "model": (str, None, "The LLM: a hub id, a local path, or the preset 'tiny-llama' (built from config)."),
    "tokenizer": (Optional[str], None, "Tokenizer hub id or path (default: the model's)."),
    "model_config": (dict, {}, "Overrides for the LLM config, e.g. {hidden_size: 128} for a preset."),
    "trust_remote_code": (bool, False, "Allow model repos to run their own code. Off unless you set it."),
    "dtype": (Literal["float32", "bfloat16", "float16", "auto"], "float32",
              "dtype the LLM and vision tower are loaded in (mixed precision is separate)."),
    "attn_implementation": (Literal["auto", "eager", "sdpa"], "auto",
                            "Attention kernel of the LLM; 'auto' lets transformers choose (logged)."),
    "use_peft": (Optional[bool], None, "true: train adapters (default method lora); false: full fine-tuning."),
    "max_seq_length": (int, 1024, "Longest tokenized sample (image tokens included)."),
    "image_token": (str, "<image>", "The image placeholder written in messages."),
    "chat_template": (Optional[str], None, "A Jinja chat template overriding the tokenizer's."),
    "on_bad_sample": (Literal["error", "skip"], "error",
                      "Bad rows (missing images, wrong <image> counts, over-long): stop with an error, "
                      "or skip them and report the count."),
    "output_dir": (Optional[str], None, "Where the run is written (default runs/<name>)."),
    "overwrite_output_dir": (bool, False, "Allow writing into a non-empty output_dir."),
    "resume_from_checkpoint": (Optional[str], None, "A checkpoint dir to resume from, or 'last'."),
    "num_threads": (Optional[int], None, "torch CPU threads (default: torch's choice)."),
    "eval_before_training": (bool, True, "Evaluate the untrained model too, for a before/after table."),
    "eval_max_new_tokens": (int, 16, "Generation budget per evaluation answer."),
    "eval_batch_size": (int, 32, "Batch size for evaluation generation."),
    "eval_max_samples": (Optional[int], None, "Evaluate at most this many held-out samples."),
    "eval_every_steps": (Optional[int], None,
                         "Also evaluate every N training steps (on eval_curve_samples held-out samples) "
                         "and record the accuracy curve in metrics.json."),
    "eval_curve_samples": (int, 200, "Held-out samples per evaluation of the curve."),
    "eval_blank_images": (bool, False,
                          "Also evaluate with blank images, to measure how much answers depend on the image."),
}

# TrainingArguments fields accepted at recipe top level: name -> type (default is transformers').
TRAINING_KEYS: dict[str, Any] = {
    "num_train_epochs": float,
    "max_steps": int,
    "per_device_train_batch_size": int,
    "per_device_eval_batch_size": int,
    "gradient_accumulation_steps": int,
    "learning_rate": float,
    "weight_decay": float,
    "adam_beta1": float,
    "adam_beta2": float,
    "adam_epsilon": float,
    "max_grad_norm": float,
    "lr_scheduler_type": str,
    "warmup_steps": Union[int, float],
    "logging_steps": Union[int, float],
    "logging_first_step": bool,
    "save_strategy": str,
    "save_steps": Union[int, float],
    "save_total_limit": Optional[int],
    "seed": int,
    "data_seed": Optional[int],
    "optim": str,
    "dataloader_num_workers": int,
    "dataloader_drop_last": bool,
    "train_sampling_strategy": str,
    "label_smoothing_factor": float,
    "report_to": Union[str, list],
    "run_name": Optional[str],
    "torch_compile": bool,
}

#: Training keys of older transformers / the guide that TrainingArguments 5.x spells differently:
#: key -> (type, TrainingArguments field, how the value maps).
TRAINING_ALIASES: dict[str, tuple[Any, str, str]] = {
    "warmup_ratio": (float, "warmup_steps", "a float in [0, 1) is read as a fraction of the total steps"),
    "group_by_length": (bool, "train_sampling_strategy", "true -> 'group_by_length'"),
}

#: Guide keys whose component is not in this release: key -> (component, family).
PLANNED_KEYS: dict[str, tuple[str, str]] = {
    "load_in_4bit": ("qlora", "peft"),
    "load_in_8bit": ("qlora", "peft"),
    "bnb_4bit_compute_dtype": ("qlora", "peft"),
    "bnb_4bit_use_double_quant": ("qlora", "peft"),
    "bnb_4bit_quant_type": ("qlora", "peft"),
    "use_liger": ("liger", "optimizer_stack"),
    "packing": ("packing", "optimizer_stack"),
    "num_query_tokens": ("perceiver", "connector"),
    "max_num_frames": ("video", "dataset_format"),
    "frame_sampling": ("video", "dataset_format"),
    "image_resolution": ("siglip", "vision_encoder"),
    "patch_pooling": ("siglip", "vision_encoder"),
    "augmentation": ("document", "dataset_format"),
    "deepspeed": ("deepspeed-zero3", "optimizer_stack"),
    "fsdp": ("fsdp", "optimizer_stack"),
    "spectrum_top_percent": ("spectrum", "peft"),
}

#: Values of core keys that select a planned component: (key, value) -> (component, family).
PLANNED_VALUES: dict[tuple[str, Any], tuple[str, str]] = {
    ("attn_implementation", "flash_attention_2"): ("flash-attention", "optimizer_stack"),
    ("attn_implementation", "flash_attention_3"): ("flash-attention", "optimizer_stack"),
}

#: Components on the roadmap (DESIGN.md §6) that no installed plugin provides yet: name -> family.
PLANNED_COMPONENTS: dict[str, str] = {
    "siglip": "vision_encoder",
    "eva-clip": "vision_encoder",
    "patches": "vision_encoder",
    "perceiver": "connector",
    "perceiver_resampler": "connector",
    "perceiver-resampler": "connector",
    "qformer": "connector",
    "qformer-text": "connector",
    "cross-attention": "fusion",
    "modality-experts": "fusion",
    "qlora": "peft",
    "spectrum": "peft",
    "llava": "dataset_format",
    "sharegpt": "dataset_format",
    "video": "dataset_format",
    "hf": "dataset_format",
    "document": "dataset_format",
    "flash-attention": "optimizer_stack",
    "liger": "optimizer_stack",
    "packing": "optimizer_stack",
    "adamw-8bit": "optimizer_stack",
    "deepspeed-zero3": "optimizer_stack",
    "fsdp": "optimizer_stack",
    "textvqa": "evaluator",
    "gqa": "evaluator",
    "docvqa": "evaluator",
    "pope": "evaluator",
    "multiple-choice": "evaluator",
    "llm-judge": "evaluator",
}
