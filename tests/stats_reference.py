"""Today's in-memory per-sample statistics, frozen as the reference the streamed ones must equal.

A verbatim copy of ``tidy_scores`` and ``sample_layer_stats`` as they were
before the analysis streamed (horizon/stats.py at the run-store commit), fed
with whole score frames. Not used by horizon itself.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from horizon.errors import HorizonError
from horizon.scores import RAW_METRICS

KEYS = ["model", "task", "metric"]


def tidy_scores(runs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Scores of ok samples from all runs, with model, task, n_layers and floor columns.

    Raw levels (``keep_prob``) are left out: zero is not "no information" for
    them; their information reading is ``gain_prob``.
    """
    frames = []
    for i, run in enumerate(runs):
        samples = run["samples"]
        if "status" in samples.columns:
            samples = samples[samples.status.fillna("ok") == "ok"]
        task = samples.set_index("sample_id").task.astype(str)
        scores = run["scores"]
        scores = scores[scores.sample_id.isin(task.index) & ~scores.metric.isin(RAW_METRICS)]
        floor = run.get("floor") or {}
        frames.append(pd.DataFrame({
            "model": run["model"], "task": scores.sample_id.map(task).to_numpy(),
            "sample_id": f"{i}:" + scores.sample_id.astype(str), "layer": scores.layer.astype(int).to_numpy(),
            "group": scores.group.astype(int).to_numpy(), "metric": scores.metric.astype(str).to_numpy(),
            "value": scores.value.astype(np.float64).to_numpy(), "n_layers": run["n_layers"],
            "floor": scores.metric.map(lambda m: floor.get(str(m), 0.0)).astype(np.float64).to_numpy(),
        }))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty:
        raise HorizonError("no scores of successful samples in the given runs")
    return frame


# ---------------------------------------------------------------- per sample


def sample_layer_stats(scores: pd.DataFrame, top_share: float = 0.10) -> pd.DataFrame:
    """Per (model, task, metric, sample, layer): mean_info, uniformity, entropy, top_share.

    ``scores`` needs model, task, metric, sample_id, layer, value (one row per
    group). With a ``floor`` column, values within +-floor are zero first.
    Uniformity is 1 - Gini of max(value, 0) over groups (1 = perfectly
    uniform); entropy is that distribution's entropy / log(#groups). Both are
    NaN when no group carries positive information.
    """
    keys = [*KEYS, "sample_id", "layer"]
    extra = [c for c in ("n_layers", "floor") if c in scores.columns]
    frame = scores[keys + extra + ["value"]].copy()
    if "floor" in frame.columns:
        frame["value"] = frame.value.where(frame.value.abs() > frame["floor"], 0.0)
    frame["pos"] = frame.value.clip(lower=0.0)
    frame = frame.sort_values(keys + ["pos"], kind="mergesort")
    grouped = frame.groupby(keys, sort=False)
    frame["rank"] = grouped.cumcount() + 1  # ascending rank within the sample-layer
    frame["n"] = grouped.pos.transform("size")
    total = grouped.pos.transform("sum")
    frame["gini_term"] = (2 * frame["rank"] - frame["n"] - 1) * frame.pos
    p = np.where(total > 0, frame.pos / total.where(total > 0, 1.0), 0.0)
    frame["plogp"] = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    top_k = np.ceil(top_share * frame["n"]).clip(lower=1)
    frame["top"] = np.where(frame["n"] - frame["rank"] < top_k, frame.pos, 0.0)
    agg = frame.groupby(keys, sort=True).agg(
        mean_info=("value", "mean"), total=("pos", "sum"), gini=("gini_term", "sum"), plogp=("plogp", "sum"),
        top=("top", "sum"), n=("n", "first"), **{c: (c, "first") for c in extra},
    ).reset_index()
    has_info = agg.total > 0
    agg["uniformity"] = np.where(has_info, 1.0 - agg.gini / (agg.n * agg.total.where(has_info, 1.0)), np.nan)
    log_n = np.log(agg.n.where(agg.n > 1, 2))
    agg["entropy"] = np.where(has_info, np.where(agg.n > 1, -agg.plogp / log_n, 1.0), np.nan)
    agg["top_share"] = np.where(has_info, agg.top / agg.total.where(has_info, 1.0), np.nan)
    return agg.drop(columns=["total", "gini", "plogp", "top", "n"])

