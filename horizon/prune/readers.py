"""Question files for ``horizon prune-eval``: the files researchers already have.

``read_eval(data, answers=..., image_folder=..., format=...)`` returns an
:class:`EvalSet`: :class:`horizon.data.Sample` objects plus the name of the
metric that scores predictions on them. Images are paths only (never opened
here); whether each exists is checked later, per sample.

Formats
-------
``jsonl``
    horizon's own dataset file (``horizon.data.read_jsonl``): one
    ``{"id", "image" (relative to the file), "question", "answer": str | [str],
    "task"}`` per line. Metric ``vqa`` when every sample has at least 10
    answers (VQA-style human answers), else ``exact``.

``textvqa`` -- LLaVA's TextVQA evaluation (``scripts/v1_5/eval/textvqa.sh``)
    ``--data llava_textvqa_val_v051_ocr.jsonl``: lines
    ``{"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg",
    "text": "What is the brand of this camera?\\nReference OCR token: DAKOTA, ...\\n
    Answer the question using a single word or phrase.", "category": "default"}``.
    Note that LLaVA's ``question_id`` is the TextVQA *image* id, shared by
    every question on that image. ``text`` is the full prompt and is kept
    verbatim as the question.
    ``--answers TextVQA_0.5.1_val.json``: the official annotations,
    ``{"dataset_name": "textvqa", ..., "data": [{"question_id": 34602,
    "image_id": "003a8ae2ef43b901", "question": "what is the brand of this
    camera?", "answers": [10 strings], ...}]}``.
    ``--image-folder train_images`` (TextVQA val images live there).
    Sample id: the official numeric ``question_id``; task ``textvqa``; metric ``vqa``.

``mme`` -- LLaVA's MME evaluation (``scripts/v1_5/eval/mme.sh``)
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

``pope`` -- LLaVA's POPE evaluation (``scripts/v1_5/eval/pope.sh``)
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

``auto`` (default)
    A first line with ``question_id`` and ``text`` is a LLaVA question file;
    which benchmark is told from the ``category`` values (POPE's three, MME's
    fourteen) and from what ``--answers`` points at (a ``.json`` file: TextVQA;
    a folder of ``coco_pope_*.json``: POPE; a folder of ``.txt`` ground truth:
    MME). A first line with ``id`` and ``answer`` is ``jsonl``. Anything else,
    or conflicting clues, is an error asking for ``--format``.

Every problem with the user's files raises a one-line
:class:`~horizon.errors.HorizonError` naming the file (and line) and the flag
to fix.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..data import Sample, read_jsonl
from ..errors import HorizonError

__all__ = ["FORMATS", "METRICS", "MME_CATEGORIES", "POPE_CATEGORIES", "EvalSet", "read_eval"]

FORMATS = ("auto", "jsonl", "textvqa", "mme", "pope")
METRICS = ("exact", "vqa", "mme", "pope")

MME_CATEGORIES = frozenset({
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning",
})
POPE_CATEGORIES = frozenset({"adversarial", "popular", "random"})

# llava_pope_test.jsonl numbers each category in its own block: adversarial 1..3000,
# random 10000001.., popular 20000001.., while every coco_pope_<category>.json counts
# from 1. The label file's id is therefore the LLaVA id modulo this stride.
POPE_ID_STRIDE = 10_000_000

# Instructions LLaVA and MME append to a question; ignored when matching questions.
_LLAVA_SHORT = "answer the question using a single word or phrase."
_MME_YES_NO = "please answer yes or no."

_FORMAT_HINT = "pass --format jsonl|textvqa|mme|pope"
_LLAVA_HINT = "pass --format textvqa|mme|pope"


@dataclass
class EvalSet:
    """Samples to evaluate and how predictions on them are scored."""

    samples: list[Sample]
    metric: str  # "exact" | "vqa" | "mme" | "pope"
    format: str  # which reader produced it: "jsonl" | "textvqa" | "mme" | "pope"
    source: str | None = None  # the files read (questions, answers, images), recorded with results

    def __len__(self) -> int:
        return len(self.samples)


def read_eval(data: str | Path, *, answers: str | Path | None = None, image_folder: str | Path | None = None,
              format: str = "auto") -> EvalSet:
    """Read a question file (``--data``) with its ground truth (``--answers``).

    ``image_folder`` (``--image-folder``) is the folder the question file's image
    names are relative to; without it, the question file's own folder (the MME
    release folder for ``mme``). ``format`` is one of :data:`FORMATS`.
    """
    if format not in FORMATS:
        raise HorizonError(f"--format {format!r}: unknown format; use one of {', '.join(FORMATS)}")
    data = Path(data)
    if not data.exists():
        raise HorizonError(f"question file not found: {data} (--data)")
    if not data.is_file():
        raise HorizonError(f"{data}: is a folder, not a question file (--data)")
    answers = Path(answers) if answers is not None else None
    if answers is not None and not answers.exists():
        raise HorizonError(f"answers not found: {answers} (--answers)")
    folder = Path(image_folder) if image_folder is not None else None

    fmt = _detect(data, answers) if format == "auto" else format
    if fmt == "jsonl":
        evalset = _read_own_jsonl(data, answers, folder)
    elif answers is None:
        raise HorizonError(f"{data}: {_ANSWERS_NEEDED[fmt]}")
    elif fmt == "textvqa":
        evalset = _read_textvqa(data, answers, folder)
    elif fmt == "mme":
        evalset = _read_mme(data, answers, folder)
    else:
        evalset = _read_pope(data, answers, folder)
    files = [str(data.resolve())] + [f"{flag}={p.resolve()}" for flag, p in (("answers", answers),
                                                                         ("images", folder)) if p is not None]
    evalset.source = " ".join(files)
    return evalset


_ANSWERS_NEEDED = {
    "textvqa": "TextVQA questions need the official annotations; pass --answers TextVQA_0.5.1_val.json",
    "mme": "MME questions need the benchmark's ground truth; pass --answers MME_Benchmark_release_version",
    "pope": "POPE questions need their labels; pass --answers with the folder of coco_pope_<category>.json files",
}


# ---------------------------------------------------------------------------
# reading JSON lines


def _json_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; every line must be a JSON object."""
    out = []
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise HorizonError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise HorizonError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                out.append((lineno, obj))
    except UnicodeDecodeError:
        raise HorizonError(f"{path}: not a UTF-8 text file") from None
    if not out:
        raise HorizonError(f"{path}: no lines to read (empty file)")
    return out


