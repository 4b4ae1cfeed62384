"""Benchmarks for ``horizon prune-eval``: their files, prompts and official scoring.

One module per benchmark, each registering a :class:`Benchmark` in
:data:`BENCHMARKS` (by ``--format`` name) and its :class:`Scoring` in
:data:`METRICS` (by ``--metric`` name):

=========  ==========  ======================================================
format     metric      files and scoring
=========  ==========  ======================================================
jsonl      exact, vqa  horizon's own JSONL (the README's Dataset file section); exact match (horizon's
                       convention) or, with 10 answers per sample, VQAv2's
textvqa    textvqa     LLaVA's TextVQA files; LLaVA's eval_textvqa (EvalAI)
vqav2      vqa         VQAv2 question + annotation files; the official VQA eval
mme        mme         LLaVA's MME files; MME's eval_tool (calculation.py)
pope       pope        LLaVA's POPE files; LLaVA's eval_pope.py
=========  ==========  ======================================================

``read_eval(data, answers=..., image_folder=..., format=...)`` returns an
:class:`EvalSet`: :class:`horizon.data.Sample` objects plus the name of the
metric that scores predictions on them. Images are paths only (never opened
here); whether each exists is checked later, per sample.

``auto`` (the default format): a first line with ``question_id`` and ``text``
is a LLaVA question file; which benchmark is told from the ``category``
values (POPE's three, MME's fourteen) and from what ``--answers`` points at
(VQAv2's annotations, TextVQA's ``.json``, a folder of ``coco_pope_*.json``
(POPE) or of ``.txt`` ground truth (MME)). A JSON document with a
``questions`` list is VQAv2's official question file. A first line with
``id`` and ``answer`` is ``jsonl``. Anything else, or conflicting clues, is
an error asking for ``--format``.

Every problem with the user's files raises a one-line
:class:`~horizon.errors.HorizonError` naming the file (and line) and the flag
to fix.
"""

from __future__ import annotations

from pathlib import Path

from ..data import missing_message
from ..errors import HorizonError
from . import jsonl, textvqa, vqav2, mme, pope  # noqa: F401  (registration order = --format choices order)
from .base import BENCHMARKS, LLAVA_SHORT_ANSWER, METRICS, Benchmark, EvalSet, Scoring
from .files import first_object, head, llava_questions
from .mme import MME_CATEGORIES
from .pope import POPE_CATEGORIES

__all__ = ["BENCHMARKS", "METRICS", "Benchmark", "Scoring", "EvalSet", "read_eval", "format_choices",
           "metric_choices", "MME_CATEGORIES", "POPE_CATEGORIES", "LLAVA_SHORT_ANSWER"]


def format_choices() -> tuple[str, ...]:
    """``--format`` values: ``auto`` and every registered benchmark."""
    return ("auto", *BENCHMARKS.names())


def metric_choices() -> tuple[str, ...]:
    """``--metric`` values: ``auto`` (the data's own) and every registered scoring."""
    return ("auto", *METRICS.names())


def read_eval(data: str | Path, *, answers: str | Path | None = None, image_folder: str | Path | None = None,
              format: str = "auto", strict: bool = True) -> EvalSet:
    """Read a question file (``--data``) with its ground truth (``--answers``).

    ``image_folder`` (``--image-folder``) is the folder the question file's image
    names are relative to; without it, the question file's own folder (the MME
    release folder for ``mme``). ``format`` is ``auto`` or a name in :data:`BENCHMARKS`. Without
    ``strict`` (``--on-error skip``) a horizon JSONL line that is not a sample becomes one carrying its problem.
    """
    if format != "auto" and format not in BENCHMARKS:
        raise HorizonError(f"--format {format!r}: unknown format; use one of {', '.join(format_choices())}")
    data = Path(data)
    if not data.exists():
        raise HorizonError(f"{missing_message(data, 'question file')} (--data)")
    if not data.is_file():
        raise HorizonError(f"{data}: is a folder, not a question file (--data)")
    answers = Path(answers) if answers is not None else None
    if answers is not None and not answers.exists():
        raise HorizonError(f"{missing_message(answers, 'answers')} (--answers)")
    folder = Path(image_folder) if image_folder is not None else None

    benchmark = BENCHMARKS.get(_detect(data, answers) if format == "auto" else format)
    if answers is None and benchmark.answers_hint is not None:
        raise HorizonError(f"{data}: {benchmark.answers_hint}")
    evalset = benchmark.read(data, answers, folder, strict=strict)
    files = [str(data.resolve())] + [f"{flag}={p.resolve()}" for flag, p in (("answers", answers),
                                                                         ("images", folder)) if p is not None]
    evalset.source = " ".join(files)
    return evalset


# ---------------------------------------------------------------------------
# format detection


def _hint(benchmarks: list[Benchmark]) -> str:
    return "pass --format " + "|".join(b.name for b in benchmarks)


def _detect(data: Path, answers: Path | None) -> str:
    start = head(data)
    documents = [b for b in BENCHMARKS if b.claims_data(data, start)]
    if len(documents) == 1:
        return documents[0].name
    lineno, first = first_object(data)
    if isinstance(first, dict) and "question_id" in first and "text" in first:
        return _detect_llava(data, answers)
    if isinstance(first, dict) and "id" in first and "answer" in first:
        return "jsonl"
    raise HorizonError(f"{data}:{lineno}: cannot tell the format (neither question_id+text nor id+answer); "
                       f"{_hint(list(BENCHMARKS))}")


def _detect_llava(data: Path, answers: Path | None) -> str:
    llava = [b for b in BENCHMARKS if b.llava_questions]
    questions = llava_questions(data)
    claims = [b.name for b in llava if b.claims_questions(questions)]
    by_data = claims[0] if len(claims) == 1 else None
    by_answers = None
    if answers is not None:
        sureness = {b.name: b.claims_answers(answers) for b in llava}
        best = max(sureness.values(), default=0)
        top = [name for name, s in sureness.items() if s == best and s > 0]
        by_answers = top[0] if len(top) == 1 else None
    if by_data and by_answers and by_data != by_answers:
        raise HorizonError(f"{data}: the questions look like {by_data} but --answers {answers} looks like "
                           f"{by_answers}; {_hint(llava)}")
    fmt = by_data or by_answers
    if fmt is None:
        names = ", ".join(b.name for b in llava)
        clue = ("no --answers was given" if answers is None else
                f"--answers {answers} is none of their ground-truth files")
        raise HorizonError(f"{data}: a LLaVA question file whose categories do not tell {names} apart "
                           f"and {clue}; {_hint(llava)} with --answers")
    return fmt
