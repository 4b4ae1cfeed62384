"""Horizons that rounding cannot move: the numerical floor, the no-information status, the vanishing tests.

Planted curves (no model): ``synthetic_scores`` puts information up to a
planted horizon; a ``floor`` column is the run's numerical floor.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from horizon.cli import main
from horizon.records import Horizon
from horizon.stats import StatsParams, compare, sample_layer_stats, summarize
from synthetic import synthetic_scores, write_run

FAST = StatsParams(n_boot=300, n_perm=300, seed=0)
STABLE = ["horizon_status", "horizon", "horizon_lo", "horizon_hi", "uniformity_onset", "uniformity_onset_lo",
          "uniformity_onset_hi"]


def summary_of(frame, params=FAST):
    return summarize(sample_layer_stats(frame), params).iloc[0]


def rounding_only(floor, n_samples=30, seed=0, **kw):
    """A curve with no information: every score is rounding noise within +-floor (KL-like: >= 0)."""
    frame = synthetic_scores(horizon=0, noise=0.0, n_samples=n_samples, seed=seed, **kw)
    rng = np.random.default_rng(seed + 100)
    frame["value"] = (rng.random(len(frame)) * floor).astype(np.float32)
    frame["floor"] = floor
    return frame


def with_floor_noise(frame, floor, seed):
    """The same run on "another machine": every score moved by up to the floor."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    out["value"] = out.value + rng.uniform(-floor, floor, len(out))
    return out


def test_a_curve_never_above_the_floor_has_no_information():
    row = summary_of(rounding_only(1e-7))
    assert row.horizon_status == "no-information"
    assert math.isnan(row.horizon) and math.isnan(row.relative_horizon) and row.uniformity_onset is None
    assert Horizon.from_record(row.to_dict()).describe() == "no information"


def test_without_the_floor_rounding_noise_gets_a_horizon():
    """The failure being fixed: the same noise read with no floor looks like information."""
    frame = rounding_only(1e-7).drop(columns="floor")
    assert summary_of(frame).horizon_status != "no-information"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_noise_at_the_floor_leaves_the_summary_unchanged(seed):
    floor = 1e-4
    planted = synthetic_scores(onset=4, horizon=10, seed=5, noise=0.05).assign(floor=floor)
    empty = rounding_only(floor, seed=7).assign(task="empty")
    frame = pd.concat([planted, empty], ignore_index=True)
    before = summarize(sample_layer_stats(frame), FAST)
    after = summarize(sample_layer_stats(with_floor_noise(frame, floor, seed)), FAST)
    pd.testing.assert_frame_equal(before[STABLE], after[STABLE])
    assert list(before.horizon_status) == ["no-information", "found"]  # tasks sorted: empty, t
    assert before.horizon.iloc[1] == pytest.approx(10, abs=1)


def test_values_within_the_floor_count_as_zero():
    base = dict(model="m", task="t", metric="kl", sample_id="s", layer=0, n_layers=1, floor=0.01)
    frame = pd.DataFrame([{**base, "group": g, "value": v} for g, v in enumerate([0.5, 0.009, -0.009, 0.011])])
    row = sample_layer_stats(frame).iloc[0]
    assert row.mean_info == pytest.approx((0.5 + 0.011) / 4)


def test_both_vanishing_tests_on_planted_curves():
    # clear-cut curve: both tests put the horizon at the planted layer
    clean = synthetic_scores(onset=3, horizon=9, seed=1, noise=0.01, spread=0.1)
    for test in ("not-significant", "equivalence"):
        row = summary_of(clean, StatsParams(n_boot=200, seed=0, vanishing_test=test))
        assert row.horizon == 9 and row.vanishing_test == test
    # after the planted horizon, a weak residue just under the threshold, measured on few, noisy samples:
    # not significantly above it (vanished for `not-significant`), not significantly below (alive for
    # `equivalence`), so the equivalence horizon is later -- here none at all
    frame = synthetic_scores(onset=3, horizon=9, seed=2, noise=0.01, spread=0.1, n_samples=6)
    rng = np.random.default_rng(0)
    late = frame.layer >= 9
    frame["value"] = frame.value.astype(np.float64)
    frame.loc[late, "value"] = 0.04 + rng.normal(0, 0.2, late.sum())  # threshold is 5% of ~1
    lenient = summary_of(frame, StatsParams(n_boot=200, seed=0, vanishing_test="not-significant"))
    strict = summary_of(frame, StatsParams(n_boot=200, seed=0, vanishing_test="equivalence"))
    assert lenient.horizon_status == "found" and lenient.horizon == 9
    assert strict.horizon_status == "persists"


def test_unknown_vanishing_test_is_a_clear_error():
    with pytest.raises(Exception, match="vanishing test must be one of not-significant, equivalence"):
        StatsParams(vanishing_test="bayes")


def test_comparison_with_a_curve_without_information_is_not_a_number():
    floor = 1e-6
    frame = pd.concat([synthetic_scores(horizon=10, seed=1).assign(floor=floor),
                       rounding_only(floor).assign(task="empty")], ignore_index=True)
    row = compare(sample_layer_stats(frame), FAST).iloc[0]
    assert math.isnan(row.difference) and "no information at any layer in empty" in row.note


def test_analyze_reads_the_floor_from_the_run_and_reports_the_status(tmp_path, capsys):
    floor = 1e-7
    scores = pd.concat([synthetic_scores(horizon=10, seed=1, task="ocr", n_samples=12),
                        rounding_only(floor, n_samples=12).assign(task="colour",
                                                                  sample_id=lambda f: "c" + f.sample_id)])
    run = write_run(tmp_path / "run", [scores.drop(columns=["floor"])], "m", 16)
    config = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**config, "numerical_floor": {"kl": floor}}))
    assert main(["analyze", str(run), "--out", str(tmp_path / "out"), "--n-boot", "100", "--n-perm", "100",
                 "--vanishing-test", "equivalence"]) == 0
    records = {r["task"]: r for r in json.loads((tmp_path / "out" / "summary.json").read_text())}
    assert records["colour"]["horizon_status"] == "no-information" and records["colour"]["horizon"] is None
    assert records["colour"]["floor"] == floor and records["colour"]["vanishing_test"] == "equivalence"
    assert records["ocr"]["horizon_status"] == "found" and records["ocr"]["horizon"] == pytest.approx(10, abs=1)
    assert "no information" in capsys.readouterr().out


def test_information_in_a_few_samples_is_not_no_information():
    """Above the floor but not significantly (two samples of 30 carry it): a horizon with a wide CI, not the status."""
    floor = 1e-6
    frame = rounding_only(floor)
    few = frame.sample_id.isin(["t-0", "t-1"]) & (frame.layer < 5) & (frame.group == 0)
    frame["value"] = frame.value.astype(np.float64)
    frame.loc[few, "value"] = 2.0
    row = summary_of(frame)
    assert row.horizon_status != "no-information"
    assert summary_of(rounding_only(floor)).horizon_status == "no-information"
