"""The streamed per-sample statistics (horizon.stats.per_sample) equal the in-memory ones, on every run layout.

The reference is the pandas implementation the streaming replaced, frozen in
tests/stats_reference.py and fed whole score frames. Equality is exact (to the
bit), so every table ``analyze`` writes stays the same.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stats_reference as reference
from horizon.errors import HorizonError
from horizon.io import runs as store
from horizon.io.runs import RunStore
from horizon.stats import (StatsParams, analyze_frames, compare, curves, load_runs, per_sample, read_scores,
                           sample_layer_stats, stream_sample_stats, summarize)
from synthetic import synthetic_scores, write_run

FLOOR = {"kl": 0.02, "gain_prob": 0.03, "keep_prob": 0.01}
FAST = StatsParams(n_boot=60, n_perm=60, seed=0)


def frames(model: str = "m", n_layers: int = 6, n_samples: int = 5, metrics=("kl",), seed: int = 0) -> list[pd.DataFrame]:
    """Two tasks' synthetic scores (values near the floor included), one frame per task and metric."""
    out = []
    for t, task in enumerate(("ocr", "vqa")):
        for m, metric in enumerate(metrics):
            out.append(synthetic_scores(task=task, model=model, metric=metric, n_layers=n_layers, groups=9,
                                        onset=1, horizon=4, n_samples=n_samples, seed=seed + 10 * t + m, noise=0.03))
    return out


def mark(run: Path, errored: tuple[int, ...] = (1, 6), floor: dict | None = None) -> Path:
    """Give a hand-made run errored samples (their scores stay in the file) and per-sample floors."""
    samples = pd.read_parquet(run / "samples.parquet")
    samples.loc[list(errored), "status"] = "error: boom"
    samples["floor"] = json.dumps(floor or FLOOR)
    samples.to_parquet(run / "samples.parquet", index=False)
    return run


def store_run(path: Path, parts: list[pd.DataFrame], model: str, n_layers: int, errored: tuple[int, ...] = (2,)) -> Path:
    """A run written as `horizon scan` writes it: RunStore, one part per sample; errored samples have no scores."""
    scores = pd.concat(parts, ignore_index=True)
    run = RunStore(path)
    run.open({"model": model, "n_layers": n_layers, "group": 1, "protocol": "keep"}, resume=False)
    ids = list(dict.fromkeys(scores.sample_id))
    run.begin(len(ids), 0)
    for i, sid in enumerate(ids):
        mine = scores[scores.sample_id == sid]
        ok = i not in errored
        row = {"sample_id": sid, "task": mine.task.iloc[0], "status": "ok" if ok else "error: boom",
               "grid_h": 3, "grid_w": 3, "image": "", "floor": json.dumps(FLOOR) if ok else None}
        groups = pd.DataFrame({"sample_id": sid, "group": np.arange(9), "row": np.arange(9) // 3,
                               "col": np.arange(9) % 3, "positions": [[5 + g] for g in range(9)], "image": 0, "grid": 0})
        run.add(row, groups if ok else groups.iloc[:0], mine[store.SCORE_COLUMNS] if ok else mine.iloc[:0])
    run.close()
    return path


def expected(paths: list[Path]) -> pd.DataFrame:
    """Today's in-memory computation: every run's scores read whole, tidy_scores, sample_layer_stats."""
    runs = [{**run, "scores": store.read_scores(run["path"])} for run in load_runs(paths)]
    return reference.sample_layer_stats(reference.tidy_scores(runs))


def layouts(root: Path) -> dict[str, Path]:
    metrics = ("gain_prob", "keep_prob")
    shuffled = mark(write_run(root / "shuffled", frames("a", metrics=metrics, seed=1), "org/a", 6))
    table = pd.read_parquet(shuffled / "scores.parquet")
    table.sample(frac=1.0, random_state=0).to_parquet(shuffled / "scores.parquet", index=False)
    grouped = mark(write_run(root / "grouped", frames("b", metrics=metrics, seed=2), "org/b", 6))
    table = pd.read_parquet(grouped / "scores.parquet")  # each sample's rows together, both metrics
    table.sort_values("sample_id", kind="mergesort").to_parquet(grouped / "scores.parquet", index=False)
    folder = mark(write_run(root / "folder", frames("c", n_layers=4, seed=3), "org/c", 4, parts=True))
    parts = store_run(root / "store", frames("d", metrics=metrics, seed=4), "org/d", 6)
    return {"shuffled": shuffled, "grouped": grouped, "folder": folder, "store": parts}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return layouts(tmp_path_factory.mktemp("layouts"))


