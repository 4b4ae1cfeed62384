"""Statistics on synthetic runs with planted horizons (no model needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from horizon.cli import main
from horizon.stats import StatsParams, compare, curves, holm, sample_layer_stats, summarize
from synthetic import synthetic_scores, write_run

FAST = StatsParams(n_boot=300, n_perm=300, seed=0)


def summary_of(frame, params=FAST):
    return summarize(sample_layer_stats(frame), params).iloc[0]


@pytest.mark.parametrize("shape, options", [
    ("sharp", {}),
    ("slow", dict(noise=0.01)),
    ("noisy", dict(noise=0.1, spread=0.4, n_samples=25)),
])
@pytest.mark.parametrize("onset, horizon", [(3, 9), (6, 13)])
def test_planted_horizon_and_onset_are_found(shape, options, onset, horizon):
    frame = synthetic_scores("sharp" if shape == "noisy" else shape, onset=onset, horizon=horizon, seed=horizon,
                             **options)
    row = summary_of(frame)
    assert abs(row.horizon - horizon) <= 1
    assert row.horizon_lo <= horizon <= row.horizon_hi
    assert abs(row.uniformity_onset - onset) <= 1
    assert row.uniformity_onset_lo <= onset <= row.uniformity_onset_hi
    assert row.relative_horizon == pytest.approx(row.horizon / 16)


@pytest.mark.parametrize("shape", ["sharp", "never_decay"])
def test_a_curve_that_never_vanishes_has_no_horizon(shape):
    row = summary_of(synthetic_scores(shape, horizon=None))
    assert row.horizon_status == "persists"
    assert math.isnan(row.horizon) and math.isnan(row.relative_horizon) and math.isnan(row.horizon_lo)


def test_a_single_sample_supports_no_horizon():
    row = summary_of(synthetic_scores(n_samples=1))
    assert row.n_samples == 1 and row.horizon_status == "undetermined" and math.isnan(row.horizon)
    assert row.uniformity_onset is None


def test_uniformity_and_concentration_measures():
    base = dict(model="m", task="t", metric="kl", sample_id="s", layer=0, n_layers=1)
    equal = pd.DataFrame([{**base, "group": g, "value": 0.3} for g in range(100)])
    one = pd.DataFrame([{**base, "group": g, "value": 5.0 if g == 7 else 0.0} for g in range(100)])
    negative = one.assign(value=np.where(one.group == 7, 5.0, -1.0))  # negative parts are clipped away
    u_equal, u_one, u_neg = (sample_layer_stats(f).iloc[0] for f in (equal, one, negative))
    assert u_equal.uniformity == pytest.approx(1.0) and u_equal.entropy == pytest.approx(1.0)
    assert u_one.uniformity == pytest.approx(0.01) and u_one.entropy == pytest.approx(0.0)
    assert u_neg.uniformity == pytest.approx(0.01)
    assert u_equal.top_share == pytest.approx(0.10) and u_one.top_share == pytest.approx(1.0)
    assert u_equal.mean_info == pytest.approx(0.3)
    # an independent Gini: mean absolute difference / (2 * mean)
    rng = np.random.default_rng(3)
    x = rng.exponential(size=50)
    gini = np.abs(x[:, None] - x[None]).mean() / (2 * x.mean())
    frame = pd.DataFrame([{**base, "group": g, "value": v} for g, v in enumerate(x)])
    assert sample_layer_stats(frame).iloc[0].uniformity == pytest.approx(1 - gini)


def test_holm_matches_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone: 0.02, 0.03, 0.06, 0.06
    assert np.allclose(holm(p), [0.03, 0.06, 0.06, 0.02])


def test_bootstrap_and_permutation_are_reproducible_with_a_seed():
    frame = pd.concat([synthetic_scores(task="a", horizon=9, seed=1, n_samples=20),
                       synthetic_scores(task="b", horizon=6, seed=2, n_samples=20)])
    stats = sample_layer_stats(frame)
    for fn in (summarize, curves, compare):
        first, second = fn(stats, FAST), fn(stats, FAST)
        pd.testing.assert_frame_equal(first, second)
    # another seed draws other resamples: the CI bounds of the curves move
    reseeded = curves(stats, StatsParams(n_boot=300, n_perm=300, seed=5))
    assert not np.allclose(reseeded.mean_info_lo, curves(stats, FAST).mean_info_lo)


def test_task_and_model_comparisons():
    frames = [synthetic_scores(task="ocr", horizon=12, seed=1, n_samples=40, model="big"),
              synthetic_scores(task="vqa", horizon=6, seed=2, n_samples=40, model="big"),
              synthetic_scores(task="ocr", horizon=4, seed=3, n_samples=40, model="small", n_layers=8),
              synthetic_scores(task="vqa", horizon=4, seed=4, n_samples=40, model="small", n_layers=8, onset=2)]
    table = compare(sample_layer_stats(pd.concat(frames)), FAST)
    task = table[(table.kind == "task") & (table.model_a == "big")].iloc[0]
    assert (task.task_a, task.task_b) == ("ocr", "vqa")
    assert task.difference == 6 and task.difference_lo > 0 and task.p_value < 0.01
    same = table[(table.kind == "task") & (table.model_a == "small")].iloc[0]
    assert same.difference == 0 and same.p_value > 0.05
    model = table[(table.kind == "model") & (table.task_a == "ocr")].iloc[0]
    assert model.units == "relative depth"
    assert model.difference == pytest.approx(12 / 16 - 4 / 8) and model.p_value < 0.01


def test_analyze_end_to_end_on_hand_made_runs(tmp_path, capsys):
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    big = write_run(tmp_path / "big", [synthetic_scores(task="ocr", horizon=12, model="big", n_samples=12, seed=1),
                                       synthetic_scores(task="vqa", horizon=6, model="big", n_samples=12, seed=2)],
                    "org/big-model", 16, image=image)
    small = write_run(tmp_path / "small", [synthetic_scores(task="ocr", horizon=3, n_layers=8, n_samples=12, seed=3),
                                           synthetic_scores(task="vqa", horizon=3, n_layers=8, n_samples=12, seed=4)],
                      "org/small-model", 8, parts=True, image=image)
    out = tmp_path / "analysis"
    assert main(["analyze", str(big), str(small), "--out", str(out), "--n-boot", "200", "--n-perm", "200"]) == 0
    printed = capsys.readouterr().out
    assert "org/big-model" in printed and "horizon" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary) == 4
    for row in summary:
        for key in ("model", "task", "metric", "n_samples", "n_layers", "horizon", "horizon_ci", "relative_horizon",
                    "uniformity_onset", "uniformity_onset_ci", "threshold", "alpha"):
            assert key in row, key
    big_ocr = next(r for r in summary if r["model"] == "org/big-model" and r["task"] == "ocr")
    assert abs(big_ocr["horizon"] - 12) <= 1 and len(big_ocr["horizon_ci"]) == 2
    assert pd.read_csv(out / "summary.csv").shape[0] == 4
    assert set(pd.read_csv(out / "curves.csv").layer) == set(range(16))
    assert (pd.read_csv(out / "comparisons.csv").kind.value_counts() == pd.Series({"task": 2, "model": 2})).all()
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) >= 6 and len(list((out / "figures").glob("*.pdf"))) == len(pngs)
    for png in pngs:
        with Image.open(png) as im:
            assert im.size[0] >= 400 and im.size[1] >= 300
            assert len(im.convert("RGB").getcolors(1 << 20) or []) > 10  # not blank


def test_missing_columns_get_a_one_line_error(tmp_path, capsys):
    run = write_run(tmp_path / "run", [synthetic_scores(n_samples=3)], "m", 16)
    pd.read_parquet(run / "scores.parquet").drop(columns=["metric", "value"]).to_parquet(run / "scores.parquet")
    assert main(["analyze", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing required column(s) metric, value" in err[0] and "scores" in err[0]


def test_plot_command_and_analysis_scripts_write_figures_only(tmp_path, capsys):
    import runpy
    import sys

    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
    run = write_run(tmp_path / "run", [synthetic_scores(task="ocr", horizon=5, n_layers=8, n_samples=6, seed=1)],
                    "org/model", 8, image=image)
    assert main(["plot", str(run), "--out", str(tmp_path / "plots"), "--n-boot", "100", "--n-perm", "100"]) == 0
    written = {p.name for p in (tmp_path / "plots").rglob("*") if p.is_file()}
    assert "summary.json" not in written and "info_curve_kl.png" in written and "uniformity_kl.pdf" in written

    root = Path(__file__).parents[1] / "analysis"
    for script, args in (("figure_info_curves.py", [str(run), "--out", str(tmp_path / "a"), "--metric", "kl"]),
                         ("figure_heatmaps.py", [str(run), "--out", str(tmp_path / "b"), "--layers", "0,4"])):
        argv = sys.argv
        sys.argv = [script, *args]
        try:
            runpy.run_path(str(root / script), run_name="__main__")
        finally:
            sys.argv = argv
    assert (tmp_path / "a" / "info_curve_kl.png").exists()
    assert any(p.name.startswith("token_heatmap_kl") for p in (tmp_path / "b").iterdir())


def test_comparisons_without_horizons_say_so_instead_of_a_zero_difference(tmp_path, capsys):
    frames = [synthetic_scores(task="ocr", horizon=None, seed=1, n_samples=12, n_layers=8),
              synthetic_scores(task="vqa", horizon=None, seed=2, n_samples=12, n_layers=8),
              synthetic_scores(task="pos", horizon=4, seed=3, n_samples=12, n_layers=8)]
    stats = sample_layer_stats(pd.concat(frames))
    summary = summarize(stats, FAST).set_index("task")
    assert list(summary.loc[["ocr", "vqa"], "horizon_status"]) == ["persists", "persists"]
    assert summary.loc["pos", "horizon_status"] == "found"
    table = compare(stats, FAST).set_index(["task_a", "task_b"])
    neither = table.loc[("ocr", "vqa")]  # both horizons "past the last layer": no difference of 0
    assert math.isnan(neither.difference) and math.isnan(neither.p_value)
    assert "neither ocr nor vqa has a horizon" in neither.note and "nothing to compare" in neither.note
    one = table.loc[("ocr", "pos")]  # only pos has one: the number stands, and the note says which side
    assert one.difference == 8 - 4 and one.note.startswith("only pos has a horizon: ocr's information persists")

    run = write_run(tmp_path / "run", frames, "org/model", 8)
    assert main(["analyze", str(run), "--out", str(tmp_path / "out"), "--n-boot", "100", "--n-perm", "100"]) == 0
    printed = capsys.readouterr().out.splitlines()
    line = next(x for x in printed if ": ocr vs vqa" in x or "horizon(ocr) - horizon(vqa)" in x)
    assert "nothing to compare" in line and "+0" not in line and "p = " not in line, line
    line = next(x for x in printed if "horizon(ocr) - horizon(pos)" in x)
    assert line.endswith("(only pos has a horizon: ocr's information persists to the last layer, "
                         "counted as n_layers)"), line
