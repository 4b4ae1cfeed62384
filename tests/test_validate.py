"""`horizon validate-estimator` end to end on a tiny checkpoint: exact against a second exact scan."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from horizon.cli import main
from horizon.io.runs import read_config, read_run
from horizon.stats import StatsParams
from horizon.validate import validate_estimator
from helpers import error_of

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = StatsParams(n_boot=50)


def _parts(run) -> dict:
    """The run's committed sample parts and their modification times."""
    return {p.name: p.stat().st_mtime_ns for p in (run / "samples").glob("*.parquet")}


def test_exact_against_exact_agrees_perfectly_and_resumes(models, dataset, tmp_path):
    data, out = dataset("llava", 4), tmp_path / "valid"  # two samples per task: each task has a horizon test
    result = validate_estimator(models["llava"], data, out, estimator="exact", limit=4, progress=False,
                                params=FAST, layers="0,2", metrics=("dlogp", "kl"))
    runs = result["runs"]
    assert runs == {"exact": out / "exact", "estimate": out / "exact-rescan"}
    assert {p.name for p in out.iterdir()} >= {"exact", "exact-rescan", "agreement.csv", "agreement_summary.csv",
                                               "validation.json", "timings.json"}
    for run in runs.values():
        assert len(read_run(run)["samples"]) == 4
    pairs = result["pairs"]
    assert set(pairs.metric) == {"dlogp", "kl"} and len(pairs) == 2 * 4 * 2  # metrics x samples x layers
    defined = pairs[pairs.note == ""]
    assert len(defined) > 0 and np.allclose(defined.spearman, 1) and np.allclose(defined.pearson, 1)
    assert (pairs.top_overlap == 1).all() and (pairs.max_abs_error == 0).all()
    summary = result["summary"]
    overall = summary[summary.layer.isna()]
    assert np.allclose(overall[["spearman", "spearman_lo", "spearman_hi", "top_overlap"]].to_numpy(float), 1)
    horizons = result["horizons"]
    assert (horizons.status_exact == horizons.status_estimate).all()
    assert ((horizons.delta == 0) | horizons.delta.isna()).all() and horizons.horizon_goal.all()
    assert horizons.spearman_goal.all()

    written = json.loads((out / "validation.json").read_text())
    assert written["estimator"] == "exact" and written["metrics"] == ["dlogp", "kl"]
    assert written["goals"] == {"dlogp": {"spearman": True, "horizon": True}, "kl": {"spearman": True, "horizon": True}}
    assert written["seconds_per_sample"]["exact"] > 0 and written["speedup"] > 0
    assert written["horizon_tolerance"] == 0
    first = next(r for r in written["summary"] if r["layer"] is None and r["metric"] == "dlogp")
    assert first["spearman_ci"] == [1.0, 1.0] and first["n_pairs"] == 8
    pd.testing.assert_frame_equal(pd.read_csv(out / "agreement.csv", keep_default_na=False,
                                              na_values=[""]).drop(columns="note"),
                                  pairs.drop(columns="note"), check_dtype=False)

    # a second call scans nothing: same parts, untouched, same timings; the tables come out the same
    before = {name: _parts(run) for name, run in runs.items()}
    timings = (out / "timings.json").read_text()
    again = validate_estimator(models["llava"], data, out, estimator="exact", limit=4, progress=False,
                               params=FAST, layers="0,2", metrics=("dlogp", "kl"))
    assert {name: _parts(run) for name, run in runs.items()} == before
    assert (out / "timings.json").read_text() == timings
    pd.testing.assert_frame_equal(again["pairs"], pairs)


def test_limit_grows_by_resuming(models, dataset, tmp_path):
    data, out = dataset("llava", 3), tmp_path / "valid"
    options = dict(estimator="exact", progress=False, params=FAST, layers="1", metrics=("dlogp",))
    validate_estimator(models["llava"], data, out, limit=2, **options)
    first = _parts(out / "exact")
    result = validate_estimator(models["llava"], data, out, limit=3, **options)
    now = _parts(out / "exact")
    assert len(now) == 3 and {k: now[k] for k in first} == first  # the first two parts untouched
    assert sorted(result["pairs"].sample_id) == ["q0", "q1", "q2"]
    timings = json.loads((out / "timings.json").read_text())
    assert timings["exact"]["samples"] == 3 and timings["exact-rescan"]["samples"] == 3


def test_cli_prints_the_table(checkpoints, dataset, tmp_path, capsys):
    out = tmp_path / "valid"
    code = main(["validate-estimator", "--model", str(checkpoints["llava"]), "--data", str(dataset("llava", 2)),
                 "--out", str(out), "--estimator", "exact", "--limit", "2", "--layers", "0,2", "--metric", "dlogp",
                 "--dtype", "float32", "--device", "cpu", "--n-boot", "50", "-q"])
    assert code == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0]
    for column in ("metric", "task", "Spearman [CI]", "Pearson [CI]", "top 10% [CI]", "horizon exact",
                   "horizon est.", "delta", "rho>=0.9", "|delta|<=0"):
        assert column in header, column
    assert "\ndlogp " in text and "1.00 [1.00, 1.00]" in text and "speed-up:" in text
    assert json.loads((out / "validation.json").read_text())["metrics"] == ["dlogp"]
    assert set(read_run(out / "exact")["scores"].metric) == {"dlogp"}  # --metric: only it is scanned


