"""`prune_eval`: greedy answers under a pruning schedule, scored, with cost.

One evaluation directory holds ``eval.json`` (the configuration and its hash),
``predictions.jsonl`` (one line per sample and seed, appended and flushed as
each finishes, so a killed run keeps its work and ``resume`` continues) and
``summary.json`` / ``summary.csv`` (accuracy, average visual tokens per layer,
the average retained fraction of each sample's visual tokens, the samples
whose budget was capped, prefill FLOPs and wall time, overall and per task;
random schedules as mean ± std over seeds).

Budgets may be percentages of each sample's visual tokens
(``divprune@0:50%``); every prediction row holds the schedule as written
(``schedule``) and with the counts it resolved to for that sample
(``resolved_schedule``). A budget above the visual tokens a sample has keeps
them all: the row says ``capped`` (and which stages), the summary counts
``n_capped`` samples.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..benchmarks import METRICS, EvalSet, Scoring, metric_choices, read_eval
from ..benchmarks.files import read_json
from ..data import Sample
from ..decoding import DECODING_RULES, Decoding
from ..errors import HorizonError, SampleError
from ..models import VisionLM, load, refuse_extra_images
from ..options import check_out_folder, check_run_options
from ..records import NO_INFORMATION, Horizon
from ..scan import check_context, encode_sample
from ..io.runs import atomic_write_bytes, check_resume, config_hash
from .generate import Generation, generate, prefill_flops, sample_seed
from .prefix import (READS_LAYER_BEFORE, BatchRow, SharedPrefix, continue_batch, continue_generation,
                     family_batch_refusal, first_layer, shared_prefix)
from .schedule import Schedule, check_schedule_text, parse_schedule

log = logging.getLogger("horizon")

HASHED = ("model", "data", "schedule", "switch_at", "schedules", "positions", "seeds", "seed", "max_new_tokens",
          "metric", "info_run", "dtype", "decoding")


@dataclass
class PruneConfig:
    """How to evaluate one schedule. ``schedule`` is ``method@layer:keep,...`` or ``none``."""

    schedule: str = "none"
    positions: str = "original"  # original | renumber
    switch_at: str | int | None = None  # "horizon" or a layer: where the schedule's random stage goes
    summary: str | Path | None = None  # summary.json of `horizon analyze`, for switch_at="horizon"
    horizon_metric: str = "dlogp"
    horizon_model: str | None = None  # the model's name in summary.json (default: as analyze names it)
    horizon_task: str | None = None  # the task to take the horizon of (default: each sample's task)
    seeds: int | None = None  # None: 3 when the schedule has a random stage, else 1
    seed: int = 0
    max_new_tokens: int = 16
    metric: str = "auto"  # "auto" (the data's own) or a name in horizon.benchmarks.METRICS
    info_run: str | Path | None = None  # scan run directory for `info` stages
    info_metric: str | None = None
    limit: int | None = None
    on_error: str = "stop"
    decoding: str = "checkpoint"  # checkpoint | greedy (horizon.decoding)
    batch_size: int = 1  # continuations generated together (left-padded); the answers do not depend on it
    share_prefix: bool = True  # False: one full generate per answer, as before shared prefixes (for comparison)

    def validate(self) -> None:
        if self.metric not in metric_choices():
            raise HorizonError(f"--metric must be one of {', '.join(metric_choices())}, got {self.metric!r}")
        if self.positions not in ("original", "renumber"):
            raise HorizonError(f"--positions must be original or renumber, got {self.positions!r}")
        if self.seeds is not None and self.seeds < 1:
            raise HorizonError(f"--seeds must be positive, got {self.seeds}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise HorizonError(f"--batch-size must be a positive integer, got {self.batch_size!r}")
        if self.batch_size > 1 and not self.share_prefix:
            raise HorizonError("--batch-size above 1 batches continuations of a shared prefix; it needs share_prefix")
        check_run_options(limit=self.limit, seed=self.seed, max_new_tokens=self.max_new_tokens)
        check_schedule_text(self.schedule)
        if self.on_error not in ("stop", "skip"):
            raise HorizonError(f"--on-error must be stop or skip, got {self.on_error!r}")
        if self.decoding not in DECODING_RULES:
            raise HorizonError(f"--decoding must be one of {', '.join(DECODING_RULES)}, got {self.decoding!r}")
        if self.switch_at == "horizon" and not self.summary:
            raise HorizonError("--switch-at horizon needs --summary SUMMARY.json (from horizon analyze)")
        if self.switch_at is not None and self.switch_at != "horizon":
            try:
                self.switch_at = int(self.switch_at)
            except ValueError:
                raise HorizonError(f"--switch-at must be 'horizon' or a layer number, got {self.switch_at!r}") from None


@dataclass
class PruneResult:
    predictions: pd.DataFrame
    summary: dict[str, Any]
    out: Path | None = None
    tasks: pd.DataFrame = field(default_factory=pd.DataFrame)


def model_label(vlm: VisionLM) -> str:
    """The model's name as `horizon analyze` writes it in summary.json."""
    path = Path(vlm.source)
    return path.name if path.exists() or path.is_absolute() else vlm.source


