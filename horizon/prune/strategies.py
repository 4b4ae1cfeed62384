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


def dart_keep(visual: torch.Tensor, keep: int, *, keys: torch.Tensor, text: torch.Tensor,
              hidden: torch.Tensor | None = None, visual_pivots: int = 4, text_pivots: int = 4,
              **_) -> torch.Tensor:
    """DART: pivots by key L1 norm (4 visual + 4 text by default); per pivot the least similar visual tokens.

    Pivots are the tokens whose keys have the largest L1 norm. Duplication is
    cosine similarity between ``hidden`` states (the keys when none are
    given). Keeps the visual pivots plus floor(keep / pivots) tokens per
    pivot, picked in turn from the tokens not yet kept:
    ``visual_pivots + pivots * floor(keep / pivots)`` tokens for budget
    ``keep`` (4 + 8 * floor(keep / 8) with the defaults).
    """
    norms = keys.float().abs().sum(-1)
    v_piv = visual[torch.argsort(norms[visual], descending=True, stable=True)[:visual_pivots]]
    t_piv = text[torch.argsort(norms[text], descending=True, stable=True)[:text_pivots]]
    pivots = torch.cat([v_piv, t_piv])
    per_pivot = keep // max(len(pivots), 1)
    kept = set(v_piv.tolist())
    unit = torch.nn.functional.normalize((keys if hidden is None else hidden).float(), dim=-1)
    for p in pivots.tolist():
        pool = torch.tensor([v for v in visual.tolist() if v not in kept], dtype=torch.long)
        if len(pool) == 0:
            break
        sim = unit[pool] @ unit[p]
        kept.update(pool[torch.argsort(sim, stable=True)[:per_pivot]].tolist())
    return torch.sort(torch.tensor(sorted(kept), dtype=torch.long)).values


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
