"""Qwen2-VL / Qwen2.5-VL: dynamic grid per image, 2x2 patch merging, M-RoPE.

Also horizon's image-only Qwen-VL processor, for machines without
torchvision (transformers' processor needs it for video).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from ..errors import HorizonError
from .adapter import Adapter, register_adapter

log = logging.getLogger("horizon")


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
            # (its video processor needs it). Images alone do not. Only the
            # exception's first sentence is quoted: the rest is install URLs.
            first = re.split(r"(?<=\.)\s", " ".join(str(exc).split()), maxsplit=1)[0]
            reason = first if first and "://" not in first else type(exc).__name__
            log.warning("qwen-vl: transformers could not build the Qwen-VL processor (%s); using horizon's image-only "
                        "processor instead (install torchvision to use the transformers one)", reason)
            return QwenVLImageProcessor.from_pretrained(source, trust_remote_code)


@dataclass
class QwenVLImageProcessor:
    """Image-only Qwen-VL processor for machines without torchvision.

    Does what the transformers processor does for images: runs the image
    processor, expands each image placeholder to one token per merged patch,
    tokenizes, and marks image tokens in ``mm_token_type_ids`` (M-RoPE needs it).
    """

    tokenizer: Any
    image_processor: Any
    chat_template: str | None = None
    image_token: str = "<|image_pad|>"

    @classmethod
    def from_pretrained(cls, source: str, trust_remote_code: bool = False) -> "QwenVLImageProcessor":
        from transformers import AutoImageProcessor, AutoTokenizer
        from transformers.utils import cached_file

        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        template = None
        for name in ("chat_template.jinja", "chat_template.json"):
            path = cached_file(source, name, _raise_exceptions_for_missing_entries=False)
            if path:
                with open(path, encoding="utf-8") as fh:
                    template = fh.read() if name.endswith("jinja") else json.load(fh)["chat_template"]
                break
        image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        return cls(tokenizer, image_processor, template or tokenizer.chat_template, image_token)

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=add_generation_prompt, tokenize=tokenize
        )

    def __call__(self, images=None, text="", return_tensors="pt"):
        out: dict[str, Any] = {}
        if images:
            out.update(self.image_processor(images=images, return_tensors="pt"))
            merge = self.image_processor.merge_size**2
            pieces = text.split(self.image_token)
            if len(pieces) - 1 != len(images):
                raise HorizonError(f"prompt has {len(pieces) - 1} image placeholders for {len(images)} images")
            counts = [int(thw.prod()) // merge for thw in out["image_grid_thw"]]
            text = pieces[0] + "".join(self.image_token * n + rest for n, rest in zip(counts, pieces[1:]))
        enc = self.tokenizer(text, return_tensors="pt")
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        out.update(enc)
        out["mm_token_type_ids"] = (enc["input_ids"] == image_id).long()
        return out

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)
