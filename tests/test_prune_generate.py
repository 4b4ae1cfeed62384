"""Pruned generation against independent computations.

* keeping every token reproduces transformers' own greedy ``generate`` bit for bit;
* pruning at prefill (physical deletion, original positions) equals the scan
  engine's removal and an attention-mask removal written here with plain hooks;
* KV-cached decoding equals recomputing the whole sequence at every step;
* FastV's explicitly computed attention equals the eager kernel's weights;
* DART selects what its reference code selects from the real KV cache and
  hidden states, and its pivots never come from the system prompt.
"""

from __future__ import annotations

import pytest
import torch

import horizon
from horizon.ablation import Ablation, clean_pass, run_ablations
from horizon.data import read_jsonl
from horizon.errors import HorizonError
from horizon.prune import parse_schedule
from horizon.prune.generate import generate, prefill_flops, sample_seed
from horizon.prune.strategies import dart_pivots
from horizon.scan import encode_sample

from conftest import CONTRACT
from dart_reference import reference_dart

ARCH_NAMES = ["llava", "qwen2_5_vl"]  # feature tests; the contract ones run on every registered family


def prompt_inputs(vlm, path):
    return encode_sample(vlm, read_jsonl(path)[0])[0]


def n_visual(vlm, inputs) -> int:
    """Visual patch tokens: separators and newlines written with the image token id are not patches."""
    return len(vlm.adapter.visual_positions(vlm.hf, inputs))


def masked_removal_logits(vlm, inputs, removed_from: dict[int, list[int]]) -> torch.Tensor:
    """Last-position logits with positions blocked as attention keys from a layer on (an additive 4D mask).

    ``removed_from[l]`` lists the positions removed at layer l (cumulative over
    stages). Nothing is deleted: every position keeps computing, but from its
    layer on no other position may attend to a removed one.
    """
    seq = inputs["input_ids"].shape[1]
    dtype = vlm.dtype
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    hooks, blocked = [], set()
    for j, layer in enumerate(vlm.language_model.layers):
        blocked |= set(removed_from.get(j, []))

        def hook(module, args, kwargs, blocked=sorted(blocked)):
            # the layer's own mask (None: plain causal), with the removed positions blocked as keys
            own = kwargs.get("attention_mask")
            allowed = causal.clone() if own is None else (own[0, 0] if own.dtype == torch.bool else own[0, 0] == 0)
            if blocked:
                allowed[:, blocked] = False
            allowed |= torch.eye(seq, dtype=torch.bool)  # removed rows see themselves (they are never read)
            kwargs["attention_mask"] = torch.zeros(seq, seq, dtype=dtype).masked_fill(
                ~allowed, torch.finfo(dtype).min)[None, None]
            return args, kwargs

        hooks.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            return vlm.hf(**inputs, use_cache=False).logits[0, -1].float()
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("name", CONTRACT)
def test_full_keep_reproduces_unpruned_generate_exactly(models, dataset, name):
    vlm = models[name]
    inputs = prompt_inputs(vlm, dataset(name, 1))
    nv = n_visual(vlm, inputs)
    with torch.no_grad():
        ref = vlm.hf.generate(**inputs, max_new_tokens=6, do_sample=False, output_logits=True,
                              return_dict_in_generate=True)
    expected = ref.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    for text in (f"random@0:{nv}", f"divprune@0:{nv},fastv@1:{nv},random@2:{nv}"):
        gen = generate(vlm, inputs, parse_schedule(text, vlm.n_layers, nv), max_new_tokens=6, return_logits=True)
        assert gen.tokens == expected[: len(gen.tokens)] and len(gen.tokens) >= 1
        assert len(gen.logits) == len(ref.logits)
        for mine, theirs in zip(gen.logits, ref.logits):
            assert torch.equal(mine, theirs[0].float())
        assert gen.visual_per_layer == [nv] * vlm.n_layers


