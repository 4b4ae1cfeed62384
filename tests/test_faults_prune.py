"""prune-eval / prune-grid faults: nothing wrong, nothing lost.

* an --out that is not an evaluation (or grid), a file, or cannot be written: one line, exit 2, before the model
  loads, nothing on disk changed;
* bad --limit / --seed / --max-new-tokens / --seeds / --batch-size, an empty --schedule, --methods or --budgets:
  the same, with --limit / --seed / --max-new-tokens checked by the one function scan uses too;
* a corrupted complete line of predictions.jsonl under --resume names the file and line and changes nothing;
* a prune-grid process killed with SIGKILL mid-way, rerun with the same command, writes what an uninterrupted
  grid writes.

Every refusal runs `main` in-process with the model loader replaced by one that fails the test, so "before the
model loads" is checked, not assumed; every file under the test's folder is compared byte for byte.
"""

from __future__ import annotations

import hashlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import horizon.models
from horizon.cli import main
from horizon.prune import evaluate
from horizon.prune.evaluate import PruneConfig
from horizon.scan import ScanConfig
from horizon.tiny import build_tiny

from conftest import write_dataset
from helpers import error_of

pytestmark = pytest.mark.usefixtures("one_thread")
HORIZON = [sys.executable, "-m", "horizon"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """One tiny llava (2 x 2 visual tokens, 3 layers: a first stage at 1 and a switch at 2 fit)."""
    return build_tiny(tmp_path_factory.mktemp("ckpt") / "llava", arch="llava", grid=(2, 2), layers=3, seed=1)


@pytest.fixture
def data(tmp_path) -> Path:
    return write_dataset(tmp_path / "data", 3, (16, 16))


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: a refusal must come before the weights load."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(horizon.models, "load", load)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def refused(capsys, argv: list[str], root: Path, *needles: str) -> str:
    """`main(argv)` exits 2 with one `horizon: error` line holding every needle and leaves `root` as it was."""
    before = snapshot(root)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("horizon: error")]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert snapshot(root) == before, "a refused command changed files on disk"
    return errors[0]


def eval_args(ckpt, data, out, *extra, schedule="none"):
    return ["prune-eval", "--model", str(ckpt), "--data", str(data), "--out", str(out), "--schedule", schedule,
            "--max-new-tokens", "2", "-q", *extra]


def grid_args(ckpt, data, out, *extra):
    return ["prune-grid", "--model", str(ckpt), "--data", str(data), "--out", str(out), "--max-new-tokens", "2",
            "--methods", "random", "--budgets", "2", "--prune-layer", "1", "--switch-layers", "2", "-q", *extra]


def analysis_folder(tmp_path: Path) -> Path:
    """What `horizon analyze --out` leaves: the folder prune-eval reads --summary from."""
    folder = tmp_path / "analysis"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps([{"model": "llava", "task": "ocr", "metric": "dlogp",
                                                      "horizon": 2}]))
    (folder / "curves.csv").write_text("model,task,layer\n")
    return folder


# -- case 2: an --out that is not ours --------------------------------------------------------------------


def test_prune_eval_refuses_an_out_it_would_overwrite_before_the_model_loads(ckpt, data, tmp_path, capsys,
                                                                             no_model, monkeypatch):
    analysis = analysis_folder(tmp_path)
    refused(capsys, eval_args(ckpt, data, analysis), tmp_path, str(analysis), "not an evaluation", "summary.json")
    a_file = tmp_path / "out.txt"
    a_file.write_text("mine\n")
    refused(capsys, eval_args(ckpt, data, a_file), tmp_path, str(a_file), "is a file")
    refused(capsys, eval_args(ckpt, data, a_file / "eval"), tmp_path, str(a_file), "is a file")
    # a read-only folder: simulated, as root may write anywhere and a chmod would not stop it
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.open

    def deny(path, flags, *args, **kwargs):  # creating a file in `locked` fails, as on a read-only file system
        if flags & os.O_CREAT and Path(os.path.abspath(path)).parent == locked:
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    refused(capsys, eval_args(ckpt, data, locked / "eval"), tmp_path, str(locked), "cannot write")
    refused(capsys, eval_args(ckpt, data, locked), tmp_path, str(locked), "cannot write")


