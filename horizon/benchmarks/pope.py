"""POPE, as LLaVA evaluates it (``scripts/v1_5/eval/pope.sh``, ``llava/eval/eval_pope.py``).

Files
-----
``--data llava_pope_test.jsonl``: lines ``{"question_id": 10000001, "image":
"COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the
image?\\nAnswer the question using a single word or phrase.", "category":
"random"}``, category adversarial / popular / random.

``--answers coco`` (LLaVA's ``--annotation-dir``): ``coco_pope_adversarial.json``,
``coco_pope_popular.json``, ``coco_pope_random.json``, each JSON lines
``{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is
there a snowboard in the image?", "label": "yes"}``; a single
``coco_pope_<category>.json`` file is accepted too.

``--image-folder val2014``. Sample id ``<category>-<question_id>``; task
``pope-<category>``; ``extra["category"]``; metric ``pope``.

Scoring (metric ``pope``)
-------------------------
What LLaVA's eval_pope.py prints:

* an answer is cut at its first period (``Yes. There is no dog`` -> ``Yes``),
  its commas are deleted, and it is split at single spaces; it is "no" when
  one of the words is exactly ``No``, ``not`` or ``no``, and "yes" otherwise --
  case-sensitive and literal, so ``NO``, ``Nope``, ``Not at all``,
  ``1. No`` and ``There is a dog.`` are all yes, and ``There is no dog`` is no;
* a label is negative when it is exactly ``no``, positive otherwise;
* per category (split), with yes as the positive class: accuracy,
  precision, recall, F1 and the yes-ratio (share of answers read as yes).

eval_pope.py reports each category on its own and nothing overall. Where a
set of predictions spans several categories (the ``all`` row), the numbers
here are the unweighted means over its categories of each category's
numbers -- the average over splits papers quote (for POPE's equal-sized
splits, the accuracy equals the pooled one), horizon's convention. Where a
category has no yes answer (or no yes label), precision (or recall) and F1
are 0 here; eval_pope.py stops with a division by zero.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..data import Sample
from ..errors import HorizonError
from .base import BENCHMARKS, LLAVA_SHORT_ANSWER, METRICS, Benchmark, EvalSet, Scoring
from .files import LlavaQuestion, image_path, json_lines, llava_questions, squash

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Pope", "PopeScoring", "POPE_CATEGORIES", "POPE_ID_STRIDE", "pope_answer", "pope_numbers"]

POPE_CATEGORIES = frozenset({"adversarial", "popular", "random"})

# llava_pope_test.jsonl numbers each category in its own block: adversarial 1..3000,
# random 10000001.., popular 20000001.., while every coco_pope_<category>.json counts
# from 1. The label file's id is therefore the LLaVA id modulo this stride.
POPE_ID_STRIDE = 10_000_000


def pope_answer(prediction: str) -> str:
    """``yes`` or ``no``, as eval_pope.py reads an answer."""
    text = prediction
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_positive(label: str) -> bool:
    """eval_pope.py's reading of a label: anything but exactly ``no`` is positive."""
    return label != "no"


