"""``vqa-data``: the question and annotation files of the three VQA benchmarks the guide names.

* **VQAv2** (Goyal et al. 2017, "Making the V in VQA Matter"): a questions file
  ``v2_OpenEnded_mscoco_train2014_questions.json`` ``{"questions": [{image_id, question, question_id}]}``
  and an annotations file ``v2_mscoco_train2014_annotations.json`` ``{"annotations": [{question_id,
  image_id, answers: [{answer, answer_confidence, answer_id}] (10), multiple_choice_answer,
  question_type, answer_type}]}``; images ``COCO_train2014_{image_id:012d}.jpg`` (the split in the
  file name follows the questions file's: ``val2014`` questions read ``COCO_val2014_...``).
* **GQA** (Hudson & Manning 2019, "GQA: A New Dataset for Real-World Visual Reasoning and
  Compositional Question Answering"): ``train_balanced_questions.json`` ``{qid: {imageId, question,
  answer, fullAnswer, types: {structural, semantic, detailed}, ...}}``; images ``{image_id}.jpg``.
* **TextVQA** (Singh et al. 2019, "Towards VQA Models That Can Read"): ``TextVQA_0.5.1_train.json``
  ``{"data": [{question, image_id, answers: [10 strings], question_id, ...}]}``; images
  ``{image_id}.jpg`` (the ``train_images`` folder).

``layout: auto`` tells them apart by the JSON's shape. Each question becomes one sample: the user turn
is ``prompt`` (default: LLaVA-1.5's short-answer VQA prompt) with the question, the assistant turn the
training target (``answer: most_common``: the most frequent of the annotators' answers;
``multiple_choice``: VQAv2's ``multiple_choice_answer``). Every sample keeps ``answers`` (all
annotators' answers, for VQA accuracy), ``question_type``, ``answer_type``, ``question_id`` and
``image_id`` (``None`` where the benchmark has none; GQA's types are its ``detailed`` and
``structural`` types, and ``full_answer`` its ``fullAnswer``). Not detected: name it with
``format: vqa-data``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlmplug import ComponentSpec, hookimpl

#: LLaVA-1.5's prompt for short-answer VQA (Liu et al. 2024, "Improved Baselines with Visual
#: Instruction Tuning"): the question, then the answer-format instruction.
DEFAULT_PROMPT = "<image>\n{question}\nAnswer the question using a single word or phrase."


@dataclass(frozen=True, kw_only=True)
class VqaDataConfig:
    questions: str = field(
        default="",
        metadata={
            "help": "The questions file: VQAv2 v2_OpenEnded_mscoco_*_questions.json, GQA *_questions.json "
            "or TextVQA_0.5.1_*.json."
        },
    )
    annotations: str | None = field(
        default=None,
        metadata={"help": "VQAv2 only: the answers file, e.g. v2_mscoco_train2014_annotations.json."},
    )
    layout: Literal["auto", "vqav2", "gqa", "textvqa"] = field(
        default="auto", metadata={"help": "Which benchmark's layout the files follow (auto: from the JSON's shape)."}
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder of the images, e.g. coco/train2014 or gqa/images (default: the questions file's)."},
    )
    image_pattern: str | None = field(
        default=None,
        metadata={
            "help": "Image file name from the image id, e.g. 'COCO_train2014_{image_id:012d}.jpg' (default: "
            "the layout's: VQAv2 COCO_<split>_{image_id:012d}.jpg, GQA and TextVQA {image_id}.jpg)."
        },
    )
    prompt: str = field(
        default=DEFAULT_PROMPT,
        metadata={"help": "User-turn template with one <image> and {question}."},
    )
    answer: Literal["most_common", "multiple_choice"] = field(
        default="most_common",
        metadata={"help": "Training target: the most common annotator answer, or VQAv2's multiple_choice_answer."},
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Keep at most this many samples (every question is still checked)."}
    )

    def __post_init__(self) -> None:
        if not self.questions:
            raise ValueError("questions: the vqa-data format needs the questions file")
        if self.prompt.count("<image>") != 1 or "{question}" not in self.prompt:
            raise ValueError(
                f"prompt: {self.prompt!r} must contain exactly one <image> and {{question}}, "
                f'e.g. "<image>\\n{{question}}\\nAnswer the question using a single word or phrase."'
            )
        if self.image_pattern is not None and "{image_id" not in self.image_pattern:
            raise ValueError(
                f"image_pattern: {self.image_pattern!r} must contain {{image_id}} (or a formatted form such "
                f"as {{image_id:012d}})"
            )
        if self.layout in ("gqa", "textvqa") and self.annotations:
            raise ValueError(f"annotations: only VQAv2 has a separate annotations file; {self.layout} has none")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError("max_samples must be positive")


SPEC = ComponentSpec(
    name="vqa-data",
    summary="VQAv2 questions + annotations, GQA or TextVQA JSON: one short-answer sample per question",
    factory="vlmplug.plugins.datasets._vqa_data:build",
    config=VqaDataConfig,
    test_options={"questions": "{vqav2_questions}", "annotations": "{vqav2_annotations}"},
)


@hookimpl
def register_dataset_formats(register) -> None:
    register(SPEC)