def test_prune_eval_refuses_a_finished_evaluation_without_resume_before_the_model_loads(
        ckpt, data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    assert main(eval_args(ckpt, data, out)) == 0
    assert (out / "summary.json").is_file()

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(horizon.models, "load", load)
    refused(capsys, eval_args(ckpt, data, out), tmp_path, str(out), "--resume")


def test_prune_grid_refuses_an_out_or_cell_that_is_not_ours_before_the_model_loads(ckpt, data, tmp_path, capsys,
                                                                                   no_model):
    analysis = analysis_folder(tmp_path)
    refused(capsys, grid_args(ckpt, data, analysis), tmp_path, str(analysis), "not a prune-grid folder",
            "summary.json")
    a_file = tmp_path / "grid.txt"
    a_file.write_text("mine\n")
    refused(capsys, grid_args(ckpt, data, a_file), tmp_path, str(a_file), "is a file")
    # a cell's folder that holds someone's files, not an evaluation
    grid = tmp_path / "grid"
    (grid / "random@1-2").mkdir(parents=True)
    (grid / "random@1-2" / "notes.txt").write_text("mine\n")
    refused(capsys, grid_args(ckpt, data, grid), tmp_path, str(grid / "random@1-2"), "not an evaluation",
            "notes.txt")


# -- case 7 and the other options: checked before anything is written or loaded ---------------------------


@pytest.mark.parametrize("extra, schedule, needle", [
    (["--limit", "0"], "none", "--limit"),
    (["--limit", "-1"], "none", "--limit"),
    (["--seed", "-1"], "none", "--seed"),
    (["--max-new-tokens", "0"], "none", "--max-new-tokens"),
    (["--seeds", "0"], "random@1:2", "--seeds"),
    (["--batch-size", "0"], "none", "--batch-size"),
    ([], "", "--schedule"),
    ([], ",", "--schedule"),
    ([], "random@1:2,", "--schedule"),
], ids=["limit-0", "limit-negative", "seed-negative", "max-new-tokens-0", "seeds-0", "batch-size-0",
        "schedule-empty", "schedule-comma", "schedule-trailing-comma"])
def test_prune_eval_bad_options(ckpt, data, tmp_path, capsys, no_model, extra, schedule, needle):
    out = tmp_path / "eval"
    refused(capsys, eval_args(ckpt, data, out, *extra, schedule=schedule), tmp_path, needle)
    assert not out.exists()


@pytest.mark.parametrize("extra, needle", [
    (["--methods", ""], "--methods"),
    (["--methods", ","], "--methods"),
    (["--budgets", ""], "--budgets"),
    (["--switch-layers", ""], "--switch-layers"),
    (["--limit", "0"], "--limit"),
    (["--seed", "-1"], "--seed"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
], ids=["methods-empty", "methods-comma", "budgets-empty", "switch-layers-empty", "limit-0", "seed-negative",
        "max-new-tokens-0"])
def test_prune_grid_bad_options(ckpt, data, tmp_path, capsys, no_model, extra, needle):
    out = tmp_path / "grid"
    refused(capsys, grid_args(ckpt, data, out, *extra), tmp_path, needle)
    assert not out.exists()


@pytest.mark.parametrize("extra, needle", [
    (["--seed", "-1"], "--seed"), (["--max-new-tokens", "0"], "--max-new-tokens"), (["--limit", "0"], "--limit"),
], ids=["seed-negative", "max-new-tokens-0", "limit-0"])
def test_scan_shares_the_checks(ckpt, data, tmp_path, capsys, no_model, extra, needle):
    out = tmp_path / "run"
    refused(capsys, ["scan", "--model", str(ckpt), "--data", str(data), "--out", str(out), "-q", *extra],
            tmp_path, needle)
    assert not out.exists()


@pytest.mark.parametrize("option, value", [("limit", 0), ("limit", -1), ("seed", -1), ("max_new_tokens", 0)])
def test_scan_and_prune_eval_refuse_alike(option, value):
    """One check for both verbs: the same value gets the same message."""
    scan_message = error_of(lambda: ScanConfig(**{option: value}).validate(), f"--{option.replace('_', '-')}")
    prune_message = error_of(lambda: PruneConfig(**{option: value}).validate())
    assert scan_message == prune_message


# -- a corrupted predictions.jsonl under --resume ---------------------------------------------------------


@pytest.mark.parametrize("damage, needles", [
    (b"{not json\n", ["not valid JSON"]),
    (b'{"sample_id": "q1"}\n', ["lacks", "task", "seed"]),
    (b"[1, 2]\n", ["JSON object"]),
], ids=["not-json", "missing-keys", "not-an-object"])
def test_resume_refuses_a_corrupted_whole_line_and_changes_nothing(ckpt, data, tmp_path, capsys, damage, needles):
    out = tmp_path / "eval"
    assert main(eval_args(ckpt, data, out)) == 0
    preds = out / "predictions.jsonl"
    lines = preds.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    # line 2 damaged, and a last line cut by a kill after it: the refusal must not even drop the cut line
    preds.write_bytes(lines[0] + damage + lines[2][:10])
    refused(capsys, eval_args(ckpt, data, out, "--resume"), tmp_path, f"{preds}:2", *needles)


def test_resume_refuses_a_damaged_eval_json_before_the_model_loads(ckpt, data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    assert main(eval_args(ckpt, data, out)) == 0
    meta = out / "eval.json"
    meta.write_bytes(meta.read_bytes()[:40])  # cut short
    monkeypatch.setattr(horizon.models, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    refused(capsys, eval_args(ckpt, data, out, "--resume"), tmp_path, str(meta), "not an evaluation's configuration")


def test_prune_grid_refusing_a_damaged_cell_leaves_no_new_cell_behind(ckpt, data, tmp_path, capsys):
    grid = tmp_path / "grid"
    assert main(grid_args(ckpt, data, grid)) == 0
    hybrid = grid / "random@1-2+random@2-1" / "predictions.jsonl"
    lines = hybrid.read_bytes().splitlines(keepends=True)
    hybrid.write_bytes(lines[0] + b"{not json\n" + b"".join(lines[2:]))
    for name in ("eval.json", "predictions.jsonl", "summary.json", "summary.csv"):
        (grid / "none" / name).unlink()
    (grid / "none").rmdir()
    # the rerun opens the cell "none" anew before it reaches the damaged one: that new cell must go again
    refused(capsys, grid_args(ckpt, data, grid), tmp_path, f"{hybrid}:2", "not valid JSON")


def test_resume_still_drops_a_cut_last_line(ckpt, data, tmp_path, capsys):
    """The normal resume after a kill mid-write keeps working next to the new check (a regression guard)."""
    out = tmp_path / "eval"
    assert main(eval_args(ckpt, data, out)) == 0
    preds = out / "predictions.jsonl"
    whole = preds.read_bytes()
    lines = whole.splitlines(keepends=True)
    preds.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])
    assert main(eval_args(ckpt, data, out, "--resume")) == 0
    rows = [json.loads(x) for x in preds.read_bytes().splitlines()]
    old = [json.loads(x) for x in lines]
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows] == \
        [{k: v for k, v in r.items() if k not in drop} for r in old]


# -- a prune-grid process killed with SIGKILL --------------------------------------------------------------


def grid_rows(out: Path) -> dict[str, list[dict]]:
    """Each cell's prediction rows, without the wall time."""
    return {p.parent.name: [{k: v for k, v in json.loads(x).items() if k != "seconds"}
                            for x in p.read_text().splitlines()]
            for p in sorted(out.glob("*/predictions.jsonl"))}


def answers_written(out: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in out.glob("*/predictions.jsonl"))


def test_killed_prune_grid_reruns_to_what_an_uninterrupted_grid_writes(ckpt, tmp_path, capsys):
    n = 12
    data = write_dataset(tmp_path / "data", n, (16, 16))
    extra = ["--seeds", "2", "--max-new-tokens", "6"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    total = n * 3 * 2  # none, random@1:2 and its hybrid with random@2:1; a row per seed in each
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(HORIZON + grid_args(ckpt, data, killed, *extra), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while answers_written(killed) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = answers_written(killed)
    assert 3 <= done < total and not (killed / "grid.csv").exists(), \
        f"the kill did not land mid-grid ({done} of {total} answers written)"

    # the same command again: the grid resumes its cells by itself
    assert main(grid_args(ckpt, data, killed, *extra)) == 0
    assert main(grid_args(ckpt, data, whole, *extra)) == 0
    capsys.readouterr()
    assert answers_written(killed) == total
    assert grid_rows(killed) == grid_rows(whole)
    timing = ["seconds_per_sample"]
    pd.testing.assert_frame_equal(pd.read_csv(killed / "grid.csv").drop(columns=timing),
                                  pd.read_csv(whole / "grid.csv").drop(columns=timing))
    assert not [p for p in killed.rglob("*") if ".tmp-" in p.name]


def test_resume_knows_the_model_by_its_files_not_by_how_its_path_is_typed(tmp_path, data, capsys, monkeypatch):
    ckpt = build_tiny(tmp_path / "m", arch="llava", grid=(2, 2), layers=2, seed=1)
    out = tmp_path / "eval"
    assert main(eval_args(ckpt, data, out, "--limit", "2")) == 0
    meta = json.loads((out / "eval.json").read_text())
    assert meta["model_path"] == str(ckpt.resolve()) and meta["model_fingerprint"]
    # the same folder typed another way continues the evaluation
    monkeypatch.chdir(tmp_path)
    assert main(eval_args(Path("./m"), data, out, "--limit", "3", "--resume")) == 0
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    # another checkpoint in that folder is another model: refused, the evaluation as it was
    import shutil

    shutil.rmtree(ckpt)
    build_tiny(ckpt, arch="llava", grid=(2, 2), layers=2, seed=2)
    refused(capsys, eval_args(ckpt, data, out, "--resume"), out, "cannot resume", "fingerprint",
            "the checkpoint's files differ")


def rows_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]


def test_resume_retries_the_samples_that_failed_once_the_input_is_fixed(ckpt, data, tmp_path, capsys):
    image = data.parent / "img" / "1.png"
    image.rename(image.with_suffix(".bak"))  # q1's image goes missing: recorded under skip
    out, whole = tmp_path / "eval", tmp_path / "whole"
    assert main(eval_args(ckpt, data, out, "--on-error", "skip")) == 0
    assert {r["sample_id"]: r["status"] for r in rows_of(out)}["q1"].startswith("error: ")
    image.with_suffix(".bak").rename(image)  # fixed
    (out / ".summary.json.tmp-99999").write_text("{")  # what a kill mid-write leaves
    assert main(eval_args(ckpt, data, out, "--on-error", "skip", "--resume")) == 0
    assert not list(out.glob(".*.tmp-*"))
    assert main(eval_args(ckpt, data, whole)) == 0
    key = lambda r: (r["sample_id"], r["seed"])  # noqa: E731
    got, want = sorted(rows_of(out), key=key), sorted(rows_of(whole), key=key)
    assert [key(r) for r in got] == [key(r) for r in want]  # one row per sample: the error's row is gone
    assert all(r["status"] == "ok" for r in got)
    assert [r["prediction"] for r in got] == [r["prediction"] for r in want]
    assert json.loads((out / "summary.json").read_text())["n_samples"] == 3


def test_a_full_disk_keeps_the_answers_written_and_resume_completes(ckpt, data, tmp_path, capsys, monkeypatch):
    out, whole = tmp_path / "eval", tmp_path / "whole"
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        if str(path) == str(out / "predictions.jsonl") and mode == "a" and \
                (out / "predictions.jsonl").read_bytes().count(b"\n") >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_open)
    capsys.readouterr()
    code = main(eval_args(ckpt, data, out))
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("horizon: error")]
    assert code == 2 and len(err) == 1
    assert f"{out / 'predictions.jsonl'}: cannot write (No space left on device)" in err[0]
    assert "the 2 answer(s) written are kept" in err[0] and "--resume" in err[0]
    monkeypatch.setattr("builtins.open", real_open)  # space freed
    assert len(rows_of(out)) == 2
    assert main(eval_args(ckpt, data, out, "--resume")) == 0
    assert main(eval_args(ckpt, data, whole)) == 0
    key = lambda r: (r["sample_id"], r["seed"])  # noqa: E731
    assert [(key(r), r["prediction"]) for r in sorted(rows_of(out), key=key)] == \
        [(key(r), r["prediction"]) for r in sorted(rows_of(whole), key=key)]


