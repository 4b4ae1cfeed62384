"""Qwen2-VL / Qwen2.5-VL: dynamic grid per image, 2x2 patch merging, M-RoPE.

Also horizon's image-only Qwen-VL processor, for machines without
torchvision (transformers' processor needs it for video).
"""

from __future__ import annotations

from ..errors import HorizonError
from .adapter import Adapter, register_adapter
from .processors import ImageOnlyProcessor, fallback_warning


@register_adapter
class QwenVLAdapter(Adapter):
    """Qwen2-VL / Qwen2.5-VL: dynamic grid per image, 2x2 patch merging, M-RoPE."""

    name = "qwen-vl"
    model_types = ("qwen2_5_vl", "qwen2_vl")
    answer_separator = ""

    def visual_features_path(self) -> str:
        return "model.visual.merger"

    def view(self, processor, size, grid):
        # smart_resize scales the whole image to multiples of patch x merge: no crop, no pad
        w, h = size
        return (0.0, 0.0, float(w), float(h))

    def grid_shapes(self, model, inputs, n_tokens):
        merge = model.config.vision_config.spatial_merge_size
        shapes = []
        for t, h, w in inputs["image_grid_thw"].tolist():
            if t != 1:
                raise HorizonError("qwen-vl: video inputs (temporal grid > 1) are not supported")
            shapes.append((h // merge, w // merge))
        return shapes

    def load_processor(self, source, trust_remote_code):
        try:
            return super().load_processor(source, trust_remote_code)
        except (AttributeError, ImportError, ValueError) as exc:
            # transformers cannot build a Qwen-VL processor without torchvision
            # (its video processor needs it). Images alone do not.
            fallback_warning("qwen-vl", exc)
            return QwenVLImageProcessor.from_pretrained(source, trust_remote_code)


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
