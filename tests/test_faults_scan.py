"""Faults around a scan's run directory: nothing wrong is accepted, nothing done is lost.

A resume with another model (however its path is typed), parts deleted or
cut off, a cut-off run.json or single-file table, samples that failed under
``--on-error skip``, an ``--out`` that cannot be written, a full disk.
Refusals are one ``horizon: error`` line, exit 2, no traceback and no file
changed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

import horizon.models
from conftest import write_dataset
from horizon.cli import main
from horizon.io.runs import HASHED_KEYS, OPTIONAL_HASHED, read_run
from horizon.models.identity import ModelIdentity, fingerprint, model_identity
from horizon.testing import build_tiny, image_size_for

pytestmark = pytest.mark.usefixtures("one_thread")  # scores compared bit for bit within one process
KEY = ["sample_id", "layer", "group", "metric"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Two tiny LLaVA checkpoints of one shape and different weights, and an image size for them."""
    root = tmp_path_factory.mktemp("faults")
    return {"a": build_tiny(root / "a", arch="llava", grid=(2, 2), layers=1, seed=1),
            "b": build_tiny(root / "b", arch="llava", grid=(2, 2), layers=1, seed=2)}


def data(root: Path, n: int) -> Path:
    return write_dataset(root, n, image_size_for("llava", (2, 2)))


def scan_args(model, data, out, *extra) -> list[str]:
    return ["scan", "--model", str(model), "--data", str(data), "--out", str(out), "-q", "--group", "1",
            "--batch-size", "4", *extra]


def run_cli(capsys, args: list[str]) -> tuple[int, list[str], str]:
    """Exit code, the `horizon: error` lines and all of stderr; never a traceback."""
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.startswith("horizon: error")], err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, args: list[str], folder: Path, *needles: str) -> str:
    """Assert ``args`` is refused in one line holding ``needles`` and changes no file under ``folder``."""
    before = snapshot(folder)
    code, err, _ = run_cli(capsys, args)
    assert code == 2 and len(err) == 1, err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert snapshot(folder) == before
    return err[0]


def tables(run: Path) -> dict[str, pd.DataFrame]:
    r = read_run(run)
    samples = r["samples"].sort_values("sample_id").reset_index(drop=True)
    samples = samples[["sample_id", "input_ids", "clean_logp", "clean_pred", "status", "floor"]].astype(
        {"input_ids": str})
    groups = r["groups"].astype({"sample_id": str}).sort_values(["sample_id", "group"]).reset_index(drop=True)
    scores = r["scores"].astype({"sample_id": str, "metric": str}).sort_values(KEY).reset_index(drop=True)
    return {"samples": samples, "groups": groups.drop(columns="positions"), "scores": scores}


def same_run(a: Path, b: Path) -> None:
    ta, tb = tables(a), tables(b)
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name])


def part(run: Path, table: str, seq: int) -> Path:
    return run / table / f"0000-of-0001-{seq:07d}.parquet"


# ------------------------------------------------------------------------------------------ the model's identity


def test_resume_with_a_replaced_checkpoint_is_refused(tiny, tmp_path, capsys):
    """The folder typed the same way now holds another model: refused before it loads, naming the change."""
    model, jsonl, out = tmp_path / "model", data(tmp_path, 2), tmp_path / "run"
    shutil.copytree(tiny["a"], model)
    assert main(scan_args(model, jsonl, out, "--limit", "1")) == 0
    config = json.loads((out / "run.json").read_text())
    assert config["model_path"] == str(model.resolve()) and len(config["model_fingerprint"]) == 16
    shutil.rmtree(model)
    shutil.copytree(tiny["b"], model)
    line = refused(capsys, scan_args(model, jsonl, out, "--resume"), out, "cannot resume", "fingerprint",
                   config["model_fingerprint"], "the checkpoint's files differ")
    assert str(model.resolve()) in line


