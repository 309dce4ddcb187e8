"""Tiled stylization: optimise overlapping tiles of a large image and blend them with feathered masks.

An image larger than memory allows is split into tiles that overlap by ``overlap`` pixels and cover the
edges exactly (the last tile of a row or column is shifted inward rather than padded). Each tile is
optimised on its own by a caller-supplied function, which normally compares the tile's activations against
style targets computed once for the whole image. The results are blended with weights that ramp up over
the overlap (a raised cosine), normalised by their sum, so every pixel is a convex combination of the
tiles that cover it.

Tiles optimised independently drift apart and leave seams. Three remedies work against that:

- the caller passes an init from a whole-image result (multi-scale stylization gives a low-resolution
  result to upscale, so all tiles start from the same picture);
- the overlap is wide enough for the cosine ramp to hide what differences remain;
- tiles are optimised in raster order, and each tile starts from the blend of its already finished
  neighbours where they overlap it (``sequential=True``, the default).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from modelzoo.errors import OptionError

logger = logging.getLogger(__name__)

TileOptimizer = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Tile:
    """One tile: its index in raster order and its rows ``top:bottom`` and columns ``left:right``."""

    index: int
    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Return the start offsets of tiles of size ``tile`` along an axis of ``length`` pixels.

    Neighbouring tiles overlap by at least ``overlap`` pixels. The last tile ends exactly at ``length``,
    so it may overlap its neighbour by more. An axis no longer than ``tile`` gets one tile.
    """
    check_tiling(tile, overlap)
    if length <= tile:
        return [0]
    step = tile - overlap
    count = math.ceil((length - tile) / step) + 1
    starts = [index * step for index in range(count - 1)]
    starts.append(length - tile)
    return starts


def check_tiling(tile: int, overlap: int) -> None:
    """Raise ``OptionError`` unless ``0 <= overlap < tile``."""
    if tile <= 0:
        raise OptionError(f"invalid tile size {tile}: it must be a positive number of pixels", hint="use e.g. --tile 512")
    if overlap < 0 or overlap >= tile:
        raise OptionError(
            f"invalid tile overlap {overlap} for tile size {tile}: it must be at least 0 and less than the tile size",
            hint=f"use e.g. --tile-overlap {max(tile // 8, 1)}",
        )


