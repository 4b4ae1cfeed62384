"""The run directory (the README's Run directory section): run.json, and the samples, groups and scores
tables as append-only parts.

Layout written by ``horizon scan``::

    run.json                        the configuration (hashed keys: a resume must match them)
    samples/0000-of-0001-0000000.parquet   one part per sample: its row
    groups/0000-of-0001-0000000.parquet    its groups
    scores/0000-of-0001-0000000.parquet    its scores, long form
    shards/0000-of-0001.json        the shard's manifest: done / total, rate, floor (constant size)
    shards/0000-of-0001.lock        held (flock) while a process writes the shard

A part is named ``<shard>-of-<shards>-<sequence>``; every file is written
atomically (temporary name, then rename) and a sample is committed when its
``samples/`` part lands, which is written last. So the cost of adding a
sample does not grow with the run, a killed process leaves only whole samples
behind, shards (ranks of ``torchrun``, Slurm array tasks, ``--shard i/n``)
write into one directory side by side, and readers see one run: the union of
the committed parts.

Older layouts still read: ``samples.parquet`` / ``groups.parquet`` single
files and ``scores.parquet`` or a ``scores/`` folder of parts with any names
(hand-made runs, runs of earlier versions). Tables are stored in compact
types: dictionary-encoded sample ids and metric names (pandas categoricals
when read), int16 layers, int32 groups, float32 values.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import HorizonError

log = logging.getLogger("horizon")

LOG_NAME = "scan.log"  # the only file besides the schema's that a run may hold
TABLES = ("samples", "groups", "scores")
SAMPLE_COLUMNS = [
    "sample_id", "task", "question", "answer", "input_ids", "answer_ids", "scored_offset", "scored_text", "image",
    "n_visual", "grid_h", "grid_w", "clean_logp", "clean_pred", "status", "floor", "images",
]
FLOOR_METHOD = ("largest over the samples of: the |score| of null ablations (one per scanned layer: remove nothing, or "
                "keep nothing against the keep baseline) run in the same batches as the real ablations, and how far "
                "each real ablation's score moves when both distributions' logits move by +-4 eps max|logit|")
GROUP_COLUMNS = ["sample_id", "group", "row", "col", "positions", "image", "grid"]
SCORE_COLUMNS = ["sample_id", "layer", "group", "metric", "value"]

_ID = pa.dictionary(pa.int32(), pa.string())
SCHEMAS = {
    "samples": pa.schema([
        ("sample_id", pa.string()), ("task", pa.string()), ("question", pa.string()), ("answer", pa.string()),
        ("input_ids", pa.list_(pa.int32())), ("answer_ids", pa.list_(pa.int32())), ("scored_offset", pa.int32()),
        ("scored_text", pa.string()), ("image", pa.string()), ("n_visual", pa.int32()), ("grid_h", pa.int32()),
        ("grid_w", pa.int32()), ("clean_logp", pa.float64()), ("clean_pred", pa.string()), ("status", pa.string()),
        ("floor", pa.string()), ("images", pa.string()),
    ]),
    "groups": pa.schema([
        ("sample_id", _ID), ("group", pa.int32()), ("row", pa.int16()), ("col", pa.int16()),
        ("positions", pa.list_(pa.int32())), ("image", pa.int16()), ("grid", pa.int16()),
    ]),
    "scores": pa.schema([
        ("sample_id", _ID), ("layer", pa.int16()), ("group", pa.int32()), ("metric", pa.dictionary(pa.int8(), pa.string())),
        ("value", pa.float32()),
    ]),
}
PART = re.compile(r"^(\d{4,})-of-(\d{4,})-(\d{7,})\.parquet$")

# Keys of run.json that define the results; a resume must match them all.
HASHED_KEYS = (
    "model", "adapter", "dtype", "protocol", "metrics", "group", "layers",
    "target", "answer_span", "seed", "data", "max_new_tokens", "decoding", "scored_token", "logits",
)


# Keys hashed only when they differ from the value runs had before the key existed, so older runs keep their hash.
OPTIONAL_HASHED = {"estimator": "exact", "estimator_method": None, "hybrid": None, "saturation_fix": None}


def config_hash(config: dict[str, Any], keys: Sequence[str] = HASHED_KEYS) -> str:
    payload = {k: config.get(k) for k in keys}
    if keys is HASHED_KEYS:
        payload.update({k: config[k] for k, default in OPTIONAL_HASHED.items() if config.get(k, default) != default})
    if "model" in keys and config.get("model_fingerprint"):
        # the model is what its files hold, not how its path was typed; runs and evaluations made before the
        # fingerprint have none and keep hashing the path as typed
        payload["model"] = {"fingerprint": config["model_fingerprint"]}
    payload = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _differences(old: dict[str, Any], new: dict[str, Any], keys: Sequence[str]) -> str:
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def check_resume(meta: Path, config: dict[str, Any], keys: Sequence[str], resume: bool, what: str) -> bool:
    """Whether ``meta`` (run.json, eval.json) already exists and ``config`` may continue it.

    ``config`` must carry its ``config_hash``. Refuses, naming ``what`` the
    directory holds, a rerun without ``resume`` and a resume whose hashed keys
    differ (listing them).
    """
    if not meta.exists():
        return False
    directory = meta.parent
    if not resume:
        raise HorizonError(f"{directory} already holds {what}; pass --resume to continue it or choose another --out")
    old = json.loads(meta.read_text())
    if not same_config(old, config, keys):
        raise HorizonError(f"cannot resume {directory}: configuration differs "
                           f"({resume_differences(old, config, keys)})")
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves no half file behind
        raise


def atomic_write_parquet(path: Path, frame: pd.DataFrame | pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if isinstance(frame, pa.Table):
            pq.write_table(frame, tmp)
        else:
            frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _unreadable(exc: BaseException) -> str:
    text = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _run_json(path: Path, unreadable: str, not_object: str) -> dict[str, Any]:
    """run.json at ``path`` as a dict; a file that cannot be read, is not JSON (cut short) or is not an object
    is one line naming it, with the caller's ``unreadable`` / ``not_object`` text ({path}, {reason}, {kind})."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise HorizonError(unreadable.format(path=path, reason=_unreadable(exc))) from None
    if not isinstance(data, dict):
        raise HorizonError(not_object.format(path=path, kind=type(data).__name__))
    return data