# -- schedules per sample ------------------------------------------------------

def summary_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a summary.json written by `horizon analyze`, checked."""
    path = Path(path)
    records = read_json(path, "--summary")
    if not isinstance(records, list) or not all(isinstance(r, dict) and {"model", "task", "metric", "horizon"} <= r.keys()
                                                for r in records):
        raise HorizonError(f"--summary {path}: expected the summary.json list written by horizon analyze")
    return records


def horizon_records(path: str | Path, model: str, metric: str,
                    records: list[dict[str, Any]] | None = None) -> dict[str, Horizon]:
    """task -> :class:`Horizon` of ``model`` and ``metric`` in a summary.json of `horizon analyze`; may be empty."""
    records = summary_records(path) if records is None else records
    try:
        return {str(r["task"]): Horizon.from_record(r) for r in records
                if str(r["model"]) == model and r["metric"] == metric}
    except HorizonError as exc:
        raise HorizonError(f"--summary {path}: {exc}") from None


def read_horizons(path: str | Path, model: str, metric: str) -> dict[str, Horizon]:
    """task -> :class:`Horizon` for ``model`` in a summary.json; an error when the model has none."""
    records = summary_records(path)
    found = horizon_records(path, model, metric, records)
    if not found:
        models = sorted({str(r["model"]) for r in records})
        raise HorizonError(f"--summary {path}: no {metric!r} horizon for model {model!r}; it has models "
                           f"{', '.join(models)} (choose with --horizon-model)")
    return found


class Schedules:
    """The schedule each sample runs: the same text, with the random stage at its task's horizon if asked."""

    def __init__(self, cfg: PruneConfig, vlm: VisionLM):
        self.cfg, self.n_layers = cfg, vlm.n_layers
        self.text = cfg.schedule.strip()
        self.horizons: dict[str, Horizon] = {}
        if cfg.switch_at == "horizon":
            self.horizons = read_horizons(cfg.summary, cfg.horizon_model or model_label(vlm), cfg.horizon_metric)

    def switch_layer(self, task: str) -> int | None:
        if self.cfg.switch_at is None:
            return None
        if self.cfg.switch_at != "horizon":
            return int(self.cfg.switch_at)
        task = self.cfg.horizon_task or task
        if task not in self.horizons:
            raise HorizonError(f"--summary {self.cfg.summary}: no horizon for task {task!r}; it has "
                               f"{', '.join(sorted(self.horizons))} (map with --horizon-task)")
        h = self.horizons[task]
        if h.status == NO_INFORMATION:
            raise HorizonError(f"--summary {self.cfg.summary}: task {task!r} has no information at any layer (its "
                               f"{self.cfg.horizon_metric} curve never rises above the numerical floor), so it has no "
                               "horizon to switch at; choose a layer with --switch-at N")
        if not h.found:
            raise HorizonError(f"--summary {self.cfg.summary}: task {task!r} has no horizon ({h.describe()}: "
                               "information does not vanish within the model); choose a layer with --switch-at N")
        return h.switch

    def text_for(self, task: str) -> str:
        """The schedule text with the random stage moved to the switch layer."""
        if self.text in ("", "none"):
            if self.cfg.switch_at is not None:
                raise HorizonError("--switch-at moves the schedule's random stage, but --schedule is none")
            return ""
        layer = self.switch_layer(task)
        if layer is None:
            return self.text
        parts = [p.strip() for p in self.text.split(",")]
        randoms = [i for i, p in enumerate(parts) if p.startswith("random@")]
        if not randoms:
            raise HorizonError(f"--switch-at: --schedule {self.text!r} has no random stage to move")
        i = randoms[-1]
        parts[i] = f"random@{layer}:{parts[i].split(':')[-1]}"
        return ",".join(parts)

    def for_sample(self, task: str, n_visual: int) -> Schedule:
        text = self.text_for(task)
        if not text:
            return Schedule(())
        try:
            # a budget above the sample's visual tokens keeps them all; the row records it as capped
            return parse_schedule(text, self.n_layers, n_visual, cap=True)
        except HorizonError as exc:
            where = f" (random stage at the {task!r} horizon)" if self.cfg.switch_at == "horizon" else ""
            raise HorizonError(f"{exc}{where}") from None


