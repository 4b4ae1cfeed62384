"""bfloat16 scans against float32, by effect size (README, "Precision").

In a bfloat16 model the decoder layers run in bf16; the final norm, lm_head,
log-softmax and scores run in float32/float64 (``Adapter.scored_logits``).
Documented tolerance, per metric (dlogp, dprob, kl), with x the float32 and y
the bfloat16 score of each (sample, layer, group) and M = max |x|:

* large effects (|x| >= 10% of M): max |y - x| <= 10% of M and Pearson r >= 0.99;
* all effects: Pearson r >= 0.993, and every |y - x| is within half the bf16
  run's numerical floor of that sample (so the analysis, which zeroes scores
  within +-floor, never reads the bf16/fp32 difference as information).
* Small effects (< 1% of M) carry no claim: there the bf16 decoder layers'
  rounding is as large as the effect and r drops to anywhere in 0.0-0.9.

Measured on these checkpoints (analysis/precision.py measures larger ones):
large-effect error <= 6% of M, r >= 0.997 (all and large), |y - x| <= 0.10 x
floor. With the old bf16 head the Qwen2.5-VL large-effect error is 16%
of M and r over all scores drops to 0.98-0.99, so these claims fail; the head
itself is checked against a float64 recomputation by hand.

The test checkpoints' lm_head is scaled by 8 after loading (exactly, a power of
two, in both dtypes): trained heads are that much larger than the 0.02-std
initialisation, which gives logits of realistic size, where bf16 rounding of
the logits matters; the scan scores the model's own (confident) answer.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import horizon
from horizon.ablation import clean_pass
from horizon.data import read_jsonl
from conftest import ARCHS, write_dataset

METRICS = ("dlogp", "dprob", "kl")
HEAD_SCALE = 8.0  # power of two: scaling is exact in bf16 and float32
LARGE = 0.10  # "large effect": |fp32 score| >= 10% of the largest
TOL_LARGE, R_LARGE, R_ALL, FLOOR_SHARE = 0.10, 0.99, 0.993, 0.5


def load(path, dtype: str) -> horizon.VisionLM:
    """A fresh copy (the session `models` are shared) with a realistic-size output head."""
    vlm = horizon.load(path, dtype=dtype, device="cpu")
    with torch.no_grad():
        vlm.lm_head.weight.mul_(HEAD_SCALE)
    return vlm


def bf16_head(vlm: horizon.VisionLM) -> horizon.VisionLM:
    """The same model with the engine's old head: final norm and lm_head in the model dtype."""

    class ModelDtypeHead(type(vlm.adapter)):
        def scored_logits(self, language_model, lm_head, hidden, chunk=16384):
            return lm_head(language_model.norm(hidden)).float()

    return horizon.VisionLM(hf=vlm.hf, nn=vlm.nn, processor=vlm.processor, adapter=ModelDtypeHead(), source=vlm.source)


def scores(vlm: horizon.VisionLM, data) -> pd.DataFrame:
    """Scores with the sample's floor and scored answer attached, in a fixed order."""
    run = horizon.scan(vlm, data, metrics=METRICS, target="pred", progress=False)
    assert run.scores.value.dtype == np.float32  # stored as float32 whatever the model dtype
    extra = pd.DataFrame([(s, m, f, str(list(ids)[off:]))
                          for s, fl, ids, off in zip(run.samples.sample_id, run.samples.floor,
                                                     run.samples.answer_ids, run.samples.scored_offset)
                          for m, f in json.loads(fl).items()], columns=["sample_id", "metric", "floor", "answer"])
    out = run.scores.merge(extra, on=["sample_id", "metric"], how="left")
    return out.sort_values(["metric", "sample_id", "layer", "group"]).reset_index(drop=True)


