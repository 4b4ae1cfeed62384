"""stats.agreement: estimated scores against exact ones (issue 13), checked against scipy and by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from horizon.stats import StatsParams, agreement, agreement_summary, analyze_frames, horizon_agreement, load_runs
from helpers import error_of
from synthetic import synthetic_scores, write_run

COLUMNS = ["sample_id", "layer", "group", "metric", "value"]


def frame(values: dict[tuple[str, int], list[float]], metric: str = "dlogp") -> pd.DataFrame:
    """A scores frame from {(sample, layer): values over groups 0..n-1}."""
    rows = [(s, layer, g, metric, v) for (s, layer), vs in values.items() for g, v in enumerate(vs)]
    return pd.DataFrame(rows, columns=COLUMNS)


def random_scores(n_samples=6, n_layers=4, n_groups=20, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return frame({(f"s{s}", layer): list(rng.normal(size=n_groups)) for s in range(n_samples)
                  for layer in range(n_layers)})


def test_identical_frames_agree_perfectly():
    exact = random_scores()
    pairs = agreement(exact, exact.copy(), "dlogp")
    assert len(pairs) == 6 * 4 and (pairs.n_groups == 20).all() and (pairs.top_k == 2).all()
    assert np.allclose(pairs.spearman, 1) and np.allclose(pairs.pearson, 1)
    assert (pairs.top_overlap == 1).all() and (pairs.max_abs_error == 0).all() and (pairs.note == "").all()
    summary = agreement_summary(pairs, n_boot=100)
    assert np.allclose(summary[["spearman", "spearman_lo", "spearman_hi", "pearson", "top_overlap",
                                "top_overlap_lo", "top_overlap_hi"]].to_numpy(float), 1)


def test_monotone_nonlinear_transform_keeps_ranks_not_linearity():
    exact = random_scores()
    pairs = agreement(exact, exact.assign(value=np.exp(3 * exact.value)), "dlogp")
    assert np.allclose(pairs.spearman, 1) and (pairs.pearson < 0.99).all() and (pairs.top_overlap == 1).all()


def test_reversed_ranking():
    exact = random_scores()
    pairs = agreement(exact, exact.assign(value=-exact.value), "dlogp")
    assert np.allclose(pairs.spearman, -1) and np.allclose(pairs.pearson, -1) and (pairs.top_overlap == 0).all()


def test_against_scipy_and_by_hand():
    rng = np.random.default_rng(3)
    exact = random_scores(n_samples=3, n_layers=2, n_groups=9, seed=1)
    # ties on both sides: scipy's average ranks must match
    exact["value"] = exact.value.round(0)
    estimate = exact.assign(value=(exact.value + rng.normal(scale=0.7, size=len(exact))).round(1))
    pairs = agreement(exact, estimate.sample(frac=1, random_state=0), "dlogp")  # row order must not matter
    for row in pairs.itertuples():
        x = exact[(exact.sample_id == row.sample_id) & (exact.layer == row.layer)].sort_values("group").value
        y = estimate[(estimate.sample_id == row.sample_id) & (estimate.layer == row.layer)].sort_values("group").value
        assert row.spearman == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
        assert row.pearson == pytest.approx(sps.pearsonr(x, y).statistic, abs=1e-12)
        assert row.max_abs_error == pytest.approx(np.abs(x.to_numpy() - y.to_numpy()).max())

    # by hand: 10 groups, k = ceil(0.1 x 10) = 1 and ceil(0.3 x 10) = 3
    ex = frame({("a", 0): [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]})
    es = frame({("a", 0): [8, 9, 0, 7, 1, 2, 3, 4, 5, 6]})
    assert agreement(ex, es, "dlogp").top_overlap.item() == 0  # top 1: group 0 vs group 1
    three = agreement(ex, es, "dlogp", top_share=0.3)
    assert three.top_k.item() == 3 and three.top_overlap.item() == pytest.approx(2 / 3)  # {0,1,2} vs {0,1,3}
    # d = rank differences; rho = 1 - 6 sum d^2 / (n (n^2 - 1))
    rx, ry = sps.rankdata([9, 8, 7, 6, 5, 4, 3, 2, 1, 0]), sps.rankdata([8, 9, 0, 7, 1, 2, 3, 4, 5, 6])
    rho = 1 - 6 * ((rx - ry) ** 2).sum() / (10 * 99)
    assert agreement(ex, es, "dlogp").spearman.item() == pytest.approx(rho)
    # 30 groups at 10%: k = 3 (0.1 x 30 is 3.0000000000000004 in floating point)
    assert agreement(random_scores(1, 1, 30), random_scores(1, 1, 30), "dlogp").top_k.item() == 3


def test_ties_in_the_top_go_to_the_lower_group_id():
    ex = frame({("a", 0): [1, 1, 0, 0, 0]})  # k = 1: group 0 of the tie
    assert agreement(ex, frame({("a", 0): [2, 1, 0, 0, 0]}), "dlogp").top_overlap.item() == 1
    assert agreement(ex, frame({("a", 0): [1, 2, 0, 0, 0]}), "dlogp").top_overlap.item() == 0


def test_constant_and_tiny_pairs_are_nan_with_a_note():
    ex = frame({("a", 0): [0, 0, 0, 0], ("a", 1): [1, 2, 3, 4], ("a", 2): [1, 2], ("a", 3): [1, 2, 3, 4]})
    es = frame({("a", 0): [1, 2, 3, 4], ("a", 1): [5, 5, 5, 5], ("a", 2): [2, 1], ("a", 3): [1, 3, 2, 4]})
    pairs = agreement(ex, es, "dlogp").set_index("layer")
    assert pairs.note.tolist() == ["exact constant", "estimate constant", "fewer than 3 groups", ""]
    assert pairs.spearman[:3].isna().all() and pairs.pearson[:3].isna().all()
    assert pairs.spearman[3] == pytest.approx(0.8) and pairs.top_overlap.notna().all()
    summary = agreement_summary(pairs.reset_index(), n_boot=50)
    overall = summary[summary.layer.isna()].iloc[0]
    assert overall.n_pairs == 4 and overall.n_defined == 1 and overall.spearman == pytest.approx(0.8)
    assert math.isnan(summary[summary.layer == 0].spearman.item())


def test_each_side_is_zeroed_within_its_own_floor():
    ex = frame({("a", 0): [1e-9, -2e-9, 3e-9, 1.0]})
    es = frame({("a", 0): [3e-9, 2e-9, -1e-9, 1.0]})
    assert agreement(ex, es, "dlogp").spearman.item() < 1
    zeroed = agreement(ex, es, "dlogp", floor=1e-8, estimate_floor=1e-8)
    assert zeroed.spearman.item() == pytest.approx(1) and zeroed.max_abs_error.item() == 0
    # the exact floor does not touch a (tiny-scaled) estimate: it still ranks the groups
    small = frame({("a", 0): [1e-9, 2e-9, 3e-9, 4e-9]})
    big = frame({("a", 0): [0.0, 0.0, 0.5, 2.0]})
    one = agreement(big, small, "dlogp", floor=1e-3)
    assert one.note.item() == ""
    assert one.spearman.item() == pytest.approx(sps.spearmanr([0, 0, 0.5, 2], [1, 2, 3, 4]).statistic)
    assert agreement(big, small, "dlogp", estimate_floor=1e-3).note.item() == "estimate constant"


def test_only_common_groups_count():
    ex = frame({("a", 0): [1, 2, 3, 4, 5], ("b", 0): [1, 2, 3]})
    es = frame({("a", 0): [1, 2, 3, 4]})
    pairs = agreement(ex, es, "dlogp")
    assert pairs.sample_id.tolist() == ["a"] and pairs.n_groups.item() == 4


def test_bootstrap_ci_over_samples_is_deterministic_and_holds_the_estimate():
    exact = random_scores(n_samples=12, n_layers=3, n_groups=16, seed=5)
    noisy = exact.assign(value=exact.value + np.random.default_rng(1).normal(scale=0.6, size=len(exact)))
    pairs = agreement(exact, noisy, "dlogp")
    a, b = agreement_summary(pairs, n_boot=300, seed=7), agreement_summary(pairs, n_boot=300, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert not agreement_summary(pairs, n_boot=300, seed=8).equals(a)
    assert a.layer.isna().sum() == 1 and a.layer.dropna().tolist() == [0, 1, 2]
    for column in ("spearman", "pearson", "top_overlap"):
        assert (a[f"{column}_lo"] <= a[column]).all() and (a[column] <= a[f"{column}_hi"]).all(), column
        assert (a[f"{column}_lo"] < a[f"{column}_hi"]).all(), column
    overall = a[a.layer.isna()].iloc[0]
    assert overall.n_samples == 12 and overall.n_pairs == 36
    assert overall.spearman == pytest.approx(pairs.spearman.median())
    assert overall.top_overlap == pytest.approx(pairs.top_overlap.mean())


def test_bootstrap_resamples_samples_not_pairs():
    # two samples, one perfect and one reversed at every layer: a resample draws whole samples, so the
    # overall median over its pairs is -1, 0 or 1, never anything else
    good = random_scores(n_samples=1, n_layers=5, n_groups=10, seed=2)
    bad = good.assign(sample_id="t")
    exact = pd.concat([good, bad], ignore_index=True)
    estimate = pd.concat([good, bad.assign(value=-bad.value)], ignore_index=True)
    pairs = agreement(exact, estimate, "dlogp")
    from horizon.stats.agreement import _weighted_median

    counts = np.random.default_rng(0).multinomial(2, [0.5, 0.5], size=200)
    index = (pairs.sample_id == "t").to_numpy().astype(int)
    boot = _weighted_median(pairs.spearman.to_numpy(), counts, index)
    assert set(np.round(boot, 9)) <= {-1.0, 0.0, 1.0} and len(set(np.round(boot, 9))) == 3
    # and it is np.median of the values repeated as drawn
    for row, c in zip(boot[:20], counts[:20]):
        assert row == pytest.approx(np.median(np.repeat(pairs.spearman.to_numpy(), c[index])))


def test_bad_input_is_one_line():
    exact = random_scores(2, 2, 5)
    error_of(lambda: agreement(exact.drop(columns="group"), exact, "dlogp"), "exact scores", "group")
    error_of(lambda: agreement(exact, exact.drop(columns="value"), "dlogp"), "estimate scores", "value")
    error_of(lambda: agreement(exact, exact.assign(metric="kl"), "dlogp"), "estimate", "'dlogp'", "kl")
    error_of(lambda: agreement(exact, exact, "kl"), "exact", "'kl'")
    error_of(lambda: agreement(exact, exact.assign(sample_id="x" + exact.sample_id), "dlogp"), "share no")
    error_of(lambda: agreement(exact, exact, "dlogp", top_share=0), "top share")
    error_of(lambda: agreement(pd.concat([exact, exact]), exact, "dlogp"), "repeats")
    error_of(lambda: agreement_summary(pd.DataFrame({"sample_id": []})), "missing", "spearman")


# ---------------------------------------------------------------- horizons, from run directories


def _run(tmp_path, name, horizon, seed=0):
    scores = synthetic_scores(n_samples=20, n_layers=16, groups=9, horizon=horizon, seed=seed, metric="dlogp")
    return write_run(tmp_path / name, [scores], "m", 16, grid=3)


def test_horizon_agreement_of_identical_runs(tmp_path):
    params = StatsParams(n_boot=100, n_perm=10)
    exact = _run(tmp_path, "exact", 10)
    same = _run(tmp_path, "same", 10)
    table = horizon_agreement(exact, [same], params=params)
    row = table.iloc[0]
    assert (row.status_exact, row.status_estimate) == ("found", "found")
    assert row.delta == 0 and row.horizon_goal and row.horizon_exact == row.horizon_estimate
    assert row.horizon_exact_lo <= row.horizon_exact <= row.horizon_exact_hi
    # the same horizon horizon analyze finds
    found = analyze_frames(load_runs([exact]), params=params)["summary"]
    assert row.horizon_exact == found.horizon.item() and row.horizon_exact_lo == found.horizon_lo.item()


def test_horizon_agreement_flags_a_distant_horizon_and_the_spearman_goal(tmp_path):
    params = StatsParams(n_boot=100, n_perm=10)
    exact, late = _run(tmp_path, "exact", 8), _run(tmp_path, "late", 12, seed=1)
    exact_scores = pd.read_parquet(exact / "scores.parquet")
    pairs = agreement(exact_scores, exact_scores, "dlogp")
    table = horizon_agreement(exact, late, params=params, summary=agreement_summary(pairs, n_boot=50))
    row = table.iloc[0]
    assert row.delta == row.horizon_estimate - row.horizon_exact and row.delta >= 3
    assert not row.horizon_goal and row.spearman == pytest.approx(1) and row.spearman_goal
    assert horizon_agreement(exact, late, params=params, tolerance=10).horizon_goal.item()


def test_horizon_agreement_when_neither_has_a_horizon(tmp_path):
    params = StatsParams(n_boot=50)
    a, b = _run(tmp_path, "a", None), _run(tmp_path, "b", None, seed=1)
    row = horizon_agreement(a, b, params=params).iloc[0]
    assert (row.status_exact, row.status_estimate) == ("persists", "persists")
    assert math.isnan(row.delta) and row.horizon_goal


def test_horizon_agreement_bad_input(tmp_path):
    exact = _run(tmp_path, "exact", 10)
    error_of(lambda: horizon_agreement(exact, tmp_path / "nope", params=StatsParams(n_boot=10)), "nope", "not found")
    other = write_run(tmp_path / "other", [synthetic_scores(n_samples=4, n_layers=4, groups=4, model="m2")], "m2", 4)
    error_of(lambda: horizon_agreement(exact, other, params=StatsParams(n_boot=10)), "share no")
