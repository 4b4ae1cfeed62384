"""Benchmark: the run store's cost per sample does not grow with the run.

Scans 10 and 1,000 samples (``--sizes``) with a tiny random-weight LLaVA
(2 decoder layers, a 5 x 5 grid, 2 x 2 windows) into run directories, each
size in a fresh process, and prints side by side:

* the time ``RunStore.add`` takes to commit a sample (its three parts and the
  shard manifest), median over the first 10 and over the last 10 samples,
  and their ratio (goal: within 1.2x);
* the peak resident memory of the whole scan process (goal: the 1,000-sample
  run within 1.2x of the 10-sample one);
* for contrast, what the single-file layout of earlier versions paid at the
  same points: rewriting ``samples.parquet`` and ``groups.parquet`` whole
  after every sample, timed on the run's own rows (first 10 vs last 10).

    .venv/bin/python analysis/bench_store.py [--sizes 10,1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def child(model: Path, data: Path, out: Path, report: Path) -> None:
    """One scan in this process; writes the per-sample commit times and the peak RSS to ``report``."""
    import torch

    import horizon
    from horizon.io import runs

    torch.set_num_threads(1)
    times: list[float] = []
    add = runs.RunStore.add

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        add(self, *args, **kwargs)
        times.append(time.perf_counter() - start)

    runs.RunStore.add = timed  # the benchmark's own probe, not a horizon switch
    vlm = horizon.load(model, dtype="float32", device="cpu")
    horizon.scan(vlm, data, out=out, group=2, layers="all", batch_size=16, progress=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.write_text(json.dumps({"times": times, "peak_mb": peak_mb}))


def legacy_rewrite(run: Path, at: list[int]) -> list[float]:
    """Seconds the single-file layout took to commit sample n (rewrite samples and groups whole), for n in ``at``."""
    from horizon.io.runs import read_run

    tables = read_run(run)
    samples = tables["samples"]
    groups = tables["groups"].astype({"sample_id": str})
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in at:
            ids = set(samples.sample_id.iloc[:n])
            head, g = samples.iloc[:n], groups[groups.sample_id.isin(ids)]
            start = time.perf_counter()
            g.to_parquet(Path(tmp) / "groups.parquet", index=False)
            head.to_parquet(Path(tmp) / "samples.parquet", index=False)
            out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*map(Path, args.child))
        return
    from horizon.testing import build_tiny, image_size_for, write_tiny_dataset

    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny(root / "model", arch="llava", grid=(5, 5), layers=2, seed=0)
        rows = []
        for n in sizes:
            data = write_tiny_dataset(root / f"data-{n}", n, size=image_size_for("llava", (5, 5)))
            out, report = root / f"run-{n}", root / f"report-{n}.json"
            subprocess.run([sys.executable, __file__, "--child", str(model), str(data), str(out), str(report)],
                           check=True)
            result = json.loads(report.read_text())
            times = result["times"]
            first, last = statistics.median(times[:10]), statistics.median(times[-10:])
            old = legacy_rewrite(out, list(range(1, 11)) + list(range(n - 9, n + 1)))
            rows.append({"samples": n, "store ms first 10": 1e3 * first, "store ms last 10": 1e3 * last,
                         "last/first": last / first, "peak RSS MB": result["peak_mb"],
                         "old layout ms first 10": 1e3 * statistics.median(old[:10]),
                         "old layout ms last 10": 1e3 * statistics.median(old[10:])})
    table = pd.DataFrame(rows)
    table["old last/first"] = table["old layout ms last 10"] / table["old layout ms first 10"]
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    if len(table) > 1:
        big, small = table.iloc[-1], table.iloc[0]
        print(f"\nper-sample store time, last 10 of {int(big.samples)} vs first 10: {big['last/first']:.2f}x (goal <= 1.2x)")
        print(f"peak RSS, {int(big.samples)} vs {int(small.samples)} samples: {big['peak RSS MB'] / small['peak RSS MB']:.2f}x "
              "(goal <= 1.2x)")


if __name__ == "__main__":
    main()
