"""Publication figures: tidy frames in, PNG + PDF files out.

Inputs are the long-form frames of :mod:`horizon.stats` (``curves``: one row
per model, task, metric, layer; ``summary``: one row per model, task, metric)
and, for the per-sample figures, a run's raw ``scores``, ``groups`` and
``samples`` tables (the README's Run directory section).

Every figure is written twice, ``NAME.png`` (raster, at the figure's dpi) and
``NAME.pdf`` (vector, fonts embedded as TrueType), by :func:`save`. Figures
have a fixed size and are saved without ``bbox_inches="tight"``, so a PNG is
exactly ``width_in * dpi`` by ``height_in * dpi`` pixels; constrained layout
keeps labels and the legend (placed outside the axes) inside that canvas.

Sizes at dpi 150 (``n_models`` panels, ``n`` heatmap layers):

=====================  ===========================================  ==================
figure                 inches                                       pixels
=====================  ===========================================  ==================
info curve, uniformity (6.4 + 3.6 * (n_models - 1)) x 4.0            960 x 600 for 1,
                                                                    1500 x 600 for 2
horizons               10.0 x 4.0 (two panels)                      1500 x 600
capacity               6.4 x 4.0                                    960 x 600
token heatmaps         (3.0 * min(n, 4) + 1.0) x (3.0 * rows + 0.7)  1950 x 555 for 4
                       (rows: ceil(n / 4) per image of the sample)
layer x group heatmap  6.4 x 4.0                                    960 x 600
prune trade-off        11.0 x (4.2 + 3.6 * (rows - 1)), 8.0 wide    1650 x 630 for 1
                       without hybrids (rows: (model, task) pairs)
=====================  ===========================================  ==================

Nothing here touches global matplotlib/seaborn state: styles are applied with
``sns.axes_style``/``plt.rc_context`` inside each function and every figure is
closed after saving. No function calls ``plt.show``.
"""

from __future__ import annotations

import contextlib
import math
import re
import textwrap
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .errors import HorizonError
from .layout import block_extents, find_image, grid_blocks, groups_grid, image_specs, window_span
from .records import FOUND, NO_INFORMATION, PERSISTS, Horizon

DPI = 150
FIGSIZE = (6.4, 4.0)
PALETTE = "colorblind"
CMAP = "viridis"
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "<", ">")

# Axis labels for the metrics of the README's What is measured section (anything else falls back to its name).
INFO_LABELS = {
    "kl": "information (KL, nats)",
    "dlogp": "information (Δ log p, nats)",
    "dprob": "information (Δ p)",
    "gain_logp": "information gain (log p, nats)",
    "gain_prob": "information gain (p)",
}
SHORT_LABELS = {
    "kl": "KL (nats)",
    "dlogp": "Δ log p (nats)",
    "dprob": "Δ p",
    "gain_logp": "gain in log p (nats)",
    "gain_prob": "gain in p",
}

_RC = {
    "pdf.fonttype": 42,  # editable TrueType text in the PDF
    "ps.fonttype": 42,
    "savefig.dpi": DPI,
    "figure.dpi": DPI,
    "legend.frameon": False,
}

__all__ = [
    "info_label",
    "make_figures",
    "plot_capacity",
    "plot_horizons",
    "plot_info_curves",
    "plot_layer_group_heatmap",
    "plot_token_heatmaps",
    "plot_uniformity",
    "prune_tradeoff",
    "save",
    "spread_layers",
]


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _style() -> Iterator[None]:
    """Local seaborn style and rc settings; restores everything on exit."""
    with plt.rc_context(_RC), sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.15):
        yield


def _slug(text: Any) -> str:
    """A file-name-safe version of a model / sample / metric name."""
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("_.")
    return slug or "x"


def info_label(metric: str) -> str:
    """The y-axis label for the information in `metric`'s units."""
    return INFO_LABELS.get(metric, f"information ({metric})")


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``out_dir/name.png`` and ``out_dir/name.pdf``; return both paths.

    The figure is saved at its own size and dpi (no tight bbox), so the PNG is
    exactly figsize x dpi pixels. The figure is not closed here.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    with plt.rc_context(_RC):
        for path in paths:
            # No creation date in the PDF: rerunning the demo reproduces committed figures byte for byte.
            metadata = {"CreationDate": None} if path.suffix == ".pdf" else None
            fig.savefig(path, dpi=fig.dpi, metadata=metadata)
    return paths


def _select(frame: pd.DataFrame, metric: str, what: str) -> pd.DataFrame:
    if frame is None or len(frame) == 0:
        raise ValueError(f"{what} frame is empty")
    if "metric" not in frame.columns:
        raise ValueError(f"{what} frame has no 'metric' column")
    sel = frame[frame["metric"] == metric]
    if sel.empty:
        have = ", ".join(sorted(map(str, frame["metric"].unique())))
        raise ValueError(f"no rows for metric {metric!r} in {what} (metrics present: {have})")
    return sel


def _markers_for(summary: pd.DataFrame | None, metric: str) -> pd.DataFrame | None:
    """The summary rows of `metric` for marking horizons on curves; None (no marks) when there are none."""
    if summary is None or len(summary) == 0 or "metric" not in summary.columns:
        return None
    sel = summary[summary["metric"] == metric]
    return None if sel.empty else sel


def _order(values: Iterable[Any]) -> list[Any]:
    """Unique values in first-appearance order (models and tasks keep the input order)."""
    return list(dict.fromkeys(values))


def _colors(keys: Sequence[Any]) -> dict[Any, tuple]:
    pal = sns.color_palette(PALETTE, max(len(keys), 1))
    return {k: pal[i % len(pal)] for i, k in enumerate(keys)}


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _wrap(text: str, width_in: float, size_key: str) -> str:
    """Break `text` into lines that fit `width_in` inches at the current rc font size `size_key`."""
    size = FontProperties(size=plt.rcParams[size_key]).get_size_in_points()
    chars = max(int(width_in * 72 / (0.6 * size)), 16)
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _suptitle(fig: Figure, text: str) -> None:
    fig.suptitle(_wrap(text, 0.95 * fig.get_figwidth(), "figure.titlesize"))


