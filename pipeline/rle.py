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


ENCODE_BYTES = 1 << 25  # windows' pixels laid out for one pass of `encode_windows` at most (a frame of many
# large masks goes in parts: its buffer and the comparison's are two bytes a pixel)


def encode_window(window: np.ndarray, y: int, x: int, height: int, width: int) -> bytes:
    """`encode_windows` of one window."""
    return encode_windows([window], [(y, x)], height, width)[0]


def encode_windows(windows: Sequence[np.ndarray], origins: Sequence[tuple[int, int]], height: int, width: int
                   ) -> list[bytes]:
    """Compressed COCO RLE of (height, width) masks, each a window placed at its (y, x) and zero elsewhere: the
    same bytes as `encode` of the whole masks, from work proportional to the windows, not the frame. Runs go down
    the columns; the windows' columns, each between two zeros, lie end to end in one buffer, so one comparison
    finds every run boundary; a run that ends a column where the next one starts is one run, and a mask that
    reaches the frame's last pixel ends without a closing run of zeros (the same rules as
    `segment.device_rle.run_lengths`, in torch on a device)."""
    if not len(windows):
        return []
    shapes = np.array([window.shape for window in windows], dtype=np.int64).reshape(-1, 2)  # rows, cols
    places = np.asarray(origins, dtype=np.int64).reshape(-1, 2)  # y, x
    if (places < 0).any() or (places + shapes > [height, width]).any():
        k = int(np.flatnonzero((places < 0).any(1) | (places + shapes > [height, width]).any(1))[0])
        raise ValueError(f"window {tuple(shapes[k])} at {tuple(places[k])} does not fit a {height}x{width} frame")
    sizes = shapes[:, 1] * (shapes[:, 0] + 2)  # each column and a zero either side
    group = np.cumsum(sizes) // ENCODE_BYTES  # passes of at most ENCODE_BYTES (a larger window: one of its own)
    bounds = np.flatnonzero(np.diff(group, prepend=-1, append=group[-1] + 1))
    runs = []
    for first, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        runs += _runs(windows[first:stop], shapes[first:stop], places[first:stop], height, width)
    return from_counts(runs, height, width)


def _runs(windows: Sequence[np.ndarray], shapes: np.ndarray, places: np.ndarray, height: int, width: int
          ) -> list[np.ndarray]:
    """Each window's run lengths over the whole frame, in one pass (`encode_windows`)."""
    stride = shapes[:, 0] + 2
    sizes = shapes[:, 1] * stride
    starts = np.concatenate([[0], np.cumsum(sizes)])
    buffer = np.zeros(starts[-1] + 1, dtype=bool)
    for window, begin, size, rows in zip(windows, starts.tolist(), sizes.tolist(), stride.tolist()):
        buffer[begin:begin + size].reshape(-1, rows)[:, 1:-1] = window.T
    change = np.flatnonzero(buffer[1:] != buffer[:-1])  # a boundary after each of these
    owner = np.searchsorted(starts, change, side="right") - 1
    col, row = np.divmod(change - starts[owner], stride[owner])
    edges = (places[owner, 1] + col) * height + places[owner, 0] + row  # column-major, over the whole frame
    # a run that ends a column where the next one starts is one run
    touching = np.flatnonzero((edges[1:] == edges[:-1]) & (owner[1:] == owner[:-1]))
    keep = np.ones(len(edges), dtype=bool)
    keep[touching] = keep[touching + 1] = False
    edges, owner = edges[keep], owner[keep]
    bounds = np.searchsorted(owner, np.arange(len(windows) + 1))
    runs = []
    for k in range(len(windows)):
        counts = np.diff(np.concatenate([[0], edges[bounds[k]:bounds[k + 1]], [height * width]]))
        runs.append(counts[:-1] if len(counts) > 1 and counts[-1] == 0 else counts)  # the mask reaches the end
    return runs


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
