"""Benchmark: the gradient estimator against the exact engine, time and agreement, side by side in one run.

On the model of ``analysis/bench_scan.py`` (a random LLaVA-architecture
model: 8 layers, hidden 256, a 16 x 16 grid = 256 visual tokens, 2 x 2
windows, every layer) and one sample, in one process:

* ``exact``: every (layer, window) removal through the engine (``run_ablations``),
  the remove protocol's dlogp and kl;
* ``gradient``: ``gate_gradients`` (one forward and one backward pass for
  dlogp; ``--kl-tokens`` more backward passes for kl) and ``estimate_remove``,
  without the saturation fix (plain attribution patching) and with it (the
  default: each layer's attention change recomputed exactly, the output
  softmax exact; one more backward pass per followed token).

Printed: median seconds of each (``--repeats``), the speed-up, and per layer
the Spearman and Pearson correlation over windows of estimate vs exact for
dlogp and kl, with the top-10% overlap.

    .venv/bin/python analysis/bench_estimator.py [--layers 8] [--grid 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from horizon.ablation import Ablation, clean_pass, run_ablations
from horizon.estimators import estimate_remove, gate_gradients, gated_logprobs
from horizon.groups import tile
from horizon.scan import hybrid_plan, hybrid_rounds
from horizon.scores import remove_scores

from bench_prune import median_time
from bench_scan import build_inputs, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="llava")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--group", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--kl-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hybrid-margin", type=int, default=1)
    parser.add_argument("--hybrid-top", type=float, default=0.10)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vlm = build_model(root, args)
        side = args.grid * vlm.hf.config.vision_config.patch_size
        inputs, scored = build_inputs(vlm, root, (side, side))
        with torch.no_grad():
            clean = clean_pass(vlm, inputs, scored)
        groups = tile(vlm.adapter.grids(vlm.hf, inputs), args.group)
        layers = list(range(vlm.n_layers))
        target = inputs["input_ids"][0, [p + 1 for p in scored]]
        ablations = [Ablation(l, g.positions) for l in layers for g in groups]
        logp = clean.scored_logprobs()

        def exact() -> dict[str, np.ndarray]:
            values = {m: np.zeros(len(ablations)) for m in ("dlogp", "kl")}
            with torch.no_grad():
                for idx, logq in run_ablations(vlm, clean, ablations, args.batch_size, True):
                    for m, v in remove_scores(logp, logq, target, ("dlogp", "kl")).items():
                        values[m][idx] = v.cpu().numpy()
            return values

        def gradient(kl_tokens: int, fix: bool = False) -> dict[str, np.ndarray]:
            grads = gate_gradients(vlm, clean, target, kl_tokens, groups if fix else None)
            metrics = ("dlogp", "kl") if kl_tokens else ("dlogp",)
            return {m: v.numpy() for m, v in estimate_remove(grads, groups, layers, metrics).items()}

        def hybrid() -> float:
            """The hybrid estimator's work: the fixed estimate, then the exact engine on what hybrid_plan picks and
            the rounds that follow the measured horizon (hybrid_rounds, as scan runs them); returns the share
            measured exactly."""
            est = gradient(args.kl_tokens, True)["dlogp"].reshape(len(layers), len(groups))

            def measure(cells: np.ndarray) -> np.ndarray:
                chosen = np.flatnonzero(cells.flatten())
                out = np.zeros(len(chosen))
                with torch.no_grad():
                    for idx, logq in run_ablations(vlm, clean, [ablations[i] for i in chosen], args.batch_size,
                                                   True):
                        out[idx] = remove_scores(logp, logq, target, ("dlogp",))["dlogp"].cpu().numpy()
                return out

            _, done = hybrid_rounds(est, hybrid_plan(est, args.hybrid_margin, args.hybrid_top), args.hybrid_margin,
                                    measure)
            return float(done.mean())

        def forward() -> None:
            """One forward pass of the gated model with every gate open (the clean model), no gradient: the unit
            of cost both paths are counted in."""
            with torch.no_grad():
                gated_logprobs(vlm, clean, torch.zeros(vlm.n_layers, clean.seq_len, dtype=torch.float64))

        t_forward = median_time(forward, args.repeats)
        t_exact = median_time(exact, args.repeats)
        t_hybrid = median_time(hybrid, args.repeats)
        share = hybrid()
        t_dlogp = median_time(lambda: gradient(0), args.repeats)
        t_kl = median_time(lambda: gradient(args.kl_tokens), args.repeats)
        t_fix = median_time(lambda: gradient(args.kl_tokens, True), args.repeats)
        ex, plain, fixed = exact(), gradient(args.kl_tokens), gradient(args.kl_tokens, True)

    print(f"{args.arch}-architecture random model: {vlm.n_layers} layers, hidden {args.hidden}, "
          f"{args.grid}x{args.grid} grid, {len(groups)} windows of {args.group}x{args.group}, every layer: "
          f"{len(ablations)} removals; {torch.get_num_threads()} threads\n")
    print(f"{'path':58s} {'seconds':>8s} {'speed-up':>9s}")
    print(f"{'one forward pass (the unit of cost; not an estimator)':58s} {t_forward:8.3f} "
          f"{t_exact / t_forward:8.1f}x")
    print(f"{'exact (engine, every removal)':58s} {t_exact:8.3f} {1.0:8.1f}x")
    print(f"{'gradient, no fix: dlogp and dprob (1 fwd + 1 bwd)':58s} {t_dlogp:8.3f} {t_exact / t_dlogp:8.1f}x")
    print(f"{f'gradient, no fix: + kl ({args.kl_tokens} more bwd)':58s} {t_kl:8.3f} {t_exact / t_kl:8.1f}x")
    print(f"{f'gradient, saturation fix (the default; {max(args.kl_tokens, 8) + 1} more bwd)':58s} {t_fix:8.3f} "
          f"{t_exact / t_fix:8.1f}x")
    print(f"{f'hybrid (the fixed estimate, then {share:.0%} of the removals exactly)':58s} {t_hybrid:8.3f} "
          f"{t_exact / t_hybrid:8.1f}x\n")
    n = len(groups)
    k = max(1, math.ceil(0.1 * n))
    print("Spearman / top-10% overlap of estimate vs exact over windows, per layer")
    print(f"{'layer':>5s}  {'dlogp no fix':>13s} {'top':>5s}  {'dlogp fix':>10s} {'top':>5s}   {'kl no fix':>10s} "
          f"{'kl fix':>7s}")
    for l in layers:
        cells = []
        for m, est in (("dlogp", plain), ("dlogp", fixed), ("kl", plain), ("kl", fixed)):
            a, b = ex[m][l * n:(l + 1) * n], est[m][l * n:(l + 1) * n]
            top = len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k
            cells.append((stats.spearmanr(a, b).statistic, top))
        (d0, t0), (d1, t1), (k0, _), (k1, _) = cells
        print(f"{l:5d}  {d0:13.3f} {t0:5.2f}  {d1:10.3f} {t1:5.2f}   {k0:10.3f} {k1:7.3f}")

if __name__ == "__main__":
    main()
