"""`horizon analyze` / `plot` on input that is wrong: one line, exit 2, nothing written, nothing changed.

Hand-made runs (tests/synthetic.py), no model: models that share a folder
name, non-finite scores, broken files and columns, bad statistics options.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import error_of
from horizon.cli import main
from horizon.stats import StatsParams, analyze_frames, load_runs
from synthetic import synthetic_scores, write_run

FAST = StatsParams(n_boot=40, n_perm=20, seed=0)


def run_cli(capsys, *args: str) -> tuple[int, list[str]]:
    code = main(list(args))
    err = capsys.readouterr().err.splitlines()
    assert not any("Traceback" in line for line in err)
    return code, [line for line in err if line.startswith("horizon: error")]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def scores(task: str = "ocr", horizon: int = 6, n_layers: int = 8, seed: int = 0, n: int = 6) -> pd.DataFrame:
    return synthetic_scores(task=task, horizon=horizon, n_layers=n_layers, seed=seed, n_samples=n, onset=2)


def refused(capsys, run: Path, out: Path, needles: tuple[str, ...], *extra: str, command: str = "analyze") -> str:
    """Run ``command`` on ``run``: exit 2, one error line holding every needle, no --out, the run unchanged."""
    before = snapshot(run)
    code, err = run_cli(capsys, command, str(run), "--out", str(out), "--n-boot", "20", "--n-perm", "10", *extra)
    assert code == 2 and len(err) == 1, err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert not out.exists()
    assert snapshot(run) == before
    return err[0]


# ---------------------------------------------------------------- models that share a folder name


def test_different_checkpoints_with_one_folder_name_stay_apart(tmp_path, monkeypatch):
    a, b = tmp_path / "run1" / "checkpoint-500", tmp_path / "run2" / "checkpoint-500"
    a.mkdir(parents=True), b.mkdir(parents=True)
    ocr_a = write_run(tmp_path / "a-ocr", [scores("ocr", 6, 8, seed=1)], str(a), 8)
    monkeypatch.chdir(tmp_path)  # the same checkpoint named by a relative path is the same model
    vqa_a = write_run(tmp_path / "a-vqa", [scores("vqa", 3, 8, seed=2)], "run1/checkpoint-500", 8)
    ocr_b = write_run(tmp_path / "b-ocr", [scores("ocr", 12, 16, seed=3)], str(b), 16)
    other = tmp_path / "zoo" / "llava-l"
    other.mkdir(parents=True)
    ocr_c = write_run(tmp_path / "c-ocr", [scores("ocr", 4, 8, seed=4)], str(other), 8)

    summary = analyze_frames(load_runs([ocr_a, vqa_a, ocr_b, ocr_c]), params=FAST)["summary"]
    got = {(r.model, r.task): r for r in summary.itertuples()}
    assert set(got) == {("run1/checkpoint-500", "ocr"), ("run1/checkpoint-500", "vqa"),
                        ("run2/checkpoint-500", "ocr"), ("llava-l", "ocr")}  # a unique name stays short
    # each model's row is what that model's run alone gives, not a pool of both
    for (model, task), run in {("run1/checkpoint-500", "ocr"): ocr_a, ("run1/checkpoint-500", "vqa"): vqa_a,
                               ("run2/checkpoint-500", "ocr"): ocr_b}.items():
        alone = analyze_frames(load_runs([run]), params=FAST)["summary"].iloc[0]
        row = got[(model, task)]
        assert (row.n_samples, row.n_layers, row.horizon) == (alone.n_samples, alone.n_layers, alone.horizon)
    assert got[("run1/checkpoint-500", "ocr")].horizon == 6 and got[("run2/checkpoint-500", "ocr")].horizon == 12
    assert got[("run2/checkpoint-500", "ocr")].n_layers == 16


def test_runs_that_name_one_model_but_differ_in_depth_are_refused(tmp_path, capsys):
    # "ckpt" (a relative path that no longer resolves) in two runs of different depth: two models, one name
    one = write_run(tmp_path / "one", [scores("ocr", 6, 8, seed=1)], "ckpt", 8)
    two = write_run(tmp_path / "two", [scores("vqa", 12, 16, seed=2)], "ckpt", 16)
    error_of(lambda: load_runs([one, two]), str(one), str(two), "'ckpt'", "n_layers (8 vs 16)")
    code, err = run_cli(capsys, "analyze", str(one), str(two), "--out", str(tmp_path / "out"))
    assert code == 2 and len(err) == 1 and not (tmp_path / "out").exists()


def test_the_folder_scan_resolved_names_the_model_and_its_fingerprint_tells_replaced_files(tmp_path, capsys):
    def with_model(run: Path, **keys) -> Path:
        config = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**config, **keys}))
        return run

    # typed "ckpt" in two folders (relative to two cwds): the resolved folders scan recorded tell them apart
    a = with_model(write_run(tmp_path / "a", [scores("ocr", 6, 8, seed=1)], "ckpt", 8),
                   model_path=str(tmp_path / "exp1" / "ckpt"), model_fingerprint="f1")
    b = with_model(write_run(tmp_path / "b", [scores("ocr", 3, 8, seed=2)], "ckpt", 8),
                   model_path=str(tmp_path / "exp2" / "ckpt"), model_fingerprint="f2")
    summary = analyze_frames(load_runs([a, b]), params=FAST)["summary"]
    assert sorted(summary.model) == ["exp1/ckpt", "exp2/ckpt"]
    assert dict(zip(summary.model, summary.horizon)) == {"exp1/ckpt": 6, "exp2/ckpt": 3}
    # one folder whose files were replaced between two scans: two models under one name, refused
    c = with_model(write_run(tmp_path / "c", [scores("vqa", 4, 8, seed=3)], "ckpt", 8),
                   model_path=str(tmp_path / "exp1" / "ckpt"), model_fingerprint="f3")
    error_of(lambda: load_runs([a, c]), str(a), str(c), "model_fingerprint (f1 vs f3)")
    # the same files again (a second task): one model, pooled under one name
    d = with_model(write_run(tmp_path / "d", [scores("vqa", 4, 8, seed=3)], "./ckpt", 8),
                   model_path=str(tmp_path / "exp1" / "ckpt"), model_fingerprint="f1")
    assert set(analyze_frames(load_runs([a, d]), params=FAST)["summary"].model) == {"ckpt"}


# ---------------------------------------------------------------- non-finite scores


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_scores_are_refused_naming_where(tmp_path, capsys, bad):
    frame = scores("ocr", 6, 8, seed=1)
    hit = (frame.sample_id == "ocr-2") & (frame.layer == 3)
    frame.loc[hit & (frame.group < 2), "value"] = bad
    frame.loc[(frame.sample_id == "ocr-4") & (frame.layer == 5) & (frame.group == 0), "value"] = bad
    run = write_run(tmp_path / "run", [frame], "org/m", 8)
    refused(capsys, run, tmp_path / "out", (str(run), "3 non-finite score(s)", "in 2 sample(s)", "sample 'ocr-2'",
                                            "metric kl", "layer 3"))
    # an errored sample's scores are left out, whatever they hold: the same run analyses once both are marked
    samples = pd.read_parquet(run / "samples.parquet")
    samples.loc[samples.sample_id.isin(["ocr-2", "ocr-4"]), "status"] = "error: boom"
    samples.to_parquet(run / "samples.parquet", index=False)
    summary = analyze_frames(load_runs([run]), params=FAST)["summary"].iloc[0]
    assert summary.n_samples == 4 and summary.horizon == 6


# ---------------------------------------------------------------- broken files and columns


def test_a_scores_part_that_is_not_parquet(tmp_path, capsys):
    run = write_run(tmp_path / "run", [scores()], "org/m", 8, parts=True)
    part = sorted((run / "scores").glob("*.parquet"))[2]
    part.write_bytes(b"PAR1 this is not a parquet file")
    refused(capsys, run, tmp_path / "out", (str(part), "not a readable parquet file"))


def test_a_samples_table_that_is_cut_short(tmp_path, capsys):
    run = write_run(tmp_path / "run", [scores()], "org/m", 8)
    data = (run / "samples.parquet").read_bytes()
    (run / "samples.parquet").write_bytes(data[: len(data) // 2])
    refused(capsys, run, tmp_path / "out", (str(run / "samples.parquet"), "not a readable parquet file"))


@pytest.mark.parametrize("column, values, needle", [
    ("layer", lambda s: s.layer.astype(str), "column layer holds text, expected integers"),
    ("value", lambda s: s.value.map(lambda v: f"{v:.3f}"), "column value holds text, expected floats or integers"),
])
def test_a_column_of_the_wrong_type_names_file_and_column(tmp_path, capsys, column, values, needle):
    run = write_run(tmp_path / "run", [scores()], "org/m", 8, parts=True)
    part = sorted((run / "scores").glob("*.parquet"))[-1]  # deep in the run: found when the stream reaches it
    frame = pd.read_parquet(part)
    frame[column] = values(frame)
    frame.to_parquet(part, index=False)
    refused(capsys, run, tmp_path / "out", (str(part), needle))


def test_a_run_without_run_json_and_a_run_json_cut_short(tmp_path, capsys):
    run = write_run(tmp_path / "run", [scores()], "org/m", 8)
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text[: len(text) // 2])
    refused(capsys, run, tmp_path / "out", (str(run / "run.json"), "not valid JSON"))
    (run / "run.json").write_text("[1, 2]")
    refused(capsys, run, tmp_path / "out", (str(run / "run.json"), "expected a JSON object"))
    (run / "run.json").write_text(json.dumps({"model": "org/m", "n_layers": "eight"}))
    refused(capsys, run, tmp_path / "out", (str(run / "run.json"), "n_layers", "'eight'"), command="plot")
    (run / "run.json").unlink()
    refused(capsys, run, tmp_path / "out", (str(run), "no run.json"))


def test_a_samples_floor_that_is_not_json(tmp_path, capsys):
    run = write_run(tmp_path / "run", [scores()], "org/m", 8)
    samples = pd.read_parquet(run / "samples.parquet").assign(floor="{kl: 0.1")
    samples.to_parquet(run / "samples.parquet", index=False)
    refused(capsys, run, tmp_path / "out", (str(run), "floor column"))


# ---------------------------------------------------------------- statistics options


BAD_OPTIONS = [
    (("--n-boot", "0"), "--n-boot"), (("--n-boot", "-5"), "--n-boot"), (("--n-perm", "0"), "--n-perm"),
    (("--uniformity", "0"), "--uniformity"), (("--uniformity", "1.5"), "--uniformity"), (("--seed", "-1"), "--seed"),
    (("--alpha", "1"), "--alpha"), (("--alpha", "nan"), "--alpha"), (("--threshold", "-0.1"), "--threshold"),
]


@pytest.mark.parametrize("command", ["analyze", "plot"])
def test_bad_statistics_options_are_refused_before_anything_is_written(tmp_path, capsys, command):
    run = write_run(tmp_path / "run", [scores()], "org/m", 8)
    for option, flag in BAD_OPTIONS:
        before = snapshot(run)
        code, err = run_cli(capsys, command, str(run), "--out", str(tmp_path / "out"), *option)
        assert code == 2 and len(err) == 1 and flag in err[0] and option[1] in err[0], (option, err)
        assert not (tmp_path / "out").exists() and snapshot(run) == before


@pytest.mark.parametrize("option", [("--n-boot", "0"), ("--seed", "-3")])
def test_validate_estimator_refuses_bad_statistics_options_before_the_model_loads(tmp_path, capsys, dataset,
                                                                                  monkeypatch, option):
    import horizon.models

    monkeypatch.setattr(horizon.models, "load", lambda *a, **k: pytest.fail("the model loaded"))
    code, err = run_cli(capsys, "validate-estimator", "--model", str(tmp_path / "no-model"), "--data",
                        str(dataset("llava", 1)), "--out", str(tmp_path / "out"), *option)
    assert code == 2 and len(err) == 1 and option[0] in err[0] and not (tmp_path / "out").exists()


def test_demo_refuses_bad_statistics_options_before_it_scans(tmp_path, capsys, monkeypatch):
    import horizon.demo

    monkeypatch.setattr(horizon.demo, "run_demo", lambda *a, **k: pytest.fail("the demo ran"))
    code, err = run_cli(capsys, "demo", "--out", str(tmp_path / "figs"), "--runs", str(tmp_path / "runs"),
                        "--n-perm", "0")
    assert code == 2 and len(err) == 1 and "--n-perm" in err[0]
    assert not (tmp_path / "figs").exists() and not (tmp_path / "runs").exists()
