"""DocVQA files and ``{image, question, answers}`` rows -> canonical samples; scan augmentations.

With augmentation on, a sample's image is an :class:`AugmentedImage` (a
:class:`vlmplug.contracts.LazyImage`): it reads its file and augments it only when the pipeline loads
the sample, so building the dataset and the pipeline's up-front checks decode nothing. The
augmentation is a pure function of (file, seed, sample index): :func:`augment` with a
``random.Random`` seeded from them.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmplug.errors import DataError

from ._caption import IMAGE, _load_json, image_token, raise_or_skip
from ._messages import _outside, _resolve, _rows
from .document import Augment

WHITE = (255, 255, 255)


def perspective_coeffs(output: list[tuple[float, float]], source: list[tuple[float, float]]) -> list[float]:
    """The 8 coefficients ``(a..h)`` of the homography PIL's ``Image.PERSPECTIVE`` applies, mapping each
    ``output`` corner to its ``source`` corner: ``x_src = (a x + b y + c) / (g x + h y + 1)``, alike for y."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(output, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return [float(c) for c in np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64))]


def augment(img: Image.Image, rng: random.Random, settings: Augment) -> Image.Image:
    """Rotate (white fill, same size), warp the page into a quadrilateral of corners moved inwards by
    up to ``perspective`` x half the side (torchvision's RandomPerspective convention), re-encode as
    JPEG at a random quality. Same ``rng`` state -> same pixels."""
    img = img.convert("RGB")
    w, h = img.size
    angle = rng.uniform(*settings.rotation)
    img = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=WHITE)
    if settings.perspective > 0:
        dx, dy = settings.perspective * w / 2, settings.perspective * h / 2
        corners = [(0.0, 0.0), (w - 1.0, 0.0), (w - 1.0, h - 1.0), (0.0, h - 1.0)]
        signs = [(1, 1), (-1, 1), (-1, -1), (1, -1)]  # inwards from each corner
        moved = [(x + sx * rng.uniform(0, dx), y + sy * rng.uniform(0, dy)) for (x, y), (sx, sy) in zip(corners, signs)]
        coeffs = perspective_coeffs(moved, corners)
        img = img.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC, fillcolor=WHITE)
    quality = rng.randint(*settings.jpeg_quality)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


@dataclass(frozen=True)
class AugmentedImage:
    """A page augmented when its pixels are needed (a :class:`vlmplug.contracts.LazyImage`): the
    pipeline checks ``path`` up front and calls :meth:`open` when it loads the sample; it pickles as
    the recipe (file, seed, settings), not as pixels, and gives the same pixels on every read."""

    path: str
    key: str
    settings: Augment

    def open(self) -> Image.Image:
        with Image.open(self.path) as src:
            return augment(src, random.Random(self.key), self.settings)


def _where(path: Path, n: int, official: bool) -> str:
    if official:
        return f"{path} record {n}"
    return f"{path}:{n}" if path.suffix == ".jsonl" else f"{path} record {n}"


def to_sample(row: Any, where: str, prompt: str) -> tuple[dict[str, Any] | None, DataError | None]:
    """One row -> a sample with the image path still relative, or the problem."""

    def bad(message: str, reason: str = "malformed-row") -> tuple[None, DataError]:
        return None, DataError(f"{where}: {message}", reason=reason, where=where)

    if not isinstance(row, dict):
        return bad(f"expected an object {{image, question, answers}}, got {type(row).__name__}")
    if not isinstance(row.get("image"), str) or not row["image"]:
        return bad(f"'image' must be an image path (or data URI), got {row.get('image')!r:.80}")
    if not isinstance(row.get("question"), str) or not row["question"].strip():
        return bad("'question' must be a non-empty string")
    answers = row.get("answers", [row["answer"]] if "answer" in row else None)
    if not isinstance(answers, list) or not answers:
        return bad("no answers (DocVQA's test split has none); training and ANLS need them", "no-answers")
    if not all(isinstance(a, str) for a in answers) or not answers[0].strip():
        return bad(f"answers must be strings, the first non-empty (the target); got {answers!r:.80}")
    extra = {k: v for k, v in row.items() if k not in ("image", "question", "answers", "answer", "questionId")}
    if "questionId" in row:
        extra["question_id"] = row["questionId"]
    return {
        **extra,
        "messages": [
            {"role": "user", "content": prompt.replace("{question}", row["question"].strip())},
            {"role": "assistant", "content": answers[0].strip()},
        ],
        "images": [row["image"]],
        "answers": list(answers),
    }, None


