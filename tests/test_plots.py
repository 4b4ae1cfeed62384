"""Figures: each public plot function writes a PNG + PDF of the documented size that is not blank.

Rendering a figure costs about a second on a small CPU, so the figures are
made once per module (``make_figures`` on synthetic frames and a tiny fake run)
and the tests inspect the files and the captured Figure objects.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from horizon import plots

DPI = 150
N_LAYERS = 12
MODELS = ("toy-small", "toy-large")
TASKS = ("textvqa", "gqa")
TWO_PANELS = (10.0, 4.0)  # figure sizes in inches, documented in horizon/plots.py
ONE_PANEL = (6.4, 4.0)


def make_frames(nan_horizon: tuple[str, str] | None = None, empty: tuple[str, str] | None = None,
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """curves/summary for 2 models x 2 tasks x 12 layers with an exponentially decaying curve.

    The tail of every curve is zero, then slightly negative (noise around zero),
    as real estimates are past the horizon. ``nan_horizon=(model, task)`` (or
    ``("*", "*")`` for all) gives that row no horizon (status persists);
    ``empty=(model, task)`` gives it the status no-information.
    """
    curves, summary = [], []
    for mi, model in enumerate(MODELS):
        for ti, task in enumerate(TASKS):
            decay = 0.35 - 0.1 * mi - 0.08 * ti
            layers = np.arange(N_LAYERS)
            mean = 2.0 * np.exp(-layers / (decay * N_LAYERS) * 1.5)
            mean[-2:] = [0.0, -1e-4]
            unif = np.clip(0.4 + 0.06 * layers, 0, 1)
            for layer, m, u in zip(layers, mean, unif, strict=True):
                curves.append({
                    "model": model, "task": task, "metric": "kl", "layer": int(layer), "n_layers": N_LAYERS,
                    "relative_depth": layer / N_LAYERS, "n_samples": 8, "mean_info": m, "mean_info_lo": 0.8 * m - 0.01,
                    "mean_info_hi": 1.2 * m + 0.01, "uniformity": u, "uniformity_lo": max(u - 0.08, 0),
                    "uniformity_hi": min(u + 0.08, 1), "entropy": min(u + 0.05, 1), "top10_share": 1 - u / 2})
            threshold_value = 0.05 * mean.max()
            h = float(np.argmax(mean < threshold_value))
            status = "found"
            if nan_horizon in ((model, task), ("*", "*")):
                h, status = np.nan, "persists"
            if empty == (model, task):
                h, status = np.nan, "no-information"
            summary.append({"horizon_status": status,
                "model": model, "task": task, "metric": "kl", "n_samples": 8, "n_layers": N_LAYERS, "horizon": h,
                "horizon_lo": h - 1, "horizon_hi": h + 1, "relative_horizon": h / N_LAYERS,
                "relative_horizon_lo": (h - 1) / N_LAYERS, "relative_horizon_hi": (h + 1) / N_LAYERS,
                "uniformity_onset": h - 3, "uniformity_onset_lo": np.nan, "uniformity_onset_hi": np.nan,
                "threshold": 0.05, "threshold_value": threshold_value, "alpha": 0.05})
    return pd.DataFrame(curves), pd.DataFrame(summary)


def make_run(root: Path) -> dict:
    """A tiny fake run: 2 samples on a 4x4 grid, 2x2 windows, 3 layers; s0 has a real 64x64 PNG, s1's is missing."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    image = root / "img.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    samples = pd.DataFrame({
        "sample_id": ["s0", "s1"], "task": ["textvqa", "gqa"], "image": [str(image), str(root / "gone.png")],
        "grid_h": [4, 4], "grid_w": [4, 4], "status": ["ok", "ok"],
    })
    groups, scores = [], []
    for sid in ("s0", "s1"):
        for g, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
            groups.append({"sample_id": sid, "group": g, "row": r, "col": c,
                               "positions": [5 + (r + i) * 4 + c + j for i in range(2) for j in range(2)]})
            for layer in range(3):  # value = (group + 1) / 2**layer
                scores.append({"sample_id": sid, "layer": layer, "group": g, "metric": "kl",
                                   "value": np.float32((g + 1) * 0.5 ** layer)})
    return {"samples": samples, "groups": pd.DataFrame(groups), "scores": pd.DataFrame(scores),
            "config": {"group": 2, "model": "org/toy model"}, "model": "org/toy model"}


