"""`validate_estimator`: scan a few samples exactly and with an estimator, and say how well they agree.

The exact scan ablates every (layer, group); an estimator (issue 13:
``gradient``, ``hybrid``) approximates those scores for less compute. This
verb scans the first ``limit`` samples both ways into ``out/exact`` and
``out/<estimator>`` (resumable), then reports, per metric:

* per (sample, layer), Spearman and Pearson correlation of the estimate with
  the exact scores over the groups, the top-10% overlap and the largest
  error (``agreement.csv``);
* their median (correlations) or mean (overlap) per layer and over all
  layers, with bootstrap CIs over samples (``agreement_summary.csv``);
* the horizon ``horizon analyze`` finds from each run and their difference;
* the goals: median Spearman >= 0.9, and a horizon within 1 layer of the
  exact one (the same layer for ``hybrid``, which rescans near the horizon);
* the scans' seconds per sample and their ratio, the speed-up, and for
  ``hybrid`` the share of its scores measured exactly (``validation.json``
  holds all of it).

``estimator="exact"`` scans a second time exactly, into ``out/exact-rescan``:
it must agree perfectly, which checks the scan's determinism and this
pipeline.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from .errors import HorizonError
from .io.runs import count_rows, read_config, read_scores, table_files
from .models import VisionLM, load
from .analysis import summary_records
from .scan import ScanConfig, scan
from .scores import RAW_METRICS
from .stats import StatsParams, agreement, agreement_summary, horizon_agreement, load_runs
from .stats.agreement import HORIZON_TOLERANCE, SPEARMAN_GOAL

TIMINGS = "timings.json"


def estimate_dir_name(estimator: str) -> str:
    """Where the estimated run goes under ``out``: the estimator's name (``exact-rescan`` for a second exact scan)."""
    return "exact-rescan" if estimator == "exact" else estimator


def horizon_tolerance(estimator: str) -> float:
    """How far (layers) the estimate's horizon may be from the exact one: none for hybrid, which measures the
    layers around its estimated horizon exactly, and for a second exact scan; 1 layer for gradient."""
    return HORIZON_TOLERANCE if estimator == "gradient" else 0.0


def scan_config(config: ScanConfig | None, limit: int, metric: str | None = None,
                options: Mapping[str, Any] | None = None, estimator: str = "exact") -> ScanConfig:
    """The scan configuration both scans share (a copy: ``config`` with ``options`` and ``limit``), checked
    before any model loads, for the exact scan and for ``estimator`` (what ``horizon scan --estimator``
    accepts). With ``metric`` and no metrics of its own it scans ``metric`` only."""
    options = {k: tuple(v) if k == "metrics" and v else v for k, v in (options or {}).items()}
    try:
        cfg = replace(config, **options) if config is not None else ScanConfig(**options)
    except TypeError as exc:  # an unknown keyword
        raise HorizonError(f"validate-estimator: {exc}") from None
    if limit is None or limit < 1:
        raise HorizonError(f"--limit must be a positive number of samples, got {limit}")
    if cfg.shard is not None:
        raise HorizonError("validate-estimator scans one subset both ways; it takes no --shard")
    cfg = replace(cfg, limit=limit, estimator="exact")
    if metric is not None and not cfg.metrics:
        cfg.metrics = (metric,)  # scan what is validated, not the protocol's defaults
    cfg.validate()
    replace(cfg, estimator=estimator).validate()  # an estimator the scan lacks or refuses fails here
    if metric is not None and metric not in cfg.metrics:
        raise HorizonError(f"--metric {metric!r} is not among the scanned metrics ({', '.join(cfg.metrics)})")
    return cfg


def _read_timings(out: Path) -> dict[str, dict[str, float]]:
    path = out / TIMINGS
    return json.loads(path.read_text()) if path.exists() else {}


def _timed_scan(vlm: VisionLM, data: Any, run: Path, cfg: ScanConfig, progress: bool,
                timings: dict[str, dict[str, float]]) -> None:
    """Scan (resuming) and add the seconds and the newly scanned samples to ``timings[run.name]``: a resume
    that finds every sample done adds nothing, so the seconds per sample stay those of real scanning."""
    before = count_rows(run, "samples") if table_files(run, "samples") else 0
    start = time.perf_counter()
    scan(vlm, data, out=run, resume=True, config=cfg, progress=progress)
    seconds = time.perf_counter() - start
    new = count_rows(run, "samples") - before
    if new > 0:
        entry = timings.setdefault(run.name, {"seconds": 0.0, "samples": 0})
        entry["seconds"] += seconds
        entry["samples"] += new


def _per_sample(timing: Mapping[str, float] | None) -> float:
    if not timing or not timing.get("samples"):
        return math.nan
    return float(timing["seconds"]) / float(timing["samples"])


