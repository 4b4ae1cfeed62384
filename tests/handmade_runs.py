"""Run directories written by hand, with pandas, pyarrow and json, from the README's Run directory section
alone (no scan).

``write_run`` writes run.json, samples.parquet, groups.parquet and scores.parquet for a square token grid
tiled by k x k windows, each sample with its own image; ``write_grid`` writes a pruning grid folder
(grid.csv, as horizon prune-grid writes it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image


def write_images(folder: Path, n: int, side: int = 96, seed: int = 0, noise: bool = False) -> list[Path]:
    """``n`` pictures: a coloured disc on a plain background (or, with ``noise``, random pixels: the worst case
    for image compression)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        if noise:
            pixels = (rng.random((side, side, 3)) * 255).astype(np.uint8)
        else:
            pixels = np.full((side, side, 3), 235, dtype=np.uint8)
            y, x = np.mgrid[:side, :side]
            cy, cx = rng.integers(side // 4, 3 * side // 4, size=2)
            pixels[(y - cy) ** 2 + (x - cx) ** 2 < (side // 5) ** 2] = rng.integers(0, 200, size=3)
        path = folder / f"img-{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def informative(n_layers: int, horizon: int) -> Callable[[int, int, int, int], float]:
    """A score for (sample, layer, window, n_windows): information on a few windows that fades out at
    ``horizon`` (zero from there on), with sample-to-sample spread."""
    def value(sample: int, layer: int, window: int, n_windows: int) -> float:
        if layer >= horizon:
            return 0.0
        strength = (1.0 - layer / horizon) * (1.0 + 0.3 * np.sin(sample + 1.0))
        focus = 1.0 if window == (sample % n_windows) else 0.1 + 0.05 * ((window * 7 + sample) % 5)
        return float(strength * focus)
    return value


def nothing(sample: int, layer: int, window: int, n_windows: int) -> float:
    """No information at any layer: every ablation changes nothing."""
    return 0.0


def write_run(run: Path, *, model: str, task: str, images: list[Path], n_layers: int = 6, grid: int = 6, k: int = 2,
              metrics: tuple[str, ...] = ("dlogp", "kl"), score: Callable = None, estimator: str | None = None,
              floor: float = 1e-6, failed: tuple[int, ...] = ()) -> Path:
    """A run directory of ``len(images)`` samples (sample i on image i), every layer scanned, ``grid`` x ``grid``
    tokens in k x k windows. ``failed`` samples carry an error status and no scores."""
    run.mkdir(parents=True, exist_ok=True)
    score = score or informative(n_layers, max(1, n_layers - 2))
    config = {"model": model, "n_layers": n_layers, "protocol": "remove", "metrics": list(metrics), "group": k,
              "layers": list(range(n_layers)), "target": "gt", "answer_span": "first",
              "numerical_floor": {m: floor for m in metrics}}
    if estimator:
        config.update({"estimator": estimator, "estimated": True})
    (run / "run.json").write_text(json.dumps(config, indent=2))
    windows = [(r, c) for r in range(0, grid, k) for c in range(0, grid, k)]
    samples, groups, scores = [], [], []
    for i, image in enumerate(images):
        sid = f"{task}-{i:03d}"
        ok = i not in failed
        samples.append({"sample_id": sid, "task": task, "question": f"what is in picture {i}?",
                        "answer": f"answer {i}", "input_ids": [1, 2, 3], "answer_ids": [3], "image": str(image),
                        "n_visual": grid * grid, "grid_h": grid, "grid_w": grid, "clean_logp": -0.1,
                        "clean_pred": f"answer {i}" if i % 3 else "something else",
                        "status": "ok" if ok else "error: the image could not be read"})
        for g, (r, c) in enumerate(windows):
            groups.append({"sample_id": sid, "group": g, "row": r, "col": c,
                           "positions": [10 + rr * grid + cc for rr in range(r, min(r + k, grid))
                                         for cc in range(c, min(c + k, grid))]})
            if not ok:
                continue
            for layer in range(n_layers):
                for m, metric in enumerate(metrics):
                    scores.append({"sample_id": sid, "layer": layer, "group": g, "metric": metric,
                                   "value": score(i, layer, g, len(windows)) * (1.0 + 0.5 * m)})
    pd.DataFrame(samples).to_parquet(run / "samples.parquet", index=False)
    pd.DataFrame(groups).to_parquet(run / "groups.parquet", index=False)
    frame = pd.DataFrame(scores)
    frame["value"] = frame["value"].astype(np.float32)
    frame.to_parquet(run / "scores.parquet", index=False)
    return run


def write_grid(folder: Path, *, model: str, task: str, horizon_switch: int = 4,
               horizon_metric: str | None = None) -> Path:
    """A pruning grid's folder: grid.csv with the unpruned row, two single methods at two budgets and their
    random hybrids at the horizon switch and one other switch layer; with ``horizon_metric``, a cell's eval.json
    naming the metric whose horizon the grid switched at."""
    folder.mkdir(parents=True, exist_ok=True)
    if horizon_metric:
        (folder / "random@1-18+random@horizon-4").mkdir(exist_ok=True)
        (folder / "random@1-18+random@horizon-4" / "eval.json").write_text(
            json.dumps({"config": {"horizon_metric": horizon_metric, "switch_at": "horizon"}}))
    rows = [{"model": model, "task": task, "method": "none", "kind": "none", "schedule": "none", "budget": None,
             "switch_layer": None, "switch": "None", "avg_tokens": 36.0, "accuracy": 0.9, "accuracy_std": 0.0,
             "n_seeds": 1}]
    for m, method in enumerate(("random", "divprune")):
        for budget in (18, 9):
            acc = 0.5 + 0.02 * budget + 0.05 * m
            rows.append({"model": model, "task": task, "method": method, "kind": "single",
                         "schedule": f"{method}@1:{budget}", "budget": budget, "switch_layer": None, "switch": "None",
                         "avg_tokens": budget + 3.0, "accuracy": acc, "accuracy_std": 0.03 if method == "random" else 0.0,
                         "n_seeds": 3 if method == "random" else 1})
            for switch, tag in ((horizon_switch, "horizon"), (2, "2")):
                rows.append({"model": model, "task": task, "method": f"{method}+random", "kind": "hybrid",
                             "schedule": f"{method}@1:{budget},random@{switch}:{budget // 4}", "budget": budget,
                             "switch_layer": switch, "switch": tag, "avg_tokens": budget - 2.0 + switch,
                             "accuracy": acc - 0.1 + 0.02 * switch, "accuracy_std": 0.02, "n_seeds": 3})
    pd.DataFrame(rows).to_csv(folder / "grid.csv", index=False)
    return folder