class Spy:
    """Records every figure passed to plots.save (still open at that point) by file name."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.figs: dict[str, object] = {}
        real = plots.save

        def spy(fig, out_dir, name):
            self.figs[name] = fig
            return real(fig, out_dir, name)

        mp.setattr(plots, "save", spy)


def check_figure(paths: list[Path], size_in: tuple[float, float]) -> None:
    """PNG + PDF exist; the PNG has the documented pixel size and real content."""
    assert len(paths) == 2
    png, pdf = paths
    assert png.suffix == ".png" and pdf.suffix == ".pdf" and png.stem == pdf.stem
    assert png.is_file() and pdf.is_file()
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000
    with Image.open(png) as img:
        assert abs(img.width - size_in[0] * DPI) <= 2 and abs(img.height - size_in[1] * DPI) <= 2, img.size
        rgb = np.asarray(img.convert("RGB"))
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    colours = np.unique(packed)
    assert len(colours) > 20, f"only {len(colours)} colours: blank figure?"
    non_white = (rgb < 245).any(axis=2).mean()
    assert non_white > 0.02, f"only {non_white:.1%} non-white pixels"


def legend_labels(fig) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """make_figures once, with two runs; also reports any rcParams it changed."""
    root = tmp_path_factory.mktemp("figs")
    curves, summary = make_frames()
    run = make_run(root / "run")
    before = dict(matplotlib.rcParams)
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        paths = plots.make_figures(curves, summary, root / "out", "kl", runs=[run, {**run, "model": "second"}])
    after = dict(matplotlib.rcParams)
    changed = {k for k in before if before[k] != after[k] and before[k] == before[k]}  # NaN != NaN
    return {"paths": paths, "figs": spy.figs, "out": root / "out", "changed": changed,
            "open": list(plt.get_fignums())}


@pytest.fixture(scope="module")
def made_nan(tmp_path_factory):
    """Figures for frames where toy-large has no horizon on textvqa."""
    root = tmp_path_factory.mktemp("figs_nan")
    curves, summary = make_frames(nan_horizon=(MODELS[1], TASKS[0]))
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        paths = [p for fn in (plots.plot_info_curves, plots.plot_uniformity) for p in fn(curves, summary, "kl", root)]
        paths += [p for fn in (plots.plot_horizons, plots.plot_capacity) for p in fn(summary, "kl", root)]
    return {"paths": paths, "figs": spy.figs}


def by_name(paths: list[Path], name: str) -> list[Path]:
    found = [p for p in paths if p.stem == name]
    assert [p.suffix for p in found] == [".png", ".pdf"], (name, [p.name for p in paths])
    return found


# --------------------------------------------------------------------------- make_figures


def test_make_figures_writes_every_figure_once(made):
    expected = ["capacity_kl", "horizons_kl", "info_curve_kl", "info_curve_log_kl", "uniformity_kl",
                "token_heatmap_kl_org_toy_model_s0", "layer_group_kl_org_toy_model_s0"]
    names = sorted(p.name for p in made["paths"])
    assert names == sorted(f"{n}.{ext}" for n in expected for ext in ("png", "pdf"))  # 2nd run: no heatmaps
    assert sorted(p.name for p in made["out"].iterdir()) == names


def test_figures_closed_and_global_state_untouched(made):
    assert made["open"] == [], "figures left open"
    assert not made["changed"], f"rcParams changed: {made['changed']}"


def test_save_writes_png_and_pdf(tmp_path):
    fig, ax = plt.subplots(figsize=(2.0, 1.0), dpi=DPI)
    ax.plot([0, 1], [0, 1])
    paths = plots.save(fig, tmp_path / "new" / "dir", "x")
    plt.close(fig)
    assert paths == [tmp_path / "new/dir/x.png", tmp_path / "new/dir/x.pdf"]
    with Image.open(paths[0]) as img:
        assert img.size == (300, 150)


# --------------------------------------------------------------------------- curves


def test_info_curves(made):
    check_figure(by_name(made["paths"], "info_curve_kl"), TWO_PANELS)
    fig = made["figs"]["info_curve_kl"]
    axes = fig.axes
    assert len(axes) == 2 and all(ax.get_xlabel() == "decoder layer" for ax in axes)
    assert axes[0].get_ylabel() == "information (KL, nats)"
    assert axes[0].get_yscale() == "linear"
    assert [ax.get_title() for ax in axes] == [f"{m} (L = {N_LAYERS})" for m in MODELS]
    assert legend_labels(fig) == [*TASKS, "horizon", "threshold (5% of max)"]
    colours = {tuple(c) for c in plots._colors(list(TASKS)).values()}
    for ax in axes:  # one dashed horizon and one dotted threshold line per task, in the task's colour
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        dotted = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
        assert {tuple(ln.get_color()) for ln in dashed} == colours and len(dashed) == 2
        assert len(dotted) == 2
        assert len(ax.collections) == 2  # CI bands


def test_info_curves_log(made):
    check_figure(by_name(made["paths"], "info_curve_log_kl"), TWO_PANELS)
    ax = made["figs"]["info_curve_log_kl"].axes[0]
    assert ax.get_yscale() == "symlog"
    assert ax.get_ylim()[0] < 0  # the negative tail is drawn, not dropped


def test_uniformity(made):
    check_figure(by_name(made["paths"], "uniformity_kl"), TWO_PANELS)
    fig = made["figs"]["uniformity_kl"]
    ax = fig.axes[0]
    assert ax.get_ylim() == pytest.approx((0.0, 1.02))
    assert ax.get_xlabel() == "decoder layer" and ax.get_ylabel().startswith("uniformity")
    styles = [ln.get_linestyle() for ln in ax.get_lines()]
    assert styles.count("-.") == 2 and styles.count("--") == 2  # onset and horizon per task
    assert legend_labels(fig) == [*TASKS, "uniformity onset", "horizon"]


def test_single_model_without_summary(tmp_path):
    curves, _ = make_frames()
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        paths = plots.plot_info_curves(curves[curves.model == MODELS[0]], None, "kl", tmp_path)
    check_figure(paths, ONE_PANEL)  # one panel: the default size
    fig = spy.figs["info_curve_kl"]
    assert len(fig.axes) == 1
    assert legend_labels(fig) == list(TASKS)  # no horizon or threshold marks without a summary


def test_unknown_metric_is_a_clear_error(tmp_path):
    curves, summary = make_frames()
    with pytest.raises(ValueError, match="dlogp.*metrics present: kl"):
        plots.plot_info_curves(curves, summary, "dlogp", tmp_path)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- horizons


def test_horizons(made):
    check_figure(by_name(made["paths"], "horizons_kl"), TWO_PANELS)
    fig = made["figs"]["horizons_kl"]
    ax_abs, ax_rel = fig.axes
    assert ax_abs.get_ylabel() == "horizon (decoder layer)"
    assert ax_rel.get_ylabel() == "relative horizon (layer / L)"
    assert [t.get_text() for t in ax_abs.get_xticklabels()] == list(TASKS)
    assert legend_labels(fig) == list(MODELS)
    assert "persists" not in [t.get_text() for t in ax_rel.get_yticklabels()]


def test_capacity(made):
    check_figure(by_name(made["paths"], "capacity_kl"), ONE_PANEL)
    fig = made["figs"]["capacity_kl"]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(MODELS)
    assert ax.get_ylabel() == "relative horizon (layer / L)"
    assert legend_labels(fig) == list(TASKS)
    markers = [h.get_marker() for h in fig.legends[0].legend_handles]
    assert len(set(markers)) == 2  # one marker per task


def test_missing_horizon_is_marked_not_dropped(made_nan):
    for name, size in (("horizons_kl", TWO_PANELS), ("capacity_kl", ONE_PANEL)):
        check_figure(by_name(made_nan["paths"], name), size)
        for ax in made_nan["figs"][name].axes:
            labels = [t.get_text() for t in ax.get_yticklabels()]
            assert "persists" in labels and "no info" in labels, name
    # curve figures skip the missing horizon: one dashed line fewer in toy-large's panel
    for name in ("info_curve_kl", "uniformity_kl"):
        small, large = made_nan["figs"][name].axes
        count = [[ln.get_linestyle() for ln in ax.get_lines()].count("--") for ax in (small, large)]
        assert count == [2, 1], name


def test_no_information_is_a_cross_in_its_own_row_and_named_on_the_curves(tmp_path):
    curves, summary = make_frames(nan_horizon=(MODELS[0], TASKS[1]), empty=(MODELS[1], TASKS[0]))
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        plots.plot_horizons(summary, "kl", tmp_path)
        plots.plot_info_curves(curves, summary, "kl", tmp_path)
    ax_abs = spy.figs["horizons_kl"].axes[0]
    ticks = {t.get_text(): y for t, y in zip(ax_abs.get_yticklabels(), ax_abs.get_yticks())}
    drawn = {(line.get_marker(), float(line.get_ydata()[0])) for line in ax_abs.get_lines()
             if len(line.get_ydata()) == 1}
    assert ("X", ticks["no info"]) in drawn  # the no-information curve
    assert ("o", ticks["persists"]) in drawn  # the curve whose information reaches the last layer
    small, large = spy.figs["info_curve_kl"].axes
    assert not small.texts
    assert [t.get_text().splitlines()[-1] for t in large.texts] == [str(TASKS[0])]
    assert "no information at any layer" in large.texts[0].get_text()


def test_all_horizons_missing(tmp_path):
    _curves, summary = make_frames(nan_horizon=("*", "*"))
    summary["horizon_lo"] = summary["horizon_hi"] = np.nan
    summary["relative_horizon_lo"] = summary["relative_horizon_hi"] = np.nan
    check_figure(plots.plot_horizons(summary, "kl", tmp_path), TWO_PANELS)
    check_figure(plots.plot_capacity(summary, "kl", tmp_path), ONE_PANEL)


# --------------------------------------------------------------------------- per-sample heatmaps


def test_token_heatmaps_over_image(made):
    check_figure(by_name(made["paths"], "token_heatmap_kl_org_toy_model_s0"), (3.0 * 3 + 1.0, 3.7))
    fig = made["figs"]["token_heatmap_kl_org_toy_model_s0"]
    assert "not found" not in fig.get_suptitle()
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["layer 0", "layer 1", "layer 2"]  # 3 layers scanned
    images = panels[0].get_images()
    assert len(images) == 2  # the photo, then the heatmap over it
    assert images[1].get_alpha() == pytest.approx(0.6)
    assert images[1].get_extent() == pytest.approx([0, 64, 64, 0])
    heat = np.asarray(images[1].get_array())  # layer 0: value = group + 1
    assert heat.shape == (4, 4)
    assert heat[:2, :2] == pytest.approx(np.full((2, 2), 1.0))
    assert heat[:2, 2:] == pytest.approx(np.full((2, 2), 2.0))
    assert heat[2:, 2:] == pytest.approx(np.full((2, 2), 4.0))
    assert fig.axes[-1].get_ylabel() == "KL (nats)"  # colorbar
    assert images[1].get_clim() == pytest.approx((0.25, 4.0))  # one colour scale for all layers


def test_token_heatmaps_missing_image_and_ragged_windows(tmp_path):
    run = make_run(tmp_path / "run")
    samples = run["samples"].copy()
    samples.loc[samples.sample_id == "s1", ["grid_h", "grid_w"]] = 3  # windows clip at the edge
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        groups = run["groups"].iloc[::-1]  # paint order must not matter: windows do not overlap
        paths = plots.plot_token_heatmaps(run["scores"], groups, samples, "s1", [0], "kl", 2, tmp_path)
    assert paths[0].name == "token_heatmap_kl_s1.png"
    check_figure(paths, (4.0, 3.7))
    fig = spy.figs["token_heatmap_kl_s1"]
    assert "(image not found: heatmap only)" in " ".join(fig.get_suptitle().split())
    images = fig.axes[0].get_images()
    assert len(images) == 1
    heat = np.asarray(images[0].get_array())
    assert heat.shape == (3, 3)
    assert heat[2, 2] == pytest.approx(4.0) and heat[0, 2] == pytest.approx(2.0) and heat[2, 0] == pytest.approx(3.0)


def test_token_heatmaps_many_layers_wrap(tmp_path):
    run = make_run(tmp_path / "run")
    scores = pd.concat([run["scores"].assign(layer=run["scores"].layer + 3 * i) for i in range(2)])
    samples = run["samples"].assign(image=str(tmp_path / "none.png"))  # no photo: faster to render
    paths = plots.plot_token_heatmaps(scores, run["groups"], samples, "s0", range(6), "kl", 2, tmp_path)
    check_figure(paths, (3.0 * 4 + 1.0, 3.0 * 2 + 0.7))


def test_token_heatmaps_unscanned_layer(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(ValueError, match=r"layers \[7\]"):
        plots.plot_token_heatmaps(run["scores"], run["groups"], run["samples"], "s0", [0, 7], "kl", 2, tmp_path)


def test_layer_group_heatmap(made):
    check_figure(by_name(made["paths"], "layer_group_kl_org_toy_model_s0"), ONE_PANEL)
    ax = made["figs"]["layer_group_kl_org_toy_model_s0"].axes[0]
    assert ax.get_ylabel() == "decoder layer" and ax.get_xlabel().startswith("window")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "1", "0"]  # deepest layer on top


def test_heatmaps_pick_first_ok_sample_and_scanned_layers(tmp_path):
    run = make_run(tmp_path / "run")
    run["samples"].loc[run["samples"].sample_id == "s0", "status"] = "error: image file not found"
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        with pytest.warns(UserWarning, match=r"\[9\]"):
            paths = plots._run_heatmaps(run, "kl", tmp_path, heatmap_layers=[2, 9])
    assert [p.name for p in paths] == ["token_heatmap_kl_org_toy_model_s1.png", "token_heatmap_kl_org_toy_model_s1.pdf",
                                       "layer_group_kl_org_toy_model_s1.png", "layer_group_kl_org_toy_model_s1.pdf"]
    heat = spy.figs["token_heatmap_kl_org_toy_model_s1"]
    assert [ax.get_title() for ax in heat.axes if ax.get_title()] == ["layer 2"]


def test_spread_layers():
    assert plots.spread_layers(range(32)) == [0, 10, 21, 31]
    assert plots.spread_layers([8, 0, 4]) == [0, 4, 8]


def view_run(root: Path) -> dict:
    """A sample with two images and recorded views: a 96 x 64 photo whose 4 x 4 grid spans x 16..80
    (a center crop) and a 64 x 64 photo with a 2 x 2 grid over all of it; 2x2 windows, 2 layers."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = [root / "wide.png", root / "square.png"]
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(paths[0])
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[1])
    images = [{"path": str(paths[0]), "size": [96, 64], "grid": [4, 4], "view": [16.0, 0.0, 80.0, 64.0]},
              {"path": str(paths[1]), "size": [64, 64], "grid": [2, 2], "view": [0.0, 0.0, 64.0, 64.0]}]
    samples = pd.DataFrame({"sample_id": ["m"], "task": ["t"], "image": [str(paths[0])], "grid_h": [4],
                            "grid_w": [4], "status": ["ok"], "images": [json.dumps(images)]})
    windows = [(0, 0, 0), (0, 0, 2), (0, 2, 0), (0, 2, 2), (1, 0, 0)]  # (image, row, col)
    groups = pd.DataFrame([{"sample_id": "m", "group": g, "row": r, "col": c, "positions": [g], "image": i}
                           for g, (i, r, c) in enumerate(windows)])
    scores = pd.DataFrame([{"sample_id": "m", "layer": layer, "group": g, "metric": "kl", "value": float(g + 1 + layer)}
                           for layer in range(2) for g in range(len(windows))])
    return {"samples": samples, "groups": groups, "scores": scores}