def _metrics(exact: pd.DataFrame, estimate: pd.DataFrame, metric: str | None) -> list[str]:
    """The metrics to compare: ``metric``, else every metric both runs scored except raw levels (keep_prob)."""
    have = set(exact.metric.astype(str)) & set(estimate.metric.astype(str))
    if metric is not None:
        if metric not in have:
            raise HorizonError(f"metric {metric!r} is not in both runs (common: {', '.join(sorted(have)) or 'none'})")
        return [metric]
    metrics = sorted(have - RAW_METRICS)
    if not metrics:
        raise HorizonError("the exact and estimated runs share no metric with a horizon to compare")
    return metrics


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    frame = frame.astype(object).where(frame.notna(), None)  # <NA> layers (overall rows) and NaN become null
    return summary_records(frame)


def validate_estimator(model: VisionLM | str | Path, data: str | Path | Iterable[Any], out: str | Path, *,
                       estimator: str = "gradient", limit: int = 8, metric: str | None = None,
                       config: ScanConfig | None = None, progress: bool = True, params: StatsParams | None = None,
                       **scan_options: Any) -> dict[str, Any]:
    """Scan the first ``limit`` samples exactly and with ``estimator``; compare the scores and the horizons.

    ``model`` is a loaded :class:`VisionLM` or a hub id / directory (loaded
    once for both scans); ``data`` as for :func:`horizon.scan`; scan options
    as ``config`` and/or the fields of :class:`ScanConfig`. Both scans resume
    (rerunning scans nothing already scanned; the tables cover every sample
    both runs hold, a larger earlier ``limit``'s too). ``metric`` compares one metric;
    by default every metric both runs have except raw ``keep_prob``.
    ``params`` are the analysis' (the horizon and the bootstrap CIs).

    Writes ``out/agreement.csv`` (per sample, layer and metric),
    ``out/agreement_summary.csv`` (per metric and layer; an empty layer is all
    layers) and ``out/validation.json``, and returns ``pairs``, ``summary``,
    ``horizons`` (frames), ``validation`` (what validation.json holds) and
    ``runs`` (the two run directories).
    """
    params = params or StatsParams()
    cfg = scan_config(config, limit, metric, scan_options, estimator)
    if isinstance(data, (str, Path)):
        if not Path(data).is_file():
            raise HorizonError(f"dataset file not found: {data}")
    else:
        data = list(data)  # scanned twice: a generator would be empty the second time
    out = Path(out)
    runs = {"exact": out / "exact", "estimate": out / estimate_dir_name(estimator)}
    vlm = model if isinstance(model, VisionLM) else load(model)

    out.mkdir(parents=True, exist_ok=True)
    timings = _read_timings(out)
    for run, which in ((runs["exact"], "exact"), (runs["estimate"], estimator)):
        _timed_scan(vlm, data, run, replace(cfg, estimator=which), progress, timings)
        (out / TIMINGS).write_text(json.dumps(timings, indent=2) + "\n")
    # a scan that ignored the estimator would make exact scores look like a perfect estimate
    recorded = read_config(runs["estimate"]).get("estimator", "exact")
    if recorded != estimator:
        raise HorizonError(f"{runs['estimate']}: run.json records estimator {recorded!r}, not {estimator!r}, "
                           "so its scores need not be that estimate; remove the run or choose another --out")

    exact_scores, estimate_scores = read_scores(runs["exact"]), read_scores(runs["estimate"])
    if exact_scores.empty or estimate_scores.empty:
        empty = runs["exact"] if exact_scores.empty else runs["estimate"]
        raise HorizonError(f"{empty}: no scores (every sample failed?); see its samples table")
    metrics = _metrics(exact_scores, estimate_scores, metric)
    floor, estimate_floor = (run["floor"] for run in load_runs([runs["exact"], runs["estimate"]]))
    pairs = pd.concat([agreement(exact_scores, estimate_scores, m, params.top_share, floor.get(m, 0.0),
                                 estimate_floor.get(m, 0.0)) for m in metrics], ignore_index=True)
    summary = agreement_summary(pairs, n_boot=params.n_boot, seed=params.seed, ci=params.ci)
    tolerance = horizon_tolerance(estimator)
    horizons = horizon_agreement(runs["exact"], runs["estimate"], metric=metric, params=params,
                                 tolerance=tolerance, summary=summary)
    horizons = horizons[horizons.metric.isin(metrics)].reset_index(drop=True)

    per_sample = {"exact": _per_sample(timings.get(runs["exact"].name)),
                  "estimate": _per_sample(timings.get(runs["estimate"].name))}
    speedup = per_sample["exact"] / per_sample["estimate"] if per_sample["estimate"] > 0 else math.nan
    overall = summary[summary.layer.isna()].set_index("metric")
    goals = {m: {"spearman": bool(overall.spearman.get(m, math.nan) >= SPEARMAN_GOAL),
                 "horizon": bool(horizons[horizons.metric == m].horizon_goal.all())} for m in metrics}
    validation = {
        "estimator": estimator, "limit": limit, "metrics": metrics,
        "runs": {k: str(v) for k, v in runs.items()},
        "seconds": {k: timings.get(v.name, {}).get("seconds") for k, v in runs.items()},
        "seconds_per_sample": {k: None if math.isnan(v) else v for k, v in per_sample.items()},
        "speedup": None if math.isnan(speedup) else speedup,
        # hybrid: how much of its result is measured rather than estimated (its scores' exact flag)
        "exact_share": float(estimate_scores["exact"].mean())
        if estimator == "hybrid" and "exact" in estimate_scores.columns else None,
        "goals": goals, "spearman_goal": SPEARMAN_GOAL, "horizon_tolerance": tolerance,
        "summary": _records(summary), "horizons": _records(horizons),
        "params": {"top_share": params.top_share, "ci": params.ci, "n_boot": params.n_boot, "seed": params.seed,
                   "threshold": params.threshold, "alpha": params.alpha, "vanishing_test": params.vanishing_test},
    }
    pairs.to_csv(out / "agreement.csv", index=False)
    summary.to_csv(out / "agreement_summary.csv", index=False)
    (out / "validation.json").write_text(json.dumps(validation, indent=2) + "\n")
    return {"pairs": pairs, "summary": summary, "horizons": horizons, "validation": validation, "runs": runs}


