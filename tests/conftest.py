"""Shared fixtures: tiny real checkpoints built and saved on the spot.

Each checkpoint is a real transformers model class with random weights, a
tokenizer trained with `tokenizers` and a real image processor, saved with
``save_pretrained`` and loaded back through ``horizon.load`` -- the same code
path as a hub checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import horizon
from horizon.models import supported_model_types
from horizon.testing import TINY_FAMILIES, build_tiny

# Every registered family, built as horizon.testing describes it: (arch, grid, image size in pixels that
# yields that grid). The contract tests run over all of them; the feature tests use llava and qwen2_5_vl.
FAMILIES = {name: dict(arch=f.arch, grid=f.grid, image=f.image_size) for name, f in TINY_FAMILIES.items()}
CONTRACT = sorted(supported_model_types())  # one entry per registered adapter model type
ARCHS = {name: FAMILIES[name] for name in ("llava", "qwen2_5_vl")}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {name: build_tiny(root / name, arch=spec["arch"], grid=spec["grid"], layers=3, seed=1)
            for name, spec in FAMILIES.items()}


@pytest.fixture(scope="session")
def models(checkpoints) -> dict[str, horizon.VisionLM]:
    return {name: horizon.load(path, dtype="float32", device="cpu") for name, path in checkpoints.items()}


def write_dataset(root: Path, n: int, size: tuple[int, int], seed: int = 0, answers=None) -> Path:
    """n random images with questions, as horizon JSONL (the README's Dataset file section); returns the file."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    answers = answers or ["red", "blue green", "yes", "four"]
    lines = []
    for i in range(n):
        Image.fromarray((rng.random((*size, 3)) * 255).astype("uint8")).save(root / "img" / f"{i}.png")
        lines.append({"id": f"q{i}", "image": f"img/{i}.png", "question": "what is the color of the shape?",
                      "answer": answers[i % len(answers)], "task": ["ocr", "vqa"][i % 2], "extra": i})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture
def dataset(tmp_path):
    """Factory: dataset(arch_name, n) -> JSONL path with images sized for that arch's grid."""
    def make(name: str, n: int = 2, **kwargs) -> Path:
        return write_dataset(tmp_path / f"data-{name}-{n}", n, FAMILIES[name]["image"], **kwargs)
    return make


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: the tiny models are far faster on one thread than on two of a shared CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
