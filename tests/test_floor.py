"""The numerical floor of a run, against independent computations.

A floor is honest when the rounding error of every score is at or below it.
The reference for the rounding error is the same scan with the model in
float64, whose own rounding is ~1e-16 and negligible here.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import horizon
from horizon.ablation import Ablation, clean_pass, run_ablations
from horizon.data import read_jsonl
from horizon.scan import encode_sample, append_answer, answer_ids_for


@pytest.mark.parametrize("protocol", ["remove", "keep"])
def test_floor_bounds_the_float32_rounding_of_every_score(checkpoints, dataset, protocol):
    data = dataset("llava", 3)
    v32 = horizon.load(checkpoints["llava"], dtype="float32", device="cpu")
    v64 = horizon.load(checkpoints["llava"], dtype=torch.float64, device="cpu")
    r32 = horizon.scan(v32, data, group=1, protocol=protocol, progress=False)
    r64 = horizon.scan(v64, data, group=1, protocol=protocol, progress=False)
    key = ["sample_id", "layer", "group", "metric"]
    both = r32.scores.merge(r64.scores, on=key, suffixes=("_32", "_64"))
    assert len(both) == len(r32.scores) > 0
    floors = {}
    for text in r32.samples["floor"]:
        for metric, value in json.loads(text).items():
            floors[metric] = max(floors.get(metric, 0.0), value)
    assert set(floors) == set(r32.scores.metric) - {"keep_prob"}
    for metric, part in both.groupby("metric"):
        if metric == "keep_prob":
            continue
        error = np.abs(part.value_32.astype(np.float64) - part.value_64.astype(np.float64))
        assert (error <= floors[metric]).all(), (metric, float(error.max()), floors[metric])
        # and the floor is a floor, not a ceiling: far below the information the tiny model has
        assert floors[metric] < 1e-3 * np.abs(part.value_64).max()


def test_null_ablation_is_part_of_the_floor(models, dataset):
    """The floor is at least the score of removing nothing through the engine, computed here directly."""
    vlm = models["llava"]
    sample = read_jsonl(dataset("llava", 1))[0]
    result = horizon.scan(vlm, [sample], group=1, metrics=("dlogp",), progress=False)
    floor = json.loads(result.samples["floor"].iloc[0])["dlogp"]
    inputs, prompt = encode_sample(vlm, sample)
    answer = answer_ids_for(vlm, sample, prompt)[:1]
    full = append_answer(inputs, answer)
    scored = [inputs["input_ids"].shape[1] - 1]
    clean = clean_pass(vlm, full, scored)
    visual = (full["input_ids"][0] == vlm.adapter.image_token_id(vlm.hf)).nonzero().flatten().tolist()
    nulls = [Ablation(l, (), start=min(visual)) for l in range(vlm.n_layers)]
    logp = clean.scored_logprobs()[0, answer[0]].item()
    for _, logq in run_ablations(vlm, clean, nulls, batch_size=2):
        for row in logq:
            assert abs(logp - row[0, answer[0]].item()) <= floor
    assert floor > 0  # the rounding draws always contribute


def test_noise_at_the_floor_leaves_a_scanned_runs_summary_unchanged(models, dataset, tmp_path):
    from horizon.stats import StatsParams, analyze_frames, load_runs, read_scores

    run = tmp_path / "run"
    horizon.scan(models["llava"], dataset("llava", 4), out=run, group=1, metrics=("kl", "dlogp"), progress=False)
    params = StatsParams(n_boot=100, n_perm=10, seed=0)
    loaded = load_runs([run])
    assert set(loaded[0]["floor"]) == {"kl", "dlogp"}
    columns = ["model", "task", "metric", "horizon_status", "horizon", "horizon_lo", "horizon_hi", "uniformity_onset"]
    before = analyze_frames(loaded, params=params)["summary"][columns]
    for seed in range(3):
        rng = np.random.default_rng(seed)
        scores = read_scores(loaded[0]).copy()
        floor = scores.metric.map(loaded[0]["floor"]).to_numpy()
        scores["value"] = scores.value + rng.uniform(-1, 1, len(scores)) * floor
        after = analyze_frames([{**loaded[0], "scores": scores}], params=params)["summary"][columns]
        pd.testing.assert_frame_equal(before, after)
