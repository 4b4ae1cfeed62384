"""The benchmark interface and the two registries.

A **benchmark** (:class:`Benchmark`, registered in :data:`BENCHMARKS` under
its ``--format`` name) bundles what evaluating on it takes:

* ``read(data, answers, image_folder)``: its question and ground-truth files
  -> an :class:`EvalSet` of :class:`~horizon.data.Sample` objects;
* ``prompt``: the answer-format instruction LLaVA appends to its questions
  (used where the benchmark's own files lack it);
* ``scoring``: how an answer is scored, which the benchmark also exposes as
  ``score(prediction, sample)`` and ``aggregate(predictions)``.

A **scoring** (:class:`Scoring`, registered in :data:`METRICS` under its
``--metric`` name) is the per-sample score in [0, 1] and the numbers over a
set of predictions, with ``official`` saying in one line which evaluator it
reproduces or, where there is none, that the convention is horizon's. Most
benchmarks have one scoring of their own; horizon's JSONL borrows VQAv2's
when its samples carry 10 human answers.

Adding a benchmark: one module in this package defining a Benchmark (and its
Scoring if it is new), registering both, imported in ``__init__``; then one
line in the contract test's table of example files (tests/test_benchmark_contract.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import Sample
from ..registry import Registry

if TYPE_CHECKING:
    import pandas as pd

    from .files import LlavaQuestion

__all__ = ["EvalSet", "Scoring", "Benchmark", "BENCHMARKS", "METRICS", "LLAVA_SHORT_ANSWER"]

# The answer-format instruction LLaVA-1.5 appends to short-answer questions
# (TextVQA, VQAv2, MME, POPE, GQA, ...), newline included.
LLAVA_SHORT_ANSWER = "\nAnswer the question using a single word or phrase."


@dataclass
class EvalSet:
    """Samples to evaluate and how predictions on them are scored."""

    samples: list[Sample]
    metric: str  # a name in METRICS: "exact" | "vqa" | "textvqa" | "mme" | "pope" | ...
    format: str  # which reader produced it: a name in BENCHMARKS, or "samples"
    source: str | None = None  # the files read (questions, answers, images), recorded with results

    def __len__(self) -> int:
        return len(self.samples)


class Scoring(ABC):
    """How predictions are scored: per sample, then over a set of predictions."""

    #: the ``--metric`` name
    name: str = ""
    #: one line: the official evaluator this reproduces, or that the convention is horizon's own
    official: str = ""
    #: keys ``aggregate`` always returns; ``accuracy`` (in [0, 1]) is the headline
    keys: tuple[str, ...] = ("accuracy",)

    @abstractmethod
    def score(self, prediction: str, sample: Sample) -> float:
        """The score of one answer, in [0, 1]."""

    def aggregate(self, predictions: pd.DataFrame) -> dict[str, float]:
        """Numbers over one seed's predictions (columns ``score``, ``prediction``, ``task``, ``answers``
        and whatever :meth:`row_fields` added). The default: the mean per-sample score."""
        return {"accuracy": float(predictions.score.mean())}

    def row_fields(self, sample: Sample) -> dict[str, Any]:
        """Extra columns of a predictions row that :meth:`aggregate` needs (e.g. MME's image pair)."""
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class Benchmark(ABC):
    """A benchmark's files, prompt and scoring."""

    #: the ``--format`` name
    name: str = ""
    #: the instruction LLaVA appends to the question ("" when questions are used verbatim)
    prompt: str = ""
    #: what ``--answers`` must be, for the message when it is missing; None: the format takes no --answers
    answers_hint: str | None = None
    #: whether the questions may come as a LLaVA question file (``question_id``, ``image``, ``text``)
    llava_questions: bool = True

    #: the benchmark's official scoring (what ``score`` and ``aggregate`` use); every benchmark sets it
    scoring: Scoring

    @abstractmethod
    def read(self, data: Path, answers: Path | None, image_folder: Path | None, *,
             strict: bool = True) -> EvalSet:
        """Read ``--data`` with its ``--answers``; images relative to ``image_folder``.

        ``data`` exists and is a file; ``answers`` exists when given. Every
        problem with the files is a one-line HorizonError naming file and line.
        Without ``strict`` (``--on-error skip``) a reader whose lines are
        samples on their own (``jsonl``) may instead return a line it cannot
        read as a sample carrying its problem, recorded and skipped like any
        sample error; readers that pair questions with a separate answer file
        stay strict (a bad line there breaks the pairing, not one sample).
        """

    def score(self, prediction: str, sample: Sample) -> float:
        return self.scoring.score(prediction, sample)

    def aggregate(self, predictions: pd.DataFrame) -> dict[str, float]:
        return self.scoring.aggregate(predictions)

    # -- format=auto: clues, all optional ------------------------------------------------

    def claims_data(self, data: Path, start: str) -> bool:
        """Whether ``data`` (``start``: its first characters) is a file only this benchmark reads."""
        return False

    def claims_questions(self, questions: list[LlavaQuestion]) -> bool:
        """Whether a LLaVA question file's lines (their categories, ids) are this benchmark's."""
        return False

    def claims_answers(self, answers: Path) -> int:
        """How surely ``--answers`` is this benchmark's ground truth: 0 no, 1 maybe (e.g. by suffix),
        2 yes (by name or content)."""
        return 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


#: benchmarks by ``--format`` name
BENCHMARKS: Registry[Benchmark] = Registry("format", "--format")
#: scorings by ``--metric`` name
METRICS: Registry[Scoring] = Registry("metric", "--metric")