def read_run_json(path: Path) -> dict[str, Any]:
    """A run's run.json for writing to the run: one line naming it when it is cut off or not JSON."""
    return _run_json(path, "{path}: cannot read the run's configuration ({reason}); restore the file (the run "
                           "cannot be resumed without it) or choose another --out",
                     "{path}: not a run configuration (a JSON object); restore the file or choose another --out")


def _same_folder(a: Any, b: Any) -> bool:
    return a == b or (a is not None and b is not None and Path(str(a)).is_dir()
                      and Path(str(a)).resolve() == Path(str(b)).resolve())


def same_config(old: dict[str, Any], config: dict[str, Any], keys: Sequence[str] = HASHED_KEYS) -> bool:
    """Whether ``config`` (with its ``config_hash``) may continue the run whose run.json is ``old``.

    A run made before the model fingerprint existed compares the model path:
    as typed, or the same folder however it is typed now.
    """
    if old.get("config_hash") == config["config_hash"]:
        return True
    if old.get("model_fingerprint"):
        return False
    legacy = {k: v for k, v in config.items() if k != "model_fingerprint"}
    if _same_folder(old.get("model"), config.get("model")):
        legacy["model"] = old.get("model")
    return config_hash(legacy, keys) == old.get("config_hash")


def model_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """How the model of ``new`` differs from the run's (both fingerprinted), or None when it does not."""
    before, after = old.get("model_fingerprint"), new.get("model_fingerprint")
    if not before or before == after:
        return None
    if not after:
        return (f"model: {old.get('model_path') or old.get('model')} (fingerprint {before}) -> {new.get('model')} "
                "(no checkpoint folder to fingerprint)")
    return (f"model: {old.get('model_path') or old.get('model')} (fingerprint {before}) -> "
            f"{new.get('model_path') or new.get('model')} (fingerprint {after}): the checkpoint's files differ")


def resume_differences(old: dict[str, Any], new: dict[str, Any], hashed: Sequence[str] = HASHED_KEYS) -> str:
    """What differs between a run's (or an evaluation's) configuration and a resume's, for the refusal's line."""
    keys = [*hashed, *OPTIONAL_HASHED] if hashed is HASHED_KEYS else list(hashed)
    model = model_difference(old, new)
    if old.get("model_fingerprint"):
        keys.remove("model")  # the fingerprint says whether the model differs, not the path as typed
    rest = _differences(old, new, keys)
    return "; ".join(x for x in (model, rest) if x)


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, default=str) + "\n").encode()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ shards


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: every ``count``-th sample of the data, starting at ``index``.

    Round-robin rather than contiguous blocks, so shards get equal shares of
    a dataset sorted by task or difficulty.
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise HorizonError(f"--shard {self.index}/{self.count}: expected i/n with 0 <= i < n")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise HorizonError(f"--shard {text!r}: expected i/n, e.g. 0/8 (shard 0 of 8)")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def name(self) -> str:
        return f"{self.index:04d}-of-{self.count:04d}"

    def take(self, items: Sequence[Any]) -> list[Any]:
        return list(items[self.index::self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _shard_of(name: str) -> Shard | None:
    match = PART.match(name) or re.fullmatch(r"(\d{4,})-of-(\d{4,})\.(?:json|lock)", name)
    return Shard(int(match.group(1)), int(match.group(2))) if match else None


class _ShardLock:
    """An exclusive flock on ``shards/<shard>.lock``: one writer per shard; the OS drops it when the process dies."""

    def __init__(self, path: Path):
        self.path = path
        self.handle: Any = None

    def acquire(self, shard: Shard, run: Path) -> None:
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _busy(run, shard, self.path)
            self.handle.close()
            self.handle = None
            raise error from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}))
        self.handle.flush()

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def _busy(run: Path, shard: Shard, lock: Path) -> HorizonError:
    """The refusal of a second writer of ``shard``, naming the process that holds its ``lock``."""
    return HorizonError(f"{run}: shard {shard} is being written by {_lock_holder(lock)}; two processes cannot write "
                        "one shard (wait for it, or stop it and --resume)")


