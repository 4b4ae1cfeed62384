"""Loading runs and the per-sample, per-layer statistics, computed a part at a time (the README's sections
What is measured and Run directory).

``load_runs`` reads what is small (run.json, the samples table, the floor);
the scores stay on disk. ``stream_sample_stats`` reads them a piece at a
time with pyarrow and keeps only the per (sample, metric, layer) summaries,
so memory is bounded by one piece plus those summaries, not by the score
rows (46M rows for 5,000 samples x 32 layers x 144 groups x 2 metrics).

Which pieces: a run written by ``horizon scan`` has one scores part per
sample, which is a whole sample's rows. A single ``scores.parquet`` (or a
folder of hand-made parts) is read in batches of ``batch_rows`` rows; the
rows of the last sample of a batch wait for the next batch, so a sample may
span batches as long as its rows are contiguous. A run whose samples' rows
are scattered (a sample seen again after another began) is read whole
instead, as before streaming: the results are exact either way, only such
runs' memory is unbounded.

The statistics (``sample_layer_stats`` on a frame, ``stream_sample_stats``
on runs) share one numpy kernel that equals, to the bit, the pandas
group-by it replaced: the same stable order (by value within a sample's
layer, ties in file order) and the same sums (see ``_segment_sums``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import HorizonError
from ..options import ESTIMATORS
from ..io import runs as store
from ..scores import RAW_METRICS

KEYS = ["model", "task", "metric"]
SCORE_REQUIRED = ["sample_id", "layer", "group", "metric", "value"]
SAMPLE_REQUIRED = ["sample_id", "task"]
SAMPLE_COLUMNS = [*SAMPLE_REQUIRED, "status", "floor"]  # what load_runs keeps of the samples table
STAT_COLUMNS = [*KEYS, "sample_id", "layer", "mean_info", "n_layers", "floor", "uniformity", "entropy", "top_share"]
_READ = ["sample_id", "layer", "metric", "value"]  # the group column is checked, never needed: a row is a group
BATCH_ROWS = 1 << 20


# ---------------------------------------------------------------- loading


def _require(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise HorizonError(f"{where}: missing required column(s) {', '.join(missing)}")


def model_identity(config: dict[str, Any], run: Path) -> tuple[str, list[str]]:
    """What identifies a run's model, and the names it may be shown by, shortest first.

    A local checkpoint is its resolved path (two ``checkpoint-500`` folders of
    different trainings are different models; runs scanned with a relative
    and an absolute path to one folder are one), shown by its last path
    components: ``checkpoint-500``, then ``run1/checkpoint-500``, ...; a hub
    id is itself. A run.json naming no model makes the run its own model.
    """
    model = config.get("model")
    if not model:
        path = run.resolve()
        return f"run:{path}", _suffixes(path)
    path = Path(str(model))
    scanned = config.get("model_path")  # the folder scan resolved (newer runs): right whatever the cwd is now
    if scanned and not Path(scanned).parent.parent.name.startswith("models--"):  # not a hub id's cache snapshot
        path = Path(scanned)
        return f"path:{path}", _suffixes(path)
    if path.exists() or path.is_absolute():
        path = path.resolve()
        return f"path:{path}", _suffixes(path)
    return f"id:{model}", [str(model)]


def _suffixes(path: Path) -> list[str]:
    """``a/b/c`` -> ``c``, ``b/c``, ..., the whole path: the ever longer names of a path."""
    parts = [p for p in path.parts if p not in ("/", path.anchor)]
    return ["/".join(parts[-k:]) for k in range(1, len(parts))] + [str(path)]


def model_name(config: dict[str, Any], run: Path) -> str:
    """The short name of a run's model (its folder's name, or the hub id); ``load_runs`` lengthens it where two
    different models would share it."""
    return model_identity(config, run)[1][0]


def _name_models(runs: list[dict[str, Any]]) -> None:
    """Set every run's ``model``: the shortest name that no other model of ``runs`` has.

    Runs of one model (one resolved path or hub id) share the name and are
    pooled; different models never do, so two ``checkpoint-500`` folders show
    as ``run1/checkpoint-500`` and ``run2/checkpoint-500``, while a model whose
    name is unique keeps its short one. Runs that name one model but disagree
    on what it is (its depth, its architecture), or two models no name tells
    apart, are refused: pooling them would make one curve of two models.
    """
    names: dict[str, list[str]] = {}
    first: dict[str, dict[str, Any]] = {}
    keys_of = []
    for run in runs:
        key, candidates = run.pop("_identity")
        keys_of.append(key)
        names.setdefault(key, candidates)
        seen = first.setdefault(key, run)
        for field in ("n_layers", "architecture", "model_fingerprint"):  # one path, other files: another model
            a, b = seen["config"].get(field), run["config"].get(field)
            if a is not None and b is not None and a != b:
                raise HorizonError(f"runs {seen['path']} and {run['path']} both name model {candidates[-1]!r} but "
                                   f"differ in {field} ({a} vs {b}), so they are different models: analyze them "
                                   "separately, or rescan one naming its checkpoint by a path that tells it apart")
    level = dict.fromkeys(names, 0)
    while True:
        shown: dict[str, list[str]] = {}
        for key, candidates in names.items():
            shown.setdefault(candidates[level[key]], []).append(key)
        clashes = [keys for keys in shown.values() if len(keys) > 1]
        if not clashes:
            break
        for keys in clashes:
            longer = [k for k in keys if level[k] + 1 < len(names[k])]
            if len(keys) - len(longer) > 1:  # two at their full names still share one
                a, b = [k for k in keys if k not in longer][:2]
                raise HorizonError(f"runs {first[a]['path']} and {first[b]['path']}: their models ({a}, {b}) "
                                   f"cannot be told apart by name ({names[a][level[a]]!r}); analyze them separately")
            for k in longer:
                level[k] += 1
    for run, key in zip(runs, keys_of):
        run["model"] = names[key][level[key]]


def load_runs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Read run directories (the README's Run directory section, every layout), validating the columns the
    analysis needs.

    A run dict holds ``path``, ``config``, ``samples`` (the samples table's
    sample_id, task, status and floor: ``io.runs.read_sample_rows`` reads a
    sample's whole row), ``model``, ``n_layers`` and ``floor``; not the scores
    or the groups, which stay on disk (``read_scores``, ``read_groups``,
    ``io.runs.read_sample_rows``). A dict given a ``scores`` frame (a
    perturbed copy, say) is analysed from that frame instead of its directory.
    """
    runs = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise HorizonError(f"{path}: run directory not found")
        sample_files = store.table_files(path, "samples")
        if not sample_files:
            raise HorizonError(f"{path}: no samples table (samples.parquet or samples/)")
        # run.json says which model and how deep (L): without it runs of different models would pool by folder name
        config = store.read_config(path)
        _check_config(path / "run.json", config)
        store.check_columns(sample_files[0], store.parquet_file(sample_files[0]).schema_arrow, SAMPLE_REQUIRED)
        samples = store.read_columns(path, "samples", SAMPLE_COLUMNS)
        score_files = store.table_files(path, "scores")  # none: every sample failed; other runs may have some
        if score_files:  # the first file now; the stream checks every other one as it reaches it
            store.check_columns(score_files[0], store.parquet_file(score_files[0]).schema_arrow, SCORE_REQUIRED)
        n_layers = config.get("n_layers")
        if not n_layers:
            deepest = store.max_layer(path)
            n_layers = deepest + 1 if deepest is not None else 0
        samples = samples.assign(sample_id=samples.sample_id.astype(str))
        runs.append({"path": path, "config": config, "samples": samples,
                     "_identity": _estimated(model_identity(config, path), _estimator(path / "run.json", config)),
                     "n_layers": int(n_layers), "floor": _floor(path, config, samples)})
    _name_models(runs)
    return runs