def _title(ax, text: str) -> None:
    """Axes title wrapped to the axes' width."""
    ax.set_title(_wrap(text, ax.get_position().width * ax.figure.get_figwidth(), "axes.titlesize"))


def _legend(fig: Figure, handles: list, title: str | None = None) -> None:
    """One figure legend outside the axes (right, centred), so it never covers data."""
    if handles:
        fig.legend(handles=handles, loc="outside right center", title=title, fontsize="small",
                   title_fontsize="small")


def _panels(n: int, height: float = 4.0) -> tuple[Figure, np.ndarray]:
    width = FIGSIZE[0] + 3.6 * (n - 1)
    fig, axes = plt.subplots(1, n, figsize=(width, height), dpi=DPI, layout="constrained", squeeze=False)
    return fig, axes[0]


# --------------------------------------------------------------------------- curves


@dataclass(frozen=True)
class _Marker:
    """A per-task line read from the summary: vertical at a layer ("v") or horizontal at a value ("h")."""

    field: str
    axis: str
    ls: str
    lw: float
    label: str


def _curve_panels(axes, c: pd.DataFrame, s: pd.DataFrame | None, models: list, tasks: list, colors: dict,
                  column: str, markers: Sequence[_Marker]) -> list[Line2D]:
    """One panel per model: a line and CI band per task, plus each task's summary markers.

    Returns the legend handles: one per task, then one per marker kind that was drawn.
    """
    drawn: set[int] = set()
    for ax, model in zip(axes, models):
        cm = c[c["model"] == model]
        for task in tasks:
            ct = cm[cm["task"] == task].sort_values("layer")
            if ct.empty:
                continue
            col = colors[task]
            ax.plot(ct["layer"], ct[column], color=col, lw=1.8, marker="o", ms=2.5, label=task)
            if {f"{column}_lo", f"{column}_hi"} <= set(ct.columns):
                ax.fill_between(ct["layer"], ct[f"{column}_lo"], ct[f"{column}_hi"], color=col, alpha=0.22, lw=0)
            row = _summary_row(s, model, task)
            for i, m in enumerate(markers):
                if row is not None and _finite(row.get(m.field)):
                    line = ax.axvline if m.axis == "v" else ax.axhline
                    line(float(row[m.field]), color=col, ls=m.ls, lw=m.lw)
                    drawn.add(i)
        empty = [str(t) for t in tasks if (_summary_row(s, model, t) or {}).get("horizon_status") == NO_INFORMATION]
        if empty:
            ax.text(0.98, 0.97, "no information at any layer\n(never above the numerical floor):\n" + ", ".join(empty),
                    transform=ax.transAxes, ha="right", va="top", fontsize=8, color="0.25",
                    bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.7", lw=0.6))
        ax.set_xlabel("decoder layer")
        _title(ax, _model_title(model, cm))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(x=0.02)
    handles = [Line2D([], [], color=colors[t], lw=1.8, label=str(t)) for t in tasks]
    handles += [Line2D([], [], color="0.3", ls=m.ls, lw=m.lw, label=m.label)
                for i, m in enumerate(markers) if i in drawn]
    return handles


def plot_info_curves(curves: pd.DataFrame, summary: pd.DataFrame | None, metric: str, out_dir: Path,
                     log: bool = False) -> list[Path]:
    """Information per layer: one panel per model, one line per task with its CI band.

    Each task's horizon is a dashed vertical line in the task's colour and its
    vanishing threshold a dotted horizontal line. ``log=True`` uses a symlog y
    axis (linear within 1e-3 x the panel's maximum, so zeros and negative
    values are drawn). Writes ``info_curve_{metric}`` or ``info_curve_log_{metric}``.
    """
    c = _select(curves, metric, "curves")
    s = _markers_for(summary, metric)
    models, tasks = _order(c["model"]), _order(c["task"])
    markers = (_Marker("horizon", "v", "--", 1.3, "horizon"),
               _Marker("threshold_value", "h", ":", 1.2, _threshold_label(s)))
    with _style():
        fig, axes = _panels(len(models))
        try:
            handles = _curve_panels(axes, c, s, models, tasks, _colors(tasks), "mean_info", markers)
            for ax, model in zip(axes, models):
                ax.axhline(0.0, color="0.35", lw=0.6, zorder=0)
                if log:
                    ax.set_yscale("symlog", linthresh=_linthresh(c[c["model"] == model]))
                ax.set_ylabel(info_label(metric))
            _legend(fig, handles, title="task")
            scale = " (symlog scale)" if log else ""
            _suptitle(fig, f"Information per decoder layer — {metric}{scale}\nmean over windows and samples; bands: 95% CI")
            name = f"info_curve_log_{_slug(metric)}" if log else f"info_curve_{_slug(metric)}"
            return save(fig, out_dir, name)
        finally:
            plt.close(fig)


def plot_uniformity(curves: pd.DataFrame, summary: pd.DataFrame | None, metric: str, out_dir: Path) -> list[Path]:
    """Uniformity (1 - Gini over windows) per layer: one panel per model, line per task with CI.

    Uniformity onset is a dash-dot vertical line, the horizon a dashed one, in
    the task's colour. Writes ``uniformity_{metric}``.
    """
    c = _select(curves, metric, "curves")
    s = _markers_for(summary, metric)
    models, tasks = _order(c["model"]), _order(c["task"])
    markers = (_Marker("uniformity_onset", "v", "-.", 1.3, "uniformity onset"),
               _Marker("horizon", "v", "--", 1.3, "horizon"))
    with _style():
        fig, axes = _panels(len(models))
        try:
            handles = _curve_panels(axes, c, s, models, tasks, _colors(tasks), "uniformity", markers)
            for ax in axes[: len(models)]:
                ax.set_ylim(0.0, 1.02)
                ax.set_ylabel("uniformity (1 − Gini over windows)")
            _legend(fig, handles, title="task")
            _suptitle(fig, f"Uniformity of information over the image — {metric}\nbands: 95% CI")
            return save(fig, out_dir, f"uniformity_{_slug(metric)}")
        finally:
            plt.close(fig)


def _summary_row(s: pd.DataFrame | None, model: Any, task: Any) -> dict | None:
    if s is None:
        return None
    rows = s[(s["model"] == model) & (s["task"] == task)]
    return None if rows.empty else rows.iloc[0].to_dict()


def _model_title(model: Any, cm: pd.DataFrame) -> str:
    if "n_layers" in cm.columns and cm["n_layers"].notna().any():
        return f"{model} (L = {int(cm['n_layers'].dropna().iloc[0])})"
    return str(model)


def _threshold_label(s: pd.DataFrame | None) -> str:
    if s is not None and "threshold" in s.columns:
        fr = s["threshold"].dropna().unique()
        if len(fr) == 1:
            return f"threshold ({float(fr[0]):.0%} of max)"
    return "vanishing threshold"


def _linthresh(cm: pd.DataFrame) -> float:
    cols = [col for col in ("mean_info", "mean_info_lo", "mean_info_hi") if col in cm.columns]
    vals = np.abs(cm[cols].to_numpy(dtype=float))
    vals = vals[np.isfinite(vals)]
    peak = float(vals.max()) if vals.size else 0.0
    return 1e-3 * peak if peak > 0 else 1.0


# --------------------------------------------------------------------------- horizons


def _dodge(i: int, n: int, width: float = 0.6) -> float:
    return 0.0 if n <= 1 else (i - (n - 1) / 2) * width / (n - 1)


def _point_ci(ax, x: float, y: Any, lo: Any, hi: Any, color, marker: str, nan_y: dict[str, float],
              status: Any = None) -> bool:
    """Point with its CI; a horizon without a layer is drawn in the band row of its status
    (hollow: information persists; a cross: no information at any layer). Returns True if it had no layer."""
    if not _finite(y):
        if status == NO_INFORMATION:
            ax.plot([x], [nan_y[NO_INFORMATION]], marker="X", ms=8, color=color, mec="white", mew=0.6, ls="none",
                    zorder=3)
        else:
            ax.plot([x], [nan_y[PERSISTS]], marker=marker, ms=7, mfc="white", mec=color, mew=1.6, ls="none", zorder=3)
        return True
    if _finite(lo) and _finite(hi):
        ax.vlines(x, float(lo), float(hi), color=color, lw=1.6, zorder=2)
        ax.plot([x, x], [float(lo), float(hi)], marker="_", ms=8, mew=1.6, color=color, ls="none", zorder=2)
    ax.plot([x], [float(y)], marker=marker, ms=7, color=color, mec="white", mew=0.6, ls="none", zorder=3)
    return False


def _no_horizon_band(ax, top: float, any_nan: bool, relative: bool) -> dict[str, float]:
    """y-limits and ticks; with missing horizons, a shaded band above `top` with two rows:
    'persists' (information reaches the last layer) and 'no information' (never above the floor).

    Returns the y of each row, by status.
    """
    nan_y = {PERSISTS: top * 1.11, NO_INFORMATION: top * 1.22}
    if relative:
        ticks = [0.0, 0.25, 0.5, 0.75, 1.0]
        labels = ["0", "0.25", "0.5", "0.75", "1"]
    else:
        ticks = [t for t in MaxNLocator(integer=True, nbins=6).tick_values(0, top) if 0 <= t <= top]
        labels = [f"{t:g}" for t in ticks]
    if any_nan:
        ax.axhspan(top * 1.05, top * 1.28, color="0.92", zorder=0, lw=0)
        ticks = ticks + [nan_y[PERSISTS], nan_y[NO_INFORMATION]]
        labels = labels + ["persists", "no info"]
        ax.set_ylim(0, top * 1.28)
    else:
        ax.set_ylim(0, top * 1.05)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels)
    return nan_y


