"""``shapes``: a seeded synthetic VQA task of coloured shapes, generated on the fly.

Questions ask about colour, shape, count and presence (yes/no answers balanced exactly; by
by default presence of any shape, optionally in a named quadrant or of a named colour or shape). Every
sample is a pure function of ``(seed, index)``, so the held-out split (another seed) never overlaps
training and nothing is stored on disk. It is the quickstart's data: small enough to learn on a
laptop CPU in minutes, yet unanswerable without looking at the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vlmplug import ComponentSpec, hookimpl

QuestionType = Literal["color", "shape", "count", "presence"]


@dataclass(frozen=True, kw_only=True)
class ShapesConfig:
    num_samples: int = field(default=20000, metadata={"help": "Number of question/image pairs."})
    seed: int = field(default=0, metadata={"help": "Generator seed; use another seed for held-out data."})
    image_size: int = field(default=64, metadata={"help": "Image side in pixels."})
    question_types: list[QuestionType] = field(
        default_factory=lambda: ["color", "shape", "count", "presence"],
        metadata={"help": "Question types, drawn uniformly."},
    )
    max_shapes: int = field(default=3, metadata={"help": "Most shapes in a count/presence image (1-4)."})
    presence_by: Literal["any", "location", "attribute"] = field(
        default="any",
        metadata={
            "help": "Yes/no presence questions ask whether the image holds any shape "
            "('no' images are empty), whether a named quadrant does, or whether a "
            "colour/shape is present. The last two need the LLM to match a word in "
            "the question against the image, which a random-init tiny LLM does not "
            "learn within the quickstart's budget (measured: chance level)."
        },
    )
    image_position: Literal["before", "after"] = field(
        default="before",
        metadata={
            "help": "Put <image> before the question (LLaVA's layout) or after it "
            "(image tokens can then attend to the question)."
        },
    )
    blank_images: bool = field(
        default=False,
        metadata={
            "help": "Replace every image by a blank canvas of the same size: the same "
            "questions and answers, nothing to see. As an eval set it measures how "
            "much the answers depend on the image (a model that looks scores "
            "near the answer prior)."
        },
    )

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError("num_samples must be positive")
        if not 1 <= self.max_shapes <= 4:
            raise ValueError("max_shapes must be between 1 and 4 (one shape per image quadrant)")
        if self.image_size < 32:
            raise ValueError("image_size must be at least 32")
        if not self.question_types:
            raise ValueError("question_types must name at least one type")


SPEC = ComponentSpec(
    name="shapes",
    summary="Synthetic coloured-shapes VQA (colour, shape, count, yes/no presence), seeded",
    factory="vlmplug.plugins.datasets._shapes:build",
    config=ShapesConfig,
    test_options={"num_samples": 12, "image_size": 32},
)


@hookimpl
def register_dataset_formats(register) -> None:
    register(SPEC)


@hookimpl
def register_commands(cli: Any) -> None:
    """``vlmplug data shapes`` (the core's ``data`` group holds the format-independent commands)."""
    from ._shapes_cli import shapes_cmd

    data = cli.commands.get("data")
    if data is not None:
        data.add_command(shapes_cmd)
