"""Pruning strategies and schedules on hand-checkable inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from horizon.errors import HorizonError
from horizon.prune import parse_schedule, select
from horizon.prune.strategies import _cosine_distance


def test_divprune_is_max_min_on_a_hand_checkable_set():
    angles = [0, 10, 90, 180, 185]  # degrees; cosine distance is 1 - cos(angle difference)
    hidden = torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles])
    visual = torch.arange(5)
    kept = select("divprune", visual, 3, hidden=hidden)
    # first: 90 deg (farthest from its nearest neighbour); then 185 (farthest from 90); then 0
    assert kept.tolist() == [0, 2, 4]
    dist = _cosine_distance(hidden)
    def spread(ix):
        return min(dist[i, j] for i, j in itertools.combinations(ix, 2))
    best = max(spread(c) for c in itertools.combinations(range(5), 3))
    assert spread(kept.tolist()) == pytest.approx(float(best))


@pytest.mark.parametrize("budget", [8, 16, 20, 37, 64])
def test_dart_keeps_4_plus_8_floor_budget_over_8(budget):
    torch.manual_seed(0)
    keys = torch.randn(130, 16)
    visual, text = torch.arange(5, 105), torch.cat([torch.arange(5), torch.arange(105, 130)])
    kept = select("dart", visual, budget, keys=keys, text=text)
    assert len(kept) == 4 + 8 * (budget // 8)
    assert len(set(kept.tolist())) == len(kept) and set(kept.tolist()) <= set(visual.tolist())
    top4 = visual[torch.argsort(keys[visual].abs().sum(-1), descending=True)[:4]]
    assert set(top4.tolist()) <= set(kept.tolist())  # the visual pivots are kept


def test_fastv_keeps_what_the_last_token_attends_to():
    attention = torch.zeros(2, 10, 10)
    attention[0, -1, [3, 5, 7]] = torch.tensor([0.5, 0.1, 0.3])
    attention[1, -1, [3, 5, 7]] = torch.tensor([0.1, 0.6, 0.3])  # head means: 3 -> .3, 5 -> .35, 7 -> .3
    attention[:, 0, 4] = 9.0  # other rows must not matter
    kept = select("fastv", torch.arange(2, 8), 2, attention=attention)
    assert kept.tolist() in ([3, 5], [5, 7])
    assert 5 in kept.tolist() and 4 not in kept.tolist()


def test_random_is_reproducible_per_seed_and_vtw_info():
    visual = torch.arange(10, 60)
    a = select("random", visual, 7, generator=torch.Generator().manual_seed(1))
    b = select("random", visual, 7, generator=torch.Generator().manual_seed(1))
    c = select("random", visual, 7, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c) and len(set(a.tolist())) == 7
    assert select("vtw", visual, 0).numel() == 0
    info = torch.zeros(50)
    info[[3, 40, 7]] = torch.tensor([1.0, 3.0, 2.0])
    assert select("info", visual, 2, info=info).tolist() == [17, 50]


def test_schedule_average_tokens_and_errors():
    s = parse_schedule("divprune@0:284,random@20:38", n_layers=32, n_visual=576)
    assert s.average_tokens(32, 576) == 191.75 and round(s.average_tokens(32, 576)) == 192  # the paper's "192"
    assert str(s) == "divprune@0:284,random@20:38"
    assert s.tokens_at(19, 576) == 284 and s.tokens_at(20, 576) == 38
    d = parse_schedule("dart@2:252,random@20:38", n_layers=32, n_visual=576)
    assert d.tokens_at(0, 576) == 576 and d.tokens_at(2, 576) == 252
    for bad, message in [("divprune@0:600", "only 576"), ("magic@0:10", "unknown method"),
                         ("random@40:10", "out of range"), ("random@5:100,random@3:50", "must increase"),
                         ("random@5", "method@layer:keep"), ("random@5:100,fastv@9:200", "only 100"),
                         ("vtw@10:5", "vtw@10:0")]:
        with pytest.raises(HorizonError, match=message):
            parse_schedule(bad, n_layers=32, n_visual=576)
    with pytest.raises(HorizonError, match="cannot keep"):
        select("random", torch.arange(4), 5, generator=torch.Generator())
