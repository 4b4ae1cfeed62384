"""Idefics3 and SmolVLM: tiles plus a global image, read off the <row_r_col_c> / <global-img> markers.

Each image's grids against the rows and columns the image processor reports;
every cell of every tile and of the global image against the pixels the
processor really put there (coordinate images, as in test_views.py); an
unsplit image (only the global image); a two-image prompt; malformed marker
sequences refused in one line; SmolVLM's image-only processor against
transformers' Idefics3Processor (which runs here) and SmolVLM's own prompt rule.
"""

from __future__ import annotations

import pytest
import torch

from horizon.errors import HorizonError
from horizon.models.idefics3 import Idefics3Adapter, SmolVLMAdapter, SmolVLMImageProcessor

from test_views import check_cells, coordinate_image, unnormalise

TILE = 24  # pixels per tile side of the contract checkpoints (3 x 3 tokens, patch 4, pixel shuffle 2)
SIZES = [(48, 24), (24, 48), (60, 60), (70, 30), (50, 37)]
FAMILY = ["idefics3", "smolvlm"]


def encode(vlm, sizes):
    images = [coordinate_image(*s) for s in sizes]
    return vlm.adapter.encode(vlm.processor, images, vlm.adapter.prompt(vlm.processor, "what?", len(images))), images


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("size", SIZES)
def test_grids_are_the_processors_tiles_then_the_global_image(models, name, size):
    vlm = models[name]
    enc, images = encode(vlm, [size])
    info = vlm.processor.image_processor(images=images, return_row_col_info=True, return_tensors="pt")
    (rows,), (cols,) = info["rows"][0], info["cols"][0]  # one prompt: a list of its images
    grids = vlm.adapter.grids(vlm.hf, enc)
    assert rows * cols > 1  # the tiny processor scales the longest edge to two tiles: always split
    assert [g.level for g in grids] == ["tiles"] * (rows * cols) + ["thumbnail"]
    assert all((g.height, g.width, g.image) == (3, 3, 0) for g in grids)
    assert [g.region for g in grids[:-1]] == [(c / cols, r / rows, (c + 1) / cols, (r + 1) / rows)
                                              for r in range(rows) for c in range(cols)]
    assert grids[-1].region == (0, 0, 1, 1)
    ids = enc["input_ids"][0]
    tok = vlm.tokenizer
    for g, (r, c) in zip(grids, [(r, c) for r in range(rows) for c in range(cols)]):
        assert tok.convert_ids_to_tokens(ids[g.start - 2: g.start].tolist()) == [
            "<fake_token_around_image>", f"<row_{r + 1}_col_{c + 1}>"]
    assert tok.convert_ids_to_tokens(ids[grids[-1].start - 1].item()) == "<global-img>"
    image_id = vlm.hf.config.image_token_id
    assert vlm.adapter.visual_positions(vlm.hf, enc) == (ids == image_id).nonzero().flatten().tolist()


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("size", SIZES)
def test_every_cell_of_every_grid_shows_the_pixels_its_view_says(models, name, size):
    vlm = models[name]
    enc, _ = encode(vlm, [size])
    grids = vlm.adapter.grids(vlm.hf, enc)
    views = vlm.adapter.grid_views(vlm.processor, size, grids)
    frames = enc["pixel_values"][0].numpy()  # (frames, 3, tile, tile): the tiles row-major, then the global image
    assert len(frames) == len(grids)
    checked = 0
    for grid, view, pixels in zip(grids, views, frames):
        checked += check_cells(unnormalise(pixels, vlm.processor.image_processor), view, (grid.height, grid.width),
                               size, tol=1.0)
    assert checked == len(grids) * TILE * TILE


def test_an_unsplit_image_is_only_its_global_image(models):
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    vlm = models["idefics3"]
    ip = Idefics3ImageProcessorPil(size={"longest_edge": 2 * TILE}, max_image_size={"longest_edge": TILE},
                                   do_image_splitting=False)
    processor = Idefics3Processor(image_processor=ip, tokenizer=vlm.tokenizer, image_seq_len=9,
                                  chat_template=vlm.processor.chat_template)
    size = (40, 30)
    enc = vlm.adapter.encode(processor, [coordinate_image(*size)], vlm.adapter.prompt(processor, "what?"))
    grid, = vlm.adapter.grids(vlm.hf, enc)
    assert (grid.level, grid.region, grid.height, grid.width) == ("thumbnail", (0, 0, 1, 1), 3, 3)
    view, = vlm.adapter.grid_views(processor, size, [grid])
    assert check_cells(unnormalise(enc["pixel_values"][0, 0].numpy(), ip), view, (3, 3), size, tol=1.0) == TILE * TILE


