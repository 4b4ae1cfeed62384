"""Gemma 3: bidirectional image blocks, sliding and full layers, one pooled square grid per image.

The tiny checkpoint (horizon/testing/tiny_gemma3.py) has layers sliding, full,
sliding with a 5-token window and 25-token image blocks, so every rule of the
attention is exercised. The declared rule (``Gemma3Adapter.attends``) is
checked against the masks transformers itself hands each layer; removal
against physical deletion (``horizon.reference``, which slices the model's own
masks); views against pixels that encode their coordinates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import horizon
from horizon.ablation import Ablation, clean_pass, ensure_maskable_attention, run_ablations
from horizon.groups import tile
from horizon.models.gemma3 import Gemma3Adapter
from horizon.prune import parse_schedule
from horizon.prune.generate import generate
from horizon.reference import deleted_logits, kept_index
from horizon.testing.tiny_gemma3 import SLIDING_WINDOW
from helpers import error_of
from test_views import check_cells, coordinate_image, unnormalise

QUESTION = "what is the color of the shape?"


@pytest.fixture(scope="module")
def vlm(models):
    return models["gemma3"]


@pytest.fixture(scope="module")
def eager(checkpoints):
    return horizon.load(checkpoints["gemma3"], dtype="float32", device="cpu", attn_implementation="eager")


def noise(seed: int, size=(40, 40)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((*size, 3)) * 255).astype("uint8"))


def encode(vlm, images):
    return vlm.adapter.encode(vlm.processor, images, vlm.adapter.prompt(vlm.processor, QUESTION, len(images)))


def own_masks(vlm, inputs) -> dict[int, torch.Tensor]:
    """The (S, S) boolean mask transformers hands each decoder layer in a plain forward pass."""
    seen = {}

    def grab(module, args, kwargs):
        mask = kwargs["attention_mask"][0, 0]
        seen[module.self_attn.layer_idx] = mask if mask.dtype == torch.bool else mask == 0

    hooks = [layer.register_forward_pre_hook(grab, with_kwargs=True) for layer in vlm.layers]
    try:
        with torch.no_grad():
            vlm.hf(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def image_blocks(vlm, inputs) -> list[list[int]]:
    ids = inputs["input_ids"][0]
    image = (ids == vlm.hf.config.image_token_id).nonzero().flatten().tolist()
    blocks, run = [], []
    for p in image:
        if run and p != run[-1] + 1:
            blocks.append(run)
            run = []
        run.append(p)
    return blocks + [run]


# -- the attention rule ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_images", [1, 2])
@pytest.mark.parametrize("which", ["sdpa", "eager"])
def test_declared_rule_is_the_mask_every_layer_receives(vlm, eager, n_images, which):
    model = vlm if which == "sdpa" else eager
    inputs = encode(model, [noise(i) for i in range(n_images)])
    seq = inputs["input_ids"].shape[1]
    layout = model.adapter.attention_layout(model.hf, inputs)
    pos = torch.arange(seq)
    types = model.adapter.layer_types(model.language_model)
    assert types == ["sliding_attention", "full_attention", "sliding_attention"]
    masks = own_masks(model, inputs)
    for j, kind in enumerate(types):
        declared = model.adapter.attends(layout, kind, pos[:, None], pos[None, :])
        assert torch.equal(declared, masks[j]), (j, kind)
    # and the masks really are what the rule says, not plain causal: every image block sees itself both ways,
    # never a later block; the sliding layers cut inside a block (it is longer than the window)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    blocks = image_blocks(model, inputs)
    assert len(blocks) == n_images and all(len(b) == 25 > SLIDING_WINDOW for b in blocks)
    full, sliding = masks[1], masks[0]
    for b in blocks:
        inside = torch.tensor(b)
        assert full[inside][:, inside].all()
        assert not sliding[inside][:, inside].all() and sliding[b[0], b[-1]] and not sliding[b[-1], b[0]]
    same_block = torch.zeros(seq, seq, dtype=torch.bool)  # from the image token runs, independently of the adapter
    for b in blocks:
        same_block[b[0]:b[-1] + 1, b[0]:b[-1] + 1] = True
    assert torch.equal(full & ~causal, same_block & ~causal) and (full & ~causal).any()
    if n_images == 2:
        assert not full[torch.tensor(blocks[0])][:, torch.tensor(blocks[1])].any()  # no peeking at the next image
    beyond = (pos[:, None] - pos[None, :]) >= SLIDING_WINDOW
    assert not sliding[beyond].any() and full[beyond].all()


def test_prefix_boundary_is_the_block_start(vlm):
    inputs = encode(vlm, [noise(0), noise(1)])
    layout = vlm.adapter.attention_layout(vlm.hf, inputs)
    for block in image_blocks(vlm, inputs):
        assert all(vlm.adapter.first_changed(layout, p) == block[0] for p in block)
        assert vlm.adapter.first_changed(layout, block[-1] + 1) == block[-1] + 1  # text after it: itself
        assert vlm.adapter.first_changed(layout, block[0] - 1) == block[0] - 1


# -- removal ----------------------------------------------------------------------------------------------------


def reference(vlm, inputs, layer, removed, scored):
    logits = deleted_logits(vlm, inputs, layer, removed)[0]
    rows = [kept_index(inputs["input_ids"].shape[1], removed, s) for s in scored]
    return torch.log_softmax(logits[rows].double(), -1)


def scored_positions(vlm, inputs) -> list[int]:
    """The text right after the image, within reach of the sliding windows (scored runs are contiguous)."""
    end = image_blocks(vlm, inputs)[-1][-1]
    return [end + 1, end + 2, end + 3]


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_removing_inside_the_block_equals_physical_deletion(vlm, layer):
    inputs = encode(vlm, [noise(3)])
    block = image_blocks(vlm, inputs)[0]
    scored = scored_positions(vlm, inputs)
    clean = clean_pass(vlm, inputs, scored)
    removals = [(block[12],), tuple(block[10:14]), (block[-2],), tuple(block[:3]),
                tuple(p for p in block if p not in block[6:8])]  # the last: the keep protocol's shape
    ablations = [Ablation(layer, r) for r in removals]
    results = dict()
    for reuse in (True, False):
        for idx, logq in run_ablations(vlm, clean, ablations, batch_size=3, reuse_prefix=reuse):
            for row, i in enumerate(idx):
                results[reuse, i] = logq[row]
    for i, removed in enumerate(removals):
        expected = reference(vlm, inputs, layer, list(removed), scored)
        for reuse in (True, False):
            assert torch.allclose(results[reuse, i], expected, atol=1e-5, rtol=0), (layer, removed, reuse)
        # not vacuous: the removal changes the scored distributions -- from the last (sliding) layer only where a
        # scored position's window reaches a removed token
        moved = bool((expected - clean.scored_logprobs()).abs().max() > 1e-4)
        assert moved == (layer < 2 or max(removed) > max(scored) - SLIDING_WINDOW), (layer, removed)


def test_a_plain_causal_mask_would_not_equal_deletion(vlm):
    """The engine really uses the declared rule: with Gemma 3 treated as causal the scores leave the reference."""
    inputs = encode(vlm, [noise(4)])
    block = image_blocks(vlm, inputs)[0]
    scored = scored_positions(vlm, inputs)
    removed = tuple(block[10:14])
    expected = reference(vlm, inputs, 0, list(removed), scored)

    class Causal(Gemma3Adapter):
        def attends(self, layout, layer_type, query, key):
            return key <= query

    real = vlm.adapter
    vlm.adapter = Causal()
    try:
        (_, wrong), = run_ablations(vlm, clean_pass(vlm, inputs, scored), [Ablation(0, removed)])
    finally:
        vlm.adapter = real
    assert (wrong[0] - expected).abs().max() > 1e-4


def test_prefix_reuse_restarts_at_the_block(vlm):
    """Removing a late image token: reusing the prefix changes nothing, because the reuse stops at the block start
    (earlier image tokens see the removed one); reusing everything before the removed token would be wrong."""
    inputs = encode(vlm, [noise(5)])
    block = image_blocks(vlm, inputs)[0]
    scored = scored_positions(vlm, inputs)
    clean = clean_pass(vlm, inputs, scored)
    ablation = Ablation(1, (block[-3],))
    (_, reused), = run_ablations(vlm, clean, [ablation], reuse_prefix=True)
    (_, fresh), = run_ablations(vlm, clean, [ablation], reuse_prefix=False)
    assert torch.allclose(reused, fresh, atol=1e-6, rtol=0)  # float32 rounding of differently shaped passes

    class NaiveReuse(Gemma3Adapter):
        def first_changed(self, layout, position):
            return position

    real = vlm.adapter
    vlm.adapter = NaiveReuse()
    try:
        (_, naive), = run_ablations(vlm, clean, [ablation], reuse_prefix=True)
    finally:
        vlm.adapter = real
    assert (naive - fresh).abs().max() > 1e-4


def test_sdpa_and_eager_give_the_same_scores(vlm, eager, dataset):
    path = dataset("gemma3", 1)
    for protocol in ("remove", "keep"):
        a = horizon.scan(eager, path, group=2, protocol=protocol, progress=False).scores
        b = horizon.scan(vlm, path, group=2, protocol=protocol, progress=False).scores
        assert len(a) == len(b) > 0
        assert np.abs(a.value.to_numpy() - b.value.to_numpy()).max() <= 1e-5


def test_an_unknown_attention_kind_is_refused_in_one_line(vlm):
    class Strange(Gemma3Adapter):
        attention = "prefix-lm"

    real = vlm.adapter
    vlm.adapter = Strange()
    try:
        error_of(lambda: ensure_maskable_attention(vlm), "gemma3", "'prefix-lm' attention mask is not supported",
                 "supported kinds", "causal", "image-blocks")
    finally:
        vlm.adapter = real
    ensure_maskable_attention(vlm)  # the declared kind is accepted


# -- pruning ----------------------------------------------------------------------------------------------------


def test_pruning_respects_the_sliding_window(vlm):
    """Pruned at the last layer (sliding) the image is out of the last token's window: nothing changes; pruned at
    the full layer it does. Decoding after pruning masks the sliding cache by original positions (cached = uncached)."""
    inputs = encode(vlm, [noise(6)])
    with torch.no_grad():
        clean = vlm.hf(**inputs).logits[0, -1].float()
    last = generate(vlm, inputs, parse_schedule("random@2:5", 3, 25), max_new_tokens=1, return_logits=True)
    full = generate(vlm, inputs, parse_schedule("random@1:5", 3, 25), max_new_tokens=1, return_logits=True)
    assert torch.allclose(last.logits[0], clean, atol=1e-6)
    assert not torch.allclose(full.logits[0], clean, atol=1e-4)
    for text in ("fastv@1:6", "divprune@0:9,random@2:4"):
        sched = parse_schedule(text, 3, 25)
        cached = generate(vlm, inputs, sched, max_new_tokens=8, return_logits=True)
        uncached = generate(vlm, inputs, sched, max_new_tokens=8, return_logits=True, use_cache=False)
        assert cached.tokens == uncached.tokens and len(cached.logits) >= 2
        for a, b in zip(cached.logits, uncached.logits):
            assert torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer", [0, 1])  # a sliding layer and a full one
def test_fastv_attention_equals_eager_weights(eager, layer):
    inputs = encode(eager, [noise(7)])
    captured = {}

    def grab(module, args, kwargs):
        captured.update(hidden=args[0] if args else kwargs["hidden_states"], rotary=kwargs["position_embeddings"],
                        mask=kwargs["attention_mask"])

    handle = eager.layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            out = eager.hf(**inputs, output_attentions=True)
    finally:
        handle.remove()
    with torch.no_grad():
        mine = eager.adapter.last_token_attention(eager.layers[layer], captured["hidden"], captured["rotary"],
                                                  captured["mask"])
    theirs = out.attentions[layer][0, :, -1].float()
    assert torch.allclose(mine, theirs, atol=1e-6)
    reaches = (theirs > 0).any(0)
    assert bool(reaches[: -SLIDING_WINDOW].any()) == (layer == 1)  # the sliding layer sees only its window


def test_renumbered_positions_are_refused(vlm):
    inputs = encode(vlm, [noise(8)])
    error_of(lambda: generate(vlm, inputs, parse_schedule("random@1:4", 3, 25), positions="renumber"),
             "renumber", "gemma3", "image-blocks")


# -- geometry, processor, views ---------------------------------------------------------------------------------


def test_grids_are_the_image_token_blocks_and_markers_join_no_window(vlm):
    inputs = encode(vlm, [noise(0), noise(1)])
    ids = inputs["input_ids"][0].tolist()
    tok = vlm.tokenizer
    grids = vlm.adapter.grids(vlm.hf, inputs)
    blocks = image_blocks(vlm, inputs)
    assert [(g.start, g.height, g.width) for g in grids] == [(b[0], 5, 5) for b in blocks]
    assert [g.image for g in grids] == [0, 1]
    for g, b in zip(grids, blocks):
        assert ids[b[0] - 1] == tok.convert_tokens_to_ids("<start_of_image>")
        assert ids[b[-1] + 1] == tok.convert_tokens_to_ids("<end_of_image>")
    for k in (1, 2, 3):
        groups = tile(grids, k)
        for g in groups:
            assert set(g.positions) <= set(blocks[grids[g.grid].image])  # never crosses grids, never a marker
        assert sorted(p for g in groups for p in g.positions) == [p for b in blocks for p in b]


def test_processor_expands_each_image_as_transformers_source_says(vlm):
    """Gemma3Processor: <start_of_image> -> \\n\\n<start_of_image> + image_seq_length image tokens + <end_of_image>\\n\\n;
    token_type_ids mark the image tokens; pixels are the image processor's own."""
    images = [noise(0), noise(1, (30, 50))]
    prompt = vlm.adapter.prompt(vlm.processor, QUESTION, 2)
    enc = vlm.adapter.encode(vlm.processor, images, prompt)
    tok = vlm.tokenizer
    expanded = "\n\n<start_of_image>" + "<image_soft_token>" * vlm.hf.config.mm_tokens_per_image + "<end_of_image>\n\n"
    want = tok(prompt.replace("<start_of_image>", expanded), return_tensors="pt")["input_ids"]
    assert torch.equal(enc["input_ids"], want)
    assert torch.equal(enc["token_type_ids"], (want == tok.convert_tokens_to_ids("<image_soft_token>")).long())
    pixels = vlm.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(enc["pixel_values"], pixels)


def test_pan_and_scan_is_refused(vlm):
    import copy

    processor = copy.deepcopy(vlm.processor)
    processor.image_processor.do_pan_and_scan = True
    error_of(lambda: vlm.adapter.encode(processor, [noise(0)], vlm.adapter.prompt(processor, QUESTION)),
             "gemma3", "do_pan_and_scan")


@pytest.mark.parametrize("size", [(40, 40), (80, 48), (37, 61)])
def test_view_is_the_whole_image_squashed_to_the_square(vlm, size):
    image = coordinate_image(*size)
    enc = encode(vlm, [image])
    grid, = [(g.height, g.width) for g in vlm.adapter.grids(vlm.hf, enc)]
    view, = vlm.adapter.grid_views(vlm.processor, size, vlm.adapter.grids(vlm.hf, enc))
    assert view == (0, 0, *size)
    pixels = unnormalise(enc["pixel_values"][0].numpy(), vlm.processor.image_processor)
    assert pixels.shape[1:] == (40, 40) and grid == (5, 5)
    assert check_cells(pixels, view, grid, size, tol=1.0) == 40 * 40
