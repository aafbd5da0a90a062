"""COCO run-length encoding of binary masks, through pycocotools."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_mask


def encode(masks: np.ndarray) -> list[bytes]:
    """Encode a (K, H, W) boolean stack into K compressed COCO RLE `counts` strings."""
    if masks.ndim != 3:
        raise ValueError(f"expected a (K, H, W) mask stack, got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    stacked = np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)
    return [rle["counts"] for rle in coco_mask.encode(stacked)]


def decode(counts: bytes, height: int, width: int) -> np.ndarray:
    """Decode one compressed RLE string into an (H, W) boolean mask."""
    return coco_mask.decode({"size": [int(height), int(width)], "counts": counts}).astype(bool)


def area(counts: bytes, height: int, width: int) -> int:
    """Foreground pixel count of one RLE, without decoding it."""
    return int(coco_mask.area({"size": [int(height), int(width)], "counts": counts}))
