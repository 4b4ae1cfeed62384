"""What the report shows, assembled from the run schema alone (the README's Run directory section) as one
JSON-ready dict.

Nothing here needs a model or a scan: any directory that follows the run
schema (written by ``horizon scan``, by hand or by another tool) makes a
report. The statistics are ``horizon analyze``'s own (:func:`horizon.stats.load_runs`,
:func:`horizon.stats.analyze_frames` with the same :class:`~horizon.stats.StatsParams`),
so the summary, curves and comparisons are the numbers ``analyze`` writes.

The per-sample part holds, for each run, its first ``max_samples`` samples:
question, answer, prediction, task and status, the image(s) downscaled and
embedded once per distinct file (keyed by the file's content hash: runs of
several models on one dataset share them), every window's rectangle on the
image (:mod:`horizon.layout`, the geometry the static heatmaps draw) and,
per metric, the window scores of every scanned layer. Bulk numbers are
rounded to ``digits`` significant digits; the summary and the comparisons
keep full precision.

Output is deterministic: the same runs give the same dict, in the same order
(no timestamps, no absolute paths; images re-encoded by PIL with fixed
settings).
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import HorizonError
from ..io import runs as store
from ..layout import block_extents, find_image, grid_blocks, groups_grid, image_specs, span_box, window_span
from ..options import ESTIMATORS
from ..records import Horizon
from ..scores import RAW_METRICS
from ..stats import StatsParams, analyze_frames, load_runs

SAMPLE_COLUMNS = ["sample_id", "task", "question", "answer", "clean_pred", "status", "image", "images", "grid_h",
                  "grid_w"]
GROUP_COLUMNS = ["sample_id", "group", "row", "col", "image", "grid"]


# ---------------------------------------------------------------- numbers


def number(value: Any, digits: int | None = None) -> float | int | None:
    """A JSON number: None for a missing or non-finite value, ``digits`` significant digits when given."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}") if digits else value


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return " | ".join(str(v) for v in value)
    return str(value)


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb[:3])


# ---------------------------------------------------------------- what a run is


def estimator_of(config: dict[str, Any]) -> str | None:
    """The estimator whose scores a run holds (``gradient``, ``hybrid``), or None for measured scores."""
    name = config.get("estimator")
    if name in ESTIMATORS and name != "exact":
        return str(name)
    return "estimate" if config.get("estimated") else None


def _run_label(run: dict[str, Any], tasks: Sequence[str]) -> str:
    protocol = run["config"].get("protocol")
    parts = [run["model"], "/".join(tasks) or "no tasks"] + ([str(protocol)] if protocol else [])
    return " · ".join(parts) + f" ({Path(run['path']).name})"


# ---------------------------------------------------------------- images


class ImageStore:
    """Images embedded once each: file content hash -> data URI of the downscaled picture."""

    def __init__(self, side: int) -> None:
        self.side = side
        self.uris: dict[str, str] = {}
        self.sizes: dict[str, tuple[int, int]] = {}
        self._by_path: dict[Path, str | None] = {}

    def add(self, path: Path) -> str | None:
        """The key of the image at ``path`` (None when it cannot be read); encodes it on first sight."""
        path = path.resolve()
        if path in self._by_path:
            return self._by_path[path]
        from ..data import IMAGE_ERRORS, open_rgb

        try:
            raw = path.read_bytes()
            key = hashlib.sha1(raw).hexdigest()[:16]
            if key not in self.uris:
                picture = open_rgb(path)
                self.sizes[key] = picture.size
                self.uris[key] = self._encode(picture)
        except (*IMAGE_ERRORS, OSError):
            key = None
        self._by_path[path] = key
        return key

    def _encode(self, picture) -> str:
        """The picture with its longest side at most ``side`` pixels, as the smaller of a PNG and a JPEG.

        Flat synthetic pictures are smaller (and sharp) as PNG, photographs as
        JPEG (quality 85); both encoders are deterministic for fixed settings.
        """
        from PIL import Image

        w, h = picture.size
        scale = min(1.0, self.side / max(w, h))
        if scale < 1.0:
            picture = picture.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
        encoded = []
        for fmt, mime, options in (("PNG", "image/png", {"optimize": True}),
                                   ("JPEG", "image/jpeg", {"quality": 85})):
            buffer = io.BytesIO()
            picture.save(buffer, format=fmt, **options)
            encoded.append((len(buffer.getvalue()), mime, buffer.getvalue()))
        size, mime, data = min(encoded, key=lambda e: e[0])
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# ---------------------------------------------------------------- one sample's geometry


