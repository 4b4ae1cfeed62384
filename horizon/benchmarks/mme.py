"""MME, as LLaVA evaluates it (``scripts/v1_5/eval/mme.sh``) and MME's eval_tool scores it.

Files
-----
``--data llava_mme.jsonl``: lines ``{"question_id": "artwork/images/14777.jpg",
"image": "artwork/images/14777.jpg", "text": "Does this artwork belong to
the type of religious?\\nAnswer the question using a single word or phrase.",
"category": "artwork"}``; two lines (questions) per image, same question_id.

``--answers MME_Benchmark_release_version``: the benchmark release, one
folder per category. Categories with an ``images/`` subfolder keep their
ground truth in ``questions_answers_YN/<image stem>.txt``; the others keep
``<image stem>.txt`` next to the image. Each such file has one
``question<TAB>answer`` line per question, the question ending in
"Please answer yes or no." and the answer ``Yes`` or ``No``. The
eval_tool layout (``eval_tool/Your_Results/<category>.txt`` with
``image<TAB>question<TAB>answer`` lines) is accepted too, as
``--answers <folder of category .txt files>``.

Images default to the ``--answers`` folder (LLaVA passes the release folder
as ``--image-folder``). Sample id ``<question_id>#<n>`` (n: the question's
line in the ground-truth file); task = category; ``extra["category"]``;
``extra["pair"]`` = the image path, shared by the image's two questions
(MME's acc+ counts an image right when both are right); metric ``mme``.

Scoring (metric ``mme``)
------------------------
What MME's eval_tool (``calculation.py``) prints for the files LLaVA's
conversion script writes:

* an answer is lower-cased (not trimmed: the tool reads each line with its
  newline, which changes nothing below; LLaVA's generation already trims, as
  horizon's does). Exactly ``yes`` or ``no`` is that; otherwise ``yes``
  anywhere in the first 4 characters means yes (``Yes, it is``, and ``Eyes``),
  else ``no`` there means no (``Nope``, ``Not``), else it is "other", which
  is wrong whatever the truth (``1. Yes``, ``Sure``). Ground truth ``Yes`` /
  ``No`` is lower-cased too;
* per subtask (category): acc = share of questions right; acc+ = share of
  images whose two questions are both right; score = 100·(acc + acc+), at
  most 200;
* Perception = the sum of the scores of existence, count, position, color,
  posters, celebrity, scene, landmark, artwork and OCR (at most 2000);
  Cognition = the sum over commonsense_reasoning, numerical_calculation,
  text_translation and code_reasoning (at most 800).

The tool pairs the lines of a category file two by two, in file order (the
order of LLaVA's question file, where an image's two questions are
adjacent); here an image's questions are grouped by image, and an image
counts for acc+ when all of its questions present are right (the tool
asserts there are two; a ``--limit`` can cut a pair). An answer holding a
newline or a tab would break the tool's line format; here it is scored as
one answer.

``aggregate`` returns, for any set of predictions: ``accuracy`` (acc over its
questions), ``acc_plus`` (over its images), ``mme_score`` (the sum of the
subtask scores of the subtasks present: a subtask's own score, or for all of
MME Perception + Cognition), ``mme_perception``, ``mme_cognition`` (the sums
over the perception / cognition subtasks present; 0 where none is),
``mme_subtasks`` (how many subtasks are present; the totals are out of
2000 and 800 only when all 14 are) and ``other_ratio`` (share of answers that
are neither yes nor no). For one subtask, accuracy and acc_plus are the tool's
acc and acc+; over several, they are horizon's pooled numbers -- the tool
reports none.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..data import Sample
from ..errors import HorizonError
from .base import BENCHMARKS, LLAVA_SHORT_ANSWER, METRICS, Benchmark, EvalSet, Scoring
from .files import LlavaQuestion, image_path, llava_questions, squash

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MME", "MMEScoring", "PERCEPTION", "COGNITION", "MME_CATEGORIES", "mme_answer"]

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_CATEGORIES = frozenset(PERCEPTION + COGNITION)

# Instructions LLaVA and MME append to a question; ignored when matching questions.
_LLAVA_SHORT = "answer the question using a single word or phrase."
_MME_YES_NO = "please answer yes or no."


def mme_answer(prediction: str) -> str:
    """``yes``, ``no`` or ``other``, as MME's eval_tool reads an answer."""
    text = prediction.lower()
    if text in ("yes", "no"):
        return text
    start = text[:4]
    if "yes" in start:
        return "yes"
    if "no" in start:
        return "no"
    return "other"