def plot_horizons(summary: pd.DataFrame, metric: str, out_dir: Path) -> list[Path]:
    """Horizon per task (point + CI), one colour per model; left: layer, right: relative depth.

    A curve without a horizon is drawn in a shaded band above the axis: a
    hollow marker in the row 'persists' (information reaches the last layer),
    a cross in the row 'no info' (no information at any layer). Writes
    ``horizons_{metric}``.
    """
    s = _select(summary, metric, "summary")
    models, tasks = _order(s["model"]), _order(s["task"])
    colors = _colors(models)
    depth = float(s["n_layers"].max()) if "n_layers" in s.columns and s["n_layers"].notna().any() else float(
        np.nanmax(s[["horizon", "horizon_hi"]].to_numpy(dtype=float), initial=1.0))
    with _style():
        fig, (ax_abs, ax_rel) = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=DPI, layout="constrained")
        try:
            for ax, col, top, relative in ((ax_abs, "horizon", depth, False),
                                           (ax_rel, "relative_horizon", 1.0, True)):
                any_nan = bool(s[col].isna().any())
                nan_y = _no_horizon_band(ax, top, any_nan, relative)
                for i, model in enumerate(models):
                    sm = s[s["model"] == model]
                    for j, task in enumerate(tasks):
                        st = sm[sm["task"] == task]
                        if st.empty:
                            continue
                        r = st.iloc[0]
                        _point_ci(ax, j + _dodge(i, len(models)), r[col], r.get(f"{col}_lo"), r.get(f"{col}_hi"),
                                  colors[model], "o", nan_y, r.get("horizon_status"))
                    if not relative and "n_layers" in sm.columns and sm["n_layers"].notna().any():
                        ax.axhline(float(sm["n_layers"].dropna().iloc[0]), color=colors[model], ls=":", lw=1.0)
                ax.set_xticks(range(len(tasks)))
                ax.set_xticklabels([str(t) for t in tasks])
                ax.set_xlim(-0.6, len(tasks) - 0.4)
                ax.set_xlabel("task")
                ax.grid(axis="x", visible=False)
            ax_abs.set_ylabel("horizon (decoder layer)")
            ax_abs.set_title("information horizon (dotted: model depth L)")
            ax_rel.set_ylabel("relative horizon (layer / L)")
            ax_rel.set_title("relative horizon")
            handles = [Line2D([], [], color=colors[m], marker="o", ls="none", ms=7, label=str(m)) for m in models]
            _legend(fig, handles, title="model")
            _suptitle(fig, f"Information horizon per task — {metric}, 95% CI\n{_test_note(s)}")
            return save(fig, out_dir, f"horizons_{_slug(metric)}")
        finally:
            plt.close(fig)


