"""Benchmark: what pruning schedules save in wall time, next to the FLOPs estimate.

For one prompt on a tiny random-weight LLaVA (default: 8 decoder layers,
hidden 256, a 24 x 24 grid = 576 visual tokens), side by side in one run:

* ``hf.generate``      -- transformers' own greedy generation, no horizon code;
* ``none``             -- horizon's ``generate`` with no stage (the hooks' overhead);
* each schedule        -- horizon's ``generate`` with it applied.

Every path generates the same number of new tokens (``--new-tokens``; eos is
disabled for the run), is warmed up once and timed ``--repeats`` times
(median, ``time.perf_counter``). Printed per path: median seconds, speed-up
over ``none``, average visual tokens per layer, and the prefill FLOPs
estimate relative to unpruned (``horizon.prune.generate.prefill_flops``). The
prefill-only time (``--new-tokens 1``) shows the saving the estimate describes;
decoding adds a per-token cost that pruning only shrinks through the shorter
KV cache.

Grid section (``--grid-samples N``, 0 to skip): a 3-method x 2-budget x
3-seed grid (random, divprune, fastv at layer ``--prune-layer``; budgets
``--budgets``) on N samples (default 12), run in one process: today's loop
before shared prefixes (``share_prefix=False``: one full ``generate`` per
schedule x seed x sample), the grid path at batch 1 (one encoding and one
shared prefix per sample, deterministic schedules once for all seeds) and at
``--batch-size`` (default 16: rows continued together, left-padded, rows of
similar length batched together). Each path writes the whole grid (every
entry's files, grid.csv, the figures; matplotlib is imported before the
timing). Printed: seconds of each, the speed-up over today's loop, and whether
every prediction (text, tokens kept per layer) is identical on every path.

    .venv/bin/python analysis/bench_prune.py [--new-tokens 8] [--repeats 5] [--grid-samples 12] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import horizon
import horizon.plots  # noqa: F401  (imported before the timed grids: both draw the same figures)
from horizon.data import Sample
from horizon.prune.evaluate import PruneConfig
from horizon.prune.grid import GridConfig, prune_grid
from horizon.prune import Schedule, generate, parse_schedule
from horizon.prune.generate import prefill_flops
from horizon.scan import encode_sample
from horizon.tiny import build_tiny

SCHEDULES = ("random@0:288", "divprune@0:288,random@4:72", "fastv@2:144", "dart@2:144,random@4:36", "vtw@4:0")


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--grid", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grid-samples", type=int, default=12, help="samples of the grid section (0: skip it)")
    parser.add_argument("--prune-layer", type=int, default=2)
    parser.add_argument("--budgets", default="144,64")
    parser.add_argument("--batch-size", type=int, default=16, help="the grid's batched path (1: only batch 1)")
    parser.add_argument("--skip-schedules", action="store_true", help="only the grid section")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = build_tiny(root / "model", arch="llava", layers=args.layers, hidden=args.hidden, heads=8, kv_heads=8,
                          grid=(args.grid, args.grid), vocab=300)
        vlm = horizon.load(str(path), dtype="float32", device="cpu")
        vlm.hf.generation_config.eos_token_id = None  # every path generates exactly --new-tokens
        side = args.grid * vlm.hf.config.vision_config.patch_size
        pixels = (np.random.default_rng(0).random((side, side, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(root / "image.png")
        inputs, _ = encode_sample(vlm, Sample("bench", root / "image.png", "what is shown?", ["x"]))
        seq = inputs["input_ids"].shape[1]
        n_visual = int((inputs["input_ids"][0] == vlm.adapter.image_token_id(vlm.hf)).sum())
        n = args.new_tokens
        print(f"LLaVA-architecture random model: {args.layers} layers, hidden {args.hidden}, {n_visual} visual "
              f"tokens, prompt {seq} tokens, {n} new tokens, median of {args.repeats}, "
              f"{torch.get_num_threads()} threads\n")

        def hf_generate():
            with torch.no_grad():
                out = vlm.hf.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            assert out.shape[1] == seq + n

        if args.grid_samples:
            bench_grid(vlm, root, args)
        if args.skip_schedules:
            return
        rows = [("hf.generate", median_time(hf_generate, args.repeats), float(n_visual), 1.0)]
        full = prefill_flops(vlm.language_model.config, [seq] * vlm.n_layers)
        for text in ("none", *SCHEDULES):
            schedule = parse_schedule(text, vlm.n_layers, n_visual) if text != "none" else Schedule(())
            gen = generate(vlm, inputs, schedule, max_new_tokens=n)
            assert len(gen.tokens) == n
            seconds = median_time(lambda: generate(vlm, inputs, schedule, max_new_tokens=n), args.repeats)
            flops = prefill_flops(vlm.language_model.config, gen.tokens_per_layer) / full
            rows.append((text, seconds, gen.avg_visual_tokens, flops))

        base = rows[1][1]
        print(f"{'path':32s} {'seconds':>8s} {'speed-up vs none':>17s} {'avg visual':>11s} {'prefill FLOPs':>14s}")
        for name, seconds, avg, flops in rows:
            label = "none (horizon, keeps all)" if name == "none" else name
            print(f"{label:32s} {seconds:8.3f} {base / seconds:16.2f}x {avg:11.1f} {flops:13.1%}")
        print(f"\nhook overhead: horizon none / hf.generate = {rows[1][1] / rows[0][1]:.2f}x")


def bench_grid(vlm, root: Path, args) -> None:
    """Today's loop vs the shared-prefix grid on the same samples, in this process; predictions compared."""
    side = args.grid * vlm.hf.config.vision_config.patch_size
    rng = np.random.default_rng(1)
    lines = []
    for i in range(args.grid_samples):
        Image.fromarray((rng.random((side, side, 3)) * 255).astype("uint8")).save(root / f"grid{i}.png")
        question = "what is shown?" if i % 2 else "what color is the large shape in the picture?"  # two lengths
        lines.append(json.dumps({"id": f"g{i}", "image": f"grid{i}.png", "question": question, "answer": "x"}))
    data = root / "grid.jsonl"
    data.write_text("\n".join(lines) + "\n")
    budgets = tuple(args.budgets.split(","))
    seconds, predictions = {}, {}
    paths = [("today's loop (generate per schedule x seed x sample)", False, 1), ("shared prefix, batch 1", True, 1)]
    if args.batch_size > 1:
        paths.append((f"shared prefix, batch {args.batch_size}", True, args.batch_size))
    for label, share, batch in paths:
        grid = GridConfig(methods=("random", "divprune", "fastv"), budgets=budgets, prune_layer=args.prune_layer,
                          hybrids=False, eval=PruneConfig(seeds=3, max_new_tokens=args.new_tokens, share_prefix=share,
                                                          batch_size=batch, decoding="greedy"))
        out = root / f"grid-{share}-{batch}"
        start = time.perf_counter()
        prune_grid(vlm, data, out, grid, progress=False, figures=root / "figures")
        seconds[label] = time.perf_counter() - start
        predictions[label] = {
            (d.name, r["sample_id"], r["seed"]): (r["prediction"], r["visual_per_layer"], r["n_new_tokens"])
            for d in sorted(out.iterdir()) if d.is_dir()
            for r in map(json.loads, (d / "predictions.jsonl").read_text().splitlines())}
    old = paths[0][0]
    same = all(predictions[label] == predictions[old] for label in predictions)
    print(f"grid: 3 methods x {len(budgets)} budgets x 3 seeds (+ none) at layer {args.prune_layer} on "
          f"{args.grid_samples} samples, {args.new_tokens} new tokens at most, {len(predictions[old])} answers each")
    for label, t in seconds.items():
        ratio = "" if label == old else f"   speed-up {seconds[old] / t:.2f}x"
        print(f"  {label:58s} {t:8.2f} s{ratio}")
    print(f"  every prediction identical on every path: {same}\n")
    if not same:
        raise SystemExit("grid predictions differ between today's loop and the shared-prefix path")


if __name__ == "__main__":
    main()
