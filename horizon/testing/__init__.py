"""Test checkpoints of every supported family, for horizon's tests and for yours.

``build_tiny(path, arch=MODEL_TYPE)`` saves a tiny random-weight checkpoint
of a registered family (real transformers config, model and processor
classes, loaded back through :func:`horizon.load` like a hub checkpoint);
``write_tiny_dataset`` writes a few images with questions. ``TINY_FAMILIES``
holds, per registered model type, the token grid its tiny checkpoint gives
one image and ``image_size_for`` the pixel size that yields it, so a
contract suite can run every family on the same footing. A family added to
the adapter registry without an entry here fails that suite by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..tiny import TinySpec, build_tiny, write_tiny_dataset

__all__ = ["TINY_FAMILIES", "TinyFamily", "TinySpec", "build_tiny", "image_size_for", "write_tiny_dataset"]


@dataclass(frozen=True)
class TinyFamily:
    """How the contract suite builds one family: the builder's arch and the visual grid of one image."""

    arch: str
    grid: tuple[int, int]  # (rows, cols) of one image's visual tokens; odd sizes give ragged 2x2 edge windows


TINY_FAMILIES: dict[str, TinyFamily] = {
    "llava": TinyFamily("llava", (5, 5)),
    "qwen2_5_vl": TinyFamily("qwen2_5_vl", (3, 5)),
    "qwen2_vl": TinyFamily("qwen2_vl", (3, 5)),
    "mistral3": TinyFamily("mistral3", (3, 4)),
    # gemma3: the square pooled grid of one image (mm_tokens_per_image = 25), longer than the 5-token sliding window
    "gemma3": TinyFamily("gemma3", (5, 5)),
}


def image_size_for(arch: str, grid: tuple[int, int], patch: int = 0) -> tuple[int, int]:
    """(height, width) in pixels of an image that the tiny ``arch`` checkpoint turns into ``grid`` tokens."""
    if arch == "llava":
        side = patch or 8
        return grid[0] * side, grid[1] * side
    if arch in ("qwen2_5_vl", "qwen2_vl"):
        side = (patch or 14) * 2  # 2x2 patch merging
        return grid[0] * side, grid[1] * side
    if arch == "mistral3":
        side = (patch or 8) * 2  # 2x2 patch merging
        return grid[0] * side, grid[1] * side
    if arch == "gemma3":
        from .tiny_gemma3 import image_side

        return image_side(grid), image_side(grid)  # the processor resizes any image to this square
    raise ValueError(f"no tiny image geometry for {arch!r}")
