"""`prune_eval` / `prune_grid` / `horizon prune-eval` end to end on the tiny llava (3 layers, 5x5 = 25 visual tokens).

Every expected number is computed here from the files the evaluation wrote
(predictions.jsonl, the scan run's parquet tables) or by hand from the
schedule, never by the helper that produced it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import horizon
from horizon.cli import main
from horizon.data import read_jsonl
from horizon.prune import parse_schedule
from horizon.prune import evaluate
from horizon.prune.evaluate import InfoScores, PruneConfig, prune_eval
from horizon.prune.generate import generate
from horizon.prune.grid import GridConfig, prune_grid
from horizon.scan import encode_sample
from helpers import error_of

N_LAYERS, N_VISUAL = 3, 25  # the tiny llava of conftest
SHORT = "\nAnswer the question using a single word or phrase."


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def llava(models):
    return models["llava"]


# -- helpers -------------------------------------------------------------------------------


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def norm(text: str) -> str:
    """Exact match's documented normalisation: case, surrounding space, a final period."""
    return text.strip().lower().rstrip(".")


def rewrite_answers(data: Path, name: str, answers: list) -> Path:
    """A copy of a horizon JSONL file (same images, next to it) with other answers."""
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    assert len(rows) == len(answers)
    out = data.parent / name
    out.write_text("".join(json.dumps({**r, "answer": a}) + "\n" for r, a in zip(rows, answers)))
    return out


def by_sample(rows: list[dict]) -> dict[str, str]:
    return {r["sample_id"]: r["prediction"] for r in rows}


# -- 1. outputs, cost accounting, seeds and scoring ------------------------------------------