@pytest.mark.parametrize("name", FAMILY)
def test_two_images_each_own_their_tiles_and_global_image(models, name):
    vlm = models[name]
    enc, _ = encode(vlm, [(48, 24), (24, 48)])
    grids = vlm.adapter.grids(vlm.hf, enc)
    assert [(g.image, g.level) for g in grids] == [(0, "tiles"), (0, "tiles"), (0, "thumbnail"),
                                                   (1, "tiles"), (1, "tiles"), (1, "thumbnail")]
    assert [g.region for g in grids] == [(0, 0, 0.5, 1), (0.5, 0, 1, 1), (0, 0, 1, 1),
                                         (0, 0, 1, 0.5), (0, 0.5, 1, 1), (0, 0, 1, 1)]
    with torch.no_grad():
        assert vlm.hf(**enc).logits.shape[1] == enc["input_ids"].shape[1]


def test_markers_that_do_not_form_a_grid_are_refused(models):
    vlm = models["idefics3"]
    enc, _ = encode(vlm, [(60, 60)])  # 2 x 2 tiles
    tok = vlm.tokenizer
    ids = enc["input_ids"][0]

    def refused(new_ids, *needles):
        with pytest.raises(HorizonError) as err:
            vlm.adapter.grids(vlm.hf, {**enc, "input_ids": new_ids[None]})
        assert "\n" not in str(err.value) and str(err.value).startswith("idefics3: ")
        assert all(n in str(err.value) for n in needles), str(err.value)

    swapped = ids.clone()
    swapped[ids == tok.convert_tokens_to_ids("<row_2_col_1>")] = tok.convert_tokens_to_ids("<row_2_col_2>")
    refused(swapped, "4 tiles do not form a row-major 2x2 grid")
    unmarked = ids.clone()
    unmarked[ids == tok.convert_tokens_to_ids("<row_1_col_2>")] = tok.convert_tokens_to_ids("<fake_token_around_image>")
    refused(unmarked, "follow neither a <row_r_col_c> nor a <global-img> marker")
    short = ids.clone()
    short[int((ids == vlm.hf.config.image_token_id).nonzero()[-1])] = tok.convert_tokens_to_ids("<unk>")
    refused(short, "not of one 3x3 tile each")
    no_global = ids.clone()
    no_global[ids == tok.convert_tokens_to_ids("<global-img>")] = tok.convert_tokens_to_ids("<row_1_col_1>")
    refused(no_global, "5 tiles with no <global-img> image after them")
    with pytest.raises(HorizonError, match="has not seen the processor's tokenizer"):
        Idefics3Adapter().grids(vlm.hf, enc)


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("sizes", [[(48, 24)], [(60, 60), (24, 48)], [(20, 20)]])
def test_smolvlm_image_only_processor_expands_as_transformers(checkpoints, models, sizes, split):
    """Idefics3Processor (buildable here) over SmolVLM's image processor and tokenizer gives the same inputs;
    the text is also SmolVLM's own get_image_prompt_string per image. Unsplit: only global images."""
    from transformers import AutoTokenizer, Idefics3Processor
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    vlm = models["smolvlm"]
    assert isinstance(vlm.processor, SmolVLMImageProcessor) and isinstance(vlm.adapter, SmolVLMAdapter)
    processor = vlm.processor
    if not split:
        ip = SmolVLMImageProcessorPil(size={"longest_edge": 2 * TILE}, max_image_size={"longest_edge": TILE},
                                      do_image_splitting=False)
        processor = SmolVLMImageProcessor(vlm.tokenizer, ip, processor.chat_template, "<image>", processor.config)
    images = [coordinate_image(*s) for s in sizes]
    prompt = vlm.adapter.prompt(processor, "what?", len(images))
    enc = vlm.adapter.encode(processor, images, prompt)
    tok = AutoTokenizer.from_pretrained(checkpoints["smolvlm"])  # Idefics3Processor adds tokens to its tokenizer
    reference = Idefics3Processor(image_processor=processor.image_processor, tokenizer=tok, image_seq_len=9)
    want = reference(images=images, text=prompt, return_tensors="pt")
    assert set(enc) == set(want)
    for key in want:
        assert torch.equal(enc[key], want[key]), key
    grids = vlm.adapter.grids(vlm.hf, enc)
    assert [g.level for g in grids].count("thumbnail") == len(images)
    assert ("tiles" in [g.level for g in grids]) == split
    info = processor.image_processor(images=images, return_row_col_info=True)
    pieces = prompt.split("<image>")
    text = pieces[0] + "".join(get_image_prompt_string(r, c, 9, "<fake_token_around_image>", "<image>", "<global-img>")
                               + rest for r, c, rest in zip(info["rows"][0], info["cols"][0], pieces[1:]))
    assert torch.equal(enc["input_ids"], vlm.tokenizer(text, return_tensors="pt")["input_ids"])


def test_decoder_and_features_paths(models):
    for name in FAMILY:
        vlm = models[name]
        assert vlm.language_model is vlm.hf.model.text_model
        assert vlm.adapter.visual_features_path() == "model.connector"
        assert vlm.adapter.name == name
