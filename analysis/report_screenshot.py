"""A screenshot of an interactive report (``horizon report``), for the README: one model's curves above the
sample view at a chosen run, sample, metric and layer.

    python analysis/report_screenshot.py figures/report.html --out figures/report.png \\
        --run llava-l-ocr-keep --sample ocr-0003 --metric gain_prob --layer 6

Drives Debian's headless chromium through Playwright (``apt-get install chromium``; playwright comes with
horizon's ``test`` extra), offline: the report is opened from file:// and any other request is refused.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path

from PIL import Image

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def screenshot(report: Path, out: Path, run: str | None, sample: str | None, metric: str | None,
               layer: int | None, model: str | None, width: int = 1280) -> Path:
    """Write ``out``: the first (or ``model``'s) row of curves, then the sample view, stacked."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("report_screenshot: needs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": 900}, device_scale_factor=1)
            context.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:"))
                          else r.abort())
            page = context.new_page()
            page.goto(report.resolve().as_uri())
            page.wait_for_selector("body[data-ready='1']")
            if metric:
                page.select_option("#curve-metric", metric)
            curves = page.locator("#curve-panels .panels").first
            if model:
                curves = page.locator(f"#curve-panels .panels:has(svg[data-model='{model}'])").first
            # the curves' heading and task legend with the chosen model's row of panels, taken while the page
            # is still scrolled to its top (bounding boxes are then page coordinates)
            top, row = page.locator("#curves h2").bounding_box(), curves.bounding_box()
            clip = {"x": 0, "y": top["y"], "width": width, "height": row["y"] + row["height"] - top["y"]}
            parts = [page.locator("header").screenshot(), page.screenshot(clip=clip, full_page=True)]
            if run:
                names = page.eval_on_selector_all("#run-picker option", "os => os.map(o => o.textContent)")
                index = next((i for i, n in enumerate(names) if f"({run})" in n), None)
                if index is None:
                    sys.exit(f"report_screenshot: no run {run!r} in the report")
                page.select_option("#run-picker", index=index)
            if metric:
                page.select_option("#sample-metric", metric)
            if sample:
                page.fill("#sample-search", sample)
                page.select_option("#sample-list", index=0)
            if layer is not None:
                page.focus("#layer-slider")
                page.keyboard.press("Home")
                for _ in range(layer):
                    page.keyboard.press("ArrowRight")
                page.locator("#layer-slider").blur()
            parts.append(page.locator("#samples").screenshot())
        finally:
            browser.close()
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in parts]
    gap = 16
    canvas = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images) + gap * len(images)),
                       "white")
    y = 0
    for image in images:
        canvas.paste(image, (0, y))
        y += image.height + gap
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run", default=None, help="run folder name to show in the sample view")
    parser.add_argument("--sample", default=None, help="sample id to show")
    parser.add_argument("--metric", default=None)
    parser.add_argument("--layer", type=int, default=None, help="index of the scanned layer to show")
    parser.add_argument("--model", default=None, help="the model whose curves to show (default: the first)")
    args = parser.parse_args()
    path = screenshot(args.report, args.out, args.run, args.sample, args.metric, args.layer, args.model)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
