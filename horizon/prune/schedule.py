"""Pruning schedules: stages ``method@layer:keep`` applied from their layer on.

``divprune@0:284,random@20:38`` keeps 284 visual tokens chosen by DivPrune
from layer 0 and, from layer 20, 38 of those chosen at random. The average
number of visual tokens over all L layers is what the paper reports:
(284 * 20 + 38 * 12) / 32 = 191.75, the paper's "192", for a 32-layer model.

A budget may be a percentage of the sample's visual tokens (all its images
together), ``divprune@0:50%``, so one schedule fits images of any resolution.
For a sample with n visual tokens, p% resolves to ``floor(p * n / 100 + 1/2)``
tokens (round half up, computed exactly on the decimal text), at least 1
unless p is 0; p may have decimals and must lie in [0, 100]. Every stage's
percentage is of the sample's *original* n, not of what earlier stages left;
when that exceeds what is present the stage is capped (below).

Capping: a stage whose budget (fixed, or resolved from a percentage) exceeds
the visual tokens present before it keeps all of them; `parse_schedule(...,
cap=True)` allows that and `prune_eval` records it per sample. Budgets that
grow along a schedule in the same unit (``random@1:20,random@2:30``,
``divprune@0:25%,random@2:50%``) contradict themselves whatever the sample
and are an error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

from ..errors import HorizonError
from .strategies import METHODS

STAGE = re.compile(r"^\s*([a-z_]+)\s*@\s*(\d+)\s*:\s*(\S+?)\s*$")
COUNT = re.compile(r"^\d+$")
PERCENT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)%$")


def resolve_percent(percent: str | Decimal, n_visual: int) -> int:
    """Tokens that ``percent``% of ``n_visual`` means: round half up, at least 1 unless the percentage is 0."""
    p = Decimal(percent)
    count = int((p * n_visual / 100 + Decimal("0.5")).to_integral_value(rounding=ROUND_FLOOR))
    return max(count, 1) if p > 0 else 0


def parse_budget(text: str, where: str = "--schedule") -> int | Decimal:
    """A stage budget: a token count (int) or a percentage (Decimal, the number before %)."""
    text = text.strip()
    if COUNT.match(text):
        return int(text)
    match = PERCENT.match(text)
    if not match:
        raise HorizonError(f"{where}: budget {text!r} is neither a token count (e.g. 288) nor a percentage of "
                           "the sample's visual tokens (e.g. 50%)")
    try:
        p = Decimal(match.group(1))
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise HorizonError(f"{where}: budget {text!r} is not a number") from None
    if p > 100:
        raise HorizonError(f"{where}: budget {text!r} is more than 100% of the sample's visual tokens")
    return p


def format_budget(budget: int | Decimal) -> str:
    return f"{budget}%" if isinstance(budget, Decimal) else str(budget)


@dataclass(frozen=True)
class Stage:
    method: str
    layer: int
    keep: int  # the budget in tokens (a percentage resolved for the sample)
    percent: Decimal | None = None  # the budget as written, when it is a percentage of the sample's visual tokens

    def kept(self, available: int) -> int:
        """Tokens the stage actually keeps of ``available`` present.

        A budget above ``available`` keeps them all (capped). DART rounds its
        budget to its pivots: 4 + 8 * floor(keep / 8), at most ``available``
        (keep < 8 keeps the 4 visual pivots; fewer than 4 text tokens after
        the image would give fewer, which this count cannot know).
        """
        if self.keep > available:
            return available
        if self.method == "dart":
            return min(available, 4 + 8 * (self.keep // 8))
        return self.keep

    @property
    def budget(self) -> str:
        """The budget as written: ``288`` or ``50%``."""
        return format_budget(self.percent) if self.percent is not None else str(self.keep)


@dataclass(frozen=True)
class Schedule:
    stages: tuple[Stage, ...]

    def tokens_at(self, layer: int, n_visual: int) -> int:
        """Visual tokens present in ``layer``'s input."""
        present = n_visual
        for stage in self.stages:
            if stage.layer <= layer:
                present = stage.kept(present)
        return present

    def average_tokens(self, n_layers: int, n_visual: int) -> float:
        return sum(self.tokens_at(l, n_visual) for l in range(n_layers)) / n_layers

    def capped(self, n_visual: int) -> list[Stage]:
        """The stages whose budget exceeds the visual tokens present before them (they keep them all)."""
        return [s for s in self.stages if s.keep > self.tokens_at(s.layer - 1, n_visual)]

    @property
    def text(self) -> str:
        """The schedule as written (percentages as percentages)."""
        return ",".join(f"{s.method}@{s.layer}:{s.budget}" for s in self.stages)

    def __str__(self) -> str:
        """The schedule with concrete token counts (percentages resolved for the sample)."""
        return ",".join(f"{s.method}@{s.layer}:{s.keep}" for s in self.stages)


