"""Pruning schedules: stages ``method@layer:keep`` applied from their layer on.

``divprune@0:284,random@20:38`` keeps 284 visual tokens chosen by DivPrune
from layer 0 and, from layer 20, 38 of those chosen at random. The average
number of visual tokens over all L layers is what the paper reports:
(284 * 20 + 38 * 12) / 32 = 191.75, the paper's "192", for a 32-layer model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import HorizonError
from .strategies import METHODS

STAGE = re.compile(r"^\s*([a-z_]+)\s*@\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Stage:
    method: str
    layer: int
    keep: int  # the budget

    def kept(self, available: int) -> int:
        """Tokens the method actually keeps: DART rounds its budget to its pivots (4 + 8 * floor(keep / 8))."""
        if self.method == "dart":
            return min(available, 4 + 8 * (self.keep // 8))
        return self.keep


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

    def __str__(self) -> str:
        return ",".join(f"{s.method}@{s.layer}:{s.keep}" for s in self.stages)


def parse_schedule(text: str, n_layers: int, n_visual: int) -> Schedule:
    """Parse and validate a schedule for a model of ``n_layers`` with ``n_visual`` visual tokens."""
    stages = []
    for part in text.split(","):
        match = STAGE.match(part)
        if not match:
            raise HorizonError(f"--schedule {text!r}: stage {part.strip()!r} is not method@layer:keep")
        method, layer, keep = match.group(1), int(match.group(2)), int(match.group(3))
        if method not in METHODS:
            raise HorizonError(f"--schedule {text!r}: unknown method {method!r}; methods: {', '.join(METHODS)}")
        if layer >= n_layers:
            raise HorizonError(f"--schedule {text!r}: layer {layer} out of range: the model has {n_layers} "
                               f"decoder layers (0..{n_layers - 1})")
        available = Schedule(tuple(stages)).tokens_at(n_layers, n_visual)
        if method in ("fastv", "dart") and layer == 0:
            raise HorizonError(f"--schedule {text!r}: {method} reads the layer before its stage; "
                               f"use a layer >= 1 (e.g. {method}@2:{keep})")
        if method == "vtw" and keep != 0:
            raise HorizonError(f"--schedule {text!r}: vtw withdraws every visual token; write vtw@{layer}:0")
        if stages and layer <= stages[-1].layer:
            raise HorizonError(f"--schedule {text!r}: stage layers must increase ({layer} after {stages[-1].layer})")
        if keep > available:
            raise HorizonError(f"--schedule {text!r}: {method}@{layer} keeps {keep} but only {available} "
                               "visual tokens are available there")
        stages.append(Stage(method, layer, keep))
    return Schedule(tuple(stages))
