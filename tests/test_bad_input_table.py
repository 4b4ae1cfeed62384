"""Bad input x command: one line, exit 2, no traceback, and nothing changed on disk.

Every row is a realistic mistake refused before any work starts (options,
files, folders, broken runs). The table runs each command in-process (an
exception escaping `main` fails the test: that is the traceback a user would
see) and snapshots every file under the test's folder (names and bytes)
before and after, so a refusal that writes, truncates or creates anything
fails. A few rows also run as `python -m horizon` to show stderr holds no
traceback.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from horizon.cli import main
from horizon.tiny import build_tiny

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint, a dataset, a finished scan run, its analysis and a finished evaluation."""
    root = tmp_path_factory.mktemp("world")
    ckpt = build_tiny(root / "ckpt", arch="llava", grid=(2, 2), layers=2, seed=3)
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    rows = []
    for i in range(3):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(root / "img" / f"{i}.png")
        rows.append({"id": f"s{i}", "image": f"img/{i}.png", "question": "what colour is it?",
                     "answer": ["red", "blue", "yes"][i], "task": "colour"})
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run, analysis, evaluation = root / "run", root / "analysis", root / "eval"
    assert main(["scan", "--model", str(ckpt), "--data", str(data), "--out", str(run), "-q"]) == 0
    assert main(["analyze", str(run), "--out", str(analysis), "--n-boot", "20", "--n-perm", "20"]) == 0
    assert main(["prune-eval", "--model", str(ckpt), "--data", str(data), "--out", str(evaluation),
                 "--schedule", "none", "-q"]) == 0
    return {"root": root, "ckpt": ckpt, "data": data, "run": run, "analysis": analysis, "eval": evaluation}


