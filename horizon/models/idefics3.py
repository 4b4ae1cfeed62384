"""Idefics3 and SmolVLM: a SigLIP tower, pixel shuffle, tiles plus a global image, decoder at ``model.text_model``.

The image processor scales the image's longest edge to ``size`` (aspect
kept), then stretches it to whole multiples of the tile side
(``max_image_size``) and cuts it row-major into ``rows x cols`` tiles; a split
image also gets a global image, the whole image stretched to one tile (an
image no larger than one tile is only that global image). The processor
writes, per tile, ``<fake_token_around_image><row_r_col_c>`` + ``<image>`` x n,
a ``\\n`` after each row of tiles, then ``\\n<fake_token_around_image><global-img>``
+ ``<image>`` x n + ``<fake_token_around_image>``. Every tile and the global
image is a square grid of n tokens (pixel shuffle by ``scale_factor``,
row-major). The grids are read off the marker token before each run of image
tokens, so the adapter learns the tokenizer's marker ids from the processor it
loads or encodes with.

SmolVLM has the same geometry and model classes of its own; its processor
takes the marker tokens from the tokenizer rather than hard-coding them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import HorizonError
from ..groups import ImageGrid
from .adapter import Adapter, register_adapter
from .internvl import token_runs
from .processors import ImageOnlyProcessor

FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"
TILE_MARKER = re.compile(r"<row_(\d+)_col_(\d+)>")


@dataclass(frozen=True)
class TileMarkers:
    """Token ids of the markers before each run of image tokens: ``<row_r_col_c>`` (1-based) and ``<global-img>``."""

    tiles: dict[int, tuple[int, int]]
    global_image: int

    @classmethod
    def of(cls, tokenizer: Any) -> "TileMarkers":
        tiles = {}
        for token, token_id in tokenizer.get_vocab().items():
            match = TILE_MARKER.fullmatch(token)
            if match:
                tiles[int(token_id)] = (int(match[1]), int(match[2]))
        token = getattr(tokenizer, "global_image_token", None) or GLOBAL_TOKEN
        return cls(tiles, int(tokenizer.convert_tokens_to_ids(token)))


@register_adapter
class Idefics3Adapter(Adapter):
    name = "idefics3"
    model_types = ("idefics3",)
    answer_separator = " "  # the prompt ends in "Assistant:", the answer follows a space

    def __init__(self) -> None:
        self.markers: TileMarkers | None = None  # learned from the processor (load_processor / encode)

    def language_model_path(self) -> str:
        return "model.text_model"

    def visual_features_path(self) -> str:
        return "model.connector"

    def load_processor(self, source: str, trust_remote_code: bool) -> Any:
        processor = super().load_processor(source, trust_remote_code)
        self.markers = TileMarkers.of(getattr(processor, "tokenizer", processor))
        return processor

    def encode(self, processor: Any, images: list, prompt: str) -> dict[str, torch.Tensor]:
        if self.markers is None:
            self.markers = TileMarkers.of(getattr(processor, "tokenizer", processor))
        return super().encode(processor, images, prompt)

    def tile_tokens(self, model: torch.nn.Module) -> int:
        """Side of one tile's square token grid (as the model computes image_seq_len)."""
        cfg = model.config
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        if side % cfg.scale_factor:
            raise HorizonError(f"{self.name}: {side} patches per tile side do not pixel-shuffle by {cfg.scale_factor}")
        return side // cfg.scale_factor

    def grid_shapes(self, model, inputs, n_images):
        return [(g.height, g.width) for g in self.grids(model, inputs)]

    def grids(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[ImageGrid]:
        if self.markers is None:
            raise HorizonError(f"{self.name}: the adapter has not seen the processor's tokenizer "
                               "(load the model with horizon.load or encode with the adapter)")
        side = self.tile_tokens(model)
        ids = inputs["input_ids"][0].tolist()
        runs = token_runs(ids, self.image_token_id(model))
        if runs and {length for _, length in runs} != {side * side}:
            raise HorizonError(f"{self.name}: {sum(n for _, n in runs)} image tokens in runs of "
                               f"{sorted({n for _, n in runs})}, not of one {side}x{side} tile each")
        grids: list[ImageGrid] = []
        tiles: list[tuple[int, int, int]] = []  # (start, row, col) of the current image's tiles so far
        image = 0
        for start, _ in runs:
            marker = ids[start - 1] if start else None
            if marker in self.markers.tiles:
                tiles.append((start, *self.markers.tiles[marker]))
                continue
            if marker != self.markers.global_image:
                raise HorizonError(f"{self.name}: the image tokens at position {start} follow neither a "
                                   "<row_r_col_c> nor a <global-img> marker")
            rows = max((r for _, r, _ in tiles), default=0)
            cols = max((c for _, _, c in tiles), default=0)
            if [(r, c) for _, r, c in tiles] != [(r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)]:
                raise HorizonError(f"{self.name}: image {image}'s {len(tiles)} tiles do not form a row-major "
                                   f"{rows}x{cols} grid")
            for tile_start, r, c in tiles:
                grids.append(ImageGrid(tile_start, side, side, image=image, level="tiles",
                                       region=((c - 1) / cols, (r - 1) / rows, c / cols, r / rows)))
            grids.append(ImageGrid(start, side, side, image=image, level="thumbnail"))
            tiles, image = [], image + 1
        if tiles:
            raise HorizonError(f"{self.name}: {len(tiles)} tiles with no <global-img> image after them")
        return grids

    # view: the base class's whole image -- the tiled canvas and the global image both stretch the whole image;
    # each tile's region is its share of the canvas


@register_adapter
class SmolVLMAdapter(Idefics3Adapter):
    name = "smolvlm"
    model_types = ("smolvlm",)


class SmolVLMImageProcessor(ImageOnlyProcessor):
    """Image-only SmolVLM processor, expanding each ``<image>`` as SmolVLMProcessor does.

    Split images: per tile ``<fake><row_r_col_c>`` + ``<image>`` x ``image_seq_len``,
    ``\\n`` after each row, then ``\\n<fake><global-img>`` + ``<image>`` x n +
    ``<fake>``; unsplit images only ``<fake><global-img>`` + ``<image>`` x n +
    ``<fake>``. The marker tokens come from the tokenizer's attributes (as
    SmolVLMProcessor reads them), with Idefics3's names as defaults.
    """

    image_token = "<image>"

    def process_images(self, images):
        return dict(self.image_processor(images=images, return_row_col_info=True, return_tensors="pt"))

    def expand(self, images, out):
        seq = int(self.config.get("image_seq_len", 169))
        fake = getattr(self.tokenizer, "fake_image_token", None) or FAKE_TOKEN
        glob = getattr(self.tokenizer, "global_image_token", None) or GLOBAL_TOKEN
        image = self.image_token * seq
        texts = []
        for rows, cols in zip([r for per in out["rows"] for r in per], [c for per in out["cols"] for c in per]):
            split = "".join("".join(f"{fake}<row_{r + 1}_col_{c + 1}>{image}" for c in range(cols)) + "\n"
                            for r in range(rows))
            texts.append((split + "\n" if rows or cols else "") + f"{fake}{glob}{image}{fake}")
        return texts

    def __call__(self, images=None, text="", return_tensors="pt"):
        out = super().__call__(images=images, text=text, return_tensors=return_tensors)
        out.pop("rows", None)
        out.pop("cols", None)
        return out


# transformers' SmolVLMProcessor needs torchvision (its video processor) and num2words
SmolVLMAdapter.image_only_processor = SmolVLMImageProcessor
