"""How well an estimate of the scores agrees with the exact scores (issue 13).

Pure functions of score frames (``sample_id, layer, group, metric, value``);
no model needed.

* ``agreement``: per (sample, layer), over the groups both frames scored:
  Spearman and Pearson correlation, the overlap of the top groups and the
  largest absolute error.
* ``agreement_summary``: per layer and over all layers, the median Spearman,
  the median Pearson and the mean top overlap, with bootstrap CIs that
  resample samples (a sample's layers stay together: they are not
  independent of each other).
* ``horizon_agreement``: the information horizon of each run, as
  ``horizon analyze`` finds it, and their difference in layers.

The goals of issue 13: a median Spearman of at least ``SPEARMAN_GOAL`` and a
horizon within ``HORIZON_TOLERANCE`` layers of the exact one.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import HorizonError
from ..records import FOUND, UNDETERMINED, Horizon
from .horizon import StatsParams, _interval, _weights, summarize
from .per_sample import KEYS, SCORE_REQUIRED, load_runs, measured_model, stream_sample_stats

SPEARMAN_GOAL = 0.9
HORIZON_TOLERANCE = 1.0  # layers
PAIR = ["sample_id", "layer"]
PAIR_COLUMNS = ["metric", "sample_id", "layer", "n_groups", "spearman", "pearson", "top_overlap", "top_k",
                "max_abs_error", "note"]
# why a pair's correlations are NaN
FEW_GROUPS = "fewer than 3 groups"
EXACT_CONSTANT = "exact constant"
ESTIMATE_CONSTANT = "estimate constant"


# ---------------------------------------------------------------- per (sample, layer)


def _scores_of(frame: pd.DataFrame, metric: str, side: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise HorizonError(f"{side} scores: expected a DataFrame, got {type(frame).__name__}")
    missing = [c for c in SCORE_REQUIRED if c not in frame.columns]
    if missing:
        raise HorizonError(f"{side} scores: missing required column(s) {', '.join(missing)}")
    rows = frame[frame.metric.astype(str) == metric]
    if rows.empty:
        present = sorted(frame.metric.astype(str).unique())
        raise HorizonError(f"{side} scores have no metric {metric!r} (they have: {', '.join(present) or 'none'})")
    return pd.DataFrame({"sample_id": rows.sample_id.astype(str).to_numpy(),
                         "layer": rows.layer.astype(np.int64).to_numpy(),
                         "group": rows.group.astype(np.int64).to_numpy(),
                         "value": rows.value.astype(np.float64).to_numpy()})


def _segment_sum(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(x, starts) if len(x) else np.zeros(0)


def _correlation(x: np.ndarray, y: np.ndarray, seg: np.ndarray, starts: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Pearson correlation of x and y within each segment (rows sorted by segment); NaN where either is constant."""
    mx = _segment_sum(x, starts) / n
    my = _segment_sum(y, starts) / n
    dx, dy = x - mx[seg], y - my[seg]
    sxy, sxx, syy = (_segment_sum(a, starts) for a in (dx * dy, dx * dx, dy * dy))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.sqrt(sxx * syy)
    return np.clip(np.where((sxx > 0) & (syy > 0), r, np.nan), -1.0, 1.0)


