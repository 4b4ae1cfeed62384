"""The report's data and file, without a browser: hand-made runs, analyze's numbers, images once, size, bytes.

The browser tests (``test_report_browser.py``) drive the page; these check what it is given.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import horizon
from horizon.cli import main
from horizon.report.data import report_data
from horizon.report.page import MARKERS, static_text
from horizon.stats import StatsParams
from handmade_runs import informative, nothing, write_grid, write_images, write_run

PARAMS = StatsParams(n_boot=200, n_perm=200)


def page_data(path: Path) -> dict:
    """The data block of a written report, parsed back."""
    text = path.read_text(encoding="utf-8")
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, flags=re.S).group(1)
    return json.loads(block)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two models on one task (sharing the images), one on another task, and a run with no information."""
    root = tmp_path_factory.mktemp("handmade")
    shapes = write_images(root / "img-shapes", 8)
    codes = write_images(root / "img-codes", 8, seed=1)
    return {
        "a-shapes": write_run(root / "a-shapes", model="model-a", task="shapes", images=shapes, failed=(7,)),
        "a-codes": write_run(root / "a-codes", model="model-a", task="codes", images=codes,
                             score=informative(6, 5)),
        "b-shapes": write_run(root / "b-shapes", model="model-b", task="shapes", images=shapes, n_layers=8,
                              score=informative(8, 3)),
        "empty": write_run(root / "empty", model="model-c", task="shapes", images=shapes, score=nothing),
        "grid": write_grid(root / "grid", model="model-a", task="shapes", horizon_switch=4),
        "root": root,
    }


def test_summary_equals_analyze(runs, tmp_path):
    paths = [runs["a-shapes"], runs["a-codes"], runs["b-shapes"], runs["empty"]]
    result = horizon.report(paths, tmp_path / "report.html", params=PARAMS)
    horizon.analyze(paths, tmp_path / "analysis", params=PARAMS, figures=False)
    expected = pd.read_csv(tmp_path / "analysis" / "summary.csv")
    shown = pd.DataFrame(page_data(tmp_path / "report.html")["summary"])
    assert len(shown) == len(expected) == 4 * 2  # (model, task) pairs x metrics
    for column in expected.columns:
        want, got = expected[column], shown[column]
        if want.dtype.kind in "fi":
            np.testing.assert_allclose(got.astype(float).to_numpy(), want.to_numpy(), rtol=1e-12, equal_nan=True,
                                       err_msg=column)
        else:
            assert got.tolist() == want.tolist(), column
    # the returned frames are analyze's, the curves and comparisons too
    pd.testing.assert_frame_equal(result["comparisons"].reset_index(drop=True),
                                  pd.read_csv(tmp_path / "analysis" / "comparisons.csv").reset_index(drop=True),
                                  check_dtype=False, check_exact=False, rtol=1e-12)
    assert len(page_data(tmp_path / "report.html")["comparisons"]) == len(result["comparisons"]) > 0


def test_no_information_run_has_a_status_not_a_horizon(runs, tmp_path):
    horizon.report([runs["empty"]], tmp_path / "r.html", params=PARAMS)
    rows = page_data(tmp_path / "r.html")["summary"]
    assert {r["horizon_status"] for r in rows} == {"no-information"}
    assert all(r["horizon"] is None and r["status_text"] == "no information" for r in rows)


def test_sample_view_holds_every_window_and_layer(runs, tmp_path):
    data = report_data([runs["a-shapes"]], params=PARAMS)
    run = data["runs"][0]
    assert run["layers"] == list(range(6)) and run["metrics"] == ["dlogp", "kl"]
    assert len(run["samples"]) == 8 and run["floor"] == {"dlogp": 1e-6, "kl": 1e-6}
    first = run["samples"][0]
    assert first["question"] == "what is in picture 0?" and first["prediction"] == "something else"
    assert len(first["windows"]) == 9 and len(first["scores"]["dlogp"]) == 6 * 9
    # window (row 0, col 2) of a 6 x 6 grid over the 96-pixel image, 2 x 2 tokens: x 32..64, y 0..32
    assert first["windows"][1] == [0, 32.0, 0.0, 64.0, 32.0]
    assert first["blocks"][0]["notes"] == ["view unknown: grid stretched over the whole image"]
    value = informative(6, 4)(0, 1, 1, 9)  # sample 0, layer 1, window 1, as written (float32, 4 digits)
    assert first["scores"]["dlogp"][1 * 9 + 1] == pytest.approx(value, rel=1e-3)
    failed = run["samples"][7]
    assert failed["status"].startswith("error") and failed["scores"] == {}
    assert run["estimator"] is None


def test_metric_restricts_the_report(runs, tmp_path):
    data = report_data([runs["a-shapes"]], metric="kl", params=PARAMS)
    assert data["metrics"] == ["kl"] and data["runs"][0]["metrics"] == ["kl"]
    assert set(data["runs"][0]["samples"][0]["scores"]) == {"kl"}


def test_images_are_embedded_once_and_the_page_is_self_contained(runs, tmp_path):
    out = tmp_path / "r.html"
    horizon.report([runs["a-shapes"], runs["b-shapes"]], out, params=PARAMS)  # both runs show the same 8 images
    text = out.read_text(encoding="utf-8")
    data = page_data(out)
    assert len(data["images"]) == 8
    assert text.count("data:image/") == 8
    keys = {b["image"] for r in data["runs"] for s in r["samples"] for b in s["blocks"]}
    assert keys == set(data["images"])
    assert max(data["image_sizes"].values()) == [96, 96]
    # nothing to fetch: no src/href to anything but the data it carries
    assert not re.search(r'(src|href)\s*=\s*["\'](?!data:|#)', text)
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text
    for marker in MARKERS.values():
        assert marker not in text
    assert static_text("report.js") in text and static_text("report.css") in text


