"""Mistral 3 (Mistral-Small-3.1 and kin): a Pixtral vision tower, dynamic grids with a break token after each row.

The processor resizes each image (keeping its aspect ratio) to a multiple of
``patch_size x spatial_merge_size`` and writes, per row of merged patches,
``w`` image tokens followed by ``[IMG_BREAK]`` (``[IMG_END]`` after the last
row). Only the image tokens carry visual features; the break and end tokens
are ordinary text embeddings, so they belong to no window and are never
pruned. The grid of image i is ``image_sizes[i] // (patch_size x merge)``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import HorizonError
from .adapter import Adapter, register_adapter
from .processors import ImageOnlyProcessor


@register_adapter
class Mistral3Adapter(Adapter):
    name = "mistral3"
    model_types = ("mistral3",)
    answer_separator = ""
    row_separators = 1  # [IMG_BREAK] (or [IMG_END] on the last row) after every row

    def visual_features_path(self) -> str:
        return "model.multi_modal_projector"

    def grid_shapes(self, model: torch.nn.Module, inputs: dict[str, Any], n_tokens: int) -> list[tuple[int, int]]:
        sizes = inputs.get("image_sizes")
        if sizes is None:
            raise HorizonError("mistral3: the processor output has no image_sizes to read the grids from")
        side = model.config.vision_config.patch_size * model.config.spatial_merge_size
        return [(int(h) // side, int(w) // side) for h, w in torch.as_tensor(sizes).tolist()]

    # view: the base class's whole image -- the processor resizes all of it (aspect kept) to whole merged patches


class PixtralImageProcessor(ImageOnlyProcessor):
    """Image-only Pixtral processor: each ``[IMG]`` placeholder becomes, per row of merged patches, ``w``
    image tokens and ``[IMG_BREAK]``, the last row ending in ``[IMG_END]`` (as transformers' PixtralProcessor)."""

    image_token = "[IMG]"

    @property
    def merged_patch(self) -> int:
        return int(self.config.get("patch_size", 16)) * int(self.config.get("spatial_merge_size", 1))

    def process_images(self, images):
        side = self.merged_patch  # the processor resizes to multiples of the merged patch
        return dict(self.image_processor(images=images, patch_size={"height": side, "width": side},
                                         return_tensors="pt"))

    def expand(self, images, out):
        brk = self.config.get("image_break_token", "[IMG_BREAK]")
        end = self.config.get("image_end_token", "[IMG_END]")
        texts = []
        for h, w in out["image_sizes"].tolist():
            rows = [self.image_token * (w // self.merged_patch) + brk] * (h // self.merged_patch)
            rows[-1] = rows[-1][: -len(brk)] + end
            texts.append("".join(rows))
        return texts


# transformers' PixtralProcessor requires torchvision; its PIL image processor does not
Mistral3Adapter.image_only_processor = PixtralImageProcessor