def _lock_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} (since {info.get('since', '?')})"


def lock_held(path: Path) -> bool:
    """Whether a process holds the shard lock at ``path`` now."""
    try:
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ writing


class RunStore:
    """Writes one shard of a run directory, sample by sample, in constant time per sample."""

    def __init__(self, path: str | Path, shard: Shard = Shard()):
        self.path = Path(path)
        self.shard = shard
        self.config: dict[str, Any] = {}
        self._lock = _ShardLock(self.path / "shards" / f"{shard.name}.lock")
        self._seq = 0
        self._manifest: dict[str, Any] = {}
        self._floor: dict[str, float] = {}
        self._errors = 0
        self._started = time.monotonic()

    @property
    def scores_dir(self) -> Path:
        return self.path / "scores"

    @property
    def manifest_path(self) -> Path:
        return self.path / "shards" / f"{self.shard.name}.json"

    def open(self, config: dict[str, Any], resume: bool) -> None:
        """Create the run, join it as another shard, or reopen this shard for resuming.

        The configuration must equal the run's (its hashed keys). A shard that
        already holds samples continues only with ``resume``; a shard joining a
        run other shards started needs no flag.
        """
        config = {**config, "config_hash": config_hash(config)}
        run_json = self.path / "run.json"
        if run_json.exists():
            old = read_run_json(run_json)
            if not same_config(old, config):
                raise HorizonError(f"cannot resume {self.path}: configuration differs "
                                   f"({resume_differences(old, config)})")
            self._check_files()
            self._acquire()
            try:
                self.refuse_rerun(resume)
            except HorizonError:
                self._lock.release()
                raise
            self.config = old
        else:
            # another shard starting at the same moment may have created its folders already
            ours = {LOG_NAME, "shards", *TABLES}
            stray = [p for p in (self.path.iterdir() if self.path.exists() else [])
                     if p.name not in ours and ".tmp-" not in p.name]
            if stray:
                raise HorizonError(f"{self.path} exists, is not empty and holds no run.json; choose another --out")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(run_json, _json_bytes(config))  # run.json first: a joining shard checks it
            except OSError as exc:
                raise self._write_error(run_json, exc) from None
            self._acquire()
            self.config = config
        try:
            for table in TABLES:
                (self.path / table).mkdir(exist_ok=True)
            self._recover()
        except BaseException:
            self._lock.release()
            raise

    def _write_error(self, path: Path, exc: OSError) -> HorizonError:
        """A failed write (full disk, file system gone read-only) as one line; what is committed stays."""
        kept = len(self._own_parts("samples"))
        whose = f" of shard {self.shard}" if self.shard.count > 1 else ""
        return HorizonError(f"{path}: cannot write ({_unreadable(exc)}); the {kept} committed sample(s){whose} "
                            "are kept: free some space (or fix the folder) and rerun with --resume")

    def _check_files(self) -> None:
        """Refuse a run whose single-file tables (older layouts, holding many samples) cannot be read: one line
        naming the file, nothing changed. (A part holds one sample: an unreadable one is redone instead.)"""
        for table in TABLES:
            path = self.path / f"{table}.parquet"
            if path.exists():
                try:
                    pq.read_metadata(path)
                except (OSError, ValueError, pa.ArrowException) as exc:
                    raise HorizonError(f"{path}: not a readable parquet file ({_unreadable(exc)}); restore it "
                                       "(it holds many samples) or choose another --out") from None

    def preflight(self, resume: bool, model: dict[str, Any] | None = None) -> None:
        """The refusals :meth:`open` would give that need no loaded model, checked before one loads: a shard
        another process writes, a rerun without ``resume``, an unreadable run.json or single-file table, and
        given ``model`` (the configuration's model keys, :func:`horizon.models.identity.model_keys`) another
        model."""
        lock = self._lock.path
        if lock.exists() and lock_held(lock):
            raise _busy(self.path, self.shard, lock)
        if (self.path / "run.json").exists():
            self.refuse_rerun(resume)
            old = read_run_json(self.path / "run.json")
            if model is not None:
                if old.get("model_fingerprint"):  # (a hub model not in the cache yet is checked once loaded)
                    difference = model_difference(old, model) if model.get("model_fingerprint") else None
                else:  # a run made before the fingerprint: its model path
                    difference = None if _same_folder(old.get("model"), model["model"]) else \
                        _differences(old, model, ["model"])
                if difference:
                    raise HorizonError(f"cannot resume {self.path}: configuration differs ({difference})")
            self._check_files()

    def refuse_rerun(self, resume: bool) -> None:
        if not resume and (self.shard.count == 1 or self._own_parts("samples")):
            raise HorizonError(f"{self.path} already holds a run" + (f" with samples of shard {self.shard}"
                               if self.shard.count > 1 else "") +
                               "; pass --resume to continue it or choose another --out")

    def _acquire(self) -> None:
        (self.path / "shards").mkdir(parents=True, exist_ok=True)
        # shards of another count would split the data differently: they may not write at the same time
        for lock in (self.path / "shards").glob("*.lock"):
            other = _shard_of(lock.name)
            if other and other.count != self.shard.count and lock_held(lock):
                raise HorizonError(f"{self.path}: shard {other} is being written by {_lock_holder(lock)}; shards "
                                   f"of one run must use the same count while they run (got --shard {self.shard})")
        self._lock.acquire(self.shard, self.path)

    def _own_parts(self, table: str) -> list[Path]:
        folder = self.path / table
        return sorted(folder.glob(f"{self.shard.name}-*.parquet")) if folder.is_dir() else []

    def _recover(self) -> None:
        """Drop what a killed writer of this shard left half done: temporary files, parts of an uncommitted sample."""
        folders = [self.path / t for t in TABLES] + [self.path / "shards"]
        # other shards' temporary files may be in flight; a run of one shard has no other writer
        mine = "*" if self.shard.count == 1 else f"{self.shard.name}*"
        for folder in folders + ([self.path] if self.shard.count == 1 else []):
            for tmp in folder.glob(f".{mine}.tmp-*"):
                tmp.unlink(missing_ok=True)
        self._uncommit_unfinished()
        committed = {p.name for p in self._own_parts("samples")}
        for table in ("groups", "scores"):
            for part in self._own_parts(table):
                if part.name not in committed:
                    part.unlink()
        legacy = self.path / "samples.parquet"
        if self.shard.count == 1 and legacy.exists():
            # a run of the single-file layout: parts past its committed samples belong to a sample cut off mid-write
            n = pq.read_metadata(legacy).num_rows
            for part in self.scores_dir.glob("part-*.parquet"):
                if int(part.stem.split("-")[1]) >= n:
                    part.unlink()
        seqs = [int(PART.match(p.name).group(3)) for p in self._own_parts("samples")]
        self._seq = max(seqs) + 1 if seqs else 0
        mine = read_table(self.path, "samples", columns=["status", "floor"], files=self._own_parts("samples"))
        self._floor = run_floor(mine)
        self._errors = int((mine.status.fillna("ok") != "ok").sum())

    def _uncommit_unfinished(self) -> None:
        """Remove the samples part (the commit) of this shard's samples a resume must redo (a log line names them):

        - an ok sample whose groups or scores part is missing or unreadable (its
          scores would be silently gone from the run);
        - a samples part that cannot be read (cut off, overwritten): the sample's
          id is in it, so it cannot count as done; its parts go with it;
        - a sample that failed (status ``error: ...``, under ``--on-error skip``):
          an error is not a result, and a resume after the input is fixed
          retries it.

        Parts hold one sample each, so nothing else is lost. Checking a part
        reads its footer only.
        """
        redo, failed = [], []
        for part in self._own_parts("samples"):
            try:
                names = pq.read_schema(part).names  # (status is in every part horizon wrote; kept optional anyway)
                rows = pq.read_table(part, columns=[c for c in ("sample_id", "status") if c in names]).to_pylist()
            except (OSError, ValueError, pa.ArrowException) as exc:
                redo.append(f"{part.relative_to(self.path)} (unreadable: {_unreadable(exc)})")
                part.unlink()
                continue
            ids = ", ".join(str(r["sample_id"]) for r in rows)
            if any((r.get("status") or "ok") != "ok" for r in rows):
                failed.append(ids)
                part.unlink()
                continue
            for table in ("groups", "scores"):
                other = self.path / table / part.name
                try:
                    pq.read_metadata(other)
                except FileNotFoundError:
                    redo.append(f"{ids} ({table}/{part.name} missing)")
                except (OSError, ValueError, pa.ArrowException) as exc:
                    redo.append(f"{ids} ({table}/{part.name} unreadable: {_unreadable(exc)})")
                else:
                    continue
                part.unlink()
                break
        if redo:
            log.warning("resume: redoing %d sample(s) whose files are missing or unreadable: %s", len(redo),
                        "; ".join(redo))
        if failed:
            log.info("resume: retrying %d sample(s) that failed before: %s", len(failed), ", ".join(failed))

    def completed(self) -> set[str]:
        """Ids of every committed sample of the run (all shards), ok or failed (this shard's failed samples
        were uncommitted by the resume, to be retried)."""
        done: set[str] = set()
        for path in table_files(self.path, "samples"):
            with reading(path):
                ids = pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()
            done.update(map(str, ids))
        return done

    def begin(self, total: int, done: int) -> None:
        """Record this shard's size (``total`` samples, ``done`` of them already committed) in its manifest."""
        self._started = time.monotonic()
        self._manifest = {
            "shard": str(self.shard), "total": total, "done": done,
            "errors": self._errors, "session_done": 0, "session_seconds": 0.0,
            "started": _now(), "updated": _now(), "host": socket.gethostname(), "pid": os.getpid(),
            "floor": self._floor, "complete": done >= total,
        }
        try:
            atomic_write_bytes(self.manifest_path, _json_bytes(self._manifest))
        except OSError as exc:
            raise self._write_error(self.manifest_path, exc) from None

    def add(self, sample_row: dict[str, Any], groups: pd.DataFrame, scores: pd.DataFrame) -> None:
        """Commit one sample: scores part, groups part, then its samples part (the commit)."""
        name = f"{self.shard.name}-{self._seq:07d}.parquet"
        row = pd.DataFrame([{k: sample_row.get(k) for k in SAMPLE_COLUMNS}])
        writes = ([(self.scores_dir / name, _table(scores, "scores"))] if len(scores) else []) \
            + ([(self.path / "groups" / name, _table(groups, "groups"))] if len(groups) else []) \
            + [(self.path / "samples" / name, _table(row, "samples"))]
        for path, table in writes:
            try:
                atomic_write_parquet(path, table)
            except OSError as exc:
                for written, _ in writes:  # the sample is not committed: its parts written so far go
                    written.unlink(missing_ok=True)
                raise self._write_error(path, exc) from None
        self._seq += 1
        ok = sample_row.get("status", "ok") == "ok"
        if ok:
            merge_floor(self._floor, sample_row.get("floor"))
        if self._manifest:
            m = self._manifest
            m.update(done=m["done"] + 1, errors=m["errors"] + (not ok), session_done=m["session_done"] + 1,
                     session_seconds=round(time.monotonic() - self._started, 3), updated=_now(), floor=self._floor)
            m["complete"] = m["done"] >= m["total"]
            try:
                atomic_write_bytes(self.manifest_path, _json_bytes(m))
            except OSError as exc:
                raise self._write_error(self.manifest_path, exc) from None

    def close(self) -> None:
        """Record the run's numerical floor (over every shard's samples) in run.json and release the shard."""
        if self._lock.handle is None:
            return
        try:
            with open(self.path / "shards" / "run.lock", "a+") as guard:  # one run.json writer at a time
                fcntl.flock(guard, fcntl.LOCK_EX)
                config = json.loads((self.path / "run.json").read_text())
                floor = run_floor(read_table(self.path, "samples", columns=["status", "floor"]))
                if floor and floor != config.get("numerical_floor"):
                    config.update(numerical_floor=floor, numerical_floor_method=FLOOR_METHOD)
                    atomic_write_bytes(self.path / "run.json", _json_bytes(config))
                self.config = config
        except (OSError, ValueError, pa.ArrowException) as exc:
            # run.json's floor is a copy: readers take it from the samples (read_run), a resume records it
            log.warning("could not record the numerical floor in %s (%s); the samples hold it",
                        self.path / "run.json", _unreadable(exc))
        finally:
            self._lock.release()


