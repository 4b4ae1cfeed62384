"""Can float noise move the demo's horizons? Two checks on the demo's run directories.

1. Another machine, emulated: rescan one zoo model with a different batch
   size and one CPU thread (different kernel shapes and reduction orders) and
   compare every score with the original run: the largest difference, and its
   ratio to the run's numerical floor (plus the small relative error the floor
   allows for large scores).
2. Noise at the floor: add uniform noise of +-floor to every score of every
   run, several times, re-run the analysis and compare the summary (horizon
   status, layer, CI and uniformity onset) with the unperturbed one.

    python analysis/stability.py [--runs demo-run] [--model llava-l] [--draws 5]

Prints what it measured; it asserts nothing (tests do that on planted data).
"""

from __future__ import annotations

import argparse
import warnings
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import horizon
from horizon.stats import StatsParams, analyze_frames, load_runs, read_scores

STABLE = ["horizon_status", "horizon", "horizon_lo", "horizon_hi", "uniformity_onset"]
DATA = Path(__file__).resolve().parents[1] / "data"


def rescan(runs: Path, model: str, batch_size: int, limit: int) -> None:
    torch.set_num_threads(1)
    vlm = horizon.load(DATA / "zoo" / model, dtype="float32", device="cpu")
    for run in sorted(runs.glob(f"{model}-*")):
        original = horizon.read_run(run)
        config = original["config"]
        task = run.name[len(model) + 1:].rsplit("-", 1)[0]
        start = time.perf_counter()
        again = horizon.scan(vlm, DATA / "tasks" / task / "test.jsonl", protocol=config["protocol"],
                             group=config["group"], limit=limit, batch_size=batch_size, max_new_tokens=4,
                             metrics=tuple(config["metrics"]), progress=False)
        both = original["scores"].merge(again.scores, on=["sample_id", "layer", "group", "metric"],
                                        suffixes=("", "_again"))
        floor = config.get("numerical_floor", {})
        for metric, part in both.groupby("metric"):
            diff = (part.value.astype(np.float64) - part.value_again.astype(np.float64)).abs()
            f = floor.get(metric)
            excess = (diff - (f or 0.0)).clip(lower=0) / part.value.abs().clip(lower=1e-300)
            ratio = f"{diff.max() / f:.3g} x floor" if f else "raw score, no floor"
            print(f"  {run.name:28s} {metric:10s} max |difference| {diff.max():.2e} ({ratio}); largest "
                  f"excess over the floor relative to the score {excess.max():.1e}; {len(part)} scores, "
                  f"{time.perf_counter() - start:.0f} s")


def perturbed(runs: list[dict], draws: int, params: StatsParams) -> None:
    base = analyze_frames(runs, params=params)["summary"].set_index(["model", "task", "metric"])[STABLE]
    changed = 0
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        noisy = []
        for run in runs:
            scores = read_scores(run).copy()  # the demo's runs are small: whole frames are fine
            floor = scores.metric.map(lambda m: run["floor"].get(m, 0.0)).to_numpy()
            scores["value"] = scores.value + rng.uniform(-1, 1, len(scores)) * floor
            noisy.append({**run, "scores": scores})
        summary = analyze_frames(noisy, params=params)["summary"].set_index(["model", "task", "metric"])[STABLE]
        diff = (base.fillna(-1) != summary.fillna(-1)).any(axis=1)
        changed += int(diff.sum())
        print(f"  draw {seed}: {int(diff.sum())} of {len(diff)} summary rows changed"
              + ("" if not diff.any() else f": {', '.join(map(str, diff[diff].index))}"))
    print(f"  in all: {changed} changed rows over {draws} draws")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="demo-run")
    ap.add_argument("--model", default="llava-l")
    ap.add_argument("--batch-size", type=int, default=3)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # transformers' deprecation notices would bury the numbers
    runs = Path(args.runs)
    paths = sorted(p for p in runs.iterdir() if (p / "run.json").exists() and not p.name.startswith("prune-"))
    print(f"1. rescan of {args.model} with batch size {args.batch_size} and 1 thread ({args.limit} samples per run):")
    rescan(runs, args.model, args.batch_size, args.limit)
    print(f"2. uniform noise of +-floor added to every score of {len(paths)} runs, re-analysed:")
    perturbed(load_runs(paths), args.draws, StatsParams(n_boot=args.n_boot, n_perm=10))


if __name__ == "__main__":
    main()