@pytest.mark.parametrize("layout", ["shuffled", "grouped", "folder", "store"])
def test_streamed_stats_equal_the_in_memory_ones(runs, layout):
    # batches of 100 rows: a sample (6 layers x 9 groups x 2 metrics = 108 rows) always spans batches
    got = stream_sample_stats(load_runs([runs[layout]]), batch_rows=100)
    want = expected([runs[layout]])
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert not got.sample_id.str.endswith(("-1", "-6")).any() or layout == "store"  # errored samples left out
    assert set(got.metric) <= {"gain_prob", "kl"}  # keep_prob, a raw level, is left out


def test_several_runs_models_and_tasks_at_once(runs):
    paths = [runs["store"], runs["shuffled"], runs["folder"], runs["grouped"]]
    got = stream_sample_stats(load_runs(paths), batch_rows=250)
    pd.testing.assert_frame_equal(got, expected(paths), check_exact=True)
    assert set(got.model) == {"org/a", "org/b", "org/c", "org/d"} and set(got.task) == {"ocr", "vqa"}
    one = stream_sample_stats(load_runs(paths), metric="kl")
    want = expected(paths)
    pd.testing.assert_frame_equal(one, want[want.metric == "kl"].reset_index(drop=True), check_exact=True)
    with pytest.raises(HorizonError, match=r"metric 'keep_prob' not in the runs \(have: gain_prob, kl\)"):
        stream_sample_stats(load_runs(paths), metric="keep_prob")


def test_analyze_tables_equal_those_of_the_in_memory_pipeline(runs):
    paths = [runs["store"], runs["shuffled"], runs["grouped"]]
    got = analyze_frames(load_runs(paths), params=FAST)
    want = expected(paths)
    pd.testing.assert_frame_equal(got["per_sample"], want, check_exact=True)
    for name, fn in (("curves", curves), ("summary", summarize), ("comparisons", compare)):
        pd.testing.assert_frame_equal(got[name], fn(want, FAST), check_exact=True)


def test_a_scanned_keep_run_streams_to_the_same_numbers(models, dataset, tmp_path):
    import horizon

    run = tmp_path / "run"
    horizon.scan(models["llava"], dataset("llava", 3), out=run, group=1, protocol="keep", progress=False)
    assert any(store.PART.match(p.name) for p in (run / "scores").iterdir())
    loaded = load_runs([run])
    assert "scores" not in loaded[0] and "keep_prob" in set(read_scores(loaded[0]).metric)
    got = stream_sample_stats(loaded)
    pd.testing.assert_frame_equal(got, expected([run]), check_exact=True)
    assert set(got.metric) == {"gain_logp", "gain_prob"}


def test_the_kernel_equals_pandas_on_ragged_groups_ties_and_nan():
    rng = np.random.default_rng(7)
    rows = []
    for s in range(6):
        for layer in range(3):
            n = int(rng.integers(1, 12))  # groups per layer differ: no rectangle
            values = rng.choice([0.0, 0.5, -0.25, 1.0], size=n) if s % 2 else rng.normal(size=n)
            if s == 3 and layer == 1:
                values[0] = np.nan
            rows += [{"model": "m", "task": "t", "metric": "kl", "sample_id": f"s{s}", "layer": layer,
                      "group": g, "value": v} for g, v in enumerate(values)]
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=1)
    pd.testing.assert_frame_equal(sample_layer_stats(frame), reference.sample_layer_stats(frame), check_exact=True)
    floored = frame.assign(floor=0.3, n_layers=3)
    pd.testing.assert_frame_equal(sample_layer_stats(floored, 0.25), reference.sample_layer_stats(floored, 0.25),
                                  check_exact=True)


def _by_hand(values: list[float], floor: float, top_share: float = 0.10) -> dict[str, float]:
    """One sample-layer's statistics in plain Python: Gini as the mean absolute difference / (2 mean)."""
    x = [v if abs(v) > floor else 0.0 for v in values]
    pos = [max(v, 0.0) for v in x]
    n, total = len(pos), sum(pos)
    out = {"mean_info": sum(x) / n}
    if total <= 0:
        return {**out, "uniformity": math.nan, "entropy": math.nan, "top_share": math.nan}
    gini = sum(abs(a - b) for a in pos for b in pos) / (n * n) / (2 * total / n)
    p = [v / total for v in pos]
    k = max(1, math.ceil(top_share * n))
    return {**out, "uniformity": 1 - gini, "entropy": -sum(q * math.log(q) for q in p if q > 0) / math.log(n),
            "top_share": sum(sorted(pos)[-k:]) / total}


