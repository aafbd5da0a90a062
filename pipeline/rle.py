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


def union_area(counts: list[bytes], height: int, width: int) -> int:
    """Foreground pixel count of the union of several RLEs, without decoding them."""
    if not counts:
        return 0
    rles = [{"size": [int(height), int(width)], "counts": c} for c in counts]
    return int(coco_mask.area(coco_mask.merge(rles, intersect=0) if len(rles) > 1 else rles[0]))


def decode_union(counts: list[bytes], height: int, width: int) -> np.ndarray:
    """The union of several RLEs as one (H, W) boolean mask (merged as RLE, decoded once)."""
    if not counts:
        return np.zeros((int(height), int(width)), dtype=bool)
    rles = [{"size": [int(height), int(width)], "counts": c} for c in counts]
    return coco_mask.decode(coco_mask.merge(rles, intersect=0) if len(rles) > 1 else rles[0]).astype(bool)


def iou(first: list[bytes], second: list[bytes], height: int, width: int) -> np.ndarray:
    """(len(first), len(second)) mask IoU of two lists of RLEs of the same size, without decoding them."""
    if not first or not second:
        return np.zeros((len(first), len(second)), dtype=np.float64)
    size = [int(height), int(width)]
    a = [{"size": size, "counts": c} for c in first]
    b = [{"size": size, "counts": c} for c in second]
    return np.asarray(coco_mask.iou(a, b, [0] * len(b)), dtype=np.float64).reshape(len(a), len(b))