def _test_note(s: pd.DataFrame) -> str:
    """How 'vanished' was decided, from the summary's vanishing_test and threshold columns."""
    tests = set(s["vanishing_test"].dropna()) if "vanishing_test" in s.columns else set()
    level = _threshold_label(s).replace("threshold (", "").rstrip(")") if "threshold" in s.columns else "threshold"
    if tests == {"equivalence"}:
        return f"horizon: first layer from which information is significantly below max({level}, floor) (equivalence test)"
    if tests == {"not-significant"} or not tests:
        return f"horizon: first layer from which information is not significantly above max({level}, floor) (not-significant test)"
    return "horizon: vanishing tests differ between rows"


def plot_capacity(summary: pd.DataFrame, metric: str, out_dir: Path) -> list[Path]:
    """Relative horizon per model (point + CI), one marker and colour per task.

    The 'capacity' comparison: a deeper relative horizon means the model keeps
    using visual tokens deeper. Writes ``capacity_{metric}``.
    """
    s = _select(summary, metric, "summary")
    models, tasks = _order(s["model"]), _order(s["task"])
    colors = _colors(tasks)
    markers = {t: MARKERS[j % len(MARKERS)] for j, t in enumerate(tasks)}
    with _style():
        fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI, layout="constrained")
        try:
            nan_y = _no_horizon_band(ax, 1.0, bool(s["relative_horizon"].isna().any()), relative=True)
            for i, model in enumerate(models):
                sm = s[s["model"] == model]
                for j, task in enumerate(tasks):
                    st = sm[sm["task"] == task]
                    if st.empty:
                        continue
                    r = st.iloc[0]
                    _point_ci(ax, i + _dodge(j, len(tasks)), r["relative_horizon"], r.get("relative_horizon_lo"),
                              r.get("relative_horizon_hi"), colors[task], markers[task], nan_y,
                              r.get("horizon_status"))
            ax.set_xticks(range(len(models)))
            long = max((len(str(m)) for m in models), default=0) > 14
            ax.set_xticklabels([str(m) for m in models], rotation=20 if long else 0, ha="right" if long else "center")
            ax.set_xlim(-0.6, len(models) - 0.4)
            ax.grid(axis="x", visible=False)
            ax.set_xlabel("model")
            ax.set_ylabel("relative horizon (layer / L)")
            handles = [Line2D([], [], color=colors[t], marker=markers[t], ls="none", ms=7, label=str(t)) for t in tasks]
            _legend(fig, handles, title="task")
            _title(ax, f"Capacity: how deep each model uses visual tokens — {metric}, 95% CI")
            return save(fig, out_dir, f"capacity_{_slug(metric)}")
        finally:
            plt.close(fig)


# --------------------------------------------------------------------------- per-sample heatmaps


def _sample_scores(scores: pd.DataFrame, sample_id: Any, metric: str) -> pd.DataFrame:
    sel = scores[(scores["sample_id"] == sample_id) & (scores["metric"] == metric)]
    if sel.empty:
        raise ValueError(f"no {metric!r} scores for sample {sample_id!r}")
    return sel


def _window_grid(values: pd.Series, groups: pd.DataFrame, grid_h: int, grid_w: int, k: int) -> np.ndarray:
    """Paint each window's value over its k x k cells (clipped at the grid edge); uncovered cells are NaN."""
    grid = np.full((grid_h, grid_w), np.nan)
    for g, r, c in zip(groups["group"], groups["row"], groups["col"]):
        if g in values.index:
            r0, r1, c0, c1 = window_span(r, c, (grid_h, grid_w), k)
            grid[r0:r1, c0:c1] = values[g]
    return grid


