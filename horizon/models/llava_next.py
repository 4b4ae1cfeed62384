"""LLaVA-NeXT (1.6) and LLaVA-OneVision: a low-resolution base grid plus a high-resolution "anyres" grid.

Each image becomes one unbroken run of the image token. First the base grid:
the whole image squashed to the vision tower's square input, ``side x side``
features (``side = image_size / patch_size``). Then the high-resolution grid:
the image resized (aspect kept) to fit the best of ``image_grid_pinpoints``,
padded to it, cut into tower-sized tiles whose features are stitched into one
grid, from which the padding rows (or columns) are removed again ("unpad").
After every row of that grid sits the learned ``image_newline`` embedding,
written with the same image token id: it is not a patch of the image, so it
belongs to no window and is never pruned as a visual token (the high-res grid
has ``row_stride = width + 1``). OneVision shrinks a high-res grid holding
more than ``anyres_max_N`` tiles' worth of features by bilinear interpolation
(the grid is the shrunk one), and for prompts with several images uses the
base grid alone followed by one newline.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import HorizonError
from ..groups import ImageGrid
from .adapter import Adapter, register_adapter
from .processors import image_processor_setting, without_video


def _best_resolution(size_hw: tuple[int, int], pinpoints: list[list[int]]) -> tuple[int, int]:
    """The pinpoint (height, width) transformers picks for an image of ``size_hw``: most effective pixels, then
    least waste (``select_best_resolution``)."""
    from transformers.image_processing_utils import select_best_resolution

    return tuple(int(x) for x in select_best_resolution(list(size_hw), pinpoints))


def _feature_side(vision_config: Any) -> int:
    """Features per side of one tile (and of the base image): the tower's input side over its patch size."""
    return vision_config.image_size // vision_config.patch_size


def _fitted(size_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int]:
    """Size (h, w) of the image resized, aspect kept, to fit ``target_hw`` (transformers' ``get_patch_output_size``)."""
    (h, w), (th, tw) = size_hw, target_hw
    if tw / w < th / h:
        return min(math.ceil(h * tw / w), th), tw
    return th, min(math.ceil(w * th / h), tw)