class DocumentDataset(Sequence):
    """Canonical document-VQA samples; with ``augment`` set, ``__getitem__`` gives each sample its
    lazily augmented image (keyed by seed and index)."""

    def __init__(
        self,
        config: Any,
        skip_bad: bool = False,
        token: str = IMAGE,
        allow_outside: bool = False,
        train: bool = True,
    ):
        self.path = Path(config.path)
        root = Path(config.image_root) if config.image_root else self.path.parent
        official = False
        if self.path.suffix == ".jsonl":
            rows = _rows(self.path)
        else:
            data = _load_json(self.path)
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                official, rows = True, list(enumerate(data["data"]))
            elif isinstance(data, list):
                rows = list(enumerate(data))
            else:
                raise DataError(
                    f"{self.path}: expected DocVQA's {{data: [...]}} or a list of {{image, question, answers}} rows"
                )
        prompt = config.prompt.replace(IMAGE, token)
        #: The augmentation of training images (None: off, or an eval set).
        self.augment: Augment | None = config.augment() if train else None
        self.seed = config.seed
        self.samples: list[dict[str, Any]] = []
        problems: list[DataError] = []
        for n, row in rows:
            where = _where(self.path, n, official)
            if isinstance(row, DataError):
                problems.append(row)
                continue
            sample, problem = to_sample(row, where, prompt)
            if sample is not None:
                sample["images"] = [_resolve(sample["images"][0], root)]
                sample["_where"] = where
                outside = None if allow_outside else _outside(sample, root, where)
                problem = DataError(outside, reason="outside-data", where=where) if outside else None
            if problem is None and self.augment is not None and not Path(sample["images"][0]).is_file():  # type: ignore[index]
                # an augmented image is a PIL object, which the pipeline's up-front check passes unread
                problem = DataError(
                    f"{where}: image not found: {sample['images'][0]}; fix the path (relative to the data file) "  # type: ignore[index]
                    f"or set on_bad_sample: skip",
                    reason="missing-image",
                    where=where,
                )
            if problem is not None:
                problems.append(problem)
                continue
            assert sample is not None
            self.samples.append(sample)
        self.skipped: list[DataError] = raise_or_skip(problems, self.path, skip_bad)
        if config.max_samples is not None:
            self.samples = self.samples[: config.max_samples]

    def image(self, i: int) -> Any:
        """Sample ``i``'s image as training reads it: the path, or its augmented image."""
        path = self.samples[i]["images"][0]
        if self.augment is None or path.startswith("data:"):
            return path
        return AugmentedImage(path, f"document:{self.seed}:{i}", self.augment)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]  # no slices
        sample = self.samples[i]
        if self.augment is None:
            return sample
        return {**sample, "images": [self.image(i)]}


def _is_eval_only(config: Any, ctx: Any) -> bool:
    """Whether the recipe lists this dataset under ``eval_datasets`` and not under ``datasets`` (a
    factory is not told which; the same options in both count as training)."""
    recipe = getattr(ctx, "recipe", None)

    def listed(key: str) -> bool:
        return any(sel.name == "document" and sel.config() == config for sel in getattr(recipe, key, None) or [])

    return listed("eval_datasets") and not listed("datasets")


def build(config: Any, ctx: Any) -> DocumentDataset:
    return DocumentDataset(
        config,
        skip_bad=ctx.on_bad_sample == "skip",
        token=image_token(ctx),
        allow_outside=bool(getattr(ctx, "allow_paths_outside_data", False)),
        train=not _is_eval_only(config, ctx),
    )