def check_schedule_text(text: str) -> None:
    """Refuse a --schedule that names no stage (``''``, ``','``) or has an empty one, before any model loads.

    An empty text used to run the unpruned model silently; the unpruned model is asked for as ``none``.
    """
    if not isinstance(text, str):
        raise HorizonError(f"--schedule must be text such as divprune@0:50% or none, got {text!r}")
    if text.strip() == "none":
        return
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise HorizonError(f"--schedule {text!r} is empty: give stages method@layer:keep (e.g. divprune@0:50%), "
                           "or none for the unpruned model")
    empty = [i for i, p in enumerate(parts, 1) if not p]
    if empty:
        raise HorizonError(f"--schedule {text!r}: stage {empty[0]} is empty (a stray comma?); separate stages "
                           "method@layer:keep by single commas")


def parse_schedule(text: str, n_layers: int, n_visual: int, *, cap: bool = False) -> Schedule:
    """Parse and validate a schedule for a model of ``n_layers`` with ``n_visual`` visual tokens.

    Percentage budgets resolve for ``n_visual`` (see the module docstring).
    A budget above the visual tokens present before its stage is an error,
    unless ``cap``: then the stage keeps them all (``Schedule.capped`` lists it).
    """
    stages: list[Stage] = []
    for part in text.split(","):
        match = STAGE.match(part)
        if not match:
            raise HorizonError(f"--schedule {text!r}: stage {part.strip()!r} is not method@layer:keep")
        method, layer = match.group(1), int(match.group(2))
        budget = parse_budget(match.group(3), f"--schedule {text!r}: stage {part.strip()!r}")
        percent = budget if isinstance(budget, Decimal) else None
        keep = resolve_percent(budget, n_visual) if percent is not None else int(budget)
        if method not in METHODS:
            raise HorizonError(f"--schedule {text!r}: unknown method {method!r}; methods: {', '.join(METHODS)}")
        if layer >= n_layers:
            raise HorizonError(f"--schedule {text!r}: layer {layer} out of range: the model has {n_layers} "
                               f"decoder layers (0..{n_layers - 1})")
        available = Schedule(tuple(stages)).tokens_at(n_layers, n_visual)
        if method in ("fastv", "dart") and layer == 0:
            raise HorizonError(f"--schedule {text!r}: {method} reads the layer before its stage; "
                               f"use a layer >= 1 (e.g. {method}@2:{format_budget(budget)})")
        if method == "vtw" and keep != 0:
            raise HorizonError(f"--schedule {text!r}: vtw withdraws every visual token; write vtw@{layer}:0")
        if stages and layer <= stages[-1].layer:
            raise HorizonError(f"--schedule {text!r}: stage layers must increase ({layer} after {stages[-1].layer})")
        for earlier in stages:
            # the same unit growing along the schedule cannot fit any sample: the text contradicts itself
            if percent is not None and earlier.percent is not None and percent > earlier.percent:
                raise HorizonError(f"--schedule {text!r}: {method}@{layer} keeps {format_budget(percent)} but "
                                   f"{earlier.method}@{earlier.layer} before it keeps only "
                                   f"{format_budget(earlier.percent)}")
            if percent is None and earlier.percent is None and keep > earlier.kept(math.inf):
                raise HorizonError(f"--schedule {text!r}: {method}@{layer} keeps {keep} but only "
                                   f"{earlier.kept(math.inf)} visual tokens are left by "
                                   f"{earlier.method}@{earlier.layer} before it")
        if keep > available and not cap:
            raise HorizonError(f"--schedule {text!r}: {method}@{layer} keeps {keep} but only {available} "
                               "visual tokens are available there")
        stages.append(Stage(method, layer, keep, percent))
    return Schedule(tuple(stages))
