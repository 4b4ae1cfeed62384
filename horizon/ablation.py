"""The ablation engine: remove visual positions from layer l on, exactly and fast.

Definition (the README's What is measured section): removing a set R at layer l means that from layer l on
no position attends to R, with every other token keeping its original position
id. That equals deleting R's hidden states before layer l, which is what this
engine does -- it never computes what cannot change:

* one clean pass per sample records every layer's input hidden state and the
  keys/values of every layer (the vision tower runs once per sample, here);
* an ablated pass starts *at* layer l from the clean hidden state: layers
  before l are skipped with nnsight's ``skip`` (their output is their input);
* positions before the first removed position are identical to the clean pass
  in every layer (causal attention; where the adapter declares bidirectional
  image blocks, before the first position that can change,
  ``Adapter.first_changed``), so their keys/values come from the clean cache
  and only the suffix is recomputed (``reuse_prefix``);
* every layer type's mask is the adapter's rule (``Adapter.attends``) on
  original positions, restricted to the positions still present;
* many ablations of one layer run as one batch; rows are padded to the same
  length and padding is masked out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import nnsight
import torch

from .errors import HorizonError
from .models import VisionLM
from .models.adapter import ATTENTION_KINDS, additive_mask

log = logging.getLogger("horizon")

MASKABLE_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class Ablation:
    """Remove ``removed`` (sorted sequence positions) from layer ``layer`` on.

    ``start`` makes an ablation that removes nothing still recompute from that
    position on, like a real ablation whose first removed position it is: the
    null ablations that measure a run's numerical floor go through the same
    computation as the ablations they are compared with.
    """

    layer: int
    removed: tuple[int, ...]
    start: int | None = None

    def first(self, default: int) -> int:
        """The first position this ablation recomputes."""
        if self.removed:
            return self.removed[0]
        return default if self.start is None else self.start


@dataclass
class CleanPass:
    """Everything an ablated pass reuses from the unablated forward pass."""

    input_ids: torch.Tensor  # (S,)
    layer_inputs: list[torch.Tensor]  # per layer, (S, D): hidden state entering the layer
    keys: list[torch.Tensor]  # per layer, (1, kv_heads, S, head_dim), after RoPE
    values: list[torch.Tensor]
    position_ids: torch.Tensor  # (..., 1, S): (1, S) for RoPE, (3, 1, S) for M-RoPE
    # per layer type (Adapter.layer_types): (cos, sin), each (S, head_dim), as the layers received them
    rotary: dict[str, tuple[torch.Tensor, torch.Tensor]]
    logits: torch.Tensor  # (1, S, V) full clean logits, as the model computes them
    scored: list[int]  # positions whose next-token distribution is scored
    scored_logits: torch.Tensor  # (m, V) float32 logits at the scored positions (float32 norm and head)
    extras: dict = field(default_factory=dict)  # family-specific inputs of the decoder stack (Adapter.clean_extras)
    layout: Any = None  # what the adapter's attention rule needs about this sample (Adapter.attention_layout)

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[0])

    def scored_logprobs(self) -> torch.Tensor:
        """(m, V) float64 log-probabilities at the scored positions.

        From float32 logits (see ``Adapter.scored_logits``), the same head the
        ablated passes use; float64 because a float32 log-softmax rounds log p
        to a multiple of 2^-23 near p = 1, larger than many real score differences.
        """
        return torch.log_softmax(self.scored_logits.double(), dim=-1)


def ensure_maskable_attention(vlm: VisionLM) -> None:
    """Ablated passes need a custom 4D mask; flash attention cannot take one."""
    if vlm.adapter.attention not in ATTENTION_KINDS:
        # removal and prefix reuse are derived for the declared kinds only; others need their own derivation
        raise HorizonError(f"{vlm.adapter.name}: its {vlm.adapter.attention!r} attention mask is not supported by the "
                           f"engine (supported kinds: {', '.join(ATTENTION_KINDS)})")
    impl = vlm.language_model.config._attn_implementation
    if impl not in MASKABLE_ATTENTION:
        log.warning("attention implementation %r cannot take a custom mask; switching to sdpa", impl)
        vlm.hf.set_attn_implementation("sdpa")


@torch.no_grad()
def clean_pass(vlm: VisionLM, inputs: dict[str, torch.Tensor], scored: Sequence[int]) -> CleanPass:
    """Run the unablated model once, recording what the ablated passes reuse."""
    lm = vlm.lm_envoy
    inputs = {k: v.to(vlm.device) for k, v in inputs.items()}
    types = vlm.adapter.layer_types(vlm.language_model)
    cache = vlm.adapter.unwindowed_cache(vlm.hf)  # the prefix reuse needs every position's keys and values
    extra = {} if cache is None else vlm.adapter.cache_kwargs(vlm.hf, cache)
    with vlm.nn.trace(**inputs, use_cache=True, **extra):
        lm_kwargs = lm.inputs[1].save()
        hidden = nnsight.save([])
        rotary = nnsight.save({})
        layers = vlm.adapter.decoder_layers(lm)
        for j, layer in enumerate(layers):
            if types[j] not in types[:j]:  # the first layer of its type (in execution order, as nnsight needs)
                rotary[types[j]] = layer.inputs[1][vlm.adapter.rotary_keyword].save()
            hidden.append(layer.input[0].save())
        final = vlm.adapter.final_norm(lm).input.save()  # the last layer's output, before the final norm
        output = vlm.nn.output.save()
    seq_len = inputs["input_ids"].shape[1]
    position_ids = lm_kwargs.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(seq_len, device=vlm.device)[None]
    cache = vlm.adapter.output_cache(output)
    scored = list(scored)
    return CleanPass(
        input_ids=inputs["input_ids"][0],
        layer_inputs=list(hidden),
        keys=[layer.keys for layer in cache.layers],
        values=[layer.values for layer in cache.layers],
        position_ids=position_ids,
        rotary={t: (cos[0], sin[0]) for t, (cos, sin) in rotary.items()},
        logits=output.logits,
        scored=scored,
        scored_logits=vlm.adapter.scored_logits(vlm.language_model, vlm.lm_head, final[0, scored]),
        extras=vlm.adapter.clean_extras(lm_kwargs),
        layout=vlm.adapter.attention_layout(vlm.hf, inputs),
    )


def plan_batches(
    ablations: Sequence[Ablation], batch_size: int, seq_len: int | None = None, max_waste: float = 0.1,
    min_gap: int = 32, reuse_start: Callable[[int], int] | None = None,
) -> list[list[int]]:
    """Indices of ablations per batch: one layer per batch, neighbours by first removed position.

    A batch shares one reused prefix, the earliest removed position among its
    rows; rows whose own removal starts later recompute the gap. With
    ``seq_len`` a batch is closed once that gap would exceed ``max_waste`` of
    the recomputed length, so prefix reuse keeps paying on large batches. Gaps
    up to ``min_gap`` positions are always accepted: on short sequences a few
    recomputed positions cost less than another traced pass. ``reuse_start``
    maps a first removed position to the first position the removal can change
    (:meth:`Adapter.first_changed`: an image block's first token under
    bidirectional attention), which is what a row really recomputes from.
    """
    end = seq_len or 0
    start = reuse_start or (lambda p: p)
    order = sorted(range(len(ablations)), key=lambda i: (ablations[i].layer, start(ablations[i].first(end))))
    batches: list[list[int]] = []
    prefix = 0
    for i in order:
        first = start(ablations[i].first(end))
        if (
            batches
            and len(batches[-1]) < batch_size
            and ablations[batches[-1][0]].layer == ablations[i].layer
            and (seq_len is None or first - prefix <= max(max_waste * (seq_len - prefix), min_gap))
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
            prefix = first
    return batches


def reuse_start(vlm: VisionLM, clean: CleanPass) -> Callable[[int], int]:
    """The first position a removal starting at ``p`` can change, for this sample (see plan_batches)."""
    return lambda p: vlm.adapter.first_changed(clean.layout, p)


def auto_batch_size(vlm: VisionLM, clean: CleanPass) -> int:
    """Rows per ablated pass that fit a modest memory budget."""
    cfg = vlm.language_model.config
    seq = clean.seq_len
    elt = torch.finfo(vlm.dtype).bits // 8
    heads = cfg.num_attention_heads
    per_row = elt * seq * (seq * heads + 4 * cfg.intermediate_size + 3 * cfg.hidden_size)
    per_row += elt * 2 * vlm.n_layers * seq * cfg.hidden_size  # suffix keys/values
    if vlm.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(vlm.device)
        budget = free // 3
    else:
        budget = 1 << 30
    return int(max(1, min(256, budget // max(per_row, 1))))


@torch.no_grad()
def run_ablations(
    vlm: VisionLM,
    clean: CleanPass,
    ablations: Sequence[Ablation],
    batch_size: int | None = None,
    reuse_prefix: bool = True,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(indices, logprobs)`` per batch; logprobs is (B, m, V) float64 at the scored positions."""
    batch_size = batch_size or auto_batch_size(vlm, clean)
    for batch in plan_batches(ablations, batch_size, clean.seq_len, reuse_start=reuse_start(vlm, clean)):
        yield batch, _ablated_pass(vlm, clean, [ablations[i] for i in batch], reuse_prefix)