def has_random(schedule_text: str) -> bool:
    return "random@" in schedule_text


# -- info stages ------------------------------------------------------------------

class InfoScores:
    """Per-position information from a scan run, for ``info`` stages."""

    def __init__(self, run: str | Path, metric: str | None):
        from ..io.runs import read_config, read_table, sample_parts

        self.run = Path(run)
        config = read_config(run)
        # a study's scores need not fit in memory: a sample's are read when it comes up
        self.samples = read_table(run, "samples", columns=["sample_id", "input_ids"]).astype({"sample_id": str})
        self.samples = self.samples.set_index("sample_id")
        present = list(config.get("metrics") or
                       read_table(run, "scores", columns=["metric"]).metric.astype(str).unique())
        self.metric = metric or next((m for m in ("dlogp", "kl", "gain_logp", "dprob", "gain_prob") if m in present),
                                     None)
        if self.metric not in present:
            raise HorizonError(f"--info-run {run}: no {self.metric!r} scores (it has {', '.join(map(str, present))})")
        self.parts = sample_parts(run)

    def _rows(self, table: str, sample_id: str) -> pd.DataFrame:
        from ..io.runs import read_sample_rows, read_table

        name = self.parts.get(sample_id)
        if name is not None:  # the scan layout: the sample's own part, found by name
            path = self.run / table / name
            return read_table(self.run, table, files=[path] if path.exists() else [])
        return read_sample_rows(self.run, table, [sample_id])

    def for_sample(self, sample_id: str, input_ids: torch.Tensor) -> dict[int, torch.Tensor]:
        if sample_id not in self.samples.index:
            raise SampleError(sample_id, f"not in the --info-run {self.run}")
        scanned = list(self.samples.loc[sample_id, "input_ids"])
        prompt = input_ids[0].tolist()
        if scanned[: len(prompt)] != prompt:
            raise SampleError(sample_id, f"its prompt differs from the one scanned in {self.run}")
        groups = self._rows("groups", sample_id)
        scores = self._rows("scores", sample_id)
        scores = scores[scores.metric.astype(str) == self.metric]
        out: dict[int, torch.Tensor] = {}
        for layer, frame in scores.groupby("layer"):
            info = torch.full((len(prompt),), float("nan"))
            value = dict(zip(frame.group.astype(int), frame.value.astype(float)))
            for g, positions in zip(groups.group.astype(int), groups.positions):
                info[list(positions)] = value.get(g, float("nan"))
            out[int(layer)] = info
        return out


# -- scoring: delegated to the benchmark registry (horizon.benchmarks) ---------------------

def resolve_metric(metric: str, evalset: EvalSet) -> str:
    """The metric's name: ``metric``, or for ``auto`` the one the data's benchmark scores with."""
    name = evalset.metric if metric == "auto" else metric
    METRICS.get(name)  # an unknown name fails here, in one line, before any work
    return name


def scoring(metric: str) -> Scoring:
    return METRICS.get(metric)


def sample_score(metric: str, prediction: str, sample: Sample) -> float:
    """One answer's score in [0, 1], as the metric's official evaluator scores it."""
    return METRICS.get(metric).score(prediction, sample)


def score_frame(metric: str, frame: pd.DataFrame) -> dict[str, float]:
    """The metric's numbers over one seed's predictions (its benchmark's aggregation); ``accuracy`` is the headline."""
    return METRICS.get(metric).aggregate(frame)


def bootstrap_ci(scores: pd.Series, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap CI of the mean per-sample score (resampling samples)."""
    values = scores.to_numpy(dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(predictions: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per task (and ``all``): metric mean and std over seeds, cost means."""
    rows = []
    ok = predictions[predictions.status == "ok"]
    for task, frame in [("all", ok), *sorted(ok.groupby("task"))]:
        if frame.empty:
            continue
        per_seed = pd.DataFrame([{"seed": s, **score_frame(metric, f)} for s, f in frame.groupby("seed")])
        row: dict[str, Any] = {"task": task, "n_samples": int(frame.sample_id.nunique()),
                               "n_seeds": len(per_seed)}
        for col in per_seed.columns.drop("seed"):
            row[col] = float(per_seed[col].mean())
            row[f"{col}_std"] = float(per_seed[col].std(ddof=1)) if len(per_seed) > 1 else 0.0
        # sampling uncertainty: the seed spread says nothing about how few samples there were
        row["accuracy_ci_lo"], row["accuracy_ci_hi"] = bootstrap_ci(frame.groupby("sample_id").score.mean())
        capped = frame.capped.eq(True) if "capped" in frame else pd.Series(False, frame.index)  # absent: older rows
        row.update({
            "avg_visual_tokens": float(frame.avg_visual_tokens.mean()),
            "n_visual": float(frame.n_visual.mean()),
            # mixed resolutions: each sample's own share, so a 234-token and a 3,834-token image weigh alike
            "avg_retained_fraction": float((frame.avg_visual_tokens / frame.n_visual).mean()),
            "n_capped": int(frame[capped].sample_id.nunique()),
            "prefill_tflops": float(frame.prefill_flops.mean() / 1e12),
            "relative_flops": float(frame.relative_flops.mean()),
            "seconds_per_sample": float(frame.seconds.mean()),
            "wall_seconds": float(frame.seconds.sum()),
            "n_errors": int((predictions[predictions.task == task].status != "ok").sum()) if task != "all"
            else int((predictions.status != "ok").sum()),
        })
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["task", "n_samples"])  # every sample failed: no rows