def _imshow_extent(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """A (x0, y0, x1, y1) box as imshow's extent (left, right, bottom, top), y growing downwards."""
    x0, y0, x1, y1 = box
    return (x0, x1, y1, y0)


def _load_image(path: Any, image_root: Path | None):
    """The sample's image as an RGB array, or None when it is missing or unreadable."""
    from .data import IMAGE_ERRORS, open_rgb

    found = find_image(path, image_root)
    if found is None:
        return None
    try:
        return np.asarray(open_rgb(found))
    except IMAGE_ERRORS:
        return None


def plot_token_heatmaps(scores: pd.DataFrame, groups: pd.DataFrame, samples: pd.DataFrame, sample_id: Any,
                        layers: Sequence[int], metric: str, group_size: int, out_dir: Path,
                        model: str | None = None, image_root: Path | None = None) -> list[Path]:
    """One sample's window scores over its image(s): a row of panels per image, a panel per layer
    (shared colour scale).

    Each window's score fills its k x k cells of the image's token grid, drawn
    with alpha 0.6 over the image. The grid covers the image's view -- the
    rectangle the processor showed the model (a center crop for LLaVA-1.5's
    processor), recorded per image in the samples table -- and the axes show the
    whole image. Runs without that record stretch the grid over the whole image
    and the title says the view is unknown. When the image is missing the
    heatmap is drawn alone and the title says so. A relative image path is
    tried as is and under `image_root`. Several images per sample give one
    block of rows per image (one row for up to 4 layers), and an image with
    grids of several levels (a base and a high-resolution grid, tiles and a
    thumbnail) one block per level, the tiles of a level drawn each over its
    own part of the image; groups carry their grid in the groups table's
    ``grid`` column (missing: the image's one grid, ``image``, else 0).
    Writes ``token_heatmap_{metric}_{model}_{sample}`` (``_{model}`` only if given).
    """
    sc = _sample_scores(scores, sample_id, metric)
    srow = samples[samples["sample_id"] == sample_id]
    if srow.empty:
        raise ValueError(f"sample {sample_id!r} is not in the samples table")
    srow = srow.iloc[0]
    specs = image_specs(srow)
    k = int(group_size)
    layers = [int(x) for x in layers]
    if not layers:
        raise ValueError("no layers to plot")
    present = {int(x) for x in sc["layer"].unique()}
    absent = [x for x in layers if x not in present]
    if absent:
        raise ValueError(f"layers {absent} have no {metric!r} scores for sample {sample_id!r} "
                         f"(layers present: {sorted(present)})")
    geo = groups[groups["sample_id"] == sample_id]
    if geo.empty:
        raise ValueError(f"sample {sample_id!r} has no rows in the groups table")
    on_grid = groups_grid(geo)
    per_layer = {layer: sc[sc["layer"] == layer].groupby("group")["value"].mean() for layer in layers}
    blocks = grid_blocks(specs)
    painted = {(g["index"], layer): _window_grid(per_layer[layer], geo[on_grid == g["index"]], *g["grid"], k)
               for _, _, grids in blocks for g in grids for layer in layers}
    finite = np.concatenate([g[np.isfinite(g)] for g in painted.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    pictures = [_load_image(spec["path"], image_root) for spec in specs]

    n, n_images = len(layers), len(specs)
    ncols, block = min(n, 4), math.ceil(n / 4)
    nrows = block * len(blocks)
    with _style(), sns.axes_style("white"):
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols + 1.0, 3.0 * nrows + 0.7), dpi=DPI,
                                 layout="constrained", squeeze=False)
        try:
            mappable, used = None, []
            for b, (i, level, grids) in enumerate(blocks):
                image = pictures[i]
                # each grid spans its view (it may reach past a padded image); axes stay on the image. Without an
                # image: the grids side by side in token units
                box, boxes, unit = block_extents(grids, image.shape[1::-1] if image is not None else None)
                frame = _imshow_extent(box)
                extents = [_imshow_extent(e) for e in boxes]
                xlabel, ylabel = ("image x (px)", "image y (px)") if unit == "px" else ("token column", "token row")
                block_axes = list(axes[b * block:(b + 1) * block].flat)
                where = " ".join(x for x in (f"image {i + 1}" if n_images > 1 else "", level) if x)
                for j, (ax, layer) in enumerate(zip(block_axes, layers)):
                    if image is not None:
                        ax.imshow(image, extent=frame, interpolation="bilinear")
                    for g, extent in zip(grids, extents):
                        mappable = ax.imshow(painted[g["index"], layer], extent=extent, cmap=CMAP, vmin=vmin,
                                             vmax=vmax, alpha=0.6 if image is not None else 1.0,
                                             interpolation="nearest")
                    ax.set_xlim(frame[0], frame[1])
                    ax.set_ylim(frame[2], frame[3])
                    ax.set_aspect("equal")  # tokens are square patches
                    ax.set_title(f"{where}, layer {layer}" if where else f"layer {layer}")
                    ax.tick_params(labelsize="x-small")
                    # axis labels on the outer panels of the block only
                    if j % ncols == 0:
                        ax.set_ylabel(ylabel)
                    else:
                        ax.yaxis.set_tick_params(labelleft=False)
                    if j + ncols >= n:
                        ax.set_xlabel(xlabel)
                    else:
                        ax.xaxis.set_tick_params(labelbottom=False)
                    used.append(ax)
                for ax in block_axes[n:]:
                    fig.delaxes(ax)
            fig.colorbar(mappable, ax=used, label=SHORT_LABELS.get(metric, metric), shrink=0.85)
            task = f", {srow['task']}" if "task" in srow.index and pd.notna(srow["task"]) else ""
            who = f"{model} — " if model else ""
            which = (lambda i: f"image {i + 1} " if n_images > 1 else "")
            notes = [f"({which(i)}image not found: heatmap only)" for i, im in enumerate(pictures) if im is None]
            notes += [f"({which(i)}view unknown: grid stretched over the whole image)"
                      for i, (spec, im) in enumerate(zip(specs, pictures))
                      if im is not None and any(g["view"] is None for g in spec["grids"])]
            note = "".join("\n" + x for x in notes)
            _suptitle(fig, f"{who}{metric} per {k}×{k} window, sample {sample_id}{task}{note}")
            name = "_".join(["token_heatmap", _slug(metric)] + ([_slug(model)] if model else []) + [_slug(sample_id)])
            return save(fig, out_dir, name)
        finally:
            plt.close(fig)


def plot_layer_group_heatmap(scores: pd.DataFrame, sample_id: Any, metric: str, out_dir: Path,
                             model: str | None = None) -> list[Path]:
    """Layer (y, deepest at the top) x window (x) heatmap of one sample's scores.

    Writes ``layer_group_{metric}_{model}_{sample}`` (``_{model}`` only if given).
    """
    sc = _sample_scores(scores, sample_id, metric)
    table = sc.pivot_table(index="layer", columns="group", values="value", aggfunc="mean")
    table = table.sort_index(ascending=False)
    with _style(), sns.axes_style("white"):
        fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI, layout="constrained")
        try:
            sns.heatmap(table, ax=ax, cmap=CMAP, cbar_kws={"label": SHORT_LABELS.get(metric, metric)},
                        xticklabels="auto", yticklabels="auto", rasterized=True)
            ax.set_xlabel("window (row-major index)")
            ax.set_ylabel("decoder layer")
            ax.tick_params(labelsize="x-small")
            ax.tick_params(axis="y", labelrotation=0)
            who = f"{model} — " if model else ""
            _title(ax, f"{who}{metric} per layer and window, sample {sample_id}")
            name = "_".join(["layer_group", _slug(metric)] + ([_slug(model)] if model else []) + [_slug(sample_id)])
            return save(fig, out_dir, name)
        finally:
            plt.close(fig)


# --------------------------------------------------------------------------- all at once