def _ablated_pass(vlm: VisionLM, clean: CleanPass, rows: list[Ablation], reuse_prefix: bool) -> torch.Tensor:
    layer, last = rows[0].layer, vlm.n_layers - 1
    adapter = vlm.adapter
    device, n_rows = vlm.device, len(rows)
    m = len(clean.scored)
    first_scored = min(clean.scored)
    seq = max(clean.scored) + 1  # later positions cannot reach the scored ones (causal)
    if adapter.first_changed(clean.layout, seq) != seq:
        raise HorizonError(f"{adapter.name}: a scored position lies inside a bidirectional block")
    # Everything before the first position the removals can change is unchanged in every layer.
    prefix = min(adapter.first_changed(clean.layout, r.first(first_scored)) for r in rows) if reuse_prefix else 0
    prefix = min(prefix, first_scored)

    kept = []
    for r in rows:
        removed = torch.tensor(r.removed, dtype=torch.long, device=device)
        span = torch.arange(prefix, seq, device=device)
        kept.append(span[~torch.isin(span, removed)])
    n = max(len(k) for k in kept)
    # Left padding keeps the scored positions (the sequence's tail) in the last m rows.
    index = torch.stack([torch.cat([k[:1].expand(n - len(k)), k]) for k in kept])  # (B, n)
    valid = torch.stack([torch.arange(n, device=device) >= n - len(k) for k in kept])  # (B, n)
    assert torch.equal(index[:, n - m:], torch.tensor(clean.scored, device=device).expand(n_rows, m))

    # under a device map the clean tensors sit on the devices of the layers that made them
    hidden = clean.layer_inputs[layer][index.to(clean.layer_inputs[layer].device)]  # (B, n, D)
    position_ids = clean.position_ids[..., 0, :][..., index.to(clean.position_ids.device)]  # (..., B, n)
    # per layer type, (B, n, head_dim) each: cos, sin
    rotary = {t: tuple(r[index.to(r.device)] for r in cs) for t, cs in clean.rotary.items()}

    # The adapter's rule on original positions, sliced to what each row keeps: queries are the kept
    # positions, keys the reused prefix and the kept positions. Pads see only themselves.
    types = adapter.layer_types(vlm.language_model)
    key_positions = torch.cat([torch.arange(prefix, device=device).expand(n_rows, prefix), index], dim=1)
    live = torch.cat([torch.ones(n_rows, n, prefix, dtype=torch.bool, device=device),
                      valid[:, None, :] & valid[:, :, None]], dim=-1)
    eye = torch.cat([torch.zeros(n, prefix, dtype=torch.bool, device=device),
                     torch.eye(n, dtype=torch.bool, device=device)], dim=-1)
    masks = {}
    for kind in dict.fromkeys(types):
        allowed = (adapter.attends(clean.layout, kind, index[:, :, None], key_positions[:, None, :]) & live) | eye
        # (B, 1, n, prefix + n); moved to each layer by its dispatch hook
        masks[kind] = additive_mask(allowed, hidden.dtype)[:, None]

    def prefix_kv(j: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (clean.keys[j][:, :, :prefix].expand(n_rows, -1, -1, -1),
                clean.values[j][:, :, :prefix].expand(n_rows, -1, -1, -1))

    if layer < last:
        cache = vlm.adapter.make_cache([None] * layer + [prefix_kv(j) for j in range(layer, last)]) if prefix else None
        lm = vlm.lm_envoy
        with lm.trace(inputs_embeds=hidden, position_ids=position_ids, attention_mask=adapter.decoder_masks(masks),
                      **vlm.adapter.cache_kwargs(vlm.language_model, cache),
                      **vlm.adapter.ablated_lm_kwargs(clean.extras, index, valid, layer)) as tracer:
            layers = vlm.adapter.decoder_layers(lm)
            adapter.skip_rotary(lm, rotary)  # the clean pass computed every position's rotary embedding
            for skipped in layers[:layer]:
                skipped.skip(skipped.input)  # the clean state at layer l is already the input
            hidden = layers[last].input.save()
            tracer.stop()

    # Last layer: only the scored rows matter downstream; the others just lend keys and values.
    final_layer = vlm.layers[last]
    cos, sin = rotary[types[last]]
    keys, values = prefix_kv(last)
    if n > m:
        k, v = vlm.adapter.key_values(final_layer, hidden[:, : n - m], (cos[:, : n - m], sin[:, : n - m]))
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
    cache = vlm.adapter.make_cache([None] * last + [(keys, values)]) if keys.shape[2] else None
    out = final_layer(hidden[:, n - m:], attention_mask=masks[types[last]][:, :, n - m:],
                      **vlm.adapter.cache_kwargs(final_layer, cache),
                      position_embeddings=(cos[:, n - m:], sin[:, n - m:]))
    out = out[0] if isinstance(out, tuple) else out
    return torch.log_softmax(vlm.adapter.scored_logits(vlm.language_model, vlm.lm_head, out).double(), dim=-1)
