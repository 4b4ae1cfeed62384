"""Model adapters: the only place where architectures differ.

An adapter knows where the decoder layers live, how to build a prompt with the
processor's chat template, which sequence positions hold visual tokens, and
each image's token grid. Everything else in horizon is architecture-agnostic.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import re
import sys
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .errors import HorizonError
from .groups import ImageGrid

log = logging.getLogger("horizon")


class Adapter:
    """Base class; subclasses describe one family of checkpoints."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    # Text between the generation prompt and the answer when teacher forcing.
    answer_separator: str = ""
    # Most images one prompt may hold (None: no limit); checked before weights load.
    max_images: int | None = None
    # Logged once per scan when a sample has several images ("" for none).
    multi_image_warning: str = ""

    # -- model structure -------------------------------------------------
    def language_model_path(self) -> str:
        """Attribute path of the decoder stack (has `.layers` and `.norm`)."""
        return "model.language_model"

    def lm_head_path(self) -> str:
        return "lm_head"

    def visual_features_path(self) -> str:
        """Module whose output is the visual tokens' embeddings as the language model receives them."""
        raise NotImplementedError

    def image_token_id(self, model: torch.nn.Module) -> int:
        return int(model.config.image_token_id)

    def key_values(
        self, layer: torch.nn.Module, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (after RoPE) and values a decoder layer's attention computes from ``hidden``.

        Lets the engine run the last layer for the scored rows only: the other
        rows contribute keys and values and nothing else. Written for the
        Llama-style layer that LLaVA and Qwen-VL share; shapes (B, kv_heads, n, head_dim).
        """
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        shape = (*x.shape[:-1], -1, attn.head_dim)
        keys = attn.k_proj(x).view(shape).transpose(1, 2)
        values = attn.v_proj(x).view(shape).transpose(1, 2)
        rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        cos, sin = position_embeddings
        _, keys = rope(keys, keys, cos, sin)
        return keys, values

    def last_token_attention(
        self, layer: torch.nn.Module, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """Attention weights (heads, n) of the last position over all n positions, computed explicitly.

        sdpa and flash attention never materialise the weights, so FastV's
        criterion is recomputed here from the layer's own projections (the
        last position attends to every position, so no mask is needed).
        ``hidden`` is the layer's input (1, n, D).
        """
        attn = layer.self_attn
        keys, _ = self.key_values(layer, hidden, position_embeddings)  # (1, kv_heads, n, hd)
        x = layer.input_layernorm(hidden[:, -1:])
        query = attn.q_proj(x).view(1, 1, -1, attn.head_dim).transpose(1, 2)  # (1, heads, 1, hd)
        rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        cos, sin = position_embeddings
        query, _ = rope(query, query, cos[:, -1:], sin[:, -1:])
        keys = keys.repeat_interleave(query.shape[1] // keys.shape[1], dim=1)  # grouped-query heads
        scores = (query.float() @ keys.float().transpose(-1, -2)) * attn.scaling
        return torch.softmax(scores, dim=-1)[0, :, 0]

    # -- caches ----------------------------------------------------------
    def cache_keyword(self, module: torch.nn.Module) -> str:
        """The keyword ``module``'s forward takes its KV cache by.

        transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old
        name warns and goes away in 5.40); earlier 5.x releases only know the
        old one. Reading the signature supports both without a version table.
        """
        params = inspect.signature(module.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def cache_kwargs(self, module: torch.nn.Module, cache: Any) -> dict[str, Any]:
        return {self.cache_keyword(module): cache}

    def make_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor] | None]) -> Any:
        """A KV cache holding ``layers[j]`` = (keys, values) for layer j; None leaves a layer empty."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[kv if kv is not None else (None, None) for kv in layers])

    def output_cache(self, output: Any) -> Any:
        """The KV cache a forward pass returned, under either of transformers' names."""
        fields = output.keys() if hasattr(output, "keys") else ()
        return output["cache"] if "cache" in fields else output.past_key_values

    # -- output head -----------------------------------------------------
    def scored_logits(self, language_model: torch.nn.Module, lm_head: torch.nn.Module,
                      hidden: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """Logits in at least float32 from the last decoder layer's output ``hidden`` (..., D).

        The final norm and the output projection run in float32 (float64 for a
        float64 model) whatever the model's dtype: in bfloat16 the logits themselves are rounded to about
        three significant digits, which alone moves small scores. The
        projection goes in vocabulary chunks so no float32 copy of the whole
        head is held. Llama-style RMSNorm upcasts to float32 inside and only
        casts back to its input's dtype, so a float32 input stays float32.
        """
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        x = language_model.norm(hidden.to(dtype))
        weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
        parts = []
        for start in range(0, weight.shape[0], chunk):
            w = weight[start : start + chunk].to(dtype)
            b = bias[start : start + chunk].to(dtype) if bias is not None else None
            parts.append(torch.nn.functional.linear(x, w, b))
        return torch.cat(parts, dim=-1)

    # -- processing ------------------------------------------------------
    def load_processor(self, source: str, trust_remote_code: bool) -> Any:
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)

    def prompt(self, processor: Any, question: str, n_images: int = 1) -> str:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode(self, processor: Any, images: list[Image.Image], prompt: str) -> dict[str, torch.Tensor]:
        return dict(processor(images=images, text=prompt, return_tensors="pt"))

    def check_image_count(self, n_images: int, where: str) -> None:
        """Refuse, in one line naming ``where``, a prompt with more images than the family takes."""
        if self.max_images is not None and n_images > self.max_images:
            raise HorizonError(
                f"{where} has {n_images} images but {self.name} models take at most {self.max_images} per prompt"
            )

    # -- geometry --------------------------------------------------------
    def view(self, processor: Any, size: tuple[int, int], grid: tuple[int, int]) -> tuple[float, float, float, float]:
        """Rectangle (x0, y0, x1, y1), in the original image's pixels, that a token grid of shape ``grid`` spans.

        ``size`` is the original (W, H). Cells are uniform inside it (resizing
        is linear); it extends past the image where the processor pads and is
        a sub-rectangle where it crops. Default: the whole image.
        """
        w, h = size
        return (0.0, 0.0, float(w), float(h))

    def grid_shapes(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], n_images: int) -> list[tuple[int, int]]:
        raise NotImplementedError

    def grids(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[ImageGrid]:
        """Token grid of every image, in sequence order."""
        ids = inputs["input_ids"][0]
        visual = (ids == self.image_token_id(model)).nonzero().flatten().tolist()
        shapes = self.grid_shapes(model, inputs, max(1, len(visual)))
        grids, i = [], 0
        for h, w in shapes:
            run = visual[i : i + h * w]
            if len(run) != h * w or run != list(range(run[0], run[0] + h * w)):
                raise HorizonError(
                    f"{self.name}: cannot map the prompt's {len(visual)} image tokens onto "
                    f"grids {shapes} (contiguous row-major runs expected)"
                )
            grids.append(ImageGrid(run[0], h, w))
            i += h * w
        if i != len(visual):
            raise HorizonError(f"{self.name}: {len(visual)} image tokens but grids {shapes} hold {i}")
        return grids


class LlavaAdapter(Adapter):
    """LLaVA-1.5 style: CLIP-like tower, a fixed square grid per image."""

    name = "llava"
    model_types = ("llava",)
    answer_separator = " "
    multi_image_warning = (
        "llava: LLaVA-1.5 was trained on one image per prompt; samples with several images are outside its training"
    )

    def view(self, processor, size, grid):
        """Replays the CLIP / LLaVA image processor's geometry: optional pad to square, resize, center crop.

        Integer rounding follows transformers: the shortest-edge resize keeps
        ``int(size * long / short)`` for the long side; the center crop starts at
        ``(resized - crop) // 2`` (the numpy backend, which pads symmetrically
        when the crop is larger) or, for the torchvision backend, pads by
        ``(crop - resized) // 2`` first.
        """
        ip = getattr(processor, "image_processor", processor)
        w, h = size

        def setting(name):
            value = getattr(ip, name, None)
            if dataclasses.is_dataclass(value):  # transformers' SizeDict
                value = dataclasses.asdict(value)
            return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value

        # canvas: the image after padding, as (left, top, width, height) in original pixels
        left, top, cw, ch = 0, 0, w, h
        if setting("do_pad"):
            if not hasattr(ip, "pad_to_square"):
                raise HorizonError(f"llava: cannot map the grid of {type(ip).__name__} with do_pad=True onto the image")
            side = max(w, h)  # pad_to_square pastes the image at (side - w) // 2, (side - h) // 2
            left, top, cw, ch = -((side - w) // 2), -((side - h) // 2), side, side
        new_h, new_w = ch, cw
        if setting("do_resize"):
            rs = setting("size") or {}
            if set(rs) == {"shortest_edge"}:
                s = int(rs["shortest_edge"])
                short, long = (cw, ch) if cw <= ch else (ch, cw)
                new_long = int(s * long / short)
                new_h, new_w = (new_long, s) if cw <= ch else (s, new_long)
            elif set(rs) == {"height", "width"}:
                new_h, new_w = int(rs["height"]), int(rs["width"])
            else:
                raise HorizonError(f"llava: cannot map the grid of an image processor resizing to size={rs} onto the image")
        y0, x0, out_h, out_w = 0, 0, new_h, new_w
        if setting("do_center_crop"):
            crop = setting("crop_size") or {}
            if set(crop) != {"height", "width"}:
                raise HorizonError(f"llava: cannot map the grid of an image processor cropping to crop_size={crop}")
            out_h, out_w = int(crop["height"]), int(crop["width"])
            numpy_backend = "TorchvisionBackend" not in {c.__name__ for c in type(ip).__mro__}

            def offset(full: int, want: int) -> int:
                if want <= full or numpy_backend:
                    return (full - want) // 2
                return -((want - full) // 2)

            y0, x0 = offset(new_h, out_h), offset(new_w, out_w)
        sx, sy = cw / new_w, ch / new_h
        return (left + x0 * sx, top + y0 * sy, left + (x0 + out_w) * sx, top + (y0 + out_h) * sy)

    def visual_features_path(self) -> str:
        return "model.multi_modal_projector"

    def grid_shapes(self, model, inputs, n_tokens):
        cfg = model.config
        if getattr(cfg, "vision_feature_select_strategy", "default") != "default":
            raise HorizonError(
                "llava: only vision_feature_select_strategy='default' (CLS token dropped) maps onto a grid"
            )
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        n_images = max(1, n_tokens // (side * side))
        return [(side, side)] * n_images


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


ADAPTERS: tuple[type[Adapter], ...] = (LlavaAdapter, QwenVLAdapter)


def supported_model_types() -> list[str]:
    return [t for a in ADAPTERS for t in a.model_types]


def adapter_for(config: Any) -> Adapter:
    """Pick the adapter for a transformers config, or fail naming what is supported."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter()
    archs = ", ".join(getattr(config, "architectures", None) or [str(model_type)])
    raise HorizonError(
        f"unsupported architecture {archs} (model_type {model_type!r}); "
        f"supported model types: {', '.join(supported_model_types())}"
    )
