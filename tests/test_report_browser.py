"""The report in a real browser (headless Chromium), offline: every panel draws, the sample view moves.

Two reports: the demo's, as committed (``figures/report.html``, written by ``horizon demo``), and one of
hand-made runs (two models, a sample that failed, a run with no information at any layer, an estimated run,
a pruning grid). Each is opened from file:// with the network blocked; the tests move the layer slider, play,
search and pick samples, hover and sort, and assert what changed, that no request was attempted and that the
console holds no error. Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import horizon
from horizon.report.page import render
from horizon.stats import StatsParams
from browser import chromium, offline_page
from handmade_runs import informative, nothing, write_grid, write_images, write_run

ROOT = Path(__file__).resolve().parents[1]
DEMO_REPORT = ROOT / "figures" / "report.html"
PANELS = ("summary", "curves", "samples", "comparisons", "grids")


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def handmade(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report-browser")
    shapes = write_images(root / "shapes", 6)
    runs = [
        write_run(root / "a", model="model-a", task="shapes", images=shapes, failed=(5,)),
        write_run(root / "b", model="model-b", task="shapes", images=shapes, n_layers=8, score=informative(8, 3)),
        write_run(root / "a-codes", model="model-a", task="codes", images=write_images(root / "codes", 6, seed=4),
                  score=informative(6, 5)),
        write_run(root / "empty", model="model-c", task="shapes", images=shapes, score=nothing),
        write_run(root / "est", model="model-e", task="shapes", images=shapes, estimator="gradient"),
    ]
    grid = write_grid(root / "grid", model="model-a", task="shapes", horizon_switch=4, horizon_metric="dlogp")
    out = root / "report.html"
    horizon.report(runs, out, grids=[grid], params=StatsParams(n_boot=200, n_perm=200))
    return out


def fills(page) -> list[str]:
    return page.eval_on_selector_all("#heatmap rect.window", "els => els.map(e => e.getAttribute('fill'))")


def text(page, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


def exercise_sample_view(page, tmp_path: Path, name: str) -> None:
    """Move the slider, play, search and pick another sample; assert the label and the heatmap follow."""
    label0, fills0 = text(page, "#layer-label"), fills(page)
    shot0 = page.locator("#heatmap").screenshot()
    assert re.fullmatch(r"layer \d+ / \d+", label0), label0
    assert len(fills0) > 0 and any(f not in (None, "none") for f in fills0)
    # the slider, as a user moves it: keyboard on the focused range input
    page.focus("#layer-slider")
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    label1, fills1 = text(page, "#layer-label"), fills(page)
    assert label1 != label0 and fills1 != fills0, (label0, label1)
    assert page.locator("#heatmap").screenshot() != shot0  # the pixels changed, not only attributes
    # play walks the layers on its own
    page.click("#play")
    for _ in range(50):  # polled from here: the page's own CSP forbids evaluating strings in it
        if text(page, "#layer-label") != label1:
            break
        page.wait_for_timeout(100)
    assert text(page, "#layer-label") != label1
    page.click("#play")  # pause
    assert text(page, "#play").endswith("play")
    page.focus("#layer-slider")  # back to the second scanned layer, before the information vanishes
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    label2, fills2 = text(page, "#layer-label"), fills(page)
    assert label2.startswith("layer 1 /")
    # another sample, found by searching its id
    first_id = text(page, "dd[data-field='sample']")
    options = page.eval_on_selector_all("#sample-list option", "els => els.map(e => e.textContent)")
    other = next(o.split(" · ")[0] for o in options if o.split(" · ")[0] != first_id and "failed" not in o)
    page.fill("#sample-search", other)
    assert page.eval_on_selector_all("#sample-list option", "els => els.length") >= 1
    page.select_option("#sample-list", index=0)
    assert text(page, "dd[data-field='sample']") == other
    assert text(page, "#layer-label") == label2  # the layer stays
    assert fills(page) != fills2  # another sample: another picture of information
    page.fill("#sample-search", "")
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def assert_panels_drawn(page) -> None:
    for panel in PANELS:
        section = page.locator(f"#{panel}")
        if panel == "grids" and section.get_attribute("hidden") is not None:
            continue
        assert section.get_attribute("data-rendered") == "1", panel
    assert page.locator("#summary-table tbody tr").count() > 0
    assert page.locator("#curve-panels svg path.curve").count() > 0
    assert page.locator("#curve-panels svg path.band").count() > 0
    assert page.locator("#heatmap svg image").count() > 0  # the sample's picture, from its data URI
    assert page.eval_on_selector("#heatmap svg image", "e => e.getBoundingClientRect().width") > 50
    assert page.locator("#comparisons-table tbody tr").count() > 0


def test_demo_report_offline(browser, tmp_path):
    assert DEMO_REPORT.is_file(), "figures/report.html is written by horizon demo and committed"
    with offline_page(browser, DEMO_REPORT) as (page, log):
        assert_panels_drawn(page)
        assert page.locator("#grids .prune-panel svg").count() >= 2  # the demo's pruning grid, both tasks
        assert page.locator("#grids line.horizon-mark").count() >= 1
        exercise_sample_view(page, tmp_path, "demo-report")
        assert log.problems() == [], log.problems()


def test_demo_report_is_the_current_page(tmp_path):
    """The committed demo report is this version's page around its data (rerun the demo after changing the page)."""
    text_ = DEMO_REPORT.read_text(encoding="utf-8")
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text_, flags=re.S).group(1)
    title = re.search(r"<title>(.*?)</title>", text_).group(1)
    assert render(json.loads(block), title) == text_


