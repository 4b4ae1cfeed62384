"""Synthetic vision tasks, drawn with PIL and deterministic from a seed.

Every image holds a large coloured shape (coarse, redundant evidence spread
over many visual tokens) and a small code label of ``CODE_LENGTH`` digits
(fine detail that lives in as many tokens). The tasks ask different questions
of the same images:

* ``ocr``    -- "what is the code?"        visually intensive: one glyph cell per digit
* ``colour`` -- "what color is the shape?" general VQA: any part of the shape answers
* ``shape``  -- "what shape is it?"        general VQA: the outline, coarse

Images are ``size`` pixels square on a grid of ``cell``-pixel cells; each
glyph of the code is centred in its own cell, so with a patch size equal to
``cell`` one visual token sees one glyph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = {
    "red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 200),
    "yellow": (230, 200, 20), "purple": (148, 80, 189), "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = {"ocr": "what is the code?", "colour": "what color is the shape?", "shape": "what shape is it?"}
KINDS = {"ocr": "visually intensive", "colour": "general", "shape": "general"}
TASKS = tuple(QUESTIONS)
# One digit: the toy models learn to read a single glyph to >90% within the CPU
# budget; two-digit codes (100 answers, order matters) stayed far below that.
CODE_LENGTH = 1


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    code: str
    shape_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels
    code_cell: tuple[int, int]  # (row, col) of the first glyph's cell

    def answer(self, task: str) -> str:
        return {"ocr": self.code, "colour": self.colour, "shape": self.shape}[task]


def random_scene(rng: np.random.Generator, size: int = 96, cell: int = 16, code_length: int = CODE_LENGTH) -> Scene:
    cells = size // cell
    span = int(rng.integers(3, 4 + (cells > 6)))  # shape covers span x span cells
    while True:
        r0, c0 = (int(v) for v in rng.integers(0, cells - span + 1, size=2))
        free = [(r, c) for r in range(cells) for c in range(cells - code_length + 1)
                if not (r0 <= r < r0 + span and c0 - code_length < c < c0 + span)]
        if free:
            break
    code_cell = free[int(rng.integers(len(free)))]
    margin = int(rng.integers(1, cell // 3 + 1))
    box = (c0 * cell + margin, r0 * cell + margin, (c0 + span) * cell - margin, (r0 + span) * cell - margin)
    return Scene(
        colour=str(rng.choice(list(COLOURS))), shape=str(rng.choice(SHAPES)),
        code="".join(str(int(d)) for d in rng.integers(0, 10, size=code_length)), shape_box=box,
        code_cell=code_cell,
    )


def draw(scene: Scene, size: int = 96, cell: int = 16) -> Image.Image:
    image = Image.new("RGB", (size, size), (236, 236, 230))
    pen = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    x0, y0, x1, y1 = scene.shape_box
    if scene.shape == "circle":
        pen.ellipse(scene.shape_box, fill=fill)
    elif scene.shape == "square":
        pen.rectangle(scene.shape_box, fill=fill)
    else:
        pen.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    font = ImageFont.load_default(size=int(cell * 0.95))
    row, col = scene.code_cell
    for i, glyph in enumerate(scene.code):
        cx, cy = (col + i) * cell + cell / 2, row * cell + cell / 2
        pen.text((cx, cy), glyph, fill=(20, 20, 20), font=font, anchor="mm")
    return image


def generate(task: str, n: int, seed: int, size: int = 96, cell: int = 16):
    """Yield (image, question, answer, scene) for ``n`` samples of ``task``."""
    if task not in QUESTIONS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    rng = np.random.default_rng([seed, TASKS.index(task)])
    for _ in range(n):
        scene = random_scene(rng, size, cell)
        yield draw(scene, size, cell), QUESTIONS[task], scene.answer(task), scene


def write_task(task: str, out: str | Path, n: int = 300, seed: int = 1234, size: int = 96, cell: int = 16) -> Path:
    """Write ``out/TASK/test.jsonl`` and its PNGs (the README's Dataset file section); returns the JSONL path."""
    folder = Path(out) / task
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, question, answer, scene) in enumerate(generate(task, n, seed, size, cell)):
        name = f"images/{task}-{i:04d}.png"
        image.save(folder / name, format="PNG", optimize=False, compress_level=9)
        lines.append(json.dumps({"id": f"{task}-{i:04d}", "image": name, "question": question, "answer": answer,
                                 "task": task, "kind": KINDS[task], "code_cell": list(scene.code_cell)}))
    path = folder / "test.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_all(out: str | Path, n: int = 300, seed: int = 1234) -> list[Path]:
    return [write_task(task, out, n, seed) for task in TASKS]
