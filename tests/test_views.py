"""Where the model looked: ``Adapter.view`` against the processor's own output.

Each test image encodes its own coordinates (red and green grow in steps with x and y), so the
un-normalised ``pixel_values`` the processor's ``__call__`` produces say, pixel
by pixel, which original pixel they came from. Every pixel of every grid cell
must come from where the cell box of ``view`` says -- an independent check of
the processor's real resize, crop and pad.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

import horizon
from horizon.models import LlavaAdapter, QwenVLAdapter
from horizon.errors import HorizonError
from horizon.tiny import build_tiny

def scales(size) -> tuple[int, int]:
    """red = RX * x, green = GY * y: the largest integer steps that stay within 255."""
    return 255 // (size[0] - 1), 255 // (size[1] - 1)


def coordinate_image(w: int, h: int) -> Image.Image:
    rx, gy = scales((w, h))
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    return Image.fromarray(np.stack([rx * x, gy * y, np.full_like(x, 128)], -1).astype(np.uint8))


def unnormalise(pixels: np.ndarray, ip) -> np.ndarray:
    """(3, H, W) normalised -> 0..255."""
    mean, std = np.asarray(ip.image_mean)[:, None, None], np.asarray(ip.image_std)[:, None, None]
    return (pixels * std + mean) / ip.rescale_factor


def llava_pixels(processor, image) -> np.ndarray:
    prompt = LlavaAdapter().prompt(processor, "what?")
    pv = processor(images=[image], text=prompt, return_tensors="pt")["pixel_values"][0].numpy()
    return unnormalise(pv, processor.image_processor)


def qwen_pixels(processor, image) -> np.ndarray:
    """The resized image back from Qwen-VL's flat patches (rows ordered block row, block col, merge row, merge col)."""
    ip = processor.image_processor
    enc = processor(images=[image], text=QwenVLAdapter().prompt(processor, "what?"), return_tensors="pt")
    (t, gh, gw), = enc["image_grid_thw"].tolist()
    m, p = ip.merge_size, ip.patch_size
    flat = enc["pixel_values"].numpy().reshape(gh // m, gw // m, m, m, 3, ip.temporal_patch_size, p, p)[:, :, :, :, :, 0]
    pixels = flat.transpose(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p)
    return unnormalise(pixels, ip)


def check_cells(pixels: np.ndarray, view, grid, size, tol: float, rows=None) -> int:
    """Every processed pixel's decoded source coordinate is where the view's uniform cells put it.

    Returns the number of pixels checked. ``rows``: grid rows to check (default all); NaN pixels are skipped.
    """
    x0, y0, x1, y1 = view
    gh, gw = grid
    _, ph, pw = pixels.shape
    assert ph % gh == 0 and pw % gw == 0
    checked = 0
    for r in rows if rows is not None else range(gh):
        for c in range(gw):
            # the cell box the mapping gives, in original pixels
            bx0, bx1 = x0 + (x1 - x0) * c / gw, x0 + (x1 - x0) * (c + 1) / gw
            by0, by1 = y0 + (y1 - y0) * r / gh, y0 + (y1 - y0) * (r + 1) / gh
            cell = pixels[:, r * ph // gh:(r + 1) * ph // gh, c * pw // gw:(c + 1) * pw // gw]
            n_v, n_u = cell.shape[1:]
            # centre of each processed pixel, mapped linearly into the box; an original pixel i has centre i + 0.5
            want_x = bx0 + (np.arange(n_u) + 0.5) * (bx1 - bx0) / n_u
            want_y = by0 + (np.arange(n_v) + 0.5) * (by1 - by0) / n_v
            rx, gy = scales(size)
            got_x, got_y = cell[0] / rx + 0.5, cell[1] / gy + 0.5
            # clamp to the image: resampling at the image border only sees pixels inside it
            want_x = np.clip(want_x, 0.5, size[0] - 0.5)
            want_y = np.clip(want_y, 0.5, size[1] - 0.5)
            assert np.nanmax(np.abs(got_x - want_x[None, :])) <= tol, (r, c, got_x, want_x)
            assert np.nanmax(np.abs(got_y - want_y[:, None])) <= tol, (r, c, got_y, want_y)
            checked += int(np.isfinite(cell[0]).sum())
    return checked


@pytest.fixture(scope="module")
def llava_crop(tmp_path_factory):
    """A tiny LLaVA whose processor resizes the shortest edge to 48 and crops 40 x 40: crops square images too."""
    return horizon.load(build_tiny(tmp_path_factory.mktemp("crop"), arch="llava", grid=(5, 5), layers=1, resize=48),
                        dtype="float32", device="cpu")


@pytest.mark.parametrize("size", [(80, 48), (48, 80), (81, 47), (40, 40)])
def test_llava_view_is_the_processors_center_crop(models, size):
    vlm = models["llava"]
    view = vlm.adapter.view(vlm.processor, size, (5, 5))
    x0, y0, x1, y1 = view
    assert 0 <= x0 and 0 <= y0 and x1 <= size[0] and y1 <= size[1]  # the crop is inside the image
    if size[0] != size[1]:
        assert (x1 - x0, y1 - y0) != size  # ... and strictly smaller on the long side
    pixels = llava_pixels(vlm.processor, coordinate_image(*size))
    assert check_cells(pixels, view, (5, 5), size, tol=0.75) == 40 * 40


@pytest.mark.parametrize("size", [(80, 48), (64, 64)])
def test_llava_view_crops_both_axes(llava_crop, size):
    view = llava_crop.adapter.view(llava_crop.processor, size, (5, 5))
    assert view[0] > 0 and view[1] > 0 and view[2] < size[0] and view[3] < size[1]
    pixels = llava_pixels(llava_crop.processor, coordinate_image(*size))
    assert check_cells(pixels, view, (5, 5), size, tol=0.75) == 40 * 40


def test_llava_view_extends_past_a_padded_image(models):
    """LlavaImageProcessor(do_pad=True) pads to square first (the original LLaVA): the view reaches past the image."""
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    base = models["llava"].processor
    ip = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 40}, crop_size={"height": 40, "width": 40})
    processor = LlavaProcessor(image_processor=ip, tokenizer=base.tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=base.chat_template)
    size = (80, 48)
    view = LlavaAdapter().view(processor, size, (5, 5))
    assert view == pytest.approx((0, -16, 80, 64))
    pixels = llava_pixels(processor, coordinate_image(*size))
    # grid rows 1-3 lie inside the image, rows 0 and 4 are the padding (the mean colour); the two
    # processed rows on each seam mix both under the resize kernel (4 original rows wide) and are skipped
    background = np.array([int(x * 255) for x in ip.image_mean])  # the fill pad_to_square uses
    for rows in (slice(0, 7), slice(33, 40)):
        assert np.abs(pixels[:, rows] - background[:, None, None]).max() <= 1.01  # uint8 resampling
    pixels[:, 7:9] = pixels[:, 31:33] = np.nan
    assert check_cells(pixels, view, (5, 5), size, tol=0.75, rows=[1, 2, 3]) == (3 * 8 - 2) * 40


