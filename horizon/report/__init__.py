"""The interactive report: run directories in, one self-contained HTML file out.

    import horizon
    horizon.report(["runs/llava-textvqa", "runs/llava-mme"], "report.html", grids=["grid/"])

The page shows the summary table (sortable), the information and uniformity
curves per model with their CI bands, threshold, horizon and onset (hover
shows the numbers), a sample view (the image with every window's information
painted on it, a layer slider with a play button, the question, answer and
prediction, a sample picker with search, a run and metric picker), the task
and model comparisons with CIs and p-values, and, given ``horizon prune-grid``
folders, accuracy against visual tokens with the horizon switch marked.

Why a hand-written page and no plotting library: the file must work offline
from an e-mail, so whatever draws it must be inlined. Plotly's self-contained
bundle alone is about 4.5 MB, most of the 5 MB a 40-sample report may take;
Bokeh and Altair/Vega need their JavaScript runtimes inlined too (1 MB and
more); and the image-overlay sample view needs custom code with any of them.
The page here is plain JavaScript drawing SVG, tens of kilobytes, with no
install-time dependency and no build step. Its static files (``report.html``,
``report.js``, ``report.css``) are package data.

The data comes from the run schema alone (:mod:`horizon.report.data`), the
statistics from ``horizon analyze``'s own functions, so the summary equals
``analyze``'s. Estimated runs (``--estimator gradient|hybrid``) are labelled
as estimates wherever their numbers appear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import HorizonError
from ..stats import StatsParams

__all__ = ["report"]


def report(runs: Sequence[str | Path], out: str | Path, *, grids: Sequence[str | Path] = (),
           metric: str | None = None, params: StatsParams | None = None, max_samples: int | None = 100,
           image_side: int = 160, title: str = "horizon report") -> dict[str, Any]:
    """Write the interactive report of ``runs`` (and of the pruning ``grids`` folders) to the HTML file ``out``.

    ``metric`` restricts it to one metric (default: every metric the runs
    hold); ``params`` are ``analyze``'s statistics settings; ``max_samples``
    caps the samples per run in the sample view (None: all; the statistics use
    every sample); ``image_side`` is the longest side, in pixels, of the
    embedded pictures. Returns ``analyze``'s frames (``summary``, ``curves``,
    ``comparisons``, ...) with ``path`` (the file) and ``size`` (its bytes).
    """
    from ..options import check_out_file, is_whole_number
    from .data import read_grid, report_data
    from .page import write_page

    out = Path(out)
    check_out_file(out)  # before the runs are read: a refusal leaves nothing behind
    if max_samples is not None and (not is_whole_number(max_samples) or max_samples < 1):
        raise HorizonError(f"--max-samples must be a positive number of samples (leave it out for 100), "
                           f"got {max_samples!r}")
    if not is_whole_number(image_side) or image_side < 8:
        raise HorizonError(f"--image-side must be a whole number of pixels of at least 8, got {image_side!r}")
    for folder in grids:
        read_grid(folder)  # a bad --grid is named before the runs are analysed
    data = report_data(runs, grids=grids, metric=metric, params=params, max_samples=max_samples,
                       image_side=image_side)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_page(data, out, title)
    result = dict(data["_frames"])
    result["path"], result["size"] = out, out.stat().st_size
    return result
