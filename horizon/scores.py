"""Scores: how an ablation changed the answer's distribution (DESIGN §2).

All inputs are float32 log-probabilities at the scored answer positions:
``logp`` (m, V) clean, ``logq`` (B, m, V) ablated, ``target`` (m,) token ids.
With ``--answer-span first`` m = 1; with ``full`` log-probabilities of the
answer tokens are summed (the answer's log-likelihood) and KL is averaged over
positions.
"""

from __future__ import annotations

import torch

from .errors import HorizonError

REMOVE_METRICS = ("kl", "dlogp", "dprob")
KEEP_METRICS = ("gain_logp", "gain_prob")
DEFAULT_METRICS = {"remove": ("kl", "dlogp"), "keep": KEEP_METRICS}


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
    """KL(p || q) summed over the vocabulary, averaged over positions. -> (B,)."""
    p = logp.exp()
    return (p * (logp - logq)).sum(-1).mean(-1)


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
    return out
