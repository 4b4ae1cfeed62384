"""The token-pruning trade-off figure (plots.prune_tradeoff) on synthetic result frames.

Accuracies encode where a row came from (budget, switch layer), so a test can
tell from a line's data which rows were drawn. Figures are inspected through
``plots._prune_tradeoff_figure``, the figure that ``prune_tradeoff`` saves.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from horizon import plots
from horizon.errors import HorizonError
from horizon.records import Horizon

DPI = 150
SINGLES = ("random", "fastv", "divprune", "dart")
HYBRIDS = ("divprune+random", "dart+random")
BUDGETS = (64, 128, 192, 256)  # median budget present: 128 (the lower middle one)
SWITCHES = (2, 3, 5, 8)
HORIZON = Horizon("found", 2.4, 1.7, 3.6, 32)  # rounded up: switch layer 3


def single_acc(method: str, budget: float) -> float:
    return round(0.30 + budget / 1000 + 0.01 * SINGLES.index(method), 6)


def hybrid_acc(method: str, budget: float, switch: int) -> float:
    return round(0.40 + budget / 1000 + 0.01 * switch + 0.001 * HYBRIDS.index(method), 6)


def make_results(pairs=((None, None),), singles=SINGLES, hybrids=HYBRIDS, switches=SWITCHES) -> pd.DataFrame:
    """One row per schedule; `pairs` of (model, task), with (None, None) meaning no model/task columns."""
    rows = []
    for model, task in pairs:
        where = {} if model is None else {"model": model, "task": task}
        for m in singles:
            for b in BUDGETS:
                std = 0.02 if m == "random" else (np.nan if m == "dart" else 0.0)
                rows.append({**where, "method": m, "kind": "single", "schedule": f"{m}@2:{b}", "budget": b,
                             "switch_layer": np.nan, "avg_tokens": 0.9 * b + 10, "accuracy": single_acc(m, b),
                             "accuracy_std": std, "n_seeds": 3 if m == "random" else 1})
        for m in hybrids:
            for b in BUDGETS:
                for s in switches:
                    rows.append({**where, "method": m, "kind": "hybrid", "schedule": f"{m}@2:{b},random@{s}",
                                 "budget": b, "switch_layer": s, "avg_tokens": 0.7 * b + 4 * s,
                                 "accuracy": hybrid_acc(m, b, s), "accuracy_std": 0.01, "n_seeds": 3})
    return pd.DataFrame(rows)


@pytest.fixture
def figure():
    """Build figures with plots._prune_tradeoff_figure; all are closed after the test."""
    made = []

    def build(results, **kw):
        fig = plots._prune_tradeoff_figure(results, **kw)
        made.append(fig)
        return fig

    yield build
    for fig in made:
        plt.close(fig)


def data_lines(ax) -> dict[str, object]:
    """The labelled lines of an axes (method lines and reference lines) by label."""
    return {ln.get_label(): ln for ln in ax.lines if not ln.get_label().startswith("_")}


def legend_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def xy(line) -> tuple[list[float], list[float]]:
    return [float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()]


# --------------------------------------------------------------------------- files


def test_writes_png_and_pdf_of_documented_size_reproducibly(tmp_path):
    results = make_results()
    paths = plots.prune_tradeoff(results, tmp_path / "a", horizon=HORIZON, unpruned=0.7)
    assert paths == [tmp_path / "a" / "prune_tradeoff.png", tmp_path / "a" / "prune_tradeoff.pdf"]
    png, pdf = paths
    assert png.is_file() and pdf.is_file()
    with Image.open(png) as img:
        assert img.size == (round(11.0 * DPI), round(4.2 * DPI))  # documented: 11.0 x 4.2 in for one row
        rgb = np.asarray(img.convert("RGB"))
    assert (rgb < 245).any(axis=2).mean() > 0.02  # not blank
    data = pdf.read_bytes()
    assert data[:5] == b"%PDF-" and b"CreationDate" not in data
    again = plots.prune_tradeoff(results, str(tmp_path / "b"), horizon=HORIZON, unpruned=0.7, name="again")
    assert [p.name for p in again] == ["again.png", "again.pdf"]
    assert again[1].read_bytes() == data  # byte for byte the same PDF
    assert plt.get_fignums() == []  # both figures were closed


# --------------------------------------------------------------------------- panels and lines


def test_panels_lines_and_legend(figure):
    fig = figure(make_results(), horizon=HORIZON, unpruned=0.7)
    assert len(fig.axes) == 2
    ax_tok, ax_sw = fig.axes
    hybrid_labels = [f"{m} (switch 3 = horizon)" for m in HYBRIDS]
    assert sorted(data_lines(ax_tok)) == sorted([*SINGLES, *hybrid_labels, "no pruning"])
    assert sorted(data_lines(ax_sw)) == sorted([*HYBRIDS, "no pruning", "information horizon"])
    assert legend_labels(ax_sw) == [*SINGLES, *hybrid_labels, "no pruning", "information horizon"]
    assert ax_tok.get_legend() is None  # one legend per row, right of its last panel
    assert ax_tok.get_xlabel() == "average visual tokens per layer" and ax_tok.get_ylabel() == "accuracy"
    assert "switch layer" in ax_sw.get_xlabel()
    # singles solid, hybrids dashed; one point per budget, sorted by tokens, accuracy as given
    lines = data_lines(ax_tok)
    for m in SINGLES:
        assert lines[m].get_linestyle() == "-"
        assert xy(lines[m]) == ([0.9 * b + 10 for b in BUDGETS], [single_acc(m, b) for b in BUDGETS])
    for label in hybrid_labels:
        assert lines[label].get_linestyle() == "--"
    # the unpruned accuracy is a dotted horizontal line in both panels
    for ax in (ax_tok, ax_sw):
        ref = data_lines(ax)["no pruning"]
        assert ref.get_linestyle() == ":" and list(ref.get_ydata()) == [0.7, 0.7]


def test_error_bars_only_where_std_is_positive(figure):
    fig = figure(make_results(hybrids=()))
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, plt.matplotlib.container.ErrorbarContainer)]
    # random (std 0.02) only: fastv and divprune have std 0, dart has NaN std
    assert len(bars) == 1
    segments = bars[0].lines[2][0].get_segments()
    assert len(segments) == len(BUDGETS)
    assert [round(float(s[1][1] - s[0][1]), 6) for s in segments] == [0.04] * len(BUDGETS)
    assert to_rgb(bars[0].lines[2][0].get_color()[0]) == to_rgb(data_lines(ax)["random"].get_color())


def test_shared_colour_per_base_method(figure):
    fig = figure(make_results(), horizon=HORIZON)
    lines = data_lines(fig.axes[0])
    colour = {label.split(" ")[0]: to_rgb(ln.get_color()) for label, ln in lines.items()}
    assert colour["divprune+random"] == colour["divprune"]
    assert colour["dart+random"] == colour["dart"]
    assert len({colour[m] for m in SINGLES}) == len(SINGLES)
    # the colour belongs to the method, not to its position in this frame
    only = figure(make_results(singles=("divprune",), hybrids=()))
    assert to_rgb(data_lines(only.axes[0])["divprune"].get_color()) == colour["divprune"]


# --------------------------------------------------------------------------- horizon and switch layers


def test_horizon_line_and_band_at_given_layer(figure):
    fig = figure(make_results(), horizon=HORIZON)
    ax_sw = fig.axes[1]
    line = data_lines(ax_sw)["information horizon"]
    assert list(line.get_xdata()) == [2.4, 2.4] and line.get_linestyle() == "--"
    (band,) = ax_sw.patches
    x0, x1 = band.get_x(), band.get_x() + band.get_width()
    assert (round(float(x0), 6), round(float(x1), 6)) == (1.7, 3.6)
    assert not [t for t in ax_sw.texts if t.get_text() == "no horizon found"]


def test_hybrids_at_horizon_switch_layer(figure):
    fig = figure(make_results(), horizon=HORIZON)
    lines = data_lines(fig.axes[0])
    for m in HYBRIDS:
        x, y = xy(lines[f"{m} (switch 3 = horizon)"])
        assert x == [0.7 * b + 12 for b in BUDGETS]
        assert y == [hybrid_acc(m, b, 3) for b in BUDGETS]


def test_hybrids_at_smallest_switch_without_horizon_rows(figure):
    # horizon 6.0 -> switch layer 6, which was not evaluated: the earliest (2) is drawn; 7.1 -> 8, which was
    fig = figure(make_results(), horizon=Horizon("found", 6.0, 5.0, 7.0, 32))
    lines = data_lines(fig.axes[0])
    assert sorted(lines) == sorted([*SINGLES, *(f"{m} (switch 2, earliest)" for m in HYBRIDS)])
    assert xy(lines["dart+random (switch 2, earliest)"])[1] == [hybrid_acc("dart+random", b, 2) for b in BUDGETS]
    fig = figure(make_results(), horizon=Horizon("found", 7.1, 6.0, 8.0, 32))
    assert xy(data_lines(fig.axes[0])["dart+random (switch 8 = horizon)"])[1] == \
        [hybrid_acc("dart+random", b, 8) for b in BUDGETS]


def test_no_horizon_found(figure):
    for horizon in (None, Horizon("persists", n_layers=32), Horizon.from_record({"horizon": float("nan"),
                                                                                "n_layers": 32})):
        fig = figure(make_results(), horizon=horizon)
        ax_tok, ax_sw = fig.axes
        assert [t.get_text() for t in ax_sw.texts] == ["no horizon found"]
        assert "information horizon" not in data_lines(ax_sw) and not ax_sw.patches
        assert sorted(data_lines(ax_tok)) == sorted([*SINGLES, *(f"{m} (switch 2, earliest)" for m in HYBRIDS)])


def test_switch_panel_uses_median_budget(figure):
    fig = figure(make_results(), horizon=HORIZON)
    ax_sw = fig.axes[1]
    for m in HYBRIDS:
        x, y = xy(data_lines(ax_sw)[m])
        assert x == [float(s) for s in SWITCHES]
        assert y == [hybrid_acc(m, 128, s) for s in SWITCHES]
    assert "budget 128" in ax_sw.get_title() and "L = 32" in ax_sw.get_title()


# --------------------------------------------------------------------------- layout


def test_one_panel_row_per_model_task(figure):
    pairs = (("toy-small", "textvqa"), ("toy-small", "gqa"), ("toy-large", "textvqa"))
    fig = figure(make_results(pairs=pairs), horizon=HORIZON, unpruned=0.7)
    assert len(fig.axes) == 6
    assert fig.get_size_inches().tolist() == pytest.approx([11.0, 4.2 + 3.6 * 2])
    grid = [fig.axes[i:i + 2] for i in range(0, 6, 2)]
    for (model, task), (ax_tok, ax_sw) in zip(pairs, grid):
        assert ax_tok.get_title().replace("\n", " ").startswith(f"{model} / {task}: accuracy vs")
        assert ax_sw.get_title().replace("\n", " ").startswith(f"{model} / {task}: accuracy vs switch")
        assert ax_tok.get_subplotspec().rowspan == ax_sw.get_subplotspec().rowspan
        assert ax_sw.get_legend() is not None and ax_tok.get_legend() is None
        assert len(data_lines(ax_tok)) == len(SINGLES) + len(HYBRIDS) + 1


def test_per_pair_horizons(figure):
    pairs = (("a", "t"), ("b", "t"))
    fig = figure(make_results(pairs=pairs), horizon={("a", "t"): Horizon("found", 4.5, 4, 5, 8)})
    (a_tok, a_sw), (b_tok, b_sw) = fig.axes[:2], fig.axes[2:]
    assert list(data_lines(a_sw)["information horizon"].get_xdata()) == [4.5, 4.5]
    assert "dart+random (switch 5 = horizon)" in data_lines(a_tok)
    assert [t.get_text() for t in b_sw.texts] == ["no horizon found"]
    assert "dart+random (switch 2, earliest)" in data_lines(b_tok)


def test_singles_only_single_method_single_point(figure):
    results = make_results(singles=("fastv",), hybrids=()).iloc[:1]
    fig = figure(results, unpruned=0.5)
    assert len(fig.axes) == 1
    assert fig.get_size_inches().tolist() == pytest.approx([8.0, 4.2])
    (ax,) = fig.axes
    assert sorted(data_lines(ax)) == ["fastv", "no pruning"]
    assert xy(data_lines(ax)["fastv"]) == ([0.9 * 64 + 10], [single_acc("fastv", 64)])
    assert legend_labels(ax) == ["fastv", "no pruning"]


def test_nan_std_and_missing_optional_columns(figure, tmp_path):
    results = make_results(singles=("random",), hybrids=("divprune+random",), switches=(4,))
    results = results.drop(columns=["accuracy_std", "n_seeds", "schedule"])
    fig = figure(results)
    assert not fig.axes[0].containers and not fig.axes[1].containers  # no error bars at all
    assert xy(data_lines(fig.axes[1])["divprune+random"]) == ([4.0], [hybrid_acc("divprune+random", 128, 4)])
    assert len(plots.prune_tradeoff(results, tmp_path)) == 2


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("drop", [["accuracy"], ["avg_tokens", "kind"]])
def test_missing_columns_raise_one_line(drop):
    results = make_results().drop(columns=drop)
    with pytest.raises(HorizonError) as info:
        plots._prune_tradeoff_figure(results)
    msg = str(info.value)
    assert "\n" not in msg
    named = ", ".join(sorted(drop, key=plots.PRUNE_COLUMNS.index))  # in the order of PRUNE_COLUMNS
    assert msg.startswith(f"prune results are missing column(s) {named} (need method, kind, ")
    assert plt.get_fignums() == []


def test_bad_frames_raise(tmp_path):
    with pytest.raises(HorizonError, match="empty"):
        plots.prune_tradeoff(make_results().iloc[:0], tmp_path)
    bad = make_results()
    bad.loc[0, "kind"] = "triple"
    with pytest.raises(HorizonError, match="unknown kind.*'triple'"):
        plots.prune_tradeoff(bad, tmp_path)
    bad = make_results()
    bad.loc[bad["kind"] == "hybrid", "switch_layer"] = math.nan
    with pytest.raises(HorizonError, match="without a switch_layer"):
        plots.prune_tradeoff(bad, tmp_path)
    assert not list(tmp_path.iterdir())


def test_no_information_status_is_named_on_the_switch_panel(figure):
    fig = figure(make_results(), horizon=Horizon("no-information", n_layers=32))
    _, ax_sw = fig.axes
    assert [t.get_text() for t in ax_sw.texts] == ["no information at any layer"]
    assert "information horizon" not in data_lines(ax_sw)
