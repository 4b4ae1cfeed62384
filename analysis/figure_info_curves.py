"""Paper-style summary figures from one or more run directories.

For each metric: information per layer (linear and symlog), uniformity per
layer, horizon per task and the capacity comparison across models, each as
PNG + PDF under --out (see horizon/plots.py for names and sizes).

    .venv/bin/python analysis/figure_info_curves.py runs/llava-textvqa runs/qwen-textvqa --out figures [--metric kl]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from horizon import plots
from horizon.errors import HorizonError
from horizon.stats import analyze_frames, load_runs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories written by horizon scan")
    ap.add_argument("--out", type=Path, required=True, help="folder for the figures")
    ap.add_argument("--metric", default=None, help="one metric (default: every metric in the runs)")
    args = ap.parse_args(argv)

    runs = load_runs(args.runs)
    frames = analyze_frames(runs, metric=args.metric)
    curves, summary = frames["curves"], frames["summary"]
    metrics = [args.metric] if args.metric else list(dict.fromkeys(curves["metric"]))
    for metric in metrics:
        paths = plots.plot_info_curves(curves, summary, metric, args.out)
        paths += plots.plot_info_curves(curves, summary, metric, args.out, log=True)
        paths += plots.plot_uniformity(curves, summary, metric, args.out)
        paths += plots.plot_horizons(summary, metric, args.out)
        paths += plots.plot_capacity(summary, metric, args.out)
        for path in paths:
            print(path)


if __name__ == "__main__":
    try:
        main()
    except HorizonError as exc:
        raise SystemExit(f"{Path(__file__).name}: error: {exc}") from None
