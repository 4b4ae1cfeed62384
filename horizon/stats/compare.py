"""Comparisons of horizons: tasks within a model (layers), models within a task (relative depth)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd

from ..errors import HorizonError
from .horizon import (StatsParams, _depth, _floor_of, _horizon_index, _informative, _interval, _matrices,
                      _vanished)


# ---------------------------------------------------------------- comparisons


def _relative_matrix(part: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
    info, layers = _matrices(part, "mean_info")
    depth = layers / _depth(part)
    return np.stack([np.interp(grid, depth, row) for row in info])


def _horizon_of(info: np.ndarray, axis: np.ndarray, params: StatsParams, past_end: float,
                floor: float = 0.0) -> np.ndarray:
    """Horizon per stacked matrix (k, n, L) -> (k,), ``past_end`` where none."""
    n = info.shape[1]
    vanished = _vanished(info.mean(1), (info**2).mean(1), n, params, floor)
    return np.append(axis, past_end)[_horizon_index(vanished)]


def compare_pair(a: pd.DataFrame, b: pd.DataFrame, params: StatsParams, relative: bool,
                 rng: np.random.Generator, names: tuple[str, str] = ("a", "b")) -> dict[str, Any]:
    """Horizon difference a - b with a bootstrap CI and a two-sided permutation p-value.

    ``relative`` compares on relative depth: each sample's curve is interpolated
    onto the union of both models' relative layer positions, so models of
    different depth become exchangeable under the null hypothesis. Both sides
    use the larger of their numerical floors. When either side has no
    information at any layer, or neither side's information vanishes within
    the model, there are no horizons to compare: the difference is NaN and
    ``note`` says why. When only one side has a horizon, the other counts as
    past the last layer and ``note`` says which.
    """
    if relative:
        depths = [part.layer.unique() / _depth(part) for part in (a, b)]
        axis = np.unique(np.concatenate(depths))
        xa, xb, past_end = _relative_matrix(a, axis), _relative_matrix(b, axis), 1.0
    else:
        xa, axis = _matrices(a, "mean_info")
        xb, axis_b = _matrices(b, "mean_info")
        if not np.array_equal(axis, axis_b):
            raise HorizonError("tasks compared within a model must share the scanned layers")
        past_end = float(_depth(a))
    floor = max(_floor_of(a), _floor_of(b))
    units = "relative depth" if relative else "layers"
    empty = [str(side) for side, x in zip(names, (xa, xb))
             if len(x) >= 2 and not _informative(x.mean(0)[None], floor)[0]]
    if empty:
        nan = math.nan
        return {"horizon_a": nan, "horizon_b": nan, "difference": nan, "difference_lo": nan, "difference_hi": nan,
                "p_value": nan, "units": units,
                "note": f"no information at any layer in {' and '.join(empty)}: no horizons to compare"}
    ha = _horizon_of(xa[None], axis, params, past_end, floor)[0]
    hb = _horizon_of(xb[None], axis, params, past_end, floor)[0]
    persists = [str(side) for side, h in zip(names, (ha, hb)) if h >= past_end]
    if len(persists) == 2:
        # both "past the last layer": a difference of 0 would read as equal horizons, but there are none
        nan = math.nan
        return {"horizon_a": nan, "horizon_b": nan, "difference": nan, "difference_lo": nan, "difference_hi": nan,
                "p_value": nan, "units": units,
                "note": f"neither {names[0]} nor {names[1]} has a horizon: information persists to the last "
                        "layer in both, nothing to compare"}
    observed = ha - hb
    na, nb = len(xa), len(xb)
    chunk = max(1, int(2e7 // ((na + nb) * len(axis))))  # bound memory: ~160 MB of float64 per step
    diff, null = [], []
    for start in range(0, params.n_boot, chunk):
        k = min(chunk, params.n_boot - start)
        boot_a = xa[rng.integers(0, na, size=(k, na))]
        boot_b = xb[rng.integers(0, nb, size=(k, nb))]
        diff.append(_horizon_of(boot_a, axis, params, past_end, floor)
                    - _horizon_of(boot_b, axis, params, past_end, floor))
    pooled = np.concatenate([xa, xb])
    for start in range(0, params.n_perm, chunk):
        k = min(chunk, params.n_perm - start)
        shuffled = pooled[np.stack([rng.permutation(na + nb) for _ in range(k)])]
        null.append(_horizon_of(shuffled[:, :na], axis, params, past_end, floor)
                    - _horizon_of(shuffled[:, na:], axis, params, past_end, floor))
    diff, null = np.concatenate(diff), np.concatenate(null)
    p = (1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / (params.n_perm + 1)
    lo, hi = _interval(diff, params.ci)
    past = "1.0" if relative else "n_layers"
    note = f"a horizon past the last layer (none) counts as {past}"
    if persists:
        other = names[1] if persists[0] == str(names[0]) else names[0]
        note = f"only {other} has a horizon: {persists[0]}'s information persists to the last layer, counted as {past}"
    return {"horizon_a": ha, "horizon_b": hb, "difference": observed, "difference_lo": lo, "difference_hi": hi,
            "p_value": float(p), "units": units, "note": note}


def compare(per_sample: pd.DataFrame, params: StatsParams | None = None) -> pd.DataFrame:
    """All task pairs within a model (layers) and model pairs within a task (relative depth)."""
    params = params or StatsParams()
    rng = np.random.default_rng(params.seed + 1)
    rows = []
    for (model, metric), part in per_sample.groupby(["model", "metric"], sort=True):
        for ta, tb in itertools.combinations(sorted(part.task.unique()), 2):
            res = compare_pair(part[part.task == ta], part[part.task == tb], params, False, rng, (ta, tb))
            rows.append({"kind": "task", "metric": metric, "model_a": model, "task_a": ta, "model_b": model,
                         "task_b": tb, **res})
    for (task, metric), part in per_sample.groupby(["task", "metric"], sort=True):
        for ma, mb in itertools.combinations(sorted(part.model.unique()), 2):
            res = compare_pair(part[part.model == ma], part[part.model == mb], params, True, rng, (ma, mb))
            rows.append({"kind": "model", "metric": metric, "model_a": ma, "task_a": task, "model_b": mb,
                         "task_b": task, **res})
    return pd.DataFrame(rows)
