"""LLaVA-NeXT and LLaVA-OneVision: base + high-res grids, newlines, the OneVision shrink, views.

The adapter computes every grid from the image size and the config; each test
checks it against something transformers computes on its own: the number of
image tokens the processor writes, the embeddings the model scatters into the
prompt (the learned ``image_newline`` must sit exactly where the adapter says
a row ends), and the processor's pixels (each test image encodes its own
coordinates, so every cell of every grid says where it came from).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import horizon
from horizon.errors import HorizonError
from horizon.groups import tile
from horizon.testing import build_tiny
from test_views import check_cells, coordinate_image, unnormalise

FAMILIES = ("llava_next", "llava_onevision")
# (width, height): landscape and portrait with unpadding, a square, an extreme landscape
SIZES = [(128, 32), (32, 128), (40, 40), (200, 50), (96, 48)]


@pytest.fixture(scope="module")
def vlms(tmp_path_factory) -> dict[str, horizon.VisionLM]:
    root = tmp_path_factory.mktemp("next")
    return {a: horizon.load(build_tiny(root / a, arch=a, layers=2), dtype="float32", device="cpu") for a in FAMILIES}


def encode(vlm, images):
    prompt = vlm.adapter.prompt(vlm.processor, "what is it?", len(images))
    return vlm.adapter.encode(vlm.processor, images, prompt)


def embeds_fed(vlm, inputs) -> torch.Tensor:
    """The prompt embeddings the model hands its language model, image features and newlines scattered in."""
    seen = {}

    def grab(module, args, kwargs):
        seen["x"] = kwargs["inputs_embeds"][0]

    hook = vlm.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            vlm.hf(**inputs)
    finally:
        hook.remove()
    return seen["x"]


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("size", SIZES)
def test_grids_account_for_every_image_token_and_newlines_sit_at_row_ends(vlms, arch, size):
    vlm = vlms[arch]
    inputs = encode(vlm, [coordinate_image(*size)])
    grids = vlm.adapter.grids(vlm.hf, inputs)
    base, high = grids
    assert (base.level, high.level) == ("base", "high-res") and base.image == high.image == 0
    n_image_tokens = int((inputs["input_ids"][0] == vlm.adapter.image_token_id(vlm.hf)).sum())
    assert base.size + high.height * (high.width + 1) == n_image_tokens  # the processor's own count
    assert high.start == base.start + base.size and high.row_stride == high.width + 1
    x = embeds_fed(vlm, inputs)
    newline = vlm.hf.model.image_newline.detach()
    ends = [high.position(r, high.width) for r in range(high.height)]
    for p in ends:
        assert torch.equal(x[p], newline.to(x.dtype))
    visual = vlm.adapter.visual_positions(vlm.hf, inputs)
    assert len(visual) == base.size + high.size and not set(ends) & set(visual)
    assert not any(torch.equal(x[p], newline) for p in visual)  # every patch is an image feature
    for g in tile(grids, 2):  # windows stay on their grid and never take a newline
        assert not set(g.positions) & set(ends)
        grid = grids[g.grid]
        assert all(grid.start <= p < grid.start + grid.height * (grid.row_stride or grid.width) for p in g.positions)


def test_onevision_shrinks_large_grids_and_uses_base_grids_for_several_images(tmp_path):
    path = build_tiny(tmp_path / "ov", arch="llava_onevision", layers=1)
    for name in ("config.json", "processor_config.json"):  # anyres_max_1: at most one tile's worth of features
        cfg = json.loads((path / name).read_text())
        cfg["vision_aspect_ratio"] = "anyres_max_1"
        (path / name).write_text(json.dumps(cfg))
    vlm = horizon.load(path, dtype="float32", device="cpu")
    inputs = encode(vlm, [coordinate_image(64, 64)])  # 2 x 2 tiles: an 8 x 8 grid, shrunk by 2 to 4 x 4
    base, high = vlm.adapter.grids(vlm.hf, inputs)
    assert (high.height, high.width) == (4, 4)
    assert base.size + high.height * (high.width + 1) == int((inputs["input_ids"][0] == vlm.hf.config.image_token_id).sum())
    x = embeds_fed(vlm, inputs)  # the model's own forward accepted the count; newlines where the grid says
    assert all(torch.equal(x[high.position(r, 4)], vlm.hf.model.image_newline) for r in range(4))

    two = encode(vlm, [coordinate_image(64, 64), coordinate_image(40, 20)])
    grids = vlm.adapter.grids(vlm.hf, two)
    assert [(g.image, g.level, g.height, g.width) for g in grids] == [(0, "base", 4, 4), (1, "base", 4, 4)]
    x = embeds_fed(vlm, two)
    for g in grids:  # one newline right after each base grid
        assert torch.equal(x[g.start + g.size], vlm.hf.model.image_newline)


def test_a_prompt_whose_image_tokens_do_not_fit_the_grids_is_refused(vlms):
    vlm = vlms["llava_next"]
    inputs = encode(vlm, [coordinate_image(128, 32)])
    inputs["image_sizes"] = torch.tensor([[32, 32]])  # another size: another high-res grid
    with pytest.raises(HorizonError, match=r"llava-next: image 0 \(32x32 px\) should give one run of \d+ image tokens"):
        vlm.adapter.grids(vlm.hf, inputs)


def high_res_canvas(vlm, inputs, size_hw) -> np.ndarray:
    """The processor's high-res tiles stitched back into the best pinpoint's canvas (3, H, W), 0..255."""
    from transformers.image_processing_utils import select_best_resolution

    ip = vlm.processor.image_processor
    tiles = unnormalise(inputs["pixel_values"][0].numpy(), ip)  # (1 + n, 3, s, s): base image, then tiles
    s = tiles.shape[-1]
    best_h, best_w = select_best_resolution(list(size_hw), vlm.hf.config.image_grid_pinpoints)
    rows, cols = best_h // s, best_w // s
    body = tiles[1 : 1 + rows * cols].reshape(rows, cols, 3, s, s)
    return body.transpose(2, 0, 3, 1, 4).reshape(3, rows * s, cols * s)


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("size", [(128, 32), (32, 128), (40, 40)])
def test_every_cell_of_both_grids_comes_from_its_view(vlms, arch, size):
    vlm = vlms[arch]
    image = coordinate_image(*size)
    inputs = encode(vlm, [image])
    base, high = vlm.adapter.grids(vlm.hf, inputs)
    base_view, high_view = vlm.adapter.grid_views(vlm.processor, size, [base, high])
    ip = vlm.processor.image_processor
    base_pixels = unnormalise(inputs["pixel_values"][0, 0].numpy(), ip)
    assert check_cells(base_pixels, base_view, (base.height, base.width), size, tol=1.5) == base_pixels[0].size
    canvas = high_res_canvas(vlm, inputs, (size[1], size[0]))
    patch = vlm.hf.config.vision_config.patch_size
    full_h, full_w = canvas.shape[1] // patch, canvas.shape[2] // patch
    pad_r, pad_c = (full_h - high.height) // 2, (full_w - high.width) // 2  # the rows / columns unpadded
    band = canvas[:, pad_r * patch : (full_h - pad_r) * patch, pad_c * patch : (full_w - pad_c) * patch]
    assert check_cells(band, high_view, (high.height, high.width), size, tol=1.5) == band[0].size
    if size[0] != size[1]:  # unpadded: the view is the whole image along both axes
        assert high_view == pytest.approx((0.0, 0.0, size[0], size[1]))


def test_scan_and_heatmap_draw_both_levels(vlms, tmp_path):
    from horizon.plots import plot_token_heatmaps
    from conftest import write_dataset

    vlm = vlms["llava_next"]
    data = write_dataset(tmp_path / "d", 1, (32, 128))
    result = horizon.scan(vlm, data, group=2, layers="all", progress=False)
    images = json.loads(result.samples.images[0])
    assert [g["level"] for g in images[0]["grids"]] == ["base", "high-res"]
    assert sorted(result.groups.grid.unique()) == [0, 1] and (result.groups.image == 0).all()
    paths = plot_token_heatmaps(result.scores, result.groups, result.samples, "q0", [0, 1], "kl", 2, tmp_path,
                                image_root=data.parent)
    assert paths and all(p.exists() for p in paths)


def test_onevision_without_torchvision_uses_transformers_own_processor_for_images(vlms):
    import transformers

    processor = vlms["llava_onevision"].processor
    # transformers' class, its image expansion untouched; only the video processor is left out
    assert isinstance(processor, transformers.LlavaOnevisionProcessor)
    assert type(processor).replace_image_token is transformers.LlavaOnevisionProcessor.replace_image_token
    assert not hasattr(processor, "video_processor") or processor.video_processor is None


def test_onevision_base_grids_of_several_images_span_the_padded_square(vlms):
    vlm = vlms["llava_onevision"]
    sizes = [(64, 32), (24, 48)]  # (W, H): landscape, portrait (pixels checked on the landscape one)
    images = [coordinate_image(*s) for s in sizes]
    inputs = encode(vlm, images)
    grids = vlm.adapter.grids(vlm.hf, inputs)
    ip = vlm.processor.image_processor
    for i, (size, g) in enumerate(zip(sizes, grids)):
        view, = vlm.adapter.grid_views(vlm.processor, size, [g])
        w, h = size
        m = max(w, h)
        assert view == pytest.approx((-((m - w) // 2), -((m - h) // 2), -((m - w) // 2) + m, -((m - h) // 2) + m))
        pixels = unnormalise(inputs["pixel_values"][i, 0].numpy(), ip)
        # the padding is the mean colour, not a coordinate: check the grid rows lying wholly inside the image
        # (landscape); a portrait image's padded columns would need a column filter, its rows are all inside
        cell = (view[3] - view[1]) / g.height
        inside = [r for r in range(g.height) if view[1] + r * cell >= 0 and view[1] + (r + 1) * cell <= h]
        if w >= h:
            # tol: the 2x downscale of the padded square blends up to two source pixels at the image edge
            assert inside and check_cells(pixels, view, (g.height, g.width), size, tol=2.5, rows=inside) > 0
