"""Gemma 3 (Gemma3ForConditionalGeneration): one square grid per image, bidirectional image blocks, sliding layers.

The processor resizes the whole image to the vision tower's square (no crop,
no pad) and expands each ``<start_of_image>`` into ``\\n\\n<start_of_image>``,
``mm_tokens_per_image`` image tokens and ``<end_of_image>\\n\\n``; the SigLIP
patches are average-pooled to a ``sqrt(mm_tokens_per_image)`` square grid,
row-major. Only the image tokens carry visual features: the begin/end markers
and newlines are text and join no window.

Attention is not plain causal (the adapter declares ``attention =
"image-blocks"`` and gives the rule in :meth:`Gemma3Adapter.attends`): the
tokens of one image (``token_type_ids == 1``, a contiguous run) attend to each
other in both directions in every layer, and ``sliding_attention`` layers see
a key only if it lies less than ``sliding_window`` positions before the query
(keys after the query -- only ever in the same image block -- are not cut).
The two layer types also take different rotary embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import HorizonError
from .adapter import Adapter, register_adapter

LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass(frozen=True)
class Gemma3Layout:
    """What Gemma 3's attention rule needs about one sample: each position's image block and the window."""

    blocks: torch.Tensor  # (S,) long: index of the image block holding the position, -1 for text
    sliding_window: int

    def block_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Image block of each original position; positions past the prompt (generated tokens) are text."""
        inside = positions < len(self.blocks)
        blocks = self.blocks.to(positions.device)[positions.clamp(max=len(self.blocks) - 1)]
        return torch.where(inside, blocks, torch.full_like(blocks, -1))


@register_adapter
class Gemma3Adapter(Adapter):
    name = "gemma3"
    model_types = ("gemma3",)
    answer_separator = ""
    attention = "image-blocks"

    def visual_features_path(self) -> str:
        return "model.multi_modal_projector"

    def grid_shapes(self, model: torch.nn.Module, inputs: dict[str, Any], n_tokens: int) -> list[tuple[int, int]]:
        per_image = int(model.config.mm_tokens_per_image)
        side = math.isqrt(per_image)
        if side * side != per_image:
            raise HorizonError(f"gemma3: mm_tokens_per_image={per_image} is not a square grid")
        return [(side, side)] * max(1, n_tokens // per_image)

    # view: the base class's whole image -- the processor resizes all of it to the tower's square

    def encode(self, processor: Any, images: list, prompt: str) -> dict[str, torch.Tensor]:
        if getattr(getattr(processor, "image_processor", processor), "do_pan_and_scan", None):
            raise HorizonError("gemma3: pan-and-scan crops (do_pan_and_scan=True) are not supported; "
                               "set do_pan_and_scan=False in the image processor")
        return super().encode(processor, images, prompt)

    # -- attention -------------------------------------------------------
    def layer_types(self, language_model: torch.nn.Module) -> list[str]:
        types = list(language_model.config.layer_types)
        unknown = sorted(set(types) - set(LAYER_TYPES))
        if unknown or getattr(language_model.config, "use_bidirectional_attention", False):
            raise HorizonError(f"gemma3: layer types {unknown or 'with use_bidirectional_attention'} are not supported "
                               f"(only {', '.join(LAYER_TYPES)})")
        return types

    def attention_layout(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Gemma3Layout:
        """Image blocks as transformers numbers them (``get_block_sequence_ids_for_mask``): runs of token type 1."""
        types = inputs.get("token_type_ids")
        if types is None:
            raise HorizonError("gemma3: the processor output has no token_type_ids (the image blocks' mask needs them)")
        is_image = types[0] == 1
        starts = is_image & ~torch.cat([is_image.new_zeros(1), is_image[:-1]])
        blocks = torch.where(is_image, torch.cumsum(starts.long(), 0) - 1, torch.full_like(types[0], -1))
        cfg = model.config.get_text_config()
        return Gemma3Layout(blocks.long(), int(cfg.sliding_window))

    def attends(self, layout: Gemma3Layout, layer_type: str, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """full: causal OR same image block; sliding: that AND key > query - sliding_window (transformers' overlays)."""
        qb, kb = layout.block_of(query), layout.block_of(key)
        allowed = (key <= query) | ((qb == kb) & (qb >= 0))
        if layer_type == "sliding_attention":
            allowed = allowed & (key > query - layout.sliding_window)
        elif layer_type != "full_attention":
            raise HorizonError(f"gemma3: unknown layer type {layer_type!r}")
        return allowed

    def first_changed(self, layout: Gemma3Layout, position: int) -> int:
        """A bidirectional block's earlier tokens see its later ones: from the block's first token on, nothing is reused."""
        if position >= len(layout.blocks) or int(layout.blocks[position]) < 0:
            return position
        block = layout.blocks == layout.blocks[position]
        return int(block.nonzero()[0])

    def decoder_masks(self, masks: dict[str, torch.Tensor]) -> Any:
        return masks  # Gemma3TextModel takes {layer type: 4D mask} and hands each layer its own

    def skip_rotary(self, lm_envoy: Any, rotary: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The rotary module runs once per layer type: left to recompute them from the original position ids."""

    def unwindowed_cache(self, model: torch.nn.Module) -> Any:
        """A cache keeping every position in every layer (the model's own keeps only a sliding layer's window)."""
        from transformers import DynamicCache

        return DynamicCache()

    # key_values / last_token_attention: the base class's, which applies q/k norms, softcapping and the mask row
