"""Pruning strategies and schedules on hand-checkable inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from horizon.errors import HorizonError
from horizon.prune import parse_schedule, select
from horizon.prune.strategies import _cosine_distance, dart_pivots

from dart_reference import reference_dart


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


def _norm_order_dart(visual, keep, keys, hidden, text_after, n_piv=4):
    """DART's greedy, but visiting the visual pivots then the text pivots in decreasing key L1 norm."""
    l1 = keys.abs().sum(-1)
    v = [visual[i] for i in torch.argsort(l1[visual], descending=True)[:n_piv].tolist()]
    t = [text_after[i] for i in torch.argsort(l1[text_after], descending=True)[:n_piv].tolist()]
    unit = torch.nn.functional.normalize(hidden, dim=-1)
    kept, pool = set(v), [x for x in visual if x not in v]
    for p in v + t:
        sim = torch.stack([unit[x] @ unit[p] for x in pool])
        picks = {pool[i] for i in torch.argsort(sim)[: keep // (2 * n_piv)].tolist()}
        kept |= picks
        pool = [x for x in pool if x not in picks]
    return sorted(kept)


@pytest.mark.parametrize("budget", [8, 16, 20, 37, 64])
def test_dart_keeps_4_plus_8_floor_budget_over_8_as_the_reference_does(budget):
    torch.manual_seed(0)
    keys, hidden = torch.randn(130, 16), torch.randn(130, 24)
    visual, text = torch.arange(5, 105), torch.cat([torch.arange(5), torch.arange(105, 130)])
    kept = select("dart", visual, budget, keys=keys, hidden=hidden, text=text)
    assert len(kept) == 4 + 8 * (budget // 8)
    assert kept.tolist() == sorted(set(kept.tolist())) and set(kept.tolist()) <= set(visual.tolist())
    top4 = visual[torch.argsort(keys[visual].abs().sum(-1), descending=True)[:4]]
    assert set(top4.tolist()) <= set(kept.tolist())  # the visual pivots are kept
    expected, _, _ = reference_dart(keys.T[None, :, :, None], hidden, 5, 100, budget)
    assert kept.tolist() == expected


def test_dart_text_pivots_are_after_the_image_never_the_system_prompt():
    # 0..5 system prompt, 6..29 image, 30..37 question and answer prompt
    torch.manual_seed(1)
    keys, hidden = torch.randn(38, 8), torch.randn(38, 12)
    keys[2] *= 100  # the system prompt holds the largest key norm of all
    visual = torch.arange(6, 30)
    text = torch.cat([torch.arange(6), torch.arange(30, 38)])
    v_piv, t_piv = dart_pivots(visual, keys, text)
    l1 = keys.abs().sum(-1)
    assert int(torch.argmax(l1[text])) == 2  # what the old rule (every text token) would have made a pivot
    assert t_piv.tolist() == (torch.argsort(l1[30:], descending=True)[:4] + 30).tolist()
    assert v_piv.tolist() == (torch.argsort(l1[6:30], descending=True)[:4] + 6).tolist()
    kept = select("dart", visual, 16, keys=keys, hidden=hidden, text=text)
    assert kept.tolist() == reference_dart(keys.T[None, :, :, None], hidden, 6, 24, 16)[0]
    # an image at the very end leaves no text pivots: only the 4 visual pivots steer the picks
    v_only, t_none = dart_pivots(torch.arange(30, 38), keys, torch.arange(30))
    assert t_none.numel() == 0 and len(v_only) == 4


def test_dart_pivots_rank_keys_by_l1_not_l2_norm():
    keys = torch.tensor([[3.0, 0, 0, 0], [0.9, 0.9, 0.9, 0.9], [0.5, 0.5, 0, 0], [2.0, 0, 0, 0]])
    # L1: 3.0, 3.6, 1.0, 2.0 -> 1 first; L2: 3.0, 1.8, 0.71, 2.0 -> 0 first
    v_piv, _ = dart_pivots(torch.arange(3), keys, torch.tensor([3]), visual_pivots=1, text_pivots=1)
    assert v_piv.tolist() == [1]
    v2, t2 = dart_pivots(torch.arange(3), keys, torch.tensor([3]), visual_pivots=2, text_pivots=1)
    assert v2.tolist() == [1, 0] and t2.tolist() == [3]


def test_dart_visits_pivots_in_the_reference_order():
    # The greedy picks depend on the order pivots are visited in; the reference visits the set of their positions.
    torch.manual_seed(3)
    keys, hidden = torch.randn(140, 8), torch.randn(140, 6)
    visual, text = torch.arange(10, 110), torch.cat([torch.arange(10), torch.arange(110, 140)])
    kept = select("dart", visual, 40, keys=keys, hidden=hidden, text=text).tolist()
    v_piv, t_piv = dart_pivots(visual, keys, text)
    order = list(set(v_piv.tolist() + t_piv.tolist()))
    assert order != v_piv.tolist() + t_piv.tolist()  # the two orders differ here ...
    by_norm = _norm_order_dart(visual.tolist(), 40, keys, hidden, list(range(110, 140)))
    assert kept != by_norm  # ... and so do their selections
    assert kept == reference_dart(keys.T[None, :, :, None], hidden, 10, 100, 40)[0]


def test_dart_per_pivot_share_is_budget_over_all_configured_pivots():
    # only 2 text tokens follow the image: 6 pivots, but each still takes floor(24 / 8) = 3 tokens
    torch.manual_seed(4)
    keys, hidden = torch.randn(42, 8), torch.randn(42, 8)
    visual, text = torch.arange(4, 40), torch.cat([torch.arange(4), torch.arange(40, 42)])
    _, t_piv = dart_pivots(visual, keys, text)
    assert sorted(t_piv.tolist()) == [40, 41]
    assert len(select("dart", visual, 24, keys=keys, hidden=hidden, text=text)) == 4 + 6 * (24 // 8)


def test_dart_measures_duplication_on_hidden_states_and_pivots_on_keys():
    # positions 0..3 visual, 4 text; one pivot of each kind, one token per pivot
    keys = torch.tensor([[9.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [3.0, 3.0]])
    hidden = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 0.0]])
    visual, text = torch.arange(4), torch.tensor([4])
    kept = select("dart", visual, 2, keys=keys, hidden=hidden, text=text, visual_pivots=1, text_pivots=1)
    # pivot 0 (largest key norm) is kept; the visual token least like it in hidden space is 1 (cos -1),
    # then for the text pivot (hidden [1, 0]) the least similar of {2, 3} is 3 (cos 0)
    assert kept.tolist() == [0, 1, 3]
    # under key similarity the picks differ: least like key [9, 0] is 2 (cos 0)
    assert select("dart", visual, 2, keys=keys, hidden=keys, text=text, visual_pivots=1,
                  text_pivots=1).tolist() != [0, 1, 3]


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
                         ("vtw@10:5", "vtw@10:0"), ("fastv@0:100", "layer >= 1"), ("dart@0:100", "layer >= 1")]:
        with pytest.raises(HorizonError, match=message):
            parse_schedule(bad, n_layers=32, n_visual=576)
    with pytest.raises(HorizonError, match="cannot keep"):
        select("random", torch.arange(4), 5, generator=torch.Generator())


def test_vqa_normalization_and_accuracy():
    from horizon.benchmarks.vqav2 import normalize as normalize_vqa, vqa_accuracy

    assert normalize_vqa("The Two dogs!") == "2 dogs"
    assert normalize_vqa("  Yes.") == "yes"
    assert normalize_vqa("dont know") == "don't know"
    assert normalize_vqa("1,000") == "1000"
    assert normalize_vqa("red/blue") == "red blue"
    # 10 human answers: 'two' x2, '2' x1 (all normalise to '2'), others differ
    answers = ["two", "two", "2", "3", "3", "3", "3", "three", "four", "many"]
    # prediction '2' matches 3 answers: leaving out a match leaves 2 -> 2/3; leaving out a non-match -> 1
    assert vqa_accuracy("2", answers) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    assert vqa_accuracy("three", answers) == pytest.approx(1.0)  # 5 matches: always >= 3 left
    assert vqa_accuracy("five", answers) == 0.0
    assert vqa_accuracy("four", answers) == pytest.approx((1 * 0 + 9 * (1 / 3)) / 10)


def test_mme_acc_plus_and_pope_f1():
    import pandas as pd

    from horizon.benchmarks import METRICS
    from horizon.benchmarks.jsonl import exact_match
    from horizon.data import Sample

    def scored(metric, task, pairs, predictions, answers):
        rows = []
        for i, (pair, p, a) in enumerate(zip(pairs, predictions, answers)):
            sample = Sample(str(i), None, "q", [a], task, {"pair": pair})
            rows.append({"task": task, "prediction": p, "answers": [a],
                         "score": METRICS.get(metric).score(p, sample), **METRICS.get(metric).row_fields(sample)})
        return METRICS.get(metric).aggregate(pd.DataFrame(rows))

    mme = scored("mme", "existence", ["a", "a", "b", "b", "c", "c"],
                 ["Yes", "no", "yes", "yes.", "No, it is not", "maybe"], ["yes", "no", "yes", "no", "no", "yes"])
    assert mme["accuracy"] == pytest.approx(4 / 6) and mme["acc_plus"] == pytest.approx(1 / 3)
    assert mme["mme_score"] == pytest.approx(100 * (4 / 6 + 1 / 3))
    pope = scored("pope", "pope-random", [None] * 6, ["yes", "yes", "no", "yes", "no", "no"],
                  ["yes", "no", "yes", "yes", "no", "no"])
    # tp=2 fp=1 fn=1 tn=2
    assert pope["accuracy"] == pytest.approx(4 / 6)
    assert pope["precision"] == pytest.approx(2 / 3) and pope["recall"] == pytest.approx(2 / 3)
    assert pope["f1"] == pytest.approx(2 / 3) and pope["yes_ratio"] == pytest.approx(0.5)
    assert exact_match(" Red.", ["red", "crimson"]) == 1.0 and exact_match("blue", ["red"]) == 0.0
