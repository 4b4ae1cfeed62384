"""Qwen3-VL: Qwen-VL's dynamic grids and M-RoPE (interleaved), q/k norms, and DeepStack.

DeepStack: the vision tower hands the language model, besides the visual
tokens, one extra feature per visual token for each of its first few decoder
layers (``deepstack_visual_embeds[i]``, added to the hidden states of the
visual positions after decoder layer i). Removing a group from layer l on
therefore also stops those injections into its positions from layer l on,
while the kept visual positions still receive theirs: the engine hands the
language model, per recomputed row, the mask of kept visual positions and
their features, and pruning restricts the injection to the positions still
present.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from .adapter import register_adapter
from .processors import without_video
from .qwen_vl import QwenVLAdapter


@register_adapter
class Qwen3VLAdapter(QwenVLAdapter):
    name = "qwen3-vl"
    model_types = ("qwen3_vl",)

    def visual_features_path(self) -> str:
        return "model.visual.merger"

    # q_norm / k_norm: handled by the base key_values / last_token_attention (they apply an attention's norms)

    def clean_extras(self, lm_kwargs: dict[str, Any]) -> dict[str, Any]:
        embeds = lm_kwargs.get("deepstack_visual_embeds")
        mask = lm_kwargs.get("visual_pos_masks")
        if embeds is None or mask is None:
            return {}
        return {"deepstack": list(embeds), "visual_mask": mask[0]}  # (n_visual, D) per layer; (S,) bool

    def ablated_lm_kwargs(self, extras, index, valid, layer):
        if not extras:
            return {}
        mask, embeds = extras["visual_mask"], extras["deepstack"]
        rank = torch.cumsum(mask.long(), 0) - 1  # a visual position's row in each layer's DeepStack features
        at = index.to(mask.device)
        rows_mask = mask[at] & valid.to(mask.device)  # (B, n): kept visual positions among the recomputed rows
        picked = rank[at][rows_mask]  # row-major over (B, n), as the model's boolean indexing reads it
        # layers before ``layer`` are skipped (their output is the clean input of ``layer``, which already holds
        # their injections): they get zeros, which add nothing
        return {
            "visual_pos_masks": rows_mask,
            "deepstack_visual_embeds": [e[picked] * (0 if i < layer else 1) for i, e in enumerate(embeds)],
        }

    def restricted_to_present(self, language_model: torch.nn.Module,
                              present: Callable[[], torch.Tensor | None]) -> contextlib.AbstractContextManager:
        return _deepstack_on_present(language_model, present)


@contextlib.contextmanager
def _deepstack_on_present(language_model: torch.nn.Module, present: Callable[[], Any]) -> Iterator[None]:
    """Within the block, the DeepStack step adds features only at the visual positions still present."""
    original = language_model._deepstack_process  # bound method of this instance

    def on_present(hidden_states, visual_pos_masks, visual_embeds):
        kept = present()
        if kept is not None and visual_pos_masks is not None and visual_pos_masks.shape[-1] != hidden_states.shape[1]:
            mask = visual_pos_masks.to(hidden_states.device)
            rank = torch.cumsum(mask[0].long(), 0) - 1
            kept = kept.to(mask.device)
            visual_pos_masks = mask[:, kept]
            visual_embeds = visual_embeds[rank[kept][mask[0, kept]].to(visual_embeds.device)]
        return original(hidden_states, visual_pos_masks, visual_embeds)

    language_model._deepstack_process = on_present
    try:
        yield
    finally:
        del language_model._deepstack_process  # back to the class's method


# transformers builds Qwen3VLProcessor only with torchvision (for its video processor); images do not need it
Qwen3VLAdapter.image_only_processor = without_video("Qwen3VLProcessor")