@register_adapter
class LlavaNextAdapter(Adapter):
    """LLaVA-NeXT: CLIP tower (CLS dropped), anyres high-res grid with a newline after each row."""

    name = "llava-next"
    model_types = ("llava_next",)
    answer_separator = " "
    high_res_level = "high-res"

    def visual_features_path(self) -> str:
        return "model.multi_modal_projector"

    # -- geometry --------------------------------------------------------
    def high_res_shape(self, config: Any, size_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """(rows, cols, pad_rows, pad_cols) of an image's high-res grid: the stitched tile features less the
        ``pad_rows`` feature rows (image wider than its canvas) or ``pad_cols`` columns unpadded from each side."""
        vc = config.vision_config
        side = _feature_side(vc)
        best_h, best_w = _best_resolution(size_hw, config.image_grid_pinpoints)
        rows, cols = best_h // vc.image_size * side, best_w // vc.image_size * side
        h, w = size_hw
        if w / h > cols / rows:  # wider than the canvas: padding rows above and below
            pad = (rows - int(round(h * (cols / w), 7))) // 2
            return rows - 2 * pad, cols, pad, 0
        pad = (cols - int(round(w * (rows / h), 7))) // 2
        return rows, cols - 2 * pad, 0, pad

    def final_high_res_shape(self, config: Any, size_hw: tuple[int, int]) -> tuple[int, int]:
        rows, cols, _, _ = self.high_res_shape(config, size_hw)
        return rows, cols

    def uses_high_res(self, n_images: int) -> bool:
        return True

    def grid_shapes(self, model, inputs, n_tokens):
        return [(g.height, g.width) for g in self.grids(model, inputs)]

    def grids(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[ImageGrid]:
        cfg = model.config
        strategy = getattr(cfg, "vision_feature_select_strategy", "default")
        if strategy not in ("default", "full"):
            raise HorizonError(f"{self.name}: vision_feature_select_strategy {strategy!r} does not map onto a grid")
        ids = inputs["input_ids"][0]
        visual = (ids == self.image_token_id(model)).nonzero().flatten().tolist()
        sizes = inputs.get("image_sizes")
        if sizes is None:
            raise HorizonError(f"{self.name}: the processor output has no image_sizes to read the grids from")
        sizes = [tuple(int(x) for x in s) for s in torch.as_tensor(sizes).tolist()]
        side = _feature_side(cfg.vision_config)
        per_prompt = inputs.get("batch_num_images")
        high_res = self.uses_high_res(int(per_prompt[0]) if per_prompt is not None else len(sizes))
        grids, at = [], 0  # at: index into ``visual`` of the image's first token
        for image, size_hw in enumerate(sizes):
            start = visual[at] if at < len(visual) else -1
            image_grids = [ImageGrid(start, side, side, image=image, level="base",
                                     region=self.base_region(size_hw, high_res))]
            n = side * side
            if high_res:
                rows, cols = self.final_high_res_shape(cfg, size_hw)
                image_grids.append(ImageGrid(start + n, rows, cols, cols + 1, image=image, level=self.high_res_level,
                                             region=self.high_res_region(cfg, size_hw)))
                n += rows * (cols + 1)
            else:
                n += 1  # one newline after the base grid
            run = visual[at : at + n]
            if len(run) != n or run != list(range(start, start + n)):
                raise HorizonError(f"{self.name}: image {image} ({size_hw[1]}x{size_hw[0]} px) should give one run of "
                                   f"{n} image tokens, the prompt has {len(run)} there")
            grids += image_grids
            at += n
        if at != len(visual):
            raise HorizonError(f"{self.name}: {len(visual)} image tokens but the images' grids hold {at}")
        return grids

    def base_region(self, size_hw: tuple[int, int], high_res: bool) -> tuple[float, float, float, float]:
        """Fractions of the image the base grid covers: all of it (the image is squashed onto the tower's square)."""
        return (0.0, 0.0, 1.0, 1.0)

    def high_res_region(self, config: Any, size_hw: tuple[int, int]) -> tuple[float, float, float, float]:
        """Fractions (x0, y0, x1, y1) of the image that the high-res grid covers.

        The canvas of the best pinpoint holds the image resized to fit, centred;
        the grid covers the canvas minus the unpadded feature rows (or columns),
        one feature per ``patch_size`` canvas pixels, mapped back through that
        resize -- a hair past the image where rounding leaves a sliver of padding.
        """
        vc = config.vision_config
        best_h, best_w = _best_resolution(size_hw, config.image_grid_pinpoints)
        new_h, new_w = _fitted(size_hw, (best_h, best_w))
        paste_y, paste_x = (best_h - new_h) // 2, (best_w - new_w) // 2
        _, _, pad_rows, pad_cols = self.high_res_shape(config, size_hw)
        px = vc.image_size / _feature_side(vc)  # canvas pixels per feature
        x0, y0 = pad_cols * px, pad_rows * px
        x1, y1 = best_w - x0, best_h - y0
        return ((x0 - paste_x) / new_w, (y0 - paste_y) / new_h, (x1 - paste_x) / new_w, (y1 - paste_y) / new_h)

    def view(self, processor, size, grid):
        """The whole image: the base image is squashed onto the tower's square, and the high-res grid's
        ``region`` (set by :meth:`grids`) is relative to the whole image. Refuses processors that crop tiles."""
        size_cfg = image_processor_setting(processor, "size") or {}
        side = size_cfg.get("shortest_edge") or size_cfg.get("height")
        if not side or size_cfg.get("width", side) != side:
            raise HorizonError(f"{self.name}: cannot map the grids of an image processor with size={size_cfg}")
        crop = image_processor_setting(processor, "crop_size") or {}
        crops = image_processor_setting(processor, "do_center_crop") and crop
        if crops and (crop.get("height"), crop.get("width")) != (side, side):
            raise HorizonError(f"{self.name}: cannot map the grids of an image processor that crops its {side}px "
                               f"tiles to {crop}")
        w, h = size
        return (0.0, 0.0, float(w), float(h))


@register_adapter
class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision: SigLIP tower (all features), Qwen2 decoder, ``anyres_max_N`` shrink, base grid only for
    prompts with several images."""

    name = "llava-onevision"
    model_types = ("llava_onevision",)
    answer_separator = ""

    def final_high_res_shape(self, config: Any, size_hw: tuple[int, int]) -> tuple[int, int]:
        rows, cols = super().final_high_res_shape(config, size_hw)
        side = _feature_side(config.vision_config)
        limit = int(str(getattr(config, "vision_aspect_ratio", "anyres_max_9")).removeprefix("anyres_max_"))
        ratio = math.sqrt(rows * cols / (limit * side**2))
        if ratio > 1.1:  # the model interpolates the grid down (bilinear), as transformers does
            return int(rows // ratio), int(cols // ratio)
        return rows, cols

    def uses_high_res(self, n_images: int) -> bool:
        return n_images == 1  # several images per prompt: each is its base grid and one newline

    def base_region(self, size_hw: tuple[int, int], high_res: bool) -> tuple[float, float, float, float]:
        """Without a high-res grid (several images per prompt) the processor first pads the image to a square,
        centred (``pad_to_square``), so the base grid spans past the image's short side."""
        if high_res:
            return (0.0, 0.0, 1.0, 1.0)
        h, w = size_hw
        side = max(h, w)
        x0, y0 = -((side - w) // 2) / w, -((side - h) // 2) / h
        return (x0, y0, x0 + side / w, y0 + side / h)

    def encode(self, processor, images, prompt):
        """The images as one prompt's list: OneVision's processor (and model) treat a flat list as one image per
        prompt and give every image its high-res grid; one prompt with several images gets base grids only."""
        return dict(processor(images=[images], text=[prompt], return_tensors="pt"))


# transformers builds LlavaOnevisionProcessor only with torchvision (for its video processor); images do not need it
LlavaOnevisionAdapter.image_only_processor = without_video("LlavaOnevisionProcessor")