def test_prune_eval_files_costs_seeds_and_scores(llava, dataset, tmp_path):
    data = dataset("llava", 4)
    ids = [s.id for s in read_jsonl(data)]
    tasks = {s.id: s.task for s in read_jsonl(data)}
    assert ids == ["q0", "q1", "q2", "q3"] and [tasks[i] for i in ids] == ["ocr", "vqa", "ocr", "vqa"]
    opts = dict(max_new_tokens=3, progress=False)

    # unpruned
    none_dir = tmp_path / "none"
    prune_eval(llava, data, out=none_dir, schedule="none", **opts)
    assert {p.name for p in none_dir.iterdir()} == {"eval.json", "predictions.jsonl", "summary.json", "summary.csv"}
    rows = lines(none_dir / "predictions.jsonl")
    assert [(r["sample_id"], r["seed"]) for r in rows] == [(i, 0) for i in ids]
    for r in rows:
        assert r["n_visual"] == N_VISUAL and r["visual_per_layer"] == [N_VISUAL] * N_LAYERS
        assert r["relative_flops"] == 1.0 and r["status"] == "ok"
    summary = json.loads((none_dir / "summary.json").read_text())
    assert summary["avg_visual_tokens"] == N_VISUAL and summary["n_visual"] == N_VISUAL
    assert summary["relative_flops"] == 1.0 and summary["n_samples"] == 4 and summary["n_seeds"] == 1
    assert json.loads((none_dir / "eval.json").read_text())["schedule"] == "none"
    unpruned = by_sample(rows)
    assert all(unpruned.values()), f"the tiny model answered nothing for some sample: {unpruned}"

    # keeping all 25 tokens is the unpruned model, whatever the seed
    full_dir = tmp_path / "full"
    prune_eval(llava, data, out=full_dir, schedule=f"random@0:{N_VISUAL}", seeds=2, **opts)
    full = lines(full_dir / "predictions.jsonl")
    assert sorted((r["sample_id"], r["seed"]) for r in full) == sorted((i, s) for i in ids for s in (0, 1))
    for r in full:
        assert r["prediction"] == unpruned[r["sample_id"]], r
        assert r["visual_per_layer"] == [N_VISUAL] * N_LAYERS and r["relative_flops"] == 1.0

    # score check: right by construction for q0 (verbatim) and q2 (other case + final period, second answer)
    scored = rewrite_answers(data, "scored.jsonl", [
        unpruned["q0"], unpruned["q1"] + " not this", ["nope", unpruned["q2"].upper() + "."], "something else"])
    scored_dir = tmp_path / "scored"
    result = prune_eval(llava, scored, out=scored_dir, schedule="none", **opts)
    assert [r["score"] for r in lines(scored_dir / "predictions.jsonl")] == [1.0, 0.0, 1.0, 0.0]
    summary = json.loads((scored_dir / "summary.json").read_text())
    assert summary["metric"] == "exact" and summary["accuracy"] == 0.5
    assert {t["task"]: t["accuracy"] for t in summary["tasks"]} == {"ocr": 1.0, "vqa": 0.0}
    csv = pd.read_csv(scored_dir / "summary.csv").set_index("task")
    assert csv.loc["all", "accuracy"] == 0.5 and csv.loc["ocr", "accuracy"] == 1.0 and csv.loc["vqa", "accuracy"] == 0
    assert result.summary["accuracy"] == 0.5
    # bootstrap over 4 samples scored 1,0,1,0: all-wrong and all-right resamples each have probability
    # 1/16 > 2.5%, so the 95% interval is [0, 1]; a task whose samples all agree has a zero-width one
    assert (summary["accuracy_ci_lo"], summary["accuracy_ci_hi"]) == (0.0, 1.0)
    assert {t["task"]: (t["accuracy_ci_lo"], t["accuracy_ci_hi"]) for t in summary["tasks"]} == {
        "ocr": (1.0, 1.0), "vqa": (0.0, 0.0)}

    # random@1:5 over 3 seeds, answers = the unpruned predictions
    target = rewrite_answers(data, "target.jsonl", [unpruned[i] for i in ids])
    rand_dir = tmp_path / "random"
    prune_eval(llava, target, out=rand_dir, schedule="random@1:5", seeds=3, **opts)
    rows = lines(rand_dir / "predictions.jsonl")
    assert len(rows) == 3 * 4
    assert sorted((r["sample_id"], r["seed"]) for r in rows) == sorted((i, s) for i in ids for s in (0, 1, 2))
    per_seed = []
    for seed in (0, 1, 2):
        hits = [norm(r["prediction"]) == norm(unpruned[r["sample_id"]]) for r in rows if r["seed"] == seed]
        assert len(hits) == 4
        per_seed.append(sum(hits) / 4)
    assert len(set(per_seed)) > 1, f"seeds agree ({per_seed}); the std check below would be vacuous"
    summary = json.loads((rand_dir / "summary.json").read_text())
    assert summary["n_seeds"] == 3 and summary["seeds"] == [0, 1, 2]
    assert summary["accuracy"] == pytest.approx(statistics.mean(per_seed), abs=1e-12)
    assert summary["accuracy_std"] == pytest.approx(statistics.stdev(per_seed), abs=1e-12)  # ddof = 1
    assert summary["avg_visual_tokens"] == pytest.approx((25 * 1 + 5 * 2) / 3)
    for r in rows:
        assert r["visual_per_layer"] == [25, 5, 5] and r["schedule"] == "random@1:5"
    assert 0 < summary["relative_flops"] < 1
    # the seeds really choose differently: not every seed gives the same answers
    assert len({tuple(r["prediction"] for r in rows if r["seed"] == s) for s in (0, 1, 2)}) > 1


# -- 2. resume --------------------------------------------------------------------------------


