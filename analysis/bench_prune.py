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

    .venv/bin/python analysis/bench_prune.py [--new-tokens 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import horizon
from horizon.data import Sample
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


if __name__ == "__main__":
    main()
