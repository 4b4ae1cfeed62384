"""Metric functions against an independent numpy computation."""

import numpy as np
import pytest
import torch

from horizon.errors import HorizonError
from horizon.scores import check_metrics, keep_scores, remove_scores


def _logsoftmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("m", [1, 3])
def test_remove_scores_match_numpy(m):
    rng = np.random.default_rng(m)
    logp = _logsoftmax(rng.normal(size=(m, 11)))
    logq = _logsoftmax(rng.normal(size=(4, m, 11)))
    y = rng.integers(0, 11, size=m)
    got = remove_scores(torch.tensor(logp), torch.tensor(logq), torch.tensor(y), ("kl", "dlogp", "dprob"))
    lp = logp[np.arange(m), y].sum()
    for b in range(4):
        lq = logq[b, np.arange(m), y].sum()
        kl = np.mean([(np.exp(logp[i]) * (logp[i] - logq[b, i])).sum() for i in range(m)])
        assert got["dlogp"][b].item() == pytest.approx(lp - lq, abs=1e-9)
        assert got["dprob"][b].item() == pytest.approx(np.exp(lp) - np.exp(lq), abs=1e-9)
        assert got["kl"][b].item() == pytest.approx(kl, abs=1e-9)
    assert (got["kl"] >= 0).all()


def test_identical_distributions_score_zero():
    logp = torch.log_softmax(torch.randn(2, 7, dtype=torch.float64), -1)
    got = remove_scores(logp, logp[None].repeat(3, 1, 1), torch.tensor([1, 2]), ("kl", "dlogp", "dprob"))
    for v in got.values():
        assert torch.allclose(v, torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_keep_gain():
    rng = np.random.default_rng(0)
    none = _logsoftmax(rng.normal(size=(1, 5)))
    keep = _logsoftmax(rng.normal(size=(2, 1, 5)))
    got = keep_scores(torch.tensor(none), torch.tensor(keep), torch.tensor([3]), ("gain_logp", "gain_prob"))
    assert got["gain_logp"][1].item() == pytest.approx(keep[1, 0, 3] - none[0, 3])
    assert got["gain_prob"][0].item() == pytest.approx(np.exp(keep[0, 0, 3]) - np.exp(none[0, 3]))


def test_metric_protocol_mismatch_is_a_clear_error():
    with pytest.raises(HorizonError, match="gain_logp"):
        check_metrics("remove", ["gain_logp"])
    with pytest.raises(HorizonError, match="protocol"):
        check_metrics("sideways", ["kl"])
