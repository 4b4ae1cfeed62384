"""Time and peak memory of `horizon analyze` on study-sized runs (issue 12: analysis that streams).

Writes hand-made runs in the layout `horizon scan` writes (one samples,
groups and scores part per sample, compact types) of 100, 1,000 and 5,000
samples x 32 layers x 144 groups x 2 metrics (46M score rows at 5,000), then
analyses each in a fresh process: the streamed per-sample statistics, curves,
summary and comparisons with their bootstrap and permutation tests, and the
tables written to disk (figures only with --figures). Prints wall time and
peak RSS per size, side by side, and time(largest) / time(next) against the
ratio of their sizes (linear in samples: equal).

    .venv/bin/python analysis/bench_analyze.py [--sizes 100,1000,5000] [--n-boot 1000] [--keep DIR]

Writing the runs is not timed; --keep DIR writes them there once and reuses
them. The default bootstrap and permutation counts are `horizon analyze`'s.
Prints what it measured; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_LAYERS, GRID, METRICS, TASKS = 32, 12, ("kl", "dlogp"), ("ocr", "vqa")
HORIZON = {"ocr": 22, "vqa": 14}
FLOOR = {"kl": 1e-6, "dlogp": 1e-5}


def _samples_row(sid: str, task: str, status: str) -> pa.Table:
    from horizon.io.runs import SCHEMAS

    row = {name: [None] for name in SCHEMAS["samples"].names}
    row.update(sample_id=[sid], task=[task], question=["what is written?"], answer=["a"], input_ids=[[1, 2, 3]],
               answer_ids=[[3]], scored_offset=[0], scored_text=["a"], image=[""], n_visual=[GRID * GRID],
               grid_h=[GRID], grid_w=[GRID], clean_logp=[-0.1], clean_pred=["a"], status=[status],
               floor=[json.dumps(FLOOR)], images=[None])
    return pa.table(row, schema=SCHEMAS["samples"])


def write_runs(root: Path, sizes: list[int], seed: int = 0) -> dict[int, Path]:
    """The largest run written part by part; smaller ones are hard links to its first parts."""
    from horizon.io.runs import SCHEMAS

    largest = max(sizes)
    big = root / f"run-{largest}"
    if not (big / "run.json").exists():
        rng = np.random.default_rng(seed)
        for table in ("samples", "groups", "scores"):
            (big / table).mkdir(parents=True, exist_ok=True)
        groups = np.arange(GRID * GRID)
        layer = np.repeat(np.arange(N_LAYERS, dtype=np.int16), GRID * GRID)
        group = np.tile(groups.astype(np.int32), N_LAYERS)
        metric_idx = np.repeat(np.arange(len(METRICS), dtype=np.int8), N_LAYERS * GRID * GRID)
        metric = pa.DictionaryArray.from_arrays(pa.array(metric_idx), pa.array(METRICS))
        start = time.perf_counter()
        for i in range(largest):
            sid, task = f"q{i:05d}", TASKS[i % len(TASKS)]
            name = f"0000-of-0001-{i:07d}.parquet"
            status = "error: image file not found" if i % 97 == 96 else "ok"  # about 1% errored, no scores
            if status == "ok":
                depth = np.arange(N_LAYERS)
                level = np.where(depth < HORIZON[task], 1.0 - 0.5 * depth / HORIZON[task], 0.0)
                amplitude = max(0.05, 1 + 0.3 * rng.standard_normal())
                hot = np.zeros(GRID * GRID)
                hot[rng.integers(GRID * GRID)] = 8.0
                shape = np.where((depth < 6)[:, None], hot[None] + 0.1, 1.0)  # concentrated early, even later
                values = (amplitude * level[:, None] * shape)[None] * np.array([1.0, 0.5])[:, None, None]
                values = values + 0.02 * rng.standard_normal(values.shape)
                n = values.size
                scores = pa.table({
                    "sample_id": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([sid])),
                    "layer": pa.array(np.tile(layer, len(METRICS))), "group": pa.array(np.tile(group, len(METRICS))),
                    "metric": metric, "value": pa.array(values.ravel().astype(np.float32)),
                }, schema=SCHEMAS["scores"])
                pq.write_table(scores, big / "scores" / name)
                pos = pa.array([[5 + g] for g in groups], type=pa.list_(pa.int32()))
                pq.write_table(pa.table({
                    "sample_id": pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(groups), dtype=np.int32)),
                                                                pa.array([sid])),
                    "group": pa.array(groups.astype(np.int32)), "row": pa.array((groups // GRID).astype(np.int16)),
                    "col": pa.array((groups % GRID).astype(np.int16)), "positions": pos,
                    "image": pa.array(np.zeros(len(groups), dtype=np.int16)),
                    "grid": pa.array(np.zeros(len(groups), dtype=np.int16)),
                }, schema=SCHEMAS["groups"]), big / "groups" / name)
            pq.write_table(_samples_row(sid, task, status), big / "samples" / name)
            if (i + 1) % 1000 == 0:
                print(f"  wrote {i + 1} samples ({time.perf_counter() - start:.0f} s)", flush=True)
        config = {"model": "bench/model-32l", "n_layers": N_LAYERS, "group": 1, "protocol": "remove",
                  "metrics": list(METRICS), "numerical_floor": FLOOR}
        (big / "run.json").write_text(json.dumps(config, indent=2) + "\n")
    runs = {largest: big}
    for size in sorted(set(sizes) - {largest}):
        run = root / f"run-{size}"
        runs[size] = run
        if (run / "run.json").exists():
            continue
        for table in ("samples", "groups", "scores"):
            (run / table).mkdir(parents=True, exist_ok=True)
            for part in sorted((big / table).glob("*.parquet")):
                if int(part.stem.rsplit("-", 1)[1]) < size:
                    os.link(part, run / table / part.name)
        (run / "run.json").write_text((big / "run.json").read_text())
    return runs


def child(run: Path, out: Path, n_boot: int, n_perm: int, figures: bool) -> None:
    """One analysis, as `horizon analyze` runs it; prints seconds, score rows and peak RSS as JSON."""
    from horizon.io.runs import count_rows
    from horizon.analysis import analyze
    from horizon.stats import StatsParams

    start = time.perf_counter()
    result = analyze([run], out, params=StatsParams(n_boot=n_boot, n_perm=n_perm), figures=figures)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print(json.dumps({"seconds": seconds, "rows": count_rows(run, "scores"), "peak_mb": peak_kb / 1024,
                      "per_sample_rows": len(result["per_sample"])}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,5000", help="comma-separated sample counts")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--n-perm", type=int, default=1000)
    ap.add_argument("--figures", action="store_true", help="also draw the figures (default: tables only)")
    ap.add_argument("--keep", type=Path, default=None, help="write the runs here once and reuse them")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.out, args.n_boot, args.n_perm, args.figures)
        return
    sizes = sorted({int(x) for x in args.sizes.split(",")})
    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as tmp:
        root = args.keep or Path(tmp)
        print(f"writing runs under {root} (not timed) ...", flush=True)
        runs = write_runs(root, sizes)
        rows = []
        for size in sizes:
            cmd = [sys.executable, __file__, "--child", str(runs[size]), "--out", str(Path(tmp) / f"out-{size}"),
                   "--n-boot", str(args.n_boot), "--n-perm", str(args.n_perm)] + (["--figures"] if args.figures else [])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr)
            rows.append((size, json.loads(done.stdout.strip().splitlines()[-1])))
            print(f"  analysed {size} samples", flush=True)
    what = "tables and figures" if args.figures else "tables (no figures)"
    print(f"\nhorizon analyze, {what}; {N_LAYERS} layers x {GRID * GRID} groups x {len(METRICS)} metrics, "
          f"n_boot {args.n_boot}, n_perm {args.n_perm}, {os.cpu_count()} CPUs")
    header = ("samples", "score rows", "seconds", "s / 1000 samples", "peak RSS MB")
    table = [header] + [(f"{s:,}", f"{r['rows']:,}", f"{r['seconds']:.1f}", f"{1000 * r['seconds'] / s:.2f}",
                         f"{r['peak_mb']:.0f}") for s, r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
    if len(rows) >= 2:
        (s1, r1), (s2, r2) = rows[-2], rows[-1]
        print(f"time({s2}) / time({s1}) = {r2['seconds'] / r1['seconds']:.2f} (samples x {s2 / s1:.1f}; "
              f"linear: equal)")


if __name__ == "__main__":
    main()