def spread_layers(layers: Sequence[int], n: int = 4) -> list[int]:
    """Up to `n` evenly spaced entries of the sorted `layers` (first and last included)."""
    layers = sorted({int(x) for x in layers})
    if len(layers) <= n:
        return layers
    idx = np.unique(np.round(np.linspace(0, len(layers) - 1, n)).astype(int))
    return [layers[i] for i in idx]


def make_figures(curves: pd.DataFrame, summary: pd.DataFrame, out_dir: Path, metric: str,
                 runs: list[dict] | None = None, heatmap_layers: Sequence[int] | None = None) -> list[Path]:
    """Every figure for `metric`; with `runs`, also the per-sample heatmaps of the first run.

    A run dict holds ``samples``, ``config`` (``config["group"]`` is the window
    size), ``scores`` and ``groups`` frames or a ``path`` (a ``load_runs`` dict:
    then only the drawn sample's scores and groups are read from the run
    directory), and optionally ``model``; ``path`` also resolves relative image
    paths. The heatmaps use the first sample with status 'ok' that has scores
    for `metric`, at `heatmap_layers` or up to 4 evenly spaced layers.
    """
    paths: list[Path] = []
    paths += plot_info_curves(curves, summary, metric, out_dir)
    paths += plot_info_curves(curves, summary, metric, out_dir, log=True)
    paths += plot_uniformity(curves, summary, metric, out_dir)
    paths += plot_horizons(summary, metric, out_dir)
    paths += plot_capacity(summary, metric, out_dir)
    if runs:
        paths += _run_heatmaps(runs[0], metric, out_dir, heatmap_layers)
    return paths


def _first_sample_with(run: dict, ok_ids: Sequence[Any], metric: str) -> tuple[Any, pd.DataFrame | None]:
    """The first of ``ok_ids`` that has ``metric`` scores in the run on disk, and its scores.

    Reads the first sample's scores alone; only when it lacks the metric, one
    pass over the sample_id and metric columns finds the first that has it.
    """
    from .io.runs import iter_score_pieces, read_sample_rows

    path = run["path"]
    if not ok_ids:
        return None, None
    first = read_sample_rows(path, "scores", [ok_ids[0]])
    if (first["metric"] == metric).any():
        return ok_ids[0], first
    have: set[str] = set()
    for piece in iter_score_pieces(path, ["sample_id", "metric"], required=["sample_id", "metric"]):
        table = piece.table.to_pandas()
        have.update(map(str, table.loc[table["metric"] == metric, "sample_id"].unique()))
    sid = next((s for s in ok_ids if str(s) in have), None)
    return (sid, read_sample_rows(path, "scores", [sid])) if sid is not None else (None, None)


def _run_heatmaps(run: dict, metric: str, out_dir: Path, heatmap_layers: Sequence[int] | None) -> list[Path]:
    config = run.get("config") or {}
    scores, groups, samples = run.get("scores"), run.get("groups"), run.get("samples")
    on_disk = scores is None and run.get("path") is not None  # a load_runs dict: read the drawn sample alone
    if on_disk:
        from .io.runs import table_files

        has_scores = bool(table_files(run["path"], "scores"))
        has_groups = groups is not None or bool(table_files(run["path"], "groups"))
        if not has_scores or not has_groups or samples is None:
            warnings.warn("first run has no scores/groups/samples: no per-sample heatmaps", stacklevel=3)
            return []
    elif scores is None or groups is None or samples is None or scores.empty:
        warnings.warn("first run has no scores/groups/samples: no per-sample heatmaps", stacklevel=3)
        return []
    model = run.get("model") or config.get("model") or "run"
    k = int(config.get("group") or 1)
    ok = samples if "status" not in samples.columns else samples[samples["status"] == "ok"]
    if on_disk:
        sid, scores = _first_sample_with(run, list(ok["sample_id"]), metric)
        candidates = [] if sid is None else [sid]
    else:
        have = set(scores.loc[scores["metric"] == metric, "sample_id"].unique())
        candidates = [sid for sid in ok["sample_id"] if sid in have]
    if not candidates:
        warnings.warn(f"first run has no sample with status 'ok' and {metric!r} scores: no per-sample heatmaps",
                      stacklevel=3)
        return []
    sid = candidates[0]
    if on_disk:
        from .io.runs import read_sample_rows

        groups = read_sample_rows(run["path"], "groups", [sid]) if groups is None else groups
        samples = read_sample_rows(run["path"], "samples", [sid])  # the drawn sample's whole row
    present = sorted({int(x) for x in scores.loc[(scores["sample_id"] == sid) & (scores["metric"] == metric),
                                                    "layer"].unique()})
    layers = spread_layers(present)
    if heatmap_layers is not None:
        wanted = [int(x) for x in heatmap_layers]
        kept = [x for x in wanted if x in present]
        if len(kept) < len(wanted):
            warnings.warn(f"layers {sorted(set(wanted) - set(kept))} were not scanned; plotting {kept or layers}",
                          stacklevel=3)
        layers = kept or layers
    root = run.get("path")
    paths = plot_token_heatmaps(scores, groups, samples, sid, layers, metric, k, out_dir, model=model,
                                image_root=Path(root) if root else None)
    paths += plot_layer_group_heatmap(scores, sid, metric, out_dir, model=model)
    return paths


# --------------------------------------------------------------------------- token pruning

# Fixed colour/marker slots for the pruning methods of horizon.prune.METHODS, so a method keeps its colour
# across figures; other base methods follow in sorted order.
PRUNE_METHODS = ("random", "fastv", "divprune", "dart", "vtw", "info")
PRUNE_COLUMNS = ("method", "kind", "budget", "switch_layer", "avg_tokens", "accuracy")
_PRUNE_KINDS = ("single", "hybrid")


def _horizon_for(horizon: Horizon | Mapping | None, pair: tuple) -> Horizon:
    """`horizon` is one Horizon (every panel row) or a {(model, task): Horizon} mapping."""
    if isinstance(horizon, Horizon):
        return horizon
    found = horizon.get(pair) if horizon is not None else None
    return found if isinstance(found, Horizon) else Horizon(PERSISTS)