def sample_layout(srow: dict[str, Any], groups: pd.DataFrame, k: int, images: ImageStore,
                  image_root: Path | None) -> tuple[list[dict[str, Any]], list[list[float]]]:
    """The sample's drawing blocks and, per window (in ``groups`` order), [block, x0, y0, x1, y1].

    A block is one image's grids of one level (:func:`horizon.layout.grid_blocks`); its ``frame`` is the
    image in its pixels, or the grids side by side in token units when the image is missing and its size
    unrecorded. A window on no recorded grid gets no row (None).
    """
    specs = image_specs(srow)
    keys = [images.add(p) if (p := find_image(spec["path"], image_root)) is not None else None for spec in specs]
    blocks, where = [], {}
    n_images = len(specs)
    for b, (i, level, grids) in enumerate(grid_blocks(specs)):
        key = keys[i]
        size = images.sizes[key] if key is not None else specs[i]["size"]
        frame, extents, unit = block_extents(grids, size)
        notes = []
        if key is None:
            notes.append("image not found: windows only")
        elif any(g["view"] is None for g in grids):
            notes.append("view unknown: grid stretched over the whole image")
        label = " ".join(x for x in (f"image {i + 1}" if n_images > 1 else "", level) if x)
        blocks.append({"image": key, "frame": [number(v, 6) for v in frame], "unit": unit, "label": label,
                       "notes": notes, "grids": [[number(v, 6) for v in e] for e in extents]})
        for g, extent in zip(grids, extents):
            where[g["index"]] = (b, g["grid"], extent)
    windows = []
    on_grid = groups_grid(groups)
    for (_, g), grid_index in zip(groups.iterrows(), on_grid):
        if grid_index not in where:
            windows.append(None)
            continue
        b, shape, extent = where[grid_index]
        box = span_box(window_span(g["row"], g["col"], shape, k), shape, extent)
        windows.append([b, *[number(v, 6) for v in box]])
    return blocks, windows


# ---------------------------------------------------------------- runs


def _metrics_of(scores: pd.DataFrame, metric: str | None) -> list[str]:
    present = sorted({str(m) for m in scores["metric"].unique()})
    if metric is not None:
        return [m for m in present if m == metric]
    # the analysed metrics first (as analyze orders them), raw levels after them
    return [m for m in present if m not in RAW_METRICS] + [m for m in present if m in RAW_METRICS]


