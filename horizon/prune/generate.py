"""Greedy generation with a pruning schedule applied: prefill prunes, decoding reuses the pruned KV cache.

At a stage ``method@l:keep`` the method picks which visual tokens stay, from
what layer l (and, for FastV and DART, layer l - 1) exposes; every other visual token's hidden
state is deleted before layer l, so layers l.. never see it (the README's What is measured section:
removal, the deletion the paper's reference code does). The KV cache of
layers >= l therefore holds only the kept tokens, and every decoding step
attends to exactly what prefill kept. Text tokens are never pruned.

Positions: by default every token keeps its original position id (RoPE or
M-RoPE), and generated tokens continue after the full prompt, as in the
unpruned model. ``positions="renumber"`` gives the sequence that remains after
a stage contiguous positions 0..n-1 from that layer on (what FastV-style
reference code does); decoding then continues each layer's own numbering.

Everything happens in forward pre-hooks on the decoder layers of the
unmodified transformers forward pass; they slice the layer's input and the
per-token arguments (rotary embeddings, mask) to the tokens still present.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..decoding import Decoding
from ..errors import HorizonError
from ..models import VisionLM
from ..models.adapter import additive_mask, execution_device
from ..scan import append_answer
from .schedule import Schedule, Stage
from .strategies import select

POSITIONS = ("original", "renumber")


@dataclass
class Generation:
    """What a pruned greedy generation produced."""

    tokens: list[int]  # generated ids, eos excluded
    text: str
    n_visual: int
    kept: list[list[int]]  # per stage: original positions of the visual tokens present after it
    visual_per_layer: list[int]  # visual tokens in each layer's input during prefill
    tokens_per_layer: list[int]  # all tokens in each layer's input during prefill
    logits: list[torch.Tensor] = field(default_factory=list)  # per step (V,) float32, when asked for

    @property
    def avg_visual_tokens(self) -> float:
        return sum(self.visual_per_layer) / len(self.visual_per_layer)


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample seed that does not depend on the order samples are run in."""
    return (seed * 1_000_003 + zlib.crc32(sample_id.encode())) % (2**63)


def prefill_flops(config: Any, tokens_per_layer: list[int]) -> float:
    """Estimated prefill FLOPs of the decoder layers, each at the tokens in its input.

    Counts 2 FLOPs per multiply-add of the q/k/v/o projections, the gated MLP
    (three matrices) and the attention products QK^T and AV over the full n x n
    square (the FastV convention). Embeddings, norms, lm_head and the vision
    tower are left out: pruning does not change them.
    """
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    mlp = config.intermediate_size
    total = 0.0
    for n in tokens_per_layer:
        projections = 2 * n * d * (2 * heads * head_dim + 2 * kv * head_dim)
        attention = 4 * n * n * heads * head_dim
        total += projections + attention + 6 * n * d * mlp
    return float(total)


