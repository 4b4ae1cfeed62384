"""Scores: how an ablation changed the answer's distribution (the README's What is measured section).

All inputs are float64 log-probabilities at the scored answer positions (the
engine's log-softmax runs in float64; values are stored as float32):
``logp`` (m, V) clean, ``logq`` (B, m, V) ablated, ``target`` (m,) token ids.
With ``--answer-span first`` m = 1; with ``full`` log-probabilities of the
answer tokens are summed (the answer's log-likelihood) and KL is averaged over
positions.

KL is a sum of vocabulary terms that is non-negative only when both
distributions sum to exactly one, which rounded log-softmax outputs do not.
It is therefore computed in float64 in the form
``sum_v q_v * phi(log p_v - log q_v)`` with ``phi(d) = d e^d - (e^d - 1)``:
equal to KL(p || q) for normalised p and q, and made of terms that are each
non-negative (``phi >= 0`` for every real d), so rounding can never make it
negative; tiny negative terms from the last bit of ``phi`` are clipped to 0.
"""

from __future__ import annotations

import torch

from .errors import HorizonError

REMOVE_METRICS = ("kl", "dlogp", "dprob")
KEEP_METRICS = ("gain_logp", "gain_prob", "keep_prob")
DEFAULT_METRICS = {"remove": ("kl", "dlogp"), "keep": KEEP_METRICS}
# Scores that are a level, not a change: zero does not mean "no information", so they get no
# numerical floor and no horizon (their information reading is gain_prob = keep_prob - q_none).
RAW_METRICS = frozenset({"keep_prob"})


def check_metrics(protocol: str, metrics: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    allowed = {"remove": REMOVE_METRICS, "keep": KEEP_METRICS}.get(protocol)
    if allowed is None:
        raise HorizonError(f"--protocol must be remove or keep, got {protocol!r}")
    bad = [m for m in metrics if m not in allowed]
    if bad or not metrics:
        raise HorizonError(
            f"metric(s) {', '.join(bad) or '(none)'} not available for protocol {protocol!r}; "
            f"choose from {', '.join(allowed)}"
        )
    return tuple(dict.fromkeys(metrics))


def answer_logprob(logq: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log q(y): summed over answer positions. (B, m, V) -> (B,)."""
    index = target.view(1, -1, 1).expand(logq.shape[0], -1, 1)
    return logq.gather(-1, index).squeeze(-1).sum(-1)


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the vocabulary, averaged over positions; never negative. -> (B,).

    Each vocabulary term is ``q * phi(d)`` with ``d = log p - log q`` and
    ``phi(d) = d e^d - expm1(d) >= 0`` (see the module docstring), in float64.
    """
    dtype = torch.promote_types(logp.dtype, logq.dtype)
    logp, logq = logp.double(), logq.double()
    d = logp - logq
    # phi(d) = d e^d - expm1(d), written so that no large terms cancel: for d -> 0 it is ~ d^2 / 2
    phi = torch.where(d.abs() < 1e-3, d * d * (0.5 + d * (2.0 / 3.0)), d * d.exp() - torch.expm1(d))
    q = logq.exp()
    terms = q * phi.clamp_min(0.0)
    # where a probability is exactly 0 the term is its limit: q (p = 0), +inf (q = 0), 0 (both)
    edge = torch.where(logp == -torch.inf, q, torch.where(logq == -torch.inf, torch.inf, 0.0))
    terms = torch.where(torch.isfinite(d), terms, edge)
    return terms.sum(-1).mean(-1).to(dtype)


def remove_scores(logp: torch.Tensor, logq: torch.Tensor, target: torch.Tensor, metrics) -> dict[str, torch.Tensor]:
    clean = answer_logprob(logp[None], target)
    ablated = answer_logprob(logq, target)
    out = {}
    if "kl" in metrics:
        out["kl"] = kl_divergence(logp[None], logq)
    if "dlogp" in metrics:
        out["dlogp"] = clean - ablated
    if "dprob" in metrics:
        out["dprob"] = clean.exp() - ablated.exp()
    return out


def keep_scores(logq_none: torch.Tensor, logq_keep: torch.Tensor, target: torch.Tensor, metrics) -> dict[str, torch.Tensor]:
    """Gain of keeping one group over keeping no visual token at the same layer."""
    none = answer_logprob(logq_none[None], target)
    keep = answer_logprob(logq_keep, target)
    out = {}
    if "gain_logp" in metrics:
        out["gain_logp"] = keep - none
    if "gain_prob" in metrics:
        out["gain_prob"] = keep.exp() - none.exp()
    if "keep_prob" in metrics:
        out["keep_prob"] = keep.exp()
    return out
