"""The recipe keys the core owns, with their types, defaults, help and numeric bounds.

Component keys live with their components (each spec's config dataclass, ``flat_keys`` and
``activated_by``); this module lists only what belongs to no component: the model, tokenizer,
data-pipeline and evaluation settings, and the subset of ``transformers.TrainingArguments`` a recipe
may set at top level (types given here so that ``vlmplug config`` needs no transformers import;
``tests/core/test_keys.py`` checks them against the real dataclass). Any other TrainingArguments
field goes under ``training_args:`` and is validated when training starts.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["CORE_KEYS", "TRAINING_KEYS", "TRAINING_ALIASES", "BOUNDS", "check_bounds"]

# name -> (type, default, help)
CORE_KEYS: dict[str, tuple[Any, Any, str]] = {
    "name": (str, "run", "Run name; outputs go to runs/<name>/ unless output_dir is set."),
    "description": (str, "", "One line shown by `vlmplug recipes`."),
    "model": (str, None, "The LLM: a hub id, a local path, or the preset 'tiny-llama' (built from config)."),
    "tokenizer": (str | None, None, "Tokenizer hub id or path (default: the model's)."),
    "model_config": (dict, {}, "Overrides for the LLM config, e.g. {hidden_size: 128} for a preset."),
    "trust_remote_code": (bool, False, "Allow model repos to run their own code. Off unless you set it."),
    "dtype": (
        Literal["float32", "bfloat16", "float16", "auto"],
        "float32",
        "dtype the LLM and vision tower are loaded in (mixed precision is separate).",
    ),
    "attn_implementation": (
        Literal["auto", "eager", "sdpa"],
        "auto",
        "Attention kernel of the LLM; 'auto' lets transformers choose (logged). Other "
        "values (flash_attention_2) select the component that provides them.",
    ),
    "use_peft": (bool | None, None, "true: train adapters (default method lora); false: full fine-tuning."),
    "modules": (
        dict,
        {},
        "Per part (vision_encoder, connector, llm, fusion): train (frozen | full | for the llm a PEFT "
        "method), learning_rate, weight_decay; see docs/training.md.",
    ),
    "stage": (
        str | None,
        None,
        "A training stage's defaults (recipes/stages/): align (connector only, lr 1e-3, 1 epoch), "
        "instruct (QLoRA 2e-4, or full fine-tuning 2e-5), task (QLoRA 1e-4); the recipe's own keys win.",
    ),
    "max_seq_length": (int, 1024, "Longest tokenized sample (image tokens included)."),
    "image_token": (str, "<image>", "The image placeholder written in messages."),
    "max_num_frames": (
        int,
        8,
        "Frames taken from each video (a sample's 'videos', one <video> in the text each); a connector "
        "that takes whole videos (perceiver) gets them together, any other one frame by frame.",
    ),
    "frame_sampling": (
        Literal["uniform", "fps"],
        "uniform",
        "Which frames: 'uniform' (the middle of max_num_frames equal segments) or 'fps' (sampling_fps "
        "frames per second, thinned uniformly to max_num_frames).",
    ),
    "sampling_fps": (float, 1.0, "Frames per second of video taken under frame_sampling: fps."),
    "chat_template": (
        str | None,
        None,
        "The chat template, overriding the tokenizer's: a built-in by name (llama3, chatml, vicuna) or Jinja.",
    ),
    "on_bad_sample": (
        Literal["error", "skip"],
        "error",
        "Bad rows (missing images, wrong <image> counts, over-long): stop with an error, "
        "or skip them and report the count.",
    ),
    "on_overlength": (
        Literal["truncate-text", "skip", "error"],
        "truncate-text",
        "A training sample longer than max_seq_length (image tokens counted): cut its text from the end, "
        "never inside an image's tokens (images after the cut are dropped), counted and reported; skip it "
        "(counted); or stop with an error naming it.",
    ),
    "allow_paths_outside_data": (
        bool,
        False,
        "Let a dataset read images and videos outside its folder (its file's folder, or image_root): "
        "'../' and absolute paths elsewhere are refused by default.",
    ),
    "cache_tokenized": (
        bool,
        True,
        "Keep the tokenised training data next to the run folders (<runs>/.tokenized/) and reuse it when "
        "a later run encodes the same data the same way.",
    ),
    "streaming": (
        bool,
        False,
        "Read, check and tokenise the training rows while training, in the DataLoader (workers), instead "
        "of all before step 1: for data larger than memory. Needs max_steps; the data repeats, reshuffled "
        "each pass. Formats with stream() only (messages JSONL); see docs/data.md#streaming.",
    ),
    "shuffle_buffer": (
        int,
        1000,
        "Under streaming: rows held in the shuffle buffer of each stream (0: file order).",
    ),
    "output_dir": (str | None, None, "Where the run is written (default runs/<name>)."),
    "overwrite_output_dir": (bool, False, "Allow writing into a non-empty output_dir."),
    "resume_from_checkpoint": (str | None, None, "A checkpoint dir to resume from, or 'last'."),
    "num_threads": (int | None, None, "torch CPU threads (default: torch's choice)."),
    "eval_before_training": (bool, True, "Evaluate the untrained model too, for a before/after table."),
    "eval_max_new_tokens": (int, 16, "Generation budget per evaluation answer."),
    "eval_batch_size": (int, 32, "Batch size for evaluation generation."),
    "eval_max_samples": (int | None, None, "Evaluate at most this many held-out samples."),
    "eval_every_steps": (
        int | None,
        None,
        "Also evaluate every N training steps (on eval_curve_samples samples of the first "
        "eval set) and record the curve of the evaluators' metrics in metrics.json.",
    ),
    "eval_curve_samples": (int, 200, "Held-out samples per evaluation of the curve (at most eval_max_samples)."),
    "max_train_seconds": (
        float | None,
        None,
        "Stop training after this many seconds of training (evaluations excluded), e.g. to compare "
        "architectures on the same compute budget; the run ends normally (saved, evaluated).",
    ),
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
    "warmup_steps": int | float,
    "logging_steps": int | float,
    "logging_first_step": bool,
    "save_strategy": str,
    "save_steps": int | float,
    "save_total_limit": int | None,
    "seed": int,
    "data_seed": int | None,
    "optim": str,
    "dataloader_num_workers": int,
    "dataloader_drop_last": bool,
    "train_sampling_strategy": str,
    "label_smoothing_factor": float,
    "report_to": str | list,
    "run_name": str | None,
    "torch_compile": bool,
}

#: Training keys of older transformers / the guide that TrainingArguments 5.x spells differently:
#: key -> (type, TrainingArguments field, how the value maps).
TRAINING_ALIASES: dict[str, tuple[Any, str, str]] = {
    "warmup_ratio": (float, "warmup_steps", "a float in [0, 1) is read as a fraction of the total steps"),
    "group_by_length": (bool, "train_sampling_strategy", "true -> 'group_by_length'"),
}

#: Numeric bounds checked when a recipe resolves (``vlmplug config`` rejects a bad value before
#: anything loads): key -> (lowest, highest, lowest allowed?, highest allowed?). ``None`` = unbounded.
BOUNDS: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "learning_rate": (0, None, False, True),
    "num_train_epochs": (0, None, False, True),
    "max_steps": (1, None, True, True),
    "per_device_train_batch_size": (1, None, True, True),
    "per_device_eval_batch_size": (1, None, True, True),
    "gradient_accumulation_steps": (1, None, True, True),
    "weight_decay": (0, None, True, True),
    "adam_beta1": (0, 1, True, False),
    "adam_beta2": (0, 1, True, False),
    "adam_epsilon": (0, None, False, True),
    "max_grad_norm": (0, None, True, True),
    "warmup_steps": (0, None, True, True),
    "warmup_ratio": (0, 1, True, False),
    "logging_steps": (0, None, False, True),
    "save_steps": (0, None, False, True),
    "save_total_limit": (1, None, True, True),
    "dataloader_num_workers": (0, None, True, True),
    "label_smoothing_factor": (0, 1, True, False),
    "max_seq_length": (1, None, True, True),
    "max_num_frames": (1, None, True, True),
    "sampling_fps": (0, None, False, True),
    "num_threads": (1, None, True, True),
    "eval_max_new_tokens": (1, None, True, True),
    "eval_batch_size": (1, None, True, True),
    "eval_max_samples": (1, None, True, True),
    "eval_every_steps": (1, None, True, True),
    "eval_curve_samples": (1, None, True, True),
    "max_train_seconds": (0, None, False, True),
    "shuffle_buffer": (0, None, True, True),
}

#: A hint appended to the bound error of some keys.
BOUND_HINTS: dict[str, str] = {
    "max_steps": "; omit max_steps to train for num_train_epochs",
    "eval_max_samples": "; omit it to evaluate every held-out sample",
}


def check_bounds(key: str, value: Any, where: str) -> str | None:
    """A problem line when ``value`` is outside ``BOUNDS[key]``, else ``None``."""
    if key not in BOUNDS or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    lo, hi, lo_ok, hi_ok = BOUNDS[key]
    too_low = lo is not None and (value < lo or (value == lo and not lo_ok))
    too_high = hi is not None and (value > hi or (value == hi and not hi_ok))
    if not (too_low or too_high):
        return None
    parts = []
    if lo is not None:
        parts.append(f"{'>=' if lo_ok else '>'} {lo:g}")
    if hi is not None:
        parts.append(f"{'<=' if hi_ok else '<'} {hi:g}")
    return f"{where}: must be {' and '.join(parts)}, got {value!r}{BOUND_HINTS.get(key, '')}"
