"""InternVL (InternVL3-hf and kin): an InternViT tower, pixel shuffle 0.5, tiles plus a thumbnail, a Qwen2 decoder.

The image processor (got_ocr2's, with ``crop_to_patches``) resizes the whole
image, aspect NOT kept, to a canvas of ``cols x rows`` square tiles chosen by
``get_optimal_tiled_canvas`` (closest aspect ratio within ``min_patches ..
max_patches`` tiles) and cuts it row-major; when there is more than one tile
it appends a thumbnail: the whole image resized to one tile. The processor
writes ``<img>`` + ``<IMG_CONTEXT>`` x (tokens per tile x tiles) + ``</img>``
per image, so an image is ONE contiguous run of image tokens: its tiles, then
the thumbnail, each a square grid of ``(tile side / patch / 2)^2`` tokens
(pixel shuffle merges 2 x 2 patches, row-major).

The run says how many tiles an image has but not their layout (2 tiles are
1 x 2 or 2 x 1); the layout is the processor's choice for the image's size, so
:meth:`InternVLAdapter.encode` adds ``image_sizes`` (H, W per image) to the
inputs -- ``InternVLForConditionalGeneration.forward`` takes that keyword --
and :meth:`InternVLAdapter.grids` replays ``get_optimal_tiled_canvas``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import HorizonError
from ..groups import ImageGrid
from .adapter import Adapter, register_adapter
from .processors import ImageOnlyProcessor


def token_runs(ids: list[int], token: int) -> list[tuple[int, int]]:
    """(start, length) of every maximal run of ``token`` in ``ids``."""
    runs: list[tuple[int, int]] = []
    for i, t in enumerate(ids):
        if t != token:
            continue
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def tile_canvas(size_hw: tuple[int, int], tile_hw: tuple[int, int], n_tiles: int) -> tuple[int, int]:
    """(cols, rows) of the canvas got_ocr2's processor picks for an image of ``size_hw`` when it cut ``n_tiles``.

    ``get_optimal_tiled_canvas`` chooses among all layouts of ``min..max`` tiles;
    the one it chose is also its choice among the layouts of exactly
    ``n_tiles`` tiles (same aspect-ratio criterion, same tie-break), so the
    processor's min/max settings are not needed.
    """
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    cols, rows = get_optimal_tiled_canvas(tuple(size_hw), tuple(tile_hw), n_tiles, n_tiles)  # returns (cols, rows)
    return cols, rows


@register_adapter
class InternVLAdapter(Adapter):
    name = "internvl"
    model_types = ("internvl",)
    answer_separator = ""

    def visual_features_path(self) -> str:
        return "model.multi_modal_projector"

    def tile_shape(self, model: torch.nn.Module) -> tuple[tuple[int, int], tuple[int, int]]:
        """((token rows, token cols) of one tile, (pixel height, pixel width) of one tile)."""
        cfg = model.config
        vc = cfg.vision_config
        size = vc.image_size if isinstance(vc.image_size, (list, tuple)) else (vc.image_size, vc.image_size)
        patch = vc.patch_size if isinstance(vc.patch_size, (list, tuple)) else (vc.patch_size, vc.patch_size)
        ratio = cfg.downsample_ratio
        if getattr(cfg, "vision_feature_select_strategy", "default") != "default":
            raise HorizonError("internvl: only vision_feature_select_strategy='default' (CLS token dropped) maps onto tiles")
        tokens = (int(size[0] // patch[0] * ratio), int(size[1] // patch[1] * ratio))
        return tokens, (int(size[0]), int(size[1]))

    def encode(self, processor: Any, images: list, prompt: str) -> dict[str, torch.Tensor]:
        out = super().encode(processor, images, prompt)
        # the tile layout depends on each image's size, which the processor's output does not carry
        out.setdefault("image_sizes", torch.tensor([[im.height, im.width] for im in images], dtype=torch.long))
        return out

    def grid_shapes(self, model, inputs, n_images):
        return [(g.height, g.width) for g in self.grids(model, inputs)]

    def grids(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[ImageGrid]:
        (th, tw), tile_px = self.tile_shape(model)
        per_tile = th * tw
        runs = token_runs(inputs["input_ids"][0].tolist(), self.image_token_id(model))
        sizes = inputs.get("image_sizes")
        sizes = torch.as_tensor(sizes).tolist() if sizes is not None else None
        if sizes is not None and len(sizes) != len(runs):
            raise HorizonError(f"internvl: {len(runs)} image token runs in the prompt but {len(sizes)} image sizes")
        grids: list[ImageGrid] = []
        for image, (start, length) in enumerate(runs):
            if length % per_tile:
                raise HorizonError(f"internvl: image {image} has {length} image tokens, not a multiple of the "
                                   f"{per_tile} tokens of a {th}x{tw} tile")
            n = length // per_tile
            if n == 1:  # one tile, no thumbnail: the whole image
                grids.append(ImageGrid(start, th, tw, image=image, level="tiles"))
                continue
            if sizes is None:
                raise HorizonError("internvl: the inputs carry no image_sizes to lay out the tiles by "
                                   "(encode prompts with the adapter's encode)")
            tiles = n - 1
            cols, rows = tile_canvas(tuple(sizes[image]), tile_px, tiles)
            if cols * rows != tiles:
                raise HorizonError(f"internvl: image {image} has {tiles} tiles, which no canvas for its size "
                                   f"{sizes[image][1]}x{sizes[image][0]} holds")
            for t in range(tiles):
                r, c = divmod(t, cols)
                grids.append(ImageGrid(start + t * per_tile, th, tw, image=image, level="tiles",
                                       region=(c / cols, r / rows, (c + 1) / cols, (r + 1) / rows)))
            grids.append(ImageGrid(start + tiles * per_tile, th, tw, image=image, level="thumbnail"))
        return grids

    # view: the base class's whole image -- the tiles' canvas and the thumbnail are both the whole image,
    # resized without keeping its aspect ratio; each tile's region is its share of the canvas


class InternVLImageProcessor(ImageOnlyProcessor):
    """Image-only InternVL processor: each ``<IMG_CONTEXT>`` placeholder becomes ``<img>`` + ``<IMG_CONTEXT>`` x
    (``image_seq_length`` x the image's tiles) + ``</img>``, the image processor run with ``crop_to_patches=True``
    (as transformers' InternVLProcessor)."""

    image_token = "<IMG_CONTEXT>"

    @classmethod
    def from_pretrained(cls, source: str, trust_remote_code: bool = False):
        processor = super().from_pretrained(source, trust_remote_code)
        processor.image_token = getattr(processor.tokenizer, "context_image_token", None) or cls.image_token
        return processor

    def process_images(self, images):
        return dict(self.image_processor(images=images, crop_to_patches=True, return_tensors="pt"))

    def expand(self, images, out):
        seq = int(self.config.get("image_seq_length", 256))
        start = getattr(self.tokenizer, "start_image_token", None) or "<img>"
        end = getattr(self.tokenizer, "end_image_token", None) or "</img>"
        return [start + self.image_token * (seq * int(n)) + end for n in out["num_patches"].tolist()]

    def __call__(self, images=None, text="", return_tensors="pt"):
        out = super().__call__(images=images, text=text, return_tensors=return_tensors)
        out.pop("num_patches", None)  # InternVLProcessor drops it too: the model takes the tiles flat
        return out


# transformers' InternVLProcessor holds a video processor, which needs torchvision
InternVLAdapter.image_only_processor = InternVLImageProcessor
