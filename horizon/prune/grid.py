"""`prune_grid`: methods x budgets x switch layers, evaluated and plotted.

Schedules in the grid (P = ``prune_layer``, k = a budget, s = a switch layer):

* ``none``: the unpruned model, the reference line;
* single: ``method@P:k`` for every method and budget; a budget is a token
  count or a percentage of each sample's visual tokens (``50%``, see
  :mod:`horizon.prune.schedule`);
* hybrid: ``method@P:k,random@s:deep`` -- the method in shallow layers, then
  random pruning down to ``deep`` tokens (default k // 4, at least 1; for a
  percentage budget p% the default is (p / 4)%) from layer s on.
  ``s = "horizon"`` puts the random stage at the measured horizon of each
  sample's task (``summary.json`` of ``horizon analyze``).

Each schedule is one ``prune_eval`` directory under ``out`` (resumable per
schedule: a killed grid continues each where it stopped). The grid runs
samples outermost: per sample one encoding, one vision-tower pass and one
unpruned prefix (the layers before ``prune_layer``) shared by every schedule
and seed (:mod:`horizon.prune.prefix`). The
collected ``grid.csv`` has one row per schedule and task, and
``prune_tradeoff_<model>_<task>.png/pdf`` plot accuracy against the average
number of visual tokens with the horizon marked.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from ..benchmarks import EvalSet, read_eval
from ..errors import HorizonError
from ..models import VisionLM, load, refuse_extra_images
from ..options import check_out_folder
from .evaluate import (EvalEntry, EvalStore, PruneConfig, horizon_records, model_label,
                       run_entries)
from .schedule import format_budget, parse_budget
from .strategies import METHODS

log = logging.getLogger("horizon")


@dataclass
class GridConfig:
    """The grid. ``switch_layers`` entries are layers or ``"horizon"``."""

    methods: tuple[str, ...] = ("random", "fastv", "divprune", "dart")
    budgets: tuple[int | str, ...] = (192, 128, 64)  # token counts or percentages ("50%")
    prune_layer: int = 2
    switch_layers: tuple[str | int, ...] = ("horizon",)
    deep_keep: int | str | None = None  # the hybrid's random stage's budget (default: budget // 4, or p/4 %)
    singles: bool = True
    hybrids: bool = True
    eval: PruneConfig = field(default_factory=PruneConfig)  # positions, seeds, limit, summary, ...

    def validate(self, n_layers: int | None = None) -> None:
        """Check the grid; without ``n_layers`` (before a model loads) everything but the layers' range."""
        unknown = [m for m in self.methods if m not in METHODS or m in ("vtw", "info")]
        if unknown:
            raise HorizonError(f"--methods: {', '.join(unknown)} cannot be a grid method "
                               "(use random, fastv, divprune, dart)")
        if (self.singles or self.hybrids) and not self.methods:
            raise HorizonError("--methods is empty: give one or more of random, fastv, divprune, dart")
        if (self.singles or self.hybrids) and not self.budgets:
            raise HorizonError("--budgets is empty: give token counts or percentages, e.g. 192,128,64 or 50%,25%")
        if self.hybrids and not self.switch_layers:
            raise HorizonError("--switch-layers is empty: give layers or 'horizon' (or --no-hybrids)")
        text = ",".join(map(str, self.budgets))
        budgets = [parse_budget(str(b), f"--budgets {text!r}") for b in self.budgets]
        if any(b <= 0 for b in budgets):
            raise HorizonError(f"--budgets {text!r}: budgets must be positive token counts or percentages")
        if self.deep_keep is not None:
            parse_budget(str(self.deep_keep), f"--deep-keep {self.deep_keep!r}")
        self.eval.validate()
        if n_layers is None:
            return
        if not 0 <= self.prune_layer < n_layers:
            raise HorizonError(f"--prune-layer {self.prune_layer} out of range (0..{n_layers - 1})")
        early = [m for m in self.methods if m in ("fastv", "dart")]
        if early and self.prune_layer == 0:
            raise HorizonError(f"--prune-layer 0: {', '.join(early)} read the layer before the stage; "
                               "use a layer >= 1")
        if self.hybrids and "horizon" in self.switch_layers and not self.eval.summary:
            raise HorizonError("--switch-layers horizon needs --summary SUMMARY.json (from horizon analyze)")
        for s in self.switch_layers:
            if s != "horizon" and not self.prune_layer < int(s) < n_layers:
                raise HorizonError(f"--switch-layers {s}: must lie after --prune-layer {self.prune_layer} "
                                   f"and inside the model (< {n_layers})")