def _table(frame: pd.DataFrame, table: str) -> pa.Table:
    """``frame`` in the table's compact stored types (scores of an estimator carry an ``exact`` flag as well)."""
    schema = SCHEMAS[table]
    if table == "scores" and "exact" in frame.columns:
        schema = schema.append(pa.field("exact", pa.bool_()))
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def run_floor(samples: pd.DataFrame) -> dict[str, float]:
    """The run's numerical floor per metric: the largest per-sample floor of its ok samples."""
    if "floor" not in samples.columns:
        return {}
    ok = samples[samples.status.fillna("ok") == "ok"] if "status" in samples.columns else samples
    floor: dict[str, float] = {}
    for text in ok["floor"].dropna():
        merge_floor(floor, text)
    return floor


def merge_floor(floor: dict[str, float], sample_floor: str | None) -> None:
    """Raise ``floor`` (metric -> value) to one sample's floor (its JSON text in samples.parquet)."""
    for metric, value in json.loads(sample_floor or "{}").items():
        floor[metric] = max(floor.get(metric, 0.0), float(value))


# ------------------------------------------------------------------------------------------ reading


def _committed(run: Path) -> set[str]:
    folder = run / "samples"
    return {p.name for p in folder.glob("*.parquet")} if folder.is_dir() else set()