def _estimator(path: Path, config: dict[str, Any]) -> str:
    """How the run's scores were made: ``exact`` (measured removals; runs from before estimators too),
    ``gradient`` or ``hybrid``."""
    estimator = config.get("estimator") or "exact"
    if estimator not in ESTIMATORS:
        raise HorizonError(f"{path}: estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    return estimator


ESTIMATE_NAME = "{name} ({estimator} estimate)"


def _estimated(identity: tuple[str, list[str]], estimator: str) -> tuple[str, list[str]]:
    """An estimate run's model is shown, and pooled, apart from the measured one: ``llava-l (gradient estimate)``
    next to ``llava-l``, so an estimated horizon is never read as a measured one, nor averaged with one."""
    if estimator == "exact":
        return identity
    key, names = identity
    return f"{key}|{estimator}", [ESTIMATE_NAME.format(name=name, estimator=estimator) for name in names]


def measured_model(name: str) -> str:
    """The model an estimate's name stands for: ``llava-l (gradient estimate)`` -> ``llava-l``."""
    for estimator in ESTIMATORS:
        suffix = ESTIMATE_NAME.format(name="", estimator=estimator)
        if estimator != "exact" and name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """Refuse, naming the key, a run.json value the analysis would misread (a depth that is not a count, ...)."""
    model, n_layers, floor = config.get("model"), config.get("n_layers"), config.get("numerical_floor")
    if model is not None and not isinstance(model, str):
        raise HorizonError(f"{path}: model must be a path or hub id (text), got {model!r}")
    if n_layers is not None and (isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1):
        raise HorizonError(f"{path}: n_layers must be the model's number of decoder layers (a whole number >= 1), "
                           f"got {n_layers!r}")
    if floor is not None and not (isinstance(floor, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in floor.values())):
        raise HorizonError(f"{path}: numerical_floor must be an object of metric -> number, got {floor!r}")


def _floor(path: Path, config: dict[str, Any], samples: pd.DataFrame) -> dict[str, float]:
    """The run's numerical floor per metric: from its samples when they carry one, else run.json, else none."""
    try:
        floor = store.run_floor(samples)
    except (ValueError, TypeError, AttributeError):  # not JSON, or not an object of numbers
        raise HorizonError(f"{path}: the samples table's floor column must hold JSON objects of metric -> number "
                           "(as horizon scan writes them)") from None
    floor = floor or config.get("numerical_floor") or {}
    return {str(k): float(v) for k, v in floor.items()}


def read_scores(run: dict[str, Any] | str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Every score row of a run (a ``load_runs`` dict or a directory) in memory: for small runs and checks.

    The analysis itself never needs this (``stream_sample_stats`` reads a part
    at a time).
    """
    if isinstance(run, dict):
        if run.get("scores") is not None:
            return run["scores"] if columns is None else run["scores"][list(columns)]
        run = run["path"]
    return store.read_scores(run, columns)


def read_groups(run: dict[str, Any] | str | Path, sample_ids: Sequence[Any] | None = None) -> pd.DataFrame | None:
    """A run's groups table (of ``sample_ids`` only, when given); None when the run has none."""
    if isinstance(run, dict):
        if run.get("groups") is not None:
            groups = run["groups"]
            return groups if sample_ids is None else groups[groups.sample_id.isin(list(sample_ids))]
        run = run["path"]
    if not store.table_files(run, "groups"):
        return None
    if sample_ids is None:
        return store.read_table(run, "groups")
    return store.read_sample_rows(run, "groups", sample_ids)


def ok_samples(samples: pd.DataFrame) -> pd.DataFrame:
    """The samples whose scan succeeded (status ok, or no status column)."""
    if "status" in samples.columns:
        return samples[samples.status.fillna("ok") == "ok"]
    return samples


def tidy_scores(runs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Scores of ok samples from all runs, with model, task, n_layers and floor columns, in memory.

    Raw levels (``keep_prob``) are left out: zero is not "no information" for
    them; their information reading is ``gain_prob``. For small runs and
    checks: ``analyze_frames`` streams instead (``stream_sample_stats``).
    """
    frames = []
    for i, run in enumerate(runs):
        samples = ok_samples(run["samples"])
        task = samples.set_index("sample_id").task.astype(str)
        scores = read_scores(run)
        scores = scores[scores.sample_id.isin(task.index) & ~scores.metric.isin(RAW_METRICS)]
        floor = run.get("floor") or {}
        frames.append(pd.DataFrame({
            "model": run["model"], "task": scores.sample_id.map(task).to_numpy(),
            "sample_id": f"{i}:" + scores.sample_id.astype(str), "layer": scores.layer.astype(int).to_numpy(),
            "group": scores.group.astype(int).to_numpy(), "metric": scores.metric.astype(str).to_numpy(),
            "value": scores.value.astype(np.float64).to_numpy(), "n_layers": run["n_layers"],
            "floor": scores.metric.map(lambda m: floor.get(str(m), 0.0)).astype(np.float64).to_numpy(),
        }))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty:
        raise HorizonError("no scores of successful samples in the given runs")
    return frame


# ---------------------------------------------------------------- the kernel


def _kahan(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Compensated (Kahan) sums along the last axis over the ``valid`` entries, in order.

    What pandas' Cython group-by kernels compute (the compensation reset when
    an infinity makes it NaN); used for segments holding a NaN. The loop runs
    over the last axis (the groups), vectorised over the segments.
    """
    total = np.zeros(values.shape[:-1])
    comp = np.zeros(values.shape[:-1])
    for j in range(values.shape[-1]):
        y = values[..., j] - comp
        t = total + y
        c = (t - total) - y
        np.copyto(c, 0.0, where=c != c)
        ok = valid[..., j]
        total = np.where(ok, t, total)
        comp = np.where(ok, c, comp)
    return total


def _segment_sums(x: np.ndarray, starts: np.ndarray, row_seg: np.ndarray, rank: np.ndarray,
                  n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment sums and counts of the non-NaN values of ``x`` (rows sorted by segment).

    The sums the pandas group-by of sorted groups computed: ``np.add.reduceat``
    (numpy's pairwise summation) when no value is NaN, else Kahan sums that skip
    NaN (its Cython kernels). Keeping to them keeps every result bit-identical.
    """
    nan = np.isnan(x)
    if not nan.any():
        return np.add.reduceat(x, starts), n
    matrix = np.zeros((len(starts), int(n.max())))
    valid = np.zeros(matrix.shape, dtype=bool)
    matrix[row_seg, rank - 1] = x
    valid[row_seg, rank - 1] = ~nan
    return _kahan(matrix, valid), valid.sum(-1)


def _segment_stats(seg: np.ndarray, value: np.ndarray, top_share: float) -> dict[str, np.ndarray]:
    """Per segment (a sample's metric at one layer; ``seg`` codes the segment of each row, a row is a group):
    first row, mean_info, uniformity, entropy, top_share, in ascending ``seg`` order.

    ``value`` is float64, already zeroed within the floor. Uniformity is 1 -
    Gini of max(value, 0); entropy that distribution's entropy / log(n);
    top_share the share of the top ``top_share`` of groups. All three are NaN
    when no group carries positive information. Gini from the ascending ranks:
    sum((2 rank - n - 1) x) / (n sum(x)).
    """
    pos = np.where(value < 0, 0.0, value)
    order = np.lexsort((pos, seg))  # stable: ties keep file order, NaN last, as the pandas sort did
    s, v, p = seg[order], value[order], pos[order]
    n_rows = len(s)
    start = np.empty(n_rows, dtype=bool)
    start[:1] = True
    np.not_equal(s[1:], s[:-1], out=start[1:])
    starts = np.flatnonzero(start)
    n = np.diff(np.append(starts, n_rows))
    row_seg = np.cumsum(start) - 1
    rank = np.arange(n_rows) - starts[row_seg] + 1  # ascending rank within the segment, 1-based
    nn = n[row_seg]

    def sums(x: np.ndarray) -> np.ndarray:
        return _segment_sums(x, starts, row_seg, rank, n)[0]

    value_sum, count = _segment_sums(v, starts, row_seg, rank, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_info = np.where(count > 0, value_sum / np.where(count > 0, count, 1).astype(np.float64), np.nan)
    total = sums(p)
    gini = sums((2 * rank - nn - 1) * p)
    top_k = np.maximum(np.ceil(top_share * nn), 1.0)
    top = sums(np.where(nn - rank < top_k, p, 0.0))
    total_row = total[row_seg]
    share = np.where(total_row > 0, p / np.where(total_row > 0, total_row, 1.0), 0.0)
    plogp = sums(np.where(share > 0, share * np.log(np.where(share > 0, share, 1.0)), 0.0))

    has_info = total > 0
    safe_total = np.where(has_info, total, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        uniformity = np.where(has_info, 1.0 - gini / (n * safe_total), np.nan)
        log_n = np.log(np.where(n > 1, n, 2))
        entropy = np.where(has_info, np.where(n > 1, -plogp / log_n, 1.0), np.nan)
        share_top = np.where(has_info, top / safe_total, np.nan)
    return {"seg": s[starts], "first": order[starts], "mean_info": mean_info, "uniformity": uniformity,
            "entropy": entropy, "top_share": share_top}


def sample_layer_stats(scores: pd.DataFrame, top_share: float = 0.10) -> pd.DataFrame:
    """Per (model, task, metric, sample, layer): mean_info, uniformity, entropy, top_share, from a frame.

    ``scores`` needs model, task, metric, sample_id, layer, value (one row per
    group). With a ``floor`` column, values within +-floor are zero first.
    Uniformity is 1 - Gini of max(value, 0) over groups (1 = perfectly
    uniform); entropy is that distribution's entropy / log(#groups). Both are
    NaN when no group carries positive information. Runs on disk stream
    through the same computation: ``stream_sample_stats``.
    """
    keys = [*KEYS, "sample_id", "layer"]
    extra = [c for c in ("n_layers", "floor") if c in scores.columns]
    value = scores["value"].to_numpy(np.float64)
    if "floor" in scores.columns:
        floor = scores["floor"].to_numpy(np.float64)
        value = np.where(np.abs(value) > floor, value, 0.0)
    seg = scores.groupby(keys, sort=True).ngroup().to_numpy(np.int64)
    rows = np.flatnonzero(seg >= 0)  # rows with a missing key belong to no group, as in a pandas group-by
    out = _segment_stats(seg[rows], value[rows], top_share)
    first = scores.iloc[rows[out["first"]]]
    frame = first[keys + extra].reset_index(drop=True)
    for column in ("mean_info", "uniformity", "entropy", "top_share"):
        frame[column] = out[column]
    return frame[[c for c in STAT_COLUMNS if c in frame.columns]]


# ---------------------------------------------------------------- streaming over runs


@dataclass
class _RunStats:
    """What one run's streamed statistics need and collect: sample and metric codes, per-segment results."""

    index: int
    run: dict[str, Any]
    top_share: float
    metric: str | None
    samples: dict[str, int] = field(default_factory=dict)  # ok sample id -> code
    tasks: list[str] = field(default_factory=list)
    metrics: dict[str, int] = field(default_factory=dict)  # metric name -> code
    seen_metrics: set[str] = field(default_factory=set)  # metrics of ok samples (raw ones left out)
    results: list[dict[str, np.ndarray]] = field(default_factory=list)
    nonfinite: int = 0  # scores of ok samples that are inf or NaN
    nonfinite_samples: set[int] = field(default_factory=set)
    first_nonfinite: tuple[int, str, int, float] | None = None  # sample code, metric, layer, value

    def __post_init__(self) -> None:
        ok = ok_samples(self.run["samples"])
        self.tasks = ok.task.astype(str).tolist()
        for code, sid in enumerate(ok.sample_id.astype(str)):
            self.samples.setdefault(sid, code)

    def metric_code(self, name: str) -> int:
        return self.metrics.setdefault(name, len(self.metrics))

    def refuse_nonfinite(self) -> None:
        """One line naming the run, how many scores are not finite, in how many samples, and the first.

        An inf or NaN score of a sample whose scan succeeded is a broken
        computation, not information: the floor would turn NaN into 0 and an
        inf mean gives a horizon of 0 [0, 0], a result that looks sound. So
        the run is refused rather than analysed without them (leaving them
        out would quietly change the samples behind a curve). Errored samples
        (their scores may be anything) are left out before this check.
        """
        if not self.nonfinite:
            return
        code, metric, layer, value = self.first_nonfinite
        sample = next(s for s, c in self.samples.items() if c == code)
        raise HorizonError(
            f"{self.run.get('path', 'run')}: {self.nonfinite} non-finite score(s) (inf or NaN) in "
            f"{len(self.nonfinite_samples)} sample(s) with status ok, first: sample {sample!r}, metric {metric}, "
            f"layer {layer} (value {value}); a broken computation, not information: rescan those samples "
            "(or set their status to an error to leave them out)")


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    """Dictionary indices and the dictionary's values of a dictionary-encoded column."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks > 1 and pa.types.is_dictionary(column.type):
            column = column.cast(pa.string())  # chunks of several batches carry their own dictionaries
        column = column.combine_chunks()
    array = column
    if not pa.types.is_dictionary(array.type):
        array = array.dictionary_encode()
    return array.indices.to_numpy(zero_copy_only=False).astype(np.int64), \
        [str(x) for x in array.dictionary.to_pylist()]


def _chunk_stats(table: pa.Table, acc: _RunStats) -> None:
    """The statistics of a table holding complete samples' rows; appends per-segment results to ``acc``."""
    if table.num_rows == 0:
        return
    sid_idx, sid_dict = _codes(table.column("sample_id"))
    sample_of = np.array([acc.samples.get(s, -1) for s in sid_dict], dtype=np.int64)
    met_idx, met_dict = _codes(table.column("metric"))
    met_code = np.array([acc.metric_code(m) for m in met_dict], dtype=np.int64)
    usable = np.array([m not in RAW_METRICS for m in met_dict])
    sample = sample_of[sid_idx]
    keep = (sample >= 0) & usable[met_idx]
    present = np.unique(met_idx[keep])
    acc.seen_metrics.update(met_dict[i] for i in present)
    if acc.metric is not None:
        keep &= np.array([m == acc.metric for m in met_dict])[met_idx]
    if not keep.any():
        return
    floor = acc.run.get("floor") or {}
    floor_of = np.array([floor.get(m, 0.0) for m in met_dict], dtype=np.float64)
    layer = table.column("layer").to_numpy().astype(np.int64)[keep]
    value = table.column("value").to_numpy(zero_copy_only=False).astype(np.float64)[keep]
    bad = ~np.isfinite(value)  # a null (missing) value reads as NaN here too
    if bad.any():
        i = int(np.argmax(bad))
        acc.nonfinite += int(bad.sum())
        acc.nonfinite_samples.update(sample[keep][bad].tolist())
        if acc.first_nonfinite is None:
            acc.first_nonfinite = (int(sample[keep][i]), met_dict[met_idx[keep][i]], int(layer[i]), float(value[i]))
    if acc.nonfinite:
        return  # the run is refused once every piece is counted: no statistics of it are needed
    value = np.where(np.abs(value) > floor_of[met_idx[keep]], value, 0.0)
    metric = met_code[met_idx[keep]]
    sample = sample[keep]
    low = layer.min()
    depth = int(layer.max() - low + 1)
    width = len(acc.metrics)
    seg = (sample * width + metric) * depth + (layer - low)
    out = _segment_stats(seg, value, acc.top_share)
    first = out.pop("first")
    out.pop("seg")
    out["sample"], out["metric"], out["layer"] = sample[first], metric[first], layer[first]
    acc.results.append(out)


class _Scattered(Exception):
    """A sample's rows are not contiguous in the run's files: stream no further, read the run whole."""


def _whole_samples(pieces: Iterable[store.ScorePiece]) -> Iterator[pa.Table]:
    """Tables of complete samples: scan parts as they are; batches of other files cut after their last
    complete sample, whose rows wait for the next batch. Raises ``_Scattered`` on a sample seen again."""
    seen: set[str] = set()
    pending: list[pa.Table] = []
    pending_id: str | None = None
    for piece in pieces:
        table = piece.table
        if table.num_rows == 0:
            continue
        if piece.whole:
            yield table
            continue
        idx, names = _codes(table.column("sample_id"))
        ids = np.asarray(names, dtype=object)[idx] if names else np.empty(0, dtype=object)
        change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        starts = np.concatenate([[0], change])
        run_ids = [str(x) for x in ids[starts]]
        cont = pending_id is not None and run_ids[0] == pending_id
        if not cont and pending:
            yield _concat(pending)
            seen.add(pending_id)
            pending, pending_id = [], None
        if len(set(run_ids)) < len(run_ids) or seen.intersection(run_ids):
            raise _Scattered
        last = int(starts[-1])
        if last > 0:
            yield _concat([*pending, table.slice(0, last)])
            seen.update(run_ids[:-1])
            pending = []
        pending.append(table.slice(last))
        pending_id = run_ids[-1]
    if pending:
        yield _concat(pending)


def _concat(tables: list[pa.Table]) -> pa.Table:
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")


def _frame_of(acc: _RunStats) -> pd.DataFrame:
    """The collected per-segment results of one run as rows of the per-sample frame."""
    if not acc.results:
        return pd.DataFrame(columns=STAT_COLUMNS)
    cat = {k: np.concatenate([r[k] for r in acc.results]) for k in acc.results[0]}
    ids = np.array(list(acc.samples), dtype=object)
    by_code = np.empty(len(acc.tasks), dtype=object)
    by_code[list(acc.samples.values())] = ids
    tasks = np.asarray(acc.tasks, dtype=object)
    metric_names = np.empty(len(acc.metrics), dtype=object)
    metric_names[list(acc.metrics.values())] = list(acc.metrics)
    floor = acc.run.get("floor") or {}
    metric = metric_names[cat["metric"]]
    return pd.DataFrame({
        "model": acc.run["model"], "task": tasks[cat["sample"]],
        "sample_id": f"{acc.index}:" + pd.Series(by_code[cat["sample"]], dtype=object).astype(str),
        "metric": metric, "layer": cat["layer"], "mean_info": cat["mean_info"], "n_layers": acc.run["n_layers"],
        "floor": np.array([floor.get(m, 0.0) for m in metric], dtype=np.float64),
        "uniformity": cat["uniformity"], "entropy": cat["entropy"], "top_share": cat["top_share"],
    })


def _pieces_of_frame(scores: pd.DataFrame) -> Iterator[store.ScorePiece]:
    table = pa.Table.from_pandas(scores[_READ], preserve_index=False)
    yield store.ScorePiece(Path("<frame>"), store._conform(table, "scores"), False)


def run_sample_stats(run: dict[str, Any], index: int = 0, *, metric: str | None = None, top_share: float = 0.10,
                     batch_rows: int = BATCH_ROWS,
                     pieces: Callable[[], Iterable[store.ScorePiece]] | None = None) -> tuple[pd.DataFrame, set[str]]:
    """One run's per-sample statistics, streamed; and the metrics its ok samples have (raw ones left out).

    ``index`` prefixes the sample ids (``"<index>:<sample_id>"``) so that runs
    pooled in one analysis keep their samples apart. ``pieces`` (a callable
    giving the score pieces; default: the run's files, or its ``scores`` frame)
    is there for tests.
    """
    if pieces is None:
        if run.get("scores") is not None:
            frame = run["scores"]
            _require(frame, SCORE_REQUIRED, f"{run.get('path', 'run')} scores")
            pieces = lambda: _pieces_of_frame(frame)  # noqa: E731
        else:
            pieces = lambda: store.iter_score_pieces(run["path"], _READ, batch_rows, SCORE_REQUIRED)  # noqa: E731
    acc = _RunStats(index, run, top_share, metric)
    try:
        for table in _whole_samples(pieces()):
            _chunk_stats(table, acc)
    except _Scattered:
        acc = _RunStats(index, run, top_share, metric)
        _chunk_stats(_concat([p.table for p in pieces()]), acc)
    acc.refuse_nonfinite()
    return _frame_of(acc), acc.seen_metrics


def stream_sample_stats(runs: Sequence[dict[str, Any]], metric: str | None = None, top_share: float = 0.10,
                        batch_rows: int = BATCH_ROWS) -> pd.DataFrame:
    """``sample_layer_stats(tidy_scores(runs))`` (optionally of one ``metric``), read a part at a time.

    Errored samples (status other than ok) and raw metrics (``keep_prob``)
    are left out, scores within the run's floor are zero, as in
    ``tidy_scores``. Peak memory: one part (or batch, plus a sample's rows
    that span batches) and the per-sample summaries.
    """
    frames, seen = [], set()
    for i, run in enumerate(runs):
        frame, metrics = run_sample_stats(run, i, metric=metric, top_share=top_share, batch_rows=batch_rows)
        frames.append(frame)
        seen |= metrics
    if not seen:
        raise HorizonError("no scores of successful samples in the given runs")
    if metric is not None and metric not in seen:
        raise HorizonError(f"metric {metric!r} not in the runs (have: {', '.join(sorted(seen))})")
    frame = pd.concat([f for f in frames if len(f)], ignore_index=True)
    keys = [*KEYS, "sample_id", "layer"]
    return frame.sort_values(keys, kind="mergesort").reset_index(drop=True)[STAT_COLUMNS]