def test_a_plain_python_loop_gives_the_same_numbers(runs):
    run = runs["store"]
    got = stream_sample_stats(load_runs([run])).set_index(["sample_id", "metric", "layer"])
    scores = store.read_scores(run)
    for sid, metric, layer in [("ocr-0", "gain_prob", 0), ("vqa-3", "gain_prob", 2), ("ocr-4", "gain_prob", 5)]:
        values = scores[(scores.sample_id == sid) & (scores.metric == metric) & (scores.layer == layer)].value
        hand = _by_hand([float(v) for v in values], FLOOR[metric])
        row = got.loc[(f"0:{sid}", metric, layer)]
        for key, value in hand.items():
            assert row[key] == pytest.approx(value, rel=1e-12, abs=1e-12, nan_ok=True), (sid, layer, key)


def test_streaming_holds_one_part_at_a_time(runs, monkeypatch):
    events = []
    kernel = per_sample._chunk_stats
    monkeypatch.setattr(per_sample, "_chunk_stats", lambda table, acc: (events.append(("stats", table.num_rows)),
                                                                        kernel(table, acc))[1])

    def counted(run: Path, batch_rows: int):
        def pieces():
            for piece in store.iter_score_pieces(run, per_sample._READ, batch_rows):
                events.append(("read", piece.table.num_rows))
                yield piece
        return pieces

    # a run scan wrote: every part (one sample, 108 rows) is summarised before the next is read
    loaded = load_runs([runs["store"]])[0]
    per_sample.run_sample_stats(loaded, pieces=counted(runs["store"], 1 << 20))
    assert [kind for kind, _ in events] == ["read", "stats"] * (len(events) // 2)
    assert max(rows for _, rows in events) == 108
    # a single scores.parquet in batches of 100 rows: a chunk is at most a batch plus the sample it cut
    events.clear()
    loaded = load_runs([runs["grouped"]])[0]
    per_sample.run_sample_stats(loaded, pieces=counted(runs["grouped"], 100))
    assert max(rows for kind, rows in events if kind == "stats") <= 100 + 108
    assert sum(rows for kind, rows in events if kind == "read") == store.count_rows(runs["grouped"], "scores")
    # rows of samples scattered over the file: the run is read whole, the numbers stay exact
    events.clear()
    loaded = load_runs([runs["shuffled"]])[0]
    frame, _ = per_sample.run_sample_stats(loaded, pieces=counted(runs["shuffled"], 100))
    assert [rows for kind, rows in events if kind == "stats"] == [store.count_rows(runs["shuffled"], "scores")]


def test_load_runs_keeps_no_scores_and_bad_input_gets_one_line(runs, tmp_path):
    loaded = load_runs([runs["store"], runs["shuffled"]])
    assert all("scores" not in run and "groups" not in run for run in loaded)
    assert loaded[0]["n_layers"] == 6 and loaded[0]["floor"] == FLOOR
    with pytest.raises(HorizonError, match="run directory not found"):
        load_runs([tmp_path / "nothing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(HorizonError, match=r"empty: no samples table"):
        load_runs([tmp_path / "empty"])
    # a part lacking a column deep in the run: named when the stream reaches it
    bad = store_run(tmp_path / "bad", frames("e", n_samples=3), "org/e", 6, errored=())
    last = sorted((bad / "scores").glob("*.parquet"))[-1]
    pd.read_parquet(last).drop(columns=["value"]).to_parquet(last)
    with pytest.raises(HorizonError) as err:
        stream_sample_stats(load_runs([bad]))
    assert str(err.value) == f"{last}: missing required column(s) value"


def test_heatmaps_read_only_the_drawn_samples_scores_and_groups(runs, monkeypatch, tmp_path):
    from horizon import plots

    read, drawn = [], {}
    real = store.pq.read_table
    monkeypatch.setattr(store.pq, "read_table", lambda path, *a, **k: (read.append(Path(path)), real(path, *a, **k))[1])
    monkeypatch.setattr(plots, "plot_token_heatmaps", lambda scores, groups, *a, **k: drawn.update(
        scores=scores, groups=groups) or [])
    monkeypatch.setattr(plots, "plot_layer_group_heatmap", lambda *a, **k: [])
    run = load_runs([runs["store"]])[0]
    read.clear()
    plots._run_heatmaps(run, "gain_prob", tmp_path, None)
    first = sorted((runs["store"] / "samples").glob("*.parquet"))[0].name  # ocr-0, status ok
    assert sorted(read) == [runs["store"] / t / first for t in ("groups", "samples", "scores")]
    assert set(drawn["scores"].sample_id) == {"ocr-0"} and set(drawn["groups"].sample_id) == {"ocr-0"}
    # a single-file run: the filter keeps every other sample's rows out of memory
    run = load_runs([runs["grouped"]])[0]
    plots._run_heatmaps(run, "gain_prob", tmp_path, None)
    assert set(drawn["scores"].sample_id) == {"ocr-0"} and set(drawn["groups"].sample_id) == {"ocr-0"}
