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
from ..models.adapter import additive_mask
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


def batch_refusal(vlm: VisionLM, rows: list[BatchRow], positions: str) -> str | None:
    """Why these rows cannot be generated as one left-padded batch (None: they can)."""
    return family_batch_refusal(vlm, positions) or (
        "a batch's rows must continue from prefixes ending at one layer"
        if len({r.prefix.layer for r in rows}) > 1 else None) or (
        f"--batch-size above 1: {vlm.adapter.name} adds per-position features between layers (DeepStack), "
        "which batched generation does not restrict per row; use --batch-size 1"
        if any(r.prefix.extras for r in rows) else None)


def family_batch_refusal(vlm: VisionLM, positions: str) -> str | None:
    """Why this model cannot generate left-padded batches, known before any sample (None: it can)."""
    from ..models.adapter import Adapter

    if type(vlm.adapter).clean_extras is not Adapter.clean_extras:
        return (f"--batch-size above 1: {vlm.adapter.name} adds per-position features between layers (DeepStack), "
                "which batched generation does not restrict per row; use --batch-size 1")
    if vlm.adapter.attention != "causal":
        return (f"--batch-size above 1: {vlm.adapter.name} declares {vlm.adapter.attention!r} attention, whose "
                "per-sample masks and windowed caches batched generation does not reproduce; use --batch-size 1")
    if positions != "original":
        return "--batch-size above 1 keeps the original positions; use --batch-size 1 with --positions renumber"
    return None


