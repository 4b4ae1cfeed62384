"""Record types shared by the analysis, the summary files, the figures and pruning.

A :class:`Horizon` is the one way a horizon travels through horizon: the
statistics build it, ``summary.json`` / ``summary.csv`` hold its fields, the
figures mark it and pruning switches at it. :meth:`Horizon.columns` writes it
and :meth:`Horizon.from_record` reads it back, nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import HorizonError

# What a curve's horizon can be:
FOUND = "found"  # information vanishes at `layer` and stays vanished to the last scanned layer
PERSISTS = "persists"  # still information at the last scanned layer: no horizon inside the model
NO_INFORMATION = "no-information"  # never above the numerical floor: no information at any layer
UNDETERMINED = "undetermined"  # fewer than two samples: nothing can be tested
STATUSES = (FOUND, PERSISTS, NO_INFORMATION, UNDETERMINED)

VANISHING_TESTS = ("not-significant", "equivalence")


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class Horizon:
    """One curve's information horizon.

    ``layer`` is the first decoder layer from which the information has
    vanished for good, with a bootstrap CI ``[lo, hi]``; it is set only when
    ``status`` is ``found``. ``test`` is the vanishing test that decided it.
    """

    status: str
    layer: float | None = None
    lo: float | None = None
    hi: float | None = None
    n_layers: int | None = None
    test: str = "not-significant"

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise HorizonError(f"unknown horizon status {self.status!r}; statuses: {', '.join(STATUSES)}")

    @property
    def found(self) -> bool:
        return self.status == FOUND and self.layer is not None

    @property
    def switch(self) -> int | None:
        """The horizon rounded up to a whole layer: where pruning at the horizon starts."""
        return math.ceil(self.layer) if self.found else None

    def relative(self, value: float | None) -> float | None:
        return value / self.n_layers if value is not None and self.n_layers else None

    def describe(self) -> str:
        """Short text for tables: ``8 [6, 10]``, ``persists``, ``no information``, ``undetermined``."""
        if self.found:
            ci = f" [{self.lo:.0f}, {self.hi:.0f}]" if self.lo is not None and self.hi is not None else ""
            return f"{self.layer:.0f}{ci}"
        return {PERSISTS: "persists", NO_INFORMATION: "no information", UNDETERMINED: "undetermined"}[self.status]

    def columns(self) -> dict[str, Any]:
        """The summary-table columns of this horizon (NaN where there is no value)."""
        nan = math.nan
        val = (lambda v: nan if v is None else v)
        return {
            "horizon": val(self.layer), "horizon_lo": val(self.lo), "horizon_hi": val(self.hi),
            "relative_horizon": val(self.relative(self.layer)), "relative_horizon_lo": val(self.relative(self.lo)),
            "relative_horizon_hi": val(self.relative(self.hi)), "horizon_status": self.status,
            "vanishing_test": self.test,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Horizon":
        """Read a summary row: a summary.json record (``horizon_ci``) or a summary.csv row (``horizon_lo``/``_hi``).

        Summaries written before statuses existed have none: a horizon value
        means ``found``, a missing one ``persists`` (as they read it).
        """
        layer = _number(record.get("horizon"))
        ci = record.get("horizon_ci")
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            lo, hi = _number(ci[0]), _number(ci[1])
        else:
            lo, hi = _number(record.get("horizon_lo")), _number(record.get("horizon_hi"))
        status = record.get("horizon_status")
        if not isinstance(status, str) or not status:
            status = FOUND if layer is not None else PERSISTS
        n_layers = _number(record.get("n_layers"))
        test = record.get("vanishing_test")
        return cls(status=status, layer=layer if status == FOUND else None, lo=lo if status == FOUND else None,
                   hi=hi if status == FOUND else None, n_layers=int(n_layers) if n_layers is not None else None,
                   test=test if isinstance(test, str) and test else "not-significant")