def test_resume_with_the_same_folder_typed_another_way(tiny, tmp_path, capsys, monkeypatch):
    model, jsonl, out, full = tmp_path / "model", data(tmp_path, 3), tmp_path / "run", tmp_path / "full"
    shutil.copytree(tiny["a"], model)
    assert main(scan_args(model, jsonl, out, "--limit", "2")) == 0  # an absolute path
    assert main(scan_args(model, jsonl, full)) == 0
    monkeypatch.chdir(tmp_path)
    code, err, _ = run_cli(capsys, scan_args("./model", jsonl, out, "--resume"))
    assert code == 0, err
    same_run(full, out)


def _legacy_hash(config: dict) -> str:
    """config_hash as horizon computed it before the model fingerprint (the model path as typed)."""
    payload = {k: config.get(k) for k in HASHED_KEYS}
    payload.update({k: config[k] for k, default in OPTIONAL_HASHED.items() if config.get(k, default) != default})
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_runs_made_before_the_fingerprint_still_resume(tiny, tmp_path, capsys, monkeypatch):
    model, jsonl, full = tmp_path / "model", data(tmp_path, 3), tmp_path / "full"
    shutil.copytree(tiny["a"], model)
    assert main(scan_args(model, jsonl, full)) == 0
    for name, typed in (("same", str(model)), ("relative", "./model")):
        out = tmp_path / name
        assert main(scan_args(model, jsonl, out, "--limit", "1")) == 0
        config = json.loads((out / "run.json").read_text())
        for key in ("model_path", "model_fingerprint"):
            config.pop(key, None)
        config["config_hash"] = _legacy_hash(config)
        (out / "run.json").write_text(json.dumps(config))
        monkeypatch.chdir(tmp_path)
        code, err, _ = run_cli(capsys, scan_args(typed, jsonl, out, "--resume"))
        assert code == 0, err
        same_run(full, out)
    # another folder is still another model for an old run
    other = tmp_path / "other"
    shutil.copytree(tiny["b"], other)
    refused(capsys, scan_args(other, jsonl, tmp_path / "same", "--resume"), tmp_path / "same", "cannot resume",
            f"model: '{model}' -> '{other}'")


