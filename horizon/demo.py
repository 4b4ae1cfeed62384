"""`horizon demo`: the whole toolkit on the embedded default, end to end.

Scans every zoo model (``data/zoo``) on every synthetic task (``data/tasks``)
twice: with the paper's protocol (``keep``: only one 2x2 window of visual
tokens kept from layer l on, read as the gain in the answer's probability over
keeping none) and with horizon's complementary ``remove`` protocol (the window
removed from layer l on). It analyses the runs, writes the figures and
summary and the interactive report (``report.html``: every run and the pruning
grid in one self-contained page), and answers the paper's two questions from
the data -- whichever way they come out:

1. Is the visually intensive (OCR-like) task's horizon deeper than the general ones'?
2. Is the larger model's relative horizon deeper?

The reading and the pruning grid's horizon switch use the keep protocol's
``gain_prob`` (the paper's measurement); ``dlogp`` of the remove protocol is
read beside it.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import HorizonError
from .io.runs import read_table
from .scores import KEEP_METRICS

DATA = Path(__file__).resolve().parents[1] / "data"


@dataclass
class DemoConfig:
    out: Path = Path("figures")  # figures + summary tables
    runs: Path = Path("demo-run")  # scan run directories (resumable)
    data: Path = DATA
    limit: int = 40  # samples per task
    group: int = 2  # 2x2 windows, as the paper's reference code (the zoo's 6x6 grids give 9 windows)
    protocols: tuple[str, ...] = ("keep", "remove")  # the paper's protocol first; remove as the comparison
    metric: str = "gain_prob"  # the information the reading and the pruning switch use
    comparison_metric: str = "dlogp"  # read beside it, from the remove protocol
    n_boot: int = 1000
    n_perm: int = 1000
    # pruning comparison: one model, two tasks, methods x budgets x switch layers
    prune: bool = True
    prune_model: str = "llava-l"
    prune_tasks: tuple[str, ...] = ("ocr", "colour")
    prune_limit: int = 16
    prune_budgets: tuple[int, ...] = (27, 18)
    prune_layer: int = 2
    prune_switch: tuple[str | int, ...] = ("horizon", 9)


def zoo_models(data: Path) -> list[Path]:
    models = sorted(p for p in (data / "zoo").glob("*") if (p / "config.json").is_file())
    if not models:
        raise HorizonError(f"no zoo models in {data / 'zoo'}; train one with `horizon zoo train NAME`")
    return models


def task_files(data: Path) -> dict[str, Path]:
    files = {p.parent.name: p for p in sorted((data / "tasks").glob("*/test.jsonl"))}
    if not files:
        raise HorizonError(f"no task test sets in {data / 'tasks'}; write them with `horizon tasks`")
    return files


def _verdict(row: pd.Series, what: str) -> str:
    lo, hi, p = row.difference_lo, row.difference_hi, row.p_value
    if math.isnan(row.difference) and ("no information" in str(row.get("note", ""))
                                       or str(row.get("note", "")).startswith("neither")):
        return f"{what}: not comparable ({row.note})"  # no horizons on one side, or on both
    if math.isnan(lo):
        return f"{what}: undetermined"
    ci = f"{row.difference:+.2f} {row.units} [{lo:+.2f}, {hi:+.2f}], p = {p:.3f}"
    if lo > 0 and p < 0.05:
        return f"{what}: yes, deeper by {ci}"
    if hi < 0 and p < 0.05:
        return f"{what}: no, shallower by {ci}"
    return f"{what}: no clear difference ({ci})"


def _difference(table: pd.DataFrame, column: str, first: str, second: str) -> pd.Series | None:
    """The comparison of ``first`` with ``second`` (stored in either order), oriented as first - second."""
    a, b = table[f"{column}_a"], table[f"{column}_b"]
    rows = table[((a == first) & (b == second)) | ((a == second) & (b == first))]
    if rows.empty:
        return None
    row = rows.iloc[0].copy()
    if row[f"{column}_a"] != first:
        row.difference, row.difference_lo, row.difference_hi = (
            -row.difference, -row.difference_hi, -row.difference_lo)
    return row


def answers(comparisons: pd.DataFrame, summary: pd.DataFrame, models: list[str], metric: str) -> list[str]:
    """The two questions, answered per model / task pair from the comparisons table."""
    lines = []
    tasks = sorted(summary.task.unique())
    intensive = [t for t in tasks if t == "ocr"]
    general = [t for t in tasks if t != "ocr"]
    c = comparisons[comparisons.metric == metric]
    for model in models:
        within = c[(c.kind == "task") & (c.model_a == model)]
        for g in general:
            for t in intensive:
                row = _difference(within, "task", t, g)
                if row is not None:
                    lines.append(_verdict(row, f"{model}: is the {t} horizon deeper than the {g} horizon"))
    sizes = sorted(models, key=_size)
    for task in tasks:
        across = c[(c.kind == "model") & (c.task_a == task)]
        for small, large in zip(sizes, sizes[1:]):
            if _family(small) != _family(large):
                continue
            row = _difference(across, "model", large, small)
            if row is not None:
                lines.append(_verdict(row, f"{task}: is {large}'s relative horizon deeper than {small}'s"))
    return lines


def _family(model: str) -> str:
    return model.rsplit("-", 1)[0]


def _size(model: str) -> tuple[str, int]:
    return (_family(model), {"s": 0, "m": 1, "l": 2}.get(model.rsplit("-", 1)[-1], 0))


def _ocr_heatmaps(runs: list[Path], out: Path, metrics: dict[str, str]) -> None:
    """Where the code's information sits, layer by layer, for the deepest model's first OCR sample,
    once per protocol (``metrics``: protocol -> metric drawn)."""
    from .io.runs import read_sample_rows
    from .plots import plot_layer_group_heatmap, plot_token_heatmaps, spread_layers
    from .stats import load_runs

    for protocol, metric in metrics.items():
        ocr = load_runs([r for r in runs if r.name.endswith(f"-ocr-{protocol}")])
        if not ocr:
            continue
        run = max(ocr, key=lambda r: r["n_layers"])
        sample = run["samples"][run["samples"].status == "ok"].sample_id.iloc[0]
        scores = read_sample_rows(run["path"], "scores", [sample])  # the drawn sample's rows only
        groups = read_sample_rows(run["path"], "groups", [sample])
        layers = spread_layers(sorted(scores.layer.unique()), 4)
        samples = read_sample_rows(run["path"], "samples", [sample])
        plot_token_heatmaps(scores, groups, samples, sample, layers, metric,
                            int(run["config"]["group"]), out, model=run["model"], image_root=run["path"])
        plot_layer_group_heatmap(scores, sample, metric, out, model=run["model"])


def floor_line(summary: pd.DataFrame) -> str:
    """The largest numerical floor of the runs, per metric, as the summary applied it."""
    parts = ", ".join(f"{m} {v:.1e}" for m, v in summary.groupby("metric")["floor"].max().sort_index().items())
    return f"numerical floor (largest over the runs; scores within it count as zero): {parts}"


def _redo_if_stale(directory: Path, work):
    """Run ``work`` (which resumes ``directory``); if the directory was made under another configuration
    (an older horizon, say), delete it and start over. The demo owns its run directories; user runs are
    never deleted, they refuse to resume instead."""
    from .errors import HorizonError

    try:
        return work()
    except HorizonError as exc:
        if not str(exc).startswith("cannot resume"):
            raise
        print(f"{directory} was made under another configuration (an older horizon?); redoing it")
        shutil.rmtree(directory)
        return work()


def run_demo(cfg: DemoConfig) -> dict:
    from .models import load
    from .analysis import analyze, format_table
    from .report import report
    from .scan import scan
    from .stats import StatsParams

    models, tasks = zoo_models(cfg.data), task_files(cfg.data)
    runs = []
    for model_dir in models:
        vlm = load(model_dir, dtype="float32", device="cpu")
        for task, data in tasks.items():
            for protocol in cfg.protocols:
                run = cfg.runs / f"{model_dir.name}-{task}-{protocol}"
                print(f"scan {model_dir.name} on {task} ({cfg.limit} samples, {protocol}, {cfg.group}x{cfg.group} "
                      f"windows) -> {run}")
                _redo_if_stale(run, lambda: scan(vlm, data, out=run, resume=(run / "run.json").exists(),
                                                 group=cfg.group, limit=cfg.limit, protocol=protocol, max_new_tokens=4))
                runs.append(run)
    params = StatsParams(n_boot=cfg.n_boot, n_perm=cfg.n_perm)
    result = analyze(runs, cfg.out, params=params, figures_dir=cfg.out)
    _ocr_heatmaps(runs, cfg.out, {"keep": cfg.metric, "remove": cfg.comparison_metric})
    summary = result["summary"]
    names = sorted(summary.model.unique())
    lines = ["", format_table(summary), "", floor_line(summary), ""]
    accuracy = []
    for run in runs:
        if not run.name.endswith(f"-{cfg.protocols[0]}"):
            continue  # the clean answers are the same under every protocol
        samples = read_table(run, "samples")
        config = json.loads((run / "run.json").read_text())
        ok = samples[samples.status == "ok"]
        acc = (ok.clean_pred.str.strip() == ok.answer.str.strip()).mean()
        accuracy.append(f"{Path(config['model']).name}/{ok.task.iloc[0]} {acc:.0%}")
    lines.append("accuracy on the scanned samples (greedy, exact match): " + ", ".join(accuracy))
    present = set(summary.metric)
    for metric in [m for m in (cfg.metric, cfg.comparison_metric) if m in present]:
        what = "keep protocol, the paper's" if metric in KEEP_METRICS else "remove protocol, the comparison"
        lines.append(f"\n{metric} ({what}):")
        lines += ["  " + a for a in answers(result["comparisons"], summary, names, metric)]
    grids = []
    if cfg.prune:
        lines += prune_demo(cfg)
        grid_dir = cfg.runs / f"prune-{cfg.prune_model}"
        grids = [grid_dir] if (grid_dir / "grid.csv").is_file() else []
    text = "\n".join(lines)
    print(text)
    (cfg.out / "demo.txt").write_text(text.lstrip() + "\n")
    written = report(runs, cfg.out / "report.html", grids=grids, params=params)
    # its size stays out of demo.txt, which reads the results; the page is checked against its 5 MB budget
    print(f"\ninteractive report: {written['path']} ({written['size'] / 1e6:.2f} MB, every run"
          + (" and the pruning grid" if grids else "") + "; one self-contained page, open it in a browser)")
    result["report"] = written["path"]
    return result


def prune_demo(cfg: DemoConfig) -> list[str]:
    """Prune one zoo model with every method, budget and switch layer; plot and read the result."""
    from .data import read_jsonl
    from .models import load
    from .prune.evaluate import PruneConfig
    from .prune.grid import GridConfig, prune_grid
    from .benchmarks import EvalSet

    model_dir = cfg.data / "zoo" / cfg.prune_model
    files = task_files(cfg.data)
    samples = [s for t in cfg.prune_tasks if t in files for s in read_jsonl(files[t])[: cfg.prune_limit]]
    if not model_dir.is_dir() or not samples:
        return [f"\npruning: skipped (no {model_dir} or no {', '.join(cfg.prune_tasks)} test sets)"]
    print(f"prune {cfg.prune_model} on {', '.join(cfg.prune_tasks)} ({cfg.prune_limit} samples each) -> "
          f"{cfg.runs / ('prune-' + cfg.prune_model)}")
    grid = GridConfig(methods=("random", "fastv", "divprune", "dart"), budgets=cfg.prune_budgets,
                      prune_layer=cfg.prune_layer, switch_layers=cfg.prune_switch,
                      eval=PruneConfig(summary=cfg.out / "summary.json", horizon_metric=cfg.metric,
                                       max_new_tokens=3))
    vlm = load(model_dir, dtype="float32", device="cpu")
    source = " ".join(str(files[t]) for t in cfg.prune_tasks if t in files) + f" limit={cfg.prune_limit}"
    grid_dir = cfg.runs / f"prune-{cfg.prune_model}"
    frame = _redo_if_stale(grid_dir, lambda: prune_grid(vlm, EvalSet(samples, "exact", "jsonl", source), grid_dir, grid,
                                                        progress=False, figures=cfg.out))
    # wall time stays in the grid directory: the committed table must reproduce byte for byte
    frame.drop(columns=["seconds_per_sample"]).to_csv(cfg.out / "prune_grid.csv", index=False, float_format="%.6g")
    return prune_reading(frame, cfg.prune_layer)


def prune_reading(frame: pd.DataFrame, prune_layer: int) -> list[str]:
    """What the pruning grid says, per task, in plain words."""
    lines = ["\npruning (exact-match accuracy; random stages: mean of 3 seeds):"]
    for task, sub in frame.groupby("task"):
        none = sub[sub.kind == "none"].accuracy
        lines.append(f"  {task}: unpruned {none.iloc[0]:.2f}" if len(none) else f"  {task}:")
        singles = sub[sub.kind == "single"]
        for budget, rows in singles.groupby("budget"):
            best = rows.sort_values("accuracy", ascending=False)
            parts = ", ".join(f"{r.method} {r.accuracy:.2f}" for r in best.itertuples())
            lines.append(f"    keep {int(budget)} from layer {prune_layer}: {parts}")
        hybrids = sub[sub.kind == "hybrid"]
        for (budget, switch), rows in hybrids.groupby(["budget", "switch_layer"]):
            tag = " = horizon" if (rows.switch == "horizon").all() else ""
            parts = ", ".join(f"{r.method} {r.accuracy:.2f}" for r in rows.sort_values("accuracy",
                                                                                      ascending=False).itertuples())
            lines.append(f"    keep {int(budget)}, then random from layer {int(switch)}{tag}: {parts}")
    return lines
