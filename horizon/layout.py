"""Where each window of a sample sits on its image(s): read from a run's samples and groups tables.

One place for the geometry that the static token heatmaps (:mod:`horizon.plots`)
and the interactive report (:mod:`horizon.report`) both draw:

* :func:`image_specs`: per image of a sample row, its path, size and token
  grids, each with its shape, level and view rectangle (the part of the image,
  in the image's pixels, that the processor showed the model; recorded by
  ``horizon scan`` in the samples table's ``images`` column);
* :func:`grid_blocks`: the sample's images split into blocks drawn together,
  one per (image, level): the tiles of one level share a picture, a base grid
  and a high-resolution grid (or tiles and a thumbnail) are drawn apart;
* :func:`block_extents`: each grid's rectangle in a block's drawing frame:
  its view on the image, the whole image when the run recorded no view, or,
  without an image, the grids side by side in token units;
* :func:`window_span` / :func:`span_box`: a k x k window's cells on its grid
  (clipped at the grid edge) and the rectangle those cells cover in a grid's
  extent (cells are uniform inside a view: resizing is linear);
* :func:`groups_grid`: which grid each row of a groups table lies on.

Runs written before several grids per image were recorded have one grid per
image; runs written before several images were recorded have no ``images``
column: their one image is the ``image`` column, its grid ``grid_h`` x ``grid_w``.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import pandas as pd

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1): left, top, right, bottom


def image_specs(srow: pd.Series | dict[str, Any]) -> list[dict[str, Any]]:
    """Per image of a sample row: ``path``, ``size`` ((W, H) in pixels, None when not recorded) and ``grids``, each
    with ``grid`` (rows, cols), ``view`` (a :data:`Box`, None when the run has no record), ``level`` and ``index``
    among the sample's grids."""
    row = srow if isinstance(srow, dict) else srow.to_dict()
    text = row.get("images")
    if isinstance(text, str) and text:
        specs = []
        for i, im in enumerate(json.loads(text)):
            entries = im.get("grids") or [{"grid": im["grid"], "view": im.get("view"), "level": "", "index": i}]
            size = im.get("size")
            specs.append({"path": im.get("path"), "size": tuple(int(x) for x in size) if size else None, "grids": [
                {"grid": tuple(int(x) for x in e["grid"]), "level": e.get("level", ""), "index": int(e["index"]),
                 "view": tuple(float(x) for x in e["view"]) if e.get("view") is not None else None}
                for e in entries]})
        return specs
    grid = (int(row["grid_h"]), int(row["grid_w"]))
    return [{"path": row.get("image"), "size": None,
             "grids": [{"grid": grid, "view": None, "level": "", "index": 0}]}]


def grid_blocks(specs: list[dict[str, Any]]) -> list[tuple[int, str, list[dict[str, Any]]]]:
    """(image, level, grids) per block: an image's grids of one level (tiles) are drawn over one picture."""
    blocks = []
    for i, spec in enumerate(specs):
        levels = list(dict.fromkeys(g["level"] for g in spec["grids"]))
        blocks += [(i, level, [g for g in spec["grids"] if g["level"] == level]) for level in levels]
    return blocks


def block_extents(grids: Sequence[dict[str, Any]], image_size: tuple[int, int] | None) -> tuple[Box, list[Box], str]:
    """The drawing frame of a block, each grid's rectangle in it, and the frame's unit (``px`` or ``token``).

    With the image's (W, H): the frame is the whole image and a grid spans its
    view (which may reach past a padded image, or the whole image when the run
    recorded none). Without an image: the grids side by side in token units.
    """
    if image_size is not None:
        w, h = image_size
        frame = (0.0, 0.0, float(w), float(h))
        return frame, [tuple(g["view"]) if g["view"] is not None else frame for g in grids], "px"
    extents, left = [], 0
    for g in grids:
        rows, cols = g["grid"]
        extents.append((float(left), 0.0, float(left + cols), float(rows)))
        left += cols
    return (0.0, 0.0, float(left), float(max(g["grid"][0] for g in grids))), extents, "token"


def window_span(row: int, col: int, grid: tuple[int, int], k: int) -> tuple[int, int, int, int]:
    """The cells (r0, r1, c0, c1), ends exclusive, of the k x k window at (row, col), clipped at the grid edge."""
    rows, cols = grid
    return int(row), min(int(row) + k, rows), int(col), min(int(col) + k, cols)


def span_box(span: tuple[int, int, int, int], grid: tuple[int, int], extent: Box) -> Box:
    """The rectangle that the cells ``span`` of ``grid`` cover when the grid spans ``extent`` (uniform cells)."""
    r0, r1, c0, c1 = span
    rows, cols = grid
    x0, y0, x1, y1 = extent
    sx, sy = (x1 - x0) / cols, (y1 - y0) / rows
    return (x0 + c0 * sx, y0 + r0 * sy, x0 + c1 * sx, y0 + r1 * sy)


def groups_grid(groups: pd.DataFrame) -> pd.Series:
    """The grid each row of a groups table lies on: its ``grid`` column; else its ``image`` (one grid per image,
    runs written before several grids per image); else 0 (runs written before several images)."""
    if "grid" in groups.columns:
        return groups["grid"].fillna(0).astype(int)
    if "image" in groups.columns:
        return groups["image"].fillna(0).astype(int)
    return pd.Series(0, index=groups.index)


def find_image(path: Any, image_root: Any = None):
    """The file of a sample's image path: as recorded, else under ``image_root`` (a relative path is relative to
    the dataset, which a run directory may sit beside); None when it is missing or not recorded."""
    from pathlib import Path

    if path is None or (isinstance(path, float) and path != path) or str(path) == "":
        return None
    p = Path(str(path))
    candidates = [p] if p.is_absolute() or image_root is None else [p, Path(image_root) / p]
    return next((c for c in candidates if c.is_file()), None)
