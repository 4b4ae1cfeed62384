"""Statistics of information curves: uniformity, the horizon, comparisons (DESIGN §2).

Pure functions of tidy DataFrames; no model needed. The pipeline:

1. ``sample_layer_stats``: per (model, task, metric, sample, layer), over the
   groups: mean information, uniformity (1 - Gini of the non-negative part),
   normalised entropy, share of the top 10% of groups.
2. ``curves``: per (model, task, metric, layer), means over samples with
   bootstrap CIs (samples resampled, seeded).
3. ``summarize``: per (model, task, metric) the horizon and the uniformity
   onset with bootstrap CIs, and the relative horizon h / L.
4. ``compare``: horizon differences between tasks (same model, in layers) and
   between models (same task, in relative depth) with a bootstrap CI and a
   permutation p-value.

Numerical floor: every run records the largest score that rounding alone
produces (``numerical_floor`` in run.json). Scores at or below it (in absolute
value) are set to 0 before anything else, so information below the floor is
zero. A curve whose mean information never rises above the floor has *no
information at any layer* (status ``no-information``): no horizon.

Horizon: the first scanned layer h such that at h and every later scanned
layer the mean information has *vanished*: it is at most the vanishing level
tau = max(``threshold`` x the curve's maximum, the floor). Two tests decide
"vanished", both one-sided one-sample t-tests across samples, Holm-corrected
over layers at level ``alpha``:

* ``not-significant`` (default): not significantly above tau. Lack of
  evidence counts as vanished, so few or noisy samples give earlier horizons.
* ``equivalence``: significantly below tau (TOST-style, one bound). Only
  evidence of absence counts, so few samples give later horizons: the safe
  reading when the horizon decides where pruning may go random.

If the last layer has not vanished there is no horizon (status ``persists``),
never "the last layer". Bootstrap resamples without a horizon count as
``n_layers`` (past the last layer) in the CI.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from .errors import HorizonError
from .records import FOUND, NO_INFORMATION, PERSISTS, UNDETERMINED, VANISHING_TESTS, Horizon
from .scores import RAW_METRICS

KEYS = ["model", "task", "metric"]
SCORE_REQUIRED = ["sample_id", "layer", "group", "metric", "value"]
SAMPLE_REQUIRED = ["sample_id", "task"]


@dataclass
class StatsParams:
    """Every threshold of the analysis, with its default; recorded in the summary."""

    threshold: float = 0.05  # vanishing threshold, as a fraction of the curve's maximum
    alpha: float = 0.05  # family-wise level of the Holm-corrected one-sided tests
    uniformity_threshold: float = 0.9  # uniformity onset: uniformity stays >= this up to the horizon
    top_share: float = 0.10  # "top groups" fraction for the concentration measure
    ci: float = 0.95  # bootstrap confidence level
    n_boot: int = 1000
    n_perm: int = 1000
    seed: int = 0
    vanishing_test: str = "not-significant"  # not-significant | equivalence (see the module docstring)

    def __post_init__(self) -> None:
        if self.vanishing_test not in VANISHING_TESTS:
            raise HorizonError(f"vanishing test must be one of {', '.join(VANISHING_TESTS)}, "
                               f"got {self.vanishing_test!r}")
        if not 0 < self.alpha < 1:
            raise HorizonError(f"alpha must be between 0 and 1, got {self.alpha}")
        if not 0 <= self.threshold < 1:
            raise HorizonError(f"threshold must be in [0, 1), got {self.threshold}")


# ---------------------------------------------------------------- loading


def _require(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise HorizonError(f"{where}: missing required column(s) {', '.join(missing)}")


def model_name(config: dict[str, Any], run: Path) -> str:
    model = config.get("model")
    if not model:
        return run.name
    path = Path(str(model))
    return path.name if path.exists() or path.is_absolute() else str(model)


def load_runs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Read run directories (DESIGN §3), validating the columns the analysis needs."""
    from .io.runs import read_scores, read_table, table_files

    runs = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise HorizonError(f"{path}: run directory not found")
        config = json.loads((path / "run.json").read_text()) if (path / "run.json").exists() else {}
        if not table_files(path, "samples"):
            raise HorizonError(f"{path}: no samples table (samples.parquet or samples/)")
        samples = read_table(path, "samples")
        _require(samples, SAMPLE_REQUIRED, f"{path / 'samples'}")
        scores = read_scores(path)
        _require(scores, SCORE_REQUIRED, f"{path / 'scores'}")
        groups = read_table(path, "groups") if table_files(path, "groups") else None
        n_layers = int(config.get("n_layers") or (scores.layer.max() + 1 if len(scores) else 0))
        runs.append({"path": path, "config": config, "samples": samples, "groups": groups, "scores": scores,
                     "model": model_name(config, path), "n_layers": n_layers, "floor": _floor(config, samples)})
    return runs