def test_token_heatmaps_one_row_per_image_over_each_view(tmp_path):
    run = view_run(tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        paths = plots.plot_token_heatmaps(run["scores"], run["groups"], run["samples"], "m", [0, 1], "kl", 2, tmp_path)
    check_figure(paths, (3.0 * 2 + 1.0, 3.0 * 2 + 0.7))  # two layers, two images: a 2 x 2 block of panels
    fig = spy.figs["token_heatmap_kl_m"]
    assert "unknown" not in fig.get_suptitle() and "not found" not in fig.get_suptitle()
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["image 1, layer 0", "image 1, layer 1",
                                                 "image 2, layer 0", "image 2, layer 1"]
    wide, square = panels[0], panels[2]
    photo, heat = wide.get_images()
    assert photo.get_extent() == pytest.approx([0, 96, 64, 0])
    assert heat.get_extent() == pytest.approx([16, 80, 64, 0])  # the grid over the crop the model saw
    assert wide.get_xlim() == pytest.approx((0, 96)) and wide.get_ylim() == pytest.approx((64, 0))
    grid = np.asarray(heat.get_array())
    assert grid.shape == (4, 4) and grid[:2, :2] == pytest.approx(np.ones((2, 2))) and grid[2:, 2:] == pytest.approx(
        np.full((2, 2), 4.0))
    heat2 = np.asarray(square.get_images()[1].get_array())  # image 2 gets only its own window (group 4)
    assert heat2.shape == (2, 2) and heat2 == pytest.approx(np.full((2, 2), 5.0))
    assert square.get_images()[1].get_extent() == pytest.approx([0, 64, 64, 0])


def test_token_heatmaps_of_old_runs_say_the_view_is_unknown(made):
    fig = made["figs"]["token_heatmap_kl_org_toy_model_s0"]  # make_run has no images column: stretched grid
    assert "(view unknown: grid stretched over the whole image)" in " ".join(fig.get_suptitle().split())


def test_token_heatmaps_tiles_and_thumbnail(tmp_path):
    """One 64 x 32 image seen as two 2 x 2 tiles (left, right half) and a 2 x 2 thumbnail of the whole:
    one block per level, each tile painted over its own half, windows found by their grid."""
    import json

    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(path)
    grids = [{"grid": [2, 2], "view": [0.0, 0.0, 32.0, 32.0], "level": "tiles", "index": 0},
             {"grid": [2, 2], "view": [32.0, 0.0, 64.0, 32.0], "level": "tiles", "index": 1},
             {"grid": [2, 2], "view": [0.0, 0.0, 64.0, 32.0], "level": "thumbnail", "index": 2}]
    images = [{"path": str(path), "size": [64, 32], "grid": [2, 2], "view": grids[0]["view"], "grids": grids}]
    samples = pd.DataFrame({"sample_id": ["t"], "task": ["x"], "image": [str(path)], "grid_h": [2], "grid_w": [2],
                            "status": ["ok"], "images": [json.dumps(images)]})
    # k = 1: windows are cells; group g on grid g // 4, cell (g % 4) // 2, g % 2, value g + 1
    groups = pd.DataFrame([{"sample_id": "t", "group": g, "row": (g % 4) // 2, "col": g % 2, "positions": [g],
                            "image": 0, "grid": g // 4} for g in range(12)])
    scores = pd.DataFrame([{"sample_id": "t", "layer": 0, "group": g, "metric": "kl", "value": float(g + 1)}
                           for g in range(12)])
    with pytest.MonkeyPatch.context() as mp:
        spy = Spy(mp)
        plots.plot_token_heatmaps(scores, groups, samples, "t", [0], "kl", 1, tmp_path)
    fig = spy.figs["token_heatmap_kl_t"]
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["tiles, layer 0", "thumbnail, layer 0"]
    photo, left, right = panels[0].get_images()
    assert photo.get_extent() == pytest.approx([0, 64, 32, 0])
    assert left.get_extent() == pytest.approx([0, 32, 32, 0]) and right.get_extent() == pytest.approx([32, 64, 32, 0])
    assert np.asarray(left.get_array()) == pytest.approx(np.array([[1, 2], [3, 4]]))
    assert np.asarray(right.get_array()) == pytest.approx(np.array([[5, 6], [7, 8]]))
    thumb = panels[1].get_images()[1]
    assert thumb.get_extent() == pytest.approx([0, 64, 32, 0])
    assert np.asarray(thumb.get_array()) == pytest.approx(np.array([[9, 10], [11, 12]]))
    assert left.get_clim() == thumb.get_clim() == pytest.approx((1.0, 12.0))  # one colour scale for every grid


def test_groups_of_runs_without_a_grid_column_lie_on_their_image(tmp_path):
    from horizon.io.runs import with_image_column

    old = pd.DataFrame({"sample_id": ["a", "a"], "group": [0, 1], "row": [0, 0], "col": [0, 1],
                        "positions": [[1], [2]], "image": [0, 1]})
    assert with_image_column(old).grid.tolist() == [0, 1]
    assert with_image_column(old.drop(columns="image")).grid.tolist() == [0, 0]
