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
        assert got["kl"][b].item() == pytest.approx(kl, rel=1e-6)  # KL is returned in float32
    assert (got["kl"] >= 0).all()


@pytest.mark.parametrize("scale", [0.0, 1e-9, 1e-7, 1e-5, 1e-3, 1.0, 30.0])
def test_kl_is_never_negative_and_accurate_when_tiny(scale):
    """float32 log-softmax outputs that differ by rounding-sized amounts: the naive sum goes negative."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1, 4000)).astype(np.float32) * 3
    noise = rng.normal(size=(64, 1, 4000)).astype(np.float32) * scale
    logp = torch.log_softmax(torch.tensor(x), -1)
    logq = torch.log_softmax(torch.tensor(x[None] + noise), -1)
    kl = remove_scores(logp, logq, torch.tensor([0]), ("kl",))["kl"].double().numpy()
    assert (kl >= 0).all()
    # independent value: exact KL of the two float32 distributions after renormalising them in float64
    lp = logp.double().numpy()
    lq = logq.double().numpy()
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = lq - np.log(np.exp(lq).sum(-1, keepdims=True))
    exact = (np.exp(lp) * (lp - lq)).sum(-1).mean(-1)
    # for normalised inputs KL >= 0 exactly; rounding of the renormalised reference is ~1e-16
    assert np.allclose(kl, np.clip(exact, 0, None), rtol=1e-3, atol=1e-13)
    if scale == 0.0:
        assert (kl == 0).all()


def test_naive_kl_goes_negative_where_horizons_kl_does_not():
    """The failure mode being fixed: sum p (log p - log q) on rounded log-probabilities."""
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(1, 32000)).astype(np.float32))
    logp = torch.log_softmax(x, -1)
    logq = torch.log_softmax(x[None] + 1e-6 * torch.randn(256, 1, 32000), -1)
    naive = (logp.exp() * (logp - logq)).sum(-1).mean(-1)
    assert (naive < 0).any()
    assert (remove_scores(logp, logq, torch.tensor([0]), ("kl",))["kl"] >= 0).all()


def test_kl_limits_where_a_probability_is_zero():
    logp = torch.tensor([[0.0, -torch.inf]])  # p = (1, 0)
    logq = torch.log(torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]]))
    kl = remove_scores(logp, logq, torch.tensor([0]), ("kl",))["kl"]
    assert kl[0].item() == pytest.approx(np.log(2))
    assert kl[1].item() == 0.0
    # p = (0.5, 0.5) against q = (1, 0): p puts mass where q has none
    assert torch.isinf(remove_scores(logq[0], logq[1][None], torch.tensor([0]), ("kl",))["kl"]).all()


def test_identical_distributions_score_zero():
    logp = torch.log_softmax(torch.randn(2, 7, dtype=torch.float64), -1)
    got = remove_scores(logp, logp[None].repeat(3, 1, 1), torch.tensor([1, 2]), ("kl", "dlogp", "dprob"))
    for v in got.values():
        assert torch.allclose(v, torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_keep_gain():
    rng = np.random.default_rng(0)
    none = _logsoftmax(rng.normal(size=(1, 5)))
    keep = _logsoftmax(rng.normal(size=(2, 1, 5)))
    got = keep_scores(torch.tensor(none), torch.tensor(keep), torch.tensor([3]), ("gain_logp", "gain_prob",
                                                                                     "keep_prob"))
    assert got["gain_logp"][1].item() == pytest.approx(keep[1, 0, 3] - none[0, 3])
    assert got["gain_prob"][0].item() == pytest.approx(np.exp(keep[0, 0, 3]) - np.exp(none[0, 3]))
    # the reference code's raw score: the probability of the answer token with only the group kept
    assert got["keep_prob"][1].item() == pytest.approx(np.exp(keep[1, 0, 3]))


def test_metric_protocol_mismatch_is_a_clear_error():
    with pytest.raises(HorizonError, match="gain_logp"):
        check_metrics("remove", ["gain_logp"])
    with pytest.raises(HorizonError, match="protocol"):
        check_metrics("sideways", ["kl"])