@pytest.mark.parametrize("size", [(150, 90), (140, 84), (130, 95)])
def test_qwen_view_is_the_whole_image(models, size):
    vlm = models["qwen2_5_vl"]
    view = vlm.adapter.view(vlm.processor, size, (3, 5))
    assert view == (0, 0, *size)
    pixels = qwen_pixels(vlm.processor, coordinate_image(*size))
    assert pixels.shape[1:] == (3 * 28, 5 * 28)
    assert check_cells(pixels, view, (3, 5), size, tol=0.75) == 84 * 140


def test_view_refuses_settings_it_cannot_map(models):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    ip = CLIPImageProcessorPil(size={"shortest_edge": 40, "longest_edge": 60}, crop_size={"height": 40, "width": 40})
    with pytest.raises(HorizonError) as err:
        LlavaAdapter().view(ip, (80, 48), (5, 5))
    assert "\n" not in str(err.value) and "longest_edge" in str(err.value)


def test_qwen_processor_fallback_warning_is_one_clean_line(checkpoints, caplog):
    """Without torchvision AutoProcessor fails; the warning says so and what to do, with no cut-off URL."""
    pytest.importorskip("PIL")
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision installed: transformers builds the Qwen-VL processor, no fallback")
    except ImportError:
        pass
    with caplog.at_level(logging.WARNING, logger="horizon"):
        QwenVLAdapter().load_processor(str(checkpoints["qwen2_5_vl"]), False)
    lines = [r.getMessage() for r in caplog.records if "processor" in r.getMessage()]
    assert len(lines) == 1
    line = lines[0]
    assert "\n" not in line and "install torchvision" in line
    # no URL at all, so none can be cut off; the reason is a whole sentence
    assert "http" not in line and "://" not in line
    assert "Torchvision" in line and line.count("(") == line.count(")")


@pytest.mark.parametrize("size", [(64, 48), (48, 48), (100, 70)])
def test_mistral3_view_is_the_whole_image(models, size):
    """Pixtral resizes the whole image (aspect kept) to multiples of the merged patch: no crop, no pad."""
    vlm = models["mistral3"]
    image = coordinate_image(*size)
    enc = vlm.adapter.encode(vlm.processor, [image], vlm.adapter.prompt(vlm.processor, "what?"))
    grid, = [(g.height, g.width) for g in vlm.adapter.grids(vlm.hf, enc)]
    view = vlm.adapter.view(vlm.processor, size, grid)
    assert view == (0, 0, *size)
    pixels = unnormalise(enc["pixel_values"][0].numpy(), vlm.processor.image_processor)
    h, w = enc["image_sizes"][0].tolist()
    assert pixels.shape[1:] == (h, w) == (grid[0] * 16, grid[1] * 16)
    # the resize may change the aspect ratio slightly (to whole patches): allow one original pixel
    assert check_cells(pixels, view, grid, size, tol=1.0) == h * w