# -- the evaluation directory -----------------------------------------------------------

# a predictions row must carry these to be resumed (done pairs) and summarised (ok rows' costs and score)
ROW_KEYS = ("sample_id", "task", "seed")
OK_ROW_KEYS = ("prediction", "score", "n_visual", "avg_visual_tokens", "prefill_flops", "relative_flops", "seconds")


class EvalStore:
    """eval.json + append-only predictions.jsonl + summary; resumable."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.predictions = self.path / "predictions.jsonl"

    def preflight(self, resume: bool) -> None:
        """The refusals that need no model, checked before one loads: --out is a file, cannot be written, is a
        folder that is not an evaluation (its files would be overwritten), or a finished one without ``resume``."""
        check_out_folder(self.path)
        meta = self.path / "eval.json"
        if meta.exists():
            if not resume:
                raise HorizonError(f"{self.path} already holds an evaluation; pass --resume to continue it or "
                                   "choose another --out")
            try:  # the resume compares its configuration: a damaged one is named here, not in a traceback
                if not isinstance(json.loads(meta.read_bytes()), dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                raise HorizonError(f"{meta}: not an evaluation's configuration ({exc}); choose another --out "
                                   "(its predictions.jsonl keeps the answers written so far)") from None
            return
        # a killed atomic write leaves only a temporary file: that folder is still ours to fill
        stray = sorted(p.name for p in self.path.iterdir() if ".tmp-" not in p.name) if self.path.is_dir() else []
        if stray:
            more = f" and {len(stray) - 3} more" if len(stray) > 3 else ""
            raise HorizonError(f"{self.path} exists, is not empty and holds no eval.json, so it is not an evaluation "
                               f"(it holds {', '.join(stray[:3])}{more}); choose another --out")

    def open(self, config: dict[str, Any], resume: bool) -> list[dict[str, Any]]:
        config = {**config, "config_hash": config_hash(config, HASHED)}
        meta = self.path / "eval.json"
        self.preflight(resume)
        if check_resume(meta, config, HASHED, resume, "an evaluation"):
            for stray in self.path.glob(".*.tmp-*"):  # what a write killed midway left; its target is intact
                stray.unlink(missing_ok=True)
            return self._retry_failed(self._read())
        with self._writing(self.path / "eval.json"):
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(meta, (json.dumps(config, indent=2, default=str) + "\n").encode())
            self.predictions.write_text("")
        return []

    def _retry_failed(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A resume retries the samples that failed (an error is not a result: the input may have been fixed
        since); their rows leave predictions.jsonl, rewritten whole and atomically, so each sample has one row."""
        failed = [r for r in rows if r.get("status", "ok") != "ok"]
        if not failed:
            return rows
        kept = [r for r in rows if r.get("status", "ok") == "ok"]
        with self._writing(self.predictions):
            atomic_write_bytes(self.predictions, "".join(json.dumps(r) + "\n" for r in kept).encode())
        ids = sorted({str(r["sample_id"]) for r in failed})
        log.info("resume: retrying %d sample(s) that failed before: %s", len(ids), ", ".join(ids))
        return kept

    @contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """A write that fails (a full disk, a file system gone read-only) as one line; the answers written so
        far stay, and a cut last line is dropped by the resume."""
        try:
            yield
        except OSError as exc:
            done = self.predictions.read_bytes().count(b"\n") if self.predictions.exists() else 0
            raise HorizonError(f"{path}: cannot write ({exc.strerror or exc}); the {done} answer(s) written are "
                               "kept: free some space (or fix the folder) and rerun with --resume") from None

    def _read(self) -> list[dict[str, Any]]:
        """The rows written so far. A last line without its newline was cut by a kill: it is dropped (its sample
        reruns). A whole line that is not a row is damage nothing can repair: refused, the file left as it is."""
        if not self.predictions.exists():
            return []
        rows, good = [], 0
        data = self.predictions.read_bytes()
        for number, line in enumerate(data.splitlines(keepends=True), 1):
            if not line.endswith(b"\n"):
                break  # a line cut off by a kill: dropped, its sample reruns
            rows.append(self._row(line, number))
            good += len(line)
        if good != len(data):
            with open(self.predictions, "r+b") as fh:
                fh.truncate(good)
        return rows

    def _row(self, line: bytes, number: int) -> dict[str, Any]:
        where = f"{self.predictions}:{number}"
        fix = "fix or delete that line (its sample reruns), then rerun with --resume"
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HorizonError(f"{where}: not valid JSON ({exc}); {fix}") from None
        if not isinstance(row, dict):
            raise HorizonError(f"{where}: expected a prediction row (a JSON object), got {type(row).__name__}; {fix}")
        need = ROW_KEYS + (OK_ROW_KEYS if row.get("status", "ok") == "ok" else ())
        missing = [k for k in need if k not in row]
        if missing:
            raise HorizonError(f"{where}: prediction row lacks {', '.join(missing)}; {fix}")
        return row

    def discard(self) -> None:
        # predictions first: a kill in between leaves eval.json alone, still a valid (empty) evaluation
        for name in ("predictions.jsonl", "eval.json"):
            (self.path / name).unlink(missing_ok=True)
        if self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def add(self, row: dict[str, Any]) -> None:
        with self._writing(self.predictions), open(self.predictions, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def finish(self, summary: dict[str, Any], tasks: pd.DataFrame) -> None:
        with self._writing(self.path / "summary.json"):
            atomic_write_bytes(self.path / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
            atomic_write_bytes(self.path / "summary.csv", tasks.to_csv(index=False).encode())


# -- the verb -------------------------------------------------------------------------------

SHARED_TIMING = ("seconds: the answer's own continuation (the layers from its schedule's first stage on, and "
                 "decoding) plus an even share of its sample's shared prefix (vision tower and the layers before "
                 "the first stage, computed once for every schedule and seed that starts there); a schedule "
                 "without a random stage is generated once per sample and that time is shared evenly by its seeds; "
                 "a batch's time is split evenly among its rows. Processor encoding is not counted.")
UNSHARED_TIMING = "seconds: one full generate per answer (vision tower, every layer, decoding); encoding not counted."


class EvalEntry:
    """One schedule's evaluation: its directory, its configuration, what is left to do."""

    def __init__(self, vlm: VisionLM, evalset: EvalSet, cfg: PruneConfig, out: str | Path | None, resume: bool,
                 info_cache: dict[str, InfoScores]):
        cfg.validate()
        refusal = family_batch_refusal(vlm, cfg.positions) if cfg.batch_size > 1 else None
        if refusal:
            raise HorizonError(refusal)  # before the directory exists
        self.cfg, self.evalset = cfg, evalset
        self.metric = resolve_metric(cfg.metric, evalset)
        self.samples = evalset.samples[: cfg.limit] if cfg.limit else evalset.samples
        self.schedules = Schedules(cfg, vlm)
        for task in sorted({s.task for s in self.samples}):
            self.schedules.for_sample(task, 1 << 30)  # syntax, methods and layers fail here, before any work
        n_seeds = cfg.seeds or (3 if has_random(cfg.schedule) else 1)
        self.seeds = [cfg.seed + i for i in range(n_seeds)]
        self.info = None
        if cfg.info_run:
            key = f"{cfg.info_run}\0{cfg.info_metric}"
            if key not in info_cache:
                info_cache[key] = InfoScores(cfg.info_run, cfg.info_metric)
            self.info = info_cache[key]
        if "info@" in cfg.schedule and self.info is None:
            raise HorizonError(f"--schedule {cfg.schedule!r} has an info stage: give the scan run with --info-run")
        self.meta = {
            "horizon_version": __version__, **vlm.model_keys, "data": evalset.source,
            "format": evalset.format, "schedule": cfg.schedule, "switch_at": cfg.switch_at,
            "schedules": {t: self.schedules.text_for(t) for t in sorted({s.task for s in self.samples})}
            if cfg.switch_at is not None else None,
            "positions": cfg.positions, "seeds": self.seeds, "seed": cfg.seed, "max_new_tokens": cfg.max_new_tokens,
            "metric": self.metric, "info_run": str(cfg.info_run) if cfg.info_run else None,
            "dtype": str(vlm.dtype).replace("torch.", ""), "device": str(vlm.device), "n_layers": vlm.n_layers,
            "decoding": Decoding.for_model(vlm.hf, cfg.decoding).record(),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        }
        self.store = EvalStore(out) if out is not None else None
        self.rows = self.store.open(self.meta, resume) if self.store else []
        self.resumed = len(self.rows)
        done = {(r["sample_id"], r["seed"]) for r in self.rows}
        self.todo: dict[str, list[int]] = {}
        for s in self.samples:
            left = [seed for seed in self.seeds if (s.id, seed) not in done]
            if left:
                self.todo[s.id] = left
        if done:
            log.info("resuming %s: %d of %d generations already done", out, len(done),
                     len(self.samples) * len(self.seeds))

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.store:
            self.store.add(row)

    def abandon(self) -> None:
        if self.store and not self.rows:
            self.store.discard()  # nothing was done: leave no directory that blocks the corrected command

    def finish(self, vlm: VisionLM) -> PruneResult:
        predictions = pd.DataFrame(self.rows)
        for col, default in (("status", "ok"), ("pair", None)):
            if col not in predictions:
                predictions[col] = default
        tasks = summarize(predictions, self.metric)
        overall = tasks[tasks.task == "all"].to_dict("records")
        cfg = self.cfg
        summary = {
            "model": vlm.source, "data": self.evalset.source, "schedule": cfg.schedule, "switch_at": cfg.switch_at,
            "schedules": self.meta["schedules"], "positions": cfg.positions, "metric": self.metric,
            "scoring": scoring(self.metric).official, "seeds": self.seeds, "decoding": self.meta["decoding"],
            "timing": SHARED_TIMING if cfg.share_prefix else UNSHARED_TIMING,
            **(overall[0] if overall else {"n_samples": 0}),
            "tasks": [r for r in tasks.to_dict("records") if r["task"] != "all"],
        }
        if self.store:
            self.store.finish(summary, tasks)
        return PruneResult(predictions, summary, self.store.path if self.store else None, tasks)


@dataclass
class _Job:
    """Generations of one sample under one entry's schedule: one per seed (one for all seeds without a random stage)."""

    entry: EvalEntry
    sample: Sample
    seeds: list[int]
    schedule: Schedule
    inputs: dict[str, torch.Tensor]
    info: dict[int, torch.Tensor] | None
    n_visual: int
    prefix: Any = None  # SharedPrefix


def run_entries(vlm: VisionLM, entries: list[EvalEntry], progress: bool = True,
                desc: str = "prune-eval") -> list[PruneResult]:
    """Evaluate every entry, samples outermost: per sample one encoding and one shared prefix per first-stage layer.

    Rows go to each entry's directory as they finish; entries are independent
    for resuming (each skips its own done (sample, seed) pairs).
    """
    order: dict[str, Sample] = {}
    for entry in entries:
        for s in entry.samples:
            order.setdefault(s.id, s)
    total = sum(len(seeds) for e in entries for seeds in e.todo.values())
    bar = tqdm(total=total, unit="answer", disable=not progress, dynamic_ncols=True, desc=desc)
    try:
        pending: list[_Job] = []
        for sample in order.values():
            mine = [e for e in entries if sample.id in e.todo]
            if not mine:
                continue
            jobs = _sample_jobs(vlm, sample, mine, bar)
            if not entries[0].cfg.share_prefix:
                for job in jobs:
                    _run_unshared(vlm, job, bar)
                continue
            _attach_prefixes(vlm, jobs)
            pending.extend(jobs)
            batch = max(e.cfg.batch_size for e in entries)
            if sum(_answers(j) for j in pending) >= batch:
                _run_shared(vlm, pending, batch, bar)
                pending = []
        if pending:
            _run_shared(vlm, pending, max(e.cfg.batch_size for e in entries), bar)
    except BaseException:
        for entry in entries:
            entry.abandon()
        raise
    finally:
        bar.close()
    return [entry.finish(vlm) for entry in entries]


def _answers(job: _Job) -> int:
    """Generations a job needs: one per seed, or one for all seeds when nothing is random."""
    return len(job.seeds) if any(s.method == "random" for s in job.schedule.stages) else 1


def _error_row(sample: Sample, seed: int, exc: SampleError) -> dict[str, Any]:
    return {"sample_id": sample.id, "task": sample.task, "seed": seed, "status": f"error: {exc.reason}"}


def _failed(entry: EvalEntry, sample: Sample, seeds: list[int], exc: SampleError, bar: Any) -> None:
    if entry.cfg.on_error == "stop":
        raise exc
    log.warning("skipping %s", exc)
    for seed in seeds:
        entry.add(_error_row(sample, seed, exc))
        bar.update(1)


def _sample_jobs(vlm: VisionLM, sample: Sample, entries: list[EvalEntry], bar: Any) -> list[_Job]:
    """One sample's encoding and, per entry, its schedule for the sample (errors become that entry's rows)."""
    try:
        if sample.problem:
            raise SampleError(sample.id, sample.problem)
        inputs = encode_sample(vlm, sample)[0]
        # the answer's tokens take positions too: an answer that would run past the model's last is refused
        check_context(vlm, sample, inputs["input_ids"], "prompt", max(e.cfg.max_new_tokens for e in entries))
        if not (inputs["input_ids"][0] == vlm.adapter.image_token_id(vlm.hf)).any():
            raise SampleError(sample.id, "the prompt holds no image tokens")
        try:
            n_visual = len(vlm.adapter.visual_positions(vlm.hf, inputs))
        except HorizonError as exc:
            raise SampleError(sample.id, str(exc)) from None
    except SampleError as exc:
        for entry in entries:
            _failed(entry, sample, entry.todo[sample.id], exc, bar)
        return []
    jobs = []
    for entry in entries:
        seeds = entry.todo[sample.id]
        try:
            info = entry.info.for_sample(sample.id, inputs["input_ids"]) if entry.info else None
            try:
                schedule = entry.schedules.for_sample(sample.task, n_visual)
            except HorizonError as exc:
                raise SampleError(sample.id, str(exc)) from None
        except SampleError as exc:
            _failed(entry, sample, seeds, exc, bar)
            continue
        jobs.append(_Job(entry, sample, seeds, schedule, inputs, info, n_visual))
    return jobs


def _attach_prefixes(vlm: VisionLM, jobs: list[_Job]) -> None:
    """One shared prefix per first-stage layer; schedules without a stage join the earliest one."""
    firsts = {first_layer(j.schedule) for j in jobs} - {None}
    fallback = min(firsts) if firsts else 0
    prefixes: dict[int, SharedPrefix] = {}
    for layer in sorted(firsts | {fallback}):
        users = [j for j in jobs if (first_layer(j.schedule) if j.schedule.stages else fallback) == layer]
        if not users:
            continue
        methods = {s.method for j in users for s in j.schedule.stages if s.layer == layer}
        prefixes[layer] = shared_prefix(vlm, users[0].inputs, layer, methods & set(READS_LAYER_BEFORE))
        for j in users:
            j.prefix = prefixes[layer]


def _run_shared(vlm: VisionLM, jobs: list[_Job], batch_size: int, bar: Any) -> None:
    """Continue every job from its prefix; the prefix's time is split evenly among the answers sharing it."""
    share = {}
    for job in jobs:
        share[id(job.prefix)] = share.get(id(job.prefix), 0) + len(job.seeds)
    runs: list[tuple[_Job, int, list[int]]] = []  # (job, generator seed, the seeds its answer serves)
    for job in jobs:
        if any(s.method == "random" for s in job.schedule.stages):
            runs.extend((job, seed, [seed]) for seed in job.seeds)
        else:
            runs.append((job, job.seeds[0], job.seeds))  # no random stage: every seed gives the same answer
    # A batch continues prefixes that end at one layer; rows are padded to the batch's longest, so rows that
    # keep about as many tokens go together (an unpruned row among pruned ones would make them all its length).
    runs.sort(key=lambda r: (r[0].prefix.layer, _kept_after_first_stage(r[0])))
    chunks = [[r for r in runs if r[0].prefix.layer == layer][i : i + batch_size]
              for layer in sorted({r[0].prefix.layer for r in runs})
              for i in range(0, sum(r[0].prefix.layer == layer for r in runs), batch_size)]
    for chunk in chunks:
        began = time.perf_counter()
        gens = _continue(vlm, [(job, sample_seed(seed, job.sample.id)) for job, seed, _ in chunk])
        if vlm.device.type == "cuda":
            torch.cuda.synchronize(vlm.device)
        seconds = (time.perf_counter() - began) / len(chunk)
        for (job, _, seeds), gen in zip(chunk, gens):
            prefix_share = job.prefix.seconds / share[id(job.prefix)]
            for seed in seeds:
                job.entry.add(_row(vlm, job, seed, gen, seconds / len(seeds) + prefix_share))
                bar.update(1)


def _kept_after_first_stage(job: "_Job") -> int:
    """Visual tokens the job's first stage keeps (all of them without a stage): its rows' length after it."""
    stages = job.schedule.stages
    return min((s.keep for s in stages if s.layer == min(t.layer for t in stages)), default=1 << 30)


def _continue(vlm: VisionLM, rows: list[tuple[_Job, int]]) -> list[Generation]:
    if len(rows) > 1:
        return continue_batch(vlm, [
            BatchRow(job.prefix, job.schedule, seed, job.info) for job, seed in rows],
            positions=rows[0][0].entry.cfg.positions, max_new_tokens=rows[0][0].entry.cfg.max_new_tokens,
            decoding=rows[0][0].entry.cfg.decoding)
    job, seed = rows[0]
    cfg = job.entry.cfg
    return [continue_generation(vlm, job.prefix, job.schedule, positions=cfg.positions,
                                max_new_tokens=cfg.max_new_tokens, seed=seed, info=job.info, decoding=cfg.decoding)]


def _run_unshared(vlm: VisionLM, job: _Job, bar: Any) -> None:
    """Today's path before shared prefixes: one full ``generate`` per seed."""
    cfg = job.entry.cfg
    for seed in job.seeds:
        start = time.perf_counter()
        gen = generate(vlm, job.inputs, job.schedule, positions=cfg.positions, max_new_tokens=cfg.max_new_tokens,
                       seed=sample_seed(seed, job.sample.id), info=job.info, decoding=cfg.decoding)
        if vlm.device.type == "cuda":
            torch.cuda.synchronize(vlm.device)
        job.entry.add(_row(vlm, job, seed, gen, time.perf_counter() - start))
        bar.update(1)


def prune_eval(
    model: VisionLM | str | Path,
    data: str | Path | EvalSet | Iterable[Sample],
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    answers: str | Path | None = None,
    image_folder: str | Path | None = None,
    data_format: str = "auto",
    config: PruneConfig | None = None,
    **options: Any,
) -> PruneResult:
    """Generate greedy answers with a pruning schedule applied, score them, and measure cost.

    ``prune_eval(model, "data.jsonl", schedule="divprune@0:284,random@20:38")``.
    ``data`` is a question file (horizon JSONL (the README's Dataset file section) or a LLaVA eval file, with
    ``answers`` / ``image_folder`` as they need), an :class:`EvalSet`, or
    Samples. Options are the fields of :class:`PruneConfig`.

    Per sample, the vision tower and the layers before the schedule's first
    stage run once for all seeds (:mod:`horizon.prune.prefix`); the answers are
    those of one :func:`~horizon.prune.generate.generate` per seed.
    """
    cfg = config or PruneConfig(**options)
    cfg.validate()
    if isinstance(data, EvalSet):
        evalset = data
    elif isinstance(data, (str, Path)):
        evalset = read_eval(data, answers=answers, image_folder=image_folder, format=data_format,
                            strict=cfg.on_error == "stop")
    else:
        evalset = EvalSet(list(data), "exact", "samples")
    if out is not None:
        EvalStore(out).preflight(resume)  # before the weights load
    if not isinstance(model, VisionLM):
        refuse_extra_images(model, evalset.samples, str(evalset.source))  # before the weights load
    vlm = model if isinstance(model, VisionLM) else load(model)
    entry = EvalEntry(vlm, evalset, cfg, out, resume, {})
    return run_entries(vlm, [entry], progress)[0]


def _row(vlm: VisionLM, job: _Job, seed: int, gen: Generation, seconds: float) -> dict[str, Any]:
    sample, schedule, n_visual, metric = job.sample, job.schedule, job.n_visual, job.entry.metric
    text_cfg = vlm.language_model.config
    full = [len(job.inputs["input_ids"][0])] * vlm.n_layers
    flops = prefill_flops(text_cfg, gen.tokens_per_layer)
    score = scoring(metric)
    # capped: a stage's budget above the visual tokens the generation had before it (it kept them all)
    before = [n_visual, *gen.visual_per_layer]  # before[l] = visual tokens present before layer l's stage
    capped = [f"{s.method}@{s.layer}:{s.keep} > {before[s.layer]}" for s in schedule.stages
              if s.keep > before[s.layer]]
    return {
        "sample_id": sample.id, "task": sample.task, "seed": seed, "schedule": schedule.text,
        "resolved_schedule": str(schedule), "capped": bool(capped), "capped_stages": capped,
        "question": sample.question, "answers": list(sample.answers), "prediction": gen.text,
        "score": score.score(gen.text, sample), "pair": None, **score.row_fields(sample),
        "n_visual": n_visual, "avg_visual_tokens": gen.avg_visual_tokens,
        "retained_fraction": gen.avg_visual_tokens / n_visual,
        "visual_per_layer": gen.visual_per_layer, "prefill_flops": flops,
        "relative_flops": flops / prefill_flops(text_cfg, full), "seconds": seconds,
        "n_new_tokens": len(gen.tokens), "status": "ok",
    }
