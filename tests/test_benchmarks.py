"""Benchmark scoring against the official evaluators' behaviour, quirks included.

Every expected value is worked out by hand in the comment next to it from
what the official code does (LLaVA's eval_textvqa with the EvalAI answer
processor, the VQA evaluation's vqaEval.py, MME's eval_tool calculation.py,
LLaVA's eval_pope.py); none is computed by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from horizon.benchmarks import BENCHMARKS, METRICS, read_eval
from horizon.benchmarks.answers import CONTRACTIONS, leave_one_out
from horizon.benchmarks.mme import mme_answer
from horizon.benchmarks.pope import pope_answer
from horizon.benchmarks.textvqa import process_answer
from horizon.benchmarks.vqav2 import normalize
from horizon.data import Sample
from horizon.errors import HorizonError
from horizon.prune.evaluate import summarize
from horizon.registry import Registry
from helpers import error_of

SHORT = "\nAnswer the question using a single word or phrase."


def textvqa(prediction: str, answers: list[str]) -> float:
    return METRICS.get("textvqa").score(prediction, Sample("q", Path("x.jpg"), "q", answers, "textvqa"))


def vqa(prediction: str, answers: list[str], records=None) -> float:
    extra = {"answer_records": records} if records is not None else {}
    return METRICS.get("vqa").score(prediction, Sample("q", Path("x.jpg"), "q", answers, "vqav2", extra))


# ---------------------------------------------------------------------------
# the registry


def test_registry_registers_gets_and_names_choices():
    reg: Registry[int] = Registry("widget", "--widget")
    assert reg.register("one", 1) == 1

    @reg.register("two")
    def two():
        return 2

    assert reg.get("one") == 1 and reg.get("two") is two and reg.names() == ("one", "two")
    assert "one" in reg and "three" not in reg and len(reg) == 2 and list(reg) == [1, two]
    error_of(lambda: reg.get("three"), "--widget 'three'", "unknown widget", "one, two")
    reg.register("one", 1)  # the same object again is fine (a module imported twice)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("one", 11)
    with pytest.raises(ValueError):
        reg.register(" padded ", 3)
    error_of(lambda: Registry("thing").get("x"), "thing 'x'", "none registered")


def test_the_registries_hold_every_benchmark_and_scoring():
    assert BENCHMARKS.names() == ("jsonl", "textvqa", "vqav2", "mme", "pope")
    assert METRICS.names() == ("exact", "textvqa", "vqa", "mme", "pope")
    error_of(lambda: METRICS.get("bleu"), "--metric 'bleu'", "exact, textvqa, vqa, mme, pope")


# ---------------------------------------------------------------------------
# TextVQA: LLaVA's eval_textvqa.py (EvalAI answer processor)


def test_textvqa_processor_steps():
    assert process_answer("5") == "5" and process_answer("$5") == "$5"  # $ is not one of its punctuation marks
    assert process_answer("couldve") == "could've" and process_answer("oclock") == "o'clock"
    assert process_answer("hed") == "he'd" and process_answer("dont") == "don't"
    assert process_answer("it's") == "it 's" and process_answer("its") == "its"  # 's split off, never re-joined
    assert process_answer("hes") == "he's" and process_answer("he's") == "he 's"  # so these two never match
    assert process_answer("Im") == "im"  # the table's capitalised keys (Im, Ive) never see a lower-cased word
    assert process_answer("somebody'd") == "somebodyd"  # the one entry that runs backwards
    assert process_answer("The Two dogs!") == "2 dogs" and process_answer("none") == "0"
    assert process_answer("3.5") == "3.5" and process_answer("3. 5") == "3 5" and process_answer("5.") == "5"
    assert process_answer("e.g.") == "eg"
    # commas go first, with no space: "red,blue" is one word (VQAv2's rule makes it two)
    assert process_answer("red,blue") == "redblue" and normalize("red,blue") == "red blue"
    # ... so the comma-between-digits clause never fires here, where VQAv2 then deletes every mark
    assert process_answer("1,000/yr") == "1000 yr" and normalize("1,000/yr") == "1000yr"
    assert process_answer("What?") == "what" and process_answer("red - blue") == "red blue"
    assert process_answer("red-blue") == "red blue" and process_answer("(red)") == "red"
    assert process_answer("line\none\tTwo") == "line 1 2"
    # at most 32 periods are deleted (a flag sits where the replacement count goes)
    assert process_answer("a" + "." * 40) == "a" + "." * 8


def test_textvqa_accuracy_quirks():
    assert textvqa("5", ["$5"] * 10) == 0.0
    assert textvqa("$5", ["$5"] * 10) == 1.0
    # couldve -> could've matches 4 answers: every 9-answer subset keeps >= 3 matches
    others = ["could have"] * 4 + ["could've"] * 4 + ["might have", "couldnt"]
    assert textvqa("couldve", others) == 1.0
    assert textvqa("could have", others) == 1.0 and textvqa("could of", others) == 0.0
    assert textvqa("its", ["it's"] * 10) == 0.0 and textvqa("It's", ["it's"] * 10) == 1.0
    assert textvqa("hes", ["he's"] * 10) == 0.0
    assert textvqa("3.5", ["3 5"] * 10) == 0.0 and textvqa("3. 5", ["3 5"] * 10) == 1.0
    # exactly 3 matches: the 3 subsets leaving a match out keep 2 (2/3), the 7 others keep 3 (1)
    assert textvqa("dakota", ["dakota"] * 3 + ["kodak"] * 7) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    # duplicates: each subset leaves out exactly one answer, not every copy of it
    assert textvqa("kodak", ["dakota"] * 3 + ["kodak"] * 7) == 1.0
    assert textvqa("Dakota.", ["dakota"] * 10) == 1.0  # case and a final period: normalised away


def test_contraction_table_is_complete():
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["yall'd've"] == "y'all'd've" and CONTRACTIONS["'ow'sat"] == "'ow's'at"
    assert CONTRACTIONS["twas"] == "'twas" and CONTRACTIONS["maam"] == "ma'am" and CONTRACTIONS["Im"] == "I'm"


# ---------------------------------------------------------------------------
# VQAv2: the official VQA evaluation (vqaEval.py)


def test_vqa_identical_answers_are_compared_raw():
    # all ten agree: nothing is normalised, the comparison is exact and case-sensitive
    assert vqa("two", ["2"] * 10) == 0.0
    assert vqa("Yes", ["yes"] * 10) == 0.0 and vqa("yes", ["yes"] * 10) == 1.0
    assert vqa("yes.", ["yes"] * 10) == 0.0
    # ... while one differing answer switches normalisation on for all of them
    assert vqa("two", ["2"] * 9 + ["two"]) == 1.0 and vqa("Yes", ["yes"] * 9 + ["yes!"]) == 1.0
    # newlines, tabs and surrounding space go first, before the "all identical" test
    assert vqa(" yes\n", ["yes"] * 9 + ["yes\t"]) == 1.0 and vqa("Yes", ["yes"] * 9 + [" yes"]) == 0.0
    assert vqa("5", ["$5"] * 10) == 0.0 and vqa("5", ["$5"] * 9 + ["$5."]) == 0.0


def test_vqa_normalisation_rules():
    assert normalize("red/blue") == "red blue" and normalize("red / blue") == "red blue"
    assert normalize("red/blue 1,2") == "redblue 12"  # a comma between digits deletes every mark
    assert normalize("it's") == "it's" and normalize("its") == "its"  # no 's split here
    assert normalize("Couldve") == "could've" and normalize("im") == "im"
    assert normalize("The answer is 3.5.") == "answer is 3.5"


def test_vqa_leave_one_out_compares_answer_records():
    answers = ["a"] * 3 + ["b"] * 7
    # official files: unique answer ids, so each subset leaves out exactly one answer
    unique = [{"answer_confidence": "yes", "answer_id": i} for i in range(1, 11)]
    assert vqa("a", answers, unique) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    # identical records (no ids) are left out together, as the official list comparison does:
    # leaving out an "a" removes all three -> 0; leaving out a "b" keeps 3 -> 1
    same = [{"answer_confidence": "yes"}] * 10
    assert vqa("a", answers, same) == pytest.approx(7 / 10)
    assert leave_one_out("a", answers) == pytest.approx(0.9)


# ---------------------------------------------------------------------------
# MME: eval_tool calculation.py


@pytest.mark.parametrize("answer, read", [
    ("yes", "yes"), ("no", "no"), ("Yes", "yes"), ("NO", "no"), ("Yes, it is.", "yes"),
    ("Nope", "no"),            # "no" within the first 4 characters
    ("1. Yes", "other"),       # "yes" starts after character 4
    ("Eyes closed", "yes"),    # "yes" inside a word, still in the first 4
    ("Not sure", "no"), (" yes", "yes"),
    ("  yes", "other"),        # not trimmed: "  ye" holds neither
    ("noyes", "no"), ("I think yes", "other"), ("", "other"), ("sure", "other"),
])
def test_mme_reads_answers_like_the_eval_tool(answer, read):
    assert mme_answer(answer) == read


# ---------------------------------------------------------------------------
# POPE: LLaVA's eval_pope.py


@pytest.mark.parametrize("answer, read", [
    ("Yes", "yes"), ("No", "no"), ("no", "no"), ("No.", "no"),
    ("There is a dog.", "yes"), ("There is no dog.", "no"),
    ("NO", "yes"),                    # case-sensitive
    ("Nope", "yes"), ("Not at all", "yes"),  # only No, not, no count, as whole words
    ("It is not there", "no"),
    ("1. No", "yes"),                 # the first sentence is "1"
    ("Yes. There is no cat.", "yes"),
    ("Yes, no", "no"),                # commas dropped, then split at spaces
    ("no,", "no"), ("cannot", "yes"), ("maybe yes", "yes"),
    ("no\n", "yes"),                  # split at single spaces only
])
def test_pope_reads_answers_like_eval_pope(answer, read):
    assert pope_answer(answer) == read


def test_pope_label_is_negative_only_when_exactly_no():
    pope = METRICS.get("pope")
    assert pope.score("No", Sample("q", Path("x"), "q", ["no"], "pope-random")) == 1.0
    assert pope.score("No", Sample("q", Path("x"), "q", ["No"], "pope-random")) == 0.0  # "No" is not "no"


# ---------------------------------------------------------------------------
# aggregates over hand-made result files, through prune-eval's summarize


def result_file(path: Path, rows: list[dict], metric: str, seeds=(0,)) -> pd.DataFrame:
    """predictions.jsonl as prune-eval writes it (scores from the metric), read back."""
    scoring = METRICS.get(metric)
    lines = []
    for seed in seeds:
        for i, r in enumerate(rows):
            sample = Sample(r.get("id", str(i)), Path("x.jpg"), "q", r["answers"], r["task"], r.get("extra", {}))
            lines.append({"sample_id": sample.id, "task": sample.task, "seed": seed, "answers": r["answers"],
                          "prediction": r["prediction"], "score": scoring.score(r["prediction"], sample),
                          "pair": None, **scoring.row_fields(sample), "n_visual": 576, "avg_visual_tokens": 576.0,
                          "prefill_flops": 1e12, "relative_flops": 1.0, "seconds": 0.5, "status": "ok"})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return pd.read_json(path, lines=True)


def by_task(frame: pd.DataFrame, metric: str) -> dict[str, dict]:
    return {r["task"]: r for r in summarize(frame, metric).to_dict("records")}


def test_mme_subtask_scores_and_totals_by_hand(tmp_path):
    def image(task, name, *pairs):
        return [{"task": task, "id": f"{task}/{name}#{i}", "prediction": p, "answers": [a],
                 "extra": {"pair": name}} for i, (p, a) in enumerate(pairs, 1)]

    rows = (image("existence", "1.jpg", ("Yes", "Yes"), ("No", "No"))             # both right
            + image("existence", "2.jpg", ("Yes", "Yes"), ("Yes", "No"))          # one right
            + image("count", "3.jpg", ("no", "No"), ("yes", "Yes"))               # both right
            + image("OCR", "4.jpg", ("1. Yes", "Yes"), ("No", "No"))              # "other" is wrong
            + image("code_reasoning", "5.png", ("Yes", "Yes"), ("Nope", "No"))    # both right
            + image("code_reasoning", "6.png", ("Sure", "Yes"), ("Yes", "No")))   # none right
    got = by_task(result_file(tmp_path / "mme.jsonl", rows, "mme"), "mme")
    # existence: acc 3/4, acc+ 1/2 -> 125; count: 1, 1 -> 200; OCR: 1/2, 0 -> 50; code: 2/4, 1/2 -> 100
    assert got["existence"]["mme_score"] == pytest.approx(125)
    assert (got["existence"]["accuracy"], got["existence"]["acc_plus"]) == pytest.approx((0.75, 0.5))
    assert got["count"]["mme_score"] == pytest.approx(200) and got["OCR"]["mme_score"] == pytest.approx(50)
    assert got["code_reasoning"]["mme_score"] == pytest.approx(100)
    assert got["code_reasoning"]["mme_cognition"] == pytest.approx(100)
    assert got["code_reasoning"]["mme_perception"] == 0.0
    every = got["all"]
    assert every["mme_perception"] == pytest.approx(125 + 200 + 50)
    assert every["mme_cognition"] == pytest.approx(100)
    assert every["mme_score"] == pytest.approx(475) and every["mme_subtasks"] == 4
    # pooled over all 12 questions / 6 images: 8 right, 3 images fully right; 2 "other" answers
    assert every["accuracy"] == pytest.approx(8 / 12) and every["acc_plus"] == pytest.approx(3 / 6)
    assert every["other_ratio"] == pytest.approx(2 / 12)


def test_pope_per_split_and_overall_by_hand(tmp_path):
    def split(category, *pairs):
        return [{"task": f"pope-{category}", "id": f"{category}-{i}", "prediction": p, "answers": [a]}
                for i, (p, a) in enumerate(pairs)]

    rows = (split("adversarial", ("Yes", "yes"), ("Yes, there is.", "no"), ("No", "no"), ("NO", "no"))
            + split("random", ("No.", "yes"), ("There is a dog.", "yes"), ("Not at all", "no"), ("no", "no"))
            + split("popular", ("yes", "yes"), ("1. No", "yes")))
    got = by_task(result_file(tmp_path / "pope.jsonl", rows, "pope"), "pope")
    # adversarial: yes/yes TP, yes/no FP, no/no TN, "NO" = yes/no FP -> acc 2/4, P 1/3, R 1, F1 1/2, yes 3/4
    adv = {"accuracy": 0.5, "precision": 1 / 3, "recall": 1.0, "f1": 0.5, "yes_ratio": 0.75}
    # random: no/yes FN, yes/yes TP, "Not at all" = yes/no FP, no/no TN -> acc 1/2, P 1/2, R 1/2, F1 1/2, yes 1/2
    rnd = {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5}
    # popular: yes/yes TP, "1. No" = yes/yes TP -> all 1
    pop = {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 1.0}
    for task, want in (("pope-adversarial", adv), ("pope-random", rnd), ("pope-popular", pop)):
        assert {k: got[task][k] for k in want} == pytest.approx(want), task
    # eval_pope.py stops at the splits; the overall row is their unweighted mean
    assert {k: got["all"][k] for k in adv} == pytest.approx({k: (adv[k] + rnd[k] + pop[k]) / 3 for k in adv})
    assert got["all"]["accuracy"] == pytest.approx(2 / 3)  # (0.5 + 0.5 + 1) / 3, not the pooled 6/10


def test_textvqa_mean_by_hand(tmp_path):
    rows = [{"task": "textvqa", "prediction": "Dakota", "answers": ["dakota"] * 10},                  # 1
            {"task": "textvqa", "prediction": "kodak", "answers": ["kodak"] * 3 + ["dakota"] * 7},    # 0.9
            {"task": "textvqa", "prediction": "$5", "answers": ["5"] * 10}]                          # 0
    got = by_task(result_file(tmp_path / "textvqa.jsonl", rows, "textvqa", seeds=(0, 1)), "textvqa")
    assert got["all"]["accuracy"] == pytest.approx((1 + 0.9 + 0) / 3)
    assert got["all"]["accuracy_std"] == 0.0 and got["all"]["n_seeds"] == 2 and got["all"]["n_samples"] == 3


def test_vqav2_mean_and_answer_types_by_hand(tmp_path):
    rows = [{"task": "vqav2", "prediction": "yes", "answers": ["yes"] * 10, "extra": {"answer_type": "yes/no"}},
            {"task": "vqav2", "prediction": "No", "answers": ["no"] * 10, "extra": {"answer_type": "yes/no"}},
            {"task": "vqav2", "prediction": "two", "answers": ["2"] * 10, "extra": {"answer_type": "number"}},
            {"task": "vqav2", "prediction": "red", "answers": ["red"] * 3 + ["maroon"] * 7,
             "extra": {"answer_type": "other"}}]
    got = by_task(result_file(tmp_path / "vqav2.jsonl", rows, "vqa"), "vqa")["all"]
    # 1 + 0 (raw "No" vs "no") + 0 (raw "two" vs "2") + 0.9
    assert got["accuracy"] == pytest.approx(1.9 / 4)
    assert got["accuracy_yes_no"] == pytest.approx(0.5) and got["accuracy_number"] == 0.0
    assert got["accuracy_other"] == pytest.approx(0.9)


def test_exact_match_is_horizons_convention(tmp_path):
    rows = [{"task": "ocr", "prediction": " Red.", "answers": ["red", "crimson"]},
            {"task": "ocr", "prediction": "a red bus", "answers": ["red"]}]
    got = by_task(result_file(tmp_path / "exact.jsonl", rows, "exact"), "exact")
    assert got["all"]["accuracy"] == 0.5
    assert "horizon's own convention" in METRICS.get("exact").official


# ---------------------------------------------------------------------------
# VQAv2 files


def vqa_files(root: Path) -> tuple[Path, Path]:
    questions = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    questions.write_text(json.dumps({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
                                     "data_subtype": "val2014", "questions": [
        {"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000},
        {"image_id": 262148, "question": "How many people?", "question_id": 262148001}]}))
    annotations = root / "v2_mscoco_val2014_annotations.json"
    def answers(*texts):
        return [{"answer": t, "answer_confidence": "yes", "answer_id": i} for i, t in enumerate(texts, 1)]
    annotations.write_text(json.dumps({"info": {}, "data_subtype": "val2014", "annotations": [
        {"question_type": "none of the above", "multiple_choice_answer": "down", "image_id": 262148,
         "answer_type": "other", "question_id": 262148000, "answers": answers(*(["down"] * 7 + ["table"] * 3))},
        {"question_type": "how many", "multiple_choice_answer": "2", "image_id": 262148, "answer_type": "number",
         "question_id": 262148001, "answers": answers(*(["2"] * 10))},
        {"question_type": "what", "multiple_choice_answer": "red", "image_id": 1, "answer_type": "other",
         "question_id": 1000, "answers": answers(*(["red"] * 10))}]}))
    return questions, annotations


def test_vqav2_reads_official_question_and_annotation_files(tmp_path):
    questions, annotations = vqa_files(tmp_path)
    got = read_eval(questions, answers=annotations, image_folder=tmp_path / "val2014")
    assert (got.format, got.metric) == ("vqav2", "vqa")
    assert [s.id for s in got.samples] == ["262148000", "262148001"]
    where, many = got.samples
    assert where.question == "Where is he looking?" + SHORT  # LLaVA's instruction appended
    assert where.image == tmp_path / "val2014" / "COCO_val2014_000000262148.jpg"
    assert where.answers == ["down"] * 7 + ["table"] * 3 and where.task == "vqav2"
    assert where.extra["answer_type"] == "other" and many.extra["question_type"] == "how many"
    assert where.extra["answer_records"][0] == {"answer_confidence": "yes", "answer_id": 1}
    assert METRICS.get("vqa").score("Down", where) == 1.0  # answers differ: normalised, 7 matches
    assert METRICS.get("vqa").score("two", many) == 0.0    # ten "2": raw compare


def test_vqav2_reads_llava_question_files(tmp_path):
    _, annotations = vqa_files(tmp_path)
    llava = tmp_path / "llava_vqav2_mscoco_val2014.jsonl"
    llava.write_text(json.dumps({"question_id": 262148001, "image": "COCO_val2014_000000262148.jpg",
                                 "text": "How many people?" + SHORT, "category": "default"}) + "\n")
    got = read_eval(llava, answers=annotations)  # auto: the annotations say VQAv2, not TextVQA
    assert (got.format, got.metric) == ("vqav2", "vqa") and [s.id for s in got.samples] == ["262148001"]
    assert got.samples[0].question == "How many people?" + SHORT
    assert got.samples[0].image == tmp_path / "COCO_val2014_000000262148.jpg"


def test_vqav2_errors(tmp_path):
    questions, annotations = vqa_files(tmp_path)
    error_of(lambda: read_eval(questions), str(questions), "--answers v2_mscoco_val2014_annotations.json")
    test_dev = tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl"
    test_dev.write_text(json.dumps({"question_id": 262144000, "image": "COCO_test2015_000000262144.jpg",
                                    "text": "Is the ball flying?" + SHORT, "category": "default"}) + "\n")
    error_of(lambda: read_eval(test_dev, answers=annotations, format="vqav2"), f"{test_dev}:1:", "262144000",
             "not public")
    textvqa = tmp_path / "TextVQA_0.5.1_val.json"
    textvqa.write_text(json.dumps({"dataset_name": "textvqa", "data": []}))
    error_of(lambda: read_eval(questions, answers=textvqa, format="vqav2"), str(textvqa), "annotations")
    no_subtype = tmp_path / "q.json"
    no_subtype.write_text(json.dumps({"questions": [{"image_id": 1, "question": "Q?", "question_id": 1000}]}))
    error_of(lambda: read_eval(no_subtype, answers=annotations), str(no_subtype), "data_subtype")
    twice = tmp_path / "twice.jsonl"
    line = json.dumps({"question_id": 1000, "image": "a.jpg", "text": "Q?"}) + "\n"
    twice.write_text(line * 2)
    error_of(lambda: read_eval(twice, answers=annotations, format="vqav2"), f"{twice}:2:", "asked twice")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": [{"question_id": 1000, "answers": ["red"]}]}))
    error_of(lambda: read_eval(twice, answers=bad, format="vqav2"), str(bad), "answers[0]", "'answer'")


def test_llava_file_with_unknown_answers_asks_for_format(tmp_path):
    llava = tmp_path / "q.jsonl"
    llava.write_text(json.dumps({"question_id": 1, "image": "a.jpg", "text": "Q?", "category": "default"}) + "\n")
    (tmp_path / "folder").mkdir()
    message = error_of(lambda: read_eval(llava, answers=tmp_path / "folder"), str(llava), "--format")
    assert "vqav2" in message and "textvqa" in message
    with pytest.raises(HorizonError):
        read_eval(llava)
