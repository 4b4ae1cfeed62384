"""Gradient estimates of removal scores: one forward and one backward pass instead of one pass per ablation.

Removal as gates. Give every (layer j, key position k) a gate ``a[j, k]`` in
[0, 1] that scales the attention every query of layer j pays to key k
(attention weights proportional to ``a * exp(score)``, i.e. ``log a`` added to
the attention logits of that key in every head). All gates open (a = 1) is
the clean model; closing the gates of a group g in layers l..L-1 (a = 0, a
logit of -inf) is exactly the engine's removal of g from layer l on (from
layer l on no position attends to g).  ``gated_logprobs`` runs the
model with any gate values; a test checks the closed end point against the
engine.

First order (attribution patching). With ``G[j, k]`` the derivative of the
answer's log-probability with respect to ``log a[j, k]`` at the clean point
(equal to the derivative with respect to ``a``, since a = 1 there), closing
the gates moves ``a`` by -1 each, so

    dlogp(l, g) ~= sum over j >= l, k in g of G[j, k]

and ``dprob(l, g) ~= p(y) * dlogp(l, g)`` (dp = p dlog p). One backward pass gives G for every
layer and key, so every (layer, group) estimate is a suffix sum over layers
and a sum over the group's positions.

KL. Its gradient is zero at the clean point (KL has a minimum there), so a
first-order estimate is always 0. horizon uses the second-order (Fisher)
form: ``KL(p || q) ~= 1/2 sum_v p_v (d log p_v)^2`` with ``d log p_v`` the
first-order change of token v's log-probability, computed for the K most
probable tokens (one backward pass each; K = ``kl_tokens``, 8 by default) and
summed over them: the mass outside the top K is left out, so the estimate is
a lower bound of the second-order term.

Saturation (AtP*-style, ``gate_gradients(..., groups=...)``, scan's default).
The first-order estimate linearises two softmaxes that saturate: a query
attending almost only to the group, and the output when p(y) is near 1.
:class:`_Saturation` computes each layer's attention output without the group
exactly and :func:`_output_softmax_estimate` the output softmax, linearising
only the layers in between (through the logits of the answer and its rivals).

Keep protocol (:func:`estimate_keep`): the same, from the engine's "none" base
point of each scanned layer, with the group's keys opened (:class:`_Opening`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .ablation import CleanPass
from .errors import HorizonError
from .groups import Group
from .models import VisionLM
from .models.adapter import additive_mask
from .options import ESTIMATORS  # noqa: F401  (scan reads it from here, with the estimators)

GRADIENT_METRICS = ("dlogp", "dprob", "kl")
KEEP_METRICS = ("gain_logp", "gain_prob", "keep_prob")
KL_TOKENS = 8


def _masks(vlm: VisionLM, clean: CleanPass, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Each layer type's additive (1, 1, S, S) mask of the clean pass: the adapter's rule on original positions."""
    device = vlm.device
    positions = torch.arange(clean.seq_len, device=device)
    masks = {}
    for kind in dict.fromkeys(vlm.adapter.layer_types(vlm.language_model)):
        allowed = vlm.adapter.attends(clean.layout, kind, positions[:, None], positions[None, :])
        masks[kind] = additive_mask(allowed, dtype)[None, None]
    return masks


