"""TextVQA, as LLaVA evaluates it (``scripts/v1_5/eval/textvqa.sh``).

Files
-----
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

Sample id: the official numeric ``question_id``; task ``textvqa``; metric ``textvqa``.

Scoring (metric ``textvqa``)
----------------------------
What LLaVA's TextVQA evaluation prints (its copy of MMF's TextVQA accuracy
evaluator with the EvalAI answer processor). Every answer -- the model's and
each of the 10 human ones -- goes through the EvalAI processor:

1. lower-cased; every ``,`` and ``?`` deleted; ``'s`` split off as `` 's``
   (``it's`` -> ``it 's``, so ``it's`` and ``its`` never match, and neither do
   ``he's`` and ``hes``, which the contraction table turns into ``he's``);
   surrounding space trimmed;
2. newlines and tabs become spaces;
3. the punctuation and period rules of :mod:`horizon.benchmarks.answers`. As
   the commas are already gone, the "comma between digits" clause never fires
   here (``1,000/yr`` -> ``1000 yr``, where VQAv2 gives ``1000yr``). ``$`` is
   not a punctuation mark, so ``$5`` and ``5`` differ;
4. number words, articles and the contraction table (``couldve`` ->
   ``could've``).

The score is the leave-one-out accuracy of the processed prediction against
the processed human answers: the mean over the 10 answers of min(1, matches
among the other 9 / 3). (The official code enumerates the answers, so each
subset leaves out exactly one of a set of duplicates; it asserts there are
exactly 10 answers, where this accepts any number.) The benchmark's number is
the mean score over questions.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

from ..data import Sample
from ..errors import HorizonError
from .answers import leave_one_out, punctuation, words
from .base import BENCHMARKS, LLAVA_SHORT_ANSWER, METRICS, Benchmark, EvalSet, Scoring
from .files import check_entry, head, image_path, llava_questions, read_json, squash

__all__ = ["TextVQA", "TextVQAAccuracy", "process_answer"]

# The EvalAI processor's "comma between digits" test (one or more commas).
_DIGIT_COMMA = re.compile(r"(?<=\d)(,)+(?=\d)")


def process_answer(answer: str) -> str:
    """An answer as the EvalAI answer processor leaves it (see the module docstring)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return words(punctuation(text, _DIGIT_COMMA))


class TextVQAAccuracy(Scoring):
    name = "textvqa"
    official = ("TextVQA accuracy as LLaVA's eval_textvqa prints it: EvalAI answer processing, then the mean over "
                "the 10 leave-one-out subsets of min(1, matches/3)")

    def score(self, prediction: str, sample: Sample) -> float:
        return leave_one_out(process_answer(prediction), [process_answer(a) for a in sample.answers])


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
    return [t for t in (squash(x) for x in texts) if t]


def _textvqa_annotations(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        raise HorizonError(f"--answers {path}: is a folder; TextVQA needs the annotation file TextVQA_0.5.1_val.json")
    doc = read_json(path, "--answers")
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise HorizonError(f"{path}: not a TextVQA annotation file (expected {{\"data\": [...]}} as in "
                           f"TextVQA_0.5.1_val.json) (--answers)")
    for i, entry in enumerate(doc["data"]):
        check_entry(entry, f"{path}: data[{i}]", ("question_id", "image_id", "question"))
    return doc["data"]


class TextVQA(Benchmark):
    name = "textvqa"
    prompt = LLAVA_SHORT_ANSWER
    answers_hint = "TextVQA questions need the official annotations; pass --answers TextVQA_0.5.1_val.json"
    scoring = TextVQAAccuracy()

    def claims_answers(self, answers: Path) -> int:
        if not answers.is_file() or answers.suffix != ".json" or answers.name.startswith("coco_pope_"):
            return 0
        text = head(answers)
        if re.search(r'"dataset_name"\s*:\s*"textvqa"', text) or re.search(r'"data"\s*:\s*\[', text):
            return 2
        return 1  # some other .json: most likely TextVQA's, and its reader says what is wrong with it

    def read(self, data: Path, answers: Path | None, image_folder: Path | None, *,
             strict: bool = True) -> EvalSet:
        assert answers is not None
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
            by_key[(str(entry["image_id"]), squash(entry["question"]))].append(entry)
            by_qid[str(entry["question_id"])] = entry
        used: Counter[tuple[str, str]] = Counter()
        seen: dict[str, int] = {}
        samples = []
        base = image_folder if image_folder is not None else data.parent
        for q in llava_questions(data):
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
                if str(official["image_id"]) in image_ids or squash(official["question"]) in candidates:
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
                raise HorizonError(f"{answers}: question_id {sid} has no 'answers' list (test-split annotations "
                                   f"have none; use TextVQA_0.5.1_val.json)")
            samples.append(Sample(sid, image_path(base, q.image), q.text, list(gts), "textvqa",
                                  {"image_id": str(entry["image_id"]), "llava_question_id": q.question_id}))
        return EvalSet(samples, self.scoring.name, self.name)


METRICS.register(TextVQAAccuracy.name, TextVQA.scoring)
BENCHMARKS.register(TextVQA.name, TextVQA())