@pytest.mark.parametrize("argv, needle", [
    (["--estimator", "magic"], "--estimator must be one of exact, gradient"),
    (["--limit", "0"], "--limit must be a positive number"),
    (["--metric", "gain_prob"], "gain_prob"),
    (["--group", "0"], "--group"),
])
def test_cli_user_errors_are_one_line(checkpoints, dataset, tmp_path, capsys, argv, needle):
    code = main(["validate-estimator", "--model", str(checkpoints["llava"]), "--data", str(dataset("llava", 1)),
                 "--out", str(tmp_path / "v"), "-q", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("horizon: error: ") and needle in err, err
    assert not (tmp_path / "v").exists()  # refused before anything was scanned


def test_verb_user_errors(models, dataset, tmp_path):
    data = dataset("llava", 1)
    vlm = models["llava"]
    error_of(lambda: validate_estimator(vlm, data, tmp_path / "v", estimator="fast"), "--estimator", "'fast'")
    error_of(lambda: validate_estimator(vlm, tmp_path / "none.jsonl", tmp_path / "v", estimator="exact"),
             "dataset file not found")
    error_of(lambda: validate_estimator(vlm, data, tmp_path / "v", estimator="exact", shard="0/2"), "--shard")
    error_of(lambda: validate_estimator(vlm, data, tmp_path / "v", estimator="exact", colour="red"), "colour")
    error_of(lambda: validate_estimator(vlm, data, tmp_path / "v", estimator="exact", metric="kl",
                                        metrics=("dlogp",)), "'kl'", "dlogp")


def test_gradient_against_exact(models, dataset, tmp_path):
    """The gradient estimator on a random tiny model: no goal is expected, only a complete, consistent report."""
    out = tmp_path / "v"
    result = validate_estimator(models["llava"], dataset("llava", 4), out, estimator="gradient", limit=4,
                                progress=False, params=FAST, layers="0,2", metrics=("dlogp", "kl"))
    assert result["runs"]["estimate"] == out / "gradient"
    assert read_config(out / "gradient")["estimator"] == "gradient"
    pairs = result["pairs"]
    assert len(pairs) == 2 * 4 * 2 and pairs.spearman.dropna().between(-1, 1).all()
    assert pairs.top_overlap.between(0, 1).all() and (pairs.max_abs_error >= 0).all()
    written = json.loads((out / "validation.json").read_text())
    assert written["horizon_tolerance"] == 1 and written["speedup"] > 0 and written["exact_share"] is None
    assert set(written["goals"]) == {"dlogp", "kl"}
    assert len(result["horizons"]) == 2 * 2  # metrics x tasks


def test_hybrid_against_exact(models, dataset, tmp_path):
    out = tmp_path / "v"
    result = validate_estimator(models["llava"], dataset("llava", 2), out, estimator="hybrid", limit=2,
                                progress=False, params=FAST, layers="0,1,2", metrics=("dlogp",))
    assert result["runs"]["estimate"] == out / "hybrid" and read_config(out / "hybrid")["estimator"] == "hybrid"
    written = json.loads((out / "validation.json").read_text())
    assert written["horizon_tolerance"] == 0 and 0 < written["exact_share"] <= 1
    # rows hybrid measured are the exact engine's values, up to rounding: batched with other rows than in the
    # exact scan, their arithmetic differs in the last bits (bit for bit with batch_size=1)
    exact, hybrid = read_run(out / "exact")["scores"], read_run(out / "hybrid")["scores"]
    both = exact.merge(hybrid, on=["sample_id", "layer", "group", "metric"], suffixes=("", "_h"))
    measured = both[both.exact.astype(bool)]
    floor = read_config(out / "exact")["numerical_floor"]["dlogp"]
    assert len(measured) and (np.abs(measured.value - measured.value_h) <= floor).all()


def test_an_estimate_run_that_does_not_record_its_estimator_is_refused(models, dataset, tmp_path):
    """A run that does not say it was estimated may be exact: compared as an estimate it would pass for a
    perfect one."""
    out, data = tmp_path / "v", dataset("llava", 1)
    options = dict(estimator="gradient", limit=1, progress=False, params=FAST, layers="0", metrics=("dlogp",))
    validate_estimator(models["llava"], data, out, **options)
    config = json.loads((out / "gradient" / "run.json").read_text())
    del config["estimator"]  # as a scan that ignored the estimator writes it
    (out / "gradient" / "run.json").write_text(json.dumps(config))
    error_of(lambda: validate_estimator(models["llava"], data, out, **options),
             "records estimator 'exact', not 'gradient'")
