"""The demo end to end on the shipped zoo and tasks, reduced with --limit."""

import json

import pandas as pd

from horizon.cli import main
from horizon.demo import DATA, task_files, zoo_models


def test_demo_runs_end_to_end(tmp_path, capsys):
    out, runs = tmp_path / "figures", tmp_path / "runs"
    args = ["demo", "--out", str(out), "--runs", str(runs), "--limit", "3", "--n-boot", "50", "--n-perm", "50",
            "--prune-limit", "2"]
    assert main(args) == 0
    models, tasks = zoo_models(DATA), task_files(DATA)
    assert len(models) >= 3 and len(tasks) >= 2
    scans = [p for p in runs.iterdir() if not p.name.startswith("prune-")]
    assert len(scans) == len(models) * len(tasks) * 2  # keep (the paper's protocol) and remove
    protocols = {json.loads((p / "run.json").read_text())["protocol"] for p in scans}
    assert protocols == {"keep", "remove"}
    assert all(json.loads((p / "run.json").read_text())["group"] == 2 for p in scans)
    assert (runs / "prune-llava-l" / "grid.csv").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert {r["model"] for r in summary} == {m.name for m in models}
    assert {r["task"] for r in summary} == set(tasks)
    assert {r["metric"] for r in summary} == {"gain_logp", "gain_prob", "kl", "dlogp"}  # keep_prob is a raw level
    assert all(r["horizon_status"] in ("found", "persists", "no-information", "undetermined") for r in summary)
    printed = capsys.readouterr().out
    assert "is the ocr horizon deeper" in printed and "relative horizon deeper" in printed
    assert (out / "demo.txt").read_text().strip() in printed
    assert (out / "info_curve_gain_prob.png").exists() and (out / "horizons_kl.pdf").exists()
    assert "gain_prob (keep protocol, the paper's)" in printed and "numerical floor" in printed
    # the grid switches at the keep protocol's gain_prob horizon
    eval_json = json.loads(next((runs / "prune-llava-l").glob("*/eval.json")).read_text())
    assert eval_json["config"]["horizon_metric"] == "gain_prob"
    # the pruning grid: one row per schedule and task, read out in demo.txt, plotted per task
    grid = pd.read_csv(out / "prune_grid.csv")
    assert set(grid.task) == {"ocr", "colour"} and set(grid.kind) == {"none", "single", "hybrid"}
    assert (grid[grid.kind == "none"].avg_tokens == 36).all()
    assert "pruning (exact-match accuracy" in printed
    assert ("= horizon" in printed) == (grid.switch == "horizon").any()  # 3 samples may give no usable horizon
    assert (out / "prune_tradeoff_llava-l_ocr.png").exists() and (out / "prune_tradeoff_llava-l_colour.pdf").exists()
    # the interactive report: every scan run and the pruning grid, its size printed
    report = (out / "report.html").read_bytes()
    assert f"interactive report: {out / 'report.html'} ({len(report) / 1e6:.2f} MB" in printed
    assert len(report) < 5e6 and report.count(b'"name":"prune-llava-l"') == 1
    assert all(f'"name":"{p.name}"'.encode() in report for p in scans)
    assert main(args) == 0  # a rerun resumes the finished runs
    assert (out / "report.html").read_bytes() == report  # and writes the same report, byte for byte
