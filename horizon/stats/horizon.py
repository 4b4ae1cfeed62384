"""Curves, the horizon and the uniformity onset, with bootstrap CIs (the README's What is measured section).

Pure functions of the per-sample frame (``per_sample.sample_layer_stats``):
``curves`` (per layer means with bootstrap CIs), ``estimate`` and
``summarize`` (the horizon, its status and the uniformity onset). The
definitions are in the package docstring (``horizon.stats``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import HorizonError
from ..options import check_run_options, is_whole_number
from ..records import FOUND, NO_INFORMATION, PERSISTS, UNDETERMINED, VANISHING_TESTS, Horizon
from .per_sample import KEYS


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
        self.validate()

    def validate(self) -> None:
        """Refuse a setting the analysis cannot use, naming its option; every command checks before it writes.

        The bootstrap and the permutation test need at least one draw each
        (no draws leave nothing to take a quantile or a p-value of: use
        hundreds); numpy refuses negative seeds.
        """
        if self.vanishing_test not in VANISHING_TESTS:
            raise HorizonError(f"vanishing test must be one of {', '.join(VANISHING_TESTS)}, "
                               f"got {self.vanishing_test!r}")
        # written as "not (inside)" so that NaN, which compares false, is refused too
        if not 0 < self.alpha < 1:
            raise HorizonError(f"--alpha must be between 0 and 1 (exclusive), got {self.alpha}")
        if not 0 <= self.threshold < 1:
            raise HorizonError(f"--threshold must be in [0, 1) (a fraction of the curve's maximum), "
                               f"got {self.threshold}")
        if not 0 < self.uniformity_threshold <= 1:
            raise HorizonError(f"--uniformity must be in (0, 1], got {self.uniformity_threshold}")
        if not 0 < self.top_share <= 1:
            raise HorizonError(f"top_share must be in (0, 1], got {self.top_share}")
        if not 0 < self.ci < 1:
            raise HorizonError(f"ci must be between 0 and 1 (exclusive), got {self.ci}")
        for flag, value in (("--n-boot", self.n_boot), ("--n-perm", self.n_perm)):
            if not is_whole_number(value) or value < 1:
                raise HorizonError(f"{flag} must be a whole number of at least 1 (hundreds for usable intervals "
                                   f"and p-values), got {value}")
        check_run_options(seed=self.seed)  # the seed rule every verb shares


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
