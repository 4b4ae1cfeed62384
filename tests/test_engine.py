"""The engine against independent computations.

The reference is ``horizon.reference.deleted_logits``: the unmodified
transformers forward pass with the removed hidden states physically deleted
before layer l (plain PyTorch hooks, full recompute, no nnsight, no cache).
Expected scores are computed from it with numpy, not with horizon.scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import horizon
from horizon.ablation import Ablation, clean_pass, run_ablations
from horizon.data import read_jsonl
from horizon.groups import tile
from horizon.reference import deleted_logits, kept_index

from conftest import CONTRACT  # every registered adapter's model type: the engine's contract runs on each

TOL = 1e-5


def rebuild_inputs(vlm, sample_row, sample):
    """The exact model inputs of a scanned sample: its stored input_ids plus the image features."""
    prompt = vlm.adapter.prompt(vlm.processor, sample.question)
    enc = vlm.adapter.encode(vlm.processor, [sample.load_image()], prompt)
    ids = torch.tensor([list(sample_row.input_ids)])
    extra = ids.shape[1] - enc["input_ids"].shape[1]
    assert torch.equal(ids[:, : enc["input_ids"].shape[1]], enc["input_ids"])
    enc["input_ids"], enc["attention_mask"] = ids, torch.ones_like(ids)
    for name in ("mm_token_type_ids", "token_type_ids"):  # per-token types: the appended answer is text
        if name in enc:
            enc[name] = torch.cat([enc[name], torch.zeros(1, extra, dtype=torch.long)], 1)
    return enc, enc["input_ids"].shape[1] - extra


def reference_logprobs(vlm, inputs, layer, removed, scored):
    logits = deleted_logits(vlm, inputs, layer, removed)[0]
    rows = [kept_index(inputs["input_ids"].shape[1], removed, s) for s in scored]
    return torch.log_softmax(logits[rows].double(), -1).numpy()


@pytest.mark.parametrize("name", CONTRACT)
def test_clean_pass_equals_model_logits(models, dataset, name):
    vlm = models[name]
    sample = read_jsonl(dataset(name, 1))[0]
    prompt = vlm.adapter.prompt(vlm.processor, sample.question)
    inputs = vlm.adapter.encode(vlm.processor, [sample.load_image()], prompt)
    clean = clean_pass(vlm, inputs, [inputs["input_ids"].shape[1] - 1])
    with torch.no_grad():
        expected = vlm.hf(**inputs).logits
    assert clean.logits.shape == expected.shape
    assert torch.allclose(clean.logits, expected, atol=1e-6, rtol=0)
    # Removing nothing at any layer reproduces the clean distribution.
    for idx, logq in run_ablations(vlm, clean, [Ablation(l, ()) for l in range(vlm.n_layers)], batch_size=2):
        assert torch.allclose(logq, clean.scored_logprobs()[None].expand_as(logq), atol=1e-5)


@pytest.mark.parametrize("name", CONTRACT)
@pytest.mark.parametrize("protocol", ["remove", "keep"])
@pytest.mark.parametrize("k", [1, 2])
def test_scores_equal_physical_deletion(models, dataset, name, protocol, k):
    vlm = models[name]
    path = dataset(name, 2)
    metrics = ("kl", "dlogp", "dprob") if protocol == "remove" else ("gain_logp", "gain_prob")
    span = "full" if k == 2 else "first"  # sample 1's answer has several tokens
    result = horizon.scan(vlm, path, layers="all", group=k, protocol=protocol, metrics=metrics,
                          answer_span=span, progress=False, batch_size=5)
    samples = {s.id: s for s in read_jsonl(path)}
    scores = result.scores.set_index(["sample_id", "layer", "group", "metric"]).value
    assert scores.dtype == np.float32
    checked = 0
    for row in result.samples.itertuples():
        inputs, start = rebuild_inputs(vlm, row, samples[row.sample_id])
        # the scored tokens: the answer from its first text-carrying token (checked in test_answer_token.py)
        y = np.array(row.answer_ids[row.scored_offset:])
        n_answer = len(y)
        scored = list(range(start - 1 + row.scored_offset, start - 1 + len(row.answer_ids)))
        groups = tile(vlm.adapter.grids(vlm.hf, inputs), k)
        visual = [p for g in groups for p in g.positions]
        assert row.n_visual == len(visual) == sum(g.size for g in vlm.adapter.grids(vlm.hf, inputs))
        with torch.no_grad():
            logp = torch.log_softmax(vlm.hf(**inputs).logits[0, scored].double(), -1).numpy()
        # first and last visual token's groups, one from the middle, and a ragged edge window
        picks = {0, len(groups) - 1, len(groups) // 2} | {g.index for g in groups if len(g.positions) < k * k}
        for layer in range(vlm.n_layers):
            none = reference_logprobs(vlm, inputs, layer, visual, scored) if protocol == "keep" else None
            for gi in sorted(picks)[:5]:
                g = groups[gi]
                if protocol == "remove":
                    q = reference_logprobs(vlm, inputs, layer, g.positions, scored)
                    lp, lq = logp[np.arange(n_answer), y].sum(), q[np.arange(n_answer), y].sum()
                    expected = {"dlogp": lp - lq, "dprob": np.exp(lp) - np.exp(lq),
                                "kl": np.mean((np.exp(logp) * (logp - q)).sum(-1))}
                else:
                    removed = [p for p in visual if p not in g.positions]
                    q = reference_logprobs(vlm, inputs, layer, removed, scored)
                    lk, ln = q[np.arange(n_answer), y].sum(), none[np.arange(n_answer), y].sum()
                    expected = {"gain_logp": lk - ln, "gain_prob": np.exp(lk) - np.exp(ln)}
                for metric, value in expected.items():
                    got = scores[(row.sample_id, layer, gi, metric)]
                    assert abs(got - value) <= TOL, (metric, layer, gi, got, value)
                    checked += 1
    assert checked >= 2 * vlm.n_layers * 3 * len(metrics)


@pytest.mark.parametrize("name", CONTRACT)
def test_batching_and_prefix_reuse_do_not_change_scores(models, dataset, name):
    vlm = models[name]
    path = dataset(name, 1)
    base = horizon.scan(vlm, path, group=1, batch_size=1, reuse_prefix=False, progress=False).scores
    for options in (dict(batch_size=7), dict(batch_size=64), dict(batch_size=1, reuse_prefix=True),
                    dict(batch_size=None)):
        other = horizon.scan(vlm, path, group=1, progress=False, **options).scores
        pd.testing.assert_frame_equal(other[["sample_id", "layer", "group", "metric"]],
                                      base[["sample_id", "layer", "group", "metric"]])
        assert np.abs(other.value.to_numpy() - base.value.to_numpy()).max() <= TOL, options


def test_keep_protocol_isolates_the_kept_group(models, dataset):
    """With every other visual token removed at layer 0, only the kept group can matter."""
    vlm = models["llava"]
    result = horizon.scan(vlm, dataset("llava", 1), protocol="keep", group=2, layers="0", progress=False)
    gains = result.scores[result.scores.metric == "gain_logp"].value.to_numpy()
    assert len(gains) == 9 and np.isfinite(gains).all()
    assert np.unique(np.round(gains, 6)).size > 1  # different groups carry different information


def test_scan_returns_schema_frames_in_memory(models, dataset):
    result = horizon.scan(models["llava"], dataset("llava", 2), layers=[0, 2], metrics=("kl",), progress=False)
    assert result.run_dir is None
    assert set(result.scores.layer) == {0, 2}
    assert list(result.scores.columns) == ["sample_id", "layer", "group", "metric", "value"]
    assert len(result.scores) == 2 * 2 * 9
    assert list(result.groups.columns) == ["sample_id", "group", "row", "col", "positions", "image", "grid"]
    assert (result.groups.image == 0).all()  # one image per sample
    assert (result.samples.status == "ok").all()


def test_eager_attention_gives_the_same_scores(checkpoints, models, dataset):
    path = dataset("llava", 1)
    eager = horizon.load(checkpoints["llava"], device="cpu", attn_implementation="eager")
    assert eager.language_model.config._attn_implementation == "eager"
    a = horizon.scan(eager, path, group=2, progress=False).scores
    b = horizon.scan(models["llava"], path, group=2, progress=False).scores
    assert np.abs(a.value.to_numpy() - b.value.to_numpy()).max() <= TOL
