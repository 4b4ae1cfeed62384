"""horizon's own dataset file (horizon JSONL (the README's Dataset file section)), for ``--format jsonl``.

One ``{"id", "image" (relative to the file), "question", "answer": str | [str],
"task"}`` per line (``horizon.data.read_jsonl``); the question is used
verbatim (no instruction is appended). ``--answers`` and ``--image-folder``
are not used.

Scoring: metric ``vqa`` (VQAv2's official per-question accuracy,
:mod:`horizon.benchmarks.vqav2`) when every sample has at least 10 answers
(VQA-style human answers), else ``exact``.

``exact`` is horizon's own convention, not an official evaluator: the
prediction is right when, after trimming surrounding space, lower-casing and
dropping trailing periods, it equals one of the answers treated the same way
(`` Red.`` matches ``red``; ``a red bus`` does not). The number is the share
of samples answered right.
"""

from __future__ import annotations

from pathlib import Path

from ..data import Sample, read_jsonl
from ..errors import HorizonError
from .base import BENCHMARKS, METRICS, Benchmark, EvalSet, Scoring

__all__ = ["Jsonl", "ExactMatch", "exact_match"]


def _norm(text: str) -> str:
    return text.strip().lower().rstrip(".")


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when the prediction equals an answer after trimming, lower-casing and dropping trailing periods."""
    return float(_norm(prediction) in {_norm(a) for a in answers})


class ExactMatch(Scoring):
    name = "exact"
    official = ("exact match after trimming, lower-casing and dropping trailing periods -- horizon's own convention, "
                "not an official evaluator's")

    def score(self, prediction: str, sample: Sample) -> float:
        return exact_match(prediction, list(sample.answers))


class Jsonl(Benchmark):
    name = "jsonl"
    prompt = ""
    answers_hint = None
    llava_questions = False
    scoring = ExactMatch()

    def read(self, data: Path, answers: Path | None, image_folder: Path | None, *,
             strict: bool = True) -> EvalSet:
        if answers is not None:
            raise HorizonError(f"{data}: --answers is not used with --format jsonl (each line carries its 'answer')")
        if image_folder is not None:
            raise HorizonError(f"{data}: --image-folder is not used with --format jsonl "
                               f"(images are relative to the file itself)")
        samples = read_jsonl(data, strict=strict)
        readable = [s for s in samples if not s.problem] or samples  # a skipped line carries no answers
        metric = "vqa" if all(len(s.answers) >= 10 for s in readable) else self.scoring.name
        return EvalSet(samples, metric, self.name)


METRICS.register(ExactMatch.name, Jsonl.scoring)
BENCHMARKS.register(Jsonl.name, Jsonl())