def test_prune_eval_skips_a_line_it_cannot_read_under_skip_and_stops_on_it_otherwise(ckpt, data, tmp_path, capsys):
    lines = data.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"what is", b"wh\xe4t is")  # Latin-1, not UTF-8
    data.write_bytes(b"".join(lines) + b'{"id": "q9", "image": \n')
    capsys.readouterr()
    assert main(eval_args(ckpt, data, tmp_path / "stop")) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("horizon: error")]
    assert len(err) == 1 and f"{data}:2: not UTF-8 text" in err[0]
    assert not (tmp_path / "stop").exists()
    assert main(eval_args(ckpt, data, tmp_path / "skip", "--on-error", "skip")) == 0
    status = {r["sample_id"]: r["status"] for r in rows_of(tmp_path / "skip")}
    assert status["q0"] == status["q2"] == "ok"
    assert "not UTF-8" in status["line-2"] and "malformed JSON" in status["line-4"]
    assert json.loads((tmp_path / "skip" / "summary.json").read_text())["n_samples"] == 2


def test_every_sample_failing_under_skip_is_one_line_and_the_errors_stay(ckpt, data, tmp_path, capsys):
    for image in (data.parent / "img").iterdir():
        image.unlink()
    out = tmp_path / "eval"
    capsys.readouterr()
    assert main(eval_args(ckpt, data, out, "--on-error", "skip")) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("horizon: error")]
    assert len(err) == 1 and "no sample could be evaluated" in err[0] and "image file not found" in err[0]
    assert [r["status"].startswith("error: ") for r in rows_of(out)] == [True] * 3
