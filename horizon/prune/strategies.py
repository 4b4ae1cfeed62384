"""Which visual tokens to keep at a layer, per pruning method.

Every strategy returns the kept visual positions (sorted) out of ``visual``,
the visual positions still present. Inputs are what the model exposes at the
layer: hidden states (S, D), attention weights (heads, S, S) of the previous
layer, keys (S, d_k), or per-position information scores from a horizon scan.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import HorizonError


def _top(scores: torch.Tensor, visual: torch.Tensor, keep: int) -> torch.Tensor:
    order = torch.argsort(scores, descending=True, stable=True)[:keep]
    return torch.sort(visual[order]).values


def random_keep(visual: torch.Tensor, keep: int, *, generator: torch.Generator, **_) -> torch.Tensor:
    """Uniformly random subset (seeded through ``generator``)."""
    return torch.sort(visual[torch.randperm(len(visual), generator=generator)[:keep]]).values


def fastv_keep(visual: torch.Tensor, keep: int, *, attention: torch.Tensor, **_) -> torch.Tensor:
    """FastV: the tokens the last position attends to most (previous layer, mean over heads)."""
    return _top(attention[:, -1, visual].float().mean(0), visual, keep)


def _cosine_distance(x: torch.Tensor) -> torch.Tensor:
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    return 1.0 - x @ x.T


def divprune_keep(visual: torch.Tensor, keep: int, *, hidden: torch.Tensor, **_) -> torch.Tensor:
    """DivPrune: greedy max-min diversity under 1 - cosine similarity.

    The first pick is the token farthest from its nearest neighbour; each next
    pick maximises its distance to the nearest token already picked.
    """
    if keep <= 0:
        return visual[:0]
    dist = _cosine_distance(hidden[visual])
    n = len(visual)
    nearest = dist.masked_fill(torch.eye(n, dtype=torch.bool), float("inf")).min(1).values
    picked = [int(torch.argmax(nearest))]
    to_set = dist[picked[0]].clone()
    to_set[picked[0]] = -float("inf")
    for _ in range(1, min(keep, n)):
        nxt = int(torch.argmax(to_set))
        picked.append(nxt)
        to_set = torch.minimum(to_set, dist[nxt])
        to_set[picked] = -float("inf")
    return torch.sort(visual[torch.tensor(picked)]).values


def dart_pivots(visual: torch.Tensor, keys: torch.Tensor, text: torch.Tensor, *, visual_pivots: int = 4,
                text_pivots: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """DART's pivots: (visual pivots, text pivots), each in decreasing key L1 norm.

    Visual pivots are the ``visual_pivots`` visual positions whose keys
    ``keys`` (S, d; every key head of a token laid side by side) have the
    largest L1 norm. Text pivots are the ``text_pivots`` largest-norm
    positions among the text positions *after the last visual token* (the
    question and the answer prompt): ``text`` may hold every text position,
    and the ones before the image (system prompt, role tag) are never
    candidates. Fewer text tokens than ``text_pivots`` after the image give
    fewer text pivots.
    """
    norms = keys.float().abs().sum(-1)
    after = text[text > visual.max()] if len(visual) else text[:0]
    v_piv = visual[torch.argsort(norms[visual], descending=True, stable=True)[:visual_pivots]]
    t_piv = after[torch.argsort(norms[after], descending=True, stable=True)[:text_pivots]]
    return v_piv, t_piv


def dart_keep(visual: torch.Tensor, keep: int, *, keys: torch.Tensor, hidden: torch.Tensor, text: torch.Tensor,
              visual_pivots: int = 4, text_pivots: int = 4, **_) -> torch.Tensor:
    """DART: per pivot, the visual tokens least cosine-similar to it; keeps 4 + 8 * floor(keep / 8).

    1. Pivots (``dart_pivots``): the 4 visual tokens and the 4 text tokens
       after the image with the largest key L1 norm.
    2. Per pivot ``floor(keep / (visual_pivots + text_pivots))`` tokens: the
       visual tokens not yet kept (visual pivots included from the start)
       with the lowest cosine similarity to the pivot, measured between the
       rows of ``hidden`` (the normalised hidden states entering the layer).
    3. Pivots are visited in the order DART's reference code visits them:
       the iteration order of a Python set of their positions, built from the
       visual then the text pivots (for integers CPython orders a set by
       position modulo its table size). The greedy picks depend on that order,
       so horizon follows it to select what the reference selects.
    4. Kept: the visual pivots plus every pick, sorted by position; the text
       pivots stay text tokens. That is ``visual_pivots + pivots * floor(keep
       / pivots)`` visual tokens (4 + 8 * floor(keep / 8) by default), fewer
       only when the visual tokens run out or fewer than ``text_pivots`` text
       tokens follow the image (the per-pivot share stays ``floor(keep / 8)``).

    Norms and similarities are computed in float32; equal norms and equal
    similarities go to the lower position.
    """
    v_piv, t_piv = dart_pivots(visual, keys, text, visual_pivots=visual_pivots, text_pivots=text_pivots)
    per_pivot = keep // max(visual_pivots + text_pivots, 1)
    order = list(set(v_piv.tolist() + t_piv.tolist()))
    kept = set(v_piv.tolist())
    pool = [v for v in visual.tolist() if v not in kept]  # increasing position
    unit = torch.nn.functional.normalize(hidden.float(), dim=-1)
    for p in order:
        if not pool or per_pivot == 0:
            break
        rows = torch.tensor(pool, dtype=torch.long)
        picks = set(rows[torch.argsort(unit[rows] @ unit[p], stable=True)[:per_pivot]].tolist())
        kept |= picks
        pool = [v for v in pool if v not in picks]
    return torch.tensor(sorted(kept), dtype=torch.long)


def vtw_keep(visual: torch.Tensor, keep: int, **_) -> torch.Tensor:
    """Visual token withdrawal: drop every visual token."""
    return visual[:0]


def info_keep(visual: torch.Tensor, keep: int, *, info: torch.Tensor, **_) -> torch.Tensor:
    """Keep the tokens with the most information in a horizon scan (``info`` per visual position)."""
    return _top(info.float(), visual, keep)


METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "random": random_keep, "fastv": fastv_keep, "divprune": divprune_keep, "dart": dart_keep,
    "vtw": vtw_keep, "info": info_keep,
}


def select(method: str, visual: torch.Tensor, keep: int, **inputs) -> torch.Tensor:
    """Kept visual positions for ``method`` (see METHODS); ``inputs`` are what it needs."""
    if method not in METHODS:
        raise HorizonError(f"unknown pruning method {method!r}; methods: {', '.join(METHODS)}")
    if keep > len(visual):
        raise HorizonError(f"{method}: cannot keep {keep} of {len(visual)} visual tokens")
    return METHODS[method](visual, keep, **inputs)