def gated_logprobs(vlm: VisionLM, clean: CleanPass, gates: torch.Tensor,
                   attention_outputs: list[torch.Tensor] | None = None,
                   logits_out: list[torch.Tensor] | None = None,
                   layer_inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Log-probabilities (m, V) at the scored positions with ``gates`` (L, S) added to the attention logits.

    ``gates[j, k]`` is ``log a[j, k]``: 0 leaves key k of layer j as it is,
    -inf closes it. Differentiable in ``gates``. The pass starts from the
    clean input embeddings (the vision tower ran once, in the clean pass).
    ``attention_outputs``, when given, receives each layer's attention output
    before its output projection, (1, S, heads * head_dim): the heads' outputs,
    what the saturation correction differentiates against; ``logits_out`` the
    (m, V) logits the log-probabilities come from; ``layer_inputs`` the hidden
    state entering every decoder layer, (1, S, D).
    """
    lm, adapter = vlm.language_model, vlm.adapter
    seq = clean.seq_len
    if gates.shape != (vlm.n_layers, seq):
        raise HorizonError(f"gates must be (layers, positions) = ({vlm.n_layers}, {seq}), got {tuple(gates.shape)}")
    embeds = clean.layer_inputs[0]
    embeds = embeds if embeds.dim() == 3 else embeds[None]
    masks = _masks(vlm, clean, embeds.dtype)
    index = torch.arange(seq, device=vlm.device)[None]
    valid = torch.ones_like(index, dtype=torch.bool)

    def gate(j: int):
        def hook(module, args, kwargs):
            mask = kwargs.get("attention_mask")
            if not isinstance(mask, torch.Tensor):
                raise HorizonError("the gradient estimator needs an additive attention mask per layer; load the "
                                   "model with attn_implementation='sdpa' or 'eager'")
            if layer_inputs is not None:
                layer_inputs.append(args[0] if args else kwargs["hidden_states"])
            g = gates[j].to(device=mask.device, dtype=mask.dtype)
            kwargs["attention_mask"] = mask + torch.maximum(g, torch.tensor(torch.finfo(mask.dtype).min,
                                                                              device=mask.device))[None, None, None, :]
            return args, kwargs
        return hook

    final = adapter.final_norm(lm)
    seen: dict[str, torch.Tensor] = {}

    def grab(module, args):
        seen["hidden"] = args[0]

    def keep(module, args):
        attention_outputs.append(args[0])

    handles = [layer.register_forward_pre_hook(gate(j), with_kwargs=True)
               for j, layer in enumerate(adapter.decoder_layers(lm))]
    if attention_outputs is not None:
        handles += [layer.self_attn.o_proj.register_forward_pre_hook(keep) for layer in adapter.decoder_layers(lm)]
    handles.append(final.register_forward_pre_hook(grab))
    try:
        lm(inputs_embeds=embeds, position_ids=clean.position_ids, attention_mask=adapter.decoder_masks(masks),
           use_cache=False, **adapter.ablated_lm_kwargs(clean.extras, index, valid, 0))
    finally:
        for handle in handles:
            handle.remove()
    hidden = seen["hidden"][0, clean.scored]
    logits = adapter.scored_logits(lm, vlm.lm_head, hidden).double()
    if logits_out is not None:
        logits_out.append(logits)
    return torch.log_softmax(logits, dim=-1)


@dataclass
class GateGradients:
    """Derivatives of a sample's answer with respect to every (layer, key) gate, at the clean point."""

    logp: float  # log p(y) of the clean answer (summed over scored positions)
    answer: torch.Tensor  # (L, S): d log p(y) / d log a
    # (K, m, L, S): d log p_v / d log a for the K most probable tokens v at each position (KL's Fisher form,
    # without the saturation fix; K = 0 with it)
    tokens: torch.Tensor
    token_probs: torch.Tensor  # (K, m): their clean probabilities
    # with the saturation correction (gate_gradients given groups): per layer j and group g, the first-order
    # change of log p(y) when g's keys leave layer j's softmax, the softmax recomputed exactly: (L, G); None
    # without it
    answer_groups: torch.Tensor | None = None
    # the output side (with the fix): clean log-probabilities (m, V), the tokens whose logits are followed
    # (m, T: the answer token and the most probable ones) and their logits' first-order changes per layer and
    # group (m, T, L, G), from which the estimate's output softmax is computed exactly
    clean_logprobs: torch.Tensor | None = None
    logit_tokens: torch.Tensor | None = None
    logit_groups: torch.Tensor | None = None
    # per scored position, the corrected first-order change of log p(y_i) (value - removed): (m, L, G)
    position_groups: torch.Tensor | None = None

    def suffix(self, grads: torch.Tensor) -> torch.Tensor:
        """Sums over layers j >= l: (..., L, S) -> (..., L, S)."""
        return grads.flip(-2).cumsum(-2).flip(-2)


def gate_gradients(vlm: VisionLM, clean: CleanPass, target: torch.Tensor, kl_tokens: int = 0,
                   groups: Sequence[Group] | None = None) -> GateGradients:
    """One forward pass with open gates, one backward pass for the answer, ``kl_tokens`` more for KL's tokens.

    Given ``groups``, instead the saturation-corrected per-layer group estimates (:class:`_Saturation`) and the
    changes of the answer's and the ``max(kl_tokens, OUTPUT_TOKENS)`` most probable tokens' logits
    (:func:`_logit_changes`), one backward pass each; KL then comes from the estimated output softmax, so the
    log p_v passes of the Fisher form are not run.
    """
    gates = torch.zeros(vlm.n_layers, clean.seq_len, dtype=torch.float64, device=vlm.device, requires_grad=True)
    outputs: list[torch.Tensor] | None = [] if groups is not None else None
    corrector = _Saturation(vlm, clean, groups) if groups is not None else None
    raw: list[torch.Tensor] = []
    with torch.enable_grad():
        logp = gated_logprobs(vlm, clean, gates, outputs, raw)  # (m, V)
        wrt = [gates, *(outputs or [])]

        def backward(value: torch.Tensor, keep: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
            grad, *heads = torch.autograd.grad(value, wrt, retain_graph=keep)
            return grad.detach(), corrector(heads) if corrector else None

        per_position = logp.gather(-1, target.to(logp.device)[:, None])[:, 0]
        answer = per_position.sum()
        m = logp.shape[0]
        logit_tokens = logit_groups = position_groups = None
        if corrector is None or m == 1:
            grad, answer_groups = backward(answer, kl_tokens > 0 or corrector is not None)
            position_groups = None if answer_groups is None else answer_groups[None]
        else:  # each position's log p(y_i) on its own: the output softmax is per position
            parts = [backward(per_position[i], True) for i in range(m)]
            grad = sum(g for g, _ in parts)
            position_groups = torch.stack([c for _, c in parts])
            answer_groups = position_groups.sum(0)
        if corrector is not None:  # the output side: each followed token's logit, one backward pass each
            logit_tokens, logit_groups = _logit_changes(logp, raw[0], target, max(kl_tokens, OUTPUT_TOKENS),
                                                        backward, last=True)
        # KL's tokens: without the fix, one backward pass of log p_v each for the Fisher form; with it, KL comes
        # from the estimated output softmax over the followed logits above, so those passes would go unused
        passes = kl_tokens if corrector is None else 0
        token_grads = torch.zeros(passes, m, *gates.shape, dtype=torch.float64, device=gates.device)
        probs = torch.zeros(passes, m, dtype=torch.float64)
        if passes:
            top = logp.detach().topk(passes, dim=-1)
            for i in range(m):
                for r in range(passes):
                    last = i == m - 1 and r == passes - 1
                    token_grads[r, i] = backward(logp[i, top.indices[i, r]], not last)[0]
                    probs[r, i] = float(top.values[i, r].exp())
    return GateGradients(float(answer.detach()), grad, token_grads.cpu(), probs, answer_groups,
                         logp.detach().cpu() if corrector is not None else None, logit_tokens, logit_groups,
                         position_groups)


OUTPUT_TOKENS = 8  # with the saturation fix: the most probable tokens (and the answer's) whose logits are followed
KEEP_TOKENS = 1  # the keep estimate, once per scanned layer: the answer's and the top token's logits


def _logit_changes(logp: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, k: int, backward, last: bool):
    """The answer token and the ``k`` most probable tokens at each scored position, and the first-order change
    of their logits (m, T, L, G) when a group leaves a layer's softmax (the saturation-corrected attention
    change, linearised through the rest of the model). Logits, not log-probabilities: the output softmax is
    what saturates when p(y) is near 1 (d log p(y) ~ 1 - p(y)), so it is applied exactly afterwards."""
    m, vocab = logp.shape
    top = logp.detach().topk(min(k, vocab), dim=-1).indices.cpu()
    tokens = [list(dict.fromkeys([int(target[i]), *top[i].tolist()]))[: top.shape[1] + 1] for i in range(m)]
    width = max(len(t) for t in tokens)
    tokens = torch.tensor([t + [t[-1]] * (width - len(t)) for t in tokens])  # repeat the last to square it
    changes = []
    for i in range(m):
        for r in range(width):
            keep = not (last and i == m - 1 and r == width - 1)
            changes.append(-backward(logits[i, tokens[i, r]], keep)[1])  # the corrector gives value - removed
    return tokens, torch.stack(changes).view(m, width, *changes[0].shape)


DOMINANT = 0.5  # a group holding more of a query's attention than this gets its change recomputed directly


def _membership(groups: Sequence[Group], seq_len: int, device: torch.device):
    """The groups' keys (sorted positions), which group each belongs to, and two 0/1 membership matrices: over
    those keys (n, G) and over every position (S, G). The groups partition their keys (tile's windows)."""
    keys = sorted({p for g in groups for p in g.positions})
    column = {p: i for i, p in enumerate(keys)}
    member = torch.zeros(len(keys), len(groups), dtype=torch.float32, device=device)
    full = torch.zeros(seq_len, len(groups), dtype=torch.float32, device=device)
    group_of = torch.zeros(len(keys), dtype=torch.long, device=device)
    for i, g in enumerate(groups):
        member[[column[p] for p in g.positions], i] = 1.0
        full[list(g.positions), i] = 1.0
        group_of[[column[p] for p in g.positions]] = i
    return keys, group_of, member, full


def _layer_queries(vlm: VisionLM, clean: CleanPass, j: int, hidden: torch.Tensor):
    """Layer j's module, its rotary (cos, sin) with a batch axis, the queries (1, H, S, hd) it computes from
    ``hidden`` (1, S, D), and which key each query may attend to (S, S), by the adapter's rule."""
    layer = vlm.adapter.decoder_layers(vlm.language_model)[j]
    kind = vlm.adapter.layer_types(vlm.language_model)[j]
    cos, sin = clean.rotary[kind]
    rotary = (cos[None], sin[None])
    queries = vlm.adapter.queries(layer, hidden, rotary)
    positions = torch.arange(clean.seq_len, device=queries.device)
    allowed = vlm.adapter.attends(clean.layout, kind, positions[:, None], positions[None, :])
    return layer, rotary, queries, allowed


def _row_logits(layer, queries: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor,
                heads: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Log attention weights of the (head, query) rows given, as the softmax's own log (no underflow): the
    weights' logits through the same rule as Adapter.attention_weights, normalised with log_softmax."""
    keys = keys.to(queries.device).repeat_interleave(queries.shape[1] // keys.shape[1], dim=1)[0]  # (H, S, hd)
    scores = _scores(layer, queries[0, heads, rows][:, None, :], keys[heads]).squeeze(1)
    scores = scores.masked_fill(~allowed[rows].to(scores.device), -torch.inf)
    return torch.log_softmax(scores, -1)


def _scores(layer, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Float32 attention logits of ``queries`` (..., q, hd) over ``keys`` (..., k, hd): Adapter.attention_weights's
    rule (scaling, softcapping) before its softmax, for the log-space computations that need the logits."""
    attn = layer.self_attn
    scores = (queries.float() @ keys.float().transpose(-1, -2)) * attn.scaling
    cap = getattr(attn, "attn_logit_softcapping", None)
    if cap is not None:
        scores = torch.tanh(scores / cap) * cap
    return scores


class _Saturation:
    """The AtP*-style correction of the gate gradient for attention saturation, per layer and group.

    Closing group g's gates in layer j removes g's keys from every query's
    softmax. For query q and head h with attention weights ``w`` over keys,
    output ``o = sum_k w_k v_k``, mass ``m = sum_{k in g} w_k`` on g and
    ``u = sum_{k in g} w_k v_k``, the softmax recomputed without g gives
    exactly ``o' = (o - u) / (1 - m)``, a change of ``(m o - u) / (1 - m)``.
    The plain gate gradient is the linear term ``m o - u``: it vanishes when a
    query attends almost only to g (``o ~ u``, ``m ~ 1``) although removing g
    changes the output most (saturation). The correction keeps the exact change
    of each layer's attention output and linearises only what follows:
    ``dlogp_j(g) = -sum_{q,h} <d log p / d o_qh, (m o - u) / (1 - m)>``
    (with ``1 - m`` floored at 1e-6: a query that sees nothing but g has no
    output without it). With ``m`` set to 0 it is the gate gradient's sum over g.
    """

    def __init__(self, vlm: VisionLM, clean: CleanPass, groups: Sequence[Group]):
        self.vlm, self.clean = vlm, clean
        # only the groups' keys enter
        self.keys, _, self.member, self.member_full = _membership(groups, clean.seq_len, vlm.device)
        self.cache: dict[int, tuple] = {}

    @torch.no_grad()
    def _layer(self, j: int) -> tuple:
        """Layer j's weights on the groups' keys (H, S, n), their values (H, n, hd), the outputs (H, S, hd), the
        groups' attention mass (H, S, G), and the dominated (head, query, group) with their recomputed change."""
        if j not in self.cache:
            vlm, clean = self.vlm, self.clean
            hidden = clean.layer_inputs[j]
            hidden = hidden if hidden.dim() == 3 else hidden[None]
            layer, _, queries, allowed = _layer_queries(vlm, clean, j, hidden)
            weights = vlm.adapter.attention_weights(layer, queries, clean.keys[j], allowed[None, None])[0]
            values = clean.values[j].to(weights.device).float()
            values = values.repeat_interleave(weights.shape[0] // values.shape[1], dim=1)[0]  # (H, S, hd)
            outputs = weights @ values
            on_groups = weights[:, :, self.keys]
            # Where one group holds most of a query's attention, (m o - u) / (1 - m) cancels catastrophically
            # (m rounds to 1 in float32 when the group's logits lead by more than ~17): there the output
            # without the group is recomputed from the weights of the other keys, renormalised in log space.
            mass = on_groups @ self.member  # (H, S, G)
            top, dominant = mass.max(-1)
            heads, rows = torch.nonzero(top > DOMINANT, as_tuple=True)
            exact = torch.zeros(len(heads), values.shape[-1], dtype=torch.float32, device=weights.device)
            if len(heads):
                # from the rows' logits, not their weights: weights of the other keys may underflow to 0
                logw = _row_logits(layer, queries, clean.keys[j], allowed, heads, rows)  # (n, S)
                out_of = self.member_full[:, dominant[heads, rows]].T.bool()  # (n, S): the dominant group's keys
                rest = torch.softmax(logw.masked_fill(out_of, -torch.inf), -1)
                exact = (rest[:, None, :] @ values[heads]).squeeze(1) - outputs[heads, rows]  # the exact change
            self.cache[j] = (on_groups, values[:, self.keys], outputs, mass,
                             (heads, rows, dominant[heads, rows], exact))
        return self.cache[j]

    @torch.no_grad()
    def __call__(self, heads: list[torch.Tensor]) -> torch.Tensor:
        """(L, G) corrected per-layer estimates from d(score)/d(attention output) of every layer."""
        rows = []
        for j, grad in enumerate(heads):
            weights, values, outputs, mass, (h, q, g, exact) = self._layer(j)
            grad = grad[0].float().view(grad.shape[1], weights.shape[0], -1).transpose(0, 1)  # (H, S, hd)
            # <grad, u> and <grad, m o> per (head, query, group)
            linear = ((grad @ values.transpose(-1, -2)) * weights) @ self.member \
                - mass * (grad * outputs).sum(-1, keepdim=True)
            change = linear / (1.0 - mass).clamp_min(1e-6)
            change[h, q, g] = -(grad[h, q] * exact).sum(-1)  # dominated queries: the recomputed change
            rows.append(change.sum((0, 1)).double().cpu())
        return torch.stack(rows)


def estimate_remove(grads: GateGradients, groups: Sequence[Group], layers: Sequence[int],
                    metrics: Sequence[str]) -> dict[str, torch.Tensor]:
    """Estimated remove-protocol scores, one per (layer, group) in layer-major order (as the engine's ablations)."""
    bad = [m for m in metrics if m not in GRADIENT_METRICS]
    if bad:
        raise HorizonError(f"the gradient estimator has no estimate of {', '.join(bad)}")
    rows = torch.tensor(list(layers), dtype=torch.long)
    if grads.logit_groups is not None:
        return _output_softmax_estimate(grads, rows, metrics)
    member = torch.zeros(len(groups), grads.answer.shape[-1], dtype=torch.float64)
    for i, g in enumerate(groups):
        member[i, list(g.positions)] = 1.0
    if grads.answer_groups is not None:  # the saturation-corrected per-layer estimates, summed over layers >= l
        dlogp = grads.suffix(grads.answer_groups)[rows].flatten()
    else:
        dlogp = (grads.suffix(grads.answer.cpu())[rows] @ member.T).flatten()  # (layers * groups,)
    out = {}
    if "dlogp" in metrics:
        out["dlogp"] = dlogp
    if "dprob" in metrics:
        p = torch.tensor(grads.logp, dtype=torch.float64).exp()
        out["dprob"] = p * dlogp  # first order: d p = p d log p
    if "kl" in metrics:
        if not grads.tokens.shape[0]:
            raise HorizonError("kl needs the top tokens' gradients (kl_tokens > 0)")
        change = grads.suffix(grads.tokens)[:, :, rows] @ member.T  # (K, m, layers, groups): -d log p_v
        out["kl"] = (0.5 * (grads.token_probs[:, :, None, None] * change**2).sum(0).mean(0)).flatten()
    return out


def _output_softmax_estimate(grads: GateGradients, rows: torch.Tensor, metrics: Sequence[str]) -> dict[str, torch.Tensor]:
    """The scores of the estimated removal with the output softmax computed exactly: each followed token's logit
    moves by its first-order change, every other logit stays, and log p, p and KL follow from that softmax."""
    logp = grads.clean_logprobs.double()  # (m, V)
    tokens = grads.logit_tokens  # (m, T)
    change = grads.suffix(grads.logit_groups)[:, :, rows]  # (m, T, layers, G): logit change, removal from l on
    m, width = tokens.shape
    followed = logp.gather(-1, tokens)  # (m, T) clean log p of the followed tokens (logits up to a shift)
    unique = torch.zeros_like(logp, dtype=torch.bool).scatter_(-1, tokens, True)
    rest = torch.where(unique, -torch.inf, logp).logsumexp(-1)  # (m,) log of the mass left alone
    first = torch.zeros(m, width, dtype=torch.bool)
    for i in range(m):  # a token repeated to square the table counts once
        seen: set[int] = set()
        for r in range(width):
            first[i, r] = int(tokens[i, r]) not in seen
            seen.add(int(tokens[i, r]))
    moved = followed[:, :, None, None] + change  # (m, T, layers, G) new log-weights of the followed tokens
    weights = torch.where(first[:, :, None, None], moved, -torch.inf)
    # The other tokens' logits move too. Their mean move (weighted by p) is known to first order without
    # following them: the linear change of log p(y) is z_y's change less sum_v p_v (z_v's change), so
    # sum over the rest of p_v dz_v = dz_y - dlog p(y) - sum over the followed of p_v dz_v. The rest's mass
    # moves by that mean (in log space), which keeps the estimate exact to first order for any number of
    # followed tokens.
    p_followed = (followed.exp() * first)[:, :, None, None]
    linear = -grads.suffix(grads.position_groups)[:, rows]  # (m, layers, G): first-order d log p(y_i)
    rest_mass = rest.exp()[:, None, None]
    shift = (change[:, 0] - linear - (p_followed * change).sum(1)) / rest_mass.clamp_min(1e-300)
    shift = torch.where(rest_mass > 0, shift, torch.zeros_like(shift))
    norm = torch.logaddexp(rest[:, None, None] + shift, weights.logsumexp(1))  # (m, layers, G): log-partition
    new_answer = moved[:, 0] - norm  # the answer token is first at every position
    out = {}
    clean_answer = followed[:, 0].sum()
    ablated = new_answer.sum(0)  # (layers, G)
    if "dlogp" in metrics:
        out["dlogp"] = (clean_answer - ablated).flatten()
    if "dprob" in metrics:
        out["dprob"] = (clean_answer.exp() - ablated.exp()).flatten()
    if "kl" in metrics:
        # KL(p || q) = sum_v p_v (log p_v - log q_v): the followed tokens' own terms, and for the rest
        # log q_v = log p_v - norm, a shift by the new log-partition
        term = (p_followed * (followed[:, :, None, None] - (moved - norm[:, None]))).sum(1)
        term = term + rest_mass * (norm - shift)  # the rest: log q_v = log p_v + shift - norm
        out["kl"] = term.clamp_min(0.0).mean(0).flatten()
    return out


# ------------------------------------------------------------------------------------------ keep protocol


class _Opening:
    """Per layer j >= l and group g: the exact change of layer j's attention output when g's keys join its
    softmax at the keep protocol's base point (every visual key closed from layer l on), against a gradient.

    With ``L_r`` the log-sum of the query's weights over the keys it keeps (no visual one) and ``L_g`` that over
    g's keys, the softmax with g back has normaliser ``N = log(e^L_r + e^L_g)``: g's keys get weights
    ``e^(s_k - N)`` and the rest is scaled by ``e^(L_r - N)``, all in log space (no saturation issue: a
    query that would attend only to g gets exactly that).
    """

    def __init__(self, vlm: VisionLM, clean: CleanPass, groups: Sequence[Group], inputs: list[torch.Tensor],
                 outputs: list[torch.Tensor], start: int):
        self.vlm, self.clean, self.start = vlm, clean, start
        self.keys, self.group_of, self.member, _ = _membership(groups, clean.seq_len, vlm.device)
        self.inputs, self.outputs = inputs, outputs
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def _layer(self, j: int):
        if j not in self.cache:
            vlm, clean = self.vlm, self.clean
            hidden = self.inputs[j].detach()
            layer, rotary, queries, allowed = _layer_queries(vlm, clean, j, hidden)
            queries = queries[0]  # (H, S, hd)
            keys, values = vlm.adapter.key_values(layer, hidden, rotary)
            heads = queries.shape[0]
            keys = keys.to(queries.device).repeat_interleave(heads // keys.shape[1], dim=1)[0]
            values = values.to(queries.device).float().repeat_interleave(heads // values.shape[1], dim=1)[0]
            scores = _scores(layer, queries, keys).masked_fill(~allowed, -torch.inf)  # (H, S, S)
            visual = torch.zeros(clean.seq_len, dtype=torch.bool, device=queries.device)
            visual[self.keys] = True
            rest = scores.masked_fill(visual, -torch.inf).logsumexp(-1)  # (H, S): L_r
            on_groups = scores[:, :, self.keys]  # (H, S, n)
            top = on_groups.max(-1, keepdim=True).values.clamp_min(torch.finfo(torch.float32).min)
            per_group = top + ((on_groups - top).exp() @ self.member).log()  # (H, S, G): L_g (-inf: none seen)
            norm = torch.logaddexp(rest[..., None], per_group)  # (H, S, G): N
            weights = (on_groups - norm[:, :, self.group_of]).exp()  # (H, S, n): each key's weight with its group
            scale = torch.expm1(rest[..., None] - norm)  # (H, S, G): how the kept keys' share changes
            output = self.outputs[j][0].detach().float()  # (S, H * hd): the base pass's attention output
            output = output.view(output.shape[0], heads, -1).transpose(0, 1)  # (H, S, hd)
            self.cache[j] = (weights, values[:, self.keys], scale, output)
        return self.cache[j]

    @torch.no_grad()
    def __call__(self, heads: list[torch.Tensor]) -> torch.Tensor:
        """(L, G): per layer, the first-order change of the differentiated value when g joins layer j's softmax
        (zero below the base point's first layer)."""
        rows = []
        for j, grad in enumerate(heads):
            if j < self.start:
                rows.append(torch.zeros(self.member.shape[1], dtype=torch.float64))
                continue
            weights, values, scale, output = self._layer(j)
            grad = grad[0].float().view(grad.shape[1], weights.shape[0], -1).transpose(0, 1)  # (H, S, hd)
            joined = ((grad @ values.transpose(-1, -2)) * weights) @ self.member  # <grad, g's new share>
            kept = scale * (grad * output).sum(-1, keepdim=True)  # <grad, the kept keys' rescaled share>
            rows.append((joined + kept).sum((0, 1)).double().cpu())
        return torch.stack(rows)


def estimate_keep(vlm: VisionLM, clean: CleanPass, target: torch.Tensor, groups: Sequence[Group],
                  layers: Sequence[int], metrics: Sequence[str], tokens: int = KEEP_TOKENS) -> dict[str, torch.Tensor]:
    """Estimated keep-protocol scores, one per (layer, group) in layer-major order (as the engine's ablations).

    For each scanned layer l the base point is the engine's "none": every
    visual key closed from layer l on (one forward pass). Keeping group g
    opens g's keys in layers l..L-1: each layer's attention change is exact
    (:class:`_Opening`), carried to the logits of the answer and the ``tokens``
    most probable tokens of the base distribution linearly (one backward
    pass each, plus one per scored position for the rest's first-order move),
    and the output softmax is computed exactly from them.
    """
    bad = [m for m in metrics if m not in KEEP_METRICS]
    if bad:
        raise HorizonError(f"the gradient estimator has no keep estimate of {', '.join(bad)}")
    visual = sorted({p for g in groups for p in g.positions})
    out: dict[str, list[torch.Tensor]] = {m: [] for m in metrics}
    for layer in layers:
        gates = torch.zeros(vlm.n_layers, clean.seq_len, dtype=torch.float64, device=vlm.device)
        gates[layer:, visual] = -torch.inf
        gates.requires_grad_(True)
        outputs: list[torch.Tensor] = []
        raw: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []
        with torch.enable_grad():
            logp = gated_logprobs(vlm, clean, gates, outputs, raw, inputs)
            opening = _Opening(vlm, clean, groups, inputs, outputs, layer)

            def backward(value: torch.Tensor, keep: bool) -> tuple[None, torch.Tensor]:
                heads = torch.autograd.grad(value, outputs, retain_graph=keep)
                return None, -opening(list(heads))  # the remove convention: value - changed

            m = logp.shape[0]
            per_position = logp.gather(-1, target.to(logp.device)[:, None])[:, 0]
            position_groups = torch.stack([backward(per_position[i], True)[1] for i in range(m)])
            logit_tokens, logit_groups = _logit_changes(logp, raw[0], target, tokens, backward, last=True)
        grads = GateGradients(float(per_position.sum().detach()), torch.zeros(0), torch.zeros(0), torch.zeros(0),
                              clean_logprobs=logp.detach().cpu(), logit_tokens=logit_tokens,
                              logit_groups=logit_groups, position_groups=position_groups)
        # the layers the base point opens from: every later layer adds its change (suffix from `layer`)
        remove = _output_softmax_estimate(grads, torch.tensor([layer]), ("dlogp",))
        # _output_softmax_estimate reports base - changed log p(y); here the change is the keep
        base = grads.logp
        keep = base - remove["dlogp"]  # (G,) log p(y) with g kept from `layer` on
        if "gain_logp" in metrics:
            out["gain_logp"].append(keep - base)
        if "gain_prob" in metrics:
            out["gain_prob"].append(keep.exp() - torch.tensor(base, dtype=torch.float64).exp())
        if "keep_prob" in metrics:
            out["keep_prob"].append(keep.exp())
    return {m: torch.cat(v) for m, v in out.items()}