def make_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Return the tiles covering a ``height`` x ``width`` image in raster order (row by row)."""
    tiles = []
    for top in tile_starts(height, tile, overlap):
        for left in tile_starts(width, tile, overlap):
            tiles.append(Tile(len(tiles), top, min(top + tile, height), left, min(left + tile, width)))
    return tiles


def _ramp(length: int, ramp_start: int, ramp_end: int, device: torch.device) -> Tensor:
    """Return weights along one tile axis: a raised-cosine rise over ``ramp_start`` pixels and a fall over
    ``ramp_end``, 1 in between.

    The ramp samples pixel centres, so its smallest value is positive and a pixel covered by one tile
    only keeps a nonzero weight.
    """
    weights = torch.ones(length, device=device)
    positions = torch.arange(length, device=device, dtype=torch.float32) + 0.5
    if ramp_start > 0:
        rise = 0.5 - 0.5 * torch.cos(math.pi * positions[:ramp_start] / ramp_start)
        weights[:ramp_start] = rise
    if ramp_end > 0:
        fall = 0.5 - 0.5 * torch.cos(math.pi * positions[:ramp_end] / ramp_end)
        weights[length - ramp_end:] = torch.minimum(weights[length - ramp_end:], fall.flip(0))
    return weights


def feather_mask(tile: Tile, height: int, width: int, overlap: int, device: torch.device | str = "cpu") -> Tensor:
    """Return the blend weights of ``tile`` as a [1, 1, h, w] tensor.

    Weights ramp over ``overlap`` pixels on each side that has a neighbouring tile, and stay 1 on sides at
    the image border, so the border is not darkened when the masks are normalised.
    """
    device = torch.device(device)
    ramp = min(overlap, tile.height // 2, tile.width // 2)
    rows = _ramp(tile.height, ramp if tile.top > 0 else 0, ramp if tile.bottom < height else 0, device)
    columns = _ramp(tile.width, ramp if tile.left > 0 else 0, ramp if tile.right < width else 0, device)
    return (rows[:, None] * columns[None, :])[None, None]


def iterate_tiles(height: int, width: int, tile: int, overlap: int) -> Iterator[Tile]:
    """Yield the tiles of ``make_tiles`` and log progress at INFO."""
    tiles = make_tiles(height, width, tile, overlap)
    for item in tiles:
        logger.info("tile %d/%d: rows %d-%d, columns %d-%d", item.index + 1, len(tiles),
                    item.top, item.bottom, item.left, item.right)
        yield item


def stylize_tiled(
    content: Tensor,
    init: Tensor,
    tile: int,
    overlap: int,
    optimize_tile: TileOptimizer,
    *,
    sequential: bool = True,
) -> Tensor:
    """Stylize ``content`` tile by tile and return the blended result, shaped like ``content`` [1, 3, H, W].

    ``optimize_tile(content_tile, init_tile)`` receives tensors sliced from ``content`` and from the
    current init, both [1, 3, h, w], and returns the optimised tile with the same shape. It should compare
    the tile against style targets computed once for the whole image (a Gram matrix divided by C*H*W is an
    average over positions, so whole-image targets fit any tile size).

    ``overlap`` is the minimum overlap of neighbouring tiles in pixels. With ``sequential`` (the default),
    each tile's init is the blend of the tiles finished so far wherever they cover it, and ``init``
    elsewhere, which keeps neighbours from drifting apart. Without it, every tile starts from ``init``.

    Memory: besides the caller's tensors, this keeps two accumulators the size of the image (the weighted
    sum, 3 channels, and the weight sum, 1 channel) on ``content``'s device.
    """
    if content.dim() != 4 or content.shape[0] != 1:
        raise OptionError(f"content must be a [1, C, H, W] tensor, got shape {list(content.shape)}")
    if init.shape != content.shape:
        raise OptionError(f"init shape {list(init.shape)} differs from content shape {list(content.shape)}",
                          hint="resize the init image to the content size before tiling")
    check_tiling(tile, overlap)
    _, channels, height, width = content.shape
    weighted_sum = torch.zeros(1, channels, height, width, dtype=torch.float32, device=content.device)
    weight_sum = torch.zeros(1, 1, height, width, dtype=torch.float32, device=content.device)

    for item in iterate_tiles(height, width, tile, overlap):
        rows, columns = slice(item.top, item.bottom), slice(item.left, item.right)
        content_tile = content[:, :, rows, columns]
        init_tile = init[:, :, rows, columns].detach()
        if sequential:
            # Cross-fade from the finished neighbours to ``init`` with their feather weights, so the init has
            # no step where a neighbour ends (a step there survives the optimisation as a seam).
            done_weights = weight_sum[:, :, rows, columns]
            blended = weighted_sum[:, :, rows, columns] / done_weights.clamp_min(1e-12)
            fade = done_weights.clamp(0, 1)
            init_tile = (fade * blended + (1 - fade) * init_tile.float()).to(init.dtype)

        result = optimize_tile(content_tile, init_tile.clone())
        if result.shape != content_tile.shape:
            raise OptionError(f"optimize_tile returned shape {list(result.shape)} for a tile of shape "
                              f"{list(content_tile.shape)}; it must return a tensor of the tile's shape")

        mask = feather_mask(item, height, width, overlap, content.device)
        weighted_sum[:, :, rows, columns] += result.detach().float() * mask
        weight_sum[:, :, rows, columns] += mask

    return (weighted_sum / weight_sum).to(content.dtype)
