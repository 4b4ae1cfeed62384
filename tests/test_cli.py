"""`horizon scan` end to end: schema, resume after SIGKILL, refusal of a changed config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from horizon.cli import main
from horizon.io.runs import read_run

HORIZON = [sys.executable, "-m", "horizon.cli"]


def scan_args(model, data, out, *extra):
    return ["scan", "--model", str(model), "--data", str(data), "--out", str(out), "-q", *extra]


def test_run_directory_matches_schema(checkpoints, dataset, tmp_path):
    out = tmp_path / "run"
    assert main(scan_args(checkpoints["qwen2_5_vl"], dataset("qwen2_5_vl", 2), out, "--metric", "kl,dlogp,dprob")) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"run.json", "samples", "groups", "scores", "shards", "scan.log"}
    # one part per sample in each table, named by shard and sequence; the shard's manifest and lock
    for table in ("samples", "groups", "scores"):
        assert sorted(p.name for p in (out / table).iterdir()) == [f"0000-of-0001-000000{i}.parquet" for i in (0, 1)]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["0000-of-0001.json", "0000-of-0001.lock", "run.lock"]
    manifest = json.loads((out / "shards" / "0000-of-0001.json").read_text())
    assert (manifest["done"], manifest["total"], manifest["errors"], manifest["complete"]) == (2, 2, 0, True)
    config = json.loads((out / "run.json").read_text())
    for key in ("model", "adapter", "dtype", "device", "protocol", "metrics", "group", "layers", "target",
                "answer_span", "seed", "versions", "config_hash"):
        assert key in config, key
    assert config["layers"] == [0, 1, 2] and config["metrics"] == ["kl", "dlogp", "dprob"]
    # the numerical floor: per metric, the largest of the samples' floors (each a JSON object in samples.parquet)
    per_sample = [json.loads(f) for f in pd.read_parquet(out / "samples")["floor"]]
    assert set(config["numerical_floor"]) == {"kl", "dlogp", "dprob"} and config["numerical_floor_method"]
    for metric, value in config["numerical_floor"].items():
        assert value == max(f[metric] for f in per_sample) and 0 <= value < 1e-6

    def types(table):
        schema = pq.read_schema(next((out / table).glob("*.parquet")))
        return {f.name: str(f.type).replace("large_", "").replace("item", "element") for f in schema}

    assert types("samples") == {
        "sample_id": "string", "task": "string", "question": "string", "answer": "string",
        "input_ids": "list<element: int32>", "answer_ids": "list<element: int32>", "scored_offset": "int32",
        "scored_text": "string", "image": "string", "n_visual": "int32", "grid_h": "int32", "grid_w": "int32",
        "clean_logp": "double", "clean_pred": "string", "status": "string", "floor": "string", "images": "string"}
    ids = "dictionary<values=string, indices=int32, ordered=0>"
    assert types("groups") == {"sample_id": ids, "group": "int32", "row": "int16", "col": "int16",
                               "positions": "list<element: int32>", "image": "int16", "grid": "int16"}
    assert types("scores") == {"sample_id": ids, "layer": "int16", "group": "int32",
                               "metric": "dictionary<values=string, indices=int8, ordered=0>", "value": "float"}
    run = read_run(out)
    assert len(run["scores"]) == 2 * 3 * 6 * 3  # samples x layers x groups (3x5 grid, k=2: 2x3 windows) x metrics
    assert run["samples"].grid_h.tolist() == [3, 3] and run["samples"].grid_w.tolist() == [5, 5]
    for row in run["samples"].itertuples():  # one image of 140 x 84 px, seen whole by Qwen-VL
        view = [0.0, 0.0, 140.0, 84.0]
        assert json.loads(row.images) == [{"path": row.image, "size": [140, 84], "grid": [3, 5], "view": view,
                                           "grids": [{"grid": [3, 5], "view": view, "level": "", "index": 0}]}]
    assert (run["groups"].image == 0).all() and (run["groups"].grid == 0).all()


def _rows(path: Path) -> int:
    """Committed samples of a run: its samples/ parts."""
    return len(list((path / "samples").glob("*.parquet"))) if (path / "samples").is_dir() else 0


def test_sigkill_then_resume_gives_identical_scores(checkpoints, dataset, tmp_path):
    n = 24
    data = dataset("llava", n)
    model = checkpoints["llava"]
    killed, full = tmp_path / "killed", tmp_path / "full"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(HORIZON + scan_args(model, data, killed, "--group", "1", "--batch-size", "1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while _rows(killed) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _rows(killed)
    assert 2 <= done < n, f"the kill did not land mid-run ({done} of {n} samples done)"

    assert main(scan_args(model, data, killed, "--group", "1", "--resume")) == 0
    assert main(scan_args(model, data, full, "--group", "1")) == 0
    a, b = read_run(killed), read_run(full)
    assert a["samples"].sample_id.tolist() == b["samples"].sample_id.tolist() == [f"q{i}" for i in range(n)]
    key = ["sample_id", "layer", "group", "metric"]
    sa, sb = a["scores"].sort_values(key).reset_index(drop=True), b["scores"].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(sa[key], sb[key])
    assert np.abs(sa.value.to_numpy() - sb.value.to_numpy()).max() <= 1e-6
    assert not [p for p in killed.rglob("*") if ".tmp-" in p.name]


def test_resume_with_changed_config_is_refused(checkpoints, dataset, tmp_path, capsys):
    data, out = dataset("llava", 1), tmp_path / "run"
    assert main(scan_args(checkpoints["llava"], data, out)) == 0
    capsys.readouterr()
    assert main(scan_args(checkpoints["llava"], data, out, "--group", "1", "--resume")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("horizon: error")]
    assert len(err) == 1 and "cannot resume" in err[0] and "group: 2 -> 1" in err[0]
    assert main(scan_args(checkpoints["llava"], data, out)) == 2  # exists, no --resume
    assert "--resume" in capsys.readouterr().err


def test_resume_removes_temporary_files_a_kill_left(checkpoints, dataset, tmp_path):
    """A SIGKILL inside an atomic write leaves `.name.tmp-PID`; the resumed run must not keep it."""
    data, out = dataset("llava", 2), tmp_path / "run"
    assert main(scan_args(checkpoints["llava"], data, out, "--group", "2", "--limit", "1")) == 0
    left = [out / ".run.json.tmp-4242", out / "samples" / ".0000-of-0001-0000001.parquet.tmp-4242",
            out / "scores" / ".0000-of-0001-0000001.parquet.tmp-7", out / "shards" / ".0000-of-0001.json.tmp-7"]
    for path in left:
        path.write_bytes(b"half a file")
    assert main(scan_args(checkpoints["llava"], data, out, "--group", "2", "--resume")) == 0
    assert not any(path.exists() for path in left)
    assert len(read_run(out)["samples"]) == 2
