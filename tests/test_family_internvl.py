"""InternVL: tiles plus a thumbnail per image.

The image-only processor against transformers' own image processor and
InternVLProcessor's expansion rule (InternVLProcessor itself needs
torchvision); each image's grids against the processor's tile layout; every
cell of every tile and of the thumbnail against the pixels the processor
really put there (coordinate images, as in test_views.py); a two-image
prompt; a scan drawn as heatmaps with both levels.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import horizon
from horizon.errors import HorizonError
from horizon.models.internvl import InternVLAdapter, InternVLImageProcessor

from test_views import check_cells, coordinate_image, unnormalise

TILE = 24  # pixels per tile side of the contract checkpoint (3 x 3 tokens, patch 4, pixel shuffle 0.5)


def expected_inputs(vlm, images, prompt):
    """transformers' GotOcr2 image processor with InternVLProcessor's images kwargs, expanded by
    InternVLProcessor.replace_image_token itself (bound to the attributes its __init__ sets)."""
    from transformers.models.internvl.processing_internvl import InternVLProcessor

    proc = vlm.processor
    tok = proc.tokenizer
    out = proc.image_processor(images=images, crop_to_patches=True, return_tensors="pt")
    owner = SimpleNamespace(start_image_token=tok.start_image_token, end_image_token=tok.end_image_token,
                            image_token=tok.context_image_token, image_seq_length=9)
    pieces = prompt.split(tok.context_image_token)
    text = pieces[0] + "".join(InternVLProcessor.replace_image_token(owner, out, i) + rest
                               for i, rest in enumerate(pieces[1:]))
    return out, tok(text, return_tensors="pt")["input_ids"]


@pytest.mark.parametrize("sizes", [[(48, 24)], [(24, 48)], [(60, 60)], [(20, 20)], [(48, 24), (30, 70)]])
def test_image_only_processor_expands_as_internvl_processor(models, sizes):
    vlm = models["internvl"]
    assert isinstance(vlm.processor, InternVLImageProcessor)  # no torchvision here
    assert vlm.processor.config["image_seq_length"] == 9
    images = [coordinate_image(*s) for s in sizes]
    prompt = vlm.adapter.prompt(vlm.processor, "what?", len(images))
    enc = vlm.adapter.encode(vlm.processor, images, prompt)
    out, ids = expected_inputs(vlm, images, prompt)
    assert torch.equal(enc["input_ids"], ids)
    assert torch.equal(enc["pixel_values"], out["pixel_values"])
    assert "num_patches" not in enc  # InternVLProcessor drops it; the model takes the tiles flat
    assert enc["image_sizes"].tolist() == [[h, w] for w, h in sizes]


@pytest.mark.parametrize("size, layout", [((48, 24), (1, 2)), ((24, 48), (2, 1)), ((60, 60), (2, 2)),
                                          ((70, 20), (1, 4)), ((20, 20), (1, 1))])
def test_grids_are_the_processors_tiles_then_the_thumbnail(models, size, layout):
    """(W, H) -> (rows, cols) of tiles, read with get_optimal_tiled_canvas (which returns cols first)."""
    vlm = models["internvl"]
    image = coordinate_image(*size)
    enc = vlm.adapter.encode(vlm.processor, [image], vlm.adapter.prompt(vlm.processor, "what?"))
    grids = vlm.adapter.grids(vlm.hf, enc)
    rows, cols = layout
    n_tiles = rows * cols
    tiles = [g for g in grids if g.level == "tiles"]
    assert len(tiles) == n_tiles and all((g.height, g.width, g.image) == (3, 3, 0) for g in grids)
    assert len(enc["pixel_values"]) == len(grids)  # one processed tile per grid
    if n_tiles == 1:  # a 1 x 1 canvas has no thumbnail: the one tile is the whole image
        assert [g.level for g in grids] == ["tiles"] and grids[0].region == (0, 0, 1, 1)
    else:
        assert [g.level for g in grids] == ["tiles"] * n_tiles + ["thumbnail"]
        assert grids[-1].region == (0, 0, 1, 1)
    assert [g.region for g in tiles] == [(c / cols, r / rows, (c + 1) / cols, (r + 1) / rows)
                                         for r in range(rows) for c in range(cols)]
    ids = enc["input_ids"][0]
    image_id = vlm.hf.config.image_token_id
    first = int((ids == image_id).nonzero()[0])
    assert [g.start for g in grids] == [first + 9 * i for i in range(len(grids))]  # one contiguous run
    assert vlm.adapter.visual_positions(vlm.hf, enc) == (ids == image_id).nonzero().flatten().tolist()


@pytest.mark.parametrize("size", [(48, 24), (24, 48), (60, 60), (70, 20), (50, 37)])
def test_every_cell_of_every_grid_shows_the_pixels_its_view_says(models, size):
    vlm = models["internvl"]
    ip = vlm.processor.image_processor
    enc = vlm.adapter.encode(vlm.processor, [coordinate_image(*size)], vlm.adapter.prompt(vlm.processor, "what?"))
    grids = vlm.adapter.grids(vlm.hf, enc)
    views = vlm.adapter.grid_views(vlm.processor, size, grids)
    checked = 0
    for grid, view, pixels in zip(grids, views, enc["pixel_values"].numpy()):
        checked += check_cells(unnormalise(pixels, ip), view, (grid.height, grid.width), size, tol=0.75)
    assert checked == len(grids) * TILE * TILE


def test_two_images_each_own_their_tiles_and_thumbnail(models, tmp_path):
    vlm = models["internvl"]
    rng = np.random.default_rng(0)
    files = []
    for j, (w, h) in enumerate([(48, 24), (24, 48)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{j}.png")
        files.append(f"{j}.png")
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"id": "m", "image": files, "question": "what is it?", "answer": "red"}) + "\n")
    result = horizon.scan(vlm, path, layers=[0], group=2, metrics=("kl",), progress=False)
    images = json.loads(result.samples.iloc[0].images)
    assert [[(e["level"], e["index"]) for e in im["grids"]] for im in images] == [
        [("tiles", 0), ("tiles", 1), ("thumbnail", 2)], [("tiles", 3), ("tiles", 4), ("thumbnail", 5)]]
    assert [e["view"] for e in images[0]["grids"]] == [[0, 0, 24, 24], [24, 0, 48, 24], [0, 0, 48, 24]]
    assert [e["view"] for e in images[1]["grids"]] == [[0, 0, 24, 24], [0, 24, 24, 48], [0, 0, 24, 48]]
    groups = result.groups
    assert groups.groupby("grid").image.first().tolist() == [0, 0, 0, 1, 1, 1]
    assert (groups.groupby("grid").size() == 4).all()  # 3 x 3 tiles, k = 2: 4 windows each, ragged at the edges


def test_heatmaps_draw_tiles_and_thumbnail(models, dataset, tmp_path):
    from horizon import plots

    vlm = models["internvl"]
    path = dataset("internvl", 1)
    result = horizon.scan(vlm, path, layers=[0, 2], group=2, metrics=("kl",), progress=False)
    figs = {}
    real = plots.save

    def spy(fig, out_dir, name):
        figs[name] = fig
        return real(fig, out_dir, name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "save", spy)
        written = plots.plot_token_heatmaps(result.scores, result.groups, result.samples, "q0", [0, 2], "kl", 2,
                                            tmp_path, image_root=path.parent)
    assert written and all(p.exists() for p in written)
    fig, = figs.values()
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["tiles, layer 0", "tiles, layer 2", "thumbnail, layer 0", "thumbnail, layer 2"]
    tiles_panel = next(ax for ax in fig.axes if ax.get_title() == "tiles, layer 0")
    photo, left, right = tiles_panel.get_images()  # each tile over its own half of the 48 x 24 image
    assert left.get_extent() == pytest.approx([0, 24, 24, 0]) and right.get_extent() == pytest.approx([24, 48, 24, 0])


def test_tiles_without_image_sizes_or_of_the_wrong_count_are_refused(models):
    vlm = models["internvl"]
    enc = vlm.adapter.encode(vlm.processor, [coordinate_image(48, 24)], vlm.adapter.prompt(vlm.processor, "what?"))
    bare = {k: v for k, v in enc.items() if k != "image_sizes"}
    with pytest.raises(HorizonError, match="no image_sizes") as err:
        vlm.adapter.grids(vlm.hf, bare)
    assert "\n" not in str(err.value)
    ids = enc["input_ids"].clone()
    image_id = vlm.hf.config.image_token_id
    ids[0, int((ids[0] == image_id).nonzero()[-1])] = 0  # one image token short of whole tiles
    with pytest.raises(HorizonError, match="not a multiple of the 9 tokens") as err:
        vlm.adapter.grids(vlm.hf, {**enc, "input_ids": ids})
    assert "\n" not in str(err.value)
    assert isinstance(vlm.adapter, InternVLAdapter) and vlm.adapter.visual_features_path() == "model.multi_modal_projector"
    assert vlm.language_model is vlm.hf.model.language_model