def test_fingerprint_sees_weights_not_documentation(tmp_path):
    """Large weight files are sampled, not read whole: a changed sample changes the fingerprint; a README or a
    picture added next to the checkpoint does not; a cached hub snapshot is identified by its commit."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    header = json.dumps({"w": {"dtype": "F32", "shape": [5 << 20], "data_offsets": [0, 20 << 20]}}).encode()
    weights = folder / "model.safetensors"
    weights.write_bytes(len(header).to_bytes(8, "little") + header + bytes(20 << 20))
    (folder / "config.json").write_text('{"model_type": "llava"}')
    before = fingerprint(folder)
    (folder / "README.md").write_text("# my model")
    (folder / "diagram.png").write_bytes(b"\x89PNG")
    assert fingerprint(folder) == before
    with open(weights, "r+b") as fh:  # the last sample covers the file's last bytes
        fh.seek(-1, os.SEEK_END)
        fh.write(b"\x01")
    assert fingerprint(folder) != before
    (folder / "config.json").write_text('{"model_type": "llava", "vocab_size": 7}')
    after = fingerprint(folder)
    assert after != before and model_identity(folder) == ModelIdentity(str(folder.resolve()), after)
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    first = fingerprint(snapshot)
    (snapshot / "processor_config.json").write_text("{}")  # a later load downloads another file of the commit
    assert fingerprint(snapshot) == first
    other = snapshot.with_name("def456")  # another commit of the repository, the same files
    shutil.copytree(snapshot, other)
    assert fingerprint(other) != first


# ------------------------------------------------------------------------------------------ damaged runs


def test_missing_or_unreadable_parts_are_redone_on_resume(tiny, tmp_path, capsys):
    jsonl, out, full = data(tmp_path, 4), tmp_path / "run", tmp_path / "full"
    assert main(scan_args(tiny["a"], jsonl, full)) == 0
    assert main(scan_args(tiny["a"], jsonl, out)) == 0
    part(out, "scores", 0).unlink()  # q0: its scores deleted
    part(out, "groups", 1).write_bytes(b"PAR1 cut off")  # q1: its groups part overwritten
    samples2 = part(out, "samples", 2)
    samples2.write_bytes(samples2.read_bytes()[:40])  # q2: its samples part (the commit) cut off
    code, err, stderr = run_cli(capsys, scan_args(tiny["a"], jsonl, out, "--resume"))
    assert code == 0 and not err, stderr
    redo = [line for line in stderr.splitlines() if "redoing 3 sample(s)" in line]
    assert len(redo) == 1 and "q0 (scores/0000-of-0001-0000000.parquet missing)" in redo[0]
    assert "q1 (groups/0000-of-0001-0000001.parquet unreadable" in redo[0]
    assert "samples/0000-of-0001-0000002.parquet (unreadable" in redo[0]
    same_run(full, out)
    assert len(list((out / "samples").glob("*.parquet"))) == 4  # one part per sample, no leftovers
    assert {p.name for p in (out / "scores").iterdir()} <= {p.name for p in (out / "samples").iterdir()}


def test_unreadable_part_of_another_shard_is_refused(tiny, tmp_path, capsys):
    """Another shard's samples part is that shard's to redo: the resume names it and how."""
    jsonl, out = data(tmp_path, 4), tmp_path / "run"
    assert main(scan_args(tiny["a"], jsonl, out, "--shard", "0/2")) == 0
    assert main(scan_args(tiny["a"], jsonl, out, "--shard", "1/2")) == 0
    theirs = out / "samples" / "0001-of-0002-0000000.parquet"
    theirs.write_bytes(b"garbage")
    code, err, stderr = run_cli(capsys, scan_args(tiny["a"], jsonl, out, "--shard", "0/2", "--resume"))
    assert code == 2 and len(err) == 1, stderr
    assert f"{theirs}: not a readable parquet file" in err[0] and "--shard 1/2 --resume" in err[0]
    assert theirs.read_bytes() == b"garbage" and len(list((out / "samples").glob("0000-*.parquet"))) == 2
    code, err, stderr = run_cli(capsys, scan_args(tiny["a"], jsonl, out, "--shard", "1/2", "--resume"))
    assert code == 0 and "redoing 1 sample(s)" in stderr, stderr
    assert sorted(read_run(out)["samples"].sample_id) == ["q0", "q1", "q2", "q3"]


def test_cut_off_run_json_is_refused(tiny, tmp_path, capsys):
    jsonl, out = data(tmp_path, 2), tmp_path / "run"
    assert main(scan_args(tiny["a"], jsonl, out, "--limit", "1")) == 0
    text = (out / "run.json").read_bytes()
    (out / "run.json").write_bytes(text[: len(text) // 2])
    refused(capsys, scan_args(tiny["a"], jsonl, out, "--resume"), out, f"{out / 'run.json'}:",
            "cannot read the run's configuration")


def test_unreadable_single_file_samples_table_is_refused(tiny, tmp_path, capsys):
    """samples.parquet of the older layout holds every sample: unreadable, the run is refused, not redone."""
    jsonl, out = data(tmp_path, 3), tmp_path / "run"
    assert main(scan_args(tiny["a"], jsonl, out, "--limit", "2")) == 0
    read_run(out)["samples"].to_parquet(out / "samples.parquet", index=False)
    shutil.rmtree(out / "samples")
    (out / "samples.parquet").write_bytes(b"\x00garbage" * 10)
    refused(capsys, scan_args(tiny["a"], jsonl, out, "--resume"), out, f"{out / 'samples.parquet'}:",
            "not a readable parquet file")


def test_samples_that_failed_are_retried_on_resume(tiny, tmp_path, capsys):
    jsonl, out, full = data(tmp_path, 3), tmp_path / "run", tmp_path / "full"
    assert main(scan_args(tiny["a"], jsonl, full)) == 0
    image = jsonl.parent / "img" / "1.png"
    hidden = image.rename(image.with_suffix(".bak"))
    assert main(scan_args(tiny["a"], jsonl, out, "--on-error", "skip")) == 0
    status = read_run(out)["samples"].set_index("sample_id").status
    assert status["q1"].startswith("error:") and (status.drop("q1") == "ok").all()
    hidden.rename(image)  # the input is fixed
    code, err, stderr = run_cli(capsys, scan_args(tiny["a"], jsonl, out, "--resume"))
    assert code == 0 and "retrying 1 sample(s) that failed before: q1" in stderr, stderr
    same_run(full, out)  # q1 once, now ok


# ------------------------------------------------------------------------------------------ writing fails


def _forbid_model_load(monkeypatch) -> None:
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")
    monkeypatch.setattr(horizon.models, "load", load)


def _deny_writes(monkeypatch, folder: Path) -> None:
    """Make ``folder`` unwritable: chmod 0o555, and as root (which chmod does not stop) the OS calls refusing."""
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    inside = lambda path: Path(os.path.abspath(path)).is_relative_to(folder)  # noqa: E731
    real_open, real_mkdir = os.open, os.mkdir

    def fake_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and inside(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if inside(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def test_out_that_is_a_file_is_refused(tiny, tmp_path, capsys, monkeypatch):
    jsonl, out = data(tmp_path, 1), tmp_path / "run"
    out.write_text("notes")
    _forbid_model_load(monkeypatch)
    refused(capsys, scan_args(tiny["a"], jsonl, out), tmp_path, f"--out {out} is a file")


@pytest.mark.parametrize("existing", [False, True])
def test_out_that_cannot_be_written_is_refused(tiny, tmp_path, capsys, monkeypatch, existing):
    jsonl, parent = data(tmp_path, 2), tmp_path / "locked"
    out = parent / "run"
    if existing:  # a run to resume in a folder that turned read-only
        assert main(scan_args(tiny["a"], jsonl, out, "--limit", "1")) == 0
    else:
        parent.mkdir()
    _forbid_model_load(monkeypatch)
    _deny_writes(monkeypatch, out if existing else parent)
    try:
        refused(capsys, scan_args(tiny["a"], jsonl, out, *(["--resume"] if existing else [])), parent,
                f"--out {out}: cannot write there (Permission denied)")
    finally:
        (out if existing else parent).chmod(0o755)


def test_full_disk_keeps_committed_samples_and_resume_completes(tiny, tmp_path, capsys, monkeypatch):
    jsonl, out, full = data(tmp_path, 4), tmp_path / "run", tmp_path / "full"
    assert main(scan_args(tiny["a"], jsonl, full)) == 0
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):  # the disk fills up once two samples are committed
        full_now = len(list((out / "samples").glob("*.parquet"))) >= 2
        if Path(dst).is_relative_to(out) and Path(dst).suffix == ".parquet" and full_now:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    code, err, stderr = run_cli(capsys, scan_args(tiny["a"], jsonl, out))
    assert code == 2 and len(err) == 1, stderr
    assert f"{part(out, 'scores', 2)}: cannot write (No space left on device)" in err[0]
    assert "the 2 committed sample(s) are kept" in err[0] and "--resume" in err[0]
    monkeypatch.setattr(os, "replace", real_replace)  # space freed
    # the committed samples are whole; the third's half-written files are gone
    assert read_run(out)["samples"].sample_id.tolist() == ["q0", "q1"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert {p.name for p in (out / "scores").iterdir()} == {p.name for p in (out / "samples").iterdir()}
    code, err, stderr = run_cli(capsys, scan_args(tiny["a"], jsonl, out, "--resume"))
    assert code == 0, stderr
    same_run(full, out)
