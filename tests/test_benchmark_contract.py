"""What every registered benchmark must do, parametrised over the registry.

A new benchmark is covered by adding one line to EXAMPLES: a function that
writes a tiny set of its files (in their real on-disk format) and returns
(--data, --answers, --image-folder).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from horizon.benchmarks import BENCHMARKS, METRICS, EvalSet, read_eval
from horizon.cli import build_parser
from horizon.data import Sample
from horizon.prune.evaluate import prune_eval

SHORT = "\nAnswer the question using a single word or phrase."
SIZE = (40, 40)  # the tiny llava's image size (conftest)


def image(path: Path, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((*SIZE, 3)) * 255).astype("uint8")).save(path)
    return path.name


def lines(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def jsonl_example(root: Path):
    image(root / "img" / "a.png", 1), image(root / "img" / "b.png", 2)
    return lines(root / "data.jsonl", [
        {"id": "q1", "image": "img/a.png", "question": "What colour?", "answer": "red", "task": "colour"},
        {"id": "q2", "image": "img/b.png", "question": "How many?", "answer": ["2", "two"], "task": "count"}]), None, None


def textvqa_example(root: Path):
    image(root / "train_images" / "003a8ae2ef43b901.jpg")
    questions = lines(root / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg", "category": "default",
         "text": "What is the brand of this camera?\nReference OCR token: DAKOTA" + SHORT}])
    annotations = root / "TextVQA_0.5.1_val.json"
    annotations.write_text(json.dumps({"dataset_name": "textvqa", "data": [
        {"question_id": 34602, "image_id": "003a8ae2ef43b901", "question": "what is the brand of this camera?",
         "answers": ["dakota"] * 9 + ["nous les gosses"]}]}))
    return questions, annotations, root / "train_images"


def vqav2_example(root: Path):
    image(root / "val2014" / "COCO_val2014_000000262148.jpg")
    questions = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    questions.write_text(json.dumps({"data_subtype": "val2014", "questions": [
        {"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000},
        {"image_id": 262148, "question": "Is he sitting?", "question_id": 262148001}]}))
    annotations = root / "v2_mscoco_val2014_annotations.json"
    annotations.write_text(json.dumps({"annotations": [
        {"question_id": 262148000, "image_id": 262148, "answer_type": "other", "question_type": "where is",
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i}
                     for i, a in enumerate(["down"] * 8 + ["table", "floor"], 1)]},
        {"question_id": 262148001, "image_id": 262148, "answer_type": "yes/no", "question_type": "is he",
         "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)]}]}))
    return questions, annotations, root / "val2014"


def mme_example(root: Path):
    release = root / "MME_Benchmark_release_version"
    image(release / "existence" / "000000006040.jpg")
    (release / "existence" / "000000006040.txt").write_text(
        "Is there a train in this image? Please answer yes or no.\tYes\n"
        "Is there a bed in this image? Please answer yes or no.\tNo\n")
    questions = lines(root / "llava_mme.jsonl", [
        {"question_id": "existence/000000006040.jpg", "image": "existence/000000006040.jpg",
         "text": q + SHORT, "category": "existence"}
        for q in ("Is there a train in this image?", "Is there a bed in this image?")])
    return questions, release, None


def pope_example(root: Path):
    image(root / "val2014" / "COCO_val2014_000000310196.jpg")
    asked = [("snowboard", "yes"), ("backpack", "no")]
    lines(root / "coco" / "coco_pope_random.json", [
        {"question_id": i, "image": "COCO_val2014_000000310196.jpg", "text": f"Is there a {o} in the image?",
         "label": lab} for i, (o, lab) in enumerate(asked, 1)])
    questions = lines(root / "llava_pope_test.jsonl", [
        {"question_id": 10000000 + i, "image": "COCO_val2014_000000310196.jpg",
         "text": f"Is there a {o} in the image?" + SHORT, "category": "random"} for i, (o, _) in enumerate(asked, 1)])
    return questions, root / "coco", root / "val2014"


EXAMPLES = {
    "jsonl": jsonl_example,
    "textvqa": textvqa_example,
    "vqav2": vqav2_example,
    "mme": mme_example,
    "pope": pope_example,
}

NAMES = BENCHMARKS.names()


def read(name: str, root: Path, format: str) -> EvalSet:
    data, answers, images = EXAMPLES[name](root)
    return read_eval(data, answers=answers, image_folder=images, format=format)


def frame_of(evalset: EvalSet, predictions: list[str]) -> pd.DataFrame:
    scoring = METRICS.get(evalset.metric)
    rows = []
    for sample, prediction in zip(evalset.samples, predictions):
        rows.append({"sample_id": sample.id, "task": sample.task, "answers": list(sample.answers),
                     "prediction": prediction, "score": scoring.score(prediction, sample), "pair": None,
                     **scoring.row_fields(sample)})
    return pd.DataFrame(rows)


def test_every_registered_benchmark_has_an_example():
    assert set(EXAMPLES) == set(NAMES), "add the new benchmark's example files to EXAMPLES"


@pytest.mark.parametrize("name", NAMES)
def test_reads_its_files_and_auto_detects_them(name, tmp_path):
    benchmark = BENCHMARKS.get(name)
    got = read(name, tmp_path / "explicit", name)
    assert isinstance(got, EvalSet) and got.format == name and len(got) > 0
    assert got.metric in METRICS and got.source and str(tmp_path) in got.source
    assert len({s.id for s in got.samples}) == len(got)
    for s in got.samples:
        assert isinstance(s, Sample) and s.answers and all(isinstance(a, str) for a in s.answers)
        assert s.image.is_file(), s.image
        assert isinstance(s.question, str) and s.question
    assert read(name, tmp_path / "auto", "auto").format == name
    assert METRICS.get(benchmark.scoring.name) is benchmark.scoring


@pytest.mark.parametrize("name", NAMES)
def test_scores_lie_in_the_unit_interval_and_aggregates_have_their_keys(name, tmp_path):
    benchmark = BENCHMARKS.get(name)
    evalset = read(name, tmp_path, name)
    scoring = METRICS.get(evalset.metric)
    attempts = ["", "yes", "no", "No.", "Yes, it is.", "xyzzy", "1. Yes", "two", "$5", "It's 3.5."]
    for sample in evalset.samples:
        for prediction in attempts + [sample.answers[0], sample.answers[0].upper()]:
            value = scoring.score(prediction, sample)
            assert isinstance(value, float) and 0.0 <= value <= 1.0, (prediction, value)
        assert scoring.score(sample.answers[0], sample) > 0.0  # the reference answer itself scores
    for predictions in ([s.answers[0] for s in evalset.samples], ["xyzzy"] * len(evalset)):
        frame = frame_of(evalset, predictions)
        numbers = scoring.aggregate(frame)
        assert set(scoring.keys) <= set(numbers) and scoring.keys[0] == "accuracy"
        assert all(isinstance(v, float) and not math.isnan(v) for k, v in numbers.items() if k in scoring.keys)
        assert 0.0 <= numbers["accuracy"] <= 1.0
    right = scoring.aggregate(frame_of(evalset, [s.answers[0] for s in evalset.samples]))["accuracy"]
    wrong = scoring.aggregate(frame_of(evalset, ["xyzzy"] * len(evalset)))["accuracy"]
    assert right > wrong
    if evalset.metric == benchmark.scoring.name:
        frame = frame_of(evalset, [s.answers[0] for s in evalset.samples])
        assert benchmark.aggregate(frame) == scoring.aggregate(frame)
        assert benchmark.score("yes", evalset.samples[0]) == scoring.score("yes", evalset.samples[0])


def _choices(command: str) -> dict[str, list[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: list(a.choices) for a in sub.choices[command]._actions if a.choices is not None}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("command", ["prune-eval", "prune-grid"])
def test_appears_in_the_cli_choices(name, command):
    choices = _choices(command)
    assert name in choices["format"] and choices["format"][0] == "auto"
    assert BENCHMARKS.get(name).scoring.name in choices["metric"] and choices["metric"][0] == "auto"
    assert set(choices["metric"]) == {"auto", *METRICS.names()}


@pytest.mark.parametrize("name", NAMES)
def test_says_what_its_numbers_are(name):
    benchmark = BENCHMARKS.get(name)
    official = benchmark.scoring.official
    assert isinstance(official, str) and official and "\n" not in official
    assert isinstance(benchmark.prompt, str) and (benchmark.prompt == "" or benchmark.prompt.startswith("\n"))
    assert benchmark.answers_hint is None or "--answers" in benchmark.answers_hint
    assert type(benchmark).__module__.startswith("horizon.benchmarks.")
    assert len((__import__(type(benchmark).__module__, fromlist=["_"]).__doc__ or "").splitlines()) > 5


@pytest.mark.parametrize("name", NAMES)
def test_prune_eval_scores_it_end_to_end(name, models, tmp_path):
    evalset = read(name, tmp_path / "files", name)
    result = prune_eval(models["llava"], evalset, out=tmp_path / "eval", schedule="none", max_new_tokens=2,
                        progress=False)
    scoring = METRICS.get(evalset.metric)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["metric"] == evalset.metric and summary["scoring"] == scoring.official
    assert summary["n_samples"] == len(evalset) and set(scoring.keys) <= set(summary)
    rows = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    sample = {s.id: s for s in evalset.samples}
    for r in rows:  # the stored score is the scoring's score of the stored answer
        assert r["score"] == scoring.score(r["prediction"], sample[r["sample_id"]])
    assert summary["accuracy"] == pytest.approx(scoring.aggregate(pd.DataFrame(rows))["accuracy"])
    assert len(result.predictions) == len(evalset)
