"""The run directory (DESIGN §3): run.json, samples/groups parquet, scores parts.

Every file is written atomically (temporary name, then rename). A sample is
committed when its row lands in samples.parquet, which is written last, so a
killed run leaves only whole samples behind and ``resume`` continues after them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .errors import HorizonError

LOG_NAME = "scan.log"  # the only file besides the schema's that a run may hold
SAMPLE_COLUMNS = [
    "sample_id", "task", "question", "answer", "input_ids", "answer_ids", "scored_offset", "scored_text", "image",
    "n_visual", "grid_h", "grid_w", "clean_logp", "clean_pred", "status", "floor", "images",
]
FLOOR_METHOD = ("largest over the samples of: the |score| of null ablations (one per scanned layer: remove nothing, or "
                "keep nothing against the keep baseline) run in the same batches as the real ablations, and how far "
                "each real ablation's score moves when both distributions' logits move by +-4 eps max|logit|")
GROUP_COLUMNS = ["sample_id", "group", "row", "col", "positions", "image", "grid"]
SCORE_COLUMNS = ["sample_id", "layer", "group", "metric", "value"]

# Keys of run.json that define the results; a resume must match them all.
HASHED_KEYS = (
    "model", "adapter", "dtype", "protocol", "metrics", "group", "layers",
    "target", "answer_span", "seed", "data", "max_new_tokens", "decoding", "scored_token", "logits",
)


def config_hash(config: dict[str, Any], keys: Sequence[str] = HASHED_KEYS) -> str:
    payload = json.dumps({k: config.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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
    if old.get("config_hash") != config["config_hash"]:
        diff = [k for k in keys if old.get(k) != config.get(k)]
        detail = "; ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff)
        raise HorizonError(f"cannot resume {directory}: configuration differs ({detail})")
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


class RunStore:
    """Writes one run directory, sample by sample."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config: dict[str, Any] = {}
        self.samples = pd.DataFrame(columns=SAMPLE_COLUMNS)
        self.groups = pd.DataFrame(columns=GROUP_COLUMNS)

    @property
    def scores_dir(self) -> Path:
        return self.path / "scores"

    def open(self, config: dict[str, Any], resume: bool) -> None:
        """Create the run, or reopen it for resuming after checking the config."""
        config = {**config, "config_hash": config_hash(config)}
        run_json = self.path / "run.json"
        if check_resume(run_json, config, HASHED_KEYS, resume, "a run"):
            self.config = json.loads(run_json.read_text())
            self._load_existing()
            # a kill between samples.parquet and run.json leaves run.json one sample behind
            self.config["numerical_floor"] = run_floor(self.samples)
            return
        self.config = config
        if self.path.exists() and any(p.name != LOG_NAME for p in self.path.iterdir()):
            raise HorizonError(f"{self.path} exists, is not empty and holds no run.json; choose another --out")
        self.scores_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_json, (json.dumps(config, indent=2, default=str) + "\n").encode())

    def _load_existing(self) -> None:
        self.scores_dir.mkdir(parents=True, exist_ok=True)
        # a kill during an atomic write leaves its temporary file behind; the real file is the old one, intact
        for tmp in [*self.path.glob(".*.tmp-*"), *self.scores_dir.glob(".*.tmp-*")]:
            tmp.unlink(missing_ok=True)
        if (self.path / "samples.parquet").exists():
            self.samples = pd.read_parquet(self.path / "samples.parquet")
        if (self.path / "groups.parquet").exists():
            self.groups = with_image_column(pd.read_parquet(self.path / "groups.parquet"))
            self.groups = self.groups[self.groups.sample_id.isin(self.samples.sample_id)]
        # Parts beyond the committed samples belong to a sample cut off mid-write.
        for part in self.scores_dir.glob("part-*.parquet"):
            if int(part.stem.split("-")[1]) >= len(self.samples):
                part.unlink()

    def completed(self) -> set[str]:
        return set(self.samples.sample_id)

    def add(self, sample_row: dict[str, Any], groups: pd.DataFrame, scores: pd.DataFrame) -> None:
        """Commit one sample: scores part, then groups, then the sample row."""
        index = len(self.samples)
        if len(scores):
            atomic_write_parquet(self.scores_dir / f"part-{index:06d}.parquet", scores[SCORE_COLUMNS])
        if len(groups):
            self.groups = pd.concat([self.groups, groups[GROUP_COLUMNS]], ignore_index=True) if len(self.groups) else groups[GROUP_COLUMNS]
            atomic_write_parquet(self.path / "groups.parquet", self.groups)
        row = pd.DataFrame([{k: sample_row.get(k) for k in SAMPLE_COLUMNS}])
        self.samples = pd.concat([self.samples, row], ignore_index=True) if len(self.samples) else row
        atomic_write_parquet(self.path / "samples.parquet", self.samples)
        floor = dict(self.config.get("numerical_floor") or {})
        if sample_row.get("status", "ok") == "ok":
            merge_floor(floor, sample_row.get("floor"))
        if floor != self.config.get("numerical_floor"):
            self.config.update(numerical_floor=floor, numerical_floor_method=FLOOR_METHOD)
            atomic_write_bytes(self.path / "run.json", (json.dumps(self.config, indent=2, default=str) + "\n").encode())


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


def with_image_column(groups: pd.DataFrame) -> pd.DataFrame:
    """Groups of runs written before several images (all on image 0) or several grids per image (one grid
    per image, so the grid is the image) were supported."""
    if "image" not in groups.columns:
        groups = groups.assign(image=0)
    if "grid" not in groups.columns:
        groups = groups.assign(grid=groups["image"])
    return groups


def read_scores(run: str | Path) -> pd.DataFrame:
    """Scores of a run, from scores.parquet or a scores/ folder of parts."""
    run = Path(run)
    if (run / "scores.parquet").exists():
        return pd.read_parquet(run / "scores.parquet")
    parts = sorted((run / "scores").glob("*.parquet")) if (run / "scores").is_dir() else []
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             zip(SCORE_COLUMNS, ["str", "int64", "int64", "str", "float32"])})
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def read_run(run: str | Path) -> dict[str, Any]:
    """run.json plus the three tables of a run directory."""
    run = Path(run)
    if not (run / "run.json").exists():
        raise HorizonError(f"{run}: not a run directory (no run.json)")
    return {
        "config": json.loads((run / "run.json").read_text()),
        "samples": pd.read_parquet(run / "samples.parquet") if (run / "samples.parquet").exists() else None,
        "groups": with_image_column(pd.read_parquet(run / "groups.parquet")) if (run / "groups.parquet").exists() else None,
        "scores": read_scores(run),
    }