def test_estimated_runs_are_labelled(runs, tmp_path):
    root = runs["root"]
    estimated = write_run(tmp_path / "est", model="model-e", task="shapes",
                          images=sorted((root / "img-shapes").glob("*.png")), estimator="gradient")
    data = report_data([estimated, runs["a-codes"]], params=PARAMS)
    by_model = {r["model"]: r for r in data["summary"]}
    # the analysis names an estimate's model as one, and the page tags its rows
    assert by_model["model-e (gradient estimate)"]["estimate"] == "gradient" and by_model["model-a"]["estimate"] is None
    assert [r["estimator"] for r in data["runs"]] == ["gradient", None]


def test_pruning_grid_panels_follow_the_static_figure(runs, tmp_path):
    data = report_data([runs["a-shapes"]], grids=[runs["grid"]], params=PARAMS)
    (grid,) = data["grids"]
    (panel,) = grid["panels"]
    assert (panel["model"], panel["task"], panel["unpruned"]) == ("model-a", "shapes", 0.9)
    labels = [line["label"] for line in panel["lines"]]
    assert labels[:2] == ["random", "divprune"]
    # no eval.json names the grid's horizon metric: the hybrids are drawn at their earliest switch layer
    assert "random+random (switch 2, earliest)" in labels
    assert panel["budget"] == 9.0 and {len(line["points"]) for line in panel["switch_lines"]} == {2}


def test_the_report_is_byte_identical_on_rerun(runs, tmp_path):
    paths = [runs["a-shapes"], runs["b-shapes"]]
    horizon.report(paths, tmp_path / "one.html", grids=[runs["grid"]], params=PARAMS)
    horizon.report(paths, tmp_path / "two.html", grids=[runs["grid"]], params=PARAMS)
    assert (tmp_path / "one.html").read_bytes() == (tmp_path / "two.html").read_bytes()
    assert str(runs["root"]) not in (tmp_path / "one.html").read_text()  # no absolute paths of this machine


def test_a_sample_text_cannot_close_the_script_block(runs, tmp_path):
    run = tmp_path / "run"
    write_run(run, model="m", task="t", images=sorted((runs["root"] / "img-shapes").glob("*.png"))[:2])
    samples = pd.read_parquet(run / "samples.parquet")
    samples.loc[0, "question"] = "</script><script>alert(1)</script> __REPORT_DATA__ /*__REPORT_JS__*/"
    samples.to_parquet(run / "samples.parquet", index=False)
    horizon.report([run], tmp_path / "r.html", params=PARAMS)
    text = (tmp_path / "r.html").read_text()
    assert text.count("</script>") == 2  # the data block's and the page script's
    assert page_data(tmp_path / "r.html")["runs"][0]["samples"][0]["question"] == samples.loc[0, "question"]


def test_a_40_sample_12_layer_36_window_report_stays_under_5_mb(tmp_path):
    images = write_images(tmp_path / "img", 40, side=336, noise=True)  # photographs compress worst
    run = write_run(tmp_path / "run", model="m", task="t", images=images, n_layers=12, grid=12, k=2,
                    metrics=("dlogp", "kl"), score=informative(12, 9))
    result = horizon.report([run], tmp_path / "r.html", params=PARAMS)
    data = page_data(tmp_path / "r.html")
    sample = data["runs"][0]["samples"][0]
    assert len(sample["windows"]) == 36 and len(sample["scores"]["dlogp"]) == 12 * 36
    assert len(data["runs"][0]["samples"]) == 40
    print(f"40 x 12 x 36 report: {result['size'] / 1e6:.2f} MB")
    assert result["size"] < 5e6


def test_cli_writes_the_report(runs, tmp_path, capsys):
    out = tmp_path / "sub" / "report.html"
    assert main(["report", str(runs["a-shapes"]), str(runs["a-codes"]), "--out", str(out), "--grid", str(runs["grid"]),
                 "--n-boot", "50", "--n-perm", "50", "--metric", "dlogp", "--max-samples", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "MB" in printed and "1 pruning grid" in printed
    data = page_data(out)
    assert data["metrics"] == ["dlogp"] and data["params"]["n_boot"] == 50
    assert [len(r["samples"]) for r in data["runs"]] == [3, 3]
    assert [r["n_samples_total"] for r in data["runs"]] == [8, 8]


def test_hybrid_runs_say_which_scores_were_measured(runs, tmp_path):
    run = write_run(tmp_path / "hybrid", model="m", task="t", estimator="hybrid",
                    images=sorted((runs["root"] / "img-shapes").glob("*.png"))[:2])
    scores = pd.read_parquet(run / "scores.parquet")
    scores["exact"] = (scores.layer == 2) | (scores.group == 0)  # one layer and one window measured exactly
    scores.to_parquet(run / "scores.parquet", index=False)
    data = report_data([run], params=PARAMS)
    assert data["runs"][0]["estimator"] == "hybrid" and data["summary"][0]["estimate"] == "hybrid"
    flags = data["runs"][0]["samples"][0]["exact"]["dlogp"]
    assert len(flags) == 6 * 9
    assert [i for i, f in enumerate(flags) if f == "1"] == sorted({2 * 9 + w for w in range(9)}
                                                                  | {layer * 9 for layer in range(6)})