def run_samples(run: dict[str, Any], metric: str | None, images: ImageStore, max_samples: int | None,
                digits: int) -> dict[str, Any]:
    """One run's sample view: its first ``max_samples`` samples with windows and per-metric window scores."""
    path = Path(run["path"])
    config = run["config"]
    k = int(config.get("group") or 1)
    samples = store.read_columns(path, "samples", SAMPLE_COLUMNS)
    samples = samples.assign(sample_id=samples.sample_id.astype(str))
    if max_samples is not None:
        samples = samples.head(max_samples)
    ids = samples.sample_id.tolist()
    groups = store.read_sample_rows(path, "groups", ids) if ids and store.table_files(path, "groups") else None
    if groups is not None:
        groups = groups.assign(sample_id=groups.sample_id.astype(str))
    columns = ["sample_id", "layer", "group", "metric", "value"]
    scores = store.read_sample_rows(path, "scores", ids) if ids and store.table_files(path, "scores") else \
        pd.DataFrame(columns=columns)
    has_exact = "exact" in scores.columns
    scores = scores.assign(sample_id=scores.sample_id.astype(str), metric=scores.metric.astype(str))
    metrics = _metrics_of(scores, metric) if len(scores) else []
    scores = scores[scores.metric.isin(metrics)]
    layers = sorted(int(x) for x in scores.layer.unique()) if len(scores) else \
        [int(x) for x in (config.get("layers") or [])]
    layer_index = {layer: i for i, layer in enumerate(layers)}
    by_sample = dict(tuple(scores.groupby("sample_id", sort=False))) if len(scores) else {}
    by_groups = dict(tuple(groups.groupby("sample_id", sort=False))) if groups is not None and len(groups) else {}
    out = []
    for srow in samples.to_dict("records"):
        sid = srow["sample_id"]
        status = _text(srow.get("status")) or "ok"
        entry = {"id": sid, "task": _text(srow.get("task")), "status": status,
                 "question": _text(srow.get("question")), "answer": _text(srow.get("answer")),
                 "prediction": _text(srow.get("clean_pred"))}
        geo = by_groups.get(sid)
        if geo is not None:
            geo = geo.sort_values("group", kind="stable").drop_duplicates("group")
            try:
                entry["blocks"], entry["windows"] = sample_layout(srow, geo, k, images, path)
            except (KeyError, TypeError, ValueError):
                entry["blocks"], entry["windows"] = [], []
                entry["layout_note"] = "the samples table records no readable grid for this sample"
            window_index = {int(g): i for i, g in enumerate(geo.group)}
        else:
            entry["blocks"], entry["windows"], window_index = [], [], {}
        rows = by_sample.get(sid)
        values, exact = {}, {}
        if rows is not None and window_index:
            n_windows = len(window_index)
            for name, part in rows.groupby("metric", sort=False):
                grid = np.full(len(layers) * n_windows, np.nan)
                li = part.layer.map(layer_index).to_numpy()
                wi = part.group.map(window_index).to_numpy()
                ok = ~(pd.isna(li) | pd.isna(wi))
                pos = li[ok].astype(np.int64) * n_windows + wi[ok].astype(np.int64)
                grid[pos] = part.value.to_numpy(np.float64)[ok]
                values[str(name)] = [number(v, digits) for v in grid]
                if has_exact:
                    flags = np.zeros(len(grid), dtype=bool)
                    flags[pos] = part.exact.fillna(False).to_numpy(bool)[ok]
                    exact[str(name)] = "".join("1" if f else "0" for f in flags)
        entry["scores"] = {m: values[m] for m in metrics if m in values}
        if exact:
            entry["exact"] = {m: exact[m] for m in metrics if m in exact}
        out.append(entry)
    tasks = sorted({s["task"] for s in out if s["task"] is not None})
    floor = run.get("floor") or {}
    return {
        "name": Path(run["path"]).name, "label": _run_label(run, tasks), "model": run["model"],
        "protocol": config.get("protocol"), "group": k, "n_layers": run["n_layers"], "layers": layers,
        "metrics": metrics, "floor": {m: number(floor[m]) for m in metrics if m in floor},
        "estimator": estimator_of(config), "n_samples_total": int(len(run["samples"])), "samples": out,
    }


# ---------------------------------------------------------------- tables


