"""Group geometry: tile each image's visual-token grid with k x k windows.

Windows are taken in row-major order of the window grid; a grid not divisible
by k gets smaller windows at its right and bottom edges. Window (r, c) of an
image whose tokens start at sequence position `start` on a grid of width `w`
covers positions ``start + (k*r + i) * w + (k*c + j)`` -- the convention of the
paper's reference code (k = 2 on a 24 x 24 grid gives 144 windows).

Some families put a separator after every row of patches (an ``image_newline``
or ``[IMG_BREAK]`` token); their grids have a ``row_stride`` larger than the
width, and the separators belong to no window.

Some families give one image several grids: LLaVA-NeXT a low-resolution base
grid plus a high-resolution one, InternVL / Idefics3 tiles plus a thumbnail.
Each grid knows its image, its ``level`` (grids of one level of an image do
not overlap: tiles) and the ``region`` of the image it covers, as fractions;
windows never cross grids.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import HorizonError


@dataclass(frozen=True)
class ImageGrid:
    """Where one image's visual tokens sit: first sequence position and grid shape."""

    start: int
    height: int
    width: int
    row_stride: int | None = None  # positions from one row's first patch to the next's; None: the width
    image: int | None = None  # the image it belongs to; None: one grid per image, in order
    level: str = ""  # e.g. "base", "tiles", "thumbnail": grids of one image and level never overlap
    # (x0, y0, x1, y1) of the image's view the grid covers, as fractions of it (a tile covers part of it)
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    @property
    def size(self) -> int:
        return self.height * self.width

    def position(self, row: int, col: int) -> int:
        """Sequence position of the patch token at (row, col)."""
        return self.start + row * (self.row_stride or self.width) + col


@dataclass(frozen=True)
class Group:
    """A set of visual positions ablated together."""

    index: int
    image: int
    grid: int  # index of the grid (tile) it lies on, among the sample's grids
    row: int  # grid row of the window's top-left token
    col: int  # grid column of the window's top-left token
    positions: tuple[int, ...]


def tile(grids: list[ImageGrid], k: int) -> list[Group]:
    """All k x k windows of every grid, numbered consecutively across grids (a window never crosses grids)."""
    if k < 1:
        raise HorizonError(f"--group must be a positive window size, got {k}")
    groups: list[Group] = []
    for index, grid in enumerate(grids):
        image = index if grid.image is None else grid.image
        for r0 in range(0, grid.height, k):
            for c0 in range(0, grid.width, k):
                positions = tuple(
                    grid.position(r, c)
                    for r in range(r0, min(r0 + k, grid.height))
                    for c in range(c0, min(c0 + k, grid.width))
                )
                groups.append(Group(len(groups), image, index, r0, c0, positions))
    return groups