def format_validation(result: Mapping[str, Any]) -> str:
    """The table ``horizon validate-estimator`` prints: per metric (and task, for the horizon) the median
    Spearman, median Pearson and top overlap with CIs, both horizons, their difference, the goals; then the
    speed-up."""
    def ci(row: Mapping[str, Any], column: str) -> str:
        value, lo, hi = row[column], row[f"{column}_lo"], row[f"{column}_hi"]
        if pd.isna(value):
            return "n/a"
        return f"{value:.2f}" + ("" if pd.isna(lo) else f" [{lo:.2f}, {hi:.2f}]")

    def horizon(row: Mapping[str, Any], side: str) -> str:
        status = row[f"status_{side}"]
        if status != "found":
            return {"persists": "persists", "no-information": "no info"}.get(status, status)
        lo, hi = row[f"horizon_{side}_lo"], row[f"horizon_{side}_hi"]
        return f"{row[f'horizon_{side}']:.0f}" + ("" if lo != lo else f" [{lo:.0f}, {hi:.0f}]")

    validation = result["validation"]
    share = f"top {validation['params']['top_share']:.0%}"
    tolerance = validation["horizon_tolerance"]
    rows = [("metric", "task", "pairs", "Spearman [CI]", "Pearson [CI]", f"{share} [CI]", "horizon exact",
             "horizon est.", "delta", f"rho>={SPEARMAN_GOAL:g}", f"|delta|<={tolerance:g}")]
    overall = result["summary"][result["summary"].layer.isna()].set_index("metric")
    for h in result["horizons"].sort_values(["metric", "task"], kind="stable").to_dict("records"):
        s = overall.loc[h["metric"]]
        delta = "-" if h["delta"] != h["delta"] else f"{h['delta']:+.0f}"
        rows.append((h["metric"], str(h["task"]), f"{int(s.n_defined)}/{int(s.n_pairs)}", ci(s, "spearman"),
                     ci(s, "pearson"), ci(s, "top_overlap"), horizon(h, "exact"), horizon(h, "estimate"), delta,
                     "yes" if h["spearman_goal"] else "no", "yes" if h["horizon_goal"] else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    seconds = validation["seconds_per_sample"]
    if validation.get("exact_share") is not None:
        lines.append(f"measured exactly: {validation['exact_share']:.1%} of the {validation['estimator']} scores")
    if validation["speedup"] is None:
        lines.append("speed-up: unknown (the runs' samples were scanned before validate-estimator timed them)")
    else:
        lines.append(f"speed-up: {validation['speedup']:.2f}x (exact {seconds['exact']:.3g} s per sample, "
                     f"{estimate_dir_name(validation['estimator'])} {seconds['estimate']:.3g} s)")
    lines.append(f"pairs: (sample, layer) pairs with a correlation / all; correlations and overlap over all "
                 f"samples, horizons per task; {validation['params']['ci']:.0%} CIs: bootstrap over samples")
    return "\n".join(lines)