def test_resume_after_a_cut_line_and_refusals(llava, dataset, tmp_path):
    data, out = dataset("llava", 4), tmp_path / "eval"
    opts = dict(schedule="none", limit=3, max_new_tokens=2, progress=False)
    prune_eval(llava, data, out=out, **opts)
    preds = out / "predictions.jsonl"
    first = preds.read_bytes()
    full = first.splitlines(keepends=True)
    assert len(full) == 3 and all(x.endswith(b"\n") for x in full)

    # a kill mid-write: line 1 whole, line 2 cut in half, no trailing newline
    preds.write_bytes(full[0] + full[1][: len(full[1]) // 2])
    result = prune_eval(llava, data, out=out, resume=True, **opts)
    again = preds.read_bytes().splitlines(keepends=True)
    assert len(again) == 3 and all(x.endswith(b"\n") for x in again)
    assert again[0] == full[0]  # kept as it was, not regenerated
    rows, old = [json.loads(x) for x in again], [json.loads(x) for x in full]
    keys = [(r["sample_id"], r["seed"]) for r in rows]
    assert len(set(keys)) == len(keys) == 3 and set(keys) == {("q0", 0), ("q1", 0), ("q2", 0)}
    assert by_sample(rows) == by_sample(old)
    assert len(result.predictions) == 3 and result.summary["n_samples"] == 3

    error_of(lambda: prune_eval(llava, data, out=out, resume=True, **{**opts, "schedule": "random@1:5"}),
             "configuration differs", "schedule")
    error_of(lambda: prune_eval(llava, data, out=out, **opts), "--resume")
    assert preds.read_bytes().splitlines(keepends=True) == again  # refusals touch nothing


# -- 3. --switch-at horizon ---------------------------------------------------------------


def horizon_summary(path: Path, records: list[tuple[str, str, float | None]], status: dict | None = None) -> Path:
    status = status or {}
    path.write_text(json.dumps([
        {"model": m, "task": t, "metric": "dlogp", "horizon": h, "horizon_ci": None if h is None else [1, 2],
         "n_samples": 10, "uniformity_onset": None, **({"horizon_status": status[t]} if t in status else {})}
        for m, t, h in records]))
    return path


def test_switch_at_horizon_moves_the_random_stage_per_task(llava, checkpoints, dataset, tmp_path):
    data = dataset("llava", 2)  # q0: ocr, q1: vqa
    name = checkpoints["llava"].name
    assert name == "llava"
    summary = horizon_summary(tmp_path / "summary.json", [(name, "ocr", 1.4), (name, "vqa", 0.2),
                                                          ("other-model", "ocr", 2.0)])
    out = tmp_path / "eval"
    result = prune_eval(llava, data, out=out, schedule="divprune@0:20,random@1:4", switch_at="horizon",
                        summary=summary, seeds=1, max_new_tokens=1, progress=False)
    rows = {r["sample_id"]: r for r in lines(out / "predictions.jsonl")}
    assert rows["q0"]["schedule"] == "divprune@0:20,random@2:4"  # ceil(1.4) = 2
    assert rows["q1"]["schedule"] == "divprune@0:20,random@1:4"  # ceil(0.2) = 1
    assert rows["q0"]["visual_per_layer"] == [20, 20, 4] and rows["q1"]["visual_per_layer"] == [20, 4, 4]
    assert rows["q0"]["avg_visual_tokens"] == pytest.approx(44 / 3)
    assert rows["q1"]["avg_visual_tokens"] == pytest.approx(28 / 3)
    assert result.summary["schedules"] == {"ocr": "divprune@0:20,random@2:4", "vqa": "divprune@0:20,random@1:4"}
    assert result.summary["avg_visual_tokens"] == pytest.approx((44 / 3 + 28 / 3) / 2)
    assert {t["task"]: t["avg_visual_tokens"] for t in result.summary["tasks"]} == pytest.approx(
        {"ocr": 44 / 3, "vqa": 28 / 3})

    opts = dict(schedule="divprune@0:20,random@1:4", switch_at="horizon", max_new_tokens=1, progress=False)
    null = horizon_summary(tmp_path / "null.json", [(name, "ocr", 1.4), (name, "vqa", None)])
    error_of(lambda: prune_eval(llava, data, out=tmp_path / "null", summary=null, **opts), "'vqa'", "no horizon")
    assert not (tmp_path / "null").exists()  # refused before anything was written
    empty = horizon_summary(tmp_path / "empty.json", [(name, "ocr", 1.4), (name, "vqa", None)],
                            status={"vqa": "no-information"})
    error_of(lambda: prune_eval(llava, data, out=tmp_path / "empty", summary=empty, **opts), "'vqa'",
             "no information at any layer", "--switch-at N")
    assert not (tmp_path / "empty").exists()
    other = horizon_summary(tmp_path / "other.json", [("model-a", "ocr", 1.4), ("model-b", "vqa", 1.0)])
    error_of(lambda: prune_eval(llava, data, out=tmp_path / "other", summary=other, **opts),
             "'llava'", "model-a, model-b")
    error_of(lambda: prune_eval(llava, data, out=tmp_path / "nosummary", **opts), "--summary")


# -- 4. info stages --------------------------------------------------------------------------


def test_info_stage_keeps_the_most_informative_tokens(llava, dataset, tmp_path):
    data, run = dataset("llava", 2), tmp_path / "run"
    horizon.scan(llava, data, out=run, layers="1", group=1, metrics=("dlogp",), progress=False)

    # expected from the run's own tables, with pandas
    groups = pd.read_parquet(run / "groups")  # every part of the groups table
    parts = sorted((run / "scores").glob("*.parquet")) or [run / "scores.parquet"]
    scores = pd.concat([pd.read_parquet(p) for p in parts])
    mine = scores[(scores.sample_id == "q0") & (scores.layer == 1) & (scores.metric == "dlogp")]
    g = groups[groups.sample_id == "q0"]
    assert len(mine) == len(g) == N_VISUAL and all(len(p) == 1 for p in g.positions)  # group = 1: one token each
    position = {int(grp): int(p[0]) for grp, p in zip(g.group, g.positions)}
    ranked = mine.assign(position=mine.group.map(position)).sort_values("value", ascending=False)
    assert ranked.value.iloc[4] > ranked.value.iloc[5], "a tie at the cut makes the top 5 ambiguous"
    expected = sorted(ranked.position.iloc[:5].tolist())

    sample = read_jsonl(data)[0]
    inputs = encode_sample(llava, sample)[0]
    info = InfoScores(run, None).for_sample("q0", inputs["input_ids"])
    assert set(info) == {1}
    gen = generate(llava, inputs, parse_schedule("info@1:5", N_LAYERS, N_VISUAL), info=info, max_new_tokens=2)
    assert gen.kept == [expected]
    assert gen.visual_per_layer == [25, 5, 5]

    out = tmp_path / "eval"
    prune_eval(llava, data, out=out, schedule="info@1:5", info_run=run, max_new_tokens=2, progress=False)
    rows = lines(out / "predictions.jsonl")
    assert [(r["sample_id"], r["seed"]) for r in rows] == [("q0", 0), ("q1", 0)]  # no random stage: one seed
    assert all(r["visual_per_layer"] == [25, 5, 5] for r in rows)
    assert rows[0]["prediction"] == gen.text
    error_of(lambda: prune_eval(llava, data, out=tmp_path / "no-run", schedule="info@1:5", progress=False),
             "--info-run")

    # the same information from a run in the single-file layout (hand-made, or of an earlier version), where no
    # part names a sample: read with a filter on sample_id
    single = tmp_path / "single"
    single.mkdir()
    (single / "run.json").write_text((run / "run.json").read_text())
    for table in ("samples", "groups", "scores"):
        pd.read_parquet(run / table).astype({"sample_id": str}).to_parquet(single / f"{table}.parquet")
    again = InfoScores(single, None).for_sample("q0", inputs["input_ids"])
    assert set(again) == {1} and torch.equal(again[1].isnan(), info[1].isnan())
    assert torch.equal(again[1].nan_to_num(), info[1].nan_to_num())
    error_of(lambda: InfoScores(single, "kl"), "no 'kl' scores")


# -- 5. the CLI -----------------------------------------------------------------------------------


def eval_args(model, data, out, schedule, *extra):
    return ["prune-eval", "--model", str(model), "--data", str(data), "--schedule", schedule,
            "--max-new-tokens", "2", "--out", str(out), "-q", *extra]


def test_cli_prune_eval_and_bad_schedules(checkpoints, dataset, tmp_path, capsys):
    model, data = checkpoints["llava"], dataset("llava", 2)
    out = tmp_path / "ok"
    assert main(eval_args(model, data, out, "random@1:5", "--seeds", "2")) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    rows = lines(out / "predictions.jsonl")
    assert len(rows) == 2 * 2
    per_seed = [np.mean([r["score"] for r in rows if r["seed"] == s]) for s in (0, 1)]
    match = re.search(r"exact accuracy (\d\.\d{3}) ± (\d\.\d{3}) over 2 seeds "
                      r"\(95% CI over samples (\d\.\d{3})-(\d\.\d{3})\) on 2 samples", printed)
    assert match, printed
    assert float(match.group(1)) == round(summary["accuracy"], 3) == round(float(np.mean(per_seed)), 3)
    assert float(match.group(2)) == round(float(np.std(per_seed, ddof=1)), 3)
    # (25 + 5 + 5) / 3 of 25: both numbers are averages and say so
    assert "11.7 visual tokens per layer on average, of 25 per sample on average (46.7% retained" in printed
    assert "capped" not in printed and "skipped" not in printed

    for i, (schedule, needles) in enumerate([
        ("random@1:9,random@2:12", ["random@2 keeps 12", "only 9", "random@1"]),  # growing: no sample fits
        ("random@1:150%", ["'150%'", "more than 100%"]),
        ("random@1:abc%", ["'abc%'", "percentage"]),
        ("random@1:25%,random@2:50%", ["random@2 keeps 50%", "only 25%"]),
        ("foo@1:3", ["unknown method 'foo'"]),
        ("random@7:3", ["layer 7 out of range", "3 decoder layers"]),
        ("random@1", ["'random@1'", "method@layer:keep"]),
    ]):
        bad = tmp_path / f"bad{i}"
        assert main(eval_args(model, data, bad, schedule)) == 2, schedule
        err = capsys.readouterr().err
        errors = [x for x in err.splitlines() if x.startswith("horizon: error:")]
        assert len(errors) == 1, err
        assert "Traceback" not in err
        for needle in needles:
            assert needle in errors[0], (needle, errors[0])
        # nothing was done, so nothing is left that would block the corrected command
        assert not (bad / "predictions.jsonl").exists() and not (bad / "eval.json").exists(), schedule
    fixed = tmp_path / "bad0"
    assert main(eval_args(model, data, fixed, "random@1:9", "--seeds", "1")) == 0


# -- 6. POPE through the CLI ---------------------------------------------------------------------


def test_cli_pope_scores(checkpoints, tmp_path, capsys, monkeypatch):
    images, coco = tmp_path / "val2014", tmp_path / "coco"
    images.mkdir()
    coco.mkdir()
    rng = np.random.default_rng(5)
    names = [f"COCO_val2014_00000000000{i}.jpg" for i in (1, 2)]
    for name in names:
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")).save(images / name)
    # (llava question_id, category, image, object, label); labels count from 1 in each category's file
    asked = [(1, "adversarial", names[0], "dog", "yes"), (2, "adversarial", names[1], "cat", "no"),
             (10000001, "random", names[0], "car", "yes"), (10000002, "random", names[1], "tree", "yes")]
    questions = tmp_path / "llava_pope_test.jsonl"
    questions.write_text("".join(json.dumps({"question_id": q, "image": img, "text": f"Is there a {obj} in the image?"
                                             + SHORT, "category": cat}) + "\n" for q, cat, img, obj, _ in asked))
    for category in ("adversarial", "random"):
        # label files in reverse order: labels are found by id (LLaVA's random ids are 10000000 + n), not position
        (coco / f"coco_pope_{category}.json").write_text("".join(
            json.dumps({"question_id": q % 10_000_000, "image": img, "text": f"Is there a {obj} in the image?",
                        "label": label}) + "\n" for q, cat, img, obj, label in reversed(asked) if cat == category))

    # The tiny model never says yes or no; its (real) answers are replaced, in question order, by these.
    said = ["Yes, there is.", "yes", "No.", "maybe yes"]
    real = evaluate.continue_generation  # what produces each answer (from a shared prefix)
    calls = []

    def answering(*args, **kwargs):
        gen = real(*args, **kwargs)
        calls.append(gen.text)
        return dataclasses.replace(gen, text=said[len(calls) - 1])

    monkeypatch.setattr(evaluate, "continue_generation", answering)
    out = tmp_path / "eval"
    assert main(["prune-eval", "--model", str(checkpoints["llava"]), "--data", str(questions), "--format", "pope",
                 "--answers", str(coco), "--image-folder", str(images), "--schedule", "none",
                 "--max-new-tokens", "2", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "pope accuracy 0.500" in printed and "scoring: POPE as LLaVA's eval_pope" in printed
    assert "decoding: greedy under the checkpoint's generation config" in printed
    assert len(calls) == 4
    rows = lines(out / "predictions.jsonl")
    label = {f"{cat}-{q}": lab for q, cat, _, _, lab in asked}
    assert [r["sample_id"] for r in rows] == list(label) and [r["prediction"] for r in rows] == said
    assert [r["task"] for r in rows] == ["pope-adversarial"] * 2 + ["pope-random"] * 2
    assert [r["answers"] for r in rows] == [[lab] for *_, lab in asked]
    # LLaVA's eval_pope.py reads "maybe yes" as yes (no No/not/no among its words): right
    assert [r["score"] for r in rows] == [1.0, 0.0, 0.0, 1.0]

    def said_yes(text: str) -> bool:
        """eval_pope.py's reading: first sentence, commas dropped, words split at spaces, No/not/no is no."""
        words = text.split(".")[0].replace(",", "").split(" ")
        return not {"No", "not", "no"} & set(words)

    def expected(subset):
        tp = sum(said_yes(r["prediction"]) and label[r["sample_id"]] == "yes" for r in subset)
        fp = sum(said_yes(r["prediction"]) and label[r["sample_id"]] == "no" for r in subset)
        fn = sum(not said_yes(r["prediction"]) and label[r["sample_id"]] == "yes" for r in subset)
        tn = sum(not said_yes(r["prediction"]) and label[r["sample_id"]] == "no" for r in subset)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"accuracy": (tp + tn) / len(subset), "precision": precision, "recall": recall, "f1": f1,
                "yes_ratio": sum(said_yes(r["prediction"]) for r in subset) / len(subset)}

    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "pope" and summary["n_samples"] == 4 and "eval_pope" in summary["scoring"]
    tasks = {t["task"]: t for t in summary["tasks"]}
    assert set(tasks) == {"pope-adversarial", "pope-random"}
    per_split = {}
    for task, t in tasks.items():
        subset = [r for r in rows if r["task"] == task]
        assert len(subset) == 2
        per_split[task] = expected(subset)
        for key, value in per_split[task].items():
            assert t[key] == pytest.approx(value), (task, key)
    # by hand: adversarial = yes/yes tp + yes/no fp; random = no/yes fn + "maybe yes"/yes tp
    assert per_split["pope-adversarial"] == pytest.approx(
        {"accuracy": 0.5, "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "yes_ratio": 1.0})
    assert per_split["pope-random"] == pytest.approx(
        {"accuracy": 0.5, "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "yes_ratio": 0.5})
    # eval_pope.py reports splits only; the overall row is the mean over the splits
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert summary[key] == pytest.approx((per_split["pope-adversarial"][key] + per_split["pope-random"][key]) / 2)
    assert (summary["precision"], summary["recall"], summary["yes_ratio"]) == pytest.approx((0.75, 0.75, 0.75))


# -- 7. the grid -------------------------------------------------------------------------------------


def test_prune_grid_rows_tokens_figures_and_resume(llava, dataset, tmp_path):
    data, out = dataset("llava", 2), tmp_path / "grid"
    cfg = GridConfig(methods=("random", "divprune"), budgets=(10, 5), prune_layer=1, switch_layers=(2,),
                     eval=PruneConfig(seeds=2, max_new_tokens=2))
    frame = prune_grid(llava, data, out, cfg, progress=False)
    csv = pd.read_csv(out / "grid.csv")
    assert len(csv) == len(frame) == 2 * (1 + 2 * 2 + 2 * 2)

    def by_hand(schedule: str) -> float:
        """Average visual tokens over the 3 layers: each stage's keep from its layer on."""
        present = [N_VISUAL] * N_LAYERS
        if schedule != "none":
            for stage in schedule.split(","):
                layer, keep = map(int, stage.split("@")[1].split(":"))
                present[layer:] = [keep] * (N_LAYERS - layer)
        return sum(present) / N_LAYERS

    expected = {"none": ("none", 25.0)}
    for method in ("random", "divprune"):
        for k, deep in ((10, 2), (5, 1)):  # deep = budget // 4, at least 1
            expected[f"{method}@1:{k}"] = ("single", (25 + 2 * k) / 3)
            expected[f"{method}@1:{k},random@2:{deep}"] = ("hybrid", (25 + k + deep) / 3)
    for task in ("ocr", "vqa"):
        sub = csv[csv.task == task]
        assert sorted(sub.schedule) == sorted(expected), task
        assert sub.kind.value_counts().to_dict() == {"none": 1, "single": 4, "hybrid": 4}
        for row in sub.itertuples():
            kind, tokens = expected[row.schedule]
            assert row.kind == kind and row.avg_tokens == pytest.approx(tokens) == by_hand(row.schedule), row
            assert row.n_seeds == 2 and row.n_samples == 1
        assert (sub[sub.kind == "hybrid"].switch_layer == 2).all()
        for ext in ("png", "pdf"):
            assert (out / f"prune_tradeoff_llava_{task}.{ext}").is_file()
    assert set(csv[csv.kind == "hybrid"].schedule) >= {"divprune@1:10,random@2:2", "random@1:5,random@2:1"}

    before = {p: p.read_bytes() for p in out.rglob("predictions.jsonl")}
    assert len(before) == 9
    again = prune_grid(llava, data, out, cfg, progress=False)
    pd.testing.assert_frame_equal(again, frame)
    assert {p: p.read_bytes() for p in out.rglob("predictions.jsonl")} == before


# -- resume safety ----------------------------------------------------------------------------------------


def test_cli_resume_with_other_data_is_refused(checkpoints, dataset, tmp_path, capsys):
    model, out = checkpoints["llava"], tmp_path / "eval"
    first, other = dataset("llava", 2), dataset("llava", 3, seed=7, answers=["other"])
    assert main(eval_args(model, first, out, "none")) == 0
    capsys.readouterr()
    # same sample ids q0, q1 but other images and answers: their stored predictions must not be reused
    assert main(eval_args(model, other, out, "none", "--resume")) == 2
    assert "configuration differs" in capsys.readouterr().err


def test_cli_prune_grid_and_its_option_errors(checkpoints, dataset, tmp_path, capsys):
    model, data, out = checkpoints["llava"], dataset("llava", 2), tmp_path / "grid"
    base = ["prune-grid", "--model", str(model), "--data", str(data), "--max-new-tokens", "2", "--seeds", "1",
            "--methods", "random,fastv", "--budgets", "8", "--prune-layer", "1", "-q"]
    assert main([*base, "--switch-layers", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    grid = pd.read_csv(out / "grid.csv")
    assert sorted(grid.schedule.unique()) == ["fastv@1:8", "fastv@1:8,random@2:2", "none", "random@1:8",
                                              "random@1:8,random@2:2"]
    assert "fastv+random" in printed and "grid.csv" in printed
    for extra, needle in ([["--switch-layers", "horizon"], "needs --summary"],
                          [["--switch-layers", "deep"], "neither a layer number nor 'horizon'"],
                          [["--switch-layers", "1"], "must lie after --prune-layer 1"],
                          [["--switch-layers", "2", "--budgets", "8,x"], "--budgets '8,x'"],
                          [["--switch-layers", "2", "--methods", "vtw"], "cannot be a grid method"]):
        assert main([*base, *extra, "--out", str(tmp_path / "bad")]) == 2, extra
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("horizon: error:")]
        assert len(err) == 1 and needle in err[0], (extra, err)
    assert not (tmp_path / "bad").exists()