def test_handmade_report_every_panel_and_control(browser, handmade, tmp_path):
    with offline_page(browser, handmade) as (page, log):
        assert_panels_drawn(page)
        # the run with no information at any layer shows its status where a horizon would be
        rows = page.eval_on_selector_all("#summary-table tbody tr",
                                         "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
        empty = [r for r in rows if r[0] == "model-c"]
        assert empty and all(r[4] == "no information" and "no information at any layer" in r[8] for r in empty)
        found = [r for r in rows if r[0] == "model-a" and r[1] == "shapes"]
        assert found and all(re.fullmatch(r"\d+ \[\d+, \d+\]", r[4]) for r in found)
        assert "no information at any layer" in text(page, "#curve-panels")
        # estimated runs say so: the banner, a tag on their summary rows, their run in the picker
        assert page.locator("#estimate-banner").is_visible() and "est" in text(page, "#estimate-banner")
        assert all("estimate" in r[4] for r in rows if r[0] == "model-e")
        assert "[estimate: gradient]" in text(page, "#run-picker")
        # sorting by horizon: found horizons ascending, the statuses after them
        page.click("#summary-table th:nth-child(5)")
        assert page.get_attribute("#summary-table th:nth-child(5)", "data-sort") == "asc"
        cells = page.eval_on_selector_all("#summary-table tbody tr td:nth-child(5)", "cs => cs.map(c => c.textContent)")
        numbers = [int(c.split()[0]) for c in cells if re.match(r"\d", c)]
        assert numbers == sorted(numbers) and not re.match(r"\d", cells[-1])
        assert all(re.match(r"\d", c) for c in cells[:len(numbers)])
        # hovering a curve shows its numbers
        box = page.locator("#curve-panels rect.hover").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
        assert page.locator("#tooltip").is_visible() and "layer" in text(page, "#tooltip")
        # the pruning grid: both panels, the horizon (from this report's dlogp summary) marked
        assert page.locator("#grids .prune-panel svg").count() == 2
        assert page.locator("#grids line.horizon-mark").count() == 1
        assert "= horizon" in text(page, "#grids")
        exercise_sample_view(page, tmp_path, "handmade-report")
        # a failed sample says so instead of painting scores
        page.select_option("#sample-list", index=5)
        assert "failed" in text(page, "#sample-note")
        assert all(f in (None, "none") for f in fills(page))
        # another run and another metric redraw the view
        page.select_option("#run-picker", index=1)
        assert text(page, "#layer-label").endswith("/ 7")  # model-b has 8 layers
        page.select_option("#sample-metric", "kl")
        assert "KL" in text(page, "#colorbar")
        page.select_option("#run-picker", index=4)
        assert "estimate" in text(page, "#sample-note")
        assert log.problems() == [], log.problems()