def _top(frame: pd.DataFrame, column: str, k: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Whether each row is among its segment's top k by ``column``: largest value first, ties to the lower group id."""
    order = np.lexsort((frame.group.to_numpy(), -frame[column].to_numpy(), seg))
    position = np.empty(len(frame), dtype=np.int64)
    sorted_seg = seg[order]
    first = np.r_[0, np.flatnonzero(sorted_seg[1:] != sorted_seg[:-1]) + 1]
    run_start = np.repeat(first, np.diff(np.r_[first, len(order)]))
    position[order] = np.arange(len(order)) - run_start
    return position < k[seg]


def agreement(exact: pd.DataFrame, estimate: pd.DataFrame, metric: str, top_share: float = 0.10,
              floor: float = 0.0, estimate_floor: float = 0.0) -> pd.DataFrame:
    """Per (sample_id, layer): how well ``estimate`` ranks and matches the groups ``exact`` scored.

    Both are score frames (sample_id, layer, group, metric, value); rows of
    ``metric`` are inner-joined on (sample_id, layer, group), rows with a NaN
    on either side left out. Exact scores within +-``floor`` (the exact run's
    numerical floor: rounding alone moves a score that far) are zero first,
    as the analysis reads them; estimated ones within +-``estimate_floor``
    (the estimate run's floor, 0 where it measured none). Each side keeps its
    own scale: an estimate off by a constant factor still ranks the groups.

    Columns: ``metric``, ``sample_id``, ``layer``, ``n_groups`` (groups in
    common), ``spearman`` and ``pearson`` (correlation over those groups;
    Spearman uses average ranks for ties), ``top_overlap`` = |top-k(exact) ∩
    top-k(estimate)| / k with k = ceil(``top_share`` x n_groups) (``top_k``;
    at least 1; groups ranked by value, largest first, ties to the lower group
    id, so the overlap is always defined), ``max_abs_error`` and ``note``. The
    correlations are NaN when there are fewer than 3 groups or either side is
    constant over the groups; ``note`` then says which (``fewer than 3
    groups``, ``exact constant``, ``estimate constant``), else it is empty.
    """
    if not 0 < top_share <= 1:
        raise HorizonError(f"top share must be in (0, 1], got {top_share}")
    x = _scores_of(exact, metric, "exact")
    y = _scores_of(estimate, metric, "estimate")
    for side, frame in (("exact", x), ("estimate", y)):
        if frame.duplicated(PAIR + ["group"]).any():
            raise HorizonError(f"{side} scores: (sample_id, layer, group) repeats for metric {metric!r}")
    both = x.merge(y, on=PAIR + ["group"], suffixes=("_x", "_y"))
    both = both[both.value_x.notna() & both.value_y.notna()]
    if both.empty:
        raise HorizonError(f"exact and estimate scores of {metric!r} share no (sample_id, layer, group)")
    for column, level in (("value_x", floor), ("value_y", estimate_floor)):
        if level > 0:
            both[column] = both[column].where(both[column].abs() > level, 0.0)
    both = both.sort_values(PAIR + ["group"], kind="stable", ignore_index=True)

    keys = both[PAIR]
    seg = keys.ne(keys.shift()).any(axis=1).cumsum().to_numpy() - 1
    starts = np.r_[0, np.flatnonzero(np.diff(seg)) + 1]
    n = np.diff(np.r_[starts, len(both)])
    # average ranks within each (sample, layer): Spearman is Pearson of them
    rank_x = both.groupby(seg).value_x.rank(method="average").to_numpy()
    rank_y = both.groupby(seg).value_y.rank(method="average").to_numpy()
    vx, vy = both.value_x.to_numpy(), both.value_y.to_numpy()
    spearman = _correlation(rank_x, rank_y, seg, starts, n)
    pearson = _correlation(vx, vy, seg, starts, n)
    # ceil of a product like 0.1 x 30 must not round up past 3 for the last bit of the product
    k = np.maximum(np.ceil(np.round(top_share * n, 9)), 1).astype(np.int64)
    hit = _top(both, "value_x", k, seg) & _top(both, "value_y", k, seg)
    overlap = _segment_sum(hit.astype(np.float64), starts) / k
    error = np.maximum.reduceat(np.abs(vx - vy), starts)

    constant_x = np.maximum.reduceat(vx, starts) == np.minimum.reduceat(vx, starts)
    constant_y = np.maximum.reduceat(vy, starts) == np.minimum.reduceat(vy, starts)
    note = np.where(n < 3, FEW_GROUPS,
                    np.where(constant_x, EXACT_CONSTANT, np.where(constant_y, ESTIMATE_CONSTANT, "")))
    undefined = note != ""
    first = both.iloc[starts]
    return pd.DataFrame({
        "metric": metric, "sample_id": first.sample_id.to_numpy(), "layer": first.layer.to_numpy(),
        "n_groups": n, "spearman": np.where(undefined, np.nan, spearman),
        "pearson": np.where(undefined, np.nan, pearson), "top_overlap": overlap, "top_k": k,
        "max_abs_error": error, "note": note,
    }, columns=PAIR_COLUMNS)


# ---------------------------------------------------------------- summaries with bootstrap CIs


def _weighted_median(values: np.ndarray, counts: np.ndarray, index: np.ndarray, cells: int = 1 << 22) -> np.ndarray:
    """Per resample (a row of ``counts``, (B, n_samples)): the median of ``values`` (m,), each repeated as
    often as its sample (``index``, (m,)) was drawn: np.median of that list (the mean of the two middle
    values for an even length); NaN where none was drawn. Resamples go ``cells`` / m at a time, so a
    study's thousands of pairs stay within a few arrays of that size."""
    order = np.argsort(values, kind="stable")
    v, where = values[order], index[order]
    out = np.full(len(counts), np.nan)
    if not len(v):
        return out
    step = max(1, cells // len(v))
    for i in range(0, len(counts), step):
        cum = np.cumsum(counts[i:i + step][:, where], axis=1)
        total = cum[:, -1]
        # 1-based positions of the middle values; the value at position p is the first whose cumulative count reaches p
        low, high = (total + 1) // 2, total // 2 + 1
        at = (lambda p: v[np.minimum((cum < p[:, None]).sum(axis=1), len(v) - 1)])
        out[i:i + step] = np.where(total > 0, (at(low) + at(high)) / 2, np.nan)
    return out


def _weighted_mean(values: np.ndarray, counts: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Per resample: the mean of ``values``, each weighted by how often its sample was drawn."""
    per_sample = np.bincount(index, weights=values, minlength=counts.shape[1])
    n_per_sample = np.bincount(index, minlength=counts.shape[1]).astype(np.float64)
    total = counts @ n_per_sample
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (counts @ per_sample) / np.where(total > 0, total, 1), np.nan)


SUMMARY_STATS = (("spearman", "median"), ("pearson", "median"), ("top_overlap", "mean"))


def agreement_summary(per_pair: pd.DataFrame, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Per metric, per layer and over all layers (``layer`` <NA>): the median Spearman, the median Pearson
    and the mean top overlap of ``agreement``'s pairs, each with a percentile bootstrap CI (``_lo``,
    ``_hi``) at level ``ci`` that resamples samples, ``n_boot`` times, seeded by ``seed``.

    Pairs whose correlation is NaN (see ``agreement``) are left out of its
    median; ``n_defined`` counts the pairs with a Spearman. Also ``n_samples``,
    ``n_pairs`` and the largest ``max_abs_error``. With one sample the CIs are
    that sample's value; with none, NaN.
    """
    missing = [c for c in ("sample_id", "layer", "spearman", "pearson", "top_overlap") if c not in per_pair.columns]
    if missing:
        raise HorizonError(f"agreement pairs: missing required column(s) {', '.join(missing)}")
    if n_boot < 1:
        raise HorizonError(f"n_boot must be positive, got {n_boot}")
    if not 0 < ci < 1:
        raise HorizonError(f"ci must be between 0 and 1, got {ci}")
    frame = per_pair if "metric" in per_pair.columns else per_pair.assign(metric="")
    rows = []
    for metric, part in frame.groupby("metric", sort=True):
        samples, index = np.unique(part.sample_id.astype(str).to_numpy(), return_inverse=True)
        # one draw of sample counts per resample, shared by every layer, so the overall row and the
        # per-layer rows see the same resamples
        rng = np.random.default_rng(seed)
        counts = _weights(rng, len(samples), n_boot)
        scopes = [(pd.NA, np.ones(len(part), dtype=bool))]
        scopes += [(int(layer), (part.layer == layer).to_numpy()) for layer in sorted(part.layer.unique())]
        for layer, mask in scopes:
            row: dict[str, Any] = {"metric": metric, "layer": layer, "n_samples": int(len(np.unique(index[mask]))),
                                   "n_pairs": int(mask.sum()),
                                   "n_defined": int(part.spearman[mask].notna().sum())}
            for column, how in SUMMARY_STATS:
                values = part[column].to_numpy(np.float64)
                ok = mask & ~np.isnan(values)
                v = values[ok]
                if how == "median":
                    point = float(np.median(v)) if v.size else math.nan
                    boot = _weighted_median(v, counts, index[ok])
                else:
                    point = float(v.mean()) if v.size else math.nan
                    boot = _weighted_mean(v, counts, index[ok])
                row[column] = point
                row[f"{column}_lo"], row[f"{column}_hi"] = _interval(boot, ci)
            if "max_abs_error" in part.columns:
                row["max_abs_error"] = float(part.max_abs_error[mask].max()) if mask.any() else math.nan
            row.update(ci=ci, n_boot=n_boot, seed=seed)
            rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out["layer"] = out["layer"].astype("Int64")
    return out


# ---------------------------------------------------------------- horizons


def _runs(paths: str | Path | Sequence[str | Path]) -> list[str | Path]:
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def _horizons(paths: str | Path | Sequence[str | Path], metric: str | None, params: StatsParams) -> pd.DataFrame:
    runs = load_runs(_runs(paths))
    with warnings.catch_warnings():
        # an estimate with no positive score at any layer has no uniformity; summarize already reads that as NaN
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        return summarize(stream_sample_stats(runs, metric, params.top_share), params)


def horizon_agreement(exact_runs: str | Path | Sequence[str | Path],
                      estimate_runs: str | Path | Sequence[str | Path], *, metric: str | None = None,
                      params: StatsParams | None = None, tolerance: float = HORIZON_TOLERANCE,
                      summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """The information horizon of the exact and of the estimated scores, and how far apart they are.

    Each side's horizon is the one ``horizon analyze`` finds (per model, task
    and metric; ``params`` as there) from its run directories. Columns per
    (model, task, metric): ``n_samples_exact``, ``status_exact``,
    ``horizon_exact`` and its CI ``horizon_exact_lo``, ``horizon_exact_hi``
    (NaN unless found), the same for ``_estimate``;
    ``delta`` = horizon(estimate) - horizon(exact) in layers (NaN unless both
    are found) and ``horizon_goal``: True when both are found and
    \\|delta\\| <= ``tolerance``, or neither is found and both say the same
    (both persist, or both have no information; not both ``undetermined``,
    which one sample gives). With ``summary`` (``agreement_summary``'s table)
    also the overall median Spearman of the metric and ``spearman_goal``
    (at least ``SPEARMAN_GOAL``).
    """
    params = params or StatsParams()
    sides = {}
    for side, paths in (("exact", exact_runs), ("estimate", estimate_runs)):
        table = _horizons(paths, metric, params)
        if table.empty:
            raise HorizonError(f"{side} runs: no horizon to compare (no scores of metric {metric!r})"
                               if metric else f"{side} runs: no horizon to compare (no scores)")
        records = []
        for r in table.to_dict("records"):
            h = Horizon.from_record(r)
            # the estimate's model is named as an estimate (analyze keeps it apart): pair it with the measured one
            r = {**r, "model": measured_model(str(r["model"]))} if side == "estimate" else r
            records.append({**{k: r[k] for k in KEYS}, f"n_samples_{side}": int(r["n_samples"]),
                            f"status_{side}": h.status, f"horizon_{side}": h.layer if h.found else math.nan,
                            f"horizon_{side}_lo": h.lo if h.found and h.lo is not None else math.nan,
                            f"horizon_{side}_hi": h.hi if h.found and h.hi is not None else math.nan})
        sides[side] = pd.DataFrame(records)
    out = sides["exact"].merge(sides["estimate"], on=KEYS)
    if out.empty:
        raise HorizonError("exact and estimate runs share no (model, task, metric) to compare horizons of")
    out["delta"] = out.horizon_estimate - out.horizon_exact
    both = (out.status_exact == FOUND) & (out.status_estimate == FOUND)
    # both persist, or both have no information, is agreement; both undetermined (one sample) is no evidence
    same = ~out.status_exact.isin([FOUND, UNDETERMINED]) & (out.status_exact == out.status_estimate)
    out["horizon_goal"] = (both & (out.delta.abs() <= tolerance)) | same
    out["tolerance"] = tolerance
    if summary is not None:
        overall = summary[summary.layer.isna()][["metric", "spearman"]]
        out = out.merge(overall, on="metric", how="left")
        out["spearman_goal"] = out.spearman >= SPEARMAN_GOAL  # NaN (no defined pair) is not a goal met
    return out
