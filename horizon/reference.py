"""The slow, obviously-correct definition of removal: physical deletion.

Runs the unmodified transformers forward pass from the start, and just before
decoder layer ``l`` deletes the removed positions' hidden states (and the
matching rows of the rotary embeddings and mask), so that layers ``l..L-1``
see a shorter sequence whose tokens keep their original position ids. This is
what the paper's reference code does. Each layer's own mask and rotary
embedding, as the model computed them for the full sequence, are sliced to the
kept positions -- so families whose layers differ (Gemma 3's sliding and full
layers, its bidirectional image blocks) are handled by the model's own mask
code, never by the engine's. It shares no code with the engine and
is used to check it (tests) and as the naive baseline (analysis/bench_scan.py).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .models import VisionLM


def _slice_kwargs(kwargs: dict, keep: torch.Tensor, rotary: str) -> dict:
    cos, sin = kwargs[rotary]
    kwargs[rotary] = (cos[..., keep, :], sin[..., keep, :])
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 4:
        kwargs["attention_mask"] = mask[:, :, keep][:, :, :, keep]
    elif mask is not None:
        raise NotImplementedError(f"reference deletion cannot slice a {type(mask).__name__} mask")
    if isinstance(kwargs.get("position_ids"), torch.Tensor):
        kwargs["position_ids"] = kwargs["position_ids"][..., keep]
    return kwargs


@torch.no_grad()
def deleted_logits(
    vlm: VisionLM, inputs: dict[str, torch.Tensor], layer: int, removed: Sequence[int]
) -> torch.Tensor:
    """Logits (1, S', V) of the sequence with ``removed`` deleted before ``layer``.

    Row i of the result belongs to the i-th *kept* position.
    """
    inputs = {k: v.to(vlm.device) for k, v in inputs.items()}
    seq = inputs["input_ids"].shape[1]
    drop = set(removed)
    keep = torch.tensor([i for i in range(seq) if i not in drop], device=vlm.device)
    layers = vlm.layers
    rotary = vlm.adapter.rotary_keyword  # the keyword the layers take (cos, sin) by

    def first(module, args, kwargs):
        if args:
            args = (args[0][:, keep], *args[1:])
        else:
            kwargs["hidden_states"] = kwargs["hidden_states"][:, keep]
        return args, _slice_kwargs(kwargs, keep, rotary)

    def later(module, args, kwargs):
        return args, _slice_kwargs(kwargs, keep, rotary)

    hooks = [layers[layer].register_forward_pre_hook(first, with_kwargs=True)]
    hooks += [layers[j].register_forward_pre_hook(later, with_kwargs=True) for j in range(layer + 1, len(layers))]
    lm = vlm.language_model
    deepstack = getattr(lm, "_deepstack_process", None)
    if deepstack is not None:
        # Qwen3-VL adds features to the visual positions after its first layers; once positions are deleted,
        # only the remaining visual positions receive theirs
        def remaining_only(hidden_states, visual_pos_masks, visual_embeds):
            if visual_pos_masks.shape[-1] != hidden_states.shape[1]:
                mask = visual_pos_masks[0].to(keep.device)
                visual_embeds = visual_embeds[(torch.cumsum(mask.long(), 0) - 1)[keep[mask[keep]]]]
                visual_pos_masks = mask[keep][None]
            return deepstack(hidden_states, visual_pos_masks, visual_embeds)

        lm._deepstack_process = remaining_only
    try:
        return vlm.hf(**inputs, use_cache=False).logits
    finally:
        for hook in hooks:
            hook.remove()
        if deepstack is not None:
            del lm._deepstack_process


def kept_index(seq_len: int, removed: Sequence[int], position: int) -> int:
    """Row of ``position`` in a sequence of ``seq_len`` with ``removed`` deleted."""
    return position - sum(1 for r in removed if r < position)
