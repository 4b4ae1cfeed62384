"""Sharded scans into one run directory: torchrun ranks, --shard i/n, locks, resume per shard, status,
and the append-only store (constant work per sample, older layouts still read and resume)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from horizon.cli import main
from horizon.errors import HorizonError
from horizon.io.runs import RunStore, Shard, read_run, read_table, run_status
from horizon.scan import combined_shard, distributed_shard

HORIZON = [sys.executable, "-m", "horizon"]
# Scores are compared bit for bit across processes: every process computes on one thread (torchrun's default)
pytestmark = pytest.mark.usefixtures("one_thread")
KEY = ["sample_id", "layer", "group", "metric"]


def scan_args(model, data, out, *extra):
    return ["scan", "--model", str(model), "--data", str(data), "--out", str(out), "-q", "--group", "1",
            "--batch-size", "4", *extra]


def sorted_scores(run: Path) -> pd.DataFrame:
    scores = read_run(run)["scores"]
    scores = scores.astype({"sample_id": str, "metric": str})
    return scores.sort_values(KEY).reset_index(drop=True)


def same_run(a: Path, b: Path) -> None:
    """Two runs hold the same samples, groups and scores (scores bit for bit: the same computation per sample)."""
    ra, rb = read_run(a), read_run(b)
    cols = ["sample_id", "task", "input_ids", "answer_ids", "n_visual", "clean_logp", "clean_pred", "status", "floor"]
    sa = ra["samples"].sort_values("sample_id").reset_index(drop=True)[cols]
    sb = rb["samples"].sort_values("sample_id").reset_index(drop=True)[cols]
    pd.testing.assert_frame_equal(sa.astype({"input_ids": str, "answer_ids": str}),
                                  sb.astype({"input_ids": str, "answer_ids": str}))
    ga = ra["groups"].astype({"sample_id": str}).sort_values(["sample_id", "group"]).reset_index(drop=True)
    gb = rb["groups"].astype({"sample_id": str}).sort_values(["sample_id", "group"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ga.drop(columns="positions"), gb.drop(columns="positions"))
    assert [list(p) for p in ga.positions] == [list(p) for p in gb.positions]
    pd.testing.assert_frame_equal(sorted_scores(a), sorted_scores(b))
    assert ra["config"]["numerical_floor"] == rb["config"]["numerical_floor"]


def parts(run: Path, table: str = "samples") -> list[str]:
    return sorted(p.name for p in (run / table).glob("*.parquet"))


# ------------------------------------------------------------------------------------------ shards


def test_shard_parsing_and_round_robin():
    assert Shard.parse("1/3").take(list(range(10))) == [1, 4, 7]
    assert Shard.parse(" 0 / 1 ").take("abc") == ["a", "b", "c"]
    for bad in ("3/3", "1", "-1/2", "a/b", "1/0"):
        with pytest.raises(HorizonError, match="--shard"):
            Shard.parse(bad)
    # --shard i/n under torchrun: every rank of every array task gets a disjoint share, together all samples
    shares = [combined_shard(Shard(i, 3), Shard(r, 2)).take(list(range(20))) for i in range(3) for r in range(2)]
    assert sorted(x for s in shares for x in s) == list(range(20))
    assert distributed_shard({"RANK": "1", "WORLD_SIZE": "4"}) == Shard(1, 4)
    assert distributed_shard({}) is None and distributed_shard({"RANK": "0", "WORLD_SIZE": "1"}) is None
    with pytest.raises(HorizonError, match="RANK"):
        distributed_shard({"RANK": "x", "WORLD_SIZE": "2"})


def test_torchrun_two_ranks_equal_one_process(checkpoints, dataset, tmp_path):
    """`torchrun --nproc-per-node 2 -m horizon scan` splits the samples over the ranks into one run directory,
    whose tables equal a single-process run's."""
    data, model = dataset("llava", 5), checkpoints["llava"]
    single, ranked = tmp_path / "single", tmp_path / "ranked"
    assert main(scan_args(model, data, single)) == 0
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "horizon",
                           *scan_args(model, data, ranked)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank r wrote shard r of 2: samples r, r + 2, ... in data order
    assert parts(ranked) == ["0000-of-0002-0000000.parquet", "0000-of-0002-0000001.parquet",
                             "0000-of-0002-0000002.parquet", "0001-of-0002-0000000.parquet",
                             "0001-of-0002-0000001.parquet"]
    by_shard: dict[str, set] = {}
    for name in parts(ranked):
        by_shard.setdefault(name[:12], set()).update(read_table(ranked, "samples", files=[ranked / "samples" / name]).sample_id)
    assert by_shard == {"0000-of-0002": {"q0", "q2", "q4"}, "0001-of-0002": {"q1", "q3"}}
    same_run(single, ranked)
    status = run_status(ranked)
    assert status[["shard", "done", "total", "errors", "running"]].values.tolist() == [
        ["0/2", 3, 3, 0, False], ["1/2", 2, 2, 0, False]]
    assert "shard 0/2 done" in proc.stdout and "shard 1/2 done" in proc.stdout


