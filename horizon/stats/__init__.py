"""Statistics of information curves: uniformity, the horizon, comparisons (the README's What is measured section).

Pure functions of DataFrames; no model needed. The pipeline:

1. ``sample_layer_stats``: per (model, task, metric, sample, layer), over the
   groups: mean information, uniformity (1 - Gini of the non-negative part),
   normalised entropy, share of the top 10% of groups. On run directories
   ``stream_sample_stats`` computes it a part at a time, so memory is bounded
   by one part and these per-sample summaries, not by the score rows.
2. ``curves``: per (model, task, metric, layer), means over samples with
   bootstrap CIs (samples resampled, seeded).
3. ``summarize``: per (model, task, metric) the horizon and the uniformity
   onset with bootstrap CIs, and the relative horizon h / L.
4. ``compare``: horizon differences between tasks (same model, in layers) and
   between models (same task, in relative depth) with a bootstrap CI and a
   permutation p-value.

Numerical floor: every run records the largest score that rounding alone
produces (``numerical_floor`` in run.json). Scores at or below it (in absolute
value) are set to 0 before anything else, so information below the floor is
zero. A curve whose mean information never rises above the floor has *no
information at any layer* (status ``no-information``): no horizon.

Horizon: the first scanned layer h such that at h and every later scanned
layer the mean information has *vanished*: it is at most the vanishing level
tau = max(``threshold`` x the curve's maximum, the floor). Two tests decide
"vanished", both one-sided one-sample t-tests across samples, Holm-corrected
over layers at level ``alpha``:

* ``not-significant`` (default): not significantly above tau. Lack of
  evidence counts as vanished, so few or noisy samples give earlier horizons.
* ``equivalence``: significantly below tau (TOST-style, one bound). Only
  evidence of absence counts, so few samples give later horizons: the safe
  reading when the horizon decides where pruning may go random.

If the last layer has not vanished there is no horizon (status ``persists``),
never "the last layer". Bootstrap resamples without a horizon count as
``n_layers`` (past the last layer) in the CI.

Modules: ``per_sample`` (loading runs, the per-sample statistics, streamed),
``horizon`` (curves, the horizon, the onset, the summary), ``compare``
(comparisons), ``agreement`` (estimated scores against exact ones:
correlations, top overlap, horizons). This package re-exports their public
names.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

from .agreement import agreement, agreement_summary, horizon_agreement
from .compare import compare, compare_pair
from .horizon import CurveEstimate, StatsParams, curves, estimate, holm, summarize
from .per_sample import (KEYS, SAMPLE_REQUIRED, SCORE_REQUIRED, load_runs, model_name, read_groups, read_scores,
                         run_sample_stats, sample_layer_stats, stream_sample_stats, tidy_scores)

__all__ = [
    "KEYS", "SAMPLE_REQUIRED", "SCORE_REQUIRED", "CurveEstimate", "StatsParams", "agreement", "agreement_summary",
    "analyze_frames", "compare", "compare_pair", "curves", "estimate", "holm", "horizon_agreement", "load_runs",
    "model_name", "read_groups", "read_scores", "run_sample_stats", "sample_layer_stats", "stream_sample_stats",
    "summarize", "tidy_scores",
]


def analyze_frames(runs: Sequence[dict[str, Any]], metric: str | None = None,
                   params: StatsParams | None = None) -> dict[str, Any]:
    """The whole analysis of loaded runs: per-sample stats (streamed from disk), curves, summary, comparisons."""
    params = params or StatsParams()
    per_sample = stream_sample_stats(runs, metric, params.top_share)
    return {"per_sample": per_sample, "curves": curves(per_sample, params), "summary": summarize(per_sample, params),
            "comparisons": compare(per_sample, params), "params": asdict(params)}
