"""`analyze`: run directories in, summary tables and figures out."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .records import Horizon
from .stats import StatsParams, analyze_frames, load_runs


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def summary_records(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """summary.json rows: CIs as [lo, hi] pairs, NaN as null."""
    records = []
    for row in summary.to_dict("records"):
        out = {}
        for key, value in row.items():
            if key.endswith("_lo") or key.endswith("_hi"):
                continue
            out[key] = _clean(value)
            if f"{key}_lo" in row:
                lo, hi = _clean(row[f"{key}_lo"]), _clean(row[f"{key}_hi"])
                out[f"{key}_ci"] = None if lo is None and hi is None else [lo, hi]
        records.append(out)
    return records


def format_table(summary: pd.DataFrame) -> str:
    """A short human-readable table of horizons and onsets.

    A horizon reads ``8 [6, 10]`` (layer [95% CI]), ``persists`` (information
    reaches the last layer), ``no information`` (never above the numerical
    floor) or ``undetermined`` (fewer than two samples).
    """
    def span(v, lo, hi, fmt="{:.0f}"):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "none"
        ci = "" if lo is None or math.isnan(lo) else f" [{fmt.format(lo)}, {fmt.format(hi)}]"
        return fmt.format(v) + ci

    rows = [("model", "task", "metric", "n", "horizon [CI]", "h/L", "uniform from [CI]")]
    for r in summary.to_dict("records"):
        h = Horizon.from_record(r)
        rows.append((str(r["model"]), str(r["task"]), str(r["metric"]), str(r["n_samples"]), h.describe(),
                     span(r["relative_horizon"], r["relative_horizon_lo"], r["relative_horizon_hi"], "{:.2f}")
                     if h.found else "-",
                     span(r["uniformity_onset"], r["uniformity_onset_lo"], r["uniformity_onset_hi"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def analyze(runs: Sequence[str | Path], out: str | Path, *, metric: str | None = None,
            params: StatsParams | None = None, tables: bool = True, figures: bool = True,
            figures_dir: str | Path | None = None) -> dict[str, Any]:
    """Analyse run directories; write summary/curves/comparisons (``tables``) to ``out`` and
    figures to ``figures_dir`` (default ``out/figures``)."""
    from .plots import make_figures
    from .options import check_out_folder

    out = Path(out)
    check_out_folder(out)  # a file or an unwritable place is named before the runs are read
    loaded = load_runs(runs)
    result = analyze_frames(loaded, metric=metric, params=params)
    out.mkdir(parents=True, exist_ok=True)  # only now: a run or option refused leaves no --out behind
    if tables:
        records = summary_records(result["summary"])
        (out / "summary.json").write_text(json.dumps(records, indent=2) + "\n")
        result["summary"].to_csv(out / "summary.csv", index=False)
        result["curves"].to_csv(out / "curves.csv", index=False)
        result["comparisons"].to_csv(out / "comparisons.csv", index=False)
        (out / "comparisons.json").write_text(
            json.dumps([{k: _clean(v) for k, v in r.items()} for r in result["comparisons"].to_dict("records")],
                       indent=2) + "\n")
        result["per_sample"].to_csv(out / "sample_layer_stats.csv", index=False)
        (out / "params.json").write_text(json.dumps(result["params"], indent=2) + "\n")
    paths = []
    if figures:
        for m in sorted(result["summary"].metric.unique()):
            paths += make_figures(result["curves"], result["summary"], Path(figures_dir or out / "figures"), m,
                                  runs=loaded)
    result["figures"] = paths
    return result