@pytest.fixture(scope="module", params=list(ARCHS))
def scans(request, checkpoints, tmp_path_factory) -> dict[str, pd.DataFrame]:
    """One architecture scanned in float32, bfloat16, and bfloat16 with the old bf16 head."""
    name = request.param
    data = write_dataset(tmp_path_factory.mktemp(f"dtype-{name}"), 3, ARCHS[name]["image"])
    bf16 = load(checkpoints[name], "bfloat16")
    assert bf16.dtype == torch.bfloat16
    out = {"fp32": scores(load(checkpoints[name], "float32"), data), "bf16": scores(bf16, data),
           "bf16-head": scores(bf16_head(bf16), data)}
    key = ["metric", "sample_id", "layer", "group"]
    for got in out.values():
        assert got[key].equals(out["fp32"][key])
        # target="pred": each dtype scores its own greedy answer; comparing needs the same one
        assert got.answer.equals(out["fp32"].answer)
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def pair(scans: dict[str, pd.DataFrame], engine: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fp32 scores, `engine` scores, `engine`'s per-sample floors) of one metric, as float64."""
    ref, got = scans["fp32"], scans[engine]
    sel = ref.metric == metric
    return (ref.value[sel].to_numpy(np.float64), got.value[sel].to_numpy(np.float64),
            got.floor[sel].to_numpy(np.float64))


@pytest.mark.parametrize("metric", METRICS)
def test_large_effects_agree_within_10_percent(scans, metric):
    x, y, _ = pair(scans, "bf16", metric)
    top = np.abs(x).max()
    large = np.abs(x) >= LARGE * top
    assert large.sum() >= 5  # enough large effects for the claim to mean something
    assert np.abs(y - x)[large].max() <= TOL_LARGE * top
    assert pearson(x[large], y[large]) >= R_LARGE


@pytest.mark.parametrize("metric", METRICS)
def test_all_effects_correlate_and_differ_by_less_than_the_floor(scans, metric):
    x, y, floor = pair(scans, "bf16", metric)
    assert pearson(x, y) >= R_ALL
    assert (floor > 0).all()
    assert (np.abs(y - x) <= FLOOR_SHARE * floor).all()


@pytest.mark.parametrize("metric", ["dlogp", "dprob"])
def test_float32_head_scores_are_closer_to_float32_than_a_bf16_head(scans, metric):
    # Same bf16 decoder, two heads: if the engine's head were bf16 again, both
    # scans would be identical and the strict inequalities would fail.
    x, y, _ = pair(scans, "bf16", metric)
    _, z, _ = pair(scans, "bf16-head", metric)
    assert 1 - pearson(x, y) < 1 - pearson(x, z)
    assert np.abs(y - x).max() < np.abs(z - x).max()


@pytest.mark.parametrize("name", list(ARCHS))
def test_scored_logits_match_a_float64_head_computed_by_hand(checkpoints, dataset, name):
    vlm = load(checkpoints[name], "bfloat16")
    sample = read_jsonl(dataset(name, 1))[0]
    inputs = vlm.adapter.encode(vlm.processor, [sample.load_image()],
                                vlm.adapter.prompt(vlm.processor, sample.question))
    scored = list(range(inputs["input_ids"].shape[1] - 4, inputs["input_ids"].shape[1]))
    clean = clean_pass(vlm, inputs, scored)
    assert clean.scored_logits.dtype == torch.float32

    # The last layer's output, taken independently of the engine (plain hook, plain forward).
    norm, seen = vlm.language_model.norm, []
    hook = norm.register_forward_hook(lambda module, args, output: seen.append(args[0][0, scored]))
    with torch.no_grad():
        vlm.hf(**inputs)
    hook.remove()
    hidden = seen[0]
    assert hidden.dtype == torch.bfloat16
    with torch.no_grad():
        # RMSNorm and the projection in float64, by hand
        h = hidden.double()
        normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight.double()
        exact = normed @ vlm.lm_head.weight.double().T
        old = vlm.lm_head(norm(hidden)).double()  # what a bf16 head gives on the same hidden state

    scale = exact.abs().max()
    err_engine = (clean.scored_logits.double() - exact).abs().max() / scale
    err_bf16 = (old - exact).abs().max() / scale
    # measured: engine ~3e-7, bf16 head ~2e-3 of max|logit|
    assert err_engine <= 1e-5  # float32 rounding (2^-24 ~ 6e-8) with room for accumulation order
    assert err_bf16 >= 100 * err_engine  # bf16 keeps 8 significant bits: ~2^-9 relative
    # the log-probabilities the scores are made of: within 1e-5 of float64 (measured 1.3e-6; a bf16 head misses by 1.3e-2)
    logp = torch.log_softmax(exact, -1)
    assert (clean.scored_logprobs() - logp).abs().max() <= 1e-5