def _base_method(method: Any) -> str:
    """The method before the first '+' ('divprune+random' -> 'divprune'): hybrids share its colour."""
    return str(method).split("+", 1)[0].strip()


def _method_styles(bases: Iterable[str]) -> dict[str, tuple[tuple, str]]:
    """(colour, marker) per base method: PRUNE_METHODS in fixed slots, the rest after them, sorted."""
    extra = sorted(set(bases) - set(PRUNE_METHODS))
    slots = {b: i for i, b in enumerate((*PRUNE_METHODS, *extra))}
    pal = sns.color_palette(PALETTE, 10)
    return {b: (pal[i % len(pal)], MARKERS[i % len(MARKERS)]) for b, i in slots.items()}


def _check_prune_results(results: Any) -> pd.DataFrame:
    """A normalised copy of `results`: numeric columns as float, ``_pair`` = (model, task) (None when absent)."""
    if not isinstance(results, pd.DataFrame):
        raise HorizonError(f"prune results must be a pandas DataFrame, not {type(results).__name__}")
    missing = [c for c in PRUNE_COLUMNS if c not in results.columns]
    if missing:
        raise HorizonError(f"prune results are missing column(s) {', '.join(missing)} "
                           f"(need {', '.join(PRUNE_COLUMNS)})")
    if results.empty:
        raise HorizonError("prune results are empty: nothing to plot")
    r = results.copy()
    r["kind"] = r["kind"].astype(str).str.strip().str.lower()
    bad = sorted(set(r["kind"]) - set(_PRUNE_KINDS))
    if bad:
        raise HorizonError(f"prune results: unknown kind(s) {', '.join(map(repr, bad))} (use 'single' or 'hybrid')")
    for col in ("budget", "switch_layer", "avg_tokens", "accuracy", "accuracy_std", "n_seeds"):
        if col in r.columns:
            r[col] = pd.to_numeric(r[col], errors="coerce").astype(float)
    no_switch = _order(r.loc[(r["kind"] == "hybrid") & r["switch_layer"].isna(), "method"])
    if no_switch:
        raise HorizonError(f"prune results: hybrid method(s) {', '.join(map(repr, no_switch))} have rows "
                           "without a switch_layer")
    r["method"] = r["method"].astype(str)

    def key(col: str) -> list:
        if col not in r.columns:
            return [None] * len(r)
        return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in r[col]]

    r["_pair"] = list(zip(key("model"), key("task")))
    return r


def _pair_title(pair: tuple) -> str:
    return " / ".join(str(v) for v in pair if v is not None)


def _prune_line(ax, rows: pd.DataFrame, x: str, color, marker: str, hybrid: bool, label: str) -> Line2D:
    """One method's line (markers; dashed and hollow for a hybrid) with ±std error bars where std > 0."""
    rows = rows[np.isfinite(rows[x]) & np.isfinite(rows["accuracy"])].sort_values([x, "budget"], kind="stable")
    style = {"color": color, "marker": marker, "ms": 5.5, "lw": 1.6, "ls": "--" if hybrid else "-",
             "mfc": "white" if hybrid else color, "mec": color, "mew": 1.3}
    ax.plot(rows[x], rows["accuracy"], label=label, zorder=3, **style)
    if "accuracy_std" in rows.columns:
        err = rows[np.isfinite(rows["accuracy_std"]) & (rows["accuracy_std"] > 0)]
        if not err.empty:
            ax.errorbar(err[x], err["accuracy"], yerr=err["accuracy_std"], fmt="none", ecolor=color, elinewidth=1.1,
                        capsize=2.5, capthick=1.1, zorder=2)
    return Line2D([], [], label=label, **style)


def _hybrid_rows(rows: pd.DataFrame, h: Horizon) -> tuple[pd.DataFrame, str]:
    """A hybrid method's rows at the horizon's switch layer if it has any, else at its smallest switch layer.

    Returns the rows and the legend note saying which.
    """
    if h.found:
        at = rows[rows["switch_layer"] == h.switch]
        if not at.empty:
            return at, f"switch {h.switch} = horizon"
    first = float(rows["switch_layer"].min())
    return rows[rows["switch_layer"] == first], f"switch {first:g}, earliest"