class MMEScoring(Scoring):
    name = "mme"
    official = ("MME as its eval_tool computes it: yes/no from the first 4 characters, per subtask "
                "100*(acc + acc+), Perception and Cognition the sums of their subtasks")
    keys = ("accuracy", "acc_plus", "mme_score", "mme_perception", "mme_cognition", "mme_subtasks", "other_ratio")

    def score(self, prediction: str, sample: Sample) -> float:
        return float(mme_answer(prediction) == sample.answer.lower())

    def row_fields(self, sample: Sample) -> dict[str, Any]:
        pair = sample.extra.get("pair")
        return {"pair": f"{sample.task}/{pair}" if pair is not None else None}

    def aggregate(self, predictions: pd.DataFrame) -> dict[str, float]:
        frame = predictions
        # an image: its pair; a question without one is an image of its own
        images = [p if isinstance(p, str) else f"\0{i}" for i, p in
                  enumerate(frame["pair"] if "pair" in frame else [None] * len(frame))]
        right = [bool(s == 1.0) for s in frame.score]
        tasks = list(frame.task)
        per_image: dict[str, list[bool]] = defaultdict(list)
        by_task: dict[str, tuple[list[bool], dict[str, list[bool]]]] = {}
        for task, image, ok in zip(tasks, images, right):
            per_image[image].append(ok)
            answers, pairs = by_task.setdefault(task, ([], defaultdict(list)))
            answers.append(ok)
            pairs[image].append(ok)
        # the tool's arithmetic, in its order: acc * 100 + acc+ * 100 per subtask, summed in its subtask order
        subtask = {task: sum(a) / len(a) * 100 + sum(all(v) for v in p.values()) / len(p) * 100
                   for task, (a, p) in by_task.items()}
        perception = sum(subtask[t] for t in PERCEPTION if t in subtask)
        cognition = sum(subtask[t] for t in COGNITION if t in subtask)
        others = sum(v for t, v in subtask.items() if t not in MME_CATEGORIES)
        other = sum(mme_answer(str(p)) == "other" for p in frame.prediction)
        return {
            "accuracy": sum(right) / len(right),
            "acc_plus": sum(all(v) for v in per_image.values()) / len(per_image),
            "mme_score": float(perception + cognition + others),
            "mme_perception": float(perception),
            "mme_cognition": float(cognition),
            "mme_subtasks": float(sum(t in MME_CATEGORIES for t in subtask)),
            "other_ratio": other / len(right),
        }


@dataclass
class _MMETruth:
    question: str
    answer: str
    index: int  # 1-based position among this image's questions
    where: str  # "file:line"


def _mme_key(question: str) -> str:
    """MME question without the yes/no or short-answer instruction, squashed.

    LLaVA's convert_answer_to_mme.py strips LLaVA's instruction, appends
    " Please answer yes or no." and, failing that, retries with two spaces
    (some ground-truth files have them); dropping both instructions and
    collapsing whitespace covers those and similar variants.
    """
    text = squash(question)
    for instruction in (_LLAVA_SHORT, _MME_YES_NO):
        text = text.replace(instruction, " ")
    return " ".join(text.split())


