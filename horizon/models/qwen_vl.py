"""Qwen2-VL / Qwen2.5-VL: dynamic grid per image, 2x2 patch merging, M-RoPE.

Also horizon's image-only Qwen-VL processor, for machines without
torchvision (transformers' processor needs it for video).
"""

from __future__ import annotations

from ..errors import HorizonError
from .adapter import Adapter, register_adapter
from .processors import ImageOnlyProcessor


@register_adapter
class QwenVLAdapter(Adapter):
    """Qwen2-VL / Qwen2.5-VL: dynamic grid per image, 2x2 patch merging, M-RoPE."""

    name = "qwen-vl"
    model_types = ("qwen2_5_vl", "qwen2_vl")
    answer_separator = ""

    def visual_features_path(self) -> str:
        return "model.visual.merger"

    # view: the base class's whole image -- smart_resize scales all of it to multiples of patch x merge

    def grid_shapes(self, model, inputs, n_tokens):
        merge = model.config.vision_config.spatial_merge_size
        shapes = []
        for t, h, w in inputs["image_grid_thw"].tolist():
            if t != 1:
                raise HorizonError("qwen-vl: video inputs (temporal grid > 1) are not supported")
            shapes.append((h // merge, w // merge))
        return shapes



class QwenVLImageProcessor(ImageOnlyProcessor):
    """Image-only Qwen-VL processor for machines without torchvision.

    Expands each image placeholder to one token per merged patch and marks
    image tokens in ``mm_token_type_ids`` (M-RoPE needs it).
    """

    image_token = "<|image_pad|>"

    def expand(self, images, out):
        merge = self.image_processor.merge_size**2
        return [self.image_token * (int(thw.prod()) // merge) for thw in out["image_grid_thw"]]

    def __call__(self, images=None, text="", return_tensors="pt"):
        out = super().__call__(images=images, text=text, return_tensors=return_tensors)
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        out["mm_token_type_ids"] = (out["input_ids"] == image_id).long()
        return out


# transformers cannot build the Qwen-VL processor without torchvision (its video processor needs it); images alone do not
QwenVLAdapter.image_only_processor = QwenVLImageProcessor
