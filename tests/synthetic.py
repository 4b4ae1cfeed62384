"""Synthetic scores with a planted horizon and uniformity onset (no model needed).

Per sample and layer the information level a(l) follows a shape; before the
onset it sits mostly in one group (non-uniform), from the onset to the horizon
it is spread evenly over the groups, and from the horizon on the scores are
pure noise around zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def level(shape: str, layer: int, onset: int, horizon: int | None) -> float:
    if horizon is None:
        return 1.0 if shape != "never_decay" else 1.0 - 0.5 * layer / 40
    if layer >= horizon:
        return 0.0
    if shape == "slow" and layer >= onset:
        return (horizon - layer) / (horizon - onset)
    return 1.0


def synthetic_scores(shape="sharp", n_samples=40, n_layers=16, groups=16, onset=4, horizon=10, seed=0,
                     model="m", task="t", metric="kl", noise=0.05, spread=0.2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_samples):
        amplitude = max(0.05, 1 + spread * rng.standard_normal())
        hot = rng.integers(groups)
        for layer in range(n_layers):
            a = amplitude * level(shape, layer, onset, horizon)
            if layer < onset:
                values = np.full(groups, 0.1 * a / (groups - 1) * 1.0)
                values[hot] = a * groups - values.sum() + values[hot]
            else:
                values = np.full(groups, a)
            values = values + noise * rng.standard_normal(groups)
            rows.append(pd.DataFrame({"sample_id": f"{task}-{s}", "layer": layer, "group": np.arange(groups),
                                      "metric": metric, "value": values.astype(np.float32)}))
    frame = pd.concat(rows, ignore_index=True)
    frame["model"], frame["task"], frame["n_layers"] = model, task, n_layers
    return frame


def write_run(path: Path, frames: list[pd.DataFrame], model: str, n_layers: int, grid: int = 4,
              parts: bool = False, image: Path | None = None) -> Path:
    """A hand-made run directory following the README's Run directory section (no model involved)."""
    path.mkdir(parents=True, exist_ok=True)
    scores = pd.concat(frames, ignore_index=True)
    (path / "run.json").write_text(json.dumps({"model": model, "n_layers": n_layers, "group": 1}))
    samples = scores.groupby("sample_id", sort=False).task.first().reset_index()
    samples["image"] = str(image) if image else ""
    samples["grid_h"], samples["grid_w"], samples["status"] = grid, grid, "ok"
    samples.to_parquet(path / "samples.parquet", index=False)
    n_groups = int(scores.group.max()) + 1
    groups = pd.DataFrame([{"sample_id": sid, "group": g, "row": g // grid, "col": g % grid, "positions": [5 + g]}
                           for sid in samples.sample_id for g in range(n_groups)])
    groups.to_parquet(path / "groups.parquet", index=False)
    table = scores[["sample_id", "layer", "group", "metric", "value"]]
    if parts:
        (path / "scores").mkdir()
        for i, (sid, part) in enumerate(table.groupby("sample_id", sort=False)):
            part.to_parquet(path / "scores" / f"part-{i:06d}.parquet", index=False)
    else:
        table.to_parquet(path / "scores.parquet", index=False)
    return path
