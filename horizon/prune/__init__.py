"""Token pruning with the information horizon.

* ``strategies``: which visual tokens each method keeps, from what the model
  exposes at a layer (pure functions);
* ``schedule``: stages ``method@layer:keep`` and the paper's average-token accounting;
* ``generate``: greedy generation with a schedule applied at prefill and KV-cached decoding;
* ``evaluate``: ``prune_eval`` -- scored answers, seeds, cost, a resumable directory;
* ``grid``: methods x budgets x switch layers, with trade-off figures.

Question files and their official scoring are :mod:`horizon.benchmarks`
(``read_eval`` and ``EvalSet`` are re-exported here).
"""

from ..benchmarks import EvalSet, read_eval
from .evaluate import PruneConfig, PruneResult, prune_eval
from .generate import Generation, generate
from .grid import GridConfig, prune_grid
from .schedule import Schedule, Stage, parse_schedule
from .strategies import METHODS, select

__all__ = [
    "Schedule", "Stage", "parse_schedule", "METHODS", "select", "generate", "Generation",
    "prune_eval", "PruneConfig", "PruneResult", "prune_grid", "GridConfig", "read_eval", "EvalSet",
]
