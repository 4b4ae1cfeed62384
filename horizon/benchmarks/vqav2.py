"""VQAv2, scored as the official VQA evaluation does it.

Files
-----
``--data``: either the official question file
``v2_OpenEnded_mscoco_val2014_questions.json`` (``{"data_subtype": "val2014",
"questions": [{"image_id": 262148, "question": "Where is he looking?",
"question_id": 262148000}, ...]}``; the prompt is the question followed by
LLaVA's instruction ``\\nAnswer the question using a single word or phrase.``,
as in LLaVA's VQAv2 question files, and the image is
``COCO_<data_subtype>_<image_id, 12 digits>.jpg``), or a LLaVA question file
(``{"question_id": 262148000, "image": "COCO_val2014_000000262148.jpg",
"text": "...", "category": "default"}`` lines, text kept verbatim) whose
``question_id`` values are VQAv2 question ids.

``--answers v2_mscoco_val2014_annotations.json``: the official annotations,
``{"annotations": [{"question_id": 262148000, "answer_type": "other",
"question_type": "where is the", "answers": [{"answer": "down",
"answer_confidence": "yes", "answer_id": 1}, ... 10 ...], ...}]}``. Only
train and val have public annotations: LLaVA's test-dev file is scored by
the evaluation server, not here.

``--image-folder val2014`` (default: the question file's folder).

Sample id: the question id; task ``vqav2``; metric ``vqa``; ``extra`` holds
``answer_type``, ``question_type``, ``image_id`` and the answer records.

Scoring (metric ``vqa``)
------------------------
The official VQA evaluation's per-question accuracy:

1. the prediction and every human answer have newlines and tabs turned into
   spaces and surrounding space trimmed;
2. **only if the 10 human answers are not all the same**, the prediction and
   the answers go through the punctuation, period, number-word, article and
   contraction steps of :mod:`horizon.benchmarks.answers` (here a comma between
   two digits anywhere makes every punctuation mark be deleted rather than
   spaced). When all 10 agree nothing is normalised and the comparison is
   raw and case-sensitive: ``Yes`` or ``two`` score 0 against ten ``yes`` or
   ten ``2``. (LLaVA passes its answers through TextVQA's EvalAI processor
   before it submits them; prune-eval scores the model's answer as it is.)
3. accuracy = the mean over the human answers of min(1, matches among the
   others / 3). "The others" are the answer records unequal to the one left
   out -- records carry unique answer ids in the official files, so exactly
   one is left out; records without ids that are identical would be left out
   together, as the official code would do.

The benchmark's number is the mean accuracy over questions (the official
tool prints it in percent, rounded to 2 decimals); also per answer type
(``accuracy_yes_no``, ``accuracy_number``, ``accuracy_other``), as the
official tool's per-answer-type breakdown. The official tool refuses a result
file that does not answer every question of the annotation file; a subset
(``--limit``) is scored here as the mean over the questions asked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import Sample
from ..errors import HorizonError
from .answers import leave_one_out, punctuation, words
from .base import BENCHMARKS, LLAVA_SHORT_ANSWER, METRICS, Benchmark, EvalSet, Scoring
from .files import check_entry, head, image_path, llava_questions, read_json

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["VQAv2", "VQAAccuracy", "normalize", "vqa_accuracy"]

# The VQA evaluation's "comma between digits" test.
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
_QUESTIONS = re.compile(r'"questions"\s*:\s*\[')
_ANNOTATIONS = re.compile(r'"annotations"\s*:\s*\[|"multiple_choice_answer"\s*:')


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize(answer: str) -> str:
    """The VQA evaluation's punctuation, period and word steps (applied only when the human answers differ)."""
    return words(punctuation(answer, _DIGIT_COMMA))


def vqa_accuracy(prediction: str, answers: list[str], records: list[Any] | None = None) -> float:
    """The official per-question accuracy; ``records``: what else each answer record holds (its id, ...)."""
    gts = [_clean(a) for a in answers]
    pred = _clean(prediction)
    if len(set(gts)) > 1:
        gts = [normalize(a) for a in gts]
        pred = normalize(pred)
    return leave_one_out(pred, gts, records)


def answer_type_key(answer_type: str) -> str:
    """``yes/no`` -> ``accuracy_yes_no``."""
    return "accuracy_" + (re.sub(r"[^0-9a-z]+", "_", str(answer_type).lower()).strip("_") or "unknown")


class VQAAccuracy(Scoring):
    name = "vqa"
    official = ("VQA accuracy as the official VQA evaluation computes it: answers normalised only when the human "
                "answers differ, mean over the leave-one-out subsets of min(1, matches/3)")

    def score(self, prediction: str, sample: Sample) -> float:
        records = sample.extra.get("answer_records")
        if not isinstance(records, list) or len(records) != len(sample.answers):
            records = None
        return vqa_accuracy(prediction, list(sample.answers), records)

    def row_fields(self, sample: Sample) -> dict[str, Any]:
        kind = sample.extra.get("answer_type")
        return {"answer_type": kind} if isinstance(kind, str) else {}

    def aggregate(self, predictions: pd.DataFrame) -> dict[str, float]:
        out = {"accuracy": float(predictions.score.mean())}
        if "answer_type" in predictions:
            typed = predictions[predictions.answer_type.notna()]
            for kind, rows in sorted(typed.groupby("answer_type")):
                out[answer_type_key(kind)] = float(rows.score.mean())
        return out