def unreadable_parquet(path: Path, exc: BaseException) -> HorizonError:
    """One line for a parquet file of a run that cannot be read (not parquet, cut short, unreadable), saying
    how to get it back: a shard's part is redone by that shard's resume; any other file is restored or removed."""
    shard = _shard_of(path.name)
    fix = (f"resume shard {shard} (--shard {shard} --resume) to redo it" if shard and shard.count > 1 else
           "a file cut short or not written by horizon: rescan that sample (--resume) or remove the file")
    return HorizonError(f"{path}: not a readable parquet file ({_unreadable(exc)}); {fix}")


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn pyarrow's failure to read ``path`` (not parquet, cut short, unreadable) into one line naming it."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        raise unreadable_parquet(path, exc) from None


def parquet_file(path: Path) -> pq.ParquetFile:
    """``pq.ParquetFile(path)``, refusing a file that is not parquet with one line naming it."""
    with reading(path):
        return pq.ParquetFile(path)


def table_files(run: str | Path, table: str) -> list[Path]:
    """The parquet files that hold ``table`` of a run: its single file, then its parts (committed ones only)."""
    run = Path(run)
    files = [run / f"{table}.parquet"] if (run / f"{table}.parquet").exists() else []
    folder = run / table
    if folder.is_dir():
        parts = sorted(folder.glob("*.parquet"))
        if table != "samples" and any(PART.match(p.name) for p in parts):
            committed = _committed(run)  # a part without its samples part is a sample cut off mid-write
            parts = [p for p in parts if not PART.match(p.name) or p.name in committed]
        files += parts
    return files