@pytest.mark.parametrize("name", CONTRACT)
def test_prefill_pruning_equals_engine_and_mask_removal(models, dataset, name):
    vlm = models[name]
    inputs = prompt_inputs(vlm, dataset(name, 1))
    nv = n_visual(vlm, inputs)
    seq = inputs["input_ids"].shape[1]
    visual = vlm.adapter.visual_positions(vlm.hf, inputs)
    clean = clean_pass(vlm, inputs, [seq - 1])
    changed = []
    for layer in range(vlm.n_layers):
        sched = parse_schedule(f"random@{layer}:{nv // 3}", vlm.n_layers, nv)
        gen = generate(vlm, inputs, sched, max_new_tokens=1, return_logits=True, seed=layer)
        removed = sorted(set(visual) - set(gen.kept[0]))
        assert len(removed) == nv - nv // 3
        pruned = torch.log_softmax(gen.logits[0], -1)
        (_, engine), = run_ablations(vlm, clean, [Ablation(layer, tuple(removed))])
        assert torch.allclose(pruned.double(), engine[0, 0].double(), atol=1e-5, rtol=0)
        masked = torch.log_softmax(masked_removal_logits(vlm, inputs, {layer: removed}), -1)
        assert torch.allclose(pruned, masked, atol=1e-5, rtol=0)
        changed.append(not torch.allclose(pruned.double(), clean.scored_logprobs()[0].double(), atol=1e-4))
    # and it is a real change: the unpruned distribution differs -- at every layer under causal attention; with
    # sliding windows a late layer may not reach the image from the last position (tests/test_family_gemma3.py)
    assert changed[0] and (vlm.adapter.attention != "causal" or all(changed)), changed

    # Two stages: removal sets accumulate.
    sched = parse_schedule(f"divprune@0:{nv - 3},random@2:{nv // 4}", vlm.n_layers, nv)
    gen = generate(vlm, inputs, sched, max_new_tokens=1, return_logits=True)
    first = sorted(set(visual) - set(gen.kept[0]))
    second = sorted(set(gen.kept[0]) - set(gen.kept[1]))
    assert set(gen.kept[1]) <= set(gen.kept[0]) and len(gen.kept[1]) == nv // 4
    masked = masked_removal_logits(vlm, inputs, {0: first, 2: second})
    assert torch.allclose(torch.log_softmax(gen.logits[0], -1), torch.log_softmax(masked, -1), atol=1e-5, rtol=0)
    assert gen.visual_per_layer == [nv - 3, nv - 3, nv // 4]


@pytest.mark.parametrize("name", CONTRACT)
def test_cached_decoding_equals_uncached(models, dataset, name):
    vlm = models[name]
    inputs = prompt_inputs(vlm, dataset(name, 1))
    nv = n_visual(vlm, inputs)
    texts = ["random@0:5", "divprune@0:8,random@2:3", "fastv@1:6", "dart@1:8", "vtw@1:0"]
    positions = ["original", "renumber"] if name == "llava" else ["original"]
    for text in texts:
        for pos in positions:
            sched = parse_schedule(text, vlm.n_layers, nv)
            cached = generate(vlm, inputs, sched, max_new_tokens=6, return_logits=True, positions=pos, seed=3)
            uncached = generate(vlm, inputs, sched, max_new_tokens=6, return_logits=True, positions=pos, seed=3,
                                use_cache=False)
            assert cached.tokens == uncached.tokens, (text, pos)
            assert cached.kept == uncached.kept
            assert len(cached.logits) == len(uncached.logits) >= 2
            for a, b in zip(cached.logits, uncached.logits):
                assert torch.allclose(a, b, atol=1e-5, rtol=0), (text, pos)


def test_renumbered_positions_change_the_output_and_mrope_refuses(models, dataset):
    vlm = models["llava"]
    inputs = prompt_inputs(vlm, dataset("llava", 1))
    sched = parse_schedule("random@0:5", vlm.n_layers, n_visual(vlm, inputs))
    original = generate(vlm, inputs, sched, max_new_tokens=2, return_logits=True)
    renumbered = generate(vlm, inputs, sched, max_new_tokens=2, return_logits=True, positions="renumber")
    assert original.kept == renumbered.kept
    assert (original.logits[0] - renumbered.logits[0]).abs().max() > 1e-5

    qwen = models["qwen2_5_vl"]
    q_inputs = prompt_inputs(qwen, dataset("qwen2_5_vl", 1))
    with pytest.raises(HorizonError, match="M-RoPE"):
        generate(qwen, q_inputs, parse_schedule("random@1:4", qwen.n_layers, 15), positions="renumber")


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_fastv_attention_equals_eager_weights(checkpoints, dataset, name):
    vlm = horizon.load(checkpoints[name], dtype="float32", device="cpu", attn_implementation="eager")
    inputs = prompt_inputs(vlm, dataset(name, 1))
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["rotary"] = kwargs["position_embeddings"]

    layer = vlm.language_model.layers[1]
    handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            out = vlm.hf(**inputs, output_attentions=True)
    finally:
        handle.remove()
    with torch.no_grad():
        mine = vlm.adapter.last_token_attention(layer, captured["hidden"], captured["rotary"])
    eager = out.attentions[1][0, :, -1].float()
    assert mine.shape == eager.shape
    assert torch.allclose(mine, eager, atol=1e-6)
    assert torch.allclose(mine.sum(-1), torch.ones(mine.shape[0]), atol=1e-5)


def test_prefill_flops_by_hand():
    class Config:
        hidden_size, num_attention_heads, num_key_value_heads, head_dim, intermediate_size = 8, 2, 1, 4, 16

    # n = 3: q,o: 2*3*8*(2*2*4) = 768; k,v: 2*3*8*(2*1*4) = 384; attention 4*9*2*4 = 288; mlp 6*3*8*16 = 2304
    assert prefill_flops(Config, [3]) == 768 + 384 + 288 + 2304
    assert prefill_flops(Config, [3, 3]) == 2 * prefill_flops(Config, [3])
    assert prefill_flops(Config, [2]) < prefill_flops(Config, [3])


def test_sample_seed_is_per_sample_and_order_free():
    assert sample_seed(0, "a") == sample_seed(0, "a")
    assert len({sample_seed(0, "a"), sample_seed(0, "b"), sample_seed(1, "a")}) == 3


def test_cached_decoding_equals_uncached_under_eager_attention(checkpoints, dataset):
    # eager attention receives an explicit mask sized for the unpruned cache; decoding must not use it
    vlm = horizon.load(checkpoints["llava"], dtype="float32", device="cpu", attn_implementation="eager")
    inputs = prompt_inputs(vlm, dataset("llava", 1))
    sched = parse_schedule("divprune@1:8,random@2:3", vlm.n_layers, n_visual(vlm, inputs))
    cached = generate(vlm, inputs, sched, max_new_tokens=5, return_logits=True)
    uncached = generate(vlm, inputs, sched, max_new_tokens=5, return_logits=True, use_cache=False)
    assert cached.tokens == uncached.tokens and len(cached.logits) >= 2
    for a, b in zip(cached.logits, uncached.logits):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


# A system prompt before the image and the question after it, as the real chat templates lay them out.
SYSTEM_PROMPTS = {
    "llava": "A chat between a curious user and an artificial intelligence assistant. USER: <image>\n{q} ASSISTANT:",
    "qwen2_5_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                  "<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\n<|im_start|>assistant\n",
}
DART_BUDGET = {"llava": 16, "qwen2_5_vl": 8}  # of 25 and 15 visual tokens


def reference_inputs(vlm, inputs, stage_layer):
    """What DART's reference code reads, taken from an unhooked forward pass: the keys the layer before the
    stage wrote to the KV cache, and the hidden states entering the stage's layer through the final norm."""
    with torch.no_grad():
        out = vlm.hf(**inputs, use_cache=True, output_hidden_states=True)
        normed = vlm.language_model.norm(out.hidden_states[stage_layer][0])
    return vlm.adapter.output_cache(out).layers[stage_layer - 1].keys, normed


def image_span(vlm, inputs) -> tuple[int, int]:
    visual = vlm.adapter.visual_positions(vlm.hf, inputs)
    assert visual == list(range(visual[0], visual[0] + len(visual)))
    return visual[0], len(visual)


@pytest.mark.parametrize("stage_layer", [1, 2])
@pytest.mark.parametrize("name", ARCH_NAMES)
def test_dart_selects_what_the_reference_selects(checkpoints, dataset, name, stage_layer):
    vlm = horizon.load(checkpoints[name], dtype="float32", device="cpu")
    # Tiny checkpoints have unit norm weights, under which the final norm leaves cosines unchanged:
    # random weights make it matter, as it does in trained models.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in vlm.language_model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
    inputs = prompt_inputs(vlm, dataset(name, 1))
    start, length = image_span(vlm, inputs)
    keys, normed = reference_inputs(vlm, inputs, stage_layer)
    # the keys generate recomputes for DART (from the layer's input and rotary embeddings) are the cache's
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["rotary"] = kwargs["position_embeddings"]

    layer = vlm.language_model.layers[stage_layer - 1]
    handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            vlm.hf(**inputs, use_cache=False)
            recomputed, _ = vlm.adapter.key_values(layer, captured["hidden"], captured["rotary"])
    finally:
        handle.remove()
    assert recomputed.shape == keys.shape and torch.allclose(recomputed, keys, atol=1e-6, rtol=0)
    budget = DART_BUDGET[name]
    expected, _, _ = reference_dart(keys, normed, start, length, budget)
    gen = generate(vlm, inputs, parse_schedule(f"dart@{stage_layer}:{budget}", vlm.n_layers, length),
                   max_new_tokens=1)
    assert gen.kept[0] == expected
    assert len(gen.kept[0]) == 4 + 8 * (budget // 8)


@pytest.mark.parametrize("stage_layer", [1, 2])
@pytest.mark.parametrize("name", ARCH_NAMES)
def test_dart_text_pivots_come_from_the_question_never_the_system_prompt(checkpoints, dataset, name, stage_layer):
    vlm = horizon.load(checkpoints[name], dtype="float32", device="cpu")  # its embeddings get edited below
    sample = read_jsonl(dataset(name, 1))[0]
    inputs = vlm.adapter.encode(vlm.processor, [sample.load_image()], SYSTEM_PROMPTS[name].format(q=sample.question))
    ids = inputs["input_ids"][0].tolist()
    start, length = image_span(vlm, inputs)
    special = set(vlm.tokenizer.all_special_ids)
    # a token seen once, in the system prompt, and the question's '?'
    system = next(p for p in range(start) if ids.count(ids[p]) == 1 and ids[p] not in special)
    question = next(p for p in range(start + length, len(ids)) if vlm.tokenizer.decode([ids[p]]) == "?")
    # Point both tokens' embeddings along the directions that give the layer's keys their largest norms,
    # the system token's along the first: it gets the largest key norm of every text token.
    layer = vlm.language_model.layers[stage_layer - 1]
    directions = torch.linalg.svd((layer.self_attn.k_proj.weight * layer.input_layernorm.weight).detach()).Vh
    embeddings = vlm.hf.get_input_embeddings().weight
    scale = 50 * embeddings.norm(dim=-1).mean()
    with torch.no_grad():
        embeddings[ids[system]] = directions[0] * scale
        embeddings[ids[question]] = directions[1] * scale

    keys, normed = reference_inputs(vlm, inputs, stage_layer)
    l1 = keys[0].permute(1, 0, 2).flatten(1).abs().sum(-1)
    text = torch.tensor([p for p in range(len(ids)) if not start <= p < start + length])
    assert int(text[torch.argmax(l1[text])]) == system  # the old rule (every text token) would pivot on it

    v_piv, t_piv = dart_pivots(torch.arange(start, start + length), keys[0].transpose(0, 1).flatten(1), text)
    after = torch.arange(start + length, len(ids))
    assert t_piv.tolist() == after[torch.argsort(l1[after], descending=True)[:4]].tolist()
    assert system not in t_piv.tolist() and question in t_piv.tolist()
    assert all(p >= start + length for p in t_piv.tolist())
    assert v_piv.tolist() == (torch.argsort(l1[start:start + length], descending=True)[:4] + start).tolist()

    budget = DART_BUDGET[name]
    expected, _, reference_text_pivots = reference_dart(keys, normed, start, length, budget)
    assert sorted(reference_text_pivots) == sorted(t_piv.tolist())
    gen = generate(vlm, inputs, parse_schedule(f"dart@{stage_layer}:{budget}", vlm.n_layers, length),
                   max_new_tokens=1)
    assert gen.kept[0] == expected
    assert len(gen.kept[0]) == 4 + 8 * (budget // 8)