def pope_numbers(said_yes: list[bool], positive: list[bool]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio of one category, yes positive."""
    tp = sum(p and g for p, g in zip(said_yes, positive))
    fp = sum(p and not g for p, g in zip(said_yes, positive))
    tn = sum(not p and not g for p, g in zip(said_yes, positive))
    fn = sum(not p and g for p, g in zip(said_yes, positive))
    precision = float(tp) / float(tp + fp) if tp + fp else 0.0
    recall = float(tp) / float(tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / (tp + tn + fp + fn), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": said_yes.count(True) / len(said_yes)}


class PopeScoring(Scoring):
    name = "pope"
    official = ("POPE as LLaVA's eval_pope prints it, per category: no when a word of the first sentence is "
                "No/not/no, else yes; over several categories, the mean of the categories' numbers")
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")

    def score(self, prediction: str, sample: Sample) -> float:
        return float((pope_answer(prediction) == "yes") == pope_positive(sample.answer))

    def aggregate(self, predictions: pd.DataFrame) -> dict[str, float]:
        per_category = []
        for _, rows in predictions.groupby("task", sort=True):
            per_category.append(pope_numbers([pope_answer(str(p)) == "yes" for p in rows.prediction],
                                             [pope_positive(a[0]) for a in rows.answers]))
        return {key: float(sum(n[key] for n in per_category) / len(per_category)) for key in self.keys}


@dataclass
class _PopeLabel:
    question_id: str
    label: str
    image: str | None
    text: str | None
    where: str


def _pope_labels(answers: Path) -> dict[str, tuple[Path, list[_PopeLabel]]]:
    if answers.is_file():
        files = [answers]
    else:
        files = sorted(answers.glob("coco_pope_*.json"))
        if not files:
            raise HorizonError(f"--answers {answers}: no coco_pope_<category>.json files in this folder "
                               f"(POPE needs LLaVA's annotation folder, e.g. playground/data/eval/pope/coco)")
    out: dict[str, tuple[Path, list[_PopeLabel]]] = {}
    for path in files:
        name = re.fullmatch(r"coco_pope_(.+)\.json", path.name)
        if name is None:
            raise HorizonError(f"--answers {path}: POPE label files are named coco_pope_<category>.json")
        labels = []
        for lineno, obj in json_lines(path):
            where = f"{path}:{lineno}"
            missing = [k for k in ("question_id", "label") if k not in obj]
            if missing:
                raise HorizonError(f"{where}: missing key(s) {', '.join(missing)}")
            label = obj["label"]
            if not isinstance(label, str) or label.strip().lower() not in ("yes", "no"):
                raise HorizonError(f"{where}: 'label' must be \"yes\" or \"no\", got {label!r}")
            image, text = obj.get("image"), obj.get("text")
            labels.append(_PopeLabel(str(obj["question_id"]), label.strip(), image if isinstance(image, str) else None,
                                     text if isinstance(text, str) else None, where))
        out[name.group(1)] = (path, labels)
    return out


def _pope_match(q: LlavaQuestion, by_id: dict[str, _PopeLabel], ordered: list[_PopeLabel],
                k: int) -> _PopeLabel | None:
    """The label of question ``q``, the k-th question of its category.

    LLaVA's eval_pope.py never compares ids: it zips the category's answers, in
    file order, with the lines of coco_pope_<category>.json, and the ids differ
    anyway (see POPE_ID_STRIDE). Here the label is looked up by question id (as
    given, then modulo the stride), then by position like LLaVA, and accepted
    only if it names the same image and question -- so a subset or a reordered
    file still matches, and mismatched files fail instead of scoring wrong labels.
    """
    candidates = [by_id.get(str(q.question_id))]
    if str(q.question_id).isdigit() and int(q.question_id) >= POPE_ID_STRIDE:
        candidates.append(by_id.get(str(int(q.question_id) % POPE_ID_STRIDE)))
    candidates.append(ordered[k] if k < len(ordered) else None)
    asked = squash(q.text.split("\n")[0])
    for label in candidates:
        if label is None:
            continue
        if label.image is not None and PurePosixPath(label.image).name != PurePosixPath(q.image).name:
            continue
        if label.text is not None and squash(label.text) != asked:
            continue
        return label
    return None


class Pope(Benchmark):
    name = "pope"
    prompt = LLAVA_SHORT_ANSWER
    answers_hint = "POPE questions need their labels; pass --answers with the folder of coco_pope_<category>.json files"
    scoring = PopeScoring()

    def claims_questions(self, questions: list[LlavaQuestion]) -> bool:
        return {q.category for q in questions} <= POPE_CATEGORIES

    def claims_answers(self, answers: Path) -> int:
        if answers.is_file():
            return 2 if re.fullmatch(r"coco_pope_.+\.json", answers.name) else 0
        return 2 if any(answers.glob("coco_pope_*.json")) else 0

    def read(self, data: Path, answers: Path | None, image_folder: Path | None, *,
             strict: bool = True) -> EvalSet:
        assert answers is not None
        labels = _pope_labels(answers)
        by_id = {cat: {lab.question_id: lab for lab in labs} for cat, (_, labs) in labels.items()}
        position: Counter[str] = Counter()
        seen: dict[str, int] = {}
        samples = []
        base = image_folder if image_folder is not None else data.parent
        for q in llava_questions(data, need_category=True):
            category = q.category
            assert category is not None
            if category not in labels:
                expected = (answers if answers.is_dir() else answers.parent) / f"coco_pope_{category}.json"
                raise HorizonError(f"{q.where}: category {category!r} has no label file {expected} (--answers)")
            path, ordered = labels[category]
            k = position[category]
            position[category] += 1
            label = _pope_match(q, by_id[category], ordered, k)
            if label is None:
                raise HorizonError(f"{q.where}: question_id {q.question_id} ({category}) has no label in {path} "
                                   f"that agrees on image and question")
            sid = f"{category}-{q.question_id}"
            if sid in seen:
                raise HorizonError(f"{q.where}: duplicate question_id {q.question_id} in category {category} "
                                   f"(first on line {seen[sid]})")
            seen[sid] = q.lineno
            samples.append(Sample(sid, image_path(base, q.image), q.text, [label.label], f"pope-{category}",
                                  {"category": category, "label_question_id": label.question_id}))
        return EvalSet(samples, self.scoring.name, self.name)


METRICS.register(PopeScoring.name, Pope.scoring)
BENCHMARKS.register(Pope.name, Pope())
