"""A shared prefix: what every schedule and seed of one sample computes identically, computed once.

Pruning changes nothing before a schedule's first stage. For one sample and
a layer P, :func:`shared_prefix` runs the processor's encoding (given), the
vision tower and decoder layers 0..P-1 once, and keeps the hidden state
entering layer P, the KV cache of layers < P, the keyword arguments the
decoder stack received (positions, masks, the adapter's per-position extras
such as Qwen3-VL's DeepStack features) and what FastV and DART read at layer
P - 1 (the last token's attention, the keys). :func:`continue_generation`
then runs one schedule whose first stage is at P (or no stage at all) from
there: the decoder stack's own loop with layers < P passed through, its own
copy of the prefix's cache grafted in, and the same greedy decoding as
:func:`horizon.prune.generate.generate`, whose answer it reproduces exactly
(the operations are the same, on the same inputs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from ..decoding import Decoding
from ..errors import HorizonError
from ..models import VisionLM
from .generate import POSITIONS, Generation, _Pruning, decode, generation
from .schedule import Schedule

# what a prefix reads at layer P - 1 for a first stage of this method
READS_LAYER_BEFORE = ("fastv", "dart")
_STACK_INPUTS = ("inputs_embeds", "input_ids", "use_cache")


class _PrefixDone(Exception):
    """Raised in layer P's pre-hook: the prefix is complete, the rest of the forward pass is not needed."""


