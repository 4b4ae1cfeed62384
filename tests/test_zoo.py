"""The toy zoo: training lowers the loss; shipped models load and do what their cards claim."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import horizon
from horizon.demo import DATA, zoo_models
from horizon.tasks import draw, random_scene
from horizon.zoo import AUX_CLASSES, ZOO, ZooSpec, cell_labels, evaluate, train

SHIPPED = zoo_models(DATA) if (DATA / "zoo").is_dir() else []


def test_zoo_train_lowers_the_loss_on_a_tiny_config(tmp_path):
    spec = ZooSpec("tiny", "llava", layers=1, hidden=32, heads=2, vision_layers=1, vision_hidden=32,
                   steps=30, batch=8, lr=3e-3, warmup=5)
    result = train(spec, tmp_path / "tiny")
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.8 * first, (first, last)
    vlm = horizon.load(tmp_path / "tiny", device="cpu")  # the trained checkpoint loads like any other
    assert vlm.n_layers == 1


def test_qwen_zoo_spec_trains_too(tmp_path):
    spec = replace(ZOO["qwen2vl-s"], name="q", layers=1, hidden=32, heads=2, vision_layers=1, vision_hidden=32,
                   steps=20, batch=4, lr=3e-3, warmup=5)
    result = train(spec, tmp_path / "q")
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])


def test_cell_labels_mark_glyphs_colours_and_background():
    rng = np.random.default_rng(3)
    scene = random_scene(rng)
    labels = cell_labels(scene, draw(scene), 6, 16).reshape(6, 6)
    r, c = scene.code_cell
    assert [labels[r, c + i] for i in range(len(scene.code))] == [int(d) for d in scene.code]
    assert (labels >= 10).sum() == 36 - len(scene.code) and labels.max() < AUX_CLASSES
    assert (labels == AUX_CLASSES - 1).any() and ((labels >= 10) & (labels < AUX_CLASSES - 1)).any()


@pytest.mark.parametrize("model_dir", SHIPPED, ids=lambda p: p.name)
def test_shipped_zoo_models_reach_their_card_accuracy(model_dir):
    card = json.loads((model_dir / "zoo.json").read_text())
    vlm = horizon.load(model_dir, device="cpu")
    assert type(vlm.hf).__name__ in ("LlavaForConditionalGeneration", "Qwen2VLForConditionalGeneration",
                                     "Qwen2_5_VLForConditionalGeneration")
    assert (model_dir / "model.safetensors").exists()
    for task, claimed in card["accuracy"].items():
        assert claimed >= 0.9, (task, claimed)
        got = evaluate(vlm, DATA / "tasks" / task / "test.jsonl", limit=40)
        assert got >= claimed - 0.1, (task, got, claimed)


def test_zoo_has_two_llava_capacities_and_a_qwen_model():
    archs = {p.name: json.loads((p / "config.json").read_text())["architectures"][0] for p in SHIPPED}
    llava = [n for n, a in archs.items() if a == "LlavaForConditionalGeneration"]
    depths = {json.loads((DATA / "zoo" / n / "config.json").read_text())["text_config"]["num_hidden_layers"]
              for n in llava}
    assert len(llava) >= 2 and len(depths) >= 2
    assert any(a.startswith("Qwen2") for a in archs.values())
