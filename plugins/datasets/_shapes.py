"""Generator of the synthetic shapes VQA task (see ``shapes.py``).

Layout: a ``S x S`` canvas split into four quadrants; each shape sits in its own quadrant with a
random size and offset, so shapes never overlap. Question type and the yes/no answer are assigned
round-robin from the index, so types are exactly uniform and yes/no exactly balanced; everything
else comes from a per-index RNG.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle")
TEMPLATES = {
    "color": ["What color is the shape?", "Which color does the shape have?"],
    "shape": ["What shape is this?", "Which shape is in the image?"],
    "count": ["How many shapes are there?", "How many shapes are in the image?"],
    "presence_color": ["Is there a {} shape?", "Is any shape {}?"],
    "presence_shape": ["Is there a {}?", "Does the image contain a {}?"],
}


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


class ShapesDataset(Sequence):
    """``len`` samples; ``dataset[i]`` is a canonical sample with a freshly drawn PIL image."""

    def __init__(self, num_samples: int, seed: int, image_size: int = 64,
                 question_types: Sequence[str] = ("color", "shape", "count", "presence"), max_shapes: int = 3):
        self.n, self.seed, self.size = num_samples, seed, image_size
        self.types = list(question_types)
        self.max_shapes = max_shapes

    def __len__(self) -> int:
        return self.n

    def _image(self, rng: random.Random, shapes: list[tuple[str, str]]) -> Image.Image:
        s = self.size
        half = s // 2
        bg = tuple(rng.randint(225, 250) for _ in range(3))
        img = Image.new("RGB", (s, s), bg)
        draw = ImageDraw.Draw(img)
        cells = rng.sample(range(4), len(shapes))
        for (kind, color), cell in zip(shapes, cells):
            side = rng.randint(int(half * 0.55), int(half * 0.85))
            ox = (cell % 2) * half + rng.randint(1, half - side - 1)
            oy = (cell // 2) * half + rng.randint(1, half - side - 1)
            fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLORS[color])
            draw_shape(draw, kind, (ox, oy, ox + side, oy + side), fill)
        return img

    def sample_spec(self, i: int) -> tuple[str, str, list[tuple[str, str]], str]:
        """``(question_type, question, shapes, answer)`` for index ``i``, without drawing."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = random.Random(self.seed * 1_000_003 + i)
        k = len(self.types)
        qtype = self.types[i % k]
        colors, kinds = list(COLORS), list(SHAPES)
        if qtype in ("color", "shape"):
            shapes = [(rng.choice(kinds), rng.choice(colors))]
            answer = shapes[0][1] if qtype == "color" else shapes[0][0]
            question = rng.choice(TEMPLATES[qtype])
        elif qtype == "count":
            n = rng.randint(1, self.max_shapes)
            shapes = [(rng.choice(kinds), rng.choice(colors)) for _ in range(n)]
            answer, question = str(n), rng.choice(TEMPLATES["count"])
        else:
            yes = (i // k) % 2 == 0
            attr = rng.choice(("color", "shape"))
            pool = colors if attr == "color" else kinds
            target = rng.choice(pool)
            others = [v for v in pool if v != target]
            n = rng.randint(1, self.max_shapes)
            shapes = []
            for _ in range(n):
                value = rng.choice(others)
                other_attr = rng.choice(kinds if attr == "color" else colors)
                shapes.append((other_attr, value) if attr == "color" else (value, other_attr))
            if yes:
                j = rng.randrange(n)
                kind, color = shapes[j]
                shapes[j] = (kind, target) if attr == "color" else (target, color)
            answer = "yes" if yes else "no"
            question = rng.choice(TEMPLATES[f"presence_{attr}"]).format(target)
        return qtype, question, shapes, answer

    def __getitem__(self, i: int) -> dict[str, Any]:
        qtype, question, shapes, answer = self.sample_spec(i)
        rng = random.Random((self.seed * 1_000_003 + i) ^ 0x5EED)
        return {
            "messages": [
                {"role": "user", "content": f"<image>\n{question}"},
                {"role": "assistant", "content": answer},
            ],
            "images": [self._image(rng, shapes)],
            "answers": [answer],
            "question_type": qtype,
            "id": f"shapes-{self.seed}-{i}",
        }


def build(config: Any, ctx: Any) -> ShapesDataset:
    return ShapesDataset(config.num_samples, config.seed, config.image_size, config.question_types, config.max_shapes)