def _conform(table: pa.Table, name: str) -> pa.Table:
    """Columns of older or hand-made files in the stored types: id strings dictionary-encoded, integers in the
    compact width when they fit (floats are never narrowed: a hand-made float64 score stays float64)."""
    target = SCHEMAS.get(name)
    for i, field in enumerate(table.schema):
        if target is None or field.name not in target.names or field.type == target.field(field.name).type:
            continue
        want, have = target.field(field.name).type, field.type
        castable = (pa.types.is_dictionary(want) and (pa.types.is_string(have) or pa.types.is_large_string(have)
                                                      or pa.types.is_dictionary(have))) \
            or (pa.types.is_integer(want) and pa.types.is_integer(have)) \
            or (pa.types.is_list(want) and (pa.types.is_list(have) or pa.types.is_large_list(have))
                and pa.types.is_integer(have.value_type))
        if castable:
            try:
                table = table.set_column(i, field.name, table.column(i).cast(want))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # out of the compact range: kept as written
    return table


def _empty(table: str, columns: Sequence[str] | None) -> pd.DataFrame:
    schema = SCHEMAS[table]
    frame = schema.empty_table().to_pandas()
    return frame[list(columns)] if columns else frame


def read_table(run: str | Path, table: str, columns: Sequence[str] | None = None,
               files: Sequence[Path] | None = None) -> pd.DataFrame:
    """One table of a run (all committed parts, every layout), as a DataFrame in compact types."""
    files = table_files(run, table) if files is None else list(files)
    if not files:
        return _empty(table, columns)
    tables = []
    for f in files:
        with reading(f):
            tables.append(_conform(pq.read_table(f, columns=list(columns) if columns else None), table))
    merged = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    return merged.to_pandas()


def sample_parts(run: str | Path) -> dict[str, str]:
    """Sample id -> the name of its parts, for the samples ``horizon scan`` wrote (the same name in samples/,
    groups/ and scores/); samples of other layouts are not in it."""
    folder = Path(run) / "samples"
    out: dict[str, str] = {}
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        if PART.match(path.name):
            with reading(path):
                ids = pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()
            for sample_id in ids:
                out[str(sample_id)] = path.name
    return out


def count_rows(run: str | Path, table: str) -> int:
    """Rows of a run's table, from the parquet footers alone."""
    return sum(parquet_file(f).metadata.num_rows for f in table_files(run, table))


