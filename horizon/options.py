"""Checks of the options several verbs share (scan, prune-eval, prune-grid), so each is refused alike."""

from __future__ import annotations

import os
from numbers import Integral
from pathlib import Path

from .errors import HorizonError

# how a run's scores are made (scan --estimator): read by the scan, the estimators and the analysis, which must
# not import torch for it
ESTIMATORS = ("exact", "gradient", "hybrid")


def is_whole_number(value: object) -> bool:
    """An integer option's value: Python or numpy integers, not bools."""
    return isinstance(value, Integral) and not isinstance(value, bool)  # numpy integers count


def check_run_options(*, limit: int | None = None, seed: int = 0, max_new_tokens: int = 16) -> None:
    """Refuse a --limit, --seed or --max-new-tokens no run can mean, in one line, before any work.

    ``limit`` None means every sample; 0 would silently mean every sample too and
    a negative number would drop samples from the end (Python slicing), so both
    are refused rather than guessed at.
    """
    if limit is not None and (not is_whole_number(limit) or limit < 1):
        raise HorizonError(f"--limit must be a positive number of samples (leave it out for all), got {limit!r}")
    if not is_whole_number(seed) or seed < 0:
        raise HorizonError(f"--seed must be a non-negative integer, got {seed!r}")
    if not is_whole_number(max_new_tokens) or max_new_tokens < 1:
        raise HorizonError(f"--max-new-tokens must be a positive number of tokens, got {max_new_tokens!r}")


def check_out_folder(path: Path, option: str = "--out") -> None:
    """Refuse, before any work, an ``option`` folder that is a file or that this process cannot write in
    (read-only file system, no permission, a file in the way). Writability is found by creating and removing a
    probe file in the folder, or in its nearest existing parent when it does not exist yet -- not by trusting
    mode bits -- and nothing is left behind: a refusal after this check still finds the disk as it was."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise HorizonError(f"{option} {path} is a file, not a folder; choose a folder for {option}")
    _check_writable(path, path, option, "folder")


def check_out_file(path: Path, option: str = "--out") -> None:
    """Refuse, before any work, an ``option`` file that is a folder, or whose folder is a file or cannot be written
    in (found as :func:`check_out_folder` finds it, leaving nothing behind). A missing folder is fine: it is made."""
    path = Path(path)
    if path.is_dir():
        raise HorizonError(f"{option} {path} is a folder; give a file name (e.g. {path / 'report.html'})")
    _check_writable(path.parent, path, option, "file")


def _check_writable(folder: Path, named: Path, option: str, what: str) -> None:
    """Probe ``folder`` (or its nearest existing parent) for writing; a refusal names ``named``, the option's value."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise HorizonError(f"{option} {named}: {existing} is a file, so no {what} can be made under it; "
                           f"choose another {option}")
    probe = existing / f".write-probe.tmp-{os.getpid()}"  # named as a temporary file: a resume removes one a kill left
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        os.unlink(probe)
    except OSError as exc:
        raise HorizonError(f"{option} {named}: cannot write there ({exc.strerror or exc}); choose a folder you can "
                           "write in") from None
