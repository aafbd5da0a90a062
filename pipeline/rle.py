"""COCO run-length encoding of binary masks, through pycocotools."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools import _mask as coco_c
from pycocotools import mask as coco_mask


def encode(masks: np.ndarray) -> list[bytes]:
    """Encode a (K, H, W) boolean stack into K compressed COCO RLE `counts` strings."""
    if masks.ndim != 3:
        raise ValueError(f"expected a (K, H, W) mask stack, got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    stacked = np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)
    return [rle["counts"] for rle in coco_mask.encode(stacked)]


def encode_window(window: np.ndarray, y: int, x: int, height: int, width: int) -> bytes:
    """Compressed COCO RLE of a (height, width) mask that is `window` at (y, x) and zero elsewhere: the same
    bytes as `encode` of the whole mask, from work proportional to the window, not the frame."""
    rows, cols = window.shape
    if y < 0 or x < 0 or y + rows > height or x + cols > width:
        raise ValueError(f"window {window.shape} at ({y}, {x}) does not fit a {height}x{width} frame")
    padded = np.zeros((cols, rows + 2), dtype=bool)  # the window's columns (RLE runs down columns), zero above, below
    padded[:, 1:-1] = window.T
    col, row = np.divmod(np.flatnonzero(padded[:, 1:] != padded[:, :-1]), rows + 1)
    edges = (x + col) * height + y + row  # where the value changes, in column-major order over the whole frame
    touching = np.flatnonzero(edges[1:] == edges[:-1])  # a run that ends a column where the next one starts
    if len(touching):
        edges = np.delete(edges, np.concatenate([touching, touching + 1]))
    counts = np.diff(np.concatenate([[0], edges, [height * width]]))
    if len(counts) > 1 and counts[-1] == 0:  # the mask reaches the frame's last pixel
        counts = counts[:-1]
    return coco_mask.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)["counts"]


def from_counts(runs: Sequence[np.ndarray], height: int, width: int) -> list[bytes]:
    """Compressed COCO RLE strings of masks given as their run lengths (column-major, starting with a run of
    zeros, as pycocotools' `encode` counts them): one pycocotools call for all of them."""
    if not runs:
        return []
    size = [int(height), int(width)]
    return [made["counts"] for made in coco_c.frUncompressedRLE([{"size": size, "counts": r} for r in runs], *size)]


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
