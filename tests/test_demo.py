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
    assert len(scans) == len(models) * len(tasks)
    assert (runs / "prune-llava-l" / "grid.csv").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert {r["model"] for r in summary} == {m.name for m in models}
    assert {r["task"] for r in summary} == set(tasks)
    printed = capsys.readouterr().out
    assert "is the ocr horizon deeper" in printed and "relative horizon deeper" in printed
    assert (out / "demo.txt").read_text().strip() in printed
    assert (out / "info_curve_kl.png").exists() and (out / "horizons_kl.pdf").exists()
    # the pruning grid: one row per schedule and task, read out in demo.txt, plotted per task
    grid = pd.read_csv(out / "prune_grid.csv")
    assert set(grid.task) == {"ocr", "colour"} and set(grid.kind) == {"none", "single", "hybrid"}
    assert (grid[grid.kind == "none"].avg_tokens == 36).all()
    assert "pruning (exact-match accuracy" in printed
    assert ("= horizon" in printed) == (grid.switch == "horizon").any()  # 3 samples may give no usable horizon
    assert (out / "prune_tradeoff_llava-l_ocr.png").exists() and (out / "prune_tradeoff_llava-l_colour.pdf").exists()
    assert main(args) == 0  # a rerun resumes the finished runs
