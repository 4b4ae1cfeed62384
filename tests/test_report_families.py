"""The report on runs of several architectures, scanned for real: every window lands on its image rectangle.

Tiny checkpoints (``horizon.testing``) of every registered family scan two samples each, among them
LLaVA-1.5 (a 5 x 5 grid: ragged 2 x 2 windows at the edges), Qwen2.5-VL (a 3 x 5 dynamic grid), LLaVA-NeXT
(a base grid plus a high-resolution grid) and Idefics3 (two tiles plus a thumbnail). The rectangle of every
window in the report is checked against an independent computation from the adapter itself (its grids, their view rectangles and
``groups.tile``, with the cell arithmetic written out here), both in the report's data and in the page the
browser draws.
"""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

import horizon
from horizon.groups import tile
from horizon.stats import StatsParams
from horizon.testing import TINY_FAMILIES, build_tiny
from browser import chromium, offline_page
from conftest import write_dataset

ARCHS = tuple(sorted(TINY_FAMILIES))  # every registered family: a new one is checked by being registered
K = 2

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def family_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-families")
    runs, expected = [], {}
    for arch in ARCHS:
        family = TINY_FAMILIES[arch]
        vlm = horizon.load(build_tiny(root / "ckpt" / arch, arch=family.arch, grid=family.grid, layers=2, seed=1),
                           dtype="float32", device="cpu")
        data = write_dataset(root / f"data-{arch}", 2, family.image_size, seed=3)
        run = root / f"run-{arch}"
        horizon.scan(vlm, data, out=run, group=K, metrics=("dlogp",), max_new_tokens=2, progress=False)
        runs.append(run)
        expected[arch] = {}
        for line in data.read_text().splitlines():
            sample = json.loads(line)
            expected[arch][sample["id"]] = windows_from_adapter(vlm, data.parent / sample["image"], sample["question"])
    out = root / "report.html"
    horizon.report(runs, out, params=StatsParams(n_boot=50, n_perm=50))
    return out, expected


def windows_from_adapter(vlm, image_path, question):
    """Per window, in the scan's order: (level, x0, y0, x1, y1) in the image's pixels, from the adapter alone."""
    image = Image.open(image_path).convert("RGB")
    prompt = vlm.adapter.prompt(vlm.processor, question, 1)
    inputs = vlm.adapter.encode(vlm.processor, [image], prompt)
    grids = vlm.adapter.grids(vlm.hf, inputs)
    views = vlm.adapter.grid_views(vlm.processor, image.size, grids)
    out = []
    for group in tile(grids, K):
        grid, (vx0, vy0, vx1, vy1) = grids[group.grid], views[group.grid]
        cell_w, cell_h = (vx1 - vx0) / grid.width, (vy1 - vy0) / grid.height
        rows = min(K, grid.height - group.row)  # windows at the grid's edge are cut short
        cols = min(K, grid.width - group.col)
        x0, y0 = vx0 + group.col * cell_w, vy0 + group.row * cell_h
        out.append((grid.level, x0, y0, x0 + cols * cell_w, y0 + rows * cell_h))
    return out


def page_data(path):
    text = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'id="report-data">(.*?)</script>', text, flags=re.S).group(1))


def close(a, b, tol=1e-3):
    return all(abs(x - y) <= tol * max(1.0, abs(y)) for x, y in zip(a, b))


def test_windows_in_the_data_match_the_adapters_geometry(family_report):
    out, expected = family_report
    data = page_data(out)
    assert [r["name"] for r in data["runs"]] == [f"run-{a}" for a in ARCHS]
    for arch, run in zip(ARCHS, data["runs"]):
        for sample in run["samples"]:
            want = expected[arch][sample["id"]]
            assert len(sample["windows"]) == len(want), arch
            levels = [b["label"] for b in sample["blocks"]]
            assert levels == list(dict.fromkeys(w[0] for w in want)), arch  # one block per level, in order
            for (block, *box), (level, *box_want) in zip(sample["windows"], want):
                assert sample["blocks"][block]["label"] == level
                assert sample["blocks"][block]["image"] is not None and sample["blocks"][block]["unit"] == "px"
                assert close(box, box_want), (arch, box, box_want)
            assert len(sample["scores"]["dlogp"]) == len(run["layers"]) * len(want)
    multi = {arch: len(run["samples"][0]["blocks"]) for arch, run in zip(ARCHS, data["runs"])}
    assert {a: multi[a] for a in ("llava", "qwen2_5_vl", "llava_next", "idefics3")} == \
        {"llava": 1, "qwen2_5_vl": 1, "llava_next": 2, "idefics3": 2}
    # idefics3's two tiles share one block, each window on its own half of the image
    idefics = data["runs"][ARCHS.index("idefics3")]["samples"][0]
    tiles = [w for w in idefics["windows"] if idefics["blocks"][w[0]]["label"] == "tiles"]
    width = idefics["blocks"][0]["frame"][2]
    assert {w[1] < width / 2 for w in tiles} == {True, False}


def test_the_page_draws_each_window_on_its_rectangle(family_report, tmp_path):
    out, expected = family_report
    with chromium() as browser, offline_page(browser, out) as (page, log):
        for i, arch in enumerate(ARCHS):
            page.select_option("#run-picker", index=i)
            page.select_option("#sample-list", index=1)
            sid = page.locator("dd[data-field='sample']").inner_text().strip()
            want = expected[arch][sid]
            drawn = page.eval_on_selector_all(
                "#heatmap rect.window",
                "rs => rs.map(r => [Number(r.getAttribute('data-window')), r.closest('svg').dataset.block,"
                " ...['x', 'y', 'width', 'height'].map(a => Number(r.getAttribute(a)))])")
            assert len(drawn) == len(want), arch
            blocks = page.locator("#heatmap svg[data-block]").count()
            assert blocks == len(dict.fromkeys(w[0] for w in want))
            for index, block, x, y, w, h in drawn:
                level, x0, y0, x1, y1 = want[index]
                assert close((x, y, x + w, y + h), (x0, y0, x1, y1)), (arch, index)
            assert page.locator("#heatmap svg image").count() == blocks  # the picture under every block
            page.screenshot(path=str(tmp_path / f"{arch}.png"))
        assert log.problems() == [], log.problems()