class _Pruning:
    """The state one generation's layer hooks share: which original positions each layer sees."""

    def __init__(self, vlm: VisionLM, schedule: Schedule, visual: torch.Tensor, positions: str,
                 generator: torch.Generator, info: Mapping[int, torch.Tensor] | None,
                 replay: list[torch.Tensor] | None = None):
        self.vlm, self.positions, self.generator, self.info = vlm, positions, generator, info or {}
        self.rotary = vlm.adapter.rotary_keyword  # the keyword the layers take (cos, sin) by
        self.types = vlm.adapter.layer_types(vlm.language_model)  # each layer's attention type
        self.layout: Any = None  # the adapter's attention layout of the prompt (Adapter.attention_layout)
        self.prompt_len = 0
        self.stages: dict[int, Stage] = {s.layer: s for s in schedule.stages}
        self.visual_mask: torch.Tensor | None = None  # (S,) bool over original positions
        self.visual = visual
        self.replay = replay  # kept visual positions per stage, to repeat an earlier selection
        self.kept: list[torch.Tensor] = []
        self.present: torch.Tensor | None = None  # original positions in the current layer's input
        self.layer_present: list[torch.Tensor] = []  # per layer, during prefill
        self.attention: torch.Tensor | None = None  # FastV: (heads, n) from the layer before its stage
        self.keys: torch.Tensor | None = None  # DART: (n, d) keys of the layer before its stage
        self.renumbered = False
        self.step = 0  # decoding: how many tokens were fed after the prompt
        self.handles: list[Any] = []

    # -- hooks -----------------------------------------------------------
    def install(self, hook, start: int = 0) -> "_Pruning":
        """Hook layers ``start``.. (a continuation from a shared prefix never runs the earlier ones)."""
        for j, layer in enumerate(self.vlm.layers):
            if j < start:
                continue
            self.handles.append(layer.register_forward_pre_hook(
                lambda module, args, kwargs, j=j: hook(j, module, args, kwargs), with_kwargs=True))
        return self

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def prefill(self, j: int, module: torch.nn.Module, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        seq = kwargs[self.rotary][0].shape[-2]
        if self.present is None:
            self.present = torch.arange(seq, device=hidden.device)
            self.visual_mask = torch.zeros(seq, dtype=torch.bool, device=hidden.device)
            self.visual_mask[self.visual.to(hidden.device)] = True
        if j in self.stages:
            rows = self._select(self.stages[j], j, hidden)
            hidden = hidden[:, rows.to(hidden.device)]
            self.present = self.present[rows]
            self.kept.append(self.present[self.visual_mask[self.present]].clone())
            self.renumbered = self.renumbered or self.positions == "renumber"
        self.layer_present.append(self.present)
        kwargs = self._slice(kwargs, self.present, seq, hidden)
        nxt = self.stages.get(j + 1)
        if nxt is not None and self.replay is None:
            # FastV and DART read the layer before their stage, as their reference code does
            if nxt.method == "fastv":
                self.attention = self.vlm.adapter.last_token_attention(module, hidden, kwargs[self.rotary],
                                                                       kwargs.get("attention_mask"))
            elif nxt.method == "dart":
                # the keys this layer writes to its KV cache (after RoPE), recomputed so that sdpa/flash work
                keys, _ = self.vlm.adapter.key_values(module, hidden, kwargs[self.rotary])
                self.keys = keys[0].transpose(0, 1).flatten(1)  # (n, kv_heads * head_dim), heads side by side
        return (hidden, *args[1:]), kwargs

    def decode(self, j: int, module: torch.nn.Module, args: tuple, kwargs: dict):
        # Under causal attention one new token attends to everything its layer cached: no mask needed. Otherwise
        # the adapter's rule on original positions (a sliding window) picks among what the layer's cache holds.
        kwargs["attention_mask"] = self.decode_mask(j, module, args[0] if args else kwargs["hidden_states"], kwargs)
        if self.positions == "renumber" and self.renumbered_at(j):
            hidden = args[0] if args else kwargs["hidden_states"]
            pos = torch.tensor([[len(self.layer_present[j]) + self.step]], device=hidden.device)
            kwargs[self.rotary] = self.vlm.adapter.rotary_embeddings(self.vlm.language_model, hidden, pos)
        return args, kwargs

    def decode_mask(self, j: int, module: torch.nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor | None:
        """Additive (1, 1, 1, K) mask of the new token over its layer's K cache entries and itself; None: all of them."""
        device = self.layer_present[j].device
        query = self.prompt_len + self.step
        seen = torch.cat([self.layer_present[j], torch.arange(self.prompt_len, query, device=device)])
        cache = kwargs.get(self.vlm.adapter.cache_keyword(module))
        held = cache.layers[j].keys.shape[-2] if cache is not None else len(seen)  # a sliding cache keeps the last few
        keys = torch.cat([seen[len(seen) - held:], torch.tensor([query], device=device)])
        allowed = self.vlm.adapter.attends(self.layout, self.types[j], torch.tensor(query, device=device), keys)
        # The form transformers hands the layer (its values are sized for the unpruned cache): kernels can differ
        # in the last bit between no mask and an all-true one, and keeping every token must reproduce generate.
        given = kwargs.get("attention_mask")
        if bool(allowed.all()) and (given is None or self.vlm.adapter.attention == "causal"):
            return None
        if isinstance(given, torch.Tensor) and given.dtype == torch.bool:
            return allowed.to(given.device)[None, None, None]
        return additive_mask(allowed.to(hidden.device), hidden.dtype)[None, None, None]

    def renumbered_at(self, j: int) -> bool:
        return any(layer <= j for layer in self.stages)

    # -- helpers ---------------------------------------------------------
    def _slice(self, kwargs: dict, present: torch.Tensor, seq: int, hidden: torch.Tensor | None = None) -> dict:
        """The layer's per-token arguments restricted to ``present`` (original positions)."""
        kwargs = dict(kwargs)
        n = len(present)
        if self.renumbered and hidden is not None:
            pos = torch.arange(n, device=present.device)[None]
            kwargs[self.rotary] = self.vlm.adapter.rotary_embeddings(self.vlm.language_model, hidden, pos)
        elif n != seq:
            # under a device map a layer's arguments may still sit on the previous layer's device
            kwargs[self.rotary] = tuple(t[..., present.to(t.device), :] for t in kwargs[self.rotary])
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and n != seq:
            at = present.to(mask.device)
            kwargs["attention_mask"] = mask[..., at, :][..., at]
        elif mask is not None and not isinstance(mask, torch.Tensor):
            raise HorizonError(f"pruning cannot restrict a {type(mask).__name__} attention mask; "
                               "load the model with attn_implementation='sdpa' or 'eager'")
        if isinstance(kwargs.get("position_ids"), torch.Tensor) and n != seq:
            kwargs["position_ids"] = kwargs["position_ids"][..., present.to(kwargs["position_ids"].device)]
        return kwargs

    def _select(self, stage: Stage, j: int, hidden: torch.Tensor) -> torch.Tensor:
        """Rows of the current input that stay: every text row plus the chosen visual rows."""
        is_visual = self.visual_mask[self.present]
        visual_rows = is_visual.nonzero().flatten()
        if self.replay is not None:
            chosen = torch.isin(self.present, self.replay[len(self.kept)].to(self.present.device)).nonzero().flatten()
        else:
            # a budget above what is present keeps it all (capped: prune_eval records it per sample)
            capped = stage.keep > len(visual_rows)
            keep = min(stage.keep, len(visual_rows))
            inputs: dict[str, Any] = {}
            if stage.method == "random":
                inputs["generator"] = self.generator
            elif stage.method == "divprune":
                inputs["hidden"] = hidden[0]
            elif stage.method == "fastv":
                inputs["attention"] = self.attention[:, None]  # (heads, 1, n): the last query's row
            elif stage.method == "dart":
                # pivots: key L1 norms of the layer before the stage (post-RoPE, as its KV cache holds them)
                inputs["keys"] = self.keys
                # duplication: cosine between the hidden states entering the stage's layer, through the final norm
                norm = self.vlm.adapter.final_norm(self.vlm.language_model)
                inputs["hidden"] = norm(hidden[0].to(execution_device(norm)))
                # every text row; dart_pivots draws the text pivots from those after the image only
                inputs["text"] = (~is_visual).nonzero().flatten()
            elif stage.method == "info":
                if j not in self.info:
                    raise HorizonError(f"info@{j}: no information scores for layer {j} (scan that layer)")
                inputs["info"] = self.info[j].to(self.present.device)[self.present[visual_rows]]
            chosen = select(stage.method, visual_rows.cpu(), keep, **{
                k: v.cpu() if isinstance(v, torch.Tensor) and k != "generator" else v for k, v in inputs.items()})
            chosen = (visual_rows if capped else chosen).to(self.present.device)
        keep_rows = ~is_visual
        keep_rows[chosen] = True
        return keep_rows.nonzero().flatten()


def _capture_position_ids(vlm: VisionLM) -> tuple[dict[str, Any], Any]:
    """Records the position ids the decoder stack receives (None means 0..S-1); returns (record, hook)."""
    seen: dict[str, Any] = {}

    def grab(module, args, kwargs):
        seen["position_ids"] = kwargs.get("position_ids")

    return seen, vlm.language_model.register_forward_pre_hook(grab, with_kwargs=True)


@torch.no_grad()
def generate(
    vlm: VisionLM,
    inputs: Mapping[str, torch.Tensor],
    schedule: Schedule,
    *,
    positions: str = "original",
    max_new_tokens: int = 32,
    seed: int = 0,
    info: Mapping[int, torch.Tensor] | None = None,
    use_cache: bool = True,
    return_logits: bool = False,
    decoding: str | Decoding = "checkpoint",
) -> Generation:
    """Greedy answer of ``vlm`` to ``inputs`` (one prompt) with ``schedule`` applied.

    ``decoding`` is the rule of :mod:`horizon.decoding` (``checkpoint``: greedy
    under the checkpoint's generation config; ``greedy``: raw argmax).

    ``info`` maps a layer to per-position information (S,) for ``info`` stages.
    ``use_cache=False`` recomputes the whole sequence at every step, repeating
    the selection made at prefill: the slow check that cached decoding is exact.
    """
    if positions not in POSITIONS:
        raise HorizonError(f"--positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    inputs = {k: v.to(vlm.device) for k, v in inputs.items()}
    if inputs["input_ids"].shape[0] != 1:
        raise HorizonError("pruned generation runs one prompt at a time")
    if positions == "renumber" and schedule.stages and vlm.adapter.attention != "causal":
        raise HorizonError(f"--positions renumber is defined for causal attention only; {vlm.adapter.name} declares "
                           f"{vlm.adapter.attention!r} attention (keep the original positions)")
    visual = torch.tensor(vlm.adapter.visual_positions(vlm.hf, inputs), dtype=torch.long, device=vlm.device)
    generator = torch.Generator().manual_seed(seed)
    state = _Pruning(vlm, schedule, visual, positions, generator, info)
    state.layout = vlm.adapter.attention_layout(vlm.hf, inputs)
    state.prompt_len = inputs["input_ids"].shape[1]

    seen, grab = _capture_position_ids(vlm)
    state.install(state.prefill)
    try:
        # Only the last position's logits are needed (as in transformers' generate).
        with vlm.adapter.restricted_to_present(vlm.language_model, lambda: state.present):
            out = vlm.hf(**inputs, use_cache=use_cache, logits_to_keep=1)
    finally:
        state.remove()
        grab.remove()
    position_ids = seen.get("position_ids")
    if positions == "renumber" and position_ids is not None and position_ids.ndim == 3 and schedule.stages:
        raise HorizonError("--positions renumber is defined for 1-D RoPE only; this model uses M-RoPE "
                           "(keep the original positions)")
    seq = inputs["input_ids"].shape[1]
    if position_ids is None:
        position_ids = torch.arange(seq, device=vlm.device)[None]
    logits = out.logits[0, -1].float()
    cache = vlm.adapter.output_cache(out) if use_cache else None

    def uncached(tokens: list[int]) -> torch.Tensor:
        return _uncached_step(vlm, inputs, tokens, schedule, visual, positions, state.kept)

    tokens, steps = decode(vlm, state, inputs["input_ids"], position_ids, logits, cache,
                           max_new_tokens=max_new_tokens, decoding=decoding, return_logits=return_logits,
                           uncached=None if use_cache else uncached)
    return generation(vlm, state, tokens, steps)


def decode(vlm: VisionLM, state: "_Pruning", input_ids: torch.Tensor, position_ids: torch.Tensor,
           logits: torch.Tensor, cache: Any, *, max_new_tokens: int, decoding: str | Decoding,
           return_logits: bool, uncached: Any = None) -> tuple[list[int], list[torch.Tensor]]:
    """The greedy loop after prefill: ``logits`` are the prompt's last position's, ``cache`` what prefill kept.

    ``uncached(tokens)`` (instead of a cache) recomputes the next logits from scratch.
    """
    eos = vlm.hf.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) - {None}
    rule = Decoding.for_model(vlm.hf, decoding)
    processors = rule.processors()
    seen_ids = input_ids  # every token so far: the repetition penalty counts the prompt too, as generate does
    tokens: list[int] = []
    steps: list[torch.Tensor] = []
    embed = vlm.hf.get_input_embeddings()
    if uncached is None:
        state.install(state.decode)  # every layer: decoding attends to the prefix layers' caches too
    try:
        for step in range(max_new_tokens):
            if return_logits:
                steps.append(logits.cpu())
            token = rule.next_token(seen_ids, logits, processors)
            if token in eos:
                break
            tokens.append(token)
            seen_ids = torch.cat([seen_ids, torch.tensor([[token]], device=seen_ids.device)], dim=1)
            if step == max_new_tokens - 1:
                break
            if uncached is None:
                state.step = step
                hidden = vlm.language_model(
                    inputs_embeds=embed(torch.tensor([[token]], device=vlm.device)),
                    position_ids=position_ids[..., -1:] + 1 + step, use_cache=True,
                    **vlm.adapter.cache_kwargs(vlm.language_model, cache),
                ).last_hidden_state
                logits = vlm.lm_head(hidden[0, -1]).float()
            else:
                logits = uncached(tokens)
    finally:
        state.remove()
    return tokens, steps


def generation(vlm: VisionLM, state: "_Pruning", tokens: list[int], steps: list[torch.Tensor]) -> Generation:
    """What one generation produced, from its pruning state."""
    return Generation(
        tokens=tokens,
        text=vlm.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
        n_visual=len(state.visual),
        kept=[k.tolist() for k in state.kept],
        visual_per_layer=[int(state.visual_mask[p].sum()) for p in state.layer_present],
        tokens_per_layer=[len(p) for p in state.layer_present],
        logits=steps,
    )


def _uncached_step(vlm: VisionLM, inputs: dict[str, torch.Tensor], tokens: list[int], schedule: Schedule,
                   visual: torch.Tensor, positions: str, kept: list[torch.Tensor]) -> torch.Tensor:
    """Next-token logits of prompt + ``tokens`` recomputed from scratch with the same kept tokens."""
    full = append_answer({k: v.cpu() for k, v in inputs.items()}, tokens)
    full = {k: v.to(vlm.device) for k, v in full.items()}
    replay = _Pruning(vlm, schedule, visual, positions, torch.Generator(), None, replay=kept)
    replay.install(replay.prefill)
    try:
        with vlm.adapter.restricted_to_present(vlm.language_model, lambda: replay.present):
            return vlm.hf(**full, use_cache=False, logits_to_keep=1).logits[0, -1].float()
    finally:
        replay.remove()