def _vqa_annotations(path: Path) -> dict[str, tuple[int, dict[str, Any]]]:
    """question id -> (position, annotation) of an official VQA annotation file."""
    if path.is_dir():
        raise HorizonError(f"--answers {path}: is a folder; VQAv2 needs the annotation file "
                           f"v2_mscoco_val2014_annotations.json")
    doc = read_json(path, "--answers")
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise HorizonError(f"{path}: not a VQA annotation file (expected {{\"annotations\": [...]}} as in "
                           f"v2_mscoco_val2014_annotations.json) (--answers)")
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    for i, entry in enumerate(doc["annotations"]):
        if not isinstance(entry, dict) or "question_id" not in entry:
            raise HorizonError(f"{path}: annotations[{i}] is not an object with a 'question_id'")
        out[str(entry["question_id"])] = (i, entry)
    return out


def _answers_of(path: Path, index: int, entry: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """(answer strings, the rest of each answer record) of one annotation."""
    where = f"{path}: annotations[{index}] (question_id {entry['question_id']})"
    answers = entry.get("answers")
    if not isinstance(answers, list) or not answers:
        raise HorizonError(f"{where} has no 'answers' list")
    texts, records = [], []
    for j, record in enumerate(answers):
        if not isinstance(record, dict) or not isinstance(record.get("answer"), str):
            raise HorizonError(f"{where}: answers[{j}] must be an object with an 'answer' string")
        texts.append(record["answer"])
        records.append({k: v for k, v in record.items() if k != "answer"})
    return texts, records


class VQAv2(Benchmark):
    name = "vqav2"
    prompt = LLAVA_SHORT_ANSWER
    answers_hint = ("VQAv2 questions need the official annotations; pass --answers "
                    "v2_mscoco_val2014_annotations.json")
    scoring = VQAAccuracy()

    def claims_data(self, data: Path, start: str) -> bool:
        return start.lstrip().startswith("{") and _QUESTIONS.search(start) is not None

    def claims_answers(self, answers: Path) -> int:
        return 2 if answers.is_file() and _ANNOTATIONS.search(head(answers)) else 0

    def read(self, data: Path, answers: Path | None, image_folder: Path | None, *,
             strict: bool = True) -> EvalSet:
        assert answers is not None
        annotations = _vqa_annotations(answers)
        base = image_folder if image_folder is not None else data.parent
        asked = self._official_questions(data) if self.claims_data(data, head(data)) else self._llava_questions(data)
        samples: list[Sample] = []
        seen: dict[str, str] = {}
        missing_hint = ("VQAv2 test and test-dev answers are not public; evaluate on val2014 with "
                        "v2_mscoco_val2014_annotations.json")
        for where, qid, image, text in asked:
            if qid in seen:
                raise HorizonError(f"{where}: question_id {qid} is asked twice (first at {seen[qid]})")
            seen[qid] = where
            if qid not in annotations:
                raise HorizonError(f"{where}: question_id {qid} has no annotation in {answers} ({missing_hint})")
            index, entry = annotations[qid]
            texts, records = _answers_of(answers, index, entry)
            extra = {"image_id": entry.get("image_id"), "question_type": entry.get("question_type"),
                     "answer_type": entry.get("answer_type"), "answer_records": records}
            samples.append(Sample(qid, image_path(base, image), text, texts, "vqav2", extra))
        return EvalSet(samples, self.scoring.name, self.name)

    def _official_questions(self, data: Path) -> list[tuple[str, str, str, str]]:
        doc = read_json(data, "--data")
        if not isinstance(doc, dict) or not isinstance(doc.get("questions"), list):
            raise HorizonError(f"{data}: not a VQA question file (expected {{\"questions\": [...]}} as in "
                               f"v2_OpenEnded_mscoco_val2014_questions.json) (--data)")
        subtype = doc.get("data_subtype")
        if not isinstance(subtype, str) or not subtype:
            raise HorizonError(f"{data}: no 'data_subtype' (e.g. \"val2014\") to name the COCO image files (--data)")
        image_split = "test2015" if subtype.startswith("test-dev") else subtype  # test-dev images are test2015's
        out = []
        for i, q in enumerate(doc["questions"]):
            where = f"{data}: questions[{i}]"
            check_entry(q, where, ("image_id", "question", "question_id"))
            try:
                image = f"COCO_{image_split}_{int(q['image_id']):012d}.jpg"
            except (TypeError, ValueError):
                raise HorizonError(f"{where}: 'image_id' must be an integer, got {q['image_id']!r}") from None
            out.append((where, str(q["question_id"]), image, q["question"] + self.prompt))
        if not out:
            raise HorizonError(f"{data}: no questions (--data)")
        return out

    @staticmethod
    def _llava_questions(data: Path) -> list[tuple[str, str, str, str]]:
        return [(q.where, str(q.question_id), q.image, q.text) for q in llava_questions(data)]


METRICS.register(VQAAccuracy.name, VQAv2.scoring)
BENCHMARKS.register(VQAv2.name, VQAv2())
