"""Qwen3-VL: DeepStack injections follow removal and pruning; processor and views.

The contract suite already checks the engine against physical deletion for
qwen3_vl; these tests show that it would notice if DeepStack were mishandled:
the injections change the model's output, and an engine that dropped them (or
kept injecting into removed positions) disagrees with physical deletion.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import horizon
from horizon.ablation import Ablation, clean_pass, run_ablations
from horizon.models.qwen3_vl import Qwen3VLAdapter
from horizon.reference import deleted_logits, kept_index
from horizon.testing import build_tiny
from test_views import check_cells, coordinate_image, qwen_pixels


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> horizon.VisionLM:
    return horizon.load(build_tiny(tmp_path_factory.mktemp("q3") / "m", arch="qwen3_vl"), dtype="float32", device="cpu")


def inputs_of(vlm, size=(160, 96)):
    prompt = vlm.adapter.prompt(vlm.processor, "what is it?")
    return vlm.adapter.encode(vlm.processor, [coordinate_image(*size)], prompt)


def test_every_decoder_layer_receives_deepstack_features_and_they_matter(vlm):
    inputs = inputs_of(vlm)
    assert len(vlm.hf.config.vision_config.deepstack_visual_indexes) == vlm.n_layers
    with torch.no_grad():
        normal = vlm.hf(**inputs).logits
    lm = vlm.language_model
    lm._deepstack_process = lambda hidden, mask, embeds: hidden  # no injections
    try:
        with torch.no_grad():
            without = vlm.hf(**inputs).logits
    finally:
        del lm._deepstack_process
    assert (normal - without).abs().max() > 1e-3


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_removal_stops_injections_into_removed_positions_only(vlm, layer, monkeypatch):
    inputs = inputs_of(vlm)
    seq = inputs["input_ids"].shape[1]
    visual = vlm.adapter.visual_positions(vlm.hf, inputs)
    removed = tuple(visual[3:7])  # a run in the middle of the image
    clean = clean_pass(vlm, inputs, [seq - 1])
    reference = torch.log_softmax(
        deleted_logits(vlm, inputs, layer, removed)[0, kept_index(seq, removed, seq - 1)].double(), -1)
    (_, engine), = run_ablations(vlm, clean, [Ablation(layer, removed)], batch_size=1)
    assert (engine[0, 0] - reference).abs().max() <= 1e-5
    # an engine that forgot the injections after layer l disagrees (except after the last layer, whose
    # injection reaches no scored position)
    monkeypatch.setattr(Qwen3VLAdapter, "ablated_lm_kwargs", lambda self, extras, index, valid, layer: {})
    (_, forgetful), = run_ablations(vlm, clean, [Ablation(layer, removed)], batch_size=1)
    if layer < vlm.n_layers - 1:
        assert (forgetful[0, 0] - reference).abs().max() > 1e-4
    else:
        assert (forgetful[0, 0] - reference).abs().max() <= 1e-5


def test_pruned_prefill_injects_only_into_present_positions(vlm):
    from horizon.prune import generate, parse_schedule

    inputs = inputs_of(vlm)
    visual = vlm.adapter.visual_positions(vlm.hf, inputs)
    n = len(visual)
    gen = generate(vlm, inputs, parse_schedule(f"random@1:{n // 2}", vlm.n_layers, n), max_new_tokens=1,
                   return_logits=True, seed=3)
    removed = sorted(set(visual) - set(gen.kept[0]))
    seq = inputs["input_ids"].shape[1]
    reference = deleted_logits(vlm, inputs, 1, removed)[0, kept_index(seq, removed, seq - 1)].float()
    assert torch.allclose(gen.logits[0], reference, atol=1e-4)


def test_processor_without_torchvision_is_transformers_own(vlm):
    import transformers

    assert isinstance(vlm.processor, transformers.Qwen3VLProcessor)
    inputs = inputs_of(vlm)
    (t, h, w), = inputs["image_grid_thw"].tolist()
    merge = vlm.hf.config.vision_config.spatial_merge_size
    grid, = vlm.adapter.grids(vlm.hf, inputs)
    assert (grid.height, grid.width) == (h // merge, w // merge)
    assert int(inputs["mm_token_type_ids"].sum()) == grid.size  # M-RoPE needs the image tokens marked


@pytest.mark.parametrize("size", [(160, 96), (70, 150)])
def test_grid_covers_the_whole_image(vlm, size):
    image = coordinate_image(*size)
    pixels = qwen_pixels(vlm.processor, image)
    inputs = inputs_of(vlm, size)
    grid, = vlm.adapter.grids(vlm.hf, inputs)
    view, = vlm.adapter.grid_views(vlm.processor, size, [grid])
    assert view == (0.0, 0.0, float(size[0]), float(size[1]))
    assert check_cells(pixels, view, (grid.height, grid.width), size, tol=1.5) == np.prod(pixels.shape[1:])
