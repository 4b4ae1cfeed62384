"""Per-sample heatmaps of one run: window scores over the image at a few layers, and layer x window.

    .venv/bin/python analysis/figure_heatmaps.py runs/llava-textvqa --out figures [--sample q17] [--layers 0,8,16]

Without --sample the first sample with status 'ok' is drawn; without --layers,
up to 4 evenly spaced scanned layers. Relative image paths are tried as they
are (relative to the working directory) and relative to the run directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from horizon import plots
from horizon.errors import HorizonError
from horizon.io.runs import read_sample_rows
from horizon.stats import load_runs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run directory written by horizon scan")
    ap.add_argument("--out", type=Path, required=True, help="folder for the figures")
    ap.add_argument("--sample", default=None, help="sample_id (default: the first sample with status 'ok')")
    ap.add_argument("--layers", default=None, help="comma-separated layers, e.g. 0,8,16 (default: 4 evenly spaced)")
    ap.add_argument("--metric", default=None, help="metric (default: the run's first metric)")
    args = ap.parse_args(argv)

    run = load_runs([args.run])[0]
    config, samples = run["config"], run["samples"]
    if args.sample is None:
        ok = samples if "status" not in samples.columns else samples[samples["status"] == "ok"]
        if ok.empty:
            ap.error(f"{args.run}: no sample with status 'ok'")
        sample = ok["sample_id"].iloc[0]
    else:
        sample = args.sample
    scores = read_sample_rows(args.run, "scores", [sample])  # this sample's rows only, not the run's
    metrics = config.get("metrics") or list(dict.fromkeys(scores["metric"]))
    metric = args.metric or (metrics.split(",")[0] if isinstance(metrics, str) else metrics[0])
    mine = scores[(scores["sample_id"] == sample) & (scores["metric"] == metric)]
    if mine.empty:
        ap.error(f"{args.run}: no {metric!r} scores for sample {sample!r}")
    layers = [int(x) for x in args.layers.split(",")] if args.layers else plots.spread_layers(mine["layer"].unique())
    model = run.get("model") or config.get("model")
    groups = read_sample_rows(args.run, "groups", [sample])
    row = read_sample_rows(args.run, "samples", [sample])
    paths = plots.plot_token_heatmaps(scores, groups, row, sample, layers, metric,
                                      int(config.get("group") or 1), args.out, model=model, image_root=args.run)
    paths += plots.plot_layer_group_heatmap(scores, sample, metric, args.out, model=model)
    for path in paths:
        print(path)


if __name__ == "__main__":
    try:
        main()
    except HorizonError as exc:
        raise SystemExit(f"{Path(__file__).name}: error: {exc}") from None