def _median_budget(budgets: Iterable[float]) -> float | None:
    """The median of the budgets present; with an even count, the lower middle one (a budget that exists)."""
    vals = sorted({float(b) for b in budgets if _finite(b)})
    return vals[(len(vals) - 1) // 2] if vals else None


def _prune_row(ax_tok, ax_sw, rp: pd.DataFrame, h: Horizon, unpruned: float | None, pair: tuple,
               styles: dict) -> list:
    """Draw one (model, task)'s panels; return its legend handles."""
    singles, hybrids = rp[rp["kind"] == "single"], rp[rp["kind"] == "hybrid"]
    order = {b: i for i, b in enumerate(styles)}

    def methods(frame: pd.DataFrame) -> list[str]:
        return sorted(_order(frame["method"]), key=lambda m: (order[_base_method(m)], m))

    handles: list = []
    for m in methods(singles):
        col, mk = styles[_base_method(m)]
        handles.append(_prune_line(ax_tok, singles[singles["method"] == m], "avg_tokens", col, mk, False, m))
    for m in methods(hybrids):
        col, mk = styles[_base_method(m)]
        rows, note = _hybrid_rows(hybrids[hybrids["method"] == m], h)
        handles.append(_prune_line(ax_tok, rows, "avg_tokens", col, mk, True, f"{m} ({note})"))
    ax_tok.set_xlabel("average visual tokens per layer")
    ax_tok.set_ylabel("accuracy")
    who = _pair_title(pair)
    _title(ax_tok, f"{who}: accuracy vs visual tokens" if who else "accuracy vs visual tokens")

    if ax_sw is not None:
        budget = _median_budget(hybrids["budget"])
        at = hybrids[hybrids["budget"] == budget] if budget is not None else hybrids.iloc[:0]
        for m in methods(at):
            col, mk = styles[_base_method(m)]
            _prune_line(ax_sw, at[at["method"] == m], "switch_layer", col, mk, True, m)
        if h.found:
            if _finite(h.lo) and _finite(h.hi):
                ax_sw.axvspan(min(h.lo, h.hi), max(h.lo, h.hi), color="0.5", alpha=0.18, lw=0, zorder=0)
            ax_sw.axvline(h.layer, color="0.25", ls="--", lw=1.3, zorder=1, label="information horizon")
        else:
            note = "no information at any layer" if h.status == NO_INFORMATION else "no horizon found"
            ax_sw.text(0.5, 0.04, note, transform=ax_sw.transAxes, ha="center", va="bottom",
                       fontsize="small", color="0.3")
        ax_sw.set_xlabel("switch layer (random pruning from this decoder layer)")
        ax_sw.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_sw.tick_params(axis="y", labelleft=True)
        depth = f", L = {h.n_layers}" if h.n_layers else ""
        what = f"hybrids at budget {budget:g}{depth}" if budget is not None else "hybrids"
        _title(ax_sw, f"{who}: accuracy vs switch layer ({what})" if who else f"accuracy vs switch layer ({what})")

    if _finite(unpruned):
        for ax in (ax_tok, ax_sw):
            if ax is not None:
                ax.axhline(float(unpruned), color="0.2", ls=":", lw=1.4, zorder=1, label="no pruning")
        handles.append(Line2D([], [], color="0.2", ls=":", lw=1.4, label="no pruning"))
    if ax_sw is not None and h.found:
        band = _finite(h.lo) and _finite(h.hi)
        line = Line2D([], [], color="0.25", ls="--", lw=1.3, label="information horizon")
        handles.append((Patch(color="0.5", alpha=0.18, lw=0), line) if band else line)
    return handles


def _prune_tradeoff_figure(results: pd.DataFrame, *, horizon: Mapping | None = None,
                           unpruned: float | None = None) -> Figure:
    """The figure that :func:`prune_tradeoff` saves (still open: the caller closes it).

    One row of panels per (model, task); each row has its own legend outside
    its right-hand panel, since a hybrid's switch layer can differ per row.
    """
    r = _check_prune_results(results)
    pairs = _order(r["_pair"])
    has_hybrid = bool((r["kind"] == "hybrid").any())
    styles = _method_styles(_base_method(m) for m in r["method"])
    ncols, nrows = (2 if has_hybrid else 1), len(pairs)
    width = 11.0 if has_hybrid else FIGSIZE[0] + 1.6
    with _style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, 4.2 + 3.6 * (nrows - 1)), dpi=DPI,
                                 layout="constrained", squeeze=False, sharey="row")
        try:
            for row, pair in zip(axes, pairs):
                rp = r[[p == pair for p in r["_pair"]]]
                h = _horizon_for(horizon, pair)
                handles = _prune_row(row[0], row[1] if has_hybrid else None, rp, h, unpruned, pair, styles)
                labels = [h_.get_label() if isinstance(h_, Line2D) else "information horizon" for h_ in handles]
                row[-1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small",
                               borderaxespad=0.0)
            notes = []
            if has_hybrid:
                notes.append("solid: one stage; dashed, hollow: hybrid (shallow method, then random from the "
                             "switch layer)")
            std = r["accuracy_std"] if "accuracy_std" in r.columns else pd.Series(dtype=float)
            if (std > 0).any():
                seeds = sorted({int(n) for n in r.get("n_seeds", pd.Series(dtype=float)) if _finite(n) and n > 1})
                over = "" if not seeds else (f" over {seeds[0]} seeds" if len(seeds) == 1
                                             else f" over {seeds[0]}–{seeds[-1]} seeds")
                notes.append(f"error bars: ±1 s.d.{over}")
            note = "\n" + "; ".join(notes) if notes else ""
            _suptitle(fig, f"Token pruning: accuracy vs visual tokens kept{note}")
        except BaseException:
            plt.close(fig)
            raise
    return fig


def prune_tradeoff(results: pd.DataFrame, out: str | Path, *, horizon: Horizon | Mapping | None = None,
                   unpruned: float | None = None, name: str = "prune_tradeoff") -> list[Path]:
    """Accuracy of token-pruning schedules: vs visual tokens kept and, for hybrids, vs switch layer.

    `results` has one row per evaluated schedule with columns ``method``,
    ``kind`` ("single" or "hybrid"), ``budget``, ``switch_layer`` (NaN for
    singles), ``avg_tokens``, ``accuracy`` and optionally ``accuracy_std``,
    ``n_seeds``, ``schedule``, ``model`` and ``task``; each (model, task) pair
    gets its own row of panels, titled "model / task".

    Left panel: accuracy vs average visual tokens per layer, one line per
    method (solid: single stage, dashed: hybrid), ±std error bars where std > 0.
    A hybrid is drawn at the horizon's switch layer (the horizon rounded up)
    when it has rows there, else at its smallest switch layer; its legend
    label says which. Right panel (only when there are hybrids): accuracy vs
    switch layer at the median budget present, with the horizon as a dashed
    vertical line over its CI band, or the note "no horizon found" ("no
    information at any layer" for that status).

    `horizon` is a :class:`~horizon.records.Horizon` for every row of panels,
    or a mapping from ``(model, task)`` to one. `unpruned` is the unpruned accuracy, a
    dotted "no pruning" line. One colour (and marker) per base method, the
    part before "+", so a hybrid shares its shallow method's colour.

    Size: 11.0 x (4.2 + 3.6 * (rows - 1)) inches, 8.0 wide without hybrids.
    Writes ``out/{name}.png`` and ``out/{name}.pdf``; raises
    :class:`~horizon.errors.HorizonError` naming any missing column.
    """
    fig = _prune_tradeoff_figure(results, horizon=horizon, unpruned=unpruned)
    try:
        with _style():
            return save(fig, Path(out), name)
    finally:
        plt.close(fig)