def _floor(config: dict[str, Any], samples: pd.DataFrame) -> dict[str, float]:
    """The run's numerical floor per metric: from its samples when they carry one, else run.json, else none."""
    from .io.runs import run_floor

    floor = run_floor(samples) or config.get("numerical_floor") or {}
    return {str(k): float(v) for k, v in floor.items()}


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


# ---------------------------------------------------------------- bootstrap helpers


def _weights(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """Bootstrap resamples as multinomial counts (n_boot, n): resampling without index copies."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _weighted_nanmean(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(x)
    num = weights @ np.where(ok, x, 0.0)
    den = weights @ ok.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(values, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return (float(lo), float(hi))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values along the last axis."""
    p = np.asarray(p, dtype=np.float64)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="mergesort")
    ranked = np.take_along_axis(p, order, axis=-1) * (m - np.arange(m))
    ranked = np.minimum(np.maximum.accumulate(ranked, axis=-1), 1.0)
    out = np.empty_like(ranked)
    np.put_along_axis(out, order, ranked, axis=-1)
    return out


# ---------------------------------------------------------------- horizon and onset


def _one_sided(mean: np.ndarray, sq_mean: np.ndarray, n: int, level: np.ndarray | float, alpha: float,
               above: bool) -> np.ndarray:
    """Which layers are significantly above (``above``) or below ``level``, Holm-corrected per row."""
    var = np.clip(sq_mean - mean**2, 0.0, None) * n / max(n - 1, 1)
    se = np.sqrt(var / n)
    diff = (mean - level) if above else (level - mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / se
    p = np.where(se > 0, sps.t.sf(t, df=max(n - 1, 1)), np.where(diff > 0, 0.0, 1.0))
    if n < 2:
        p = np.ones_like(p)  # one sample supports no test
    return holm(p) < alpha


def _vanishing_level(mean: np.ndarray, threshold: float, floor: float) -> np.ndarray:
    """tau per row: threshold x the curve's maximum, never below the numerical floor."""
    return np.maximum(threshold * np.clip(np.nanmax(mean, axis=-1, keepdims=True), 0.0, None), floor)


def _vanished(mean: np.ndarray, sq_mean: np.ndarray, n: int, params: StatsParams, floor: float = 0.0) -> np.ndarray:
    """Which layers' information has vanished, by ``params.vanishing_test``. Rows are resamples."""
    tau = _vanishing_level(mean, params.threshold, floor)
    if params.vanishing_test == "equivalence":
        return _one_sided(mean, sq_mean, n, tau, params.alpha, above=False)
    return ~_one_sided(mean, sq_mean, n, tau, params.alpha, above=True)


def _informative(mean: np.ndarray, floor: float) -> np.ndarray:
    """Whether the curve rises above the numerical floor at any layer (per row).

    Scores within the floor are already zero, so rounding alone leaves the
    curve at or below it; any excess is information (a test of whether it is
    *significant* is the horizon's business, not this status's).
    """
    return (np.nan_to_num(mean, nan=0.0) > floor).any(axis=-1)


def _horizon_index(vanished: np.ndarray) -> np.ndarray:
    """Index of the first layer after the last one that has not vanished; len = none (per row)."""
    n_layers = vanished.shape[-1]
    alive = ~vanished
    last = n_layers - 1 - np.argmax(alive[..., ::-1], axis=-1)
    return np.where(alive.any(axis=-1), last + 1, 0)


def _onset_index(uniformity: np.ndarray, end: np.ndarray, level: float) -> np.ndarray:
    """First index i with uniformity >= level on [i, end); -1 if none (per row)."""
    rows = np.atleast_2d(uniformity)
    ends = np.atleast_1d(end)
    out = np.full(rows.shape[0], -1)
    for r, (u, e) in enumerate(zip(rows, ends)):
        if e <= 0:
            continue
        ok = np.nan_to_num(u[:e], nan=-np.inf) >= level
        if not ok[-1]:
            continue
        bad = np.flatnonzero(~ok)
        out[r] = bad[-1] + 1 if bad.size else 0
    return out


@dataclass
class CurveEstimate:
    horizon: Horizon
    onset: float | None
    onset_ci: tuple[float, float]
    threshold_value: float
    boot_horizons: np.ndarray  # per resample, in layers; n_layers where none


def estimate(
    info: np.ndarray, uniformity: np.ndarray, layers: np.ndarray, n_layers: int, params: StatsParams,
    rng: np.random.Generator, floor: float = 0.0,
) -> CurveEstimate:
    """Horizon and uniformity onset of one (samples x layers) matrix, with bootstrap CIs.

    ``floor`` is the runs' numerical floor for this metric (scores already
    zeroed within it). With fewer than two samples nothing can be tested
    (status ``undetermined``); a curve that never rises above the floor has
    status ``no-information``.
    """
    n = info.shape[0]
    test = params.vanishing_test
    nan2 = (math.nan, math.nan)
    if n < 2:
        value = float(max(params.threshold * max(np.nanmax(info), 0.0), floor)) if info.size else math.nan
        return CurveEstimate(Horizon(UNDETERMINED, n_layers=n_layers, test=test), None, nan2, value,
                             np.full(params.n_boot, math.nan))
    mean, sq = np.nanmean(info, 0), np.nanmean(info**2, 0)
    threshold_value = float(_vanishing_level(mean[None], params.threshold, floor)[0, 0])
    if not _informative(mean[None], floor)[0]:
        return CurveEstimate(Horizon(NO_INFORMATION, n_layers=n_layers, test=test), None, nan2, threshold_value,
                             np.full(params.n_boot, math.nan))
    h_idx = int(_horizon_index(_vanished(mean[None], sq[None], n, params, floor))[0])
    horizon = None if h_idx >= len(layers) else float(layers[h_idx])
    u_mean = np.nanmean(uniformity, 0) if np.isfinite(uniformity).any() else np.full(len(layers), np.nan)
    o_idx = int(_onset_index(u_mean, np.array([h_idx]), params.uniformity_threshold)[0])
    onset = None if o_idx < 0 else float(layers[o_idx])

    w = _weights(rng, n, params.n_boot)
    b_mean, b_sq = (w @ np.nan_to_num(info)) / n, (w @ np.nan_to_num(info**2)) / n
    b_idx = _horizon_index(_vanished(b_mean, b_sq, n, params, floor))
    padded = np.append(layers, n_layers).astype(np.float64)
    b_h = padded[b_idx]
    b_u = _weighted_nanmean(w, uniformity)
    b_o = _onset_index(b_u, b_idx, params.uniformity_threshold)
    b_onset = np.where(b_o >= 0, padded[np.clip(b_o, 0, None)], np.nan)
    if horizon is None:
        record = Horizon(PERSISTS, n_layers=n_layers, test=test)
    else:
        lo, hi = _interval(b_h, params.ci)
        record = Horizon(FOUND, horizon, lo, hi, n_layers, test)
    return CurveEstimate(
        horizon=record,
        onset=onset,
        onset_ci=_interval(b_onset, params.ci) if onset is not None else nan2,
        threshold_value=threshold_value,
        boot_horizons=b_h,
    )


def _floor_of(part: pd.DataFrame) -> float:
    """The numerical floor of a curve's runs (the largest, when runs were pooled)."""
    return float(part["floor"].max()) if "floor" in part.columns and len(part) else 0.0


def _depth(part: pd.DataFrame) -> int:
    """The model's number of decoder layers L (from the runs, else the deepest scanned layer + 1)."""
    return int(part.n_layers.iloc[0]) if "n_layers" in part else int(part.layer.max() + 1)


def _matrices(per_sample: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    table = per_sample.pivot(index="sample_id", columns="layer", values=column).sort_index(axis=1)
    return table.to_numpy(np.float64), table.columns.to_numpy()


# ---------------------------------------------------------------- tables


def curves(per_sample: pd.DataFrame, params: StatsParams | None = None) -> pd.DataFrame:
    """Per (model, task, metric, layer): means over samples with bootstrap CIs."""
    params = params or StatsParams()
    rng = np.random.default_rng(params.seed)
    rows = []
    for (model, task, metric), part in per_sample.groupby(KEYS, sort=True):
        n_layers = _depth(part)
        info, layers = _matrices(part, "mean_info")
        w = _weights(rng, info.shape[0], params.n_boot)
        est = {}
        for column in ("mean_info", "uniformity", "entropy", "top_share"):
            x, _ = _matrices(part, column)
            boot = _weighted_nanmean(w, x)
            with np.errstate(all="ignore"):
                mean = np.nanmean(x, 0) if np.isfinite(x).any() else np.full(x.shape[1], np.nan)
            lo, hi = zip(*(_interval(boot[:, j], params.ci) for j in range(x.shape[1])))
            est[column] = (mean, np.array(lo), np.array(hi))
        for j, layer in enumerate(layers):
            row = {"model": model, "task": task, "metric": metric, "layer": int(layer), "n_layers": n_layers,
                   "relative_depth": layer / n_layers, "n_samples": int(np.isfinite(info[:, j]).sum())}
            for column, (mean, lo, hi) in est.items():
                row[column] = mean[j]
                if column in ("mean_info", "uniformity"):
                    row[f"{column}_lo"], row[f"{column}_hi"] = lo[j], hi[j]
            rows.append(row)
    return pd.DataFrame(rows)


def summarize(per_sample: pd.DataFrame, params: StatsParams | None = None) -> pd.DataFrame:
    """Per (model, task, metric): horizon (with its status), relative horizon, uniformity onset, with CIs."""
    params = params or StatsParams()
    rng = np.random.default_rng(params.seed)
    rows = []
    for (model, task, metric), part in per_sample.groupby(KEYS, sort=True):
        n_layers = _depth(part)
        info, layers = _matrices(part, "mean_info")
        uniformity, _ = _matrices(part, "uniformity")
        floor = _floor_of(part)
        est = estimate(info, uniformity, layers, n_layers, params, rng, floor)
        rows.append({
            "model": model, "task": task, "metric": metric, "n_samples": info.shape[0], "n_layers": n_layers,
            **est.horizon.columns(),
            "uniformity_onset": est.onset, "uniformity_onset_lo": est.onset_ci[0],
            "uniformity_onset_hi": est.onset_ci[1],
            "threshold": params.threshold, "threshold_value": est.threshold_value, "floor": floor,
            "alpha": params.alpha, "uniformity_threshold": params.uniformity_threshold, "n_boot": params.n_boot,
            "seed": params.seed,
        })
    return pd.DataFrame(rows)


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


def analyze_frames(runs: Sequence[dict[str, Any]], metric: str | None = None,
                   params: StatsParams | None = None) -> dict[str, Any]:
    """The whole analysis of loaded runs: per-sample stats, curves, summary, comparisons."""
    params = params or StatsParams()
    scores = tidy_scores(runs)
    if metric is not None:
        if metric not in set(scores.metric):
            raise HorizonError(f"metric {metric!r} not in the runs (have: {', '.join(sorted(set(scores.metric)))})")
        scores = scores[scores.metric == metric]
    per_sample = sample_layer_stats(scores, params.top_share)
    return {"per_sample": per_sample, "curves": curves(per_sample, params), "summary": summarize(per_sample, params),
            "comparisons": compare(per_sample, params), "params": asdict(params)}
