"""Generator of the synthetic shapes VQA task (see ``shapes.py``).

Layout: a ``S x S`` canvas split into four quadrants; each shape sits near the centre of its own
quadrant (random size, small jitter), so shapes never overlap and a 16 px-patch encoder at 64 px
sees each shape as one 2 x 2 block of patches. Question type and the yes/no answer are assigned
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
    "presence_location": ["Is there a shape in the {}?", "Is the {} quadrant occupied?"],
    "presence_any": ["Is there a shape in the image?", "Does the image contain a shape?"],
}
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")  # cell = row * 2 + column


def draw_shape(
    draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


class ShapesDataset(Sequence):
    """``len`` samples; ``dataset[i]`` is a canonical sample with a freshly drawn PIL image."""

    def __init__(
        self,
        num_samples: int,
        seed: int,
        image_size: int = 64,
        question_types: Sequence[str] = ("color", "shape", "count", "presence"),
        max_shapes: int = 3,
        image_position: str = "before",
        presence_by: str = "location",
        blank_images: bool = False,
    ):
        self.n, self.seed, self.size = num_samples, seed, image_size
        self.types = list(question_types)
        self.max_shapes = max_shapes
        self.image_position = image_position
        self.presence_by = presence_by
        self.blank_images = blank_images
        self.skipped: list = []  # generated samples are never bad

    def __len__(self) -> int:
        return self.n

    def _image(self, rng: random.Random, shapes: list[tuple[str, str, int]]) -> Image.Image:
        s = self.size
        half = s // 2
        bg = tuple(rng.randint(225, 250) for _ in range(3))
        img = Image.new("RGB", (s, s), bg)
        draw = ImageDraw.Draw(img)
        for kind, color, cell in shapes:
            side = rng.randint(int(half * 0.7), int(half * 0.9))
            slack = (half - side) // 2  # centred in its quadrant, jittered a little
            jitter = max(0, min(2, slack - 1))
            ox = (cell % 2) * half + slack + rng.randint(-jitter, jitter)
            oy = (cell // 2) * half + slack + rng.randint(-jitter, jitter)
            fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLORS[color])
            draw_shape(draw, kind, (ox, oy, ox + side, oy + side), fill)
        return img

    def sample_spec(self, i: int) -> tuple[str, str, list[tuple[str, str, int]], str]:
        """``(question_type, question, shapes, answer)`` for index ``i`` without drawing; each shape is
        ``(kind, color, cell)`` with cell = quadrant index (row * 2 + column)."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = random.Random(self.seed * 1_000_003 + i)
        k = len(self.types)
        qtype = self.types[i % k]
        colors, kinds = list(COLORS), list(SHAPES)

        def place(pairs: list[tuple[str, str]], cells: list[int]) -> list[tuple[str, str, int]]:
            return [(kind, color, cell) for (kind, color), cell in zip(pairs, cells)]

        if qtype in ("color", "shape"):
            pair = (rng.choice(kinds), rng.choice(colors))
            shapes = place([pair], rng.sample(range(4), 1))
            answer = pair[1] if qtype == "color" else pair[0]
            return qtype, rng.choice(TEMPLATES[qtype]), shapes, answer
        if qtype == "count":
            n = rng.randint(1, self.max_shapes)
            shapes = place([(rng.choice(kinds), rng.choice(colors)) for _ in range(n)], rng.sample(range(4), n))
            return qtype, rng.choice(TEMPLATES["count"]), shapes, str(n)
        yes = (i // k) % 2 == 0
        answer = "yes" if yes else "no"
        if self.presence_by == "any":  # "no" images are empty canvases
            n = rng.randint(1, self.max_shapes) if yes else 0
            shapes = place([(rng.choice(kinds), rng.choice(colors)) for _ in range(n)], rng.sample(range(4), n))
            return qtype, rng.choice(TEMPLATES["presence_any"]), shapes, answer
        if self.presence_by == "location":
            target = rng.randrange(4)
            others = [c for c in range(4) if c != target]
            n = rng.randint(1, min(self.max_shapes, 3))
            cells = [target, *rng.sample(others, n - 1)] if yes else rng.sample(others, n)
            shapes = place([(rng.choice(kinds), rng.choice(colors)) for _ in range(n)], cells)
            question = rng.choice(TEMPLATES["presence_location"]).format(QUADRANTS[target])
            return qtype, question, shapes, answer
        attr = rng.choice(("color", "shape"))
        pool = colors if attr == "color" else kinds
        target = rng.choice(pool)
        others = [v for v in pool if v != target]
        n = rng.randint(1, self.max_shapes)
        pairs = []
        for _ in range(n):
            value = rng.choice(others)
            other_attr = rng.choice(kinds if attr == "color" else colors)
            pairs.append((other_attr, value) if attr == "color" else (value, other_attr))
        if yes:
            j = rng.randrange(n)
            kind, color = pairs[j]
            pairs[j] = (kind, target) if attr == "color" else (target, color)
        question = rng.choice(TEMPLATES[f"presence_{attr}"]).format(target)
        return qtype, question, place(pairs, rng.sample(range(4), n)), answer

    def __getitem__(self, i: int) -> dict[str, Any]:
        qtype, question, shapes, answer = self.sample_spec(i)
        rng = random.Random((self.seed * 1_000_003 + i) ^ 0x5EED)
        return {
            "messages": [
                {
                    "role": "user",
                    "content": f"<image>\n{question}" if self.image_position == "before" else f"{question}\n<image>",
                },
                {"role": "assistant", "content": answer},
            ],
            "images": [
                Image.new("RGB", (self.size, self.size), (255, 255, 255))
                if self.blank_images
                else self._image(rng, shapes)
            ],
            "answers": [answer],
            "question_type": qtype,
            "id": f"shapes-{self.seed}-{i}",
        }


def build(config: Any, ctx: Any) -> ShapesDataset:
    return ShapesDataset(
        config.num_samples,
        config.seed,
        config.image_size,
        config.question_types,
        config.max_shapes,
        config.image_position,
        config.presence_by,
        config.blank_images,
    )
