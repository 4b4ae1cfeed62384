"""Synthetic tasks: deterministic, and the answers are what the pixels show."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from horizon.cli import main
from horizon.tasks import COLOURS, TASKS, generate, write_task

DATA = Path(__file__).parents[1] / "data" / "tasks"


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = write_task("ocr", tmp_path / "a", n=20, seed=5)
    b = write_task("ocr", tmp_path / "b", n=20, seed=5)
    c = write_task("ocr", tmp_path / "c", n=20, seed=6)
    assert a.read_bytes() == b.read_bytes()
    for line in a.read_text().splitlines():
        name = json.loads(line)["image"]
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()
    assert a.read_text() != c.read_text()


def test_shipped_test_sets_regenerate_exactly(tmp_path):
    assert main(["tasks", "--out", str(tmp_path), "--n", "300", "--seed", "1234"]) == 0
    for task in TASKS:
        shipped, fresh = DATA / task / "test.jsonl", tmp_path / task / "test.jsonl"
        assert shipped.read_text() == fresh.read_text()
        for line in shipped.read_text().splitlines()[::37]:
            name = json.loads(line)["image"]
            assert np.array_equal(np.asarray(Image.open(DATA / task / name)), np.asarray(Image.open(tmp_path / task / name)))
        assert len(shipped.read_text().splitlines()) == 300


def _digit_templates(cell: int) -> dict[str, np.ndarray]:
    font = ImageFont.load_default(size=int(cell * 0.95))
    out = {}
    for d in "0123456789":
        im = Image.new("L", (cell, cell), 255)
        ImageDraw.Draw(im).text((cell / 2, cell / 2), d, fill=0, font=font, anchor="mm")
        out[d] = np.asarray(im, dtype=np.float64)
    return out


def test_answers_match_the_pixels():
    templates = _digit_templates(16)
    for task in TASKS:
        for image, question, answer, scene in generate(task, 40, seed=11):
            pixels = np.asarray(image)
            rgb = {name: np.all(pixels == np.array(c), axis=-1).sum() for name, c in COLOURS.items()}
            assert max(rgb, key=rgb.get) == scene.colour and sorted(rgb.values())[-2] == 0  # one shape colour
            x0, y0, x1, y1 = scene.shape_box
            fill = rgb[scene.colour] / ((x1 - x0 + 1) * (y1 - y0 + 1))
            kind = min({"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}.items(), key=lambda kv: abs(kv[1] - fill))[0]
            assert kind == scene.shape
            r, c = scene.code_cell
            gray = np.asarray(image.convert("L"), dtype=np.float64)
            read = ""
            for i in range(len(scene.code)):
                crop = gray[r * 16:(r + 1) * 16, (c + i) * 16:(c + i + 1) * 16]
                read += min(templates, key=lambda d: np.abs(crop - templates[d]).sum())
            assert read == scene.code
            assert answer == {"ocr": scene.code, "colour": scene.colour, "shape": scene.shape}[task]


def test_unknown_task_is_refused(tmp_path, capsys):
    assert main(["tasks", "counting", "--out", str(tmp_path)]) == 2
    assert "unknown task 'counting'" in capsys.readouterr().err