class _MMEGroundTruth:
    """Ground truth from an MME release folder (or an eval_tool results folder), read lazily."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise HorizonError(f"--answers {root}: MME needs the benchmark folder (MME_Benchmark_release_version), "
                               f"not a file")
        self.root = root
        self._files: dict[Path, list[_MMETruth]] = {}
        self._categories: dict[str, dict[str, list[_MMETruth]]] = {}

    def places(self, image: str, category: str) -> list[Path]:
        """Where the ground truth of `image` may be, in the order they are tried."""
        rel = PurePosixPath(image)
        folder = self.root / rel.parent
        places = [folder / f"{rel.stem}.txt"]
        if rel.parent.name == "images":  # artwork, celebrity, ...: images/ + questions_answers_YN/
            places.insert(0, folder.parent / "questions_answers_YN" / f"{rel.stem}.txt")
        return places + [self.root / f"{category}.txt"]  # last: the eval_tool/Your_Results layout

    def truths(self, image: str, category: str) -> tuple[list[_MMETruth], Path] | None:
        *per_image, table = self.places(image, category)
        for place in per_image:
            if place.is_file():
                return self._per_image(place), place
        if table.is_file():
            return self._per_category(table, category).get(PurePosixPath(image).name, []), table
        return None

    def _per_image(self, path: Path) -> list[_MMETruth]:
        if path not in self._files:
            rows = self._rows(path, 2, "question<TAB>answer")
            self._files[path] = [_MMETruth(r[0], r[1], i, where) for i, (r, where) in enumerate(rows, start=1)]
        return self._files[path]

    def _per_category(self, path: Path, category: str) -> dict[str, list[_MMETruth]]:
        if category not in self._categories:
            table: dict[str, list[_MMETruth]] = defaultdict(list)
            for row, where in self._rows(path, 3, "image<TAB>question<TAB>answer"):
                items = table[row[0]]
                items.append(_MMETruth(row[1], row[2], len(items) + 1, where))
            self._categories[category] = table
        return self._categories[category]

    @staticmethod
    def _rows(path: Path, width: int, layout: str) -> list[tuple[list[str], str]]:
        rows = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise HorizonError(f"{path}: not a UTF-8 text file") from None
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            fields = line.split("\t")
            # eval_tool result files may carry the model's response as a further column
            if len(fields) < width or (width == 2 and len(fields) != 2):
                raise HorizonError(f"{where}: expected '{layout}', got {len(fields)} tab-separated field(s)")
            answer = fields[width - 1].strip()
            if answer.lower() not in ("yes", "no"):
                raise HorizonError(f"{where}: the answer must be Yes or No, got {answer!r}")
            rows.append(([f.strip() for f in fields[:width - 1]] + [answer], where))
        return rows


class MME(Benchmark):
    name = "mme"
    prompt = LLAVA_SHORT_ANSWER
    answers_hint = "MME questions need the benchmark's ground truth; pass --answers MME_Benchmark_release_version"
    scoring = MMEScoring()

    def claims_questions(self, questions: list[LlavaQuestion]) -> bool:
        categories = {q.category for q in questions}
        return categories <= MME_CATEGORIES or all(
            isinstance(q.question_id, str) and "/" in q.question_id and q.question_id == q.image for q in questions)

    def claims_answers(self, answers: Path) -> int:
        if answers.is_dir() and (any(answers.glob("*.txt")) or any(answers.glob("*/*.txt"))
                                 or any(answers.glob("*/questions_answers_YN"))):
            return 1
        return 0

    def read(self, data: Path, answers: Path | None, image_folder: Path | None, *,
             strict: bool = True) -> EvalSet:
        assert answers is not None
        truth = _MMEGroundTruth(answers)
        base = image_folder if image_folder is not None else answers
        seen: dict[str, int] = {}
        samples = []
        for q in llava_questions(data):
            category = q.category or PurePosixPath(str(q.question_id)).parts[0]
            found = truth.truths(q.image, category)
            if found is None:
                tried = ", ".join(str(p.relative_to(answers)) for p in truth.places(q.image, category))
                raise HorizonError(f"{q.where}: no ground truth for {q.image} in {answers} (tried {tried}); "
                                   f"is --answers the MME_Benchmark_release_version folder?")
            truths, source = found
            key = _mme_key(q.text)
            match = next((t for t in truths if _mme_key(t.question) == key), None)
            if match is None:
                asked = q.text.split("\n")[0]
                raise HorizonError(f"{q.where}: question {asked!r} has no ground-truth answer in {source}")
            sid = f"{q.question_id}#{match.index}"
            if sid in seen:
                raise HorizonError(f"{q.where}: same MME question as line {seen[sid]} ({sid})")
            seen[sid] = q.lineno
            pair = str(PurePosixPath(q.image))
            samples.append(Sample(sid, image_path(base, q.image), q.text, [match.answer], category,
                                  {"category": category, "pair": pair}))
        return EvalSet(samples, self.scoring.name, self.name)


METRICS.register(MMEScoring.name, MME.scoring)
BENCHMARKS.register(MME.name, MME())