def test_killed_shard_resumes_and_others_join_without_flags(checkpoints, dataset, tmp_path, capsys):
    n = 16
    data, model = dataset("llava", n), checkpoints["llava"]
    run, single = tmp_path / "run", tmp_path / "single"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(HORIZON + scan_args(model, data, run, "--shard", "1/2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while (not (run / "samples").is_dir() or len(parts(run)) < 2) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(parts(run))
    assert 2 <= done < n // 2, f"the kill did not land mid-shard ({done} of {n // 2} samples done)"

    # shard 0 joins the run shard 1 started: no --resume needed, nothing of shard 1 is touched
    assert main(scan_args(model, data, run, "--shard", "0/2")) == 0
    capsys.readouterr()
    # shard 1 holds samples: rerunning it without --resume is refused in one line
    assert main(scan_args(model, data, run, "--shard", "1/2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard 1/2" in err[0] and "--resume" in err[0]
    assert main(scan_args(model, data, run, "--shard", "1/2", "--resume")) == 0
    out = capsys.readouterr().out
    assert "shard 1/2 done" in out and f"{n // 2}/{n // 2}" in out and "complete" in out
    assert main(scan_args(model, data, single)) == 0
    same_run(single, run)
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]
    # every part of a table has its samples part (a kill between parts leaves nothing behind after the resume)
    assert set(parts(run, "scores")) <= set(parts(run)) and set(parts(run, "groups")) <= set(parts(run))


def test_one_shard_one_writer(checkpoints, dataset, tmp_path, capsys):
    data, model = dataset("llava", 2), checkpoints["llava"]
    run = tmp_path / "run"
    assert main(scan_args(model, data, run, "--shard", "0/2", "--limit", "1")) == 0
    config = json.loads((run / "run.json").read_text())
    holder = RunStore(run, Shard(1, 2))
    holder.open(config, resume=True)  # another process writing shard 1/2 (a second open file holds its own lock)
    try:
        capsys.readouterr()
        assert main(scan_args(model, data, run, "--shard", "1/2", "--limit", "1", "--resume")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "shard 1/2 is being written by pid" in err[0] and str(os.getpid()) in err[0]
        # another count while shard 1/2 runs would split the data differently
        assert main(scan_args(model, data, run, "--shard", "0/3", "--limit", "1")) == 2
        assert "same count" in capsys.readouterr().err
    finally:
        holder.close()
    assert main(scan_args(model, data, run, "--shard", "1/2", "--limit", "1", "--resume")) == 0


def test_status_reports_done_total_and_time_left(tmp_path, capsys):
    run = tmp_path / "run"
    store = RunStore(run, Shard(0, 2))
    store.open({"model": "m"}, resume=False)
    store.begin(total=4, done=0)
    row = {"sample_id": "a", "task": "t", "status": "ok", "floor": json.dumps({"kl": 1e-7})}
    scores = pd.DataFrame({"sample_id": "a", "layer": [0, 1], "group": 0, "metric": "kl", "value": [0.5, 0.25]})
    store.add(row, pd.DataFrame(), scores)
    store.add({**row, "sample_id": "b", "status": "error: unreadable image"}, pd.DataFrame(), pd.DataFrame())
    status = run_status(run).iloc[0]
    assert (status.shard, status.done, status.total, status.errors, bool(status.running)) == ("0/2", 2, 4, 1, True)
    rate = status.samples_per_s
    assert rate > 0 and status.eta_s == pytest.approx(2 / rate)
    assert main(["status", str(run)]) == 0
    text = capsys.readouterr().out
    assert "0/2" in text and "2/4" in text and "running" in text and "1 shard(s) not started" in text
    assert "time left unknown" in text  # a shard not started has no estimate
    store.close()
    assert not run_status(run).iloc[0].running
    assert json.loads((run / "run.json").read_text())["numerical_floor"] == {"kl": 1e-7}
    assert main(["status", str(tmp_path)]) == 2  # not a run: one line
    assert "no run.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the store


def test_adding_a_sample_rewrites_nothing(tmp_path):
    """Append-only: committing sample n writes its three parts and the manifest; no earlier file changes."""
    store = RunStore(tmp_path / "run")
    store.open({"model": "m"}, resume=False)
    store.begin(total=3, done=0)

    def add(sid: str) -> None:
        groups = pd.DataFrame({"sample_id": sid, "group": [0, 1], "row": 0, "col": [0, 1], "positions": [[5], [6]],
                               "image": 0, "grid": 0})
        scores = pd.DataFrame({"sample_id": sid, "layer": [0, 0], "group": [0, 1], "metric": "kl",
                               "value": [0.1, 0.2]})
        store.add({"sample_id": sid, "task": "t", "status": "ok"}, groups, scores)

    add("a")
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*.parquet")}
    before[tmp_path / "run" / "run.json"] = ((tmp_path / "run" / "run.json").stat().st_ino,
                                            (tmp_path / "run" / "run.json").stat().st_mtime_ns)
    add("b")
    add("c")
    for path, stamp in before.items():
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, path
    assert len(list((tmp_path / "run").rglob("*.parquet"))) == 9
    store.close()
    run = read_run(tmp_path / "run")
    assert run["samples"].sample_id.tolist() == ["a", "b", "c"]
    assert run["scores"].sample_id.tolist() == ["a", "a", "b", "b", "c", "c"]
    assert str(run["scores"].sample_id.dtype) == "category" and run["scores"].layer.dtype == np.int16


def _legacy(run: Path) -> None:
    """Rewrite a run in the single-file layout of earlier versions (plain strings, int64)."""
    tables = read_run(run)
    samples = tables["samples"].astype({c: "int64" for c in ("n_visual", "grid_h", "grid_w", "scored_offset")})
    samples.to_parquet(run / "samples.parquet", index=False)
    tables["groups"].astype({"sample_id": str, "group": "int64", "row": "int64", "col": "int64",
                             "image": "int64", "grid": "int64"}).to_parquet(run / "groups.parquet", index=False)
    scores = tables["scores"].astype({"sample_id": str, "metric": str, "layer": "int64", "group": "int64"})
    for table in ("samples", "groups", "scores", "shards"):
        shutil.rmtree(run / table)
    (run / "scores").mkdir()
    for i, (sid, part) in enumerate(scores.groupby("sample_id", sort=False)):
        part.to_parquet(run / "scores" / f"part-{i:06d}.parquet", index=False)


def test_runs_of_the_single_file_layout_read_and_resume(checkpoints, dataset, tmp_path):
    data, model = dataset("llava", 3), checkpoints["llava"]
    old, full = tmp_path / "old", tmp_path / "full"
    assert main(scan_args(model, data, old, "--limit", "2")) == 0
    assert main(scan_args(model, data, full)) == 0
    _legacy(old)
    assert not (old / "samples").exists() and (old / "samples.parquet").exists()
    # a kill of the old writer could leave a scores part past its committed samples: the resume drops it
    shutil.copy(old / "scores" / "part-000000.parquet", old / "scores" / "part-000002.parquet")
    assert len(read_run(old)["samples"]) == 2
    assert main(scan_args(model, data, old, "--resume")) == 0
    assert parts(old) == ["0000-of-0001-0000000.parquet"]  # the third sample, appended as a part
    assert not (old / "scores" / "part-000002.parquet").exists()
    same_run(full, old)