def read_scores(run: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Scores of a run, from scores.parquet or a scores/ folder of parts."""
    return read_table(run, "scores", columns)


def with_image_column(groups: pd.DataFrame) -> pd.DataFrame:
    """Groups of runs written before several images (all on image 0) or several grids per image (one grid
    per image, so the grid is the image) were supported."""
    if "image" not in groups.columns:
        groups = groups.assign(image=0)
    if "grid" not in groups.columns:
        groups = groups.assign(grid=groups["image"])
    return groups


def read_config(run: str | Path) -> dict[str, Any]:
    """run.json of a run directory; refuses a directory without one. (``read_run`` also gives the numerical floor
    as the run's samples have it: a killed writer leaves run.json's behind.)"""
    run = Path(run)
    path = run / "run.json"
    if not path.exists():
        raise HorizonError(f"{run}: not a run directory (no run.json)")
    return _run_json(path, "{path}: not valid JSON ({reason}); a run.json cut short or edited by hand: restore it "
                           "(its keys are listed under Run directory in the README)",
                     "{path}: expected a JSON object of the run's settings, got {kind}")


def read_run(run: str | Path) -> dict[str, Any]:
    """run.json plus the three tables of a run directory."""
    run = Path(run)
    config = read_config(run)
    samples = read_table(run, "samples") if table_files(run, "samples") else None
    if samples is not None and (floor := run_floor(samples)):
        config = {**config, "numerical_floor": floor}
    groups = read_table(run, "groups")
    return {
        "config": config,
        "samples": samples,
        "groups": with_image_column(groups) if table_files(run, "groups") else None,
        "scores": read_scores(run),
    }


# ------------------------------------------------------------------------------------------ status


def run_status(run: str | Path) -> pd.DataFrame:
    """Per shard of a run: done / total, errors, whether a process writes it now, rate and time left.

    The rate is the shard's last session's (samples committed / seconds since
    it began); time left = (total - done) / rate, unknown before a sample of
    the session is done.
    """
    run = Path(run)
    read_config(run)
    rows = []
    for path in sorted((run / "shards").glob("*.json")):
        m = json.loads(path.read_text())
        shard = _shard_of(path.name)
        rate = m["session_done"] / m["session_seconds"] if m.get("session_seconds") else None
        left = m["total"] - m["done"]
        rows.append({
            "shard": str(shard), "done": m["done"], "total": m["total"], "errors": m.get("errors", 0),
            "running": lock_held(path.with_suffix(".lock")), "samples_per_s": rate,
            "eta_s": 0.0 if left <= 0 else (left / rate if rate else None), "updated": m.get("updated"),
            "host": m.get("host"), "pid": m.get("pid"),
        })
    return pd.DataFrame(rows, columns=["shard", "done", "total", "errors", "running", "samples_per_s", "eta_s",
                                       "updated", "host", "pid"])


# ------------------------------------------------------------------------------------------ reading a piece at a time


@dataclass(frozen=True)
class ScorePiece:
    """Some score rows of a run and the file they come from.

    ``whole`` marks a part written by ``horizon scan`` (``scores/<shard>-of-<n>-<seq>.parquet``): it holds one
    sample's rows and no other file holds any of them. A piece of any other file (a single ``scores.parquet``
    read in batches, a hand-made part) may hold a sample's rows only in part.
    """

    path: Path
    table: pa.Table
    whole: bool


# What the readers' columns must hold, when a file has them (the analysis computes on these; a hand-made
# file may store narrower or wider types, and ids as integers).
COLUMN_KINDS = {
    "sample_id": ("text", "integer"), "task": ("text",), "status": ("text",), "floor": ("text",),
    "layer": ("integer",), "group": ("integer",), "metric": ("text",), "value": ("floating", "integer"),
}


def _kind(dtype: pa.DataType) -> str:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    if pa.types.is_null(dtype):
        return "null"  # a column of missing values only: no type to disagree with
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "text"
    if pa.types.is_integer(dtype):
        return "integer"
    if pa.types.is_floating(dtype):
        return "floating"
    return str(dtype)


def check_types(path: Path, schema: pa.Schema) -> None:
    """Refuse, naming the file and the column, a column of ``COLUMN_KINDS`` stored in another type."""
    for field in schema:
        kinds = COLUMN_KINDS.get(field.name)
        kind = _kind(field.type)
        if kinds is not None and kind != "null" and kind not in kinds:
            words = {"text": "text", "integer": "integers", "floating": "floats"}
            want = " or ".join(words[k] for k in kinds)
            raise HorizonError(f"{path}: column {field.name} holds {words.get(kind, kind)}, expected {want}")


def check_columns(path: Path, schema: pa.Schema, required: Sequence[str]) -> None:
    """Refuse, naming the file, a table that lacks a column of ``required`` or holds one in a wrong type."""
    missing = [c for c in required if c not in schema.names]
    if missing:
        raise HorizonError(f"{path}: missing required column(s) {', '.join(missing)}")
    check_types(path, schema)


def iter_score_pieces(run: str | Path, columns: Sequence[str], batch_rows: int = 1 << 20,
                      required: Sequence[str] = SCORE_COLUMNS) -> Iterator[ScorePiece]:
    """The scores of a run as pyarrow tables, one part or one batch of ``batch_rows`` rows at a time.

    Every file must hold the ``required`` columns (one line naming the file
    otherwise); only ``columns`` are read, in the compact stored types.
    """
    for path in table_files(run, "scores"):
        handle = parquet_file(path)
        check_columns(path, handle.schema_arrow, required)
        whole = path.parent.name == "scores" and PART.match(path.name) is not None
        if handle.metadata.num_rows <= batch_rows:
            with reading(path):
                table = handle.read(columns=list(columns))
            yield ScorePiece(path, _conform(table, "scores"), whole)
            continue
        batches = handle.iter_batches(batch_size=batch_rows, columns=list(columns))
        while True:
            with reading(path):  # a batch is decoded when asked for
                batch = next(batches, None)
            if batch is None:
                break
            yield ScorePiece(path, _conform(pa.Table.from_batches([batch]), "scores"), False)


def max_layer(run: str | Path) -> int | None:
    """The deepest layer in a run's scores, from the parquet footers' statistics (the column where they lack it)."""
    deepest = None
    for path in table_files(run, "scores"):
        handle = parquet_file(path)
        meta = handle.metadata
        schema = handle.schema_arrow
        names = schema.names
        if "layer" not in names:
            continue
        check_types(path, schema)
        col = names.index("layer")
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(col).statistics
            if stats is not None and stats.has_min_max:
                top = int(stats.max)
            else:
                with reading(path):
                    values = pq.read_table(path, columns=["layer"]).column("layer").to_numpy()
                top = int(values.max()) if len(values) else None
            if top is not None:
                deepest = top if deepest is None else max(deepest, top)
    return deepest


def read_sample_rows(run: str | Path, table: str, sample_ids: Sequence[Any],
                     columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of ``table`` (scores or groups) that belong to ``sample_ids``, reading no other sample's data.

    Parts that ``horizon scan`` wrote hold one sample each: their footers'
    statistics tell which part holds a sample, and the search stops once every
    sample is found. Other files are read with a filter on sample_id, a row
    group at a time.
    """
    wanted = [str(s) for s in sample_ids]
    left = set(wanted)
    read = None if columns is None else list(dict.fromkeys(["sample_id", *columns]))
    frames = []
    for path in table_files(run, table):
        if not left:
            break
        handle = parquet_file(path)
        names = handle.schema_arrow.names
        if "sample_id" not in names:
            raise HorizonError(f"{path}: missing required column(s) sample_id")
        whole = path.parent.name == table and PART.match(path.name) is not None
        if whole:
            stats = handle.metadata.row_group(0).column(names.index("sample_id")).statistics \
                if handle.metadata.num_row_groups else None
            if stats is not None and stats.has_min_max and stats.min == stats.max and str(stats.min) not in left:
                continue
        with reading(path):
            piece = pq.read_table(path, columns=read, filters=[("sample_id", "in", wanted)])
        if piece.num_rows:
            frames.append(_conform(piece, table))
            if whole:  # no other file holds this sample's rows
                left -= {str(s) for s in piece.column("sample_id").unique().to_pylist()}
    if not frames:
        return _empty(table, columns)
    merged = pa.concat_tables(frames, promote_options="permissive") if len(frames) > 1 else frames[0]
    frame = merged.to_pandas()
    return frame[list(columns)] if columns is not None else frame


def read_columns(run: str | Path, table: str, columns: Sequence[str]) -> pd.DataFrame:
    """The given columns of a run's table (those a file lacks are missing values), one file at a time.

    Cheaper than ``read_table`` for thousands of one-sample parts: only the
    named columns are decoded.
    """
    files = table_files(run, table)
    if not files:
        return _empty(table, [c for c in columns if c in SCHEMAS[table].names])
    pieces = []
    for path in files:
        handle = parquet_file(path)
        check_types(path, handle.schema_arrow)
        with reading(path):
            piece = handle.read(columns=[c for c in columns if c in handle.schema_arrow.names])
        pieces.append(_conform(piece, table))
    merged = pa.concat_tables(pieces, promote_options="permissive") if len(pieces) > 1 else pieces[0]
    return merged.to_pandas()
