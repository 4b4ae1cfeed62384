"""Token pruning: selection strategies and layer schedules (issue 5, in progress).

What is here is the model-independent core: which visual tokens each method
keeps given what the model exposes at a layer (``strategies``), and schedules
of stages ``method@layer:keep`` with the paper's average-token accounting
(``schedule``). Applying a schedule inside generation and the evaluation
commands are not built yet.
"""

from .schedule import Schedule, Stage, parse_schedule
from .strategies import METHODS, select

__all__ = ["Schedule", "Stage", "parse_schedule", "METHODS", "select"]
