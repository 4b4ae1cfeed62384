"""Which model a run was made with: the checkpoint's resolved folder and a fingerprint of what it holds.

A resume must continue with the same model. The path as typed says little:
``./x``, ``x`` and ``/abs/x`` are one folder, and a folder whose files were
replaced by another checkpoint is another model under the same name. The
fingerprint hashes the checkpoint folder's files (its top level, as
transformers loads them): small files (config, tokenizer, processor) whole,
large ones (weights) by their size, their safetensors header and evenly
spaced samples of their bytes -- cheap for a model of any size, and any
retrained or fine-tuned weights change the samples.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

WHOLE_BYTES = 16 << 20  # files up to this size are hashed whole
SAMPLES = 64  # evenly spaced samples of a larger file ...
SAMPLE_BYTES = 4096  # ... of this many bytes each
HEADER_LIMIT = 100 << 20  # safetensors' own bound on a header
# documentation and pictures next to a checkpoint do not change the model: adding a README keeps it resumable
IGNORED_SUFFIXES = {".md", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
IGNORED_NAMES = {"LICENSE", "NOTICE", "README", "USE_POLICY"}


@dataclass(frozen=True)
class ModelIdentity:
    """A checkpoint's resolved folder and the fingerprint of its files."""

    path: str
    fingerprint: str


def model_folder(source: str | Path) -> Path | None:
    """The folder a model loads from: a local directory resolved, a hub id's cached snapshot (no download);
    None when there is no such folder here (a hub id not in the cache, an in-memory model)."""
    path = Path(source)
    if path.is_dir():
        return path.resolve()
    try:
        from transformers.utils import cached_file

        found = cached_file(str(source), "config.json", local_files_only=True,
                            _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):  # not a hub id, or not cached
        return None
    # the snapshot folder itself (its files link to the cache's blobs): not resolved through the link
    return Path(found).parent if found else None


def _model_file(path: Path) -> bool:
    return (path.is_file() and not path.name.startswith(".") and path.suffix.lower() not in IGNORED_SUFFIXES
            and path.name.split(".")[0].upper() not in IGNORED_NAMES)


def fingerprint(folder: Path) -> str:
    """A hash of the checkpoint files in ``folder`` (hidden files, subfolders, documentation and pictures aside).

    A hub snapshot in the cache is named by its commit, which fixes its files:
    the commit is hashed, not the files, since later loads may download more of
    the snapshot's files (an optional processor config) into the folder.
    """
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return hashlib.sha256(f"{folder.parent.parent.name}@{folder.name}".encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if _model_file(p)):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as fh:
            if size <= WHOLE_BYTES:
                digest.update(fh.read())
                continue
            if path.suffix == ".safetensors":  # tensor names, dtypes, shapes and offsets
                (length,) = struct.unpack("<Q", fh.read(8))
                digest.update(fh.read(min(length, HEADER_LIMIT)))
            for i in range(SAMPLES):
                fh.seek((size - SAMPLE_BYTES) * i // (SAMPLES - 1))
                digest.update(fh.read(SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def model_identity(source: str | Path) -> ModelIdentity | None:
    """The identity of the model at ``source`` (a directory or a cached hub id), or None without a folder."""
    folder = model_folder(source)
    if folder is None:
        return None
    return ModelIdentity(str(folder), fingerprint(folder))


def model_keys(source: str | Path) -> dict[str, str]:
    """run.json's keys for the model at ``source``: the path as typed (``model``, a label), and where there is a
    checkpoint folder its resolved path (``model_path``) and fingerprint (``model_fingerprint``, what a resume
    compares)."""
    identity = model_identity(source)
    keys = {"model": str(source)}
    if identity is not None:
        keys.update(model_path=identity.path, model_fingerprint=identity.fingerprint)
    return keys
