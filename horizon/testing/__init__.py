"""Test checkpoints of every supported family, for horizon's tests and for yours.

``build_tiny(path, arch=MODEL_TYPE)`` saves a tiny random-weight checkpoint
of a registered family (real transformers config, model and processor
classes, loaded back through :func:`horizon.load` like a hub checkpoint);
``write_tiny_dataset`` writes a few images with questions. ``TINY_FAMILIES``
holds, per registered model type, the token grid its tiny checkpoint gives
one image and ``image_size_for`` the pixel size that yields it, so a
contract suite can run every family on the same footing. A family added to
the adapter registry without an entry here fails that suite by name.

For the tiling families (InternVL, Idefics3, SmolVLM) ``grid`` is the token
grid of one tile and ``image_size_for`` gives a landscape image of two tiles
side by side: 1 x 2 tiles plus the thumbnail (global image).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..tiny import TinySpec, build_tiny, write_tiny_dataset

__all__ = ["TINY_FAMILIES", "TinyFamily", "TinySpec", "build_tiny", "image_size_for", "write_tiny_dataset"]


@dataclass(frozen=True)
class TinyFamily:
    """How the contract suite builds one family: the builder's arch and the visual grid of one image."""

    arch: str
    # (rows, cols) of one image's (first) visual grid (tiling families: of one tile); odd sizes give ragged 2x2
    # edge windows
    grid: tuple[int, int]
    # (height, width) in pixels of the contract suite's images where the grid alone does not fix it (families
    # with several grids per image: chosen to give several tiles); None: image_size_for(arch, grid)
    image: tuple[int, int] | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image or image_size_for(self.arch, self.grid)


TINY_FAMILIES: dict[str, TinyFamily] = {
    "llava": TinyFamily("llava", (5, 5)),
    "qwen2_5_vl": TinyFamily("qwen2_5_vl", (3, 5)),
    "qwen2_vl": TinyFamily("qwen2_vl", (3, 5)),
    "mistral3": TinyFamily("mistral3", (3, 4)),
    # a 4 x 4 base grid, then a 2 x 8 high-res grid (two tiles side by side, unpadded top and bottom)
    "llava_next": TinyFamily("llava_next", (4, 4), image=(40, 120)),
    "llava_onevision": TinyFamily("llava_onevision", (4, 4), image=(40, 120)),
    "qwen3_vl": TinyFamily("qwen3_vl", (3, 5)),
    "internvl": TinyFamily("internvl", (3, 3)),
    "idefics3": TinyFamily("idefics3", (3, 3)),
    "smolvlm": TinyFamily("smolvlm", (3, 3)),
    # gemma3: the square pooled grid of one image (mm_tokens_per_image = 25), longer than the 5-token sliding window
    "gemma3": TinyFamily("gemma3", (5, 5)),
}


def image_size_for(arch: str, grid: tuple[int, int], patch: int = 0) -> tuple[int, int]:
    """(height, width) in pixels of an image that the tiny ``arch`` checkpoint turns into ``grid`` tokens."""
    if arch == "llava":
        side = patch or 8
        return grid[0] * side, grid[1] * side
    if arch in ("qwen2_5_vl", "qwen2_vl", "qwen3_vl"):
        side = (patch or (16 if arch == "qwen3_vl" else 14)) * 2  # 2x2 patch merging
        return grid[0] * side, grid[1] * side
    if arch == "mistral3":
        side = (patch or 8) * 2  # 2x2 patch merging
        return grid[0] * side, grid[1] * side
    if arch in ("internvl", "idefics3", "smolvlm"):
        side = 2 * grid[0] * (patch or 4)  # one tile: pixel shuffle halves a grid of 2 x grid patches
        return side, 2 * side  # two tiles side by side (1 x 2) plus the thumbnail
    if arch == "gemma3":
        from .tiny_gemma3 import image_side

        return image_side(grid), image_side(grid)  # the processor resizes any image to this square
    raise ValueError(f"no tiny image geometry for {arch!r}")