class _Rows:
    """Batched prefill state: per row its own pruning state, and the padded layout of the current layer's input."""

    def __init__(self, vlm: VisionLM, states: list[_Pruning], index: torch.Tensor, valid: torch.Tensor):
        self.vlm, self.states = vlm, states
        self.index, self.valid = index, valid  # (B, n): original position of each column, False for padding
        self.slot = torch.arange(index.shape[1], device=index.device).expand_as(index)  # column in the first layout
        self.rotary = vlm.adapter.rotary_keyword
        self.types = vlm.adapter.layer_types(vlm.language_model)
        self.masks: dict[str, torch.Tensor] = {}
        self.layer_columns: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer run: (index, valid)
        self.handles: list[Any] = []

    def mask(self, kind: str, dtype: torch.dtype) -> torch.Tensor:
        """Additive (B, 1, n, n): each row's rule on original positions among its present tokens; pads see themselves."""
        if kind not in self.masks:
            q, k = self.index[:, :, None], self.index[:, None, :]
            allowed = torch.stack([self.vlm.adapter.attends(s.layout, kind, q[b], k[b])
                                   for b, s in enumerate(self.states)])
            allowed &= self.valid[:, :, None] & self.valid[:, None, :]
            allowed |= torch.eye(self.index.shape[1], dtype=torch.bool, device=self.index.device)
            self.masks[kind] = additive_mask(allowed.to(self.index.device), dtype)[:, None]
        return self.masks[kind]

    def prefill(self, j: int, module: torch.nn.Module, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        adapter = self.vlm.adapter
        if any(j in s.stages for s in self.states):
            hidden = self._prune(j, hidden)
        for b, s in enumerate(self.states):
            s.layer_present.append(self.index[b][self.valid[b]])
        self.layer_columns.append((self.index, self.valid))
        kwargs = dict(kwargs)
        kwargs[self.rotary] = tuple(t.take_along_dim(self.slot.to(t.device)[..., None], dim=-2)
                                    for t in kwargs[self.rotary])
        kwargs["attention_mask"] = self.mask(self.types[j], hidden.dtype)
        if isinstance(kwargs.get("position_ids"), torch.Tensor):
            ids = kwargs["position_ids"]
            kwargs["position_ids"] = ids.take_along_dim(self.slot.to(ids.device).expand(*ids.shape[:-2], -1, -1), -1)
        for b, s in enumerate(self.states):
            nxt = s.stages.get(j + 1)
            if nxt is not None and nxt.method in READS_LAYER_BEFORE:
                # the row alone, unpadded, as generate reads it (causal: the last row of its mask sees all)
                cols = self.valid[b]
                row = hidden[b : b + 1, cols.to(hidden.device)]
                rotary = tuple(t[b : b + 1, cols.to(t.device)] for t in kwargs[self.rotary])
                if nxt.method == "fastv":
                    s.attention = adapter.last_token_attention(module, row, rotary)
                else:
                    keys, _ = adapter.key_values(module, row, rotary)
                    s.keys = keys[0].transpose(0, 1).flatten(1)
        return (hidden, *args[1:]), kwargs

    def _prune(self, j: int, hidden: torch.Tensor) -> torch.Tensor:
        """Each row's selection at layer j (its own method inputs), then the rows left-padded again."""
        kept_cols = []
        for b, s in enumerate(self.states):
            cols = self.valid[b].nonzero().flatten()
            if j in s.stages:
                rows = s._select(s.stages[j], j, hidden[b : b + 1, cols.to(hidden.device)])
                s.present = s.present[rows]
                s.kept.append(s.present[s.visual_mask[s.present]].clone())
                cols = cols[rows.to(cols.device)]
            kept_cols.append(cols)
        n = max(len(c) for c in kept_cols)
        # left padding repeats the row's first kept column; those copies are masked out
        take = torch.stack([torch.cat([c[:1].expand(n - len(c)), c]) for c in kept_cols])  # (B, n) current columns
        self.valid = torch.stack([torch.arange(n, device=take.device) >= n - len(c) for c in kept_cols])
        self.index = self.index.take_along_dim(take, 1)
        self.slot = self.slot.take_along_dim(take, 1)
        self.masks = {}
        return hidden.take_along_dim(take.to(hidden.device)[..., None], 1)

    def install(self, start: int) -> None:
        for j, layer in enumerate(self.vlm.layers):
            if j >= start:
                self.handles.append(layer.register_forward_pre_hook(
                    lambda module, args, kwargs, j=j: self.prefill(j, module, args, kwargs), with_kwargs=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _left_pad(rows: list[torch.Tensor], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (each with a batch axis of 1) left-padded along ``dim`` with copies of their first entry; and valid (B, n)."""
    n = max(r.shape[dim] for r in rows)
    padded = [torch.cat([r.narrow(dim, 0, 1).expand(*[n - r.shape[dim] if d == dim % r.ndim else -1
                                                     for d in range(r.ndim)]), r], dim) for r in rows]
    valid = torch.stack([torch.arange(n) >= n - r.shape[dim] for r in rows])
    return torch.cat(padded, 0), valid


@torch.no_grad()
def continue_batch(vlm: VisionLM, rows: list[BatchRow], *, positions: str = "original", max_new_tokens: int = 32,
                   return_logits: bool = False, decoding: str | Decoding = "checkpoint") -> list[Generation]:
    """:func:`continue_generation` of every row, generated together as one left-padded batch.

    Rows may come from different samples (prompts of different lengths) and
    schedules; all must continue from prefixes ending at one layer. Each row
    keeps its own selection (its own random generator, seeded as alone), its
    original positions, a mask that follows the adapter's rule on them and
    excludes padding, and stops at its own eos. The answers are those of one
    :func:`continue_generation` per row; the logits agree to float rounding
    (kernels sum in another order over padded shapes).
    """
    if len(rows) == 1:
        r = rows[0]
        return [continue_generation(vlm, r.prefix, r.schedule, positions=positions, max_new_tokens=max_new_tokens,
                                    seed=r.seed, info=r.info, return_logits=return_logits, decoding=decoding)]
    refusal = batch_refusal(vlm, rows, positions)
    if refusal:
        raise HorizonError(refusal)
    adapter, lm, device = vlm.adapter, vlm.language_model, vlm.device
    start = rows[0].prefix.layer
    states = []
    for r in rows:
        _check(vlm, r.prefix, r.schedule, positions)
        s = _Pruning(vlm, r.schedule, r.prefix.visual, positions, torch.Generator().manual_seed(r.seed), r.info)
        s.layout, s.prompt_len = r.prefix.layout, r.prefix.prompt_len
        s.present = torch.arange(s.prompt_len, device=device)
        s.visual_mask = torch.zeros(s.prompt_len, dtype=torch.bool, device=device)
        s.visual_mask[r.prefix.visual.to(device)] = True
        s.layer_present = [s.present] * start
        s.attention, s.keys = r.prefix.attention, r.prefix.keys
        states.append(s)
    hidden, valid = _left_pad([r.prefix.hidden.to(device) for r in rows], 1)
    index, _ = _left_pad([torch.arange(r.prefix.prompt_len, device=device)[None] for r in rows], 1)
    # each row's own positions (RoPE (1, S) or M-RoPE (3, 1, S)) at its columns: (..., B, n)
    position_ids = torch.cat([r.prefix.position_ids.to(device)[..., 0, :].index_select(-1, index[b])[..., None, :]
                              for b, r in enumerate(rows)], -2)
    batch = _Rows(vlm, states, index, valid.to(device))
    prefix_columns = (batch.index, batch.valid)
    batch.install(start)
    try:
        with adapter.skipped_layers(lm, start):
            out = lm(inputs_embeds=hidden, position_ids=position_ids, use_cache=True)
    finally:
        batch.remove()
    # every layer's keys and values: the rows' prefix caches left-padded as their hidden states were
    grown = adapter.output_cache(out)
    layers = []
    for j in range(vlm.n_layers):
        if j < start:
            keys, _ = _left_pad([r.prefix.cache.layers[j].keys for r in rows], -2)
            values, _ = _left_pad([r.prefix.cache.layers[j].values for r in rows], -2)
            layers.append((keys, values))
        else:
            layers.append((grown.layers[j].keys, grown.layers[j].values))
    cache = adapter.make_cache(layers)
    columns = [prefix_columns] * start + batch.layer_columns  # per layer: original position of each cached column
    logits = vlm.lm_head(out.last_hidden_state[:, -1:])[:, -1].float()  # left padding: every row's last token
    return _decode_batch(vlm, rows, states, columns, position_ids, logits, cache, max_new_tokens=max_new_tokens,
                         return_logits=return_logits, decoding=decoding)


def _decode_batch(vlm: VisionLM, rows: list[BatchRow], states: list[_Pruning],
                  columns: list[tuple[torch.Tensor, torch.Tensor]], position_ids: torch.Tensor, logits: torch.Tensor,
                  cache: Any, *, max_new_tokens: int, return_logits: bool,
                  decoding: str | Decoding) -> list[Generation]:
    """Greedy decoding of every row together; a row that reached eos idles (its outputs are not read)."""
    adapter, device = vlm.adapter, vlm.device
    eos = vlm.hf.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) - {None}
    rule = Decoding.for_model(vlm.hf, decoding)
    processors = [rule.processors() for _ in rows]
    seen = [r.prefix.inputs["input_ids"] for r in rows]
    tokens: list[list[int]] = [[] for _ in rows]
    steps: list[list[torch.Tensor]] = [[] for _ in rows]
    running = [True] * len(rows)
    queries = torch.tensor([s.prompt_len for s in states], device=device)
    keys_of = [(idx.to(device), ok.to(device)) for idx, ok in columns]  # per layer: (B, K) positions, valid
    types = adapter.layer_types(vlm.language_model)
    embed = vlm.hf.get_input_embeddings()

    def step_mask(j: int, module: torch.nn.Module, args: tuple, kwargs: dict):
        idx, ok = keys_of[j]
        allowed = torch.stack([adapter.attends(s.layout, types[j], queries[b], idx[b]) for b, s in enumerate(states)])
        allowed = torch.cat([allowed & ok, torch.ones(len(rows), 1, dtype=torch.bool, device=device)], 1)
        hidden = args[0] if args else kwargs["hidden_states"]
        kwargs["attention_mask"] = additive_mask(allowed.to(device), hidden.dtype)[:, None, None]
        return args, kwargs

    handles = [layer.register_forward_pre_hook(
        lambda module, args, kwargs, j=j: step_mask(j, module, args, kwargs), with_kwargs=True)
        for j, layer in enumerate(vlm.layers)]
    try:
        for step in range(max_new_tokens):
            fed = []
            for b in range(len(rows)):
                token = None
                if running[b]:
                    if return_logits:
                        steps[b].append(logits[b].cpu())
                    token = rule.next_token(seen[b], logits[b], processors[b])
                    if token in eos:
                        running[b] = False
                    else:
                        tokens[b].append(token)
                        seen[b] = torch.cat([seen[b], torch.tensor([[token]], device=seen[b].device)], dim=1)
                fed.append(token if running[b] else next(iter(eos), 0))
            if step == max_new_tokens - 1 or not any(running):
                break
            ids = position_ids[..., -1:] + 1 + step
            hidden = vlm.language_model(inputs_embeds=embed(torch.tensor(fed, device=device)[:, None]),
                                        position_ids=ids, use_cache=True,
                                        **adapter.cache_kwargs(vlm.language_model, cache)).last_hidden_state
            logits = vlm.lm_head(hidden[:, -1]).float()
            keys_of = [(torch.cat([idx, queries[:, None]], 1), torch.cat([ok, torch.ones_like(ok[:, :1])], 1))
                       for idx, ok in keys_of]
            queries = queries + 1
    finally:
        for handle in handles:
            handle.remove()
    return [generation(vlm, s, t, st) for s, t, st in zip(states, tokens, steps)]
