"""Several images per question: data, scan against physical deletion, groups, run columns, heatmaps, pruning,
and the refusal of a family that takes fewer images (before its weights load).

Expected scores come from ``horizon.reference.deleted_logits`` with numpy, as in test_engine.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import horizon
from horizon import plots
from horizon.models import adapter as adapters_module
from horizon.models import LlavaAdapter
from horizon.registry import Registry
from horizon.cli import main
from horizon.data import read_jsonl
from horizon.errors import HorizonError
from horizon.groups import tile
from horizon.reference import deleted_logits, kept_index

TOL = 1e-5
# (W, H) of each sample's two images: LLaVA crops the wide one; Qwen-VL turns the second into a 5 x 3 grid
SIZES = {"llava": [(40, 40), (80, 48)], "qwen2_5_vl": [(140, 84), (84, 140)]}
GRIDS = {"llava": [[5, 5], [5, 5]], "qwen2_5_vl": [[3, 5], [5, 3]]}


def two_image_data(root: Path, name: str, n: int = 1) -> Path:
    rng = np.random.default_rng(3)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        files = []
        for j, (w, h) in enumerate(SIZES[name]):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{i}-{j}.png")
            files.append(f"img/{i}-{j}.png")
        lines.append({"id": f"m{i}", "image": files, "question": "what is the color of the shape?",
                      "answer": ["red", "blue green"][i % 2], "task": "vqa"})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_image_lists_in_the_dataset(tmp_path):
    path = two_image_data(tmp_path, "llava")
    sample = read_jsonl(path)[0]
    assert sample.images == [tmp_path / "img" / "0-0.png", tmp_path / "img" / "0-1.png"]
    assert sample.image == sample.images[0]  # single-image code keeps working
    assert [im.size for im in sample.load_images()] == SIZES["llava"]
    for bad, says in (([], "empty list"), (["img/0-0.png", 3], "'image' entry 1 must be a path string"),
                      (["img/0-0.png", ""], "'image' entry 1")):
        path.write_text(json.dumps({"id": "x", "image": bad, "question": "q", "answer": "a"}) + "\n")
        with pytest.raises(HorizonError) as err:
            read_jsonl(path)
        assert str(err.value).startswith(f"{path}:1: ") and says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
def test_two_image_scan_equals_physical_deletion(models, tmp_path, name, caplog):
    vlm = models[name]
    path = two_image_data(tmp_path, name)
    with caplog.at_level(logging.WARNING, logger="horizon"):
        result = horizon.scan(vlm, path, layers="all", group=2, metrics=("kl", "dlogp"), progress=False,
                              batch_size=6)
    trained_on_one = [r for r in caplog.records if "trained on one image" in r.getMessage()]
    assert len(trained_on_one) == (1 if name == "llava" else 0)  # LLaVA-1.5 says so, once

    sample = read_jsonl(path)[0]
    row = result.samples.iloc[0]
    images = json.loads(row.images)
    assert [im["path"] for im in images] == [str(p) for p in sample.images] and row.image == str(sample.images[0])
    assert [im["size"] for im in images] == [list(s) for s in SIZES[name]]
    assert [im["grid"] for im in images] == GRIDS[name] and [row.grid_h, row.grid_w] == GRIDS[name][0]
    for im in images:
        assert im["view"] == pytest.approx(list(vlm.adapter.view(vlm.processor, im["size"], im["grid"])))
    if name == "llava":
        assert images[1]["view"] == pytest.approx([80 * 13 / 66, 0, 80 * 53 / 66, 48])  # center crop of 80 x 48
    else:
        assert images[1]["view"] == [0, 0, 84, 140]

    # the exact model inputs, rebuilt independently of encode_sample
    prompt = vlm.adapter.prompt(vlm.processor, sample.question, 2)
    inputs = vlm.adapter.encode(vlm.processor, [Image.open(p).convert("RGB") for p in sample.images], prompt)
    n_prompt = inputs["input_ids"].shape[1]
    ids = torch.tensor([list(row.input_ids)])
    assert torch.equal(ids[:, :n_prompt], inputs["input_ids"])
    inputs["input_ids"], inputs["attention_mask"] = ids, torch.ones_like(ids)
    if "mm_token_type_ids" in inputs:
        extra = ids.shape[1] - n_prompt
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, extra, dtype=torch.long)], 1)
    image_id = vlm.adapter.image_token_id(vlm.hf)
    visual = (ids[0] == image_id).nonzero().flatten().tolist()
    assert row.n_visual == len(visual) == sum(h * w for h, w in GRIDS[name])

    # groups never cross images: each group's positions lie in its own image's run of image tokens
    groups = result.groups
    assert sorted(set(groups.image)) == [0, 1]
    first = GRIDS[name][0][0] * GRIDS[name][0][1]
    runs = [set(visual[:first]), set(visual[first:])]
    for g in groups.itertuples():
        assert set(g.positions) <= runs[g.image], g
    assert sorted(p for ps in groups.positions for p in ps) == visual

    # the first answer token that carries text is scored (test_answer_token.py); the ones before it are only fed
    scored = [n_prompt - 1 + row.scored_offset]
    y = np.array(row.answer_ids[row.scored_offset:])
    with torch.no_grad():
        logp = torch.log_softmax(vlm.hf(**inputs).logits[0, scored].double(), -1).numpy()
    scores = result.scores.set_index(["layer", "group", "metric"]).value
    last_of_first = groups[groups.image == 0].group.max()
    picks = [0, int(last_of_first), int(last_of_first) + 1, int(groups.group.max())]  # both sides of the seam
    for layer in range(vlm.n_layers):
        for gi in picks:
            removed = list(groups.positions[groups.group == gi].iloc[0])
            logits = deleted_logits(vlm, inputs, layer, removed)[0]
            q = torch.log_softmax(logits[[kept_index(ids.shape[1], removed, s) for s in scored]].double(), -1).numpy()
            expected = {"dlogp": logp[0, y[0]] - q[0, y[0]], "kl": (np.exp(logp) * (logp - q)).sum(-1).mean()}
            for metric, value in expected.items():
                assert abs(scores[(layer, gi, metric)] - value) <= TOL, (metric, layer, gi)

    # one row of heatmap panels per image
    with pytest.MonkeyPatch.context() as mp:
        figs = {}
        real = plots.save
        mp.setattr(plots, "save", lambda fig, out, n: figs.setdefault(n, fig) and real(fig, out, n))
        paths = plots._run_heatmaps({"scores": result.scores, "groups": result.groups, "samples": result.samples,
                                     "config": result.config, "model": name}, "kl", tmp_path / "figs", [0])
    assert paths and all(p.is_file() for p in paths)
    titles = [ax.get_title() for ax in figs[f"token_heatmap_kl_{name}_m0"].axes if ax.get_title()]
    assert titles == ["image 1, layer 0", "image 2, layer 0"]


def test_prune_eval_prunes_across_both_images(models, tmp_path):
    from horizon.prune.evaluate import prune_eval

    path = two_image_data(tmp_path, "llava")
    result = prune_eval(models["llava"], path, schedule="random@1:30", max_new_tokens=2, progress=False)
    row = result.predictions.iloc[0]
    assert row.status == "ok" and row.n_visual == 50  # both images' tokens are candidates
    assert list(row.visual_per_layer) == [50, 30, 30]  # keeping 30 > 25 needs tokens of both images


class OneImageLlava(LlavaAdapter):
    """A registered family that takes one image per prompt (no real family here refuses several)."""

    name = "llava-one-image"
    max_images = 1


@pytest.fixture
def one_image_family(monkeypatch):
    # a registry where the llava model type is served by a family taking one image per prompt
    registry = Registry("model type")
    for name, cls in adapters_module.ADAPTERS.items():
        registry.register(name, OneImageLlava if name == "llava" else cls)
    monkeypatch.setattr(adapters_module, "ADAPTERS", registry)
    loads = []
    from transformers import AutoModelForImageTextToText

    real = AutoModelForImageTextToText.from_pretrained.__func__

    def spy(cls, *args, **kwargs):  # records weight loads, then loads for real
        loads.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", classmethod(spy))
    return loads


def test_family_taking_one_image_refuses_before_loading_weights(checkpoints, tmp_path, one_image_family, capsys):
    path = two_image_data(tmp_path, "llava")
    with pytest.raises(HorizonError) as err:
        horizon.scan(checkpoints["llava"], path, layers="0", progress=False)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "'m0'" in message and "at most 1" in message
    code = main(["scan", "--model", str(checkpoints["llava"]), "--data", str(path), "--out", str(tmp_path / "run"),
                 "-q"])
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("horizon: error")]
    assert code == 2 and len(errors) == 1 and "at most 1" in errors[0]
    from horizon.prune import prune_eval
    from horizon.prune.grid import GridConfig, prune_grid

    for call in (lambda: prune_eval(checkpoints["llava"], path, progress=False),
                 lambda: prune_grid(checkpoints["llava"], path, tmp_path / "grid", GridConfig(), progress=False)):
        with pytest.raises(HorizonError) as err:
            call()
        assert "\n" not in str(err.value) and "at most 1" in str(err.value)
    assert one_image_family == []  # no weights were loaded
    # the same family scans single-image data
    single = tmp_path / "single.jsonl"
    single.write_text(json.dumps({"id": "s", "image": "img/0-0.png", "question": "q?", "answer": "red"}) + "\n")
    assert (horizon.scan(checkpoints["llava"], single, layers="0", progress=False).samples.status == "ok").all()
    assert len(one_image_family) == 1


@pytest.mark.parametrize("name", sorted(set(__import__("conftest").CONTRACT) - {"llava", "qwen2_5_vl"}))
def test_two_images_every_family_engine_equals_physical_deletion(models, tmp_path, name):
    """Every other family on a prompt with two images (the contract image and its transpose): a window of each
    image, removed at the first and the last layer, scores as physical deletion does."""
    from conftest import FAMILIES
    from horizon.ablation import Ablation, clean_pass, run_ablations

    vlm = models[name]
    h, w = FAMILIES[name]["image"]
    rng = np.random.default_rng(5)
    images = [Image.fromarray((rng.random((hh, ww, 3)) * 255).astype("uint8")) for hh, ww in [(h, w), (w, h)]]
    inputs = vlm.adapter.encode(vlm.processor, images, vlm.adapter.prompt(vlm.processor, "what is it?", 2))
    grids = vlm.adapter.grids(vlm.hf, inputs)
    assert sorted({g.image for g in grids}) == [0, 1]
    groups = tile(grids, 2)
    picks = [next(g for g in groups if g.image == 0), [g for g in groups if g.image == 1][-1]]
    seq = inputs["input_ids"].shape[1]
    clean = clean_pass(vlm, inputs, [seq - 1])
    for layer in (0, vlm.n_layers - 1):
        ablations = [Ablation(layer, g.positions) for g in picks]
        got = torch.cat([logq for _, logq in run_ablations(vlm, clean, ablations, batch_size=2)])
        for row, g in enumerate(picks):
            ref = deleted_logits(vlm, inputs, layer, g.positions)[0, kept_index(seq, g.positions, seq - 1)]
            assert (got[row, 0] - torch.log_softmax(ref.double(), -1)).abs().max() <= TOL, (layer, g.image)
