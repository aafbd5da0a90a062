"""Colour fills composited on the decoder's YUV 4:2:0 planes, so that a colour-fill render never converts a
frame to RGB and back (the two conversions cost more than the compositing and the encoder's input copy together).

Luma takes the fill's value inside the mask and keeps the source's outside it. Each chroma sample covers a 2×2
block of pixels: it takes the fills and the source in proportion to how many of the block's pixels each holds
(the box-filtered subsampling of the RGB composite). The fill's Y, U and V are OpenCV's BT.601 limited-range
values, the same conversion the RGB path hands the encoder.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from pipeline.decode import yuv420_planes
from pipeline.render.encode import VIDEO_FORMATS
from pipeline.render.kinds import Variant
from pipeline.render.regions import Regions

PLANAR_FILLS = ("keep", "color", "mean")


def planar(variant: Variant, output_format: str) -> bool:
    """Whether `variant` is composited on the planes when rendered to `output_format`: solid colours and kept
    regions only, into mp4 files or WebDataset tars of mp4s (whose encoder takes yuv420p; the same bytes either
    way). Sources of odd size still go through RGB."""
    return output_format in VIDEO_FORMATS and all(fill.kind in PLANAR_FILLS for fill in variant.fills().values())


@lru_cache(maxsize=16)
def fill_yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The (Y, U, V) of a solid RGB colour, as OpenCV's I420 conversion gives it."""
    solid = np.empty((2, 2, 3), dtype=np.uint8)
    solid[...] = rgb
    yuv = cv2.cvtColor(solid, cv2.COLOR_RGB2YUV_I420).ravel()
    return int(yuv[0]), int(yuv[4]), int(yuv[5])


def quarters(mask: np.ndarray) -> np.ndarray:
    """How many pixels of each 2×2 block are in `mask`: (H/2, W/2) uint16, 0 to 4."""
    m = mask.view(np.uint8)
    return (m[0::2, 0::2] + m[0::2, 1::2] + m[1::2, 0::2] + m[1::2, 1::2]).astype(np.uint16)


def compose_planes(planes: np.ndarray, regions: Regions, variant: Variant) -> np.ndarray:
    """The yuv420p frame with each region filled as the variant says (colour fills only)."""
    fills = []
    for region, fill in variant.fills().items():
        if fill.kind not in PLANAR_FILLS:
            raise ValueError(f"variant {variant.name}: fill {fill} cannot be composited on YUV planes")
        if fill.kind != "keep" and (mask := regions.get(region)).any():
            fills.append((mask, fill_yuv(fill.rgb)))
    if not fills:
        return planes
    out = planes.copy()
    luma, chroma = yuv420_planes(out)
    kept = np.full(chroma.shape[1:], 4, dtype=np.uint16)  # per block: pixels no fill covers
    mixed = np.zeros(chroma.shape, dtype=np.uint16)  # per block: sum over pixels of the fills' U and V
    for mask, (y, u, v) in fills:
        np.copyto(luma, np.uint8(y), where=mask)
        share = quarters(mask)
        kept -= share
        mixed[0] += share * u
        mixed[1] += share * v
    mixed += yuv420_planes(planes)[1] * kept  # the source's chroma for the pixels left as they were
    chroma[...] = (mixed + 2) >> 2
    return out