@dataclass
class SharedPrefix:
    """One sample's unpruned computation up to the input of decoder layer ``layer``."""

    inputs: dict[str, torch.Tensor]
    layer: int
    hidden: torch.Tensor  # (1, S, D) entering layer ``layer``
    cache: Any  # the KV cache holding layers < layer
    lm_kwargs: dict[str, Any]  # the decoder stack's keyword arguments besides its input, cache and use_cache
    position_ids: torch.Tensor  # (1, S) or M-RoPE's (3, 1, S)
    visual: torch.Tensor  # visual patch positions
    layout: Any  # Adapter.attention_layout
    extras: dict[str, Any]  # Adapter.clean_extras of lm_kwargs
    attention: torch.Tensor | None = None  # FastV: (heads, S) last-token attention of layer - 1
    keys: torch.Tensor | None = None  # DART: (S, kv_heads * head_dim) keys of layer - 1
    seconds: float = 0.0  # wall time of the prefix pass

    @property
    def prompt_len(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


def first_layer(schedule: Schedule) -> int | None:
    """The layer of the schedule's first stage (None: no stage)."""
    return min((s.layer for s in schedule.stages), default=None)


def prefix_layer(schedules: Iterable[Schedule]) -> int:
    """Where a prefix shared by ``schedules`` may end: their common first-stage layer (no stage joins any; 0 alone)."""
    layers = {first_layer(s) for s in schedules} - {None}
    if len(layers) > 1:
        raise HorizonError(f"schedules starting at layers {sorted(layers)} cannot share one prefix")
    return layers.pop() if layers else 0


@torch.no_grad()
def shared_prefix(vlm: VisionLM, inputs: Mapping[str, torch.Tensor], layer: int,
                  methods: Iterable[str] = READS_LAYER_BEFORE) -> SharedPrefix:
    """Run ``vlm`` on ``inputs`` (one prompt) up to decoder layer ``layer``; keep what continuations need.

    ``methods``: first-stage methods that will continue from it; FastV's and
    DART's readings of layer ``layer`` - 1 are taken only when listed.
    """
    start = time.perf_counter()
    adapter = vlm.adapter
    if not 0 <= layer < vlm.n_layers:
        raise HorizonError(f"prefix layer {layer} out of range (0..{vlm.n_layers - 1})")
    inputs = {k: v.to(vlm.device) for k, v in inputs.items()}
    if inputs["input_ids"].shape[0] != 1:
        raise HorizonError("a shared prefix holds one prompt")
    methods = set(methods)
    seen: dict[str, Any] = {}

    def grab_stack(module, args, kwargs):
        seen["lm_kwargs"] = dict(kwargs)

    def before(j: int, module: torch.nn.Module, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs["hidden_states"]
        if j == layer - 1:
            # exactly what generate's prefill hook reads at the layer before a FastV / DART stage
            rotary = kwargs[adapter.rotary_keyword]
            if "fastv" in methods:
                seen["attention"] = adapter.last_token_attention(module, hidden, rotary, kwargs.get("attention_mask"))
            if "dart" in methods:
                keys, _ = adapter.key_values(module, hidden, rotary)
                seen["keys"] = keys[0].transpose(0, 1).flatten(1)
        elif j == layer:
            seen["hidden"], seen["cache"] = hidden, kwargs.get(adapter.cache_keyword(module))
            raise _PrefixDone

    handles = [vlm.language_model.register_forward_pre_hook(grab_stack, with_kwargs=True)]
    for j, module in enumerate(vlm.layers[: layer + 1]):
        handles.append(module.register_forward_pre_hook(
            lambda module, args, kwargs, j=j: before(j, module, args, kwargs), with_kwargs=True))
    try:
        vlm.hf(**inputs, use_cache=True, logits_to_keep=1)
    except _PrefixDone:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if "hidden" not in seen:
        raise HorizonError(f"{adapter.name}: the forward pass never reached decoder layer {layer}")
    lm_kwargs = {k: v for k, v in seen["lm_kwargs"].items()
                 if k not in _STACK_INPUTS and k != adapter.cache_keyword(vlm.language_model)}
    position_ids = lm_kwargs.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(inputs["input_ids"].shape[1], device=vlm.device)[None]
    if vlm.device.type == "cuda":
        torch.cuda.synchronize(vlm.device)
    return SharedPrefix(
        inputs=inputs, layer=layer, hidden=seen["hidden"], cache=seen["cache"], lm_kwargs=lm_kwargs,
        position_ids=position_ids,
        visual=torch.tensor(adapter.visual_positions(vlm.hf, inputs), dtype=torch.long, device=vlm.device),
        layout=adapter.attention_layout(vlm.hf, inputs), extras=adapter.clean_extras(seen["lm_kwargs"]),
        attention=seen.get("attention"), keys=seen.get("keys"), seconds=time.perf_counter() - start,
    )


def _check(vlm: VisionLM, prefix: SharedPrefix, schedule: Schedule, positions: str) -> None:
    if positions not in POSITIONS:
        raise HorizonError(f"--positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    first = first_layer(schedule)
    if first is not None and first != prefix.layer:
        raise HorizonError(f"schedule {schedule.text or str(schedule)!r} starts at layer {first}, "
                           f"its prefix ends at layer {prefix.layer}")
    if positions == "renumber" and schedule.stages:
        if vlm.adapter.attention != "causal":
            raise HorizonError(f"--positions renumber is defined for causal attention only; {vlm.adapter.name} "
                               f"declares {vlm.adapter.attention!r} attention (keep the original positions)")
        if prefix.position_ids.ndim == 3:
            raise HorizonError("--positions renumber is defined for 1-D RoPE only; this model uses M-RoPE "
                               "(keep the original positions)")
    missing = [s.method for s in schedule.stages
               if s.layer == prefix.layer and s.method in READS_LAYER_BEFORE
               and (prefix.attention if s.method == "fastv" else prefix.keys) is None]
    if missing:
        raise HorizonError(f"the prefix was computed without what {missing[0]} reads at layer {prefix.layer - 1}")


def stack_extras(vlm: VisionLM, prefix: SharedPrefix) -> dict[str, Any]:
    """The adapter's per-position extras for a pass over every prompt position that starts at the prefix's layer."""
    if not prefix.extras:
        return {}
    seq = prefix.prompt_len
    index = torch.arange(seq, device=vlm.device)[None]
    return vlm.adapter.ablated_lm_kwargs(prefix.extras, index, torch.ones_like(index, dtype=torch.bool),
                                         prefix.layer)


@torch.no_grad()
def continue_generation(
    vlm: VisionLM,
    prefix: SharedPrefix,
    schedule: Schedule,
    *,
    positions: str = "original",
    max_new_tokens: int = 32,
    seed: int = 0,
    info: Mapping[int, torch.Tensor] | None = None,
    return_logits: bool = False,
    decoding: str | Decoding = "checkpoint",
) -> Generation:
    """:func:`~horizon.prune.generate.generate` of ``schedule`` on the prefix's prompt, from the prefix on.

    The schedule's first stage must be at the prefix's layer (or it has none).
    Arguments as ``generate``'s; the answer, kept sets and logits are the ones it gives.
    """
    _check(vlm, prefix, schedule, positions)
    adapter, lm, start = vlm.adapter, vlm.language_model, prefix.layer
    state = _Pruning(vlm, schedule, prefix.visual, positions, torch.Generator().manual_seed(seed), info)
    state.layout, state.prompt_len = prefix.layout, prefix.prompt_len
    state.present = torch.arange(prefix.prompt_len, device=prefix.hidden.device)
    state.visual_mask = torch.zeros(prefix.prompt_len, dtype=torch.bool, device=prefix.hidden.device)
    state.visual_mask[prefix.visual.to(prefix.hidden.device)] = True
    state.layer_present = [state.present] * start
    state.attention, state.keys = prefix.attention, prefix.keys
    state.install(state.prefill, start=start)
    try:
        with adapter.skipped_layers(lm, start), adapter.restricted_to_present(lm, lambda: state.present):
            out = lm(inputs_embeds=prefix.hidden, use_cache=True, **{**prefix.lm_kwargs, **stack_extras(vlm, prefix)})
    finally:
        state.remove()
    cache = adapter.output_cache(out)
    adapter.copy_cache_layers(cache, prefix.cache, start)
    # the head on the last position, as the model's forward applies it with logits_to_keep=1
    logits = vlm.lm_head(out.last_hidden_state[:, -1:])[0, -1].float()
    tokens, steps = decode(vlm, state, prefix.inputs["input_ids"], prefix.position_ids, logits, cache,
                           max_new_tokens=max_new_tokens, decoding=decoding, return_logits=return_logits)
    return generation(vlm, state, tokens, steps)


@dataclass
class BatchRow:
    """One generation of a batch: a schedule continued from a prefix with a random-generator seed."""

    prefix: SharedPrefix
    schedule: Schedule
    seed: int
    info: Mapping[int, torch.Tensor] | None = None


def continue_batch(vlm: VisionLM, rows: list[BatchRow], *, positions: str = "original", max_new_tokens: int = 32,
                   return_logits: bool = False, decoding: str | Decoding = "checkpoint") -> list[Generation]:
    """:func:`continue_generation` of every row."""
    return [continue_generation(vlm, r.prefix, r.schedule, positions=positions, max_new_tokens=max_new_tokens,
                                seed=r.seed, info=r.info, return_logits=return_logits, decoding=decoding)
            for r in rows]