def _json_row(record: dict[str, Any]) -> dict[str, Any]:
    """A table row as JSON: numbers through :func:`number` (NaN as null), everything else as text."""
    return {k: (number(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else _text(v))
            for k, v in record.items()}


def _summary_rows(summary: pd.DataFrame, estimated: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    rows = []
    for r in summary.to_dict("records"):
        row = _json_row(r)
        row["status_text"] = Horizon.from_record(r).describe()
        row["estimate"] = estimated.get((str(r["model"]), str(r["task"])))
        rows.append(row)
    return rows


def _curve_series(curves: pd.DataFrame, digits: int) -> list[dict[str, Any]]:
    series = []
    columns = ["mean_info", "mean_info_lo", "mean_info_hi", "uniformity", "uniformity_lo", "uniformity_hi"]
    for (model, task, metric), part in curves.groupby(["model", "task", "metric"], sort=False):
        part = part.sort_values("layer")
        entry = {"model": str(model), "task": str(task), "metric": str(metric),
                 "n_layers": number(part.n_layers.iloc[0]), "layers": [int(x) for x in part.layer]}
        for column in columns:
            entry[column] = [number(v, digits) for v in part[column]] if column in part else []
        entry["n_samples"] = [int(x) for x in part.n_samples]
        series.append(entry)
    return series


def _comparison_rows(comparisons: pd.DataFrame) -> list[dict[str, Any]]:
    return [_json_row(r) for r in comparisons.to_dict("records")]


def _colors(keys: Sequence[str]) -> dict[str, str]:
    """The static figures' colour per key (seaborn's colorblind palette, in the keys' order)."""
    from ..plots import _colors as palette

    return {str(k): _hex(c) for k, c in palette(list(keys)).items()}


# ---------------------------------------------------------------- pruning grids


def read_grid(folder: str | Path) -> pd.DataFrame:
    """The ``grid.csv`` of a ``horizon prune-grid`` output folder; one line naming the folder when it is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HorizonError(f"--grid {folder}: not a folder (give the --out folder of horizon prune-grid)")
    path = folder / "grid.csv"
    if not path.is_file():
        raise HorizonError(f"--grid {folder}: no grid.csv in it (give the --out folder of horizon prune-grid)")
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise HorizonError(f"--grid {path}: not a readable CSV table ({str(exc).splitlines()[0]})") from None
    from ..plots import PRUNE_COLUMNS

    missing = [c for c in PRUNE_COLUMNS if c not in frame.columns]
    if missing:
        raise HorizonError(f"--grid {path}: missing column(s) {', '.join(missing)} (need {', '.join(PRUNE_COLUMNS)}: "
                           "the grid.csv horizon prune-grid writes)")
    return frame


def _grid_metric(folder: Path) -> str | None:
    """The metric whose horizon the grid switched at (its cells' eval.json), None when none says."""
    import json

    for path in sorted(folder.glob("*/eval.json")):
        try:
            metric = json.loads(path.read_text()).get("config", {}).get("horizon_metric")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(metric, str) and metric:
            return metric
    return None


def grid_panels(folder: str | Path, summary: pd.DataFrame, digits: int) -> dict[str, Any]:
    """One pruning grid as the page draws it: per (model, task), the lines of ``plots.prune_tradeoff``.

    The same frame the static figure reads (the grid's rows but the unpruned
    one; the unpruned accuracy as a reference line), the same choices: a
    hybrid at the horizon's switch layer when it has rows there, else at its
    earliest (:func:`horizon.plots._hybrid_rows`), the switch-layer panel at
    the median budget present. The horizon is the report's own summary row
    for the grid's model, task and horizon metric when the runs hold it.
    """
    from ..plots import _base_method, _check_prune_results, _hybrid_rows, _median_budget, _method_styles, _order
    from ..records import PERSISTS

    folder = Path(folder)
    frame = read_grid(folder)
    metric = _grid_metric(folder)
    budgets = frame.budget.map(lambda b: float(str(b).rstrip("%")) if isinstance(b, str) else b)
    frame = frame.assign(budget=budgets)
    pruned = frame[frame.kind.astype(str) != "none"]
    if pruned.empty:
        raise HorizonError(f"--grid {folder}: grid.csv holds no pruned schedule")
    r = _check_prune_results(pruned)
    styles = {b: _hex(c) for b, (c, _) in _method_styles(_base_method(m) for m in r["method"]).items()}
    panels = []
    for pair in _order(r["_pair"]):
        model, task = pair
        rp = r[[p == pair for p in r["_pair"]]]
        match = summary[(summary.model.astype(str) == str(model)) & (summary.task.astype(str) == str(task))
                        & (summary.metric == metric)] if metric else summary.iloc[:0]
        h = Horizon.from_record(match.iloc[0].to_dict()) if len(match) else Horizon(PERSISTS)
        none = frame[(frame.kind.astype(str) == "none") & (frame.model.astype(str) == str(model))
                     & (frame.task.astype(str) == str(task))] if {"model", "task"} <= set(frame.columns) else \
            frame[frame.kind.astype(str) == "none"]
        lines = []
        order = {b: i for i, b in enumerate(styles)}

        def methods(rows: pd.DataFrame) -> list[str]:
            return sorted(_order(rows["method"]), key=lambda m: (order[_base_method(m)], m))

        def points(rows: pd.DataFrame, x: str) -> list[list[Any]]:
            rows = rows[np.isfinite(rows[x]) & np.isfinite(rows["accuracy"])].sort_values([x, "budget"],
                                                                                          kind="stable")
            std = rows["accuracy_std"] if "accuracy_std" in rows else pd.Series(np.nan, index=rows.index)
            return [[number(a, digits), number(b, digits), number(s, digits), number(bu, digits)]
                    for a, b, s, bu in zip(rows[x], rows["accuracy"], std, rows["budget"])]

        singles, hybrids = rp[rp.kind == "single"], rp[rp.kind == "hybrid"]
        for m in methods(singles):
            lines.append({"method": m, "hybrid": False, "color": styles[_base_method(m)], "label": m,
                          "points": points(singles[singles.method == m], "avg_tokens")})
        for m in methods(hybrids):
            rows, note = _hybrid_rows(hybrids[hybrids.method == m], h)
            lines.append({"method": m, "hybrid": True, "color": styles[_base_method(m)], "label": f"{m} ({note})",
                          "points": points(rows, "avg_tokens")})
        budget = _median_budget(hybrids["budget"])
        at = hybrids[hybrids["budget"] == budget] if budget is not None else hybrids.iloc[:0]
        switch_lines = [{"method": m, "hybrid": True, "color": styles[_base_method(m)], "label": m,
                         "points": points(at[at.method == m], "switch_layer")} for m in methods(at)]
        panels.append({
            "model": None if model is None else str(model), "task": None if task is None else str(task),
            "lines": lines, "switch_lines": switch_lines, "budget": number(budget),
            "unpruned": number(none.accuracy.iloc[0]) if len(none) else None,
            "horizon": {"status": h.status, "text": h.describe(), "layer": number(h.layer), "lo": number(h.lo),
                        "hi": number(h.hi), "n_layers": number(h.n_layers), "metric": metric},
        })
    return {"name": folder.name, "metric": metric, "panels": panels}


# ---------------------------------------------------------------- everything


def report_data(runs: Sequence[str | Path], *, grids: Sequence[str | Path] = (), metric: str | None = None,
                params: StatsParams | None = None, max_samples: int | None = 100, image_side: int = 160,
                digits: int = 4) -> dict[str, Any]:
    """Everything the page shows, as a JSON-ready dict, and ``analyze``'s frames under ``"_frames"``.

    ``metric`` restricts the report to one metric (as ``analyze --metric``);
    ``max_samples`` (None: all) caps the samples per run in the sample view
    (the statistics use every sample).
    """
    params = params or StatsParams()
    loaded = load_runs(runs)
    result = analyze_frames(loaded, metric=metric, params=params)
    grid_data = [grid_panels(folder, result["summary"], digits) for folder in grids]
    images = ImageStore(image_side)
    run_views = [run_samples(run, metric, images, max_samples, digits) for run in loaded]
    estimated: dict[tuple[str, str], str] = {}
    for run, view in zip(loaded, run_views):
        if view["estimator"]:
            for task in sorted({str(t) for t in run["samples"].task.dropna()}):
                estimated[(run["model"], task)] = view["estimator"]
    summary, curves = result["summary"], result["curves"]
    metrics = sorted({str(m) for m in summary.metric})
    from ..plots import SHORT_LABELS, info_label

    data = {
        "horizon_version": __version__,
        "params": {k: number(v) if isinstance(v, (int, float)) else v for k, v in asdict(params).items()},
        "metrics": metrics,
        "labels": {m: info_label(m) for m in metrics},
        "short_labels": {m: SHORT_LABELS.get(m, m) for v in run_views for m in v["metrics"]},
        "models": [str(m) for m in dict.fromkeys(summary.model)],
        "task_colors": _colors(list(dict.fromkeys(str(t) for t in curves.task))),
        "summary": _summary_rows(summary, estimated),
        "curves": _curve_series(curves, digits),
        "comparisons": _comparison_rows(result["comparisons"]),
        "runs": run_views,
        "images": dict(sorted(images.uris.items())),
        "image_sizes": {k: list(v) for k, v in sorted(images.sizes.items())},
        "grids": grid_data,
    }
    data["_frames"] = result
    return data