GRID_FILES = re.compile(r"^(grid\.csv|prune_tradeoff_.+\.(png|pdf))$")


def preflight_grid(out: str | Path, cfg: GridConfig, resume: bool = True) -> None:
    """The refusals that need no model, before one loads: ``out`` must be missing, empty or a prune-grid folder
    (grid.csv, figures, evaluation folders), and each of the grid's cells an evaluation or absent, so no file of
    the user's is overwritten. The grid resumes its cells by default: then a finished cell is not refused."""
    out = Path(out)
    check_out_folder(out)
    cells = {entry["name"] for entry in grid_entries(cfg)}

    def ours(path: Path) -> bool:
        if ".tmp-" in path.name:
            return True  # a killed atomic write
        if path.is_file():
            return bool(GRID_FILES.match(path.name))
        # a cell of this grid, of a grid of other budgets, or one a kill left with only a temporary file
        return path.name in cells or (path / "eval.json").exists() or all(".tmp-" in p.name for p in path.iterdir())

    foreign = sorted(p.name for p in out.iterdir() if not ours(p)) if out.is_dir() else []
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise HorizonError(f"{out} exists and is not a prune-grid folder (it holds {', '.join(foreign[:3])}{more}); "
                           "choose another --out")
    for name in sorted(cells):
        EvalStore(out / name).preflight(resume)