def _first_object(path: Path) -> tuple[int, Any]:
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        return lineno, json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise HorizonError(
                            f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except UnicodeDecodeError:
        raise HorizonError(f"{path}: not a UTF-8 text file") from None
    raise HorizonError(f"{path}: no lines to read (empty file)")


@dataclass
class _Question:
    """One line of a LLaVA evaluation question file (``model_vqa_loader`` input)."""

    lineno: int
    question_id: str | int
    image: str
    text: str
    category: str | None
    where: str  # "file:line" for messages


def _llava_questions(path: Path, *, need_category: bool = False) -> list[_Question]:
    out = []
    for lineno, obj in _json_lines(path):
        where = f"{path}:{lineno}"
        required = ("question_id", "image", "text") + (("category",) if need_category else ())
        missing = [k for k in required if k not in obj]
        if missing:
            raise HorizonError(f"{where}: missing key(s) {', '.join(missing)}")
        qid = obj["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, (str, int)) or str(qid) == "":
            raise HorizonError(f"{where}: 'question_id' must be a non-empty string or an integer")
        if not isinstance(obj["image"], str) or not obj["image"]:
            raise HorizonError(f"{where}: 'image' must be a file name")
        if not isinstance(obj["text"], str):
            raise HorizonError(f"{where}: 'text' must be a string")
        category = obj.get("category")
        if category is not None and (not isinstance(category, str) or not category):
            raise HorizonError(f"{where}: 'category' must be a non-empty string")
        out.append(_Question(lineno, qid, obj["image"], obj["text"], category, where))
    return out


def _image_path(folder: Path, image: str) -> Path:
    return folder / image  # an absolute image path stays as it is


def _squash(text: str) -> str:
    """Case- and whitespace-insensitive form of a question, for matching."""
    return " ".join(text.split()).casefold()


# ---------------------------------------------------------------------------
# format detection


def _detect(data: Path, answers: Path | None) -> str:
    lineno, first = _first_object(data)
    if isinstance(first, dict) and "question_id" in first and "text" in first:
        return _detect_llava(data, answers)
    if isinstance(first, dict) and "id" in first and "answer" in first:
        return "jsonl"
    raise HorizonError(f"{data}:{lineno}: cannot tell the format (neither question_id+text nor id+answer); "
                       f"{_FORMAT_HINT}")


def _detect_llava(data: Path, answers: Path | None) -> str:
    questions = _llava_questions(data)
    categories = {q.category for q in questions}
    by_data: str | None = None
    if categories <= POPE_CATEGORIES:
        by_data = "pope"
    elif categories <= MME_CATEGORIES or all(isinstance(q.question_id, str) and "/" in q.question_id
                                              and q.question_id == q.image for q in questions):
        by_data = "mme"
    by_answers = _answers_kind(answers) if answers is not None else None
    if by_data and by_answers and by_data != by_answers:
        raise HorizonError(f"{data}: the questions look like {by_data} but --answers {answers} looks like "
                           f"{by_answers}; {_LLAVA_HINT}")
    fmt = by_data or by_answers
    if fmt is None:
        clue = ("no --answers was given" if answers is None else
                f"--answers {answers} is neither a TextVQA .json file nor a POPE or MME folder")
        raise HorizonError(f"{data}: a LLaVA question file whose categories do not tell TextVQA, MME or POPE apart "
                           f"and {clue}; {_LLAVA_HINT} with --answers")
    return fmt


def _answers_kind(answers: Path) -> str | None:
    if answers.is_file():
        if re.fullmatch(r"coco_pope_.+\.json", answers.name):
            return "pope"
        return "textvqa" if answers.suffix == ".json" else None
    if any(answers.glob("coco_pope_*.json")):
        return "pope"
    if any(answers.glob("*.txt")) or any(answers.glob("*/*.txt")) or any(answers.glob("*/questions_answers_YN")):
        return "mme"
    return None


# ---------------------------------------------------------------------------
# horizon's own JSONL


def _read_own_jsonl(data: Path, answers: Path | None, folder: Path | None) -> EvalSet:
    if answers is not None:
        raise HorizonError(f"{data}: --answers is not used with --format jsonl (each line carries its 'answer')")
    if folder is not None:
        raise HorizonError(f"{data}: --image-folder is not used with --format jsonl "
                           f"(images are relative to the file itself)")
    samples = read_jsonl(data)
    metric = "vqa" if all(len(s.answers) >= 10 for s in samples) else "exact"
    return EvalSet(samples, metric, "jsonl")


# ---------------------------------------------------------------------------
# TextVQA


def _textvqa_candidates(prompt: str) -> list[str]:
    """Question texts the prompt may contain, squashed, most likely first.

    LLaVA's prompts are ``question\\nReference OCR token: ...\\nAnswer ...``,
    ``Reference OCR token: ...\\nquestion\\nAnswer ...``, ``question\\nAnswer ...``
    or ``OCR tokens: ... Question: q Short answer:``. Rather than assume one
    layout (LLaVA's eval_textvqa.py asserts on anything else), every line is a
    candidate; only one that is an annotated question of that image matches.
    """
    found = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
    texts = ([found.group(1)] if found else []) + prompt.split("\n")
    return [t for t in (_squash(x) for x in texts) if t]


def _read_textvqa(data: Path, answers: Path, folder: Path | None) -> EvalSet:
    annotations = _textvqa_annotations(answers)
    # LLaVA's eval_textvqa.py matches a prediction to the annotation keyed by
    # (image_id, question.lower()), taking image_id from LLaVA's question_id (the
    # TextVQA image id) and the question from the prompt's first line; a question
    # asked twice about one image keeps only the last annotation. Here: the same
    # (image id, question) key, but case- and whitespace-insensitive, with the
    # image id also taken from the image file name, the question found on any line
    # of the prompt, repeated keys paired in order, and an official numeric
    # question_id accepted as well -- and no match is an error, not a KeyError.
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    by_qid: dict[str, dict[str, Any]] = {}
    for entry in annotations:
        by_key[(str(entry["image_id"]), _squash(entry["question"]))].append(entry)
        by_qid[str(entry["question_id"])] = entry
    used: Counter[tuple[str, str]] = Counter()
    seen: dict[str, int] = {}
    samples = []
    base = folder if folder is not None else data.parent
    for q in _llava_questions(data):
        candidates = _textvqa_candidates(q.text)
        image_ids = list(dict.fromkeys([str(q.question_id), PurePosixPath(q.image).stem]))
        entry = None
        for image_id in image_ids:
            key = next(((image_id, c) for c in candidates if (image_id, c) in by_key), None)
            if key is not None:
                entries = by_key[key]
                entry = entries[min(used[key], len(entries) - 1)]
                used[key] += 1
                break
        if entry is None and str(q.question_id) in by_qid:
            official = by_qid[str(q.question_id)]
            if str(official["image_id"]) in image_ids or _squash(official["question"]) in candidates:
                entry = official
        if entry is None:
            question = candidates[0] if candidates else ""
            raise HorizonError(f"{q.where}: no ground truth in {answers} for image {image_ids[0]!r}, "
                               f"question {question!r} (is --answers the TextVQA_0.5.1_val.json of this file?)")
        sid = str(entry["question_id"])
        if sid in seen:
            raise HorizonError(f"{q.where}: same TextVQA question as line {seen[sid]} (question_id {sid})")
        seen[sid] = q.lineno
        gts = entry.get("answers")
        if not isinstance(gts, list) or not gts or not all(isinstance(a, str) for a in gts):
            raise HorizonError(f"{answers}: question_id {sid} has no 'answers' list (test-split annotations have "
                               f"none; use TextVQA_0.5.1_val.json)")
        samples.append(Sample(sid, _image_path(base, q.image), q.text, list(gts), "textvqa",
                              {"image_id": str(entry["image_id"]), "llava_question_id": q.question_id}))
    return EvalSet(samples, "vqa", "textvqa")


def _textvqa_annotations(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        raise HorizonError(f"--answers {path}: is a folder; TextVQA needs the annotation file TextVQA_0.5.1_val.json")
    try:
        with path.open(encoding="utf-8") as fh:
            doc = json.load(fh)
    except json.JSONDecodeError as exc:
        raise HorizonError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError:
        raise HorizonError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise HorizonError(f"{path}: not a TextVQA annotation file (expected {{\"data\": [...]}} as in "
                           f"TextVQA_0.5.1_val.json) (--answers)")
    for i, entry in enumerate(doc["data"]):
        if not isinstance(entry, dict):
            raise HorizonError(f"{path}: data[{i}] is not a JSON object")
        missing = [k for k in ("question_id", "image_id", "question") if k not in entry]
        if missing:
            raise HorizonError(f"{path}: data[{i}] is missing key(s) {', '.join(missing)}")
        if not isinstance(entry["question"], str):
            raise HorizonError(f"{path}: data[{i}]: 'question' must be a string")
    return doc["data"]


# ---------------------------------------------------------------------------
# MME


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
    text = _squash(question)
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


def _read_mme(data: Path, answers: Path, folder: Path | None) -> EvalSet:
    truth = _MMEGroundTruth(answers)
    base = folder if folder is not None else answers
    seen: dict[str, int] = {}
    samples = []
    for q in _llava_questions(data):
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
        samples.append(Sample(sid, _image_path(base, q.image), q.text, [match.answer], category,
                              {"category": category, "pair": pair}))
    return EvalSet(samples, "mme", "mme")


# ---------------------------------------------------------------------------
# POPE


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
        for lineno, obj in _json_lines(path):
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


def _read_pope(data: Path, answers: Path, folder: Path | None) -> EvalSet:
    labels = _pope_labels(answers)
    by_id = {cat: {lab.question_id: lab for lab in labs} for cat, (_, labs) in labels.items()}
    position: Counter[str] = Counter()
    seen: dict[str, int] = {}
    samples = []
    base = folder if folder is not None else data.parent
    for q in _llava_questions(data, need_category=True):
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
        samples.append(Sample(sid, _image_path(base, q.image), q.text, [label.label], f"pope-{category}",
                              {"category": category, "label_question_id": label.question_id}))
    return EvalSet(samples, "pope", "pope")


def _pope_match(q: _Question, by_id: dict[str, _PopeLabel], ordered: list[_PopeLabel], k: int) -> _PopeLabel | None:
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
    asked = _squash(q.text.split("\n")[0])
    for label in candidates:
        if label is None:
            continue
        if label.image is not None and PurePosixPath(label.image).name != PurePosixPath(q.image).name:
            continue
        if label.text is not None and _squash(label.text) != asked:
            continue
        return label
    return None
