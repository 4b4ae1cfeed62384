"""LLaVA-1.5 (llava-hf): a CLIP tower, one square grid per image, the processor's resize and center crop."""

from __future__ import annotations

from ..errors import HorizonError
from .adapter import Adapter, register_adapter
from .processors import image_processor_setting


@register_adapter
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
            return image_processor_setting(ip, name)

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