def parse_switch_layers(text: str) -> tuple[str | int, ...]:
    out: list[str | int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "horizon":
            out.append(part)
        elif re.fullmatch(r"\d+", part):
            out.append(int(part))
        else:
            raise HorizonError(f"--switch-layers: {part!r} is neither a layer number nor 'horizon'")
    return tuple(out)


def deep_budget(budget: int | str, deep_keep: int | str | None) -> str:
    """The hybrid's random-stage budget: ``deep_keep``, else a quarter of ``budget`` (at least 1 token)."""
    if deep_keep is not None:
        return format_budget(parse_budget(str(deep_keep), "--deep-keep"))
    b = parse_budget(str(budget), "--budgets")
    if isinstance(b, Decimal):
        quarter = format(b / 4, "f")
        quarter = quarter.rstrip("0").rstrip(".") if "." in quarter else quarter
        return f"{quarter}%"  # a quarter of the percentage, resolved per sample
    return str(max(1, b // 4))


def grid_entries(cfg: GridConfig) -> list[dict[str, Any]]:
    """One entry per schedule: its evaluation config and how it is labelled."""
    entries = [{"name": "none", "method": "none", "kind": "none", "budget": None, "switch": None,
                "config": replace(cfg.eval, schedule="none", switch_at=None)}]
    P = cfg.prune_layer
    for method in cfg.methods:
        for k in cfg.budgets:
            if cfg.singles:
                entries.append({"name": f"{method}@{P}-{k}", "method": method, "kind": "single", "budget": k,
                                "switch": None, "config": replace(cfg.eval, schedule=f"{method}@{P}:{k}",
                                                                  switch_at=None)})
            if cfg.hybrids:
                deep = deep_budget(k, cfg.deep_keep)
                for s in cfg.switch_layers:
                    # a horizon switch is filled in per task; the placeholder layer keeps the text parseable
                    entries.append({
                        "name": f"{method}@{P}-{k}+random@{s}-{deep}", "method": f"{method}+random",
                        "kind": "hybrid", "budget": k, "switch": s,
                        "config": replace(cfg.eval, schedule=f"{method}@{P}:{k},random@{P + 1}:{deep}",
                                          switch_at=s),
                    })
    return entries


def prune_grid(
    model: VisionLM | str | Path,
    data: str | Path | EvalSet,
    out: str | Path,
    config: GridConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    answers: str | Path | None = None,
    image_folder: str | Path | None = None,
    data_format: str = "auto",
    figures: str | Path | None = None,
) -> pd.DataFrame:
    """Run every schedule of the grid; return the tidy results (also ``out/grid.csv``) and draw the figures."""
    from ..plots import _slug, prune_tradeoff

    cfg = config or GridConfig()
    evalset = data if isinstance(data, EvalSet) else read_eval(data, answers=answers, image_folder=image_folder,
                                                               format=data_format,
                                                               strict=cfg.eval.on_error == "stop")
    cfg.validate()
    preflight_grid(out, cfg, resume)  # before the weights load
    if not isinstance(model, VisionLM):
        refuse_extra_images(model, evalset.samples, str(evalset.source))  # before the weights load
    vlm = model if isinstance(model, VisionLM) else load(model)
    cfg.validate(vlm.n_layers)
    out = Path(out)
    name = cfg.eval.horizon_model or model_label(vlm)
    horizons = horizon_records(cfg.eval.summary, name, cfg.eval.horizon_metric) if cfg.eval.summary else {}
    # a horizon switch needs a task whose horizon lies after the first stage
    def usable(task: str) -> bool:
        h = horizons.get(task)
        return h is not None and h.found and h.switch > cfg.prune_layer

    at_horizon = EvalSet([s for s in evalset.samples if usable(s.task)], evalset.metric, evalset.format,
                         evalset.source)
    entries = grid_entries(cfg)
    missing = sorted({s.task for s in evalset.samples} - {s.task for s in at_horizon.samples})
    if missing and any(e["switch"] == "horizon" for e in entries):
        reasons = [f"{t} ({horizons[t].describe()})" if t in horizons else f"{t} (not in the summary)" for t in missing]
        log.warning("grid: the horizon-switch schedules skip task(s) without a horizon after layer %d: %s",
                    cfg.prune_layer, ", ".join(reasons))
    # every schedule in one pass over the samples: per sample one encoding and one shared prefix
    todo = [(entry, at_horizon if entry["switch"] == "horizon" else evalset) for entry in entries]
    todo = [(entry, data) for entry, data in todo if data.samples]
    info_cache: dict = {}
    evals: list[EvalEntry] = []
    existed = out.exists()
    try:
        for entry, data in todo:
            evals.append(EvalEntry(vlm, data, entry["config"], out / entry["name"], resume, info_cache))
    except BaseException:
        for made in evals:
            made.abandon()  # a later cell refused: the cells opened before it leave nothing behind
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    log.info("grid: %d schedules", len(evals))
    results = run_entries(vlm, evals, progress, desc="prune-grid")
    rows = []
    for (entry, _), result in zip(todo, results):
        for task in result.tasks.itertuples():
            if task.task == "all":
                continue
            switch = entry["switch"]
            if switch == "horizon":
                switch = horizons[task.task].switch
            rows.append({
                "model": name, "task": task.task, "method": entry["method"], "kind": entry["kind"],
                "schedule": (result.summary.get("schedules") or {}).get(task.task, entry["config"].schedule),
                "budget": entry["budget"], "switch_layer": switch,
                "switch": str(entry["switch"]), "avg_tokens": task.avg_visual_tokens,
                "avg_retained_fraction": task.avg_retained_fraction, "n_capped": task.n_capped,
                "accuracy": task.accuracy,
                "accuracy_std": task.accuracy_std, "accuracy_ci_lo": task.accuracy_ci_lo,
                "accuracy_ci_hi": task.accuracy_ci_hi, "n_seeds": task.n_seeds,
                "relative_flops": task.relative_flops, "seconds_per_sample": task.seconds_per_sample,
                "n_samples": task.n_samples, "metric": result.summary["metric"],
            })
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "grid.csv", index=False)
    figures = Path(figures) if figures else out
    for task, sub in frame.groupby("task"):
        horizon = horizons.get(task)
        unpruned = sub[sub.kind == "none"].accuracy
        # a percentage budget is plotted as its number (the panels only group and order by budget)
        budgets = sub.budget.map(lambda b: float(str(b).rstrip("%")) if b is not None and b == b else b)
        prune_tradeoff(sub[sub.kind != "none"].assign(switch_layer=lambda f: f.switch_layer.astype(float),
                                                      budget=budgets[sub.kind != "none"]), figures,
                       horizon=horizon, unpruned=float(unpruned.iloc[0]) if len(unpruned) else None,
                       name=f"prune_tradeoff_{_slug(name)}_{_slug(task)}")
    return frame