def snapshot(root: Path) -> dict[str, str]:
    """Every file, folder and link under root: relative name -> sha1 of its bytes ('dir', 'link to ...')."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link to {path.readlink()}"
        else:
            out[rel] = "dir" if path.is_dir() else hashlib.sha1(path.read_bytes()).hexdigest()
    return out


# -- the mistakes: each makes its inputs in `tmp` (the world is shared and never touched) --------


def text_file(tmp: Path, name: str, text: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def broken_run(w: dict[str, Path], tmp: Path, how: str) -> Path:
    """A copy of the finished run with one file broken."""
    import shutil

    run = tmp / f"run-{how}"
    shutil.copytree(w["run"], run)
    if how == "truncated-run-json":
        (run / "run.json").write_text((run / "run.json").read_text()[:40])
    elif how == "garbage-scores":
        part = sorted((run / "scores").glob("*.parquet"))[0]
        part.write_bytes(b"not parquet at all" * 10)
    elif how == "no-run-json":
        (run / "run.json").unlink()
    elif how == "string-layers":
        import pandas as pd

        part = sorted((run / "scores").glob("*.parquet"))[0]
        frame = pd.read_parquet(part)
        frame["layer"] = "layer-" + frame["layer"].astype(str)
        frame.to_parquet(part)
    elif how == "inf-scores":
        import pandas as pd

        part = sorted((run / "scores").glob("*.parquet"))[0]
        frame = pd.read_parquet(part)
        frame.loc[frame.index[0], "value"] = np.inf
        frame.to_parquet(part)
    return run


def scan_args(w, tmp, *extra, data=None, model=None, out=None):
    return ["scan", "--model", str(model or w["ckpt"]), "--data", str(data or w["data"]),
            "--out", str(out or tmp / "new-run"), "-q", *extra]


def eval_args(w, tmp, *extra, data=None, model=None, out=None, schedule="none"):
    return ["prune-eval", "--model", str(model or w["ckpt"]), "--data", str(data or w["data"]),
            "--out", str(out or tmp / "new-eval"), "--schedule", schedule, "-q", *extra]


def analyze_args(w, tmp, *extra, runs=None, out=None):
    return ["analyze", *[str(r) for r in (runs or [w["run"]])], "--out", str(out or tmp / "new-analysis"),
            "--n-boot", "20", "--n-perm", "20", *extra]


def report_args(w, tmp, *extra, runs=None, out=None):
    return ["report", *[str(r) for r in (runs or [w["run"]])], "--out", str(out or tmp / "report.html"),
            "--n-boot", "20", "--n-perm", "20", *extra]


def a_folder(tmp, name: str) -> Path:
    (tmp / name).mkdir()
    return tmp / name


def garbage_weights(w, tmp) -> Path:
    import shutil

    ckpt = tmp / "garbage-ckpt"
    shutil.copytree(w["ckpt"], ckpt)
    (ckpt / "model.safetensors").write_bytes(b"\x00\x01garbage" * 100)
    return ckpt


def no_tokenizer(w, tmp) -> Path:
    import shutil

    ckpt = tmp / "no-tokenizer"
    shutil.copytree(w["ckpt"], ckpt)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model"):
        (ckpt / name).unlink(missing_ok=True)
    return ckpt


def corrupted_predictions(w, tmp) -> Path:
    """A copy of the finished evaluation whose second complete line is not JSON."""
    import shutil

    out = tmp / "eval-copy"
    shutil.copytree(w["eval"], out)
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    lines[1] = '{"sample_id": "s1", "seed": \n'
    (out / "predictions.jsonl").write_text("".join(lines))
    return out


def link_loop(tmp, name: str) -> Path:
    loop = tmp / name
    loop.symlink_to(loop)
    return loop


def non_utf8(w, tmp) -> Path:
    return text_file(tmp, "latin1.jsonl", w["data"].read_bytes().replace(b"what colour", b"what col\xf6ur"))


# (row id, function (world, tmp) -> argv, words the one line must contain)
CASES = [
    # scan
    ("scan-data-missing", lambda w, t: scan_args(w, t, data=t / "nope.jsonl"), ["nope.jsonl"]),
    ("scan-layers-out-of-range", lambda w, t: scan_args(w, t, "--layers", "9"), ["layer 9"]),
    ("scan-group-zero", lambda w, t: scan_args(w, t, "--group", "0"), ["--group"]),
    ("scan-limit-zero", lambda w, t: scan_args(w, t, "--limit", "0"), ["--limit"]),
    ("scan-limit-negative", lambda w, t: scan_args(w, t, "--limit", "-1"), ["--limit"]),
    ("scan-seed-negative", lambda w, t: scan_args(w, t, "--seed", "-1"), ["--seed"]),
    ("scan-max-new-tokens-zero", lambda w, t: scan_args(w, t, "--max-new-tokens", "0"), ["--max-new-tokens"]),
    ("scan-model-missing-path", lambda w, t: scan_args(w, t, model=t / "chekpoint" / "tiny"), ["chekpoint"]),
    ("scan-garbage-weights", lambda w, t: scan_args(w, t, model=garbage_weights(w, t)), ["model.safetensors"]),
    ("scan-no-tokenizer", lambda w, t: scan_args(w, t, model=no_tokenizer(w, t)), ["tokenizer"]),
    ("scan-out-is-a-file", lambda w, t: scan_args(w, t, out=text_file(t, "out.txt", "x")), ["out.txt"]),
    ("scan-out-is-analysis", lambda w, t: scan_args(w, t, out=w["analysis"]), ["analysis"]),
    ("scan-finished-run-without-resume", lambda w, t: scan_args(w, t, out=w["run"]), ["--resume"]),
    ("scan-resume-truncated-run-json",
     lambda w, t: scan_args(w, t, "--resume", out=broken_run(w, t, "truncated-run-json")), ["run.json"]),
    ("scan-non-utf8-data", lambda w, t: scan_args(w, t, data=non_utf8(w, t)), ["latin1.jsonl:1"]),
    ("scan-malformed-json", lambda w, t: scan_args(w, t, data=text_file(t, "bad.jsonl", '{"id": "a",\n')),
     ["bad.jsonl:1"]),
    ("scan-data-symlink-loop", lambda w, t: scan_args(w, t, data=link_loop(t, "loop.jsonl")),
     ["loop.jsonl", "symbolic link loop"]),
    ("scan-kl-tokens-zero", lambda w, t: scan_args(w, t, "--estimator", "gradient", "--kl-tokens", "0"),
     ["--kl-tokens"]),
    # prune-eval
    ("eval-resume-corrupted-prediction-line",
     lambda w, t: eval_args(w, t, "--resume", out=corrupted_predictions(w, t)), ["predictions.jsonl:2"]),
    ("eval-non-utf8-data", lambda w, t: eval_args(w, t, data=non_utf8(w, t)), ["latin1.jsonl:1", "UTF-8"]),
    ("eval-model-symlink-loop", lambda w, t: eval_args(w, t, model=link_loop(t, "loop-model")),
     ["loop-model", "symbolic link loop"]),
    ("eval-data-missing", lambda w, t: eval_args(w, t, data=t / "nope.jsonl"), ["nope.jsonl"]),
    ("eval-limit-zero", lambda w, t: eval_args(w, t, "--limit", "0"), ["--limit"]),
    ("eval-limit-negative", lambda w, t: eval_args(w, t, "--limit", "-1"), ["--limit"]),
    ("eval-seed-negative", lambda w, t: eval_args(w, t, "--seed", "-1"), ["--seed"]),
    ("eval-max-new-tokens-zero", lambda w, t: eval_args(w, t, "--max-new-tokens", "0"), ["--max-new-tokens"]),
    ("eval-empty-schedule", lambda w, t: eval_args(w, t, schedule=""), ["--schedule"]),
    ("eval-out-is-analysis", lambda w, t: eval_args(w, t, out=w["analysis"]), ["analysis"]),
    ("eval-out-is-a-file", lambda w, t: eval_args(w, t, out=text_file(t, "out.txt", "x")), ["out.txt"]),
    ("eval-finished-without-resume", lambda w, t: eval_args(w, t, out=w["eval"]), ["--resume"]),
    ("eval-switch-at-horizon-without-summary",
     lambda w, t: eval_args(w, t, "--switch-at", "horizon", schedule="random@1:2"), ["--summary"]),
    ("eval-garbage-weights", lambda w, t: eval_args(w, t, model=garbage_weights(w, t)), ["model.safetensors"]),
    # analyze
    ("analyze-run-missing", lambda w, t: analyze_args(w, t, runs=[t / "no-such-run"]), ["no-such-run"]),
    ("analyze-no-run-json", lambda w, t: analyze_args(w, t, runs=[broken_run(w, t, "no-run-json")]), ["run.json"]),
    ("analyze-truncated-run-json",
     lambda w, t: analyze_args(w, t, runs=[broken_run(w, t, "truncated-run-json")]), ["run.json"]),
    ("analyze-garbage-scores", lambda w, t: analyze_args(w, t, runs=[broken_run(w, t, "garbage-scores")]),
     ["scores"]),
    ("analyze-string-layers", lambda w, t: analyze_args(w, t, runs=[broken_run(w, t, "string-layers")]),
     ["layer"]),
    ("analyze-inf-scores", lambda w, t: analyze_args(w, t, runs=[broken_run(w, t, "inf-scores")]), ["inf"]),
    ("analyze-alpha-zero", lambda w, t: analyze_args(w, t, "--alpha", "0"), ["alpha"]),
    ("analyze-alpha-above-one", lambda w, t: analyze_args(w, t, "--alpha", "1.5"), ["alpha"]),
    ("analyze-threshold-negative", lambda w, t: analyze_args(w, t, "--threshold", "-0.1"), ["threshold"]),
    ("analyze-n-boot-zero", lambda w, t: analyze_args(w, t, "--n-boot", "0"), ["boot"]),
    ("analyze-seed-negative", lambda w, t: analyze_args(w, t, "--seed", "-1"), ["seed"]),
    ("analyze-uniformity-above-one", lambda w, t: analyze_args(w, t, "--uniformity", "1.5"), ["uniformity"]),
    ("analyze-n-perm-zero", lambda w, t: analyze_args(w, t, "--n-perm", "0"), ["n-perm"]),
    ("analyze-out-is-a-file", lambda w, t: analyze_args(w, t, out=text_file(t, "out.txt", "x")), ["out.txt"]),
    # report
    ("report-run-missing", lambda w, t: report_args(w, t, runs=[t / "no-such-run"]), ["no-such-run"]),
    ("report-not-a-run", lambda w, t: report_args(w, t, runs=[w["analysis"]]), ["analysis", "samples"]),
    ("report-no-run-json", lambda w, t: report_args(w, t, runs=[broken_run(w, t, "no-run-json")]), ["run.json"]),
    ("report-garbage-scores", lambda w, t: report_args(w, t, runs=[broken_run(w, t, "garbage-scores")]),
     ["scores"]),
    ("report-out-is-a-folder", lambda w, t: report_args(w, t, out=a_folder(t, "reports")), ["reports", "folder"]),
    ("report-out-under-a-file", lambda w, t: report_args(w, t, out=text_file(t, "out.txt", "x") / "report.html"),
     ["out.txt", "is a file"]),
    ("report-out-unwritable", lambda w, t: report_args(w, t, out=Path("/proc/horizon-report.html")),
     ["/proc/horizon-report.html", "cannot write"]),
    ("report-grid-not-a-grid", lambda w, t: report_args(w, t, "--grid", str(w["analysis"])),
     ["--grid", "grid.csv"]),
    ("report-grid-missing", lambda w, t: report_args(w, t, "--grid", str(t / "no-grid")), ["--grid", "no-grid"]),
    ("report-metric-absent", lambda w, t: report_args(w, t, "--metric", "gain_prob"), ["gain_prob"]),
    ("report-n-boot-zero", lambda w, t: report_args(w, t, "--n-boot", "0"), ["boot"]),
    ("report-max-samples-zero", lambda w, t: report_args(w, t, "--max-samples", "0"), ["--max-samples"]),
]


@pytest.mark.parametrize("make, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, tmp_path, capsys, make, words):
    argv = make(world, tmp_path)
    before = {"world": snapshot(world["root"]), "tmp": snapshot(tmp_path)}
    capsys.readouterr()
    code = main(argv)  # an exception here is the traceback a user would see
    err = capsys.readouterr().err
    after = {"world": snapshot(world["root"]), "tmp": snapshot(tmp_path)}
    errors = [line for line in err.splitlines() if line.startswith("horizon: error")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert after == before, "a refused command changed files on disk"


@pytest.mark.parametrize("row", ["scan-garbage-weights", "eval-out-is-analysis", "analyze-truncated-run-json",
                                 "report-out-is-a-folder"])
def test_refusals_print_no_traceback_from_the_console(world, tmp_path, row):
    make, words = {c[0]: c[1:] for c in CASES}[row]
    argv = make(world, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "horizon", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("horizon: error")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), proc.stderr
